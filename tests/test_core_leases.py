"""Leases: a fill never stores a value whose key was written or removed after
its factory started (the cache-aside race), and the caller still gets it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

WRITES: dict[str, Callable[[Any], Any]] = {
    "set": lambda c: c.set("k", "new"),
    "setitem": lambda c: c.__setitem__("k", "new"),
    "update": lambda c: c.update({"k": "new"}),
    "del": lambda c: c.__delitem__("k"),
    "pop": lambda c: c.pop("k", None),
    "invalidate": lambda c: c.invalidate("k"),
    "clear": lambda c: c.clear(),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_between_lease_and_fill_refuses_the_fill(cache_cls: type, write: str) -> None:
    c = cache_cls(10)
    c["k"] = "present"
    token = c.lease("k")
    WRITES[write](c)
    stored = "new" if write in ("set", "setitem", "update") else None
    assert c.fill("k", "stale", token) == "stale"  # the caller's value, not stored
    assert c.peek("k") == stored


@pytest.mark.parametrize("write", ["set", "setitem", "update", "invalidate", "clear"])
def test_a_write_during_the_factory_refuses_the_fill(cache_cls: type, write: str) -> None:
    c = cache_cls(10)

    def factory() -> str:
        WRITES[write](c)
        return "stale"

    assert c.get_or_set("k", factory) == "stale"  # the caller gets what it computed
    assert c.peek("k") == (None if write in ("invalidate", "clear") else "new")


def test_a_factory_blocked_until_a_writer_invalidates(cache_cls: type) -> None:
    """The classic race with real threads: the reader misses and loads the old
    row, the writer commits and invalidates, then the reader's fill is refused."""
    c = cache_cls(10)
    db = {"user": "old"}
    loaded, written = threading.Event(), threading.Event()
    results: list[Any] = []

    def reader() -> None:
        def load() -> str:
            row = db["user"]
            loaded.set()
            written.wait(10)
            return row

        results.append(c.get_or_set("user", load))

    def writer() -> None:
        loaded.wait(10)
        db["user"] = "new"
        c.invalidate("user")
        written.set()

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["old"]
    assert "user" not in c
    assert c.get_or_set("user", lambda: db["user"]) == "new"
    assert c["user"] == "new"


def test_without_a_write_the_fill_stores(cache_cls: type) -> None:
    c = cache_cls(10)
    assert c.get_or_set("k", lambda: 1) == 1 and c.peek("k") == 1
    c.invalidate("other")  # another key: no effect on this fill
    assert c.get_or_set("j", lambda: (c.invalidate("other") and 0) or 2) == 2
    assert c.peek("j") == 2


def test_a_value_stored_by_another_fill_wins(cache_cls: type) -> None:
    c = cache_cls(10)

    def factory() -> str:
        assert c.get_or_set("k", lambda: "first") == "first"  # a nested fill
        return "second"

    assert c.get_or_set("k", factory) == "first"
    assert c["k"] == "first"


def test_setdefault_during_a_factory_wins_and_does_not_invalidate(cache_cls: type) -> None:
    c = cache_cls(10)
    assert c.get_or_set("k", lambda: c.setdefault("k", "sd") and "factory") == "sd"


def test_popitem_invalidates_the_key_it_removes(cache_cls: type) -> None:
    c = cache_cls(10)

    def factory() -> str:
        c["k"] = "v"
        c.popitem()
        return "stale"

    assert c.get_or_set("k", factory) == "stale" and "k" not in c


