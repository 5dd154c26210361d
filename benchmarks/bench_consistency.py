"""Consistency checker (issue 13): do the demo's caches ever stay behind SQLite?

    PYTHONPATH=src python benchmarks/bench_consistency.py                # 1,000 trials each
    PYTHONPATH=src python benchmarks/bench_consistency.py --quick        # 100 trials each (CI)
    PYTHONPATH=src python benchmarks/bench_consistency.py --scenario redis-freeze --json out.json

Real demo processes (``python -m memcache_ext demo``: uvicorn on loopback) over
one SQLite database, and for the replicated scenarios one redis-server of our
own. A trial picks one of a few hot users and sends, all at once, profile
writes (``PUT /users/{id}/profile``, a new name each) and reads of the profile
and the summary (which shows the name); it waits until every request has
returned, reads the user's row from SQLite, then asks every replica for the
profile and the summary until both show that row's name and version. Each
trial first writes alone (so the cached summaries are dropped and the
racing reads below miss, load, and store: the cache-aside race), then fires
the writes and reads together. Scenarios:

* ``one-process``: one demo, no Redis: a write races reads in one process;
* ``two-replicas``: two demo replicas over Redis: a write on each races reads on both;
* ``redis-kill``: as ``two-replicas``; Redis is killed (SIGKILL) a third of the way
  through the trials and restarted two thirds through;
* ``redis-freeze``: the same with SIGSTOP and SIGCONT.

A result is *stale* if a replica still answers something other than SQLite's
row after the grace period (2 s; ``max_stale`` + 2 s in the outage scenarios).
How long each replica took to agree, from the moment the trial's last request
returned, is its *staleness*: with Redis up it is the invalidation's
propagation (a few ms); while invalidations cannot arrive it is bounded by
``max_stale`` (the replica drops its local tier when it runs out). Checked (exit
status 1 if not): 0 stale results; during an outage, staleness never above
``max_stale`` plus the slowest request of its trial.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loopback import Conn, Faults, Replicas, percentile, python, python_env

SCENARIOS = ("one-process", "two-replicas", "redis-kill", "redis-freeze")
HOT_USERS = (1, 2, 3, 4, 5)
READS_PER_REPLICA = 2  # of the profile, and as many of the summary


class Pool:
    """Worker threads with keep-alive connections; ``fire`` sends a batch at once."""

    def __init__(self, ports: list[int], size: int) -> None:
        self.conns = [[Conn(p, timeout=30) for p in ports] for _ in range(size)]
        self.ports = ports

    def fire(self, calls: list[tuple[int, str, str, Any]]) -> list[tuple[int, bytes, float]]:
        """(replica index, method, path, body) each in its own thread, released together."""
        out: list[Any] = [None] * len(calls)
        gate = threading.Barrier(len(calls))

        def one(i: int, call: tuple[int, str, str, Any]) -> None:
            replica, method, path, body = call
            gate.wait()
            out[i] = self.conns[i][replica].request(method, path, body)

        threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(calls)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return out

    def close(self) -> None:
        for row in self.conns:
            for c in row:
                c.close()


def truth(db: str, user: int) -> tuple[str, Optional[int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(users)")}
        if "version" in cols:
            name, version = conn.execute(
                "SELECT name, version FROM users WHERE id = ?", (user,)
            ).fetchone()
            return str(name), int(version)
        (name,) = conn.execute("SELECT name FROM users WHERE id = ?", (user,)).fetchone()
        return str(name), None
    finally:
        conn.close()


def answers(conn: Conn, user: int) -> list[tuple[Any, Any]]:
    """(name, version) of this replica's profile and summary."""
    out: list[tuple[Any, Any]] = []
    for path in (f"/users/{user}", f"/users/{user}/summary"):
        status, body, _ = conn.request("GET", path)
        doc = json.loads(body) if status == 200 else {}
        out.append((doc.get("name", f"HTTP {status}"), doc.get("version")))
    return out


