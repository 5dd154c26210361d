"""No stale data after a write (issue 13): versioned writes, leases, bounded staleness.

Against a real redis-server on loopback; the write/write races run in two
processes (children with a timeout). Races are forced, not hoped for: a loader
blocks on an event until the writer is done. "Eventually" is a poll with a
generous deadline; staleness is measured and bounded with a margin for a
loaded machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from support import DEADLINE, RedisServer, child_env, eventually, require_redis

require_redis(module_level=True)

pytestmark = pytest.mark.integration

import redis  # noqa: E402 - after require_redis

from memcache_ext import LruCache  # noqa: E402 - after require_redis
from memcache_ext.redis import TieredCache  # noqa: E402 - after require_redis


@pytest.fixture
def make(srv: RedisServer, ns: str) -> Iterator[Any]:
    made: list[Any] = []

    def make_tier(**kw: Any) -> TieredCache:
        client = redis.Redis(host="127.0.0.1", port=srv.port)
        kw.setdefault("poll_interval", 0.05)
        # A generous deadline: a call slower than the default 50 ms on a loaded runner
        # would fail a test about something else. The outage tests pass their own.
        kw.setdefault("deadline", 1.0)
        tier = TieredCache(LruCache(1000), client, ns, **kw)
        made.append((tier, client))
        assert tier.wait_ready(DEADLINE)
        return tier

    yield make_tier
    for tier, client in made:
        tier.close()
        client.close()


# -- a fill never lands after a newer write --------------------------------------------------


@pytest.mark.parametrize("write", ["set", "delete"])
def test_a_slow_load_never_replaces_a_newer_write(make: Any, write: str) -> None:
    """The cache-aside race, forced: the loader reads the database, then the writer
    commits and updates the cache, then the loader's value arrives. It must land
    nowhere: not in Redis, not in the local tier, not in the other replica."""
    reader, other = make(), make()
    db = {"name": "old"}
    read_done, write_done = threading.Event(), threading.Event()

    def slow_load() -> dict[str, str]:
        row = dict(db)  # the read, before the write commits
        read_done.set()
        assert write_done.wait(DEADLINE)
        return row

    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(reader.get_or_set("u", slow_load)))
    t.start()
    assert read_done.wait(DEADLINE)
    db["name"] = "new"  # the write commits ...
    if write == "set":  # ... then updates the cache (from the other replica)
        assert other.set("u", dict(db)) is True
    else:
        other.delete("u")
    write_done.set()
    t.join(DEADLINE)
    assert got == [{"name": "old"}]  # the caller still gets what it loaded
    eventually(lambda: reader.local.peek("u") is None or reader.get("u") == db, what="reader")
    for tier in (reader, other):
        for _ in range(3):
            assert tier.get_or_set("u", lambda: dict(db)) == db
    assert reader.stats()["version_refusals"] >= (1 if write == "delete" else 0)


def test_a_slow_load_with_row_versions(make: Any) -> None:
    reader = make(version_of=lambda row: row["v"])
    writer = make(version_of=lambda row: row["v"])
    db = {"name": "old", "v": 1}
    read_done, write_done = threading.Event(), threading.Event()

    def slow_load() -> dict[str, Any]:
        row = dict(db)
        read_done.set()
        assert write_done.wait(DEADLINE)
        return row

    t = threading.Thread(target=lambda: reader.get_or_set("u", slow_load))
    t.start()
    assert read_done.wait(DEADLINE)
    db.update(name="new", v=2)
    assert writer.delete("u", version=2) is False  # nothing cached yet: a tombstone at 2
    write_done.set()
    t.join(DEADLINE)
    assert reader.stats()["version_refusals"] == 1  # the fill of version 1: refused
    assert reader.get_or_set("u", lambda: dict(db)) == db  # version 2 replaces the tombstone
    assert writer.get("u") == db
    assert writer.set("u", {"name": "older", "v": 1}) is False  # older than Redis: refused
    assert writer.set("u", dict(db)) is True  # the version Redis holds: unchanged, True
    eventually(lambda: reader.get("u") == db, what="reader sees version 2")


def test_a_write_during_a_load_in_one_process_wins(make: Any) -> None:
    """Leases: the set() of another thread, between the load's start and its fill, wins."""
    tier = make()
    started, go = threading.Event(), threading.Event()

    def slow_load() -> str:
        started.set()
        assert go.wait(DEADLINE)
        return "loaded-before-the-write"

    t = threading.Thread(target=lambda: tier.get_or_set("k", slow_load))
    t.start()
    assert started.wait(DEADLINE)
    assert tier.set("k", "written") is True
    go.set()
    t.join(DEADLINE)
    assert tier.local.peek("k") == "written" and tier.get("k") == "written"


# -- own writes and reads in flight (found by benchmarks/bench_consistency.py) -----------------


