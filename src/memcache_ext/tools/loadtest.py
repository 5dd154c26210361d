"""``python -m memcache_ext loadtest``: memory under load, bounded vs unbounded.

Starts the demo service (``python -m memcache_ext demo``) under uvicorn on
127.0.0.1 as a separate process, drives it with concurrent keep-alive clients
over many distinct users, samples the server's RSS, and stops it. It runs the
bounded service and the ``--unbounded`` one (plain dict caches) on the same
database and workload and prints them side by side. The server it started is
always stopped, whatever happens.

``--quick`` (under a minute) checks what CI checks: the bounded service grows
by less than 100 MB, peaks under 400 MB and answers every request, while the
unbounded one grows past the bounded one's peak; it exits 1 when one fails.

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
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Optional

from ._loadclient import client, memory_stats
from ._loadreport import LoadTestError, Run, check, hit_rate, plot, render, tier_counters
from .procs import (
    ProcessError,
    RedisServer,
    free_port,
    free_ports,
    http_ok,
    poll,
    port_in_use,
    stop_process,
)


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


def drive(mode: str, args: argparse.Namespace, db: str, redis_url: Optional[str] = None) -> Run:
    import psutil

    n = args.replicas
    port = args.port if args.port else (free_ports(n) if n > 1 else free_port())
    busy = [port + i for i in range(n) if port_in_use(port + i)]
    if busy:
        what = f"port {port}" if n == 1 else f"port(s) {', '.join(map(str, busy))}"
        raise LoadTestError(f"{what} on 127.0.0.1 is busy: pick another with --port")
    run = Run(mode)
    extra = ["--cleanup-interval", "2"]
    if redis_url is not None:
        extra += ["--redis", redis_url, "--redis-prefix", args.redis_prefix, "--replicas", str(n)]
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
        t0 = time.monotonic()
        sample(0.0, 0)
        clients = [
            threading.Thread(
                target=client,
                daemon=True,
                args=(port, args.users, args.days, stop, run, lock, i, progress),
                kwargs=dict(
                    ports=ports if tiered else None,
                    write_fraction=args.writes if tiered else 0.0,
                    per_port=per_port,
                ),
            )
            for i in range(args.concurrency)
        ]
        for c in clients:
            c.start()
        try:
            while time.monotonic() - t0 < args.duration:
                time.sleep(args.sample_interval)
                if server.proc.poll() is not None:
                    raise LoadTestError(
                        f"the {mode} service died under load "
                        f"(exit {server.proc.returncode}):\n{server.output()}"
                    )
                sample(time.monotonic() - t0, sum(progress))
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=60)
        run.duration_s = time.monotonic() - t0
        sample(run.duration_s, run.requests)
        if mode == "bounded":
            stats = [memory_stats(p) for p in ports]
            if not tiered:
                run.hit_rate = hit_rate(stats[0])
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
    return run


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m memcache_ext loadtest",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="under a minute; checks the bounded/unbounded promises (exit 1 on failure)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of load per service (default 90; --quick 20). A long "
        "--duration is the soak form",
    )
    p.add_argument(
        "--users",
        type=int,
        default=None,
        help="distinct users in the database (default 5000; --quick 3000)",
    )
    p.add_argument("--days", type=int, default=14, help="days of readings per user")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
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
        type=float,
        default=0.02,
        help="with --replicas: fraction of requests that are profile writes (default 0.02)",
    )
    p.add_argument("--sample-interval", type=float, default=0.25, help=argparse.SUPPRESS)
    p.add_argument("--start-timeout", type=float, default=180.0, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.duration = args.duration or (20.0 if args.quick else 90.0)
    args.users = args.users or (3000 if args.quick else 5000)
    if args.duration <= 0 or args.users < 1 or args.concurrency < 1 or args.days < 1:
        print(
            "error: --duration, --users, --concurrency and --days must be positive", file=sys.stderr
        )
        return 2
    if args.port and not 0 < args.port < 65536:
        print("error: --port must be in 1..65535", file=sys.stderr)
        return 2
    if args.replicas < 1:
        print("error: --replicas must be >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.writes <= 1:
        print("error: --writes must be a fraction in 0..1", file=sys.stderr)
        return 2
    tiered = args.replicas > 1 or args.redis is not None
    if tiered and args.only == "unbounded":
        print(
            "error: --replicas/--redis run the bounded service only (the tier needs bounded "
            "caches): drop --only unbounded",
            file=sys.stderr,
        )
        return 2
    if args.port and args.port + args.replicas - 1 > 65535:
        print("error: --port + --replicas goes past 65535", file=sys.stderr)
        return 2
    # Our own keys: nothing from an earlier run (another database) is served.
    args.redis_prefix = f"loadtest-{uuid.uuid4().hex[:8]}"
    modes = ["bounded"] if tiered else ([args.only] if args.only else ["bounded", "unbounded"])
    runs: list[Run] = []
    redis_server: Optional[RedisServer] = None
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
            for mode in modes:
                what = (
                    f"{args.replicas} replicas of the {mode} service"
                    if tiered
                    else f"the {mode} service"
                )
                print(f"  loading {what} for {args.duration:.0f} s ...", file=sys.stderr)
                runs.append(drive(mode, args, db, redis_url))
        except ProcessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if redis_server is not None:
                redis_server.stop()
            elif args.redis:
                _drop_keys(args.redis, args.redis_prefix)
    print(render(runs, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "settings": {k: v for k, v in vars(args).items()},
                    "runs": [dict(r.summary(), rss=r.rss) for r in runs],
                },
                f,
                indent=1,
            )
    if args.plot:
        try:
            plot(runs, args.plot)
        except LoadTestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"RSS plot written to {args.plot}")
    if args.quick:
        failures = check(runs)
        for failure in failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        if failures:
            return 1
        print("quick load test: all promises held")
    return 0
