"""cached(): keys, sharing of in-flight computations, exceptions, async, methods."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

import pytest

from memcache_ext import PyLruCache, cached
from memcache_ext.decorators import make_key
from support import eventually


def test_basic_hit_and_miss(cache_cls: type) -> None:
    cache = cache_cls(maxsize=10)
    calls = []

    @cached(cache)
    def double(x: int) -> int:
        calls.append(x)
        return x * 2

    assert double(3) == 6 and double(3) == 6
    assert calls == [3]
    assert double.cache is cache
    st = cache.stats()
    assert st["hits"] == 1 and st["misses"] >= 1
    double.cache_clear()
    assert len(cache) == 0
    assert double(3) == 6 and calls == [3, 3]
    assert double.__wrapped__.__name__ == "double" and double.__name__ == "double"


def test_key_rules(cache_cls: type) -> None:
    calls = []

    @cached(cache_cls(maxsize=100))
    def f(*args: Any, **kwargs: Any) -> int:
        calls.append((args, kwargs))
        return len(calls)

    assert f(1) == f(1.0) == f(True)  # typed=False, as functools
    assert f(a=1, b=2) == f(b=2, a=1)  # keyword order does not matter
    assert f(1, 2) != f((1, 2))
    assert f(1, a=2) != f(1, 2)
    assert f("x") != f(("x",))
    assert len(calls) == 7  # 1, kwargs, (1, 2), ((1, 2),), (1, a=2), 'x', ('x',)
    assert make_key((1,), {}) == 1 and make_key((1, 2), {}) == (1, 2)


def test_unhashable_argument_raises(cache_cls: type) -> None:
    @cached(cache_cls(maxsize=10))
    def f(x: Any) -> Any:
        return x

    with pytest.raises(TypeError):
        f([1, 2])


def test_custom_key(cache_cls: type) -> None:
    calls = []

    @cached(cache_cls(maxsize=10), key=lambda user, *, verbose=False: user.lower())
    def greet(user: str, *, verbose: bool = False) -> str:
        calls.append(user)
        return f"hi {user}"

    assert greet("Bob") == "hi Bob"
    assert greet("BOB", verbose=True) == "hi Bob"
    assert calls == ["Bob"]


def test_exceptions_not_cached(cache_cls: type) -> None:
    n = {"calls": 0}

    @cached(cache_cls(maxsize=10))
    def flaky(x: int) -> int:
        n["calls"] += 1
        if n["calls"] == 1:
            raise ValueError("boom")
        return x

    with pytest.raises(ValueError):
        flaky(1)
    assert flaky(1) == 1 and n["calls"] == 2
    assert flaky._inflight == {}


def test_recursion_same_key_does_not_deadlock(cache_cls: type) -> None:
    depth = {"n": 0}

    @cached(cache_cls(maxsize=10))
    def rec(x: int) -> int:
        depth["n"] += 1
        if depth["n"] < 3:
            inner: int = rec(x)  # same key, same thread, while in flight
            return inner + 1
        return 0

    assert rec(5) == 2


def test_fib_recursion(cache_cls: type) -> None:
    @cached(cache_cls(maxsize=None))
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(80) == 23416728348467685


def test_a_cached_function_binds_as_a_method_when_put_on_a_class(cache_cls: type) -> None:
    """As a function and functools.lru_cache do: the instance becomes the first argument."""

    def area(self: Any, scale: int = 1) -> int:
        return int(self.w * self.h * scale)

    class Rect:
        def __init__(self, w: int, h: int) -> None:
            self.w, self.h = w, h

        cached_area = cached(cache_cls(maxsize=10))(area)

    r = Rect(2, 3)
    assert r.cached_area() == 6 and r.cached_area(2) == 12 and r.cached_area() == 6
    assert Rect.cached_area(r, 3) == 18  # looked up on the class: not bound
    assert r.cached_area.__self__ is r
    assert Rect.cached_area.cache.stats()["hits"] == 1


def test_a_cached_function_pickles_and_copies_by_reference(cache_cls: type) -> None:
    """As functools.lru_cache does: pickle, copy and deepcopy give the function itself."""
    import copy
    import pickle

    @cached(cache_cls(maxsize=10))
    def tripled(x: int) -> int:
        return x * 3

    tripled.__qualname__ = name = f"_pickled_{cache_cls.__name__}"
    globals()[name] = tripled
    try:
        assert pickle.loads(pickle.dumps(tripled)) is tripled
        assert copy.copy(tripled) is tripled
        assert copy.deepcopy({"f": tripled})["f"] is tripled
    finally:
        del globals()[name]


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="before 3.11 every Python call uses the C stack: a plain recursive function"
    " overflows it at this recursion limit too",
)
def test_deep_recursion_raises_recursion_error_not_a_crash(isolated: Any) -> None:
    """A raised recursion limit: the compiled miss path counts its C frames as
    recursion, so the C stack does not overflow before the limit is reached."""
    isolated(
        """
        import sys
        from memcache_ext import cached
        sys.setrecursionlimit(30_000)
        @cached(Cache(maxsize=None))
        def down(n):
            return 0 if n == 0 else down(n - 1) + 1
        try:
            down(100_000)
        except RecursionError:
            pass
        else:
            raise AssertionError("no RecursionError")
        assert down(100) == 100
    """,
        timeout=60,
    )


def test_validation(cache_cls: type) -> None:
    with pytest.raises(TypeError):
        cached({})  # type: ignore[call-overload]  # a dict has no peek
    with pytest.raises(TypeError):
        cached(cache_cls(), key=5)  # type: ignore[call-overload]  # deliberately wrong


def test_rejected_value_still_returned(cache_cls: type) -> None:
    @cached(cache_cls(maxsize=10, max_bytes=10, sizeof=lambda o: 100 if o == "big" else 1))
    def f(x: int) -> str:
        return "big"

    assert f(1) == "big"
    assert len(f.cache) == 0


# -- methods ---------------------------------------------------------------------


def test_method_does_not_keep_self_alive(cache_cls: type) -> None:
    cache = cache_cls(maxsize=100)

    class Service:
        def __init__(self, k: int) -> None:
            self.k = k

        @cached(cache)
        def compute(self, x: int) -> int:
            return self.k * x

    a, b = Service(2), Service(3)
    assert a.compute(5) == 10 and b.compute(5) == 15  # per-instance entries
    assert a.compute(5) == 10 and cache.stats()["hits"] == 1
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None
    assert len(Service.compute._instance_tokens) == 1  # only b's token is left
    assert b.compute(5) == 15


def test_method_id_reuse_sees_no_stale_entry(cache_cls: type) -> None:
    cache = cache_cls(maxsize=1000)

    class Obj:
        def __init__(self, k: int) -> None:
            self.k = k

        @cached(cache)
        def value(self) -> int:
            return self.k

    # Create and drop many objects: ids get reused, results must not leak across.
    for k in range(300):
        o = Obj(k)
        assert o.value() == k
        del o


def test_unweakrefable_instance_keyed_by_itself(cache_cls: type) -> None:
    class Slotted:
        __slots__ = ("k",)

        def __init__(self, k: int) -> None:
            self.k = k

        def __hash__(self) -> int:
            return hash(self.k)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Slotted) and other.k == self.k

        @cached(cache_cls(maxsize=10))
        def get(self) -> int:
            return self.k

    assert Slotted(4).get() == 4 and Slotted(4).get() == 4
    assert Slotted.get.cache.stats()["hits"] == 1


def test_method_detection() -> None:
    from memcache_ext.decorators import _looks_like_method

    class C:
        def m(self) -> None: ...

        @classmethod
        def c(cls) -> None: ...

        @staticmethod
        def s(x: int) -> None: ...

    def plain(self: Any) -> None: ...

    assert _looks_like_method(C.m)
    assert _looks_like_method(C.c.__func__)  # type: ignore[attr-defined]  # a bound classmethod
    assert not _looks_like_method(C.s)
    assert not _looks_like_method(plain)


def test_classmethod(cache_cls: type) -> None:
    calls = []

    class C:
        @classmethod
        @cached(cache_cls(maxsize=10))
        def make(cls, x: int) -> str:
            calls.append(x)
            return f"{cls.__name__}{x}"

    class D(C):
        pass

    assert C.make(1) == "C1" and D.make(1) == "D1" and C.make(1) == "C1"
    assert calls == [1, 1]


# -- threads (in a subprocess: a deadlock fails on the timeout) ---------------------


def test_threads_share_one_computation(isolated: Any) -> None:
    isolated(
        """
        import time
        from memcache_ext import cached
        calls = []
        started = threading.Event()
        @cached(Cache(maxsize=100))
        def slow(x):
            calls.append(x)
            started.set()
            time.sleep(0.2)
            return x * 10
        T = 16
        barrier = threading.Barrier(T)
        results = [None] * T
        def work(i):
            barrier.wait()
            results[i] = slow(7)
        ts = [threading.Thread(target=work, args=(i,)) for i in range(T)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert calls == [7], calls
        assert results == [70] * T
        assert slow._inflight == {}
    """,
        timeout=60,
    )


def test_threads_all_get_the_exception(isolated: Any) -> None:
    isolated(
        """
        import time
        from memcache_ext import cached
        calls = []
        @cached(Cache(maxsize=100))
        def bad(x):
            calls.append(x)
            # fail once every other caller waits on this computation (a caller
            # that came later would compute again: exceptions are not cached)
            flight = next(iter(bad._inflight.values()))
            end = time.monotonic() + 30
            while len(flight.future._condition._waiters) < T - 1 and time.monotonic() < end:
                time.sleep(0.001)
            raise KeyError("nope")
        T = 8
        barrier = threading.Barrier(T)
        errors = []
        def work():
            barrier.wait()
            try:
                bad(1)
            except KeyError as e:
                errors.append(e)
        ts = [threading.Thread(target=work) for _ in range(T)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert len(calls) == 1, calls
        assert len(errors) == T
        assert len(bad.cache) == 0
    """,
        timeout=60,
    )


def test_threads_many_keys_hammer(isolated: Any) -> None:
    isolated(
        """
        sys.setswitchinterval(1e-6)
        from memcache_ext import cached
        import collections
        counts = collections.Counter()
        lock = threading.Lock()
        @cached(Cache(maxsize=50))
        def f(x):
            with lock:
                counts[x] += 1
            return x * 3
        def work(seed):
            for i in range(3000):
                k = (i * 7 + seed) % 80
                assert f(k) == k * 3
        ts = [threading.Thread(target=work, args=(s,)) for s in range(8)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert f._inflight == {}
        assert len(f.cache) <= 50
    """,
        timeout=120,
    )


# -- asyncio ---------------------------------------------------------------------


def test_async_basic_and_shared(cache_cls: type) -> None:
    calls = []

    @cached(cache_cls(maxsize=10))
    async def fetch(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.05)
        return x + 1

    assert asyncio.iscoroutinefunction(fetch)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(fetch(1) for _ in range(10))))

    assert asyncio.run(main()) == [2] * 10
    assert calls == [1]
    assert asyncio.run(fetch(1)) == 2 and calls == [1]


def test_async_exception_reaches_every_waiter(cache_cls: type) -> None:
    calls = []

    @cached(cache_cls(maxsize=10))
    async def bad(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.02)
        raise RuntimeError("no")

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(bad(1) for _ in range(5)), return_exceptions=True))

    res = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in res)
    assert calls == [1]
    assert len(bad.cache) == 0 and bad._inflight == {}


def test_async_cancelling_one_waiter_keeps_the_others(cache_cls: type) -> None:
    calls = []

    @cached(cache_cls(maxsize=10))
    async def slow(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.1)
        return x * 2

    async def main() -> tuple[Any, Any, Any]:
        first = asyncio.ensure_future(slow(4))  # the leader
        second = asyncio.ensure_future(slow(4))
        await asyncio.sleep(0.01)
        first.cancel()
        r2 = await second
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.sleep(0)
        return r2, slow.cache.peek(4), await slow(4)

    assert asyncio.run(main()) == (8, 8, 8)
    assert calls == [4]


def test_async_all_waiters_cancelled_result_still_cached(cache_cls: type) -> None:
    @cached(cache_cls(maxsize=10))
    async def slow(x: int) -> int:
        await asyncio.sleep(0.05)
        return x

    async def main() -> Any:
        t = asyncio.ensure_future(slow(9))
        await asyncio.sleep(0.01)
        t.cancel()
        await asyncio.sleep(0.1)
        return slow.cache.peek(9)

    assert asyncio.run(main()) == 9


def test_async_recursion_same_key(cache_cls: type) -> None:
    depth = {"n": 0}

    @cached(cache_cls(maxsize=10))
    async def rec(x: int) -> int:
        depth["n"] += 1
        if depth["n"] < 3:
            inner: int = await rec(x)
            return inner + 1
        return 0

    assert asyncio.run(asyncio.wait_for(rec(1), 5)) == 2


def test_async_method_weakref(cache_cls: type) -> None:
    class Repo:
        @cached(cache_cls(maxsize=10))
        async def load(self, x: int) -> int:
            return x

    r = Repo()
    assert asyncio.run(r.load(3)) == 3
    ref = weakref.ref(r)
    del r
    gc.collect()
    assert ref() is None


def test_async_waiters_on_two_event_loops(isolated: Any) -> None:
    isolated(
        """
        import asyncio, time
        from memcache_ext import cached
        calls = []
        @cached(Cache(maxsize=10))
        async def slow(x):
            calls.append(x)
            await asyncio.sleep(0.3)
            return x * 5
        results = []
        barrier = threading.Barrier(4)
        def work():
            async def main():
                barrier.wait()
                return await slow(2)
            results.append(asyncio.run(main()))
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert results == [10] * 4, results
        assert calls == [2], calls
    """,
        timeout=60,
    )


@pytest.mark.parametrize(
    "call",
    [
        ((1,), {}),
        (("a",), {}),
        ((1.5,), {}),
        ((None,), {}),
        ((1, 2), {}),
        (((1, 2),), {}),
        ((), {}),
        ((1,), {"y": 2}),
        ((), {"b": 1, "a": 2}),
    ],
)
def test_keys_follow_make_key_on_both_paths(cache_cls: type, call: Any) -> None:
    """A plain function over CLruCache takes the compiled hit path (CachedCall);
    both paths must store under make_key's key."""
    args, kwargs = call
    cache = cache_cls(10)

    def f(*a: Any, **kw: Any) -> str:
        return "v"

    wrapped = cached(cache)(f)
    assert type(wrapped).__name__ == (
        "CachedCall" if cache_cls.__name__ == "CLruCache" else "function"
    )
    assert wrapped(*args, **kwargs) == "v" and wrapped(*args, **kwargs) == "v"
    assert cache.keys() == [make_key(args, kwargs)]
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
    assert wrapped.__name__ == "f" and wrapped.__wrapped__ is f and wrapped.cache is cache


# -- the forms of the decorator --------------------------------------------------------

FORMS = (
    "use @cached, @cached(), @cached(maxsize=..., ttl=..., max_bytes=..., policy=...) "
    "(each builds an LruCache), or @cached(cache) with a cache instance such as "
    "@cached(LruCache(maxsize=1024))"
)


def test_forms_that_build_an_lru_cache() -> None:
    from memcache_ext import LruCache

    calls: list[Any] = []

    @cached
    def bare(x: int) -> int:
        calls.append(("bare", x))
        return x

    @cached()
    def empty(x: int) -> int:
        calls.append(("empty", x))
        return x

    @cached(maxsize=10, ttl=60, max_bytes=10_000, policy="s3fifo")
    def tuned(x: int) -> int:
        calls.append(("tuned", x))
        return x

    @cached(key=lambda x: x % 2)
    def parity(x: int) -> int:
        calls.append(("parity", x))
        return x % 2

    for f in (bare, empty, tuned, parity):
        assert f(1) == f(1)
        assert isinstance(f.cache, LruCache)
    assert calls == [("bare", 1), ("empty", 1), ("tuned", 1), ("parity", 1)]
    assert parity(3) == 1 and len(calls) == 4
    assert bare.cache.maxsize == empty.cache.maxsize == 128 and bare.cache is not empty.cache
    c = tuned.cache
    assert (c.maxsize, c.ttl, c.max_bytes, c.policy) == (10, 60, 10_000, "s3fifo")
    assert bare.__name__ == "bare" and bare.__wrapped__.__name__ == "bare"


def test_bare_form_on_async_functions_and_methods() -> None:
    @cached
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    class Repo:
        @cached
        def load(self, x: int) -> int:
            return x * 2

    assert asyncio.run(fetch(1)) == 2 and fetch.cache.stats()["misses"] == 1
    r = Repo()
    assert r.load(2) == 4 and r.load(2) == 4 and Repo.load.cache.stats()["hits"] == 1


def test_what_a_type_checker_sees() -> None:
    """CI runs mypy on this file: the signature is kept, bound through an instance,
    and ``cache`` has the cache's type (an unused ignore below fails that run)."""
    own: PyLruCache[int, str] = PyLruCache(4)

    @cached(own)
    def name(x: int) -> str:
        return str(x)

    class Repo:
        @cached(maxsize=4)
        def load(self, x: int) -> int:
            return x

    if TYPE_CHECKING:
        from typing_extensions import assert_type

        assert_type(name(1), str)
        assert_type(name.cache, PyLruCache[int, str])
        assert_type(Repo().load(1), int)
        assert_type(Repo.load.cache, PyLruCache[Any, Any])
        name("1")  # type: ignore[arg-type]  # the signature is checked
        Repo().load("1")  # type: ignore[arg-type]  # self is bound
    assert name(1) == "1" and name.cache is own and name.__wrapped__(2) == "2"
    name.cache_clear()
    assert len(own) == 0 and Repo().load(3) == 3


@pytest.mark.parametrize(
    "bad, says",
    [
        (
            {},
            "cached() needs a cache with get(), peek(), set() and clear(); "
            "dict has no peek(), set(): ",
        ),
        (
            10,
            "cached(10): the first argument is the cache to use, not its size: "
            "write @cached(maxsize=10); ",
        ),
        (object(), "object has no get(), peek(), set(), clear(): "),
        ("users", "str has no get(), peek(), set(), clear(): "),
    ],
    ids=["dict", "int", "object", "str"],
)
def test_a_wrong_first_argument_names_the_right_forms(bad: Any, says: str) -> None:
    with pytest.raises(TypeError) as err:
        cached(bad)
    assert says in str(err.value) and str(err.value).endswith(FORMS)


def test_a_cache_class_instead_of_an_instance(cache_cls: type) -> None:
    name = cache_cls.__name__
    with pytest.raises(TypeError) as err:
        cached(cache_cls)
    assert str(err.value) == (
        f"cached() needs a cache instance, not the class {name}: "
        f"write @cached({name}(maxsize=...)); {FORMS}"
    )


def test_a_cache_and_settings_together(cache_cls: type) -> None:
    with pytest.raises(
        TypeError,
        match=r"takes a cache or the settings of a new one, not both"
        r" \(got a \w+ and maxsize=, ttl=\): write @cached\(maxsize=\.\.\., "
        r"ttl=\.\.\.\) for a new LruCache",
    ):
        cached(cache_cls(), maxsize=5, ttl=1)


def test_bad_settings_and_bad_targets() -> None:
    with pytest.raises(ValueError, match="maxsize must be >= 0"):
        cached(maxsize=-1)
    with pytest.raises(ValueError, match="'lru', 's3fifo'"):
        cached(policy="arc")
    with pytest.raises(TypeError) as err:
        cached()(5)  # type: ignore[arg-type]  # deliberately wrong
    assert str(err.value) == f"cached decorates a function or method, not 'int'; {FORMS}"


# -- leases: a write during the computation is never overwritten ---------------------------


def blocked_loader(calls: list[Any]) -> tuple[Any, threading.Event, threading.Event]:
    started, go = threading.Event(), threading.Event()

    def load(user: int) -> str:
        calls.append(user)
        started.set()
        assert go.wait(10), "the writer never let the computation finish"
        return f"old {user}"

    return load, started, go


WRITES = {
    "invalidate": lambda c: c.invalidate(7),
    "set": lambda c: c.set(7, "new 7"),
    "setitem": lambda c: c.__setitem__(7, "new 7"),
    "pop": lambda c: c.pop(7, None),
    "clear": lambda c: c.clear(),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_during_the_computation_wins(cache_cls: type, write: str) -> None:
    """The cache-aside race: the reader misses and loads the old row, the writer
    commits and invalidates, then the reader would store the old row."""
    cache = cache_cls(maxsize=10)
    calls: list[Any] = []
    load, started, go = blocked_loader(calls)
    wrapped = cached(cache)(load)
    results: list[Any] = []
    reader = threading.Thread(target=lambda: results.append(wrapped(7)))
    second = threading.Thread(target=lambda: results.append(wrapped(7)))
    reader.start()
    assert started.wait(10)
    second.start()  # joins the computation in flight
    flight = next(iter(wrapped._inflight.values()))
    eventually(lambda: len(flight.future._condition._waiters) == 1, what="second joined")
    WRITES[write](cache)
    go.set()
    reader.join(10)
    second.join(10)
    assert results == ["old 7", "old 7"]  # both callers get the value computed
    assert calls == [7]  # single-flight kept
    if write in ("set", "setitem"):
        assert cache.peek(7) == "new 7"  # the writer's value, not the stale one
        assert wrapped(7) == "new 7"
    else:
        assert 7 not in cache  # not stored
        go.set()
        assert wrapped(7) == "old 7" and calls == [7, 7]  # computed again, stored this time
        assert cache.peek(7) == "old 7"
    assert wrapped._inflight == {}


def test_a_write_during_an_async_computation_wins(cache_cls: type) -> None:
    cache = cache_cls(maxsize=10)
    calls: list[int] = []

    async def main() -> list[Any]:
        started, go = asyncio.Event(), asyncio.Event()

        @cached(cache)
        async def load(user: int) -> str:
            calls.append(user)
            started.set()
            await go.wait()
            return f"old {user}"

        first, second = asyncio.ensure_future(load(7)), asyncio.ensure_future(load(7))
        await started.wait()
        cache.invalidate(7)
        go.set()
        return list(await asyncio.gather(first, second))

    assert asyncio.run(main()) == ["old 7", "old 7"]
    assert calls == [7] and 7 not in cache


def test_a_clear_during_a_method_computation_wins(cache_cls: type) -> None:
    cache = cache_cls(maxsize=10)
    calls: list[Any] = []
    load, started, go = blocked_loader(calls)

    class Repo:
        @cached(cache)
        def user(self, user_id: int) -> str:
            return str(load(user_id))

    repo = Repo()
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(repo.user(7)))
    t.start()
    assert started.wait(10)
    cache.clear()
    go.set()
    t.join(10)
    assert results == ["old 7"] and len(cache) == 0


class LeaseLog:
    """A cache of this package behind a proxy that records the lease calls."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.log: list[str] = []
        self.get, self.peek, self.clear = cache.get, cache.peek, cache.clear

    def set(self, key: Any, value: Any) -> Any:
        self.log.append("set")
        return self.cache.set(key, value)

    def lease(self, key: Any) -> Any:
        self.log.append("lease")
        return self.cache.lease(key)

    def fill(self, key: Any, value: Any, token: Any) -> Any:
        self.log.append("fill")
        return self.cache.fill(key, value, token)

    def drop_lease(self, token: Any) -> None:
        self.log.append("drop_lease")
        self.cache.drop_lease(token)


def test_the_miss_path_takes_a_lease_and_drops_it_on_error(cache_cls: type) -> None:
    proxy = LeaseLog(cache_cls(maxsize=10))
    fail = [True]

    @cached(proxy)
    def load(x: int) -> int:
        if fail[0]:
            raise KeyError(x)
        return x

    with pytest.raises(KeyError):
        load(1)
    assert proxy.log == ["lease", "drop_lease"]
    fail[0] = False
    assert load(1) == 1 and load(1) == 1
    assert proxy.log == ["lease", "drop_lease", "lease", "fill"]

    async def aload_ok() -> int:
        @cached(proxy)
        async def aload(x: int) -> int:
            if fail[0]:
                raise KeyError(x)
            return x + 100

        fail[0] = True
        with pytest.raises(KeyError):
            await aload(2)
        fail[0] = False
        loaded: int = await aload(2)
        return loaded

    proxy.log.clear()
    assert asyncio.run(aload_ok()) == 102
    assert proxy.log == ["lease", "drop_lease", "lease", "fill"]


def test_a_cache_without_leases_keeps_working() -> None:
    class DictCache:
        """get/peek/set/clear only, as a cache of one's own may be."""

        def __init__(self) -> None:
            self.data: dict[Any, Any] = {}

        def get(self, key: Any, default: Any = None) -> Any:
            return self.data.get(key, default)

        peek = get

        def set(self, key: Any, value: Any) -> bool:
            self.data[key] = value
            return True

        def clear(self) -> None:
            self.data.clear()

    calls: list[int] = []
    store = DictCache()

    @cached(store)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    @cached(store, key=lambda x: ("async", x))
    async def asquare(x: int) -> int:
        return x * x

    assert square(3) == 9 and square(3) == 9 and calls == [3]
    assert asyncio.run(asquare(4)) == 16 and store.data == {3: 9, ("async", 4): 16}


def test_a_caller_after_a_write_does_not_share_the_stale_computation(cache_cls: type) -> None:
    """Single-flight stops at a write: a caller that arrives after an
    invalidation, while the computation that read the old row still runs, gets
    a computation of its own instead of the stale result."""
    cache = cache_cls(maxsize=10)
    db = {7: "old"}
    first_started, release_first = threading.Event(), threading.Event()
    calls: list[str] = []

    @cached(cache)
    def user(user_id: int) -> str:
        row = db[user_id]
        calls.append(row)
        if row == "old":
            first_started.set()
            assert release_first.wait(10)
        return row

    results: dict[str, Any] = {}
    first = threading.Thread(target=lambda: results.__setitem__("first", user(7)))
    first.start()
    assert first_started.wait(10)
    db[7] = "new"
    cache.invalidate(7)
    second = threading.Thread(target=lambda: results.__setitem__("second", user(7)))
    second.start()  # arrives after the write: must not wait for the "old" computation
    second.join(10)
    stuck = second.is_alive()
    release_first.set()
    first.join(10)
    second.join(10)
    assert not stuck, "the caller after the write joined the stale computation"
    assert results == {"first": "old", "second": "new"} and calls == ["old", "new"]
    assert cache[7] == "new"


def test_an_async_caller_after_a_write_does_not_share_the_stale_computation(
    cache_cls: type,
) -> None:
    cache = cache_cls(maxsize=10)
    db = {7: "old"}

    async def main() -> tuple[str, str]:
        started, release = asyncio.Event(), asyncio.Event()

        @cached(cache)
        async def user(user_id: int) -> str:
            row = db[user_id]
            if row == "old":
                started.set()
                await release.wait()
            return row

        first = asyncio.ensure_future(user(7))
        await started.wait()
        db[7] = "new"
        cache.invalidate(7)
        second = await user(7)
        release.set()
        return await first, second

    assert asyncio.run(main()) == ("old", "new")
    assert cache[7] == "new"


# -- a review's cases (each failed on the code before it) ------------------------------------


def test_an_async_computation_cancelled_before_its_first_step_frees_its_key(
    cache_cls: type,
) -> None:
    """A shutdown that cancels every task in the loop turn of a miss cancels the
    computing task before it runs: its clean-up, inside the coroutine, never ran, and
    every later call for that key waited on the dead flight forever."""
    calls = []

    @cached(cache_cls(maxsize=16))
    async def fetch(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.01)
        return x * 2

    async def first() -> None:
        t = asyncio.create_task(fetch(1))
        await asyncio.sleep(0)  # t misses and schedules the computing task
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(t, return_exceptions=True)

    asyncio.run(first())
    assert fetch._inflight == {}  # the test hook
    assert asyncio.run(asyncio.wait_for(fetch(1), 5)) == 2
    assert calls == [1]


def test_async_mutual_recursion_through_another_key_does_not_deadlock(cache_cls: type) -> None:
    """a -> b -> a: b's computation runs in a task of its own, so only the computing
    task itself was seen as re-entry, and b's call of a waited on a, which waited on b.
    The sync form computes such a call directly; the async one now does too."""
    graph = {"a": ["b"], "b": ["a"]}

    def resolver(cache: Any) -> Any:
        visiting: set[str] = set()

        @cached(cache)
        async def resolve(name: str) -> Any:
            if name in visiting:
                return ("cycle", name)
            visiting.add(name)
            try:
                return (name, [await resolve(dep) for dep in graph[name]])
            finally:
                visiting.discard(name)

        return resolve

    expected = ("a", [("b", [("cycle", "a")])])
    assert asyncio.run(asyncio.wait_for(resolver(cache_cls(10))("a"), 5)) == expected


class _Point:
    def __init__(self, x: int) -> None:
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Point) and other.x == self.x

    def __hash__(self) -> int:
        return hash(self.x)


def test_a_bound_method_is_cached_as_a_plain_function(cache_cls: type) -> None:
    """``self.load = cached(...)(self._load)``: the bound method's first argument was
    taken for ``self``: keyed by identity (equal arguments never hit), and a call
    without positional arguments raised IndexError."""

    class Repo:
        def __init__(self) -> None:
            self.calls = 0
            self.load = cached(cache_cls(10))(self._load)
            self.settings = cached(cache_cls(10))(self._settings)

        def _load(self, p: _Point, *, scale: int = 1) -> int:
            self.calls += 1
            return p.x * scale

        def _settings(self) -> dict[str, int]:
            self.calls += 1
            return {"n": 1}

    r = Repo()
    assert [r.load(_Point(1)) for _ in range(3)] == [1, 1, 1]
    assert r.load(p=_Point(2), scale=3) == r.load(p=_Point(2), scale=3) == 6
    assert r.settings() == r.settings() == {"n": 1}
    assert r.calls == 3


def test_a_method_under_another_decorator_is_still_a_method(cache_cls: type) -> None:
    """``@cached`` over a ``functools.wraps(*args, **kwargs)`` decorator: the wrapper's
    own code has no ``self``, so the instance became part of the key (kept alive, and
    an unhashable instance raised TypeError)."""
    import functools

    def logged(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        return wrapper

    class Svc:
        __hash__ = None  # type: ignore[assignment]  # unhashable, as a plain dataclass

        @cached(cache_cls(10))
        @logged
        def load(self, key: str) -> str:
            return key.upper()

    s = Svc()
    assert s.load("k") == s.load("k") == "K"
    # and a bound method under such a decorator is still a plain function
    calls = []

    def load(key: _Point) -> int:
        calls.append(key)
        return key.x

    class Holder:
        def _load(self, key: _Point) -> int:
            return load(key)

    bound = cached(cache_cls(10))(logged(Holder()._load))
    assert [bound(_Point(1)) for _ in range(3)] == [1, 1, 1] and len(calls) == 1
    ref = weakref.ref(s)
    del s
    gc.collect()
    assert ref() is None


def test_a_method_called_without_self_positionally_works_or_says_why(cache_cls: type) -> None:
    """``Repo.load(self=r, key=...)`` and ``Repo.load()`` raised IndexError; now the
    function answers, as functools.lru_cache's does (uncached)."""

    class Repo:
        @cached(cache_cls(10))
        def load(self, key: str) -> str:
            return key * 2

        @cached(cache_cls(10), key=lambda key: key)
        def load_keyed(self, key: str) -> str:
            return key * 3

        @cached(cache_cls(10))
        async def aload(self, key: str) -> str:
            return key * 4

    r = Repo()
    assert Repo.load(self=r, key="k") == "kk"
    assert Repo.load_keyed(self=r, key="k") == "kkk"
    assert asyncio.run(Repo.aload(self=r, key="k")) == "kkkk"
    with pytest.raises(TypeError, match="missing 2 required positional arguments"):
        Repo.load()


def test_recursion_depth_is_the_same_for_every_call_form(isolated: Any) -> None:
    """The compiled path's calls with two arguments or keywords went through
    ``type(self).__call__``: one more level each, so RecursionError at 197 levels
    where one argument (and the pure twin) reached 246."""
    isolated(
        """
        from memcache_ext import cached

        def depth(call):
            n = 1
            while True:
                try:
                    call(n)
                except RecursionError:
                    return n - 1
                n += 1

        @cached(Cache(None))
        def one(n):
            return 0 if n == 0 else 1 + one(n - 1)

        @cached(Cache(None))
        def two(n, m):
            return 0 if n == 0 else 1 + two(n - 1, m)

        @cached(Cache(None))
        def kw(n=0):
            return 0 if n == 0 else 1 + kw(n=n - 1)

        depths = []
        for f, call in ((one, lambda n: one(n)), (two, lambda n: two(n, 0)),
                        (kw, lambda n: kw(n=n))):
            depths.append(depth(lambda n: (f.cache_clear(), call(n))))
        assert max(depths) - min(depths) <= 2, depths
    """,
        timeout=120,
    )


def test_a_task_that_outlives_its_computation_joins_the_next_one(cache_cls: type) -> None:
    """A task started inside k's computation calls k after a newer computation of k
    began: it waits for that one (it is not re-entry), instead of computing again."""

    async def main() -> tuple[int, int, int]:
        calls = 0
        gate = asyncio.Event()
        spawned = []

        @cached(cache_cls(10))
        async def h(k: str) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:

                async def later() -> int:
                    await gate.wait()
                    return int(await h(k))

                spawned.append(asyncio.create_task(later()))
            await asyncio.sleep(0.05)
            return calls

        await h("x")
        h.cache.clear()
        second = asyncio.create_task(h("x"))  # a new computation of x
        await asyncio.sleep(0.01)
        gate.set()
        return await second, await spawned[0], calls

    assert asyncio.run(asyncio.wait_for(main(), 10)) == (2, 2, 2)
