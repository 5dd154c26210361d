"""Places where the twins used to differ, and the limits of sizes: one behaviour."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest


def test_signature_and_argument_errors_are_the_same(cache_cls: type) -> None:
    assert str(inspect.signature(cache_cls)) == (
        "(maxsize=128, ttl=None, *, max_bytes=None, sizeof=None, timer=None, on_evict=None, "
        "policy='lru')"
    )
    name = cache_cls.__name__
    cases: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        ((1, 2, 3), {}, f"{name}() takes from 0 to 2 positional arguments but 3 were given"),
        ((), {"size": 1}, f"{name}() got an unexpected keyword argument 'size'"),
        ((1,), {"maxsize": 2}, f"{name}() got multiple values for argument 'maxsize'"),
        (("1",), {}, "maxsize must be an int or None, not str"),
        ((True,), {}, "maxsize must be an int or None, not bool"),
        ((-1,), {}, "maxsize must be >= 0, got -1"),
        ((2**63,), {}, f"maxsize must be <= {2**63 - 1}, got {2**63}"),
        ((1, 0), {}, "ttl must be > 0, got 0.0"),
        ((1, "x"), {}, "ttl must be a number or None, not str"),
        ((), {"max_bytes": -5}, "max_bytes must be >= 0, got -5"),
        ((), {"on_evict": 3}, "on_evict must be callable or None, not int"),
        ((), {"timer": "t"}, "timer must be callable or None, not str"),
        ((), {"policy": "lfu"}, "policy must be one of 'lru', 's3fifo', got 'lfu'"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises((TypeError, ValueError), match=re.escape(message)):
            cache_cls(*args, **kwargs)


def test_sizes_at_the_integer_limits(cache_cls: type) -> None:
    """Sizes never wrap: a huge entry is refused as oversized, never counted
    negative; a huge maxsize is kept as given (not silently clamped)."""
    c = cache_cls(None, max_bytes=2**63 - 1, sizeof=lambda o: 2**62)
    assert c.set("a", 1) is False and c.set("b", 2) is False
    assert c.nbytes == 0 and len(c) == 0 and c.stats()["rejected"] == 2
    c = cache_cls(None, max_bytes=2**63 - 1, sizeof=lambda o: 2**64)
    assert c.set("a", 1) is False and c.nbytes == 0
    c = cache_cls(2**40)
    assert c.maxsize == 2**40
    c["a"] = 1
    assert c["a"] == 1


def test_setdefault_never_overwrites_a_value_stored_meanwhile(cache_cls: type) -> None:
    box: list[Any] = []

    def measuring(obj: Any) -> int:
        if obj == "default" and not box:
            box.append(1)
            c["k"] = "stored meanwhile"  # another writer, between the miss and the store
        return 1

    c = cache_cls(10, max_bytes=100, sizeof=measuring)
    assert c.setdefault("k", "default") == "stored meanwhile"
    assert c["k"] == "stored meanwhile"


def test_a_failing_measurement_leaves_the_statistics_as_they_were(cache_cls: type) -> None:
    def measuring(obj: Any) -> int:
        if obj == "bad":
            raise ZeroDivisionError
        return 1

    c = cache_cls(10, max_bytes=100, sizeof=measuring)
    before = c.stats()
    for call in (
        lambda: c.setdefault("k", "bad"),
        lambda: c.get_or_set("k", lambda: "bad"),
        lambda: c.set("k", "bad"),
    ):
        with pytest.raises(ZeroDivisionError):
            call()
    assert c.stats() == before and len(c) == 0


def test_resize_to_a_byte_bound_measures_entries_with_a_ttl(cache_cls: type) -> None:
    c = cache_cls(10, ttl=1000)
    c.update({"a": [1, 2, 3], "b": [4, 5, 6]})  # lists: never shared, always counted
    c.set("c", [7, 8, 9], ttl=5)
    c.resize(max_bytes=10**6)
    from memcache_ext import deep_sizeof

    assert c.nbytes == sum(deep_sizeof(k) + deep_sizeof(v) for k, v in c.items())
    c.resize(max_bytes=c.nbytes - 1)  # the bound is enforced: one entry goes
    assert len(c) == 2


def _size(obj: Any) -> int:
    return len(obj) if isinstance(obj, str) else 8


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_what_is_stored_while_a_first_byte_bound_is_measured_is_measured(
    cache_cls: type,
) -> None:
    """The bound is set before the entries are measured, so a store meanwhile (another
    thread's; here sizeof's own) measures itself. Before, every such store made the
    measure start over, and after four tries the entries changed were counted as 0
    bytes (found by the threaded mixes: nbytes 195 where the entries held 224)."""
    stored: list[str] = []

    def sizeof(obj: Any) -> int:
        if isinstance(obj, str) and obj.startswith("v") and len(stored) < 40:
            stored.append(obj)
            c["new" + str(len(stored))] = "n" * len(stored)  # measured: the bound is on
            c["k0"] = "replaced" + str(len(stored))  # a value replaced in place too
        return _size(obj)

    c = cache_cls(100, sizeof=sizeof)
    c.update({f"k{i}": f"v{i}" for i in range(10)})
    c.resize(max_bytes=10**6)
    assert stored  # sizeof stored while resize measured
    assert c.max_bytes == 10**6 and len(c) > 10
    assert c.nbytes == sum(_size(k) + _size(v) for k, v in c.items())


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_a_bound_taken_away_while_the_first_one_is_measured_is_measured_again(
    cache_cls: type,
) -> None:
    """Another resize that removes the bound meanwhile lets entries in unmeasured:
    resize starts over, and ends with its bound, every entry counted."""
    calls = [0]

    def sizeof(obj: Any) -> int:
        calls[0] += 1
        if calls[0] == 3:
            c.resize(max_bytes=None)  # the bound goes; stores are not measured now
            c["late"] = "unmeasured then"
        return _size(obj)

    c = cache_cls(100, sizeof=sizeof)
    c.update({f"k{i}": f"v{i}" for i in range(5)})
    c.resize(max_bytes=10**6)
    assert c.max_bytes == 10**6 and "late" in c
    assert c.nbytes == sum(_size(k) + _size(v) for k, v in c.items())


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_a_sizeof_that_raises_takes_the_first_byte_bound_back(cache_cls: type) -> None:
    def sizeof(obj: Any) -> int:
        if obj == "bad":
            raise ValueError("cannot measure")
        return _size(obj)

    c = cache_cls(100, sizeof=sizeof)
    c.update(a="x", b="bad")
    with pytest.raises(ValueError, match="cannot measure"):
        c.resize(maxsize=1, max_bytes=10)
    assert (c.maxsize, c.max_bytes, c.nbytes, len(c)) == (100, None, 0, 2)
    c["c"] = "y"  # stored unmeasured, as without a bound
    assert c.nbytes == 0


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_a_sizeof_that_always_takes_the_bound_away_gets_an_error(cache_cls: type) -> None:
    def sizeof(obj: Any) -> int:
        c.resize(max_bytes=None)
        return 1

    c = cache_cls(100, sizeof=sizeof)
    c.update(a="x")
    with pytest.raises(RuntimeError, match="taken away too many times"):
        c.resize(max_bytes=100)
    assert c.max_bytes is None and c.nbytes == 0 and c["a"] == "x"


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_entries_a_repack_moved_while_a_bound_is_measured_get_their_sizes(
    cache_cls: type,
) -> None:
    """A trim (another thread's; here sizeof's) repacks the entries: C found the
    survivors by their old index and left them at 0 bytes (nbytes 0 of 160)."""
    done: list[int] = []

    def sizeof(obj: Any) -> int:
        if not done:
            done.append(1)
            c.trim(0.9)  # 200 entries down to 20: the pool is repacked
        return _size(obj)

    c = cache_cls(1000, sizeof=sizeof)
    c.update({f"k{i}": f"v{i}" for i in range(200)})
    c.resize(max_bytes=10**6)
    assert len(c) == 20
    assert c.nbytes == sum(_size(k) + _size(v) for k, v in c.items()) == 160


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_a_value_grown_and_stored_again_while_measured_keeps_its_new_size(
    cache_cls: type,
) -> None:
    """The store measured the grown list; the resize's older measure of the same object
    must not replace it (nbytes 8 where 108 was right)."""
    lst = [1, 2, 3]

    def sizeof(obj: Any) -> int:
        if obj == "x" and len(lst) == 3:
            lst.extend(range(100))
            c["k1"] = lst  # measured by this store: 103 + 2
        return len(obj) if isinstance(obj, (str, list)) else 8

    c = cache_cls(100, sizeof=sizeof)
    c["k1"], c["k2"] = lst, "x"
    c.resize(max_bytes=10**6)
    assert c.nbytes == 2 + 103 + 2 + 1 == 108


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_a_bound_taken_away_by_a_released_value_is_measured_again(cache_cls: type) -> None:
    """Releasing the snapshot can run a value's __del__ (Python code) after the sizes
    went in: a bound it takes away makes resize measure again, in both twins."""
    done: list[int] = []

    class Value:
        def __del__(self) -> None:
            c.resize(max_bytes=None)
            c["late"] = "unmeasured then"

    def sizeof(obj: Any) -> int:
        if isinstance(obj, Value) and not done:
            done.append(1)
            c["k0"] = "replaced"  # the snapshot now holds the Value's last reference
        return _size(obj)

    c = cache_cls(100, sizeof=sizeof)
    c["k0"], c["k1"] = Value(), "x"
    c.resize(max_bytes=10**6)
    assert c.max_bytes == 10**6 and "late" in c
    assert c.nbytes == sum(_size(k) + _size(v) for k, v in c.items())


@pytest.mark.filterwarnings("ignore:.*without max_bytes measures nothing")
def test_a_raising_sizeof_takes_the_bound_back_after_a_maxsize_change_too(
    cache_cls: type,
) -> None:
    """Another resize of maxsize only (here sizeof's) did not measure anything: the byte
    bound still goes back, else it stays over entries counted as 0 bytes."""
    calls = [0]

    def sizeof(obj: Any) -> int:
        calls[0] += 1
        if calls[0] == 1:
            c.resize(maxsize=50)
        if obj == "bad":
            raise ValueError("cannot measure")
        return _size(obj)

    c = cache_cls(100, sizeof=sizeof)
    c.update(a="xxxx", b="bad", d="yyyy")
    with pytest.raises(ValueError, match="cannot measure"):
        c.resize(max_bytes=1000)
    assert (c.maxsize, c.max_bytes, c.nbytes, len(c)) == (50, None, 0, 3)


def test_sizes_never_go_to_entries_another_thread_is_releasing(isolated: Any) -> None:
    """Thread B's trim has removed every entry and is calling on_evict for the first; the
    rest wait in their slots for their release. C's measure used to write sizes onto
    them, and B then read a size as the eviction reason: a crash (REASONS[9])."""
    isolated(
        """
        import warnings
        warnings.simplefilter("ignore")
        in_evict, go_on = threading.Event(), threading.Event()
        reasons, errors, started = [], [], []

        def on_evict(k, v, r):
            reasons.append(r)
            if not in_evict.is_set():
                in_evict.set()
                go_on.wait(10)  # B pauses inside its release

        def b():
            try:
                c.trim(1.0)
            except BaseException as exc:
                errors.append(repr(exc))

        def sizeof(o):
            if not started:
                started.append(threading.Thread(target=b))
                started[0].start()
                in_evict.wait(10)
            return len(o) if isinstance(o, str) else 8

        c = Cache(100, sizeof=sizeof, on_evict=on_evict)
        c.update({f"key{i}": f"value{i}" for i in range(5)})
        c.resize(max_bytes=10**6)
        assert (len(c), c.nbytes, c.stats()["nbytes"]) == (0, 0, 0), (len(c), c.nbytes)
        go_on.set()
        started[0].join()
        assert reasons == ["trim"] * 5 and not errors, (reasons, errors)
        assert c.nbytes == 0
        """,
        timeout=60,
    )


def test_init_again_starts_afresh(cache_cls: type) -> None:
    c = cache_cls(10)
    c.update(a=1, b=2)
    c.get("a")
    c.__init__(1, policy="s3fifo")
    assert len(c) == 0 and c.maxsize == 1 and c.policy == "s3fifo"
    assert c.stats()["hits"] == 0
    c.update(x=1, y=2)
    assert len(c) == 1


def test_the_timer_is_read_the_same_way(cache_cls: type) -> None:
    """A custom timer is read up front, once per operation, and only while some
    entry has a TTL (or the one being stored has one)."""
    calls: list[int] = []

    def timer() -> float:
        calls.append(1)
        return 100.0

    c = cache_cls(10, timer=timer)
    c["a"] = 1
    c.get("a")
    assert "a" in c
    assert calls == []
    c.set("t", 1, ttl=5)
    assert len(calls) == 1
    c.get("a")
    c.get("zz")
    c.peek("a")
    c.keys()
    assert len(calls) == 5


@pytest.mark.parametrize("reading", ["5", b"5", None, [5]])
def test_a_timer_reading_that_is_not_a_number_is_refused(cache_cls: type, reading: Any) -> None:
    """Both twins convert a reading as C's float conversion does: a str is no time."""
    c = cache_cls(10, ttl=10, timer=lambda: reading)
    with pytest.raises(TypeError, match=rf"^must be real number, not {type(reading).__name__}$"):
        c["a"] = 1
    assert len(c) == 0


def test_a_timer_reading_of_any_real_number_is_taken(cache_cls: type) -> None:
    """An int, a Fraction, a Decimal: anything with __float__ or __index__."""
    import decimal
    import fractions

    for reading in (100, fractions.Fraction(201, 2), decimal.Decimal("101"), True):
        c = cache_cls(10, ttl=10, timer=lambda r=reading: r)
        c["a"] = 1
        assert c.get("a") == 1 and c.expire() == 0


def test_reversed_gives_keys_counting_nothing(cache_cls: type) -> None:
    c = cache_cls(10)
    for k in (1, 2, 3):
        c[k] = k * 10
    c.get(1)
    before = c.stats()
    assert list(reversed(c)) == [1, 3, 2] and c.stats() == before
    assert c.keys() == [2, 3, 1]
