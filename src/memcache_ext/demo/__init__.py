"""``python -m memcache_ext demo``: the user-health-data service of DESIGN section 1.

    python -m memcache_ext demo [--host 127.0.0.1] [--port 8000] [--db PATH]
                                [--users N] [--days D] [--unbounded]

On first start the SQLite database at ``--db`` is created and filled
(``--users`` users, ``--days`` days of hourly readings each). The service
runs under uvicorn with bounded caches created through a ``CacheManager``
(or, with ``--unbounded``, plain dicts), the memory middleware, the cleanup
service, ``/memory/stats`` and ``/metrics``. Needs the ``fastapi`` and
``prometheus`` extras and uvicorn.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

__all__ = ["main", "build_parser"]

DEFAULT_DB = "memcache-ext-demo.sqlite3"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m memcache_ext demo",
        description="The memcache-ext demo service: user health data from SQLite, cached.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--db", default=DEFAULT_DB,
                   help=f"SQLite database; created and filled if missing (default {DEFAULT_DB})")
    p.add_argument("--users", type=int, default=5000,
                   help="users to create in a new database (default 5000)")
    p.add_argument("--days", type=int, default=14,
                   help="days of hourly readings per user in a new database (default 14)")
    p.add_argument("--unbounded", action="store_true",
                   help="cache in plain dicts instead of bounded caches (the 'before' case)")
    p.add_argument("--memory-limit-mb", type=float, default=None,
                   help="the CacheManager's memory limit (default: cgroup limit, else RAM)")
    p.add_argument("--high-memory-mb", type=float, default=400,
                   help="requests ending above this RSS are logged and listed (default 400)")
    p.add_argument("--cleanup-interval", type=float, default=30.0,
                   help="seconds between cleanup passes (default 30)")
    p.add_argument("--no-create", action="store_true",
                   help="fail instead of creating a missing database")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    err = sys.stderr
    for name, value in (("--users", args.users), ("--days", args.days)):
        if value < 1:
            print(f"error: {name} must be >= 1", file=err)
            return 2
    if not 0 < args.port < 65536:
        print("error: --port must be in 1..65535", file=err)
        return 2
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as exc:
        print(f"error: the demo needs FastAPI, uvicorn and prometheus-client ({exc}); "
              f"pip install 'memcache-ext[fastapi,prometheus]' uvicorn", file=err)
        return 2
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .app import create_app
    from .db import DatabaseError, check_database, create_database
    from ..manager import CacheManager

    try:
        if not os.path.exists(args.db):
            if args.no_create:
                raise DatabaseError(f"database {args.db} does not exist (--no-create)")
            print(f"creating {args.db}: {args.users} users x {args.days} days of hourly "
                  f"readings ...", file=err, flush=True)
            info = create_database(args.db, args.users, args.days)
            print(f"created {args.db}: {info['readings']:,} readings in "
                  f"{info['seconds']:.1f} s", file=err, flush=True)
        else:
            meta = check_database(args.db)
            if (meta.get("users"), meta.get("days")) != (str(args.users), str(args.days)):
                print(f"using existing {args.db} ({meta.get('users')} users, "
                      f"{meta.get('days')} days); delete it to rebuild with other sizes",
                      file=err, flush=True)
        manager = CacheManager(memory_limit_mb=args.memory_limit_mb)
        app = create_app(args.db, unbounded=args.unbounded, manager=manager,
                         memory_limit_mb=args.high_memory_mb,
                         cleanup_interval=args.cleanup_interval)
    except (DatabaseError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=err)
        return 2
    print(f"memcache-ext demo ({'unbounded dict' if args.unbounded else 'bounded'} caches) "
          f"on http://{args.host}:{args.port}  (/docs, /memory/stats, /metrics)",
          file=err, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.access_log)
    return 0
