"""``python -m memcache_ext loadtest``: memory under load, bounded vs unbounded.

Starts the demo service (``python -m memcache_ext demo``) under uvicorn on
127.0.0.1 as a separate process, drives it with concurrent keep-alive clients
(the traffic: ``_loadclient.Traffic``: Zipf-like user popularity, ``--skew``,
readings for 7/30/90 days most of the time), samples the server's RSS, and
stops it. It runs the bounded service and the ``--unbounded`` one (plain dict
caches) on the same database and workload and prints them side by side, with
the caches' policy, the hit rate, and the hit rate of a short uniform phase
at the end (the worst case). ``--policy both`` runs the bounded service once
per eviction policy instead. The server it started is always stopped,
whatever happens; on a terminal a progress line shows elapsed and remaining
time, requests so far and the server's RSS (nothing when the output is not a
terminal).

``--quick`` (under a minute) checks what CI checks: the bounded service grows
by less than 100 MB, peaks under 400 MB and answers every request, while the
unbounded one grows past the bounded one's peak; it exits 1 when one fails.

``--soak`` runs the bounded service under a memory limit (default 150 MB)
with 32 clients, 2 % writes and 1 % oversized bodies, samples RSS every
second and polls ``/memory/stats`` every 5 s; it reports and checks issue
12's promises (``_loadreport.check_soak``): peak RSS never above the limit,
RSS slope over the second half within +/-1 MB/min, no 5xx but intended 503
sheds, longest event-loop stall <= 10 ms, hit rate >= 80 %, every oversized
body answered 413. ``--soak --quick`` is the same in 60-140 s (a warm-up of
20 s and 25,000 requests, then 40 s measured), with two bounds so short a run
cannot judge loosened (``SOAK_TARGETS``): the slope, of RSS less what the
caches hold, within +/-6 MB/min, and stalls as a regression guard.

``--replicas N`` runs the bounded service as N replicas sharing a Redis second
tier (``demo --replicas N --redis URL``; the load test starts its own
``redis-server`` on a free loopback port unless ``--redis URL`` is given, and
always stops it). Clients spread their requests over the replicas, 2 % of them
profile writes (``PUT /users/{id}/profile``), RSS is sampled per replica, and
a second table reports each tier's hits: local, Redis, database loads,
invalidations, Redis errors, per replica and in all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, NoReturn, Optional

from .._constants import MIB as MB
from . import info
from ._loadclient import Traffic, client, health, memory_stats
from ._loadreport import (
    LoadTestError,
    Run,
    _pyplot,
    check,
    check_soak,
    hit_rate,
    hit_rates,
    plot,
    plot_soak,
    render,
    render_soak,
    soak_figures,
    tier_counters,
)
from .procs import (
    ProcessError,
    ProgressLine,
    RedisServer,
    free_port,
    free_ports,
    http_ok,
    poll,
    port_in_use,
    stop_process,
)

# The quick soak's warm-up, in requests: the demo's RSS climbs until about
# 20,000-25,000 requests have filled its caches and about 5 MB no cache
# accounts for, whatever the rate (2026-12-03, 243 requests/s: 89.5 MB
# at 3,800 requests, 99.8 MB at 20,700, 101.4 MB at 43,300). A warm-up counted
# in seconds ended inside that climb on a slow host and read it as a leak
# (+8 MB/min at 355 requests/s).
QUICK_WARMUP_REQUESTS = 25_000
MAX_WARMUP_S = 240.0  # a host too slow to warm up in this long is measured anyway
# The quick form's least requests per service: the unbounded service must peak
# above the bounded one, which takes requests, not seconds (at 5,000 requests
# the two stood 2.7 MB apart, at 8,000 15 MB). A slow host runs longer, at
# most MAX_EXTRA_S past --duration.
QUICK_MIN_REQUESTS = 8_000
MAX_EXTRA_S = 120.0


class Server:
    """The demo service in its own process group; stopped on exit, always."""

    def __init__(
        self,
        port: int,
        db: str,
        users: int,
        days: int,
        unbounded: bool,
        extra: list[str],
        replicas: int = 1,
    ) -> None:
        self.port = port
        self.ports = [port + i for i in range(replicas)]
        self.replica_pids: list[int] = []
        cmd = [
            sys.executable,
            "-m",
            "memcache_ext",
            "demo",
            "--port",
            str(port),
            "--db",
            db,
            "--users",
            str(users),
            "--days",
            str(days),
            "--log-level",
            "warning",
            *extra,
        ]
        if unbounded:
            cmd.append("--unbounded")
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float) -> None:
        waiting = list(self.ports)

        def answered() -> bool:
            if self.proc.poll() is not None:
                raise LoadTestError(
                    f"the demo service exited with code {self.proc.returncode} "
                    f"before answering:\n{self.output()}"
                )
            waiting[:] = [port for port in waiting if not http_ok(port)]
            return not waiting

        try:
            poll(answered, timeout, pause=0.2)
        except TimeoutError:
            raise LoadTestError(
                f"the demo service did not answer within {timeout:.0f} s:\n{self.output()}"
            ) from None
        if len(self.ports) > 1:
            self.replica_pids = self._find_replicas()

    def _find_replicas(self) -> list[int]:
        """The pids of the replica processes, in port order (children of the supervisor)."""
        import psutil

        by_port: dict[int, int] = {}
        for child in psutil.Process(self.proc.pid).children():
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if "--port" in cmd:
                by_port[int(cmd[cmd.index("--port") + 1])] = child.pid
        missing = [p for p in self.ports if p not in by_port]
        if missing:
            raise LoadTestError(f"no replica process found for port(s) {missing}:\n{self.output()}")
        return [by_port[p] for p in self.ports]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        # With --replicas the supervisor forwards SIGTERM and waits for the replicas.
        stop_process(self.proc, 30 if self.replica_pids else 10)
        self._kill_replicas()
        self.log.close()

    def _kill_replicas(self) -> None:
        """Replicas still running after their supervisor (it was killed): kill them."""
        if not self.replica_pids:
            return
        import psutil

        left = []
        for pid in self.replica_pids:
            try:
                proc = psutil.Process(pid)
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
                    left.append(proc)
            except psutil.Error:
                pass
        psutil.wait_procs(left, timeout=10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def drive(
    mode: str,
    args: argparse.Namespace,
    db: str,
    redis_url: Optional[str] = None,
    policy: Optional[str] = None,
    line: Optional[ProgressLine] = None,
) -> Run:
    import psutil

    n = args.replicas
    port = args.port if args.port else (free_ports(n) if n > 1 else free_port())
    busy = [port + i for i in range(n) if port_in_use(port + i)]
    if busy:
        what = f"port {port}" if n == 1 else f"port(s) {', '.join(map(str, busy))}"
        raise LoadTestError(f"{what} on 127.0.0.1 is busy: pick another with --port")
    run = Run(mode, policy=policy if mode == "bounded" else None, limit_mb=args.memory_limit_mb)
    extra = ["--cleanup-interval", str(args.cleanup_interval)]
    if args.memory_limit_mb is not None:
        extra += ["--memory-limit-mb", str(args.memory_limit_mb)]
    if policy is not None and mode == "bounded":
        extra += ["--policy", policy]
    if redis_url is not None:
        extra += ["--redis", redis_url, "--redis-prefix", args.redis_prefix, "--replicas", str(n)]
    traffic = Traffic(
        args.users,
        args.days,
        skew=args.skew,
        write_fraction=args.writes,
        oversize_fraction=args.oversize,
    )
    with Server(
        port,
        db,
        args.users,
        args.days,
        mode == "unbounded",
        extra,
        replicas=n if redis_url is not None else 1,
    ) as server:
        server.wait_ready(args.start_timeout)
        ports = server.ports
        if server.replica_pids:
            procs = [psutil.Process(pid) for pid in server.replica_pids]
        else:
            procs = [psutil.Process(server.proc.pid)]
        reps: list[dict[str, Any]] = [
            {"port": p, "pid": pr.pid, "requests": 0, "writes": 0, "errors": 0, "rss": []}
            for p, pr in zip(ports, procs, strict=True)
        ]
        tiered = redis_url is not None
        if run.policy is None and mode == "bounded":
            run.policy = (health(ports[0]) or {}).get("policy")

        def sample(t: float, done: int) -> None:
            try:
                values = [pr.memory_info().rss for pr in procs]
            except psutil.Error as exc:
                raise LoadTestError(
                    f"a {mode} server process is gone ({exc}):\n{server.output()}"
                ) from exc
            run.rss.append((t, sum(values), done))
            if tiered:
                for rep, v in zip(reps, values, strict=True):
                    rep["rss"].append((t, v))

        stop = threading.Event()
        lock = threading.Lock()
        progress = [0] * args.concurrency
        per_port: dict[int, list[int]] = {}
        load_started = time.time()
        t0 = time.monotonic()
        sample(0.0, 0)

        clients = [
            threading.Thread(
                target=client,
                daemon=True,
                args=(port, traffic, stop, run, lock, i, progress),
                kwargs=dict(ports=ports if tiered else None, per_port=per_port),
            )
            for i in range(args.concurrency)
        ]
        for c in clients:
            c.start()
        next_poll = args.poll_interval
        label = run.label
        # The warm-up ends after --warmup seconds and --warmup-requests requests
        # (at most MAX_WARMUP_S); what follows it is measured for the rest of
        # --duration, so a slower host warms up on as many requests as a fast one,
        # and goes on until --min-requests were served (at most MAX_EXTRA_S more).
        measured = args.duration - args.warmup
        warmed: Optional[float] = None
        try:
            while True:
                elapsed = time.monotonic() - t0
                if warmed is None and (
                    (elapsed >= args.warmup and sum(progress) >= args.warmup_requests)
                    or elapsed >= MAX_WARMUP_S
                ):
                    warmed = elapsed
                    run.warmup_requests = sum(progress)
                end = math.inf if warmed is None else warmed + measured
                if elapsed >= end and (
                    sum(progress) >= args.min_requests or elapsed >= end + MAX_EXTRA_S
                ):
                    break
                time.sleep(min(args.sample_interval, end - elapsed) if elapsed < end else 0.25)
                if server.proc.poll() is not None:
                    raise LoadTestError(
                        f"the {mode} service died under load "
                        f"(exit {server.proc.returncode}):\n{server.output()}"
                    )
                elapsed = time.monotonic() - t0
                sample(elapsed, sum(progress))
                if mode == "bounded" and args.poll_interval and elapsed >= next_poll:
                    st = memory_stats(ports[0])
                    if st is not None:
                        run.polls.append((elapsed, st))
                    next_poll += args.poll_interval
                if line is not None:
                    if warmed is None:
                        when = f"({args.warmup_requests:,} requests of warm-up)"
                    elif elapsed < end or sum(progress) >= args.min_requests:
                        when = f"of {end:.0f} s ({max(0.0, end - elapsed):.0f} s left)"
                    else:
                        when = f"(on until {args.min_requests:,} requests)"
                    line.update(
                        f"  {label}: {elapsed:.0f} s {when}, "
                        f"{sum(progress):,} requests, RSS {run.rss[-1][1] / MB:.1f} MB"
                    )
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=60)
        run.duration_s = time.monotonic() - t0
        run.warmup_s = warmed or 0.0  # set: the loop ends only after the warm-up
        sample(run.duration_s, run.requests)
        if line is not None:
            line.close()
        if mode == "bounded":
            stats = [memory_stats(p) for p in ports]
            if stats[0] is not None:
                run.polls.append((run.duration_s, stats[0]))
            run.health = health(ports[0])
            if not tiered:
                run.hit_rate = hit_rate(stats[0])
                if args.uniform_phase and not args.soak:
                    run.uniform_hit_rate = uniform_phase(args, stats[0], ports[0], stop)
            else:
                hits = misses = 0
                for rep, data in zip(reps, stats, strict=True):
                    rep["requests"], rep["writes"], rep["errors"] = per_port.get(
                        rep["port"], [0, 0, 0]
                    )
                    rep["tier"], rep["tier_caches"] = tier_counters(data)
                    for c in ((data or {}).get("caches") or {}).values():
                        hits += c.get("hits", 0)
                        misses += c.get("misses", 0)
                run.hit_rate = hits / (hits + misses) if hits + misses else None
                run.replicas = reps
        run.load_started = load_started
    return run


def uniform_phase(
    args: argparse.Namespace, before: Optional[dict[str, Any]], port: int, stop: threading.Event
) -> Optional[float]:
    """The worst case: ``--uniform-phase`` seconds of uniform users, its hit rate alone.

    Runs after the measured load on the same server (its figures are not
    added to the run's), so the caches start from what skewed traffic left.
    """
    scratch = Run("uniform")
    traffic = Traffic(args.users, args.days, skew=0.0)
    stop.clear()
    clients = [
        threading.Thread(
            target=client,
            daemon=True,
            args=(port, traffic, stop, scratch, threading.Lock(), i, [0] * args.concurrency),
            kwargs={"base": 1000},
        )
        for i in range(args.concurrency)
    ]
    for c in clients:
        c.start()
    time.sleep(args.uniform_phase)
    stop.set()
    for c in clients:
        c.join(timeout=60)
    return hit_rates(memory_stats(port), before).get("all")


def _drop_keys(url: str, prefix: str) -> None:
    """Best effort: remove this run's keys from a Redis we did not start."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(batch), 500):
                client.unlink(*batch[i : i + 500])
        finally:
            client.close()
    except Exception:  # noqa: BLE001, S110 - best effort: the keys expire anyway (ttl <= 300 s)
        pass


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help for the options)\n")


