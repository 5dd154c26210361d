"""The Redis second tier (memcache_ext.redis) against a real redis-server.

A redis-server is started on a free loopback port for this module and always
stopped. Without the binary the module is skipped, or fails when
MEMCACHE_EXT_REQUIRE_REDIS=1 (CI). No assertion depends on timing: "eventually"
is a poll with a generous deadline; delays are measured and printed only.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support import DEADLINE, RedisServer, child_env, eventually, posix_only, require_redis

require_redis(module_level=True)

#: Every test here talks to a real redis-server started for this module.
pytestmark = pytest.mark.integration

import redis  # noqa: E402 - after require_redis

from memcache_ext import LruCache  # noqa: E402 - after require_redis
from memcache_ext.redis import (  # noqa: E402 - after require_redis
    COUNTERS,
    AsyncTieredCache,
    JsonSerializer,
    PickleSerializer,
    TieredCache,
)


@pytest.fixture
def redis_server(srv: RedisServer) -> RedisServer:
    return srv


@pytest.fixture
def make_tier(redis_server: RedisServer, ns: str) -> Iterator[Callable[..., TieredCache]]:
    made: list[tuple[TieredCache, Any]] = []

    def make(namespace: str = ns, local: Any = None, **kw: Any) -> TieredCache:
        client = redis_server.client()
        kw.setdefault("backoff", (0.02, 0.5))
        kw.setdefault("probe_interval", 0.05)
        # a shared, loaded CI machine: the calls here are not about the deadline
        kw.setdefault("deadline", 1.0)
        kw.setdefault("poll_interval", 0.05)
        tier = TieredCache(
            local if local is not None else LruCache(maxsize=10_000), client, namespace, **kw
        )
        made.append((tier, client))
        assert tier.wait_ready(DEADLINE), "listener did not subscribe"
        return tier

    yield make
    for tier, client in made:
        tier.close()
        client.close()


def raw_client(srv: RedisServer) -> redis.Redis:
    client: redis.Redis = srv.client()
    return client


# -- basics ---------------------------------------------------------------------------


def test_importing_the_package_does_not_import_redis() -> None:
    code = (
        "import sys, memcache_ext; from memcache_ext import LruCache, cache_manager; "
        "LruCache(4); assert 'redis' not in sys.modules, 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=child_env())


def test_read_through_write_through_and_namespacing(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    a = make_tier()
    b = make_tier()
    assert a.set("user:1", {"name": "Ada"}) is True
    eventually(lambda: b.stats()["invalidations_received"] >= 1, what="b got a's message")
    raw = raw_client(redis_server)
    assert raw.exists(f"{ns}:user:1") == 1
    assert 0 < raw.pttl(f"{ns}:user:1") <= 300_000
    assert b.get("user:1") == {"name": "Ada"}  # remote hit, now local
    assert b.local.peek("user:1") == {"name": "Ada"}
    assert b.get("user:1") == {"name": "Ada"}  # local hit
    assert b.get("missing", "dflt") == "dflt"
    st = b.stats()
    assert st["remote_hits"] == 1 and st["local_hits"] == 1 and st["remote_misses"] == 1
    assert a.stats()["writes"] == 1 and a.stats()["invalidations_sent"] == 1
    with pytest.raises(TypeError, match="keys must be str"):
        a.get(42)
    with pytest.raises(TypeError, match="keys must be str"):
        a.set(42, 1)
    raw.close()


def test_key_encoder(make_tier: Any, redis_server: RedisServer, ns: str) -> None:
    a = make_tier(key_encoder=lambda k: "/".join(map(str, k)))
    b = make_tier(key_encoder=lambda k: "/".join(map(str, k)))
    a.set(("user", 7), "x")
    raw = raw_client(redis_server)
    assert raw.exists(f"{ns}:user/7")
    assert b.get(("user", 7)) == "x"
    a.set(("user", 7), "y")
    eventually(lambda: b.get(("user", 7)) == "y", what="encoded key invalidated")
    raw.close()


def test_delete_invalidates_other_instances(make_tier: Any) -> None:
    a, b = make_tier(), make_tier()
    a.set("k", 1)
    assert b.get("k") == 1
    assert a.delete("k") is True
    eventually(lambda: b.local.peek("k") is None, what="b dropped its copy")
    assert b.get("k") is None
    assert a.delete("k") is False
    # counted by b's listener just after it drops the copy
    eventually(lambda: b.stats()["invalidations_received"] >= 1, what="b counted it")
    # Its own messages come back too, on its own listener's connection: Redis
    # writes to each subscriber separately, so b may see a message before a does.
    eventually(lambda: a.stats()["invalidations_ignored_own"] >= 1, what="a saw its own message")


def test_clear_remote(make_tier: Any, redis_server: RedisServer, ns: str) -> None:
    a, b = make_tier(), make_tier()
    other = make_tier(namespace=ns + "x")  # a namespace sharing the prefix is untouched
    for i in range(20):
        a.set(f"k{i}", i)
        b.get(f"k{i}")
    other.set("k0", "keep")
    raw = raw_client(redis_server)
    raw.set(f"{ns}:junk", "not one of ours")
    a.clear()
    # every value goes; each key keeps its version as a tombstone; anything else goes
    left = sorted(raw.keys(f"{ns}:*"))
    assert left == sorted(f"{ns}:k{i}".encode() for i in range(20))
    assert all(raw.hkeys(k) == [b"v"] for k in left)
    assert raw.exists(f"{ns}x:k0") and raw.hexists(f"{ns}x:k0", "d")
    assert a.stats()["remote_clears"] == 1
    eventually(lambda: len(b.local) == 0, what="b cleared by the clear message")
    assert len(a.local) == 0
    raw.close()


# -- consistency across instances ---------------------------------------------------------


def test_invalidation_propagation_two_threads_instances(make_tier: Any) -> None:
    a, b = make_tier(), make_tier()
    delays = []
    for i in range(200):
        assert b.get("hot") == (i - 1 if i else None)  # b holds the old value locally
        a.set("hot", i)
        t0 = time.perf_counter()
        eventually(lambda i=i: b.get("hot") == i, what=f"write {i} reached b")  # type: ignore[misc]  # a default-argument lambda
        delays.append(time.perf_counter() - t0)
        # once arrived, never stale again
        assert b.get("hot") == i and b.get("hot") == i
    delays.sort()
    med = statistics.median(delays) * 1e6
    p99 = delays[int(len(delays) * 0.99) - 1] * 1e6
    print(
        f"\ninvalidation propagation over {len(delays)} writes: "
        f"median {med:.0f} us, p99 {p99:.0f} us"
    )
    st = b.stats()
    # a message about the version b has already read from Redis is ignored as not newer
    assert st["invalidations_received"] + st["invalidations_ignored_old"] >= 200
    assert st["bad_messages"] == 0


CHILD = textwrap.dedent("""
    import json, sys, time
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from memcache_ext import LruCache
    from memcache_ext.redis import TieredCache
    port, ns = int(sys.argv[1]), sys.argv[2]
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                         socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    tier = TieredCache(LruCache(1000), client, ns, poll_interval=0.05, deadline=1.0)
    assert tier.wait_ready(15)
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd[0] == "get":
            out = tier.get(cmd[1], "<missing>")
        elif cmd[0] == "set":
            out = tier.set(cmd[1], cmd[2])
        elif cmd[0] == "stats":
            out = tier.stats()
            out.pop("local")
        else:
            break
        print(json.dumps(out), flush=True)
    tier.close()
