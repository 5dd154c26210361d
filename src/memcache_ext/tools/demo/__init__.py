"""``python -m memcache_ext demo``: the user-health-data service of DESIGN section 1.

    python -m memcache_ext demo [--host 127.0.0.1] [--port 8000] [--db PATH]
                                [--users N] [--days D] [--unbounded]
                                [--redis URL [--replicas N] [--max-stale S]]
                                [--token-file PATH | --insecure]

On first start the SQLite database at ``--db`` is created and filled
(``--users`` users, ``--days`` days of hourly readings each). The service
runs under uvicorn with bounded caches created through a ``CacheManager``
(or, with ``--unbounded``, plain dicts), the memory middleware, the cleanup
service, ``/memory/stats`` and ``/metrics``. Needs the ``fastapi`` and
``prometheus`` extras and uvicorn.

``--redis URL`` puts a Redis second tier (``memcache_ext.redis.TieredCache``)
behind the bounded caches; ``--replicas N`` (needs ``--redis``) runs N
uvicorn processes of the same app on ports ``port .. port+N-1``, supervised
by this process: it forwards SIGINT/SIGTERM to them, stops them all when one
dies, and exits non-zero when one fails to start.

Secrets never go on a command line, where ``ps`` shows them to every user:
the Redis password comes from ``MEMCACHE_EXT_REDIS_PASSWORD`` or
``--redis-password-file`` (or a whole URL from ``MEMCACHE_EXT_REDIS_URL``; a
``--redis`` URL with a password is refused), the token from
``MEMCACHE_EXT_DEMO_TOKEN`` or ``--token-file``; the supervisor hands both to
its replicas in their environment. The service binds 127.0.0.1 by default;
any other address needs a token (which then protects ``/memory/*``,
``/metrics`` and the docs) or an explicit ``--insecure``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from ..procs import ProgressLine, eta, http_ok, port_free, send_signal, stop_process

__all__ = ["main", "build_parser"]

DEFAULT_DB = "memcache-ext-demo.sqlite3"
ENV_REDIS_URL = "MEMCACHE_EXT_REDIS_URL"
ENV_REDIS_PASSWORD = "MEMCACHE_EXT_REDIS_PASSWORD"
ENV_TOKEN = "MEMCACHE_EXT_DEMO_TOKEN"


class ConfigError(ValueError):
    """A setting that cannot be used; the message says what to do."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m memcache_ext demo",
        description="The memcache-ext demo service: user health data from SQLite, cached.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); another one needs --token-file or "
        f"${ENV_TOKEN}, or --insecure",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--db",
        default=DEFAULT_DB,
        help=f"SQLite database; created and filled if missing (default {DEFAULT_DB})",
    )
    p.add_argument(
        "--users", type=int, default=5000, help="users to create in a new database (default 5000)"
    )
    p.add_argument(
        "--days",
        type=int,
        default=14,
        help="days of hourly readings per user in a new database (default 14)",
    )
    p.add_argument(
        "--unbounded",
        action="store_true",
        help="cache in plain dicts instead of bounded caches (the 'before' case)",
    )
    p.add_argument(
        "--memory-limit-mb",
        type=float,
        default=None,
        help="the CacheManager's memory limit (default: cgroup limit, else RAM)",
    )
    p.add_argument(
        "--high-memory-mb",
        type=float,
        default=400,
        help="requests ending above this RSS are logged and listed (default 400)",
    )
    p.add_argument(
        "--cleanup-interval",
        type=float,
        default=30.0,
        help="seconds between cleanup passes (default 30)",
    )
    p.add_argument(
        "--policy",
        choices=["lru", "s3fifo"],
        default=None,
        help="the caches' eviction policy (default: the one that gave the demo the higher "
        "hit rate in the same memory bound, see docs/performance.md)",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=1.0,
        help="request body limit; larger bodies get 413 without being read (default 1; 0: none)",
    )
    p.add_argument(
        "--shed-at",
        type=float,
        default=0.95,
        help="answer new requests 503 while RSS is at or above this fraction of the limit "
        "(default 0.95)",
    )
    p.add_argument(
        "--resume-at",
        type=float,
        default=0.90,
        help="let requests in again below this fraction of the limit (default 0.90)",
    )
    p.add_argument(
        "--no-create", action="store_true", help="fail instead of creating a missing database"
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--redis",
        metavar="URL",
        default=None,
        help="Redis second tier behind the caches, e.g. redis://127.0.0.1:6379/0 "
        f"(needs redis-py; default ${ENV_REDIS_URL} when set); no password in it: "
        f"${ENV_REDIS_PASSWORD} or --redis-password-file. A Redis that is down is a "
        "warning, not an error",
    )
    p.add_argument(
        "--redis-password-file",
        metavar="PATH",
        default=None,
        help=f"read the Redis password from this file (or set ${ENV_REDIS_PASSWORD})",
    )
    p.add_argument(
        "--max-stale",
        type=float,
        default=1.0,
        help="seconds a replica serves its local copies once invalidations cannot "
        "arrive (Redis down or frozen); 0: not at all (default 1)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        default=None,
        help=f"protect /memory/*, /metrics and /docs with the token in this file "
        f"(or set ${ENV_TOKEN}); needed to bind anything but loopback",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="bind a non-loopback --host without a token: /memory/*, /metrics and /docs "
        "are then open to anyone who can reach it",
    )
    p.add_argument(
        "--redis-prefix",
        default="demo",
        help="namespace prefix of the tiers' Redis keys (default 'demo')",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="run N server processes on ports PORT..PORT+N-1 (needs --redis)",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="seconds a replica may take to answer /health (default 120)",
    )
    p.add_argument("--replica-of", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} from {path}: {exc}") from None
    if not value:
        raise ConfigError(f"the {what} file {path} is empty")
    return value