def test_lease_and_fill_by_hand(cache_cls: type) -> None:
    c = cache_cls(10)
    token = c.lease("k")
    assert c.fill("k", 1, token) == 1 and c["k"] == 1
    with pytest.raises(ValueError, match="not an outstanding lease"):
        c.fill("k", 2, token)  # a lease ends with its fill
    token = c.lease("k")
    assert c.lease_valid(token)
    c["k"] = 3  # a write: the fill is refused
    assert not c.lease_valid(token)
    assert c.fill("k", 4, token) == 4 and c["k"] == 3
    assert not c.lease_valid(token) and not c.lease_valid("junk")  # ended, unknown
    token = c.lease("x")
    c.drop_lease(token)
    with pytest.raises(ValueError):
        c.drop_lease(token)
    for bad in (None, -1, 1.5, True, 2**70, "t"):
        with pytest.raises(ValueError):
            c.fill("k", 1, bad)
    before = c.stats()
    c.fill("n", 5, c.lease("n"))
    after = c.stats()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_a_token_used_twice_stores_nothing_stale_and_ends_no_other_lease(
    cache_cls: type,
) -> None:
    """fill(k, v, token) while another caller drops the same token and a new lease
    takes its slot: the fill checked the slot's state, not its generation, so it
    stored a value invalidated before, then ended the new lease (threads did this
    to the pure twin, and a Python __hash__ to both)."""
    c = cache_cls(10)
    others: list[int] = []

    class Key:
        armed = False

        def __hash__(self) -> int:
            if Key.armed:  # between fill's check of the token and its store
                Key.armed = False
                c.drop_lease(token)
                others.append(c.lease("other"))
            return 1

        def __eq__(self, other: object) -> bool:
            return other is self

    k = Key()
    token = c.lease(k)
    c.invalidate(k)
    Key.armed = True
    assert c.fill(k, "stale", token) == "stale"
    assert k not in c  # invalidated before the fill: never stored
    (other,) = others
    assert other & 0xFFFFFFFF == token & 0xFFFFFFFF  # the same slot, a new generation
    assert c.lease_valid(other)  # still outstanding
    with pytest.raises(ValueError, match="not an outstanding lease"):
        c.drop_lease(token)
    assert c.fill("other", 1, other) == 1 and c["other"] == 1


def test_a_failing_factory_ends_its_lease(cache_cls: type) -> None:
    c = cache_cls(10)

    def boom() -> Any:
        raise ZeroDivisionError

    for _ in range(100):
        with pytest.raises(ZeroDivisionError):
            c.get_or_set("k", boom)
    token = c.lease("k")
    assert token & 0xFFFFFFFF == 0  # the first slot again: nothing leaked
    c.drop_lease(token)


def test_a_collision_refuses_conservatively(cache_cls: type) -> None:
    """Leases follow hash bits: a write to another key with the same hash makes
    the fill refuse (one more miss later, never a stale value)."""

    class Same:
        def __init__(self, name: str) -> None:
            self.name = name

        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Same) and other.name == self.name

    c = cache_cls(10)
    a, b = Same("a"), Same("b")
    assert c.get_or_set(a, lambda: c.set(b, 1) and "va") == "va"
    assert a not in c and c[b] == 1


def test_twins_agree_on_a_random_mix(impl: str) -> None:
    """The same calls give the same results and leave the same state."""
    import random

    from conftest import CLruCache
    from memcache_ext._core_py import PyLruCache

    if CLruCache is None:
        pytest.skip("no compiled core")
    for seed in range(30):
        caches: list[PyLruCache[str, int]] = [CLruCache(6), PyLruCache(6)]
        logs: list[list[Any]] = [[], []]
        for c, log in zip(caches, logs, strict=True):
            rnd = random.Random(seed)
            tokens: list[tuple[str, int]] = []
            for _ in range(80):
                k = f"k{rnd.randrange(8)}"
                r = rnd.random()
                if r < 0.3:

                    def factory(c: Any = c, k: str = k, rnd: random.Random = rnd) -> int:
                        if rnd.random() < 0.3:
                            c.invalidate(k)
                        return rnd.randrange(9)

                    log.append(c.get_or_set(k, factory))
                elif r < 0.5:
                    tokens.append((k, c.lease(k)))
                elif r < 0.7 and tokens:
                    key, token = tokens.pop(rnd.randrange(len(tokens)))
                    log.append(c.fill(key, rnd.randrange(9), token))
                elif r < 0.85:
                    c[k] = rnd.randrange(9)
                else:
                    log.append(c.invalidate(k))
            log.append(c.items())
            log.append(c.stats())
        assert logs[0] == logs[1]