""")


class Child:
    def __init__(self, port: int, ns: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(port), ns],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self._lines: list[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()
        assert self._next(60) == "READY"

    def _reader(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self._lines.append(line.strip())
                self._cv.notify_all()

    def _next(self, timeout: float = 30) -> str:
        with self._cv:
            if not self._cv.wait_for(lambda: self._lines, timeout):
                raise AssertionError(
                    f"child did not answer in {timeout}s (exit code {self.proc.poll()})"
                )
            return self._lines.pop(0)

    def call(self, *cmd: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._next())

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_invalidation_across_processes(make_tier: Any, redis_server: RedisServer, ns: str) -> None:
    a = make_tier(serializer=JsonSerializer())
    child = Child(redis_server.port, ns)
    try:
        delays = []
        # parent writes, child (separate process) must never keep serving the old value
        for i in range(200):
            child.call("get", "shared")  # child holds the previous value
            a.set("shared", i)
            t0 = time.perf_counter()
            eventually(lambda i=i: child.call("get", "shared") == i, what=f"child sees {i}")  # type: ignore[misc]  # a default-argument lambda
            delays.append(time.perf_counter() - t0)
            assert child.call("get", "shared") == i
        delays.sort()
        print(
            f"\ncross-process propagation (incl. a stdin/stdout round trip per poll): "
            f"median {statistics.median(delays) * 1e6:.0f} us, "
            f"p99 {delays[int(len(delays) * 0.99) - 1] * 1e6:.0f} us"
        )
        # the other way round: child writes, parent's local copy is dropped
        assert a.get("shared") == 199
        assert child.call("set", "shared", "from-child") is True
        eventually(lambda: a.get("shared") == "from-child", what="parent sees child's write")
        st = child.call("stats")
        seen = st["invalidations_received"] + st["invalidations_ignored_old"]
        assert seen >= 200 and st["redis_errors"] == 0
    finally:
        child.close()
    assert child.proc.returncode == 0


# -- resilience ---------------------------------------------------------------------------


def test_redis_killed_and_restarted(make_tier: Any, redis_server: RedisServer) -> None:
    # max_stale long enough for the outage loop: local copies are served throughout
    # (bounded staleness itself: test_redis_versions.py)
    a, b = make_tier(max_stale=60), make_tier(max_stale=60)
    loads = {"n": 0}

    def loader(key: str) -> Callable[[], str]:
        def load() -> str:
            loads["n"] += 1
            return f"loaded:{key}"

        return load

    a.set("warm", "w")
    # a's invalidation of its own write must reach b before b's copy is kept
    eventually(lambda: b.stats()["invalidations_received"] >= 1, what="b got a's message")
    assert b.get("warm") == "w" and b.local.peek("warm") == "w"
    redis_server.kill()
    failures: list[BaseException] = []
    # The outage: every request still answers (local tier, then loader).
    for i in range(300):
        try:
            assert a.get("warm") == "w" and b.get("warm") == "w"  # local copies
            assert a.get_or_set(f"cold{i % 10}", loader(f"cold{i % 10}")) == f"loaded:cold{i % 10}"
            a.set("written", i)  # skipped, counted
            assert a.get("written") == i  # read-your-writes
            b.get("nothing")
        except Exception as exc:  # noqa: BLE001 - any failure is reported
            failures.append(exc)
    assert not failures, f"{len(failures)} failed requests, first: {failures[0]!r}"
    st = a.stats()
    assert st["skipped_writes"] >= 1 and st["redis_errors"] >= 1
    assert st["loads"] == 10  # the outage loads were cached locally
    assert st["pending_invalidations"] == 1  # "written": deleted from Redis on return
    eventually(lambda: not a.connected and not b.connected, what="listeners noticed")
    clears_before = b.stats()["local_clears"]
    redis_server.start()  # same port, empty data set
    eventually(
        lambda: a.stats()["reconnects"] >= 1 and b.stats()["reconnects"] >= 1,
        what="both listeners resubscribed",
    )
    assert b.stats()["local_clears"] > clears_before
    eventually(lambda: a.stats()["pending_invalidations"] == 0, what="pending flushed")
    assert b.local.peek("warm") is None  # local tier cleared on reconnect
    # back to normal: writes land and invalidate again
    eventually(lambda: a.set("after", 1), what="writes land again")
    assert b.get("after") == 1
    a.set("after", 2)
    eventually(lambda: b.get("after") == 2, what="invalidation after restart")


@posix_only  # SIGSTOP
def test_slow_redis_times_out_and_is_counted(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    """A server that stops answering (SIGSTOP): the socket timeout bounds the wait."""
    import signal

    client = redis_server.client()
    tier = TieredCache(
        LruCache(100), client, ns, deadline=0.2, probe_interval=30.0, poll_interval=0.05
    )
    try:
        assert tier.wait_ready(DEADLINE)
        tier.set("k", 1)
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            assert tier.get_or_set("x", lambda: "fallback") == "fallback"  # one timeout
            t0 = time.monotonic()
            for _ in range(50):  # breaker open: no further waits on Redis
                assert tier.get_or_set("y", lambda: "fb") == "fb"
                tier.get("nope")
            fast = time.monotonic() - t0
            st = tier.stats()
            assert st["redis_errors"] >= 1 and st["remote_skipped"] >= 1
            print(f"\n50 reads with the breaker open took {fast * 1e3:.1f} ms")
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
    finally:
        tier.close()
        client.close()


# -- size bound and bad values ----------------------------------------------------------


def test_oversized_value_refused_on_write(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    a, b = make_tier(max_value_bytes=1000), make_tier(max_value_bytes=1000)
    assert a.set("big", "small") is True
    assert b.get("big") == "small"
    assert a.set("big", "x" * 5000) is False  # refused ...
    raw = raw_client(redis_server)
    assert raw.hget(f"{ns}:big", "d") is None  # ... and the older value is gone (a tombstone)
    assert a.local.peek("big") is None
    eventually(lambda: b.get("big") is None, what="b dropped the older value")
    assert a.stats()["oversized_writes"] == 1 and a.stats()["oversized_refusals"] == 1
    # a loader's oversized value is returned but cached nowhere
    assert a.get_or_set("big2", lambda: "y" * 5000) == "y" * 5000
    assert raw.exists(f"{ns}:big2") == 0 and a.local.peek("big2") is None
    raw.close()


def test_poisoned_oversized_value_in_redis_is_a_miss(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    a = make_tier(max_value_bytes=1000)
    raw = raw_client(redis_server)
    raw.hset(f"{ns}:poison", mapping={"v": "1", "d": b"\x80" + b"A" * 100_000})  # by hand
    assert a.get("poison", "dflt") == "dflt"
    assert a.local.peek("poison") is None
    st = a.stats()
    assert st["oversized_reads"] == 1 and st["deserialization_failures"] == 0
    # get_or_set replaces the unusable value with the loader's
    assert a.get_or_set("poison", lambda: "good") == "good"
    stored = raw.hget(f"{ns}:poison", "d")
    assert stored is not None
    assert json.loads(stored) == "good"
    raw.close()


@pytest.mark.parametrize("serializer", ["pickle", "json", "msgpack"])
def test_value_that_fails_to_deserialize_is_a_miss(
    make_tier: Any, redis_server: RedisServer, ns: str, serializer: str
) -> None:
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    a = make_tier(
        serializer=PickleSerializer(key=b"k" * 32) if serializer == "pickle" else serializer
    )
    raw = raw_client(redis_server)
    raw.hset(f"{ns}:bad", mapping={"v": "1", "d": b"\x00not a valid payload\xff"})
    assert a.get("bad") is None
    counter = "bad_signatures" if serializer == "pickle" else "deserialization_failures"
    assert a.stats()[counter] == 1
    assert a.get_or_set("bad", lambda: [1, 2]) == [1, 2]
    assert a.get("bad") == [1, 2]
    raw.close()


def test_unserializable_value_is_refused_not_raised(make_tier: Any) -> None:
    a = make_tier(serializer="json")
    assert a.set("s", {1, 2}) is False
    assert a.stats()["serialization_failures"] == 1
    assert a.get("s") is None


def test_bad_messages_on_the_channel_are_ignored(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    a = make_tier()
    a.set("k", 1)
    raw = raw_client(redis_server)
    raw.publish(f"{ns}:invalidate", b"garbage")
    raw.publish(f"{ns}:invalidate", b'["x", "k", 3]')
    eventually(lambda: a.stats()["bad_messages"] == 2, what="bad messages counted")
    assert a.get("k") == 1 and a.connected
    # Deeply nested JSON (RecursionError) and a time past any float (OverflowError) were
    # taken for a lost channel: every instance's local tier emptied, a Redis error counted.
    raw.publish(f"{ns}:invalidate", b"[" * 100_000 + b"]" * 100_000)
    raw.publish(f"{ns}:invalidate", b'["x", "k", "k", 1, ' + str(10**400).encode() + b"]")
    eventually(lambda: a.stats()["bad_messages"] == 4, what="both counted as bad")
    assert a.stats()["channel_losses"] == 0 and a.local.peek("k") == 1 and a.connected
    raw.close()


def test_a_key_redis_cannot_be_sent_is_refused_at_the_call(make_tier: Any) -> None:
    """A lone surrogate (text decoded with surrogateescape) was taken, failed in the
    client, went to the pending table, and its replay killed the worker: that instance
    then served stale values for ever."""
    a = make_tier()
    for call in (lambda: a.set("bad\udc80key", 1), lambda: a.get("bad\udc80key")):
        with pytest.raises(ValueError, match="cannot be encoded as UTF-8"):
            call()
    assert a.stats()["pending_invalidations"] == 0
    assert a.set("k", 1) is True and a.get("k") == 1


def test_a_value_read_from_redis_lives_locally_no_longer_than_the_ttl(make_tier: Any) -> None:
    """get() filled the local tier with no TTL: a key that expired in Redis (no message
    is sent) was served from the local copy for ever."""
    writer, reader = make_tier(ttl=0.5), make_tier(ttl=0.5)
    assert writer.set("price", 100) is True
    assert reader.get("price") == 100  # read from Redis: a local copy now
    time.sleep(0.8)
    assert reader.get("price") is None


# -- single flight ------------------------------------------------------------------------


def test_single_flight_threads(make_tier: Any) -> None:
    a = make_tier()
    calls = []
    n = 16

    def loader() -> str:
        calls.append(1)
        # hold the load until every other thread is waiting on it
        eventually(lambda: a.stats()["shared_loads"] == n - 1, what="all threads joined")
        return "v"

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(a.get_or_set("sf", loader)))
        for _ in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["v"] * n and len(calls) == 1
    assert a.stats()["loads"] == 1


def test_single_flight_exception_reaches_every_waiter(make_tier: Any) -> None:
    a = make_tier()
    n = 8

    def loader() -> str:
        eventually(lambda: a.stats()["shared_loads"] == n - 1, what="all threads joined")
        raise KeyError("boom")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            a.get_or_set("sf-err", loader)
        except KeyError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(errors) == n
    assert a.get("sf-err") is None and a.stats()["load_errors"] == 1


# -- asyncio --------------------------------------------------------------------------------


def test_async_tier(redis_server: RedisServer, ns: str) -> None:
    async def main() -> None:
        ca, cb = redis_server.async_client(), redis_server.async_client()
        async with (
            AsyncTieredCache(LruCache(1000), ca, ns, poll_interval=0.05, deadline=1.0) as a,
            AsyncTieredCache(LruCache(1000), cb, ns, poll_interval=0.05, deadline=1.0) as b,
        ):
            assert await a.wait_ready(DEADLINE) and await b.wait_ready(DEADLINE)
            assert await a.set("k", {"v": 1}) is True
            assert await b.get("k") == {"v": 1}
            await a.set("k", {"v": 2})
            end = time.monotonic() + DEADLINE
            while await b.get("k") != {"v": 2}:
                assert time.monotonic() < end, "async invalidation did not arrive"
                await asyncio.sleep(0.002)
            # single flight over tasks; the loader may be a coroutine function
            calls = []

            async def loader() -> str:
                calls.append(1)
                await asyncio.sleep(0.05)
                return "loaded"

            tasks = [asyncio.ensure_future(b.get_or_set("sf", loader)) for _ in range(20)]
            # cancelling one caller cancels neither the load nor the others
            await asyncio.sleep(0)
            tasks[0].cancel()
            results = await asyncio.gather(*tasks[1:])
            assert results == ["loaded"] * 19 and len(calls) == 1
            assert b.stats()["shared_loads"] == 19
            assert await a.get("sf") == "loaded"  # written through to Redis
            assert await a.delete("sf") is True
            end = time.monotonic() + DEADLINE
            while b.local.peek("sf") is not None:
                assert time.monotonic() < end
                await asyncio.sleep(0.002)
            # a sync loader works too
            assert await a.get_or_set("sync", lambda: 5) == 5
        await ca.aclose()
        await cb.aclose()

    asyncio.run(main())


def test_async_tier_survives_outage(redis_server: RedisServer, ns: str) -> None:
    async def main() -> None:
        client = redis_server.async_client()
        async with AsyncTieredCache(
            LruCache(1000),
            client,
            ns,
            poll_interval=0.05,
            backoff=(0.02, 0.5),
            probe_interval=0.05,
            max_stale=60,
            deadline=1.0,
        ) as a:
            assert await a.wait_ready(DEADLINE)
            await a.set("k", 1)
            redis_server.kill()
            for i in range(50):
                assert await a.get("k") == 1
                assert await a.get_or_set(f"x{i % 5}", lambda: "fb") == "fb"
                assert await a.set("w", i) is False
            assert a.stats()["skipped_writes"] == 50  # the sets (loads are not written)
            redis_server.start()
            end = time.monotonic() + DEADLINE
            while a.stats()["reconnects"] < 1 or a.stats()["pending_invalidations"]:
                assert time.monotonic() < end, a.stats()
                await asyncio.sleep(0.01)
            assert a.local.peek("k") is None
            assert await a.set("k", 2) is True
        await client.aclose()

    asyncio.run(main())


# -- stats ------------------------------------------------------------------------------------


def test_stats_and_prometheus_shape(make_tier: Any) -> None:
    a = make_tier()
    a.get_or_set("k", lambda: 1)
    a.get("k")
    c = a.counters()
    assert list(c) == list(COUNTERS) and all(type(v) is int for v in c.values())
    from prometheus_client import CollectorRegistry, generate_latest

    from memcache_ext import CacheManager
    from memcache_ext.prometheus import register

    registry = CollectorRegistry()
    register(CacheManager(memory_limit_mb=100), registry, tiers=[a])
    text = generate_latest(registry).decode()
    assert f'memcache_ext_tier_loads_total{{namespace="{a.namespace}"}} 1.0' in text
    assert f'memcache_ext_tier_connected{{namespace="{a.namespace}"}} 1.0' in text
    st = a.stats()
    assert st["local"]["size"] == 1 and st["connected"] is True

    class Manager:
        def __init__(self) -> None:
            self.sources: dict[str, Any] = {}

        def register_stats_source(self, name: str, fn: Any) -> None:
            self.sources[name] = fn

    m = Manager()
    a.register(m)
    assert m.sources[f"redis:{a.namespace}"]()["loads"] == 1


def test_bad_arguments(redis_server: RedisServer) -> None:
    client = redis_server.client()
    with pytest.raises(ValueError, match="namespace"):
        TieredCache(LruCache(4), client, "", start=False)
    with pytest.raises(ValueError, match="max_value_bytes"):
        TieredCache(LruCache(4), client, "n", max_value_bytes=0, start=False)
    with pytest.raises(ValueError, match="unknown serializer"):
        TieredCache(LruCache(4), client, "n", serializer="yaml", start=False)
    with pytest.raises(TypeError, match="local"):
        TieredCache(object(), client, "n", start=False)
    client.close()


def test_a_decoding_client_works(make_tier: Any, redis_server: RedisServer, ns: str) -> None:
    """Only the caller's connection settings are used: its decode_responses does not matter."""
    client = redis_server.client(decode_responses=True)
    # deadline=1.0: the set and get must reach Redis, even on a loaded runner
    with TieredCache(LruCache(4), client, ns, poll_interval=0.05, deadline=1.0) as tier:
        assert tier.wait_ready(DEADLINE)
        assert tier.set("k", {"b": b"x".decode()}) is True
        tier.local.clear()
        assert tier.get("k") == {"b": "x"}
    client.close()