class Gate:
    """Wraps a callable: calls wait until ``open()``; ``entered`` is set at the first call."""

    def __init__(self, fn: Any, only_first: bool = True) -> None:
        self.fn = fn
        self.entered = threading.Event()
        self.released = threading.Event()
        self.only_first = only_first
        self.calls = 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        if self.calls == 1 or not self.only_first:
            self.entered.set()
            assert self.released.wait(DEADLINE), "gate never opened"
        return self.fn(*args, **kw)

    def open(self) -> None:
        self.released.set()


def test_an_own_write_replaces_what_a_read_in_flight_filled(make: Any) -> None:
    """A read leased the key after our write had invalidated it, read the older value
    from Redis and filled it before our write landed: our write must still replace it
    (a fill never replaces a live value, so the write must not be a fill)."""
    tier, other = make(version_of=lambda r: r["v"]), make(version_of=lambda r: r["v"])
    other.set("k", {"v": 8})
    gate = Gate(tier._script)
    tier._script = gate
    t = threading.Thread(target=lambda: tier.set("k", {"v": 9}))
    t.start()
    assert gate.entered.wait(DEADLINE)  # our write invalidated the key, its script waits
    assert tier.get("k") == {"v": 8}  # a read in flight: Redis still has 8, filled locally
    gate.open()
    t.join(DEADLINE)
    assert tier.local.peek("k") == {"v": 9} and tier.get("k") == {"v": 9}


def test_a_refused_fill_does_not_hide_a_later_invalidation(make: Any) -> None:
    """A read's fill that stored nothing must not count its version as seen: the
    listener would then ignore the message about the value the local tier does hold."""
    tier, other = make(version_of=lambda r: r["v"]), make(version_of=lambda r: r["v"])
    listen = Gate(tier._on_message, only_first=False)
    tier._on_message = listen  # messages wait
    read = Gate(tier.redis.hmget)
    tier.redis.hmget = read
    t = threading.Thread(target=lambda: tier.get("k"))
    t.start()
    assert read.entered.wait(DEADLINE)  # the read has its lease, its HMGET waits
    assert tier.set("k", {"v": 14}) is True  # our write: stored locally
    assert other.set("k", {"v": 15}) is True  # a newer one elsewhere; its message waits
    read.open()
    t.join(DEADLINE)  # the read got 15; its fill refused (our 14 is live)
    listen.open()
    eventually(lambda: tier.local.peek("k") != {"v": 14}, what="15's message applied")
    assert tier.get("k") == {"v": 15}


def test_a_delete_drops_what_a_read_filled_before_its_tombstone(make: Any) -> None:
    tier, other = make(), make()  # the tier's own versions: the delete's is not known yet
    other.set("k", "old")
    gate = Gate(tier._script)
    tier._script = gate
    t = threading.Thread(target=lambda: tier.delete("k"))
    t.start()
    assert gate.entered.wait(DEADLINE)  # invalidated here; the tombstone waits
    assert tier.get("k") == "old"  # a read fills what Redis still has
    gate.open()
    t.join(DEADLINE)
    assert tier.local.peek("k") is None  # our own message is ignored: dropped by the delete
    assert tier.get_or_set("k", lambda: "new") == "new"


def test_with_redis_unavailable_an_older_version_is_not_kept_locally(make: Any) -> None:
    """The breaker open (a timeout, say) while the channel is up: a newer version's message
    has arrived; this instance's write or load of an older row must not be kept locally
    (found by the checker after a freeze: the skipped write kept its row unchecked)."""
    tier = make(version_of=lambda r: r["v"], probe_interval=30.0)
    other = make(version_of=lambda r: r["v"])
    other.set("w", {"v": 11})
    other.set("l", {"v": 11})
    eventually(lambda: tier.stats()["invalidations_received"] >= 2, what="both messages")
    tier.breaker.fail(TimeoutError("a call timed out"))  # requests skip Redis now
    assert tier.set("w", {"v": 10}) is False  # skipped (tombstoned later), not kept here
    assert tier.local.peek("w") is None
    assert tier.get_or_set("l", lambda: {"v": 10}) == {"v": 10}  # loaded, not kept here
    assert tier.local.peek("l") is None
    assert tier.set("w", {"v": 12}) is False  # newer than anything seen: read your writes
    assert tier.local.peek("w") == {"v": 12}


def test_a_write_that_fails_during_a_replay_is_replayed_too(make: Any) -> None:
    """The replay of an older tombstone is in flight when a newer write fails: the newer
    one must stay pending. (Found by the checker's redis-freeze scenario, the first trial
    after SIGCONT: the replay's answer dropped the failed write's entry, so Redis kept
    the other replica's older row and that replica served it for good.)"""
    tier = make(version_of=lambda r: r["v"], probe_interval=30.0)
    other = make(version_of=lambda r: r["v"])
    tier.breaker.fail(TimeoutError("a call timed out"))
    assert tier.set("k", {"v": 40}) is False  # skipped: pending at 40
    replay = Gate(tier._script)
    tier._script = replay
    tier.breaker.succeeded()  # the worker replays the tombstone at 40; its script waits
    assert replay.entered.wait(DEADLINE)
    tier.breaker.fail(TimeoutError("a call timed out"))
    assert tier.set("k", {"v": 43}) is False  # skipped: pending at 43
    replay.open()
    eventually(lambda: tier.stats()["invalidations_sent"] == 1, what="the tombstone at 40 replayed")
    assert tier.stats()["pending_invalidations"] == 1  # 43 still to replay
    assert other.set("k", {"v": 42}) is True  # an older row, written elsewhere meanwhile
    tier.breaker.succeeded()
    eventually(lambda: tier.stats()["pending_invalidations"] == 0, what="43 replayed")
    eventually(lambda: other.local.peek("k") is None, what="the other replica dropped 42")
    assert other.get("k") is None and tier.get("k") is None  # the tombstone at 43