def agrees(got: list[tuple[Any, Any]], want: tuple[str, Optional[int]]) -> bool:
    """Whether a replica's profile and summary both show SQLite's row."""
    name, version = want
    return all(n == name and (version is None or v is None or v == version) for n, v in got)


def settle(
    conns: list[Conn],
    user: int,
    db: str,
    grace: float,
    seen: Optional[list[str]] = None,
    redis_view: Optional[Any] = None,
) -> list[Optional[float]]:
    """Per replica, checked at once in parallel: seconds from now until the first check
    that agreed with SQLite began (0.0: the first one did), None if none did within
    ``grace`` (then what it answered, its tier counters and, with ``redis_view``, what
    Redis holds for the user, go to ``seen``)."""
    want = truth(db, user)
    t0 = time.monotonic()
    out: list[Optional[float]] = [None] * len(conns)

    def one(i: int, conn: Conn) -> None:
        first = True
        while True:
            began = time.monotonic()
            got = answers(conn, user)
            if agrees(got, want):
                out[i] = 0.0 if first else began - t0
                return
            first = False
            if time.monotonic() - t0 > grace:
                if seen is not None:
                    seen.append(f"user {user}, replica {i}: SQLite {want}, answers {got}")
                    seen.append(json.dumps(tier_counters(conn)))
                    if redis_view is not None:
                        seen.append(json.dumps(redis_view(user)))
                return
            time.sleep(0.002)

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(grace + 60)
    return out


def tier_counters(conn: Conn) -> Any:
    """The figures that explain a stale answer, per tier (diagnostics)."""
    keys = (
        "breaker",
        "channel_state",
        "local_bypassed",
        "redis_errors",
        "expired_writes",
        "skipped_writes",
        "version_refusals",
        "pending_invalidations",
        "invalidations_ignored_old",
    )
    try:
        src = conn.json("/memory/stats").get("sources") or {}
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return repr(exc)
    return {n: {k: v.get(k) for k in keys} for n, v in src.items()}


def redis_versions(url: str, prefix: str) -> Any:
    """user -> what Redis holds for the user's profile and summary: (version, name or
    None for a tombstone), or the error (diagnostics)."""
    import redis

    def view(user: int) -> Any:
        out: dict[str, Any] = {}
        try:
            client = redis.Redis.from_url(url, socket_timeout=2)
            try:
                for name in ("profiles", "summaries"):
                    v, d = client.hmget(f"{prefix}:{name}:{user}", "v", "d")
                    doc = json.loads(d) if d else None
                    out[name] = [v and int(v), doc and doc.get("name")]
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return {"redis": repr(exc)}
        return {"redis": out}

    return view


def start_demo(
    scenario: str, db: str, faults: Optional[Faults], args: argparse.Namespace, prefix: str
) -> Any:
    from memcache_ext.tools.procs import free_ports

    n = 1 if scenario == "one-process" else 2
    for attempt in range(5):
        port = free_ports(n)
        argv = [python(), "-m", "memcache_ext", "demo", "--db", db, "--users", str(args.users)]
        argv += ["--days", "1", "--port", str(port), "--log-level", "warning", "--no-create"]
        if faults is not None:
            argv += ["--redis", faults.url, "--redis-prefix", prefix]
            argv += ["--replicas", "2"]
            if args.max_stale != 1.0:  # the default: also what an older demo does without it
                argv += ["--max-stale", str(args.max_stale)]
        procs = Replicas([argv], [port + i for i in range(n)], python_env())
        try:
            procs.wait_ready()
            return procs
        except RuntimeError as exc:
            procs.stop()
            if "busy" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


def tiers_settled(ports: list[int]) -> bool:
    for p in ports:
        st = Conn(p, timeout=5).json("/memory/stats")
        for name, src in (st.get("sources") or {}).items():
            if name.startswith("redis:") and (
                not src.get("connected") or src.get("pending_invalidations")
            ):
                return False
    return True