def _has_password(url: str) -> bool:
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
        return parts.password is not None or "password" in parse_qs(parts.query)
    except ValueError:
        return False


def _without_password(url: str) -> str:
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def resolve_secrets(args: argparse.Namespace, environ: Any = os.environ) -> None:
    """Set ``args.redis`` (no password), ``args.redis_password`` and ``args.token`` from
    the flags, the environment and files; ConfigError for a secret on the command line,
    an unreadable file, or a non-loopback address without a token nor ``--insecure``."""
    if args.redis and _has_password(args.redis):
        raise ConfigError(
            "--redis URL carries a password, which `ps` shows to every user of this "
            f"machine: put the password in ${ENV_REDIS_PASSWORD} or --redis-password-file "
            f"(or the whole URL in ${ENV_REDIS_URL})"
        )
    url = args.redis or environ.get(ENV_REDIS_URL) or None
    password: Optional[str] = None
    if url and _has_password(url):
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(url)
        password = (
            unquote(parts.password)
            if parts.password is not None
            else parse_qs(parts.query)["password"][0]
        )
        url = _without_password(url)
    if args.redis_password_file:
        password = _read_secret(args.redis_password_file, "Redis password")
    elif environ.get(ENV_REDIS_PASSWORD):
        password = environ[ENV_REDIS_PASSWORD]
    args.redis, args.redis_password = url, password
    token: Optional[str] = None
    if args.token_file:
        token = _read_secret(args.token_file, "token")
    elif environ.get(ENV_TOKEN):
        token = environ[ENV_TOKEN].strip() or None
    args.token = token
    if not _is_loopback(args.host) and token is None and not args.insecure:
        raise ConfigError(
            f"--host {args.host} is reachable from other machines: protect /memory/*, "
            f"/metrics and /docs with a token (--token-file PATH or ${ENV_TOKEN}), or "
            "pass --insecure to serve them to anyone"
        )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    err = sys.stderr
    try:
        resolve_secrets(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return 2
    if args.max_stale < 0:
        print("error: --max-stale must be >= 0", file=err)
        return 2
    for name, value in (("--users", args.users), ("--days", args.days)):
        if value < 1:
            print(f"error: {name} must be >= 1", file=err)
            return 2
    if not 0 < args.port < 65536:
        print("error: --port must be in 1..65535", file=err)
        return 2
    if args.replicas < 1:
        print("error: --replicas must be >= 1", file=err)
        return 2
    if args.replicas > 1 and not args.redis:
        print(
            "error: --replicas needs the Redis tier, which keeps the replicas' caches "
            "consistent: add --redis URL (e.g. --redis redis://127.0.0.1:6379/0)",
            file=err,
        )
        return 2
    if args.port + args.replicas - 1 > 65535:
        print(
            f"error: --replicas {args.replicas} from --port {args.port} goes past 65535", file=err
        )
        return 2
    if args.redis and args.unbounded:
        print("error: --redis needs the bounded caches: drop --unbounded", file=err)
        return 2
    if args.max_body_mb < 0:
        print("error: --max-body-mb must be >= 0 (0: no limit)", file=err)
        return 2
    if not 0 < args.resume_at <= args.shed_at <= 1:
        print("error: need 0 < --resume-at <= --shed-at <= 1", file=err)
        return 2
    try:
        import fastapi  # noqa: F401 - only whether it imports
        import prometheus_client  # noqa: F401 - only whether it imports
        import uvicorn
    except ImportError as exc:
        print(
            f"error: the demo needs FastAPI, uvicorn and prometheus-client ({exc}); "
            f"pip install 'memcache-ext[fastapi,prometheus]' uvicorn",
            file=err,
        )
        return 2
    where = f" [:{args.port}]" if args.replica_of is not None else ""
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s",
    )
    from ...manager import CacheManager
    from .app import create_app
    from .db import DatabaseError, check_database, create_database

    try:
        if not os.path.exists(args.db):
            if args.no_create:
                raise DatabaseError(f"database {args.db} does not exist (--no-create)")
            print(
                f"creating {args.db}: {args.users} users x {args.days} days of hourly readings ...",
                file=err,
                flush=True,
            )
            with ProgressLine(err) as line:
                started = time.monotonic()

                def progress(done: int, total: int) -> None:
                    spent = time.monotonic() - started
                    left = eta(done, total, spent)
                    line.update(
                        f"  {done:,}/{total:,} users ({done / total:.0%}), {spent:.0f} s"
                        + ("" if left is None else f", about {left:.0f} s left")
                    )

                info = create_database(args.db, args.users, args.days, progress=progress)
            print(
                f"created {args.db}: {info['readings']:,} readings in {info['seconds']:.1f} s",
                file=err,
                flush=True,
            )
        else:
            meta = check_database(args.db)
            if (meta.get("users"), meta.get("days")) != (str(args.users), str(args.days)):
                print(
                    f"using existing {args.db} ({meta.get('users')} users, "
                    f"{meta.get('days')} days); delete it to rebuild with other sizes",
                    file=err,
                    flush=True,
                )
        if args.replicas > 1:
            # The database exists now: the replicas only open it.
            return Supervisor(args).run()
        manager = CacheManager(memory_limit_mb=args.memory_limit_mb)
        app = create_app(
            args.db,
            unbounded=args.unbounded,
            manager=manager,
            memory_limit_mb=args.high_memory_mb,
            cleanup_interval=args.cleanup_interval,
            redis_url=args.redis,
            redis_prefix=args.redis_prefix,
            redis_password=args.redis_password,
            max_stale=args.max_stale,
            token=args.token,
            max_body_bytes=int(args.max_body_mb * 2**20) if args.max_body_mb else None,
            shed_at=args.shed_at,
            resume_at=args.resume_at,
            **({"policy": args.policy} if args.policy else {}),
        )
    except (DatabaseError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    tier = f", Redis tier at {safe_url(args.redis)}" if args.redis else ""
    if args.replica_of is None:
        guard = "token required" if args.token else "open: loopback only"
        if args.token is None and not _is_loopback(args.host):
            guard = "OPEN TO ANYONE: --insecure"
        kind = "unbounded dict" if args.unbounded else f"bounded {app.state.service.policy}"
        print(
            f"memcache-ext demo ({kind} caches{tier}) on http://{args.host}:{args.port}  "
            f"(/docs, /memory/stats, /metrics: {guard})",
            file=err,
            flush=True,
        )
        if not args.unbounded:
            print(f"  {budget_line(manager)}", file=err, flush=True)
    else:
        _watch_supervisor(args.replica_of)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log
    )
    return 0