# -- own writes across a lost channel, late writes, cancelled writes (a review after run X) ----

V = {"version_of": lambda r: r["v"]}


@contextlib.asynccontextmanager
async def async_tier(port: int, ns: str) -> AsyncIterator[Any]:
    """An AsyncTieredCache with row versions, started and ready; closed after."""
    from memcache_ext.redis import AsyncTieredCache

    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    tier = AsyncTieredCache(LruCache(100), client, ns, deadline=1.0, poll_interval=0.05, **V)
    await tier.start()
    try:
        assert await tier.wait_ready(DEADLINE)
        yield tier
    finally:
        await tier.aclose()
        await client.aclose()


def delayed(call: Any, entered: Any) -> Any:
    """``call`` made 0.5 s late (waiting for a connection, say); ``entered`` set first."""

    async def slow(*args: Any, **kw: Any) -> Any:
        import asyncio

        entered.set()
        await asyncio.sleep(0.5)
        return await call(*args, **kw)

    return slow


class After:
    """Wraps a callable: the call is made (Redis applies it), then its answer waits
    until ``open()``; ``entered`` is set once the call is done."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self, *args: Any, **kw: Any) -> Any:
        out = self.fn(*args, **kw)
        self.entered.set()
        assert self.released.wait(DEADLINE), "gate never opened"
        return out

    def open(self) -> None:
        self.released.set()


def _kill_pubsub_of(tier: Any, port: int) -> None:
    """CLIENT KILL the tier's own subscription connection (only that one)."""
    pool = tier.redis.connection_pool
    mine = set()
    for conn in [*pool._in_use_connections, *pool._available_connections]:
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            mine.add("{}:{}".format(*sock.getsockname()[:2]))
    raw = redis.Redis(host="127.0.0.1", port=port)
    try:
        hits = [c["addr"] for c in raw.client_list(_type="pubsub") if c["addr"] in mine]
        assert len(hits) == 1, hits
        raw.client_kill(hits[0])
    finally:
        raw.close()


def test_an_own_write_answered_after_a_resubscription_is_not_kept(
    srv: RedisServer, make: Any
) -> None:
    """Our write of 42 reaches Redis; the channel is lost; the other replica writes 43
    (its message is missed: not subscribed); the channel comes back (local tier
    dropped); only then does our write's answer arrive and _own stores 42, which no
    message and no pending entry will ever drop (Redis holds 43)."""
    tier, other = make(probe_interval=30.0, **V), make(**V)
    other.set("k", {"v": 41})
    eventually(lambda: tier.stats()["invalidations_received"] >= 1, what="41's message")
    answer = After(tier._script)
    tier._script = answer
    t = threading.Thread(target=lambda: tier.set("k", {"v": 42}))
    t.start()
    assert answer.entered.wait(DEADLINE)  # Redis holds 42; our answer waits
    # redis-py's PubSub reconnects and resubscribes inside get_message: hold its connect
    for conn in list(tier.redis.connection_pool._in_use_connections):
        conn.connect = Gate(conn.connect)
        reconnect = conn.connect
    _kill_pubsub_of(tier, srv.port)
    assert reconnect.entered.wait(DEADLINE)  # the subscription is gone, not yet back
    assert other.set("k", {"v": 43}) is True  # published while we are not subscribed
    reconnect.open()
    eventually(lambda: tier.stats()["reconnects"] >= 1, what="resubscribed", pause=0.01)
    answer.open()  # 42's answer: stored locally after the resubscription's drop
    t.join(DEADLINE)
    eventually(lambda: tier.get("k") == {"v": 43}, timeout=3.0, what="tier on 43", pause=0.05)


def test_writes_refused_as_late_are_replayed_within_max_stale(make: Any) -> None:
    """Redis's clock (TIME, wall clock) steps forward after the tier measured it: every
    write comes back 'too late' (status 3) with the breaker closed and the channel up,
    so nothing reaches Redis, not even the replays, until the next measurement (60 s),
    and the other replica serves the older row all that time."""
    tier, other = make(probe_interval=30.0, **V), make(**V)
    assert tier.set("k", {"v": 41}) is True
    eventually(lambda: other.get("k") == {"v": 41}, what="other on 41", pause=0.01)
    assert tier._clock_offset_us is not None
    tier._clock_offset_us -= 10e6  # as if Redis's clock had stepped 10 s forward
    assert tier.set("k", {"v": 42}) is False  # refused as late: pending
    assert tier.stats()["expired_writes"] >= 1
    eventually(
        lambda: other.get("k") != {"v": 41},
        timeout=other.max_stale + 1.5,
        what="other dropped 41 within max_stale",
        pause=0.05,
    )


