"""The dict interface, argument checks, repr, equality, copying and pickling."""

from __future__ import annotations

import copy
import pickle
from collections.abc import MutableMapping

import pytest


def test_is_a_mutable_mapping(cache_cls):
    assert isinstance(cache_cls(), MutableMapping)
    assert issubclass(cache_cls, MutableMapping)


def test_dict_interface(cache_cls):
    c = cache_cls(10)
    c["a"] = 1
    c["b"] = 2
    assert c["a"] == 1 and c.get("b") == 2 and c.get("zz") is None and c.get("zz", 7) == 7
    assert "a" in c and "zz" not in c and len(c) == 2
    del c["a"]
    assert "a" not in c and len(c) == 1
    with pytest.raises(KeyError):
        del c["a"]
    with pytest.raises(KeyError):
        c["a"]
    assert c.pop("b") == 2 and c.pop("b", "d") == "d"
    with pytest.raises(KeyError):
        c.pop("b")
    c.update({"x": 1}, y=2)
    c.update([("z", 3)])
    assert sorted(c.items()) == [("x", 1), ("y", 2), ("z", 3)]
    assert c.setdefault("x", 99) == 1 and c.setdefault("w", 4) == 4 and c["w"] == 4
    c.clear()
    assert len(c) == 0 and list(c) == [] and c.nbytes == 0


def test_views_are_snapshots_in_lru_order(cache_cls):
    c = cache_cls(10)
    for k in "abc":
        c[k] = k.upper()
    c["a"]
    assert c.keys() == ["b", "c", "a"]
    assert c.values() == ["B", "C", "A"]
    assert c.items() == [("b", "B"), ("c", "C"), ("a", "A")]
    assert list(c) == ["b", "c", "a"]


def test_mutating_while_iterating_never_raises(cache_cls):
    c = cache_cls(50)
    for i in range(50):
        c[i] = i
    seen = []
    for k in c:
        seen.append(k)
        c[k + 1000] = 0  # evicts entries not yet visited
        c.pop(k + 1, None)
        c.get(k)
    assert seen[:1] == [0] and len(c) <= 50


def test_popitem_is_lru(cache_cls):
    c = cache_cls(10)
    for k in "abc":
        c[k] = k
    c["a"]
    assert c.popitem() == ("b", "b")
    assert c.popitem() == ("c", "c")
    assert c.popitem() == ("a", "a")
    with pytest.raises(KeyError, match="popitem"):
        c.popitem()


def test_equality(cache_cls):
    c = cache_cls(10)
    c.update({1: "a", 2: "b"})
    assert c == {2: "b", 1: "a"}
    assert not (c != {1: "a", 2: "b"})
    assert c != {1: "a"}
    assert c != [1, 2]
    other = cache_cls(5)
    other.update({1: "a", 2: "b"})
    assert c == other
    assert c.stats()["hits"] == 0  # == counts nothing
    with pytest.raises(TypeError):
        hash(c)


def test_repr(cache_cls):
    c = cache_cls(3)
    c[1] = "x"
    assert repr(c) == f"{cache_cls.__name__}({{1: 'x'}}, maxsize=3)"
    c[2] = c  # a cache that contains itself
    assert repr(c) == f"{cache_cls.__name__}({{1: 'x', 2: {cache_cls.__name__}(...)}}, maxsize=3)"


def test_generic_alias(cache_cls):
    alias = cache_cls[str, int]
    assert alias.__origin__ is cache_cls and alias.__args__ == (str, int)


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy", "method"])
def test_copy_and_pickle_keep_settings_entries_and_order(cache_cls, timer, how):
    c = cache_cls(4, ttl=60, max_bytes=10_000, timer=timer)
    c.set("a", [1, 2])
    c.set("b", "bee", ttl=5)
    c["a"]
    timer.advance(2)
    if how == "pickle":
        d = pickle.loads(pickle.dumps(c))
    elif how == "copy":
        d = copy.copy(c)
    elif how == "deepcopy":
        d = copy.deepcopy(c)
    else:
        d = c.copy()
    assert type(d) is cache_cls and d is not c
    assert d.items() == c.items() == [("b", "bee"), ("a", [1, 2])]
    assert (d.maxsize, d.ttl, d.max_bytes, d.nbytes) == (4, 60.0, 10_000, c.nbytes)
    assert (d["a"] is c["a"]) == (how in ("copy", "method"))
    timer.advance(3.5)  # b had 3 s left when copied
    if how in ("copy", "method"):  # pickle and deepcopy copy the timer too
        assert "b" not in d and "a" in d


def test_pickle_refuses_unpicklable_callbacks(cache_cls):
    c = cache_cls(2, on_evict=lambda k, v, r: None)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        pickle.dumps(c)


def _with_entry(entry):
    """A pickled s3fifo state whose second entry is ``entry``."""
    return (None, None, None, None, "s3fifo", [("k", "v", None, 10, 0), entry])