def budget_line(manager: Any) -> str:
    """The manager's byte budget in one line, for the start-up message."""
    b = manager.stats()["budget"]
    mb = 2**20
    if b["total_bytes"] is None:
        return f"caches at their own bounds ({b['source']})"
    grants = ", ".join(f"{name} {g['granted_bytes'] / mb:.1f}" for name, g in b["caches"].items())
    if b["source"] == "derived":
        how = (
            f"{b['cache_share']:.0%} of the {b['headroom_bytes'] / mb:.0f} MB between the "
            f"baseline RSS ({b['baseline_rss_bytes'] / mb:.0f} MB) and the high-water mark "
            f"({b['high_water_bytes'] / mb:.0f} MB of the {b['limit_bytes'] / mb:.0f} MB limit)"
        )
    else:
        how = "max_total_bytes"
    return f"cache budget {b['total_bytes'] / mb:.1f} MB = {how}: {grants} MB"


def safe_url(url: str) -> str:
    from .app import safe_url as _safe

    return _safe(url)


def _watch_supervisor(pid: int, interval: float = 0.5) -> None:
    """In a replica: stop (SIGTERM to ourselves: uvicorn's graceful shutdown) if the
    supervisor ``pid`` goes away without stopping us (killed with SIGKILL, say)."""

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(interval)
        logging.getLogger("memcache_ext.demo").warning(
            "the replica supervisor (pid %d) is gone: stopping", pid
        )
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="memcache_ext.demo-supervisor-watch").start()


