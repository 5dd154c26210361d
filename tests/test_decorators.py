"""cached(): keys, sharing of in-flight computations, exceptions, async, methods."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from memcache_ext import cached
from memcache_ext.decorators import make_key


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
            return rec(x) + 1  # same key, same thread, while in flight
        return 0

    assert rec(5) == 2


def test_fib_recursion(cache_cls: type) -> None:
    @cached(cache_cls(maxsize=None))
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(80) == 23416728348467685


def test_validation(cache_cls: type) -> None:
    with pytest.raises(TypeError):
        cached({})  # a dict has no peek
    with pytest.raises(TypeError):
        cached(cache_cls(), key=5)  # type: ignore[arg-type]  # deliberately wrong


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
    assert _looks_like_method(C.c.__func__)
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
            time.sleep(0.2)
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
            return await rec(x) + 1
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