@pytest.mark.parametrize(
    "state, exc, message",
    [
        ([], TypeError, "state must be a tuple of 6 items, not list"),
        ((None, None, None, None, "lru"), TypeError, "state must be a tuple of 6 items, not of 5"),
        (_with_entry((["unhashable"], "v", None, 10, 0)), TypeError, "unhashable type"),
        ((64, None, lambda: "soon", None, "s3fifo", [("k", "v", 5.0, 8, 0)]), TypeError, "real"),
        ((-1, None, None, None, "lru", []), ValueError, "max_bytes must be >= 0, got -1"),
        ((None, 3, None, None, "lru", []), TypeError, "sizeof must be callable or None, not int"),
        ((None, None, None, None, "fifo", []), ValueError, "policy must be one of"),
        (_with_entry(("k", "v", None, 10)), TypeError, "(key, value, remaining, nbytes, state)"),
        (_with_entry(("k", "v", float("nan"), 10, 0)), ValueError, "must be finite, got nan"),
        (_with_entry(("k", "v", float("inf"), 10, 0)), ValueError, "must be finite, got inf"),
        (_with_entry(("k", "v", "1", 10, 0)), TypeError, "must be a number or None, not str"),
        (_with_entry(("k", "v", None, -5, 0)), ValueError, "size must be >= 0, got -5"),
        (_with_entry(("k", "v", None, 1.0, 0)), TypeError, "size must be an int, not float"),
        (_with_entry(("k", "v", None, 10, -1)), ValueError, "an int in 0..7, got -1"),
        (_with_entry(("k", "v", None, 10, 2**40)), ValueError, "in 0..7, got 1099511627776"),
        (_with_entry(("k", "v", None, 10, True)), TypeError, "state must be an int, not bool"),
        ((64, None, None, None, "s3fifo", []), ValueError, "cannot set a byte bound on a cache"),
    ],
)
def test_a_bad_pickled_state_is_refused_and_changes_nothing(cache_cls, state, exc, message):
    """Every field is checked before the cache changes, with the same message in both twins."""
    c = cache_cls(5, policy="s3fifo")
    c["old"] = 1
    before = (c.items(), c.max_bytes, c.nbytes, c.policy)
    with pytest.raises(exc) as info:
        c.__setstate__(state)
    assert message in str(info.value)
    assert (c.items(), c.max_bytes, c.nbytes, c.policy) == before


def test_a_pickled_size_beyond_the_entry_limit_is_held_at_it(cache_cls):
    """Both twins hold a pickled size at the largest an entry can have (sizeof refuses more)."""
    c = cache_cls(5)
    c.__setstate__((None, None, None, None, "lru", [("k", "v", None, 2**70, 0)]))
    assert c.items() == [("k", "v")] and c.nbytes == 0xFFFFFFFE


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"maxsize": -1}, ValueError, "maxsize must be >= 0, got -1"),
        ({"maxsize": 1.5}, TypeError, "maxsize must be an int or None, not float"),
        ({"maxsize": "3"}, TypeError, "maxsize must be an int or None, not str"),
        ({"maxsize": True}, TypeError, "maxsize must be an int or None, not bool"),
        ({"ttl": 0}, ValueError, "ttl must be > 0, got 0.0"),
        ({"ttl": -1.5}, ValueError, "ttl must be > 0, got -1.5"),
        ({"ttl": float("nan")}, ValueError, "ttl must be > 0, got nan"),
        ({"ttl": "1"}, TypeError, "ttl must be a number or None, not str"),
        ({"max_bytes": -5}, ValueError, "max_bytes must be >= 0, got -5"),
        ({"max_bytes": 2.0}, TypeError, "max_bytes must be an int or None, not float"),
        ({"on_evict": 3}, TypeError, "on_evict must be callable or None, not int"),
        ({"timer": "now"}, TypeError, "timer must be callable or None, not str"),
        ({"sizeof": 1}, TypeError, "sizeof must be callable or None, not int"),
    ],
)
def test_bad_constructor_arguments(cache_cls, kwargs, exc, message):
    with pytest.raises(exc) as info:
        cache_cls(**kwargs)
    assert str(info.value) == message


def test_unknown_keyword_is_a_type_error(cache_cls):
    with pytest.raises(TypeError, match="unexpected keyword argument 'size'"):
        cache_cls(size=3)


def test_unhashable_key_is_a_type_error_and_changes_nothing(cache_cls):
    c = cache_cls(3)
    c["a"] = 1
    for op in (
        lambda: c[[1]],
        lambda: c.__setitem__([1], 2),
        lambda: c.get({}),
        lambda: c.pop([1]),
        lambda: [1] in c,
        lambda: c.set({1}, 1),
        lambda: c.get_or_set([], lambda: 1),
    ):
        with pytest.raises(TypeError, match="unhashable"):
            op()
    assert c.items() == [("a", 1)] and c.stats()["misses"] == 0 and c.stats()["hits"] == 0


def test_bad_method_arguments(cache_cls):
    c = cache_cls(3)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        c.trim(0)
    with pytest.raises(ValueError):
        c.trim(1.5)
    with pytest.raises(TypeError):
        c.trim("half")
    with pytest.raises(ValueError, match="maxsize must be >= 0"):
        c.resize(maxsize=-1)
    with pytest.raises(ValueError, match="ttl must be > 0"):
        c.set("a", 1, ttl=0)
    with pytest.raises(TypeError, match="factory must be callable, not int"):
        c.get_or_set("a", 5)
    assert len(c) == 0 and c.maxsize == 3


def test_weakref_to_cache(cache_cls):
    import weakref

    c = cache_cls(3)
    r = weakref.ref(c)
    assert r() is c
    del c
    assert r() is None


def test_not_subclassable(cache_cls):
    with pytest.raises(TypeError, match="is not an acceptable base type"):
        type("Sub", (cache_cls,), {})