def run_scenario(scenario: str, args: argparse.Namespace, work: str) -> dict[str, Any]:
    from memcache_ext.tools.demo.db import create_database
    from memcache_ext.tools.procs import poll

    db = str(Path(work) / f"{scenario}.sqlite3")
    create_database(db, args.users, 1)
    faults: Optional[Faults] = None
    if scenario != "one-process":
        faults = Faults()
        faults.start()
    prefix = f"cc{int(time.time() * 1000)}"
    view = None if faults is None else redis_versions(faults.url, prefix)
    try:
        demo = start_demo(scenario, db, faults, args, prefix)
    except BaseException:
        if faults is not None:
            faults.stop()
        raise
    ports = demo.ports
    n = len(ports)
    outage = scenario in ("redis-kill", "redis-freeze")
    grace = (args.max_stale + 2.0) if outage else 2.0
    on, off = args.trials // 3, 2 * args.trials // 3
    writes_per_trial = n  # one write per replica
    pool = Pool(ports, writes_per_trial + 2 * READS_PER_REPLICA * n)
    checkers = [Conn(p, timeout=30) for p in ports]
    trials: list[dict[str, Any]] = []
    failed: list[str] = []
    seen: list[str] = []
    try:
        time.sleep(0.5)  # the replicas' first subscriptions
        for t in range(args.trials):
            if outage and faults is not None and t == on:
                faults.kill() if scenario == "redis-kill" else faults.freeze()
            if outage and faults is not None and t == off:
                faults.restart() if scenario == "redis-kill" else faults.resume()
            user = HOT_USERS[t % len(HOT_USERS)]
            # A write first, alone: it drops the cached summaries (which show the name), so
            # that the reads below miss and race the next writes (the cache-aside race).
            prep = pool.fire([(t % n, "PUT", f"/users/{user}/profile", {"name": f"T{t} prep"})])
            calls: list[tuple[int, str, str, Any]] = [
                (r, "PUT", f"/users/{user}/profile", {"name": f"T{t} R{r}"}) for r in range(n)
            ]
            for r in range(n):
                for _ in range(READS_PER_REPLICA):
                    calls.append((r, "GET", f"/users/{user}", None))
                    calls.append((r, "GET", f"/users/{user}/summary", None))
            results = pool.fire(calls)
            failed += [
                f"trial {t}: {c[1]} {c[2]}: {res[0]} {res[1][:100]!r}"
                for c, res in zip(calls, results, strict=True)
                if res[0] != 200
            ]
            if prep[0][0] != 200:
                failed.append(f"trial {t}: PUT (first): {prep[0][0]} {prep[0][1][:100]!r}")
            phase = (
                "outage"
                if outage and on <= t < off
                else ("after" if outage and t >= off else "before")
            )
            took = settle(checkers, user, db, grace, seen, view)
            trials.append(
                {
                    "trial": t,
                    "phase": phase,
                    "staleness": took,
                    "slowest_request": max(res[2] for res in results),
                }
            )
        # every request has returned; the tiers back on their channel, nothing pending
        if faults is not None:
            poll(lambda: tiers_settled(ports), 30, what="tiers settled", pause=0.1)
        final = {u: settle(checkers, u, db, 2.0, seen, view) for u in HOT_USERS}
    finally:
        pool.close()
        for c in checkers:
            c.close()
        errs = demo.stop()
        if faults is not None:
            faults.stop()
    stale = [(tr["trial"], i) for tr in trials for i, s in enumerate(tr["staleness"]) if s is None]
    stale += [
        (f"final user {u}", i) for u, s in final.items() for i, x in enumerate(s) if x is None
    ]
    over: list[dict[str, Any]] = []
    lag: dict[str, dict[str, Any]] = {}
    for tr in trials:
        vals = [s for s in tr["staleness"] if s is not None]
        row = lag.setdefault(tr["phase"], {"trials": 0, "stale": 0, "values": []})
        row["trials"] += 1
        row["stale"] += len(tr["staleness"]) - len(vals)
        row["values"] += vals
        if tr["phase"] == "outage" and vals and max(vals) > args.max_stale + tr["slowest_request"]:
            over.append(tr)
    for row in lag.values():
        v = row.pop("values")
        row.update(
            results=len(v) + row["stale"],
            at_once=sum(1 for x in v if x == 0.0),
            median_ms=percentile(v, 0.5) * 1e3,
            p99_ms=percentile(v, 0.99) * 1e3,
            max_ms=max(v) * 1e3 if v else 0.0,
        )
    return {
        "scenario": scenario,
        "replicas": n,
        "trials": len(trials),
        "results": sum(len(tr["staleness"]) for tr in trials),
        "stale": len(stale),
        "stale_examples": stale[:10],
        "stale_answers": seen[:10],
        "failed_requests": len(failed),
        "failed_examples": failed[:5],
        "staleness": lag,
        "over_bound": [
            {
                "trial": tr["trial"],
                "staleness_ms": [s and s * 1e3 for s in tr["staleness"]],
                "slowest_request_ms": tr["slowest_request"] * 1e3,
            }
            for tr in over[:10]
        ],
        "server_errors": [e[-2000:] for e in errs if "Traceback" in e],
    }


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"Consistency checker: {args.trials} trials per scenario, hot users {list(HOT_USERS)}, "
        f"max_stale {args.max_stale:g} s",
        "",
        f"{'scenario':14} {'phase':7} {'trials':>6} {'answers':>7} {'stale':>5} {'at once':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}",
    ]
    for r in results:
        for phase, s in r["staleness"].items():
            out.append(
                f"{r['scenario']:14} {phase:7} {s['trials']:>6} {s['results']:>7} "
                f"{s['stale']:>5} {s['at_once']:>7} {s['median_ms']:>7.1f} {s['p99_ms']:>7.1f} "
                f"{s['max_ms']:>7.1f}"
            )
    out += [
        "",
        "answers: one per replica per trial. staleness: from the trial's last request",
        "returning until the replica's first check that agreed with SQLite (profile and",
        "summary: name and version) began; at once: the first check agreed; stale: none",
        "agreed within the grace period. Phases: before, during and after the outage.",
    ]
    for r in results:
        if "outage" in r["staleness"]:
            out.append(
                f"{r['scenario']}: measured maximum staleness during the outage "
                f"{r['staleness']['outage']['max_ms']:.0f} ms (bound: max_stale "
                f"{args.max_stale * 1e3:.0f} ms + the trial's slowest request)"
            )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=None, help="per scenario (default 1000)")
    p.add_argument("--quick", action="store_true", help="100 trials per scenario (CI)")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, help="default: all")
    p.add_argument("--max-stale", type=float, default=1.0)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--json", default=None)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.trials is None:
        args.trials = 100 if args.quick else 1000
    scenarios = args.scenario or list(SCENARIOS)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-consistency-") as work:
        for name in scenarios:
            t0 = time.monotonic()
            r = run_scenario(name, args, work)
            r["seconds"] = time.monotonic() - t0
            results.append(r)
            print(
                f"  {name}: {r['trials']} trials, {r['stale']} stale, "
                f"{r['failed_requests']} failed requests, {r['seconds']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    print(render(results, args))
    missed = []
    for r in results:
        if r["stale"]:
            missed.append(
                f"{r['scenario']}: {r['stale']} stale results, e.g. {r['stale_examples']}"
            )
        if r["failed_requests"]:
            missed.append(
                f"{r['scenario']}: {r['failed_requests']} failed requests: {r['failed_examples']}"
            )
        if r["over_bound"]:
            missed.append(
                f"{r['scenario']}: staleness over max_stale + one request: {r['over_bound'][:3]}"
            )
        if r["server_errors"]:
            missed.append(f"{r['scenario']}: server tracebacks:\n{r['server_errors'][0]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "missed": missed}, indent=1))
    print()
    if missed:
        print("MISSED:\n  " + "\n  ".join(missed))
        return 1
    print(
        "0 stale results in every scenario; staleness during outages within max_stale + one request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