def late_script(script: Any, seconds: float) -> Any:
    """``script`` called ``seconds`` late (a write waiting for a connection, say)."""

    def slow(*args: Any, **kw: Any) -> Any:
        time.sleep(seconds)
        return script(*args, **kw)

    return slow


def test_a_write_before_the_first_clock_measure_still_has_a_deadline(
    srv: RedisServer, ns: str
) -> None:
    """Before its worker has measured Redis's clock (not started yet, or never with
    start=False), a write measures it itself, so a write that reaches Redis after its
    deadline is refused there, as later ones are. The old code sent it without a
    deadline: Redis applied it after the caller had given up on it."""
    client = redis.Redis(host="127.0.0.1", port=srv.port)
    tier = TieredCache(LruCache(100), client, ns, start=False, deadline=0.5, **V)
    try:
        script = tier._script
        tier._script = late_script(script, 1.0)
        assert tier.set("k", {"v": 1}) is False  # late: refused, pending
        assert tier.stats()["expired_writes"] == 1
        assert client.exists(f"{ns}:k") == 0
        tier._script = script
        assert tier.set("k", {"v": 2}) is True  # in time: written
        assert tier.get("k") == {"v": 2}
        # Redis's clock steps 10 s forward: one write is refused as late, and the next
        # measures the clock again (no worker would ever do it with start=False)
        assert tier._clock_offset_us is not None
        tier._clock_offset_us -= 10e6
        assert tier.set("k", {"v": 3}) is False
        assert tier.set("k", {"v": 4}) is True
        assert tier.stats()["expired_writes"] == 2
    finally:
        tier.close()
        client.close()


def test_an_async_write_before_the_first_clock_measure_still_has_a_deadline(
    srv: RedisServer, ns: str
) -> None:
    """The same for AsyncTieredCache before ``start()``: its first write carries a
    deadline in Redis's clock, about ``deadline`` ahead (the old code sent none)."""
    import asyncio

    from memcache_ext.redis import AsyncTieredCache

    async def main() -> tuple[list[Any], float]:
        client = redis.asyncio.Redis(host="127.0.0.1", port=srv.port)
        tier = AsyncTieredCache(LruCache(100), client, ns, deadline=0.5, **V)
        sent: list[Any] = []
        script = tier._script

        async def recording(*args: Any, **kw: Any) -> Any:
            sent.append(kw["args"][-1])
            return await script(*args, **kw)

        try:
            tier._script = recording
            assert await tier.set("k", {"v": 1}) is True
            sec, usec = await client.time()
            return sent, sec * 1e6 + usec
        finally:
            await tier.aclose()
            await client.aclose()

    sent, redis_now_us = asyncio.run(main())
    assert len(sent) == 1 and sent[0] != "", sent
    assert redis_now_us - 0.5e6 < int(sent[0]) < redis_now_us + 0.5e6


def test_a_cancelled_async_set_is_still_tombstoned(srv: RedisServer, ns: str) -> None:
    """AsyncTieredCache: a set() cancelled while its script is on its way (not yet sent)
    leaves no pending entry; Redis and the other replicas keep the older row."""
    import asyncio

    async def main() -> dict[str, Any]:
        async with async_tier(srv.port, ns) as tier:
            assert await tier.set("k", {"v": 41}) is True
            entered = asyncio.Event()
            tier._script = delayed(tier._script, entered)
            task = asyncio.ensure_future(tier.set("k", {"v": 42}))
            await entered.wait()
            task.cancel()  # the request's task is cancelled (client gone, a timeout)
            with pytest.raises(asyncio.CancelledError):
                await task
            return dict(tier.stats())

    st = asyncio.run(main())
    assert st["pending_invalidations"] == 1, "42 is in the database, 41 stays in Redis"


# -- concurrent writers ------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import json, random, sys
    import redis
    from memcache_ext import LruCache
    from memcache_ext.redis import TieredCache
    port, ns, seed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    versions = json.loads(sys.argv[4])
    random.Random(seed).shuffle(versions)
    client = redis.Redis(host="127.0.0.1", port=port)
    tier = TieredCache(LruCache(100), client, ns, version_of=lambda v: v["v"], deadline=2.0)
    assert tier.wait_ready(15)
    for v in versions:
        tier.set("hot", {"v": v, "by": seed})
    print(json.dumps(tier.stats()["version_refusals"]), flush=True)
    tier.close()