def _number(kind: str, *, low: float, inclusive: bool = True) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        ok = math.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            sign = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(
                f"must be a finite {kind} {sign} {low:g}, got {text!r}"
            )
        return value

    return parse


def _count(text: str) -> int:
    """A number of requests: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of requests >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m memcache_ext loadtest",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short form for CI (20 s and 8,000 requests per service; with --soak 60-140 s) "
        "checking the same promises; exit 1 when one fails",
    )
    p.add_argument(
        "--soak",
        action="store_true",
        help="the soak form: the bounded service under --memory-limit-mb (default 150), 32 "
        "clients, 2%% writes, 1%% oversized bodies, RSS every second; reports peak vs limit, "
        "slope, errors by status, sheds, 413s, hit rate per cache, the longest event-loop "
        "stall, and checks them (exit 1 on a failure)",
    )
    p.add_argument(
        "--duration",
        type=_number("number of seconds", low=0, inclusive=False),
        default=None,
        help="seconds of load per service (default 90; --quick 20; --soak 600, --soak --quick 60)",
    )
    p.add_argument(
        "--memory-limit-mb",
        type=_number("number of MB", low=0, inclusive=False),
        default=None,
        help="the server's memory limit (the demo's --memory-limit-mb; default: its cgroup "
        "or RAM, --soak 150)",
    )
    p.add_argument(
        "--skew",
        type=_number("number", low=0),
        default=1.0,
        help="Zipf exponent of user popularity (default 1.0; 0: uniform users)",
    )
    p.add_argument(
        "--policy",
        choices=["lru", "s3fifo", "both"],
        default=None,
        help="the bounded caches' eviction policy (default: the demo's); 'both' runs the "
        "bounded service once with each, side by side",
    )
    p.add_argument(
        "--users",
        type=int,
        default=None,
        help="distinct users in the database (default 5000; --quick 3000)",
    )
    p.add_argument("--days", type=int, default=14, help="days of readings per user")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="concurrent clients (default 8; --soak 32, --soak --quick 16)",
    )
    p.add_argument("--only", choices=["bounded", "unbounded"], help="run one service only")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--db", help="SQLite database to use or create (default: a temporary one)")
    p.add_argument("--plot", metavar="FILE.png", help="draw RSS over time (needs matplotlib)")
    p.add_argument("--json", metavar="FILE", help="write the figures and RSS samples as JSON")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="run the bounded service as N replicas with the Redis tier and report "
        "the tier's hits (default 1: no tier)",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="with --replicas: use this Redis (default: start a redis-server on a "
        "free loopback port, stopped at the end)",
    )
    p.add_argument(
        "--writes",
        type=_number("fraction", low=0),
        default=None,
        help="fraction of requests that are profile writes (default 0; --soak and --replicas 0.02)",
    )
    p.add_argument(
        "--oversize",
        type=_number("fraction", low=0),
        default=None,
        help="fraction of requests with a body over the server's 1 MiB limit, which must "
        "get 413 (default 0; --soak 0.01)",
    )
    p.add_argument(
        "--uniform-phase",
        type=_number("number of seconds", low=0),
        default=None,
        help="after the load, this many seconds of uniform users on the bounded service, "
        "reported as the worst-case hit rate (default 15; --quick 5; 0: none)",
    )
    p.add_argument(
        "--warmup",
        type=_number("number of seconds", low=0),
        default=None,
        help="with --soak: seconds at the start left out of the second-half figures "
        "(slope, hit rate); the peak covers the whole run (default 0; --soak --quick 20)",
    )
    p.add_argument(
        "--warmup-requests",
        type=_count,
        default=None,
        help="with --soak: the warm-up also lasts until this many requests were served "
        f"(at most {MAX_WARMUP_S:.0f} s), and the rest of --duration is measured after "
        "it (default 0; --soak --quick 25000)",
    )
    p.add_argument(
        "--min-requests",
        type=_count,
        default=None,
        help="run each service past --duration until it served this many requests (at most "
        f"{MAX_EXTRA_S:.0f} s more; default 0; --quick without --soak 8000)",
    )
    p.add_argument("--cleanup-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    p.add_argument("--sample-interval", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--poll-interval", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--start-timeout", type=float, default=180.0, help=argparse.SUPPRESS)
    return p


def _settle(args: argparse.Namespace) -> Optional[str]:
    """Defaults that depend on the form; the first problem with the arguments, or None."""
    soak, quick = args.soak, args.quick
    if args.duration is None:
        args.duration = (60.0 if quick else 600.0) if soak else (20.0 if quick else 90.0)
    if args.warmup is None:
        args.warmup = 20.0 if soak and quick else 0.0
    if args.warmup >= args.duration:
        return "--warmup must be shorter than --duration"
    if args.warmup_requests is None:
        args.warmup_requests = QUICK_WARMUP_REQUESTS if soak and quick else 0
    if args.warmup_requests and not soak:
        return "--warmup-requests goes with --soak"
    if args.min_requests is None:
        args.min_requests = QUICK_MIN_REQUESTS if quick and not soak else 0
    if args.users is None:
        args.users = 3000 if quick else 5000
    if args.concurrency is None:
        args.concurrency = (16 if quick else 32) if soak else 8
    if args.memory_limit_mb is None and soak:
        args.memory_limit_mb = 150.0
    tiered = args.replicas > 1 or args.redis is not None
    if args.writes is None:
        args.writes = 0.02 if soak or tiered else 0.0
    if args.oversize is None:
        args.oversize = 0.01 if soak else 0.0
    if args.uniform_phase is None:
        args.uniform_phase = 0.0 if soak or tiered else (5.0 if quick else 15.0)
    if args.sample_interval is None:
        args.sample_interval = 1.0 if soak else 0.25
    if args.users < 1 or args.concurrency < 1 or args.days < 1:
        return "--users, --concurrency and --days must be positive"
    if args.port and not 0 < args.port < 65536:
        return "--port must be in 1..65535"
    if args.replicas < 1:
        return "--replicas must be >= 1"
    if args.writes > 1 or args.oversize > 1 or args.writes + args.oversize > 1:
        return "--writes and --oversize are fractions of the requests: together at most 1"
    if tiered and args.only == "unbounded":
        return (
            "--replicas/--redis run the bounded service only (the tier needs bounded "
            "caches): drop --only unbounded"
        )
    if soak and (tiered or args.only == "unbounded"):
        return "--soak runs one bounded service: drop --replicas/--redis/--only unbounded"
    if args.port and args.port + args.replicas - 1 > 65535:
        return "--port + --replicas goes past 65535"
    if args.plot:
        try:
            _pyplot()  # before any work: a missing matplotlib is said now, not after the run
        except LoadTestError as exc:
            return str(exc)
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _settle(args)
    if problem is not None:
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    print(info.summary(), flush=True)  # what the demo service will run on: the same install
    tiered = args.replicas > 1 or args.redis is not None
    # Our own keys: nothing from an earlier run (another database) is served.
    args.redis_prefix = f"loadtest-{uuid.uuid4().hex[:8]}"
    if args.policy == "both":
        runs_to_do = [("bounded", "lru"), ("bounded", "s3fifo")]
    else:
        modes = (
            ["bounded"]
            if tiered or args.soak
            else ([args.only] if args.only else ["bounded", "unbounded"])
        )
        runs_to_do = [(m, args.policy) for m in modes]
    runs: list[Run] = []
    redis_server: Optional[RedisServer] = None
    line = ProgressLine(sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "demo.sqlite3")
        try:
            redis_url = None
            if tiered:
                if args.redis:
                    redis_url = args.redis
                else:
                    if shutil.which("redis-server") is None:
                        raise LoadTestError(
                            "--replicas needs Redis: redis-server is not on PATH "
                            "(apt-get install redis-server), or pass --redis URL"
                        )
                    redis_server = RedisServer()
                    redis_server.start()
                    redis_url = redis_server.url
                    print(
                        f"  started redis-server on 127.0.0.1:{redis_server.port} "
                        f"(pid {redis_server.proc.pid if redis_server.proc else '?'})",
                        file=sys.stderr,
                    )
                args.redis_used = redis_url
            if not os.path.exists(db):
                print(
                    f"  creating the demo database ({args.users:,} users x {args.days} days) ...",
                    file=sys.stderr,
                )
            for mode, policy in runs_to_do:
                what = (
                    f"{args.replicas} replicas of the {mode} service"
                    if tiered
                    else f"the {mode} service" + (f" ({policy})" if policy else "")
                )
                limit = (
                    f" under a {args.memory_limit_mb:g} MB limit" if args.memory_limit_mb else ""
                )
                print(f"  loading {what}{limit} for {args.duration:.0f} s ...", file=sys.stderr)
                runs.append(drive(mode, args, db, redis_url, policy, line))
        except ProcessError as exc:
            line.close()
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if redis_server is not None:
                redis_server.stop()
            elif args.redis:
                _drop_keys(args.redis, args.redis_prefix)
    if args.soak:
        return _report_soak(runs, args)
    print(render(runs, args))
    if args.json:
        _write_json(args, [dict(r.summary(), rss=r.rss) for r in runs])
    if args.plot:
        plot(runs, args.plot)
        print(f"RSS plot written to {args.plot}")
    if args.quick:
        failures = check(runs)
        for failure in failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        if failures:
            return 1
        print("quick load test: all promises held")
    return 0


def _write_json(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    with open(args.json, "w") as f:
        json.dump(
            {"settings": {k: v for k, v in vars(args).items()}, "runs": runs},
            f,
            indent=1,
        )


def _report_soak(runs: list[Run], args: argparse.Namespace) -> int:
    failed = False
    out = []
    for run in runs:
        fig = soak_figures(run, run.load_started)
        print(render_soak(run, fig, args))
        print()
        verdicts = [verdict for _, verdict, _ in check_soak(fig, bool(args.skew), args.quick)]
        failed = failed or "FAIL" in verdicts
        out.append(
            dict(
                fig,
                rss=run.rss,
                polls_hit_rate=[(t, hit_rates(st).get("all")) for t, st in run.polls],
            )
        )
        if args.plot:
            path = args.plot
            if len(runs) > 1:
                root, ext = os.path.splitext(args.plot)
                path = f"{root}-{run.policy}{ext}"
            plot_soak(run, fig, path)
            print(f"RSS plot written to {path}")
    if args.json:
        _write_json(args, out)
    print("soak: all promises held" if not failed else "soak: a promise FAILED (see above)")
    return 1 if failed else 0