def test_tier_over_both_local_cores(make_tier: Any, cache_cls: type) -> None:
    """Over a CLruCache the local hit runs in C (GetOr); over PyLruCache it is the
    pure twin (_fastcall_py.get_or). Both count the same and fall back to Redis the same way."""
    writer = make_tier()
    tier = make_tier(local=cache_cls(100))
    expected = "GetOr" if cache_cls.__name__ == "CLruCache" else "function"
    assert type(tier.get).__name__ == expected
    tier.set("a", 1)
    writer.set("b", 2)
    # the writer's invalidation of "b" must arrive before "b" is read, or it
    # would drop the copy read and make a second remote hit
    eventually(lambda: tier.counters()["invalidations_received"] >= 1, what="invalidation of b")
    assert tier.get("a") == 1 and tier.get("a", 9) == 1  # local hits
    assert tier.get("b") == 2 and tier.get("b") == 2  # remote hit, then local
    assert tier.get("nope", 5) == 5 and tier.get("nope") is None  # miss everywhere
    assert tier.get(key="a") == 1 and tier.get("nope", default=7) == 7
    c = tier.counters()
    assert c["remote_hits"] == 1 and c["local_hits"] == 4


def test_get_or_set_called_from_its_own_loader_does_not_wait_on_itself(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    """The loader of k calls get_or_set(k) again: the sync tier's thread waited on its
    own event, and the async load task awaited itself (the key stuck for good). The
    inner call now runs its loader directly, as ``cached`` and the core do."""
    a = make_tier()
    got: list[Any] = []
    t = threading.Thread(
        target=lambda: got.append(a.get_or_set("k", lambda: {"in": a.get_or_set("k", lambda: 1)})),
        daemon=True,  # a regression hangs it: it must not hold the run at exit
    )
    t.start()
    t.join(DEADLINE)
    assert not t.is_alive() and got == [{"in": 1}]
    assert a.get("k") == {"in": 1}

    async def main() -> Any:
        client = redis_server.async_client()
        async with AsyncTieredCache(LruCache(10), client, ns + "a", deadline=1.0) as tier:
            assert await tier.wait_ready(DEADLINE)

            async def loader() -> Any:
                return {"in": await tier.get_or_set("k", lambda: 2)}

            value = await asyncio.wait_for(tier.get_or_set("k", loader), DEADLINE)
            return value, await tier.get("k"), dict(tier._flights)

    assert asyncio.run(main()) == ({"in": 2}, {"in": 2}, {})


def test_a_bad_ttl_is_refused_at_the_call_and_inf_means_never(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    """ttl=-5 was written with PTTL 0, ttl=True as 1 s, ttl="10" after the loader ran
    (then a ResponseError), and a tier with ttl=inf failed every write."""
    a = make_tier()
    calls: list[int] = []
    for bad, exc in ((-5, ValueError), (0, ValueError), (True, TypeError), ("10", TypeError)):
        with pytest.raises(exc, match="ttl must be"):
            a.set("k", 1, ttl=bad)
        with pytest.raises(exc, match="ttl must be"):
            a.get_or_set("k", lambda: calls.append(1), ttl=bad)
    assert calls == [] and a.get("k") is None
    forever = make_tier(ttl=float("inf"))
    assert forever.set("k", 1) is True and forever.get_or_set("j", lambda: 2) == 2
    raw = raw_client(redis_server)
    assert raw.pttl(f"{ns}:k") == -1 and raw.pttl(f"{ns}:j") == -1  # no expiry
    raw.close()


def test_a_loader_that_is_not_callable_is_refused_on_a_hit_too(
    make_tier: Any, redis_server: RedisServer, ns: str
) -> None:
    """get_or_set("k", 5) returned the cached value while "k" was held and raised
    only on the first miss, in production."""
    a = make_tier()
    a.set("k", 1)
    assert a.get_or_set("k", lambda: 2) == 1
    with pytest.raises(TypeError, match="loader must be callable, not int"):
        a.get_or_set("k", 5)

    async def main() -> None:
        client = redis_server.async_client()
        async with AsyncTieredCache(LruCache(10), client, ns, deadline=1.0) as tier:
            assert await tier.wait_ready(DEADLINE)
            assert await tier.get_or_set("k", lambda: 2) == 1
            with pytest.raises(TypeError, match="loader must be callable, not str"):
                await tier.get_or_set("k", "x")  # type: ignore[arg-type]
        await client.aclose()

    asyncio.run(main())


def test_a_serializer_class_is_refused_with_the_fix(make_tier: Any) -> None:
    """``serializer=JsonSerializer`` (the class) was taken: its unbound dumps failed on
    every write, each set() returned False and deleted the key."""
    with pytest.raises(TypeError, match="pass JsonSerializer"):
        make_tier(serializer=JsonSerializer)
