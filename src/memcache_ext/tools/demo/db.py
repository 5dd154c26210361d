"""The demo's SQLite database: users and their hourly health readings.

``create_database(path, users, days)`` builds it (into a temporary file in the
same directory, renamed into place when complete, so an interrupted fill never
leaves a half-built database behind); ``check_database(path)`` opens it
read-only and verifies the schema, raising ``DatabaseError`` with a message
fit for a person (missing, not a database, wrong schema, locked).
``Database`` hands each thread its own read-only connection.
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import threading
import time
from typing import Any, Optional

__all__ = ["DatabaseError", "create_database", "check_database", "Database", "READINGS_PER_DAY"]

READINGS_PER_DAY = 24  # hourly
SCHEMA_VERSION = 1
_FIRST_NAMES = (
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Dennis",
    "Radia",
    "Guido",
    "Katherine",
    "Linus",
    "Sophie",
    "Niklaus",
)
_LAST_NAMES = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Ritchie",
    "Perlman",
    "Rossum",
    "Johnson",
    "Wilson",
)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    birth_year INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE readings (
    user_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    heart_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    PRIMARY KEY (user_id, ts)
) WITHOUT ROWID;
"""


class DatabaseError(RuntimeError):
    """The database cannot be used; the message says why and what to do."""


def create_database(
    path: str, users: int = 2000, days: int = 30, *, seed: int = 42, end: Optional[int] = None
) -> dict[str, Any]:
    """Create and fill the database at ``path`` (which must not exist).

    ``users`` users with ``days`` days of hourly readings each, ending at
    ``end`` (Unix time, default: now rounded down to the hour). Returns
    ``{"users", "days", "readings", "seconds"}``.
    """
    if users < 1 or days < 1:
        raise ValueError("users and days must be >= 1")
    if os.path.exists(path):
        raise FileExistsError(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DatabaseError(f"cannot create database {path}: directory {directory} does not exist")
    started = time.perf_counter()
    end = int(end if end is not None else time.time()) // 3600 * 3600
    start = end - days * 86400
    rng = random.Random(seed)
    fd, tmp = tempfile.mkstemp(prefix=".memcache-ext-demo-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("BEGIN")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("users", str(users)),
                    ("days", str(days)),
                    ("start", str(start)),
                    ("end", str(end)),
                    ("readings_per_day", str(READINGS_PER_DAY)),
                ],
            )
            conn.executemany(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                (
                    (
                        uid,
                        f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
                        f"user{uid}@example.org",
                        rng.randint(1940, 2006),
                        start - rng.randint(0, 365 * 86400),
                    )
                    for uid in range(1, users + 1)
                ),
            )
            step = 86400 // READINGS_PER_DAY
            hours = range(start, end, step)
            count = 0

            def rows() -> Any:
                nonlocal count
                rand, randint = rng.random, rng.randint
                for uid in range(1, users + 1):
                    rest = 55 + 20 * rand()
                    for ts in hours:
                        hour = ts // 3600 % 24
                        awake = 7 <= hour <= 22
                        hr = rest + (25 * rand() if awake else 5 * rand())
                        steps = randint(0, 1500) if awake else 0
                        yield uid, ts, round(hr, 1), steps
                        count += 1

            conn.executemany("INSERT INTO readings VALUES (?, ?, ?, ?)", rows())
            conn.execute("COMMIT")
        finally:
            conn.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return {
        "users": users,
        "days": days,
        "readings": count,
        "seconds": time.perf_counter() - started,
    }


def _connect_ro(path: str, timeout: float) -> sqlite3.Connection:
    uri = "file:" + os.path.abspath(path).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def check_database(path: str, timeout: float = 2.0) -> dict[str, str]:
    """Open ``path`` read-only, check the schema, return its ``meta`` table.

    Raises DatabaseError with a clear message when the file is missing, is
    not a database of this demo, or stays locked for ``timeout`` seconds.
    """
    if not os.path.exists(path):
        raise DatabaseError(
            f"database {path} does not exist (start the demo without --no-create to create it)"
        )
    try:
        conn = _connect_ro(path, timeout)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from exc
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        conn.execute("SELECT id FROM users LIMIT 1").fetchall()
        conn.execute("SELECT user_id FROM readings LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if "locked" in msg or "busy" in msg:
            raise DatabaseError(
                f"database {path} is locked by another process (waited {timeout:g} s): {msg}"
            ) from exc
        raise DatabaseError(
            f"database {path} is not a memcache-ext demo database "
            f"({msg}); delete it or pass another --db"
        ) from exc
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(
            f"{path} is not a usable SQLite database ({exc}); delete it or pass another --db"
        ) from exc
    finally:
        conn.close()
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise DatabaseError(
            f"database {path} has schema version "
            f"{meta.get('schema_version')!r}, expected {SCHEMA_VERSION}; "
            f"delete it to rebuild"
        )
    return {str(k): str(v) for k, v in meta.items()}


class Database:
    """Read-only access to the demo database, one connection per thread."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self.meta = check_database(path, timeout=min(timeout, 2.0))
        self.end = int(self.meta["end"])
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect_ro(self.path, self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover
                pass