class Supervisor:
    """``--replicas N``: N child processes running the same app on consecutive ports.

    Each child is ``python -m memcache_ext demo`` with ``--port PORT+i`` and
    ``--replicas 1`` (and no secret on its command line: the Redis password and
    the token go in its environment), in its own process group (so a terminal's Ctrl-C reaches
    the supervisor only, which forwards it once) and watching the supervisor
    (it stops itself if the supervisor dies). The supervisor waits until every
    replica answers ``/health``; if one exits first it stops the others and
    returns 1. Afterwards: SIGINT/SIGTERM are forwarded to every replica and
    their shutdown is awaited (return 0); a replica that exits on its own stops
    the others (return 1).
    """

    def __init__(self, args: argparse.Namespace, stop_timeout: float = 20.0) -> None:
        self.args = args
        self.ports = [args.port + i for i in range(args.replicas)]
        self.stop_timeout = stop_timeout
        self.procs: list[subprocess.Popen[bytes]] = []
        self._signal: Optional[int] = None
        self.err = sys.stderr

    def _say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def child_argv(self, port: int) -> list[str]:
        a = self.args
        argv = [
            sys.executable,
            "-m",
            "memcache_ext",
            "demo",
            "--host",
            a.host,
            "--port",
            str(port),
            "--db",
            a.db,
            "--users",
            str(a.users),
            "--days",
            str(a.days),
            "--no-create",
            "--high-memory-mb",
            str(a.high_memory_mb),
            "--cleanup-interval",
            str(a.cleanup_interval),
            "--log-level",
            a.log_level,
            "--redis",
            a.redis,  # without a password: resolve_secrets took it out
            "--redis-prefix",
            a.redis_prefix,
            "--max-stale",
            str(a.max_stale),
            "--replicas",
            "1",
            "--replica-of",
            str(os.getpid()),
        ]
        if a.memory_limit_mb is not None:
            argv += ["--memory-limit-mb", str(a.memory_limit_mb)]
        argv += ["--max-body-mb", str(a.max_body_mb), "--shed-at", str(a.shed_at)]
        argv += ["--resume-at", str(a.resume_at)]
        if a.policy:
            argv += ["--policy", a.policy]
        if a.access_log:
            argv.append("--access-log")
        if a.insecure:
            argv.append("--insecure")
        return argv

    def child_env(self) -> dict[str, str]:
        """The replicas' environment: ours, with the secrets they need and none they don't."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in (ENV_REDIS_URL, ENV_REDIS_PASSWORD, ENV_TOKEN)
        }
        if self.args.redis_password is not None:
            env[ENV_REDIS_PASSWORD] = self.args.redis_password
        if self.args.token is not None:
            env[ENV_TOKEN] = self.args.token
        return env

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is None:
            self._signal = signum

    def _probe_host(self) -> str:
        host = self.args.host
        return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host

    def _answers(self, port: int) -> bool:
        return http_ok(port, self._probe_host())

    def run(self) -> int:
        busy = [p for p in self.ports if not port_free(self.args.host, p)]
        if busy:
            self._say(
                f"error: port(s) {', '.join(map(str, busy))} on {self.args.host} busy: "
                f"--replicas {self.args.replicas} needs ports {self.ports[0]}.."
                f"{self.ports[-1]} free (pick another --port)"
            )
            return 2
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            return self._run()
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        for port in self.ports:
            self.procs.append(
                subprocess.Popen(
                    self.child_argv(port), env=self.child_env(), start_new_session=True
                )
            )
        deadline = time.monotonic() + self.args.start_timeout
        pending = set(range(len(self.procs)))
        while pending:
            if self._signal is not None:  # asked to stop: not a failure
                self._say(
                    f"demo: {signal.Signals(self._signal).name} during start-up: "
                    f"stopping the replicas"
                )
                return 0
            for i in sorted(pending):
                code = self.procs[i].poll()
                if code is not None:
                    self._say(
                        f"error: replica {i + 1} of {len(self.procs)} (port "
                        f"{self.ports[i]}) failed to start (exit code {code}); "
                        f"stopping the others"
                    )
                    return 1
                if self._answers(self.ports[i]):
                    pending.discard(i)
            if pending and time.monotonic() > deadline:
                ports = ", ".join(str(self.ports[i]) for i in sorted(pending))
                self._say(
                    f"error: replica(s) on port(s) {ports} did not answer /health within "
                    f"{self.args.start_timeout:g} s; stopping them all"
                )
                return 1
            if pending:
                time.sleep(0.2)
        self._say(
            f"memcache-ext demo: {len(self.procs)} replicas (bounded caches, Redis tier at "
            f"{safe_url(self.args.redis)}) on http://{self.args.host}:{self.ports[0]}.."
            f"{self.ports[-1]}; supervisor pid {os.getpid()}; Ctrl-C stops them all"
        )
        while True:
            if self._signal is not None:
                self._say(
                    f"demo: {signal.Signals(self._signal).name}: stopping "
                    f"{len(self.procs)} replicas"
                )
                self.stop_all(self._signal)
                return 0
            for i, proc in enumerate(self.procs):
                code = proc.poll()
                if code is not None:
                    self._say(
                        f"error: replica {i + 1} (port {self.ports[i]}, pid {proc.pid}) "
                        f"exited with code {code}; stopping the other replicas"
                    )
                    return 1
            time.sleep(0.2)

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to every replica still running, wait, then SIGKILL leftovers."""
        running = [p for p in self.procs if p.poll() is None]
        for proc in running:
            send_signal(proc, sig)
        deadline = time.monotonic() + self.stop_timeout
        for proc in running:
            say = functools.partial(
                self._say,
                f"demo: replica pid {proc.pid} did not stop in {self.stop_timeout:g} s: killing it",
            )
            stop_process(proc, deadline - time.monotonic(), sig=None, on_kill=say)
