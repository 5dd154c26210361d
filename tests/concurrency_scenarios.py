"""Concurrency and re-entrancy scenarios for both cache implementations.

Each scenario takes the cache class and a seed, runs threads (with a switch
interval of 1 us, so that threads interleave inside every operation) or
hostile callbacks against shared caches, then checks the invariants:
``len(c) == len(c.keys())``, ``nbytes`` equals the sum of the stored sizes,
the bounds hold, the hit and miss counters add up to the lookups made, and no
thread raised. tests/test_core_concurrency.py runs them in a subprocess with a
timeout (a crash or a deadlock fails one test), ten times each, and many
times over in the slow loop.

    python tests/concurrency_scenarios.py c|py [iterations] [scenario ...]
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable
from typing import Any

SWITCH_INTERVAL = 1e-6


def sizeof(obj: Any) -> int:
    """A deterministic size: the length of a str, 8 for anything else."""
    return len(obj) if isinstance(obj, str) else 8


def check(c: Any, measure: Callable[[Any], int] = sizeof) -> None:
    """The invariants of a cache nobody is using right now (and whose clock,
    if it has a TTL, stands still)."""
    c.expire()  # len() counts expired entries until something removes them
    keys, items = c.keys(), c.items()
    assert len(c) == len(keys) == len(items) == len(set(keys)), (len(c), len(keys), len(items))
    assert c.maxsize is None or len(c) <= c.maxsize, (len(c), c.maxsize)
    stats = c.stats()
    assert stats["size"] == len(c) and stats["nbytes"] == c.nbytes >= 0, (stats, c.nbytes)
    assert stats["lookups"] == stats["hits"] + stats["misses"]
    if c.max_bytes is not None:
        assert c.nbytes <= c.max_bytes, (c.nbytes, c.max_bytes)
        if c.ttl is None:  # with a TTL, expired entries are counted but not listed
            want = sum(measure(k) + measure(v) for k, v in items)
            assert c.nbytes == want, (c.nbytes, want)
    for k in keys:
        c.peek(k)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    """Run target(i) on n threads started together; re-raise the first error."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class Counter:
    """Lookups made by the threads (each thread adds its own at the end)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.n += n


def _mix(cache_cls: Any, seed: int, nthreads: int, policy: str, ops: int = 1500) -> None:
    """Every operation from many threads on two small shared caches."""
    caches = [
        cache_cls(40, max_bytes=600, sizeof=sizeof, policy=policy),
        cache_cls(100, policy=policy),
    ]
    lookups = [Counter(), Counter()]

    def worker(i: int) -> None:
        rnd = random.Random(seed * 100 + i)
        made = [0, 0]
        for _ in range(ops):
            j = 0 if rnd.random() < 0.6 else 1
            c = caches[j]
            k = f"k{rnd.randrange(150)}"
            r = rnd.random()
            if r < 0.25:
                c[k] = "v" * rnd.randrange(1, 30)
            elif r < 0.40:
                c.get(k)
                made[j] += 1
            elif r < 0.50:
                c.get_or_set(k, lambda: "f" * rnd.randrange(1, 30))
                made[j] += 1
            elif r < 0.55:
                c.setdefault(k, "d")
                made[j] += 1
            elif r < 0.60:
                c.pop(k, None)
            elif r < 0.64:
                c.invalidate(k)
            elif r < 0.67:
                try:
                    c.popitem()
                except KeyError:
                    pass
            elif r < 0.72:
                c.trim(rnd.choice((0.1, 0.5, 1.0)))
            elif r < 0.76:
                c.resize(maxsize=rnd.randrange(10, 120))
            elif r < 0.78 and j == 0:
                c.resize(max_bytes=rnd.choice((None, 300, 600, 2000)))
            elif r < 0.80:
                c.expire(limit=rnd.choice((None, 3, 20)))
            elif r < 0.81:
                c.clear()
            elif r < 0.85:
                token = c.lease(k)
                if rnd.random() < 0.8:
                    c.fill(k, "l" * rnd.randrange(1, 30), token)
                else:
                    c.drop_lease(token)
            elif r < 0.90:
                _ = k in c, c.peek(k), len(c)
            elif r < 0.93:
                c.update({k: "u", f"k{rnd.randrange(150)}": "w"})
            else:
                list(c), c.items(), list(reversed(c))
        for j in (0, 1):
            lookups[j].add(made[j])

    run_threads(nthreads, worker)
    from memcache_ext import deep_sizeof

    for c, measure, made in zip(caches, (sizeof, deep_sizeof), lookups, strict=True):
        if c.max_bytes is None:
            c.resize(max_bytes=10**6)  # measures every entry: checks nbytes too
        check(c, measure)
        stats = c.stats()
        assert stats["hits"] + stats["misses"] == made.n, (stats, made.n)


def mix2(cache_cls: Any, seed: int) -> None:
    _mix(cache_cls, seed, 2, "lru")


def mix4(cache_cls: Any, seed: int) -> None:
    _mix(cache_cls, seed, 4, "s3fifo")


def mix8(cache_cls: Any, seed: int) -> None:
    _mix(cache_cls, seed, 8, "lru", ops=800)


def mix8_s3fifo(cache_cls: Any, seed: int) -> None:
    _mix(cache_cls, seed, 8, "s3fifo", ops=800)


def trim_race(cache_cls: Any, seed: int) -> None:
    """Two threads trimming while two insert: trim removes what is there and
    returns how many it removed (it used to read the count, run Python code,
    then remove that many: another thread's trim in between made it unlink
    the list's sentinel and hang holding the GIL)."""
    c = cache_cls(1000)
    removed = Counter()

    def worker(i: int) -> None:
        rnd = random.Random(seed * 4 + i)
        if i % 2 == 0:
            n = 0
            for _ in range(3000):
                n += c.trim(rnd.choice((0.3, 0.5, 1.0)))
            removed.add(n)
        else:
            for j in range(3000):
                c[f"{i}-{j}"] = j

    run_threads(4, worker)
    check(c)
    assert c.stats()["evictions_by_reason"]["trim"] == removed.n


def budget(cache_cls: Any, seed: int) -> None:
    """What CacheManager(max_total_bytes=...) used to do: two byte-bounded
    caches whose sizeof makes room under a shared budget by trimming the
    fuller one (often its own cache, mid-insert), from four threads. It used to
    end with nbytes negative, len() != len(keys()) or SystemError from len()."""
    caches: list[Any] = []

    def measuring(obj: Any) -> int:
        if sum(c.nbytes for c in caches) + 20 > 5000:
            max(caches, key=lambda c: c.nbytes).trim(0.05)
        return 10

    caches += [cache_cls(None, max_bytes=5000, sizeof=measuring) for _ in range(2)]

    def worker(i: int) -> None:
        c = caches[i % 2]
        for j in range(3000):
            c[(seed, i, j)] = j

    run_threads(4, worker)
    for c in caches:
        check(c, lambda obj: 10)
    assert sum(c.nbytes for c in caches) <= 5000 + 4 * 20


def bound_toggle(cache_cls: Any, seed: int) -> None:
    """One thread taking the byte bound away, one setting it, two storing;
    they stop together every few operations and, with a bound set, every
    entry's size must be counted. PyLruCache's resize checked for "no bound"
    before taking its lock; a resize(None) in between zeroed every size, then
    the bound came back without a measure (nbytes 0 for 113 bytes held)."""
    c = cache_cls(None, max_bytes=10**6, sizeof=sizeof)
    pause = threading.Barrier(4)

    def steps(i: int) -> None:
        rnd = random.Random(seed * 4 + i)
        for j in range(600):
            if i == 0:
                c.resize(max_bytes=None)
            elif i == 1:
                c.resize(max_bytes=rnd.choice((10**5, 10**6)))
            else:
                c[f"k{rnd.randrange(50)}"] = "v" * rnd.randrange(1, 30)
            if j % 10 == 9:
                if pause.wait() == 0 and c.max_bytes is not None:
                    check(c)  # one of them checks while the others wait
                pause.wait()

    def worker(i: int) -> None:
        try:
            steps(i)
        except threading.BrokenBarrierError:
            return  # another thread failed: its error is the one raised
        except BaseException:
            pause.abort()  # the others would wait for this one for good
            raise

    run_threads(4, worker)


def copy_race(cache_cls: Any, seed: int) -> None:
    """copy() (and so pickle) while other threads store with and without a TTL,
    pop, and take the byte bound away and set it again: each copy is a state the
    cache was in. PyLruCache's __reduce__ read "no entry has a TTL" before its
    region (TypeError when one came meanwhile), and the bound after it (a copy
    with no bound and nbytes 1372)."""
    c = cache_cls(50, max_bytes=10**6, sizeof=sizeof)

    def worker(i: int) -> None:
        rnd = random.Random(seed * 4 + i)
        for j in range(300):
            if i == 0:
                cp = c.copy()
                if cp.max_bytes is None:
                    assert cp.nbytes == 0, cp.nbytes
                else:
                    check(cp)
            elif i == 1:
                c.resize(max_bytes=None if j % 2 else 10**6)
            else:
                k = f"k{rnd.randrange(4)}"
                if rnd.random() < 0.5:
                    c.set(k, "v" * rnd.randrange(1, 30), ttl=rnd.choice((None, 100.0)))
                else:
                    c.pop(k, None)

    run_threads(4, worker)


def callbacks(cache_cls: Any, seed: int) -> None:
    """sizeof, timer and on_evict that trim, clear, resize or insert into the
    same cache and into another one, from four threads."""
    other = cache_cls(50)
    box: list[Any] = []
    now = [0.0]
    running = [True]

    def on_evict(k: Any, v: Any, reason: str) -> None:
        if not running[0]:
            return
        c = box[0]
        other[k] = v
        r = random.random()
        if r < 0.05:
            c.clear()
        elif r < 0.15:
            c.trim(0.3)
        elif r < 0.25:
            c[f"again-{k}"] = "z"
        elif r < 0.30:
            c.resize(maxsize=random.randrange(5, 40))

    def measuring(obj: Any) -> int:
        if random.random() < 0.05:
            box[0].trim(0.5)
            other.clear()
        return sizeof(obj)

    def timer() -> float:
        if running[0]:
            now[0] += 0.01
            if random.random() < 0.02:
                other.trim(0.5)
        return now[0]

    c = cache_cls(30, 1.0, max_bytes=500, sizeof=measuring, timer=timer, on_evict=on_evict)
    box.append(c)

    def worker(i: int) -> None:
        rnd = random.Random(seed * 7 + i)
        for _ in range(600):
            k = f"{rnd.randrange(60)}"
            r = rnd.random()
            if r < 0.5:
                c.set(k, "v" * rnd.randrange(1, 25), ttl=rnd.choice((None, 0.05, 2.0)))
            elif r < 0.7:
                c.get(k)
            elif r < 0.8:
                c.get_or_set(k, lambda: "g")
            elif r < 0.9:
                c.expire(limit=rnd.choice((None, 3, 20)))
            else:
                c.pop(k, None)

    run_threads(4, worker)
    running[0] = False
    check(c)
    check(other)


class SlowKey:
    """A key whose __eq__ is slow Python code (threads switch inside it)."""

    __slots__ = ("v",)

    def __init__(self, v: int) -> None:
        self.v = v

    def __hash__(self) -> int:
        return self.v % 7  # many collisions: __eq__ runs on most lookups

    def __eq__(self, other: object) -> bool:
        total = 0
        for i in range(20):
            total += i
        return isinstance(other, SlowKey) and other.v == self.v


def slow_eq(cache_cls: Any, seed: int) -> None:
    """8 threads whose keys' __eq__ lets other threads in: exact counters, no
    error (PyLruCache's lock-free reads raised 'OrderedDict mutated')."""
    c = cache_cls(30)
    made = Counter()

    def worker(i: int) -> None:
        rnd = random.Random(seed + i)
        n = 0
        for _ in range(400):
            k = SlowKey(rnd.randrange(60))
            r = rnd.random()
            if r < 0.4:
                c[k] = i
            elif r < 0.8:
                c.get(k)
                n += 1
            elif r < 0.9:
                c.pop(k, None)
            else:
                list(c), c.items()
        made.add(n)

    run_threads(8, worker)
    check(c)
    assert c.stats()["hits"] + c.stats()["misses"] == made.n


def hostile_keys(cache_cls: Any, seed: int) -> None:
    """Keys whose __eq__ or __hash__ mutate, clear or resize the cache during
    every kind of operation, on one thread: no crash, the structure stays
    consistent; an operation either completes or raises RuntimeError (the
    cache changed under its lookup on every try) or the key's own error."""
    rnd = random.Random(seed)
    for policy in ("lru", "s3fifo"):
        c = cache_cls(8, policy=policy)

        class Key:
            cache = c

            def __init__(self, v: int, action: int) -> None:
                self.v, self.action = v, action

            def __hash__(self) -> int:
                if self.action == 5:
                    self.cache[f"h{self.v}"] = 1
                return 3  # every Key collides: each lookup runs __eq__

            def __eq__(self, other: object) -> bool:
                a, self.action = self.action, rnd.randrange(8)
                if a == 0:
                    self.cache.clear()
                elif a == 1:
                    self.cache.resize(maxsize=rnd.randrange(1, 10))
                elif a == 2:
                    self.cache.pop(Key(rnd.randrange(6), 7), None)
                elif a == 3:
                    self.cache[f"s{rnd.randrange(5)}"] = 0
                elif a == 4:
                    self.cache.trim(0.5)
                return isinstance(other, Key) and other.v == self.v

        for _ in range(300):
            k = Key(rnd.randrange(6), rnd.randrange(8))
            op = rnd.randrange(9)
            try:
                if op == 0:
                    c[k] = 1
                elif op == 1:
                    c.get(k)
                elif op == 2:
                    c.pop(k, None)
                elif op == 3:
                    c.setdefault(k, 2)
                elif op == 4:
                    c.get_or_set(k, lambda: 3)
                elif op == 5:
                    _ = k in c
                elif op == 6:
                    c.invalidate(k)
                elif op == 7:
                    del c[k]
                else:
                    c.popitem()
            except (KeyError, RuntimeError):
                pass
            keys = c.keys()
            assert len(c) == len(keys), (len(c), len(keys))
            assert c.maxsize is None or len(c) <= c.maxsize, (len(c), c.maxsize)
        c.resize(maxsize=8)


def eq_clears_during_pop(cache_cls: Any, seed: int) -> None:
    """A key whose __eq__ clears the cache during pop (PyLruCache died with
    SIGSEGV inside OrderedDict): pop finds nothing or the key, never crashes."""
    for _ in range(50):
        c = cache_cls(16)

        class K:
            armed = False
            cache = c

            def __hash__(self) -> int:
                return 1

            def __eq__(self, other: object) -> bool:
                if K.armed:
                    K.armed = False
                    self.cache.clear()
                return self is other

        keys = [K() for _ in range(8)]
        for i, k in enumerate(keys):
            c[k] = i
        K.armed = True
        assert c.pop(K(), "none") == "none"
        check(c)
        assert len(c) == 0


SCENARIOS: dict[str, Callable[[Any, int], None]] = {
    f.__name__: f
    for f in (
        mix2,
        mix4,
        mix8,
        mix8_s3fifo,
        trim_race,
        budget,
        bound_toggle,
        copy_race,
        callbacks,
        slow_eq,
        hostile_keys,
        eq_clears_during_pop,
    )
}


def main(argv: list[str]) -> int:
    impl = argv[0]
    iterations = int(argv[1]) if len(argv) > 1 else 1
    names = argv[2:] or list(SCENARIOS)
    if impl == "c":
        from memcache_ext._core_c import CLruCache as CacheClass
    else:
        from memcache_ext._core_py import PyLruCache as CacheClass
    sys.setswitchinterval(SWITCH_INTERVAL)
    for it in range(iterations):
        for name in names:
            SCENARIOS[name](CacheClass, it)
    print(f"{impl}: {iterations} x {len(names)} scenarios ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
