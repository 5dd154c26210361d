"""Benchmarks of the Redis tier: local hit, remote hit, invalidation propagation.

Starts its own redis-server on a free loopback port (needs the binary and redis-py).

    PYTHONPATH=src python benchmarks/bench_redis_tier.py            # a small table
    PYTHONPATH=src python -m pytest benchmarks/bench_redis_tier.py --benchmark-only
"""

from __future__ import annotations

import shutil
import statistics
import time
import timeit
from collections.abc import Iterator
from typing import Any

try:
    import pytest
except ImportError:  # pragma: no cover - standalone use without pytest
    pytest = None  # type: ignore[assignment]  # standalone use without pytest

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from memcache_ext import LruCache
from memcache_ext.redis import TieredCache
from memcache_ext.tools.procs import RedisServer

try:
    from memcache_ext import CLruCache
except ImportError:  # pragma: no cover - pure-Python install
    CLruCache = LruCache  # type: ignore[misc]  # pure-Python install


class Server(RedisServer):
    """The tools' throwaway redis-server, started at once, with the clients these benchmarks use."""

    def __init__(self) -> None:
        super().__init__()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )

    def tier(self, ns: str = "bench") -> TieredCache:
        t = TieredCache(LruCache(maxsize=100_000), self.client(), ns, poll_interval=0.05)
        assert t.wait_ready(15)
        return t


def propagation(writer: TieredCache, reader: TieredCache, n: int = 200) -> list[float]:
    """Seconds from a write's return until the other instance stops serving the old value.

    The reader polls every ~50 us, sleeping in between: a reader spinning
    without a pause would hold the GIL and delay the listener thread by
    Python's switch interval (5 ms) -- see notes/readme_redis.md.
    """
    delays = []
    for i in range(n):
        reader.get("hot")
        writer.set("hot", i)
        t0 = time.perf_counter()
        while reader.get("hot") != i:
            if time.perf_counter() - t0 > 10:
                raise RuntimeError("invalidation did not arrive")
            time.sleep(50e-6)
        delays.append(time.perf_counter() - t0)
    delays.sort()
    return delays


def remote_hit_once(tier: TieredCache, key: str = "remote") -> Any:
    tier.local.pop(key, None)
    return tier.get(key)


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[max(0, int(len(xs) * 0.99) - 1)]


if pytest is not None:

    @pytest.fixture(scope="module")
    def server() -> Iterator[Server]:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server not found")
        srv = Server()
        yield srv
        srv.stop()

    @pytest.mark.benchmark(group="hit")
    def test_bare_clrucache_hit(benchmark: Any) -> None:
        c: CLruCache[str, int] = CLruCache(maxsize=100_000)
        c["k"] = 1
        assert benchmark(c.get, "k") == 1

    @pytest.mark.benchmark(group="hit")
    def test_tier_local_hit(benchmark: Any, server: Server) -> None:
        t = server.tier("bench-local")
        t.set("k", 1)
        t.get("k")
        try:
            assert benchmark(t.get, "k") == 1
        finally:
            t.close()

    @pytest.mark.benchmark(group="remote")
    def test_tier_remote_hit(benchmark: Any, server: Server) -> None:
        t = server.tier("bench-remote")
        t.set("remote", {"id": 1, "name": "Ada", "tags": ["a", "b"]})
        try:
            assert benchmark(remote_hit_once, t)["id"] == 1
        finally:
            t.close()

    @pytest.mark.benchmark(group="propagation")
    def test_propagation(benchmark: Any, server: Server) -> None:
        a, b = server.tier("bench-prop"), server.tier("bench-prop")
        try:
            delays = benchmark.pedantic(propagation, args=(a, b, 50), rounds=3, iterations=1)
            benchmark.extra_info["median_us"] = statistics.median(delays) * 1e6
            benchmark.extra_info["p99_us"] = p99(delays) * 1e6
        finally:
            a.close()
            b.close()


def main() -> None:
    srv = Server()
    try:
        a, b = srv.tier("bench"), srv.tier("bench")
        bare: CLruCache[str, int] = CLruCache(maxsize=100_000)
        bare["k"] = 1
        a.set("k", 1)
        a.get("k")
        n = 1_000_000
        funcs = {"bare": bare.get, "tier": a.get, "local": a.local.get}
        best = dict.fromkeys(funcs, float("inf"))
        for _ in range(7):  # interleaved, best of 7: the noise of a shared machine
            for name, fn in funcs.items():
                t = timeit.timeit("g('k')", globals={"g": fn}, number=n) / n
                best[name] = min(best[name], t)
        t_bare, t_tier, t_loc = best["bare"], best["tier"], best["local"]
        value = {"id": 1, "name": "Ada", "tags": ["a", "b"]}
        a.set("remote", value)
        remote = []
        for _ in range(2000):
            t0 = time.perf_counter()
            remote_hit_once(b)
            remote.append(time.perf_counter() - t0)
        raw = srv.client()
        raw_get = []
        for _ in range(2000):
            t0 = time.perf_counter()
            raw.hmget("bench:remote", "v", "d")
            raw_get.append(time.perf_counter() - t0)
        delays = propagation(a, b, 200)
        rows = [
            (f"bare {type(bare).__name__}.get hit", t_bare, None),
            ("TieredCache.get local hit", t_tier, t_tier / t_bare),
            ("tier.local.get hit (direct, local only)", t_loc, t_loc / t_bare),
            ("remote hit (median)", statistics.median(remote), None),
            ("remote hit (p99)", p99(remote), None),
            ("raw redis-py HMGET (median)", statistics.median(raw_get), None),
            ("invalidation propagation (median, 200 writes)", statistics.median(delays), None),
            ("invalidation propagation (p99, 200 writes)", p99(delays), None),
        ]
        print(f"{'what':50} {'time':>12} {'vs bare':>8}")
        for name, secs, ratio in rows:
            shown = f"{secs * 1e9:.0f} ns" if secs < 1e-6 else f"{secs * 1e6:.0f} us"
            print(f"{name:50} {shown:>12} {'' if ratio is None else f'{ratio:.1f}x':>8}")
        print("(hits: timeit of g('k') with g bound beforehand, best of 7 interleaved runs)")
        a.close()
        b.close()
        raw.close()
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