""")


def test_concurrent_versioned_writes_keep_the_newest(srv: RedisServer, ns: str, make: Any) -> None:
    """Eight threads here and two other processes write versions 0..599 of one key in
    random orders: Redis and every local tier end on version 599, whatever the
    interleaving (the compare and the write are one step in Redis)."""
    tiers = [make(version_of=lambda v: v["v"], deadline=2.0) for _ in range(2)]
    versions = list(range(600))
    mine, theirs = versions[::2], versions[1::2]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(srv.port), ns, str(seed), json.dumps(part)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for seed, part in ((1, theirs[: len(theirs) // 2]), (2, theirs[len(theirs) // 2 :]))
    ]

    def write(i: int) -> None:
        rnd = random.Random(i)
        part = mine[i::8]
        rnd.shuffle(part)
        for v in part:
            tiers[i % 2].set("hot", {"v": v, "by": "here"})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refused = 0
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        refused += json.loads(out)
    raw = redis.Redis(host="127.0.0.1", port=srv.port)
    stored = raw.hgetall(f"{ns}:hot")
    raw.close()
    assert int(stored[b"v"]) == 599 and json.loads(stored[b"d"])["v"] == 599
    for tier in tiers:
        # a read past the deadline is a miss (None): polled again, not a TypeError
        eventually(lambda tier=tier: (tier.get("hot") or {}).get("v") == 599, what="a tier on 599")  # type: ignore[misc]  # a default-argument lambda
    refused += sum(t.stats()["version_refusals"] for t in tiers)
    print(f"\n600 versioned writes from 3 processes: {refused} refused as older")
    assert refused > 0


PAIR = textwrap.dedent("""
    import json, sys
    import redis
    from memcache_ext import LruCache
    from memcache_ext.redis import TieredCache
    port, ns = int(sys.argv[1]), sys.argv[2]
    client = redis.Redis(host="127.0.0.1", port=port)
    # deadline=1.0: the set and get below must reach Redis even on a loaded runner
    tier = TieredCache(LruCache(100), client, ns, version_of=lambda row: row["v"], deadline=1.0)
    assert tier.wait_ready(15)
    print("READY", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd[0] == "set":
            out = tier.set(cmd[1], cmd[2])
        elif cmd[0] == "get":
            out = tier.get(cmd[1])
        else:
            break
        print(json.dumps(out), flush=True)
    tier.close()
""")


def test_writes_reaching_redis_out_of_commit_order(srv: RedisServer, ns: str, make: Any) -> None:
    """Two replicas commit versions 2 then 3 to the database; their cache writes reach
    Redis in the other order. Every replica ends on version 3 (the old code kept the
    last write to arrive: version 2, for the whole TTL)."""
    child = subprocess.Popen(
        [sys.executable, "-c", PAIR, str(srv.port), ns],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "READY"
        here = make(version_of=lambda row: row["v"])
        assert here.set("user", {"name": "B", "v": 3}) is True  # committed second, arrives first

        def call(*cmd: Any) -> Any:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(json.dumps(cmd) + "\n")
            child.stdin.flush()
            return json.loads(child.stdout.readline())

        assert call("set", "user", {"name": "A", "v": 2}) is False  # late and older: refused
        assert call("get", "user") == {"name": "B", "v": 3}
        eventually(lambda: here.get("user") == {"name": "B", "v": 3}, what="here on 3")
        child.stdin.close()
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_messages_carry_versions_and_older_ones_are_ignored(
    srv: RedisServer, ns: str, make: Any
) -> None:
    tier = make(version_of=lambda row: row["v"])
    assert tier.set("k", {"v": 10}) is True
    raw = redis.Redis(host="127.0.0.1", port=srv.port)
    try:
        # what a write publishes: [instance, "k", key, version, redis time in us]
        pubsub = raw.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"{ns}:invalidate")
        channel = f"{ns}:invalidate"
        eventually(lambda: raw.pubsub_numsub(channel)[0][1] >= 2, what="subscribed")
        other = make(version_of=lambda row: row["v"])
        other.set("k", {"v": 11})
        msg = eventually(lambda: pubsub.get_message(timeout=0.05), what="message")
        src, op, key, version, sent_us = json.loads(msg["data"])
        assert (src, op, key, version) == (other.instance_id, "k", "k", 11)
        assert abs(sent_us / 1e6 - time.time()) < 60
        pubsub.close()
        eventually(lambda: tier.get("k") == {"v": 11}, what="tier on 11")
        before = tier.stats()["invalidations_ignored_old"]
        raw.publish(f"{ns}:invalidate", json.dumps(["someone", "k", "k", 7, 0]))
        eventually(lambda: tier.stats()["invalidations_ignored_old"] == before + 1, what="ignored")
        assert tier.local.peek("k") == {"v": 11}  # kept: the message was older
        raw.publish(f"{ns}:invalidate", json.dumps(["someone", "k", "k", 12, 0]))
        eventually(lambda: tier.local.peek("k") is None, what="newer message applied")
    finally:
        raw.close()


def test_bad_versions_are_refused_at_the_call(make: Any) -> None:
    tier = make()
    for bad, err in (("1", TypeError), (1.5, TypeError), (True, TypeError), (-1, ValueError)):
        with pytest.raises(err, match="version"):
            tier.set("k", 1, version=bad)
        with pytest.raises(err, match="version"):
            tier.delete("k", version=bad)
    by_value = make(version_of=lambda row: row["v"])
    with pytest.raises(TypeError, match="version"):
        by_value.set("k", {"v": "x"})
    with pytest.raises(TypeError, match="version"):
        by_value.get_or_set("k2", lambda: {"v": None})
    assert by_value.get("k2") is None and by_value.local.peek("k2") is None
    assert tier.set("k", 1, version=2**70) is True  # any size
    assert tier.set("k", 2, version=2**70 - 1) is False


# -- bounded staleness ---------------------------------------------------------------------------


def _served_until(tier: TieredCache, stale: Any, t0: float) -> float:
    """Poll ``tier`` until it stops answering ``stale`` from its local tier; seconds since t0."""
    end = time.monotonic() + DEADLINE
    while tier.get_or_set("k", lambda: "from the loader") == stale:
        assert time.monotonic() < end, "the local copy was served past the deadline"
        time.sleep(0.005)
    return time.monotonic() - t0


@pytest.mark.parametrize("fault", ["kill", "freeze"])
def test_local_entries_served_at_most_max_stale_in_an_outage(
    srv: RedisServer, make: Any, fault: str
) -> None:
    """The old code served its local copy for as long as the outage lasted."""
    if fault == "freeze" and os.name != "posix":
        pytest.skip("SIGSTOP")
    max_stale = 1.0  # the default
    tier = make(deadline=0.05)
    tier.set("k", "cached")
    assert tier.get("k") == "cached" and tier.local.peek("k") == "cached"
    heard = tier.stats().get("channel_heard_seconds") or 0.0
    t0 = time.monotonic() - heard  # the last news from the channel
    if fault == "kill":
        srv.kill()
    else:
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        served = _served_until(tier, "cached", t0)
        print(f"\n{fault}: local copy served {served * 1e3:.0f} ms after the last news")
        # the margin: the listener thread's turn on a loaded two-core runner
        assert served <= max_stale + 1.0, served
        # counted just after the local tier is cleared, by the listener thread
        eventually(lambda: tier.stats()["stale_bypasses"] == 1, what="the bypass counted")
        st = tier.stats()
        assert st["local_bypassed"] and st["stale_bypasses"] == 1 and len(tier.local) == 0
        assert tier.get_or_set("k", lambda: "again") == "again"  # bypassed: nothing kept
        assert len(tier.local) == 0
    finally:
        if fault == "kill":
            srv.start()
        else:
            assert srv.proc is not None
            os.kill(srv.proc.pid, signal.SIGCONT)
    eventually(lambda: tier.connected and not tier.stats()["local_bypassed"], what="back")
    eventually(lambda: tier.stats()["reconnects"] >= 1, what="counted after the state")
    tier.set("k", "after")
    assert tier.get("k") == "after" and tier.local.peek("k") == "after"


def test_max_stale_zero_bypasses_as_soon_as_the_loss_is_seen(srv: RedisServer, make: Any) -> None:
    tier = make(max_stale=0, probe_interval=0.05, deadline=0.05)
    tier.set("k", "cached")
    assert tier.get("k") == "cached"
    t0 = time.monotonic()
    srv.kill()
    try:
        served = _served_until(tier, "cached", t0)
        print(f"\nmax_stale=0: local copy served {served * 1e3:.0f} ms after the kill")
        assert served < 0.6  # the default max_stale serves 1 s or more
    finally:
        srv.start()
    eventually(lambda: tier.connected, what="back")


def test_a_write_during_an_outage_is_tombstoned_when_redis_is_back(
    srv: RedisServer, make: Any
) -> None:
    """Frozen Redis keeps the old value; the write made meanwhile is replayed as a
    tombstone when it answers, so no replica serves the old value afterwards."""
    if os.name != "posix":
        pytest.skip("SIGSTOP")
    # Only the writer's calls during the freeze need the short deadline: the set-up's
    # write and read go through tiers with the fixture's 1 s, which no loaded runner misses.
    writer = make(probe_interval=0.05, deadline=0.05)
    reader = make(probe_interval=0.05)
    assert make().set("k", "v1") is True
    assert reader.get("k") == "v1"
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        writer.set("k", "v2")  # times out (or the breaker is open): pending
        eventually(lambda: writer.stats()["breaker"] != "closed", what="writer's breaker open")
        assert writer.set("k", "v3") is False  # skipped while open
        assert writer.stats()["pending_invalidations"] == 1
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    eventually(lambda: writer.stats()["pending_invalidations"] == 0, what="replayed")
    eventually(lambda: reader.connected and writer.connected, what="channels back")
    # the reader drops v1 when its own listener reads the tombstone's message
    eventually(lambda: reader.get_or_set("k", lambda: "v3") == "v3", what="reader dropped v1")
    assert writer.get_or_set("k", lambda: "v3") == "v3"


# -- more keys changed than max_pending, and clears, while Redis is away -----------------------


def test_more_keys_changed_than_max_pending_clear_the_namespace_when_redis_answers(
    make: Any,
) -> None:
    """The pending table is full: a key it cannot remember would keep its old value in
    Redis, and in the other replicas, for good. The namespace is cleared instead."""
    tier = make(probe_interval=30.0, max_pending=2)
    other = make()
    keys = [f"k{i}" for i in range(5)]
    for k in keys:
        assert other.set(k, "old") is True
        assert other.get(k) == "old"
    # those messages would drop the writes below from the tier's local tier
    eventually(lambda: tier.stats()["invalidations_received"] == 5, what="other's messages")
    tier.breaker.fail(TimeoutError("a call timed out"))
    for k in keys:
        assert tier.set(k, "new") is False  # skipped while the breaker is open
    st = tier.stats()
    assert (st["pending_invalidations"], st["pending_dropped"], st["clear_pending"]) == (2, 3, True)
    tier.breaker.succeeded()
    eventually(lambda: not tier.stats()["clear_pending"], what="the owed clear done")
    st = tier.stats()
    assert (st["pending_invalidations"], st["remote_clears"]) == (0, 1)
    eventually(lambda: len(other.local) == 0, what="the other replica cleared")
    for k in keys:
        assert other.get(k) is None, k  # no replica serves "old" again
        assert tier.get(k) is None, k  # its local tier went with the clear: loaded again


def test_the_keys_remembered_keep_their_versions_through_an_owed_clear(make: Any) -> None:
    """The clear only knows the versions Redis holds: the remembered keys are still
    tombstoned at their newest failed version, so an older write is refused after it."""
    tier = make(**V, probe_interval=30.0, max_pending=1)
    other = make(**V)
    assert other.set("a", {"v": 5}) is True
    tier.breaker.fail(TimeoutError("a call timed out"))
    assert tier.set("a", {"v": 10}) is False  # remembered at 10
    assert tier.set("b", {"v": 1}) is False  # one key too many: a clear is owed
    tier.breaker.succeeded()
    eventually(
        lambda: not tier.stats()["clear_pending"] and not tier.stats()["pending_invalidations"],
        what="the tombstone and the clear",
    )
    assert other.set("a", {"v": 7}) is False  # older than 10: refused
    assert other.get("a") is None and tier.get("a") is None


def test_what_is_read_while_an_owed_clear_runs_is_not_kept_locally(make: Any) -> None:
    """A read between the breaker closing and the clear reaching its key got the old
    value; the other replicas drop it with the clear's message, this one too."""
    tier = make(probe_interval=30.0, max_pending=0)
    other = make()
    assert other.set("k", "old") is True
    eventually(lambda: tier.stats()["invalidations_received"] == 1, what="other's message")
    tier.breaker.fail(TimeoutError("a call timed out"))
    assert tier.set("k", "new") is False  # not remembered (max_pending=0): a clear is owed
    tier.local.invalidate("k")  # evicted meanwhile, say
    gate = Gate(tier._clear_script)
    tier._clear_script = gate
    tier.breaker.succeeded()
    assert gate.entered.wait(DEADLINE)  # the worker's clear is on its way
    assert tier.get("k") == "old"  # from Redis, before the clear reached it
    gate.open()
    eventually(lambda: not tier.stats()["clear_pending"], what="the owed clear done")
    assert tier.local.peek("k") is None
    assert tier.get("k") is None and other.get("k") is None


def test_an_owed_clear_that_redis_refuses_backs_off_and_tombstones_still_go(
    make: Any,
) -> None:
    """A refusal that is not an outage (READONLY, NOPERM) does not open the breaker: the
    worker retries the clear after 1 s, 2 s, 4 s... and replays pending tombstones
    meanwhile."""
    tier = make(probe_interval=30.0, max_pending=1, poll_interval=0.01)
    other = make()
    assert other.set("a", "old") is True
    calls: list[float] = []

    def refuse(*args: Any, **kw: Any) -> Any:
        calls.append(time.monotonic())
        raise redis.ResponseError("READONLY You can't write against a read only replica.")

    real = tier._clear_script
    tier._clear_script = refuse
    tier.breaker.fail(TimeoutError("a call timed out"))
    assert tier.set("a", "new") is False  # remembered
    assert tier.set("b", "new") is False  # a clear is owed
    tier.breaker.succeeded()
    eventually(lambda: tier.stats()["pending_invalidations"] == 0, what="a's tombstone")
    eventually(lambda: other.get("a") is None, what="the tombstone reached the other")
    time.sleep(2.5)
    assert 2 <= len(calls) <= 3, calls  # at 0, ~1 s and ~3 s: not every 10 ms
    assert tier.stats()["breaker"] == "closed" and tier.stats()["clear_pending"] is True
    tier._clear_script = real
    eventually(lambda: not tier.stats()["clear_pending"], what="the clear, once allowed")


def test_a_large_namespace_is_cleared_over_several_worker_passes(
    srv: RedisServer, ns: str, make: Any
) -> None:
    """The worker clears a few SCAN pages per pass and goes on at the next, so that it
    keeps reading the channel; every value still goes."""
    tier = make(probe_interval=30.0, max_pending=0)
    raw = redis.Redis(host="127.0.0.1", port=srv.port)
    try:
        with raw.pipeline(transaction=False) as pipe:
            for i in range(6000):
                pipe.hset(f"{ns}:k{i}", mapping={"v": "1", "d": "x"})
            pipe.execute()
        scans: list[int] = []
        real_scan = tier.redis.scan

        def scan(cursor: int, **kw: Any) -> Any:
            scans.append(cursor)
            return real_scan(cursor, **kw)

        tier.redis.scan = scan
        tier.breaker.fail(TimeoutError("a call timed out"))
        assert tier.set("x", "new") is False  # a clear is owed
        tier.breaker.succeeded()
        eventually(lambda: not tier.stats()["clear_pending"], what="the owed clear done")
        assert scans.count(0) == 1 and len(scans) >= 10  # one clear, resumed across passes
        assert tier.stats()["remote_clears"] == 1
        values = 0
        for key in raw.scan_iter(match=f"{ns}:*", count=1000):
            values += raw.hexists(key, "d")
        assert values == 0
    finally:
        raw.close()


def test_a_clear_while_redis_is_frozen_is_done_when_it_answers(srv: RedisServer, make: Any) -> None:
    """``clear()`` that times out is owed, like a write, not lost."""
    if os.name != "posix":
        pytest.skip("SIGSTOP")
    tier = make(probe_interval=0.05, deadline=0.05)
    other = make(probe_interval=0.05)  # the fixture's 1 s: its calls are not under test
    assert other.set("k", "old") is True
    assert other.get("k") == "old"
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        tier.clear()  # one deadline, then owed
        assert tier.stats()["clear_pending"] is True
        tier.clear()  # the breaker is open: owed at once
        assert tier.stats()["clear_pending"] is True
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    eventually(lambda: not tier.stats()["clear_pending"], what="the owed clear done")
    eventually(lambda: other.connected and other.local.peek("k") is None, what="other cleared")
    assert other.get("k") is None
    assert tier.stats()["remote_clears"] == 1  # both clears in one


def test_a_clear_keeps_versions_so_an_older_write_is_still_refused(
    srv: RedisServer, ns: str, make: Any
) -> None:
    """``clear()`` turns each value into a tombstone at its version: a writer that read
    the row before the clear cannot bring back the older version after it."""
    tier = make(**V, ttl=None)
    other = make(**V)
    assert tier.set("k", {"v": 5}) is True
    assert other.get("k") == {"v": 5}
    tier.delete("gone", version=3)  # a tombstone already: left as it is
    tier.clear()
    raw = redis.Redis(host="127.0.0.1", port=srv.port)
    try:
        assert raw.hgetall(f"{ns}:k") == {b"v": b"5"}
        assert 0 < raw.pttl(f"{ns}:k") <= 3_600_000
        assert raw.hgetall(f"{ns}:gone") == {b"v": b"3"}
    finally:
        raw.close()
    assert other.set("k", {"v": 4}) is False  # older than what was cleared
    assert tier.get("k") is None
    eventually(lambda: other.local.peek("k") is None, what="other cleared")
    assert other.get_or_set("k", lambda: {"v": 5}) == {"v": 5}  # the same row: filled again
    assert tier.get("k") == {"v": 5}


def test_an_async_clear_keeps_versions_and_a_cancelled_one_is_owed(
    srv: RedisServer, ns: str, make: Any
) -> None:
    """AsyncTieredCache: the same clear; cancelled before its script ran, it is owed and
    the worker does it."""
    import asyncio

    other = make(**V)

    async def main() -> dict[str, Any]:
        async with async_tier(srv.port, ns) as tier:
            assert await tier.set("k", {"v": 7}) is True
            await tier.clear()
            assert await tier.set("k", {"v": 6}) is False  # older than what was cleared
            assert await tier.set("k", {"v": 8}) is True
            real, entered = tier._clear_script, asyncio.Event()
            tier._clear_script = delayed(real, entered)
            task = asyncio.ensure_future(tier.clear())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert tier.stats()["clear_pending"] is True
            tier._clear_script = real
            deadline = time.monotonic() + DEADLINE
            while tier.stats()["clear_pending"] and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return dict(tier.stats())

    st = asyncio.run(main())
    assert (st["clear_pending"], st["remote_clears"]) == (False, 2)
    raw = redis.Redis(host="127.0.0.1", port=srv.port)
    try:
        assert raw.hgetall(f"{ns}:k") == {b"v": b"8"}
    finally:
        raw.close()
    eventually(lambda: other.local.peek("k") is None, what="other cleared")
    assert other.get("k") is None
