"""The demo's SQLite database: users and their hourly health readings.

``create_database(path, users, days)`` builds it (into a temporary file in the
same directory, renamed into place when complete, so an interrupted fill never
leaves a half-built database behind); ``check_database(path)`` opens it
read-only and verifies the schema, raising ``DatabaseError`` with a message
fit for a person (missing, not a database, wrong schema, locked).
``Database`` lends read-only connections from a bounded pool.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
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
    path: str,
    users: int = 2000,
    days: int = 30,
    *,
    seed: int = 42,
    end: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, Any]:
    """Create and fill the database at ``path`` (which must not exist).

    ``users`` users with ``days`` days of hourly readings each, ending at
    ``end`` (Unix time, default: now rounded down to the hour). ``progress``
    is called as ``progress(users_done, users)`` about a hundred times while
    the readings are written (and once at the end). Returns ``{"users",
    "days", "readings", "seconds"}``.
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

            every = max(1, users // 100)

            def rows() -> Any:
                nonlocal count
                rand, randint = rng.random, rng.randint
                for uid in range(1, users + 1):
                    if progress is not None and uid % every == 0:
                        progress(uid, users)
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
            if progress is not None:
                progress(users, users)
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
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"  # %, ?, # escaped
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
    """Read-only access to the demo database through a bounded pool of connections.

    At most ``pool_size`` connections exist at once: opened on demand, handed
    to one query at a time and put back afterwards (last in, first out, so a
    quiet service keeps using the same few). No connection belongs to a
    thread: the server's thread pool may retire and start threads at will
    without leaving connections behind (one per thread that ever asked was the
    demo's leak, issue 12). Each connection's page cache is bounded by
    ``cache_kib``, so the database holds at most ``pool_size * cache_kib`` KiB
    of cache. A query that finds every connection busy waits up to
    ``timeout`` seconds, then raises ``sqlite3.OperationalError`` (the app
    answers 503). ``resize()`` changes the bound (the app sizes it to the
    server's thread count at start-up).
    """

    def __init__(
        self, path: str, timeout: float = 5.0, pool_size: int = 40, cache_kib: int = 256
    ) -> None:
        if pool_size < 1 or cache_kib < 1:
            raise ValueError("pool_size and cache_kib must be >= 1")
        self.path = path
        self.timeout = timeout
        self.cache_kib = cache_kib
        self.meta = check_database(path, timeout=min(timeout, 2.0))
        self.end = int(self.meta["end"])
        self._cond = threading.Condition(threading.Lock())
        self._idle: list[sqlite3.Connection] = []
        self._open = 0
        self._pool_size = pool_size
        self._closed = False
        self.opened_total = 0
        self.waits = 0

    @property
    def pool_size(self) -> int:
        return self._pool_size

    def resize(self, pool_size: int) -> None:
        """Allow at most ``pool_size`` connections (idle ones beyond it are closed now)."""
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        with self._cond:
            self._pool_size = pool_size
            extra = max(0, self._open - pool_size)
            drop = self._idle[:extra]
            del self._idle[: len(drop)]
            self._open -= len(drop)
            self._cond.notify_all()
        for conn in drop:
            _close_quietly(conn)

    def _acquire(self) -> sqlite3.Connection:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                if self._closed:
                    raise sqlite3.ProgrammingError("the database pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._pool_size:
                    self._open += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise sqlite3.OperationalError(
                        f"all {self._pool_size} database connections busy for {self.timeout:g} s"
                    )
                self.waits += 1
                self._cond.wait(left)
        try:
            conn = _connect_ro(self.path, self.timeout)
            conn.execute(f"PRAGMA cache_size = -{int(self.cache_kib)}")
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.opened_total += 1
        return conn

    def _release(self, conn: sqlite3.Connection, broken: bool) -> None:
        with self._cond:
            keep = not (broken or self._closed or self._open > self._pool_size)
            if keep:
                self._idle.append(conn)
            else:
                self._open -= 1
            self._cond.notify()
        if not keep:
            _close_quietly(conn)

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection for the duration of the ``with`` block."""
        conn = self._acquire()
        broken = False
        try:
            yield conn
        except sqlite3.Error:
            broken = True  # closed rather than trusted again; the next query opens a new one
            raise
        finally:
            self._release(conn, broken)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def stats(self) -> dict[str, int]:
        """The pool's figures: size, open, idle, in use, opened in all, waits, cache KiB."""
        with self._cond:
            return {
                "pool_size": self._pool_size,
                "open": self._open,
                "idle": len(self._idle),
                "in_use": self._open - len(self._idle),
                "opened_total": self.opened_total,
                "waits": self.waits,
                "cache_kib": self.cache_kib,
            }

    def close(self) -> None:
        """Close the idle connections now, the busy ones when they come back."""
        with self._cond:
            self._closed = True
            conns, self._idle = self._idle, []
            self._open -= len(conns)
            self._cond.notify_all()
        for conn in conns:
            _close_quietly(conn)


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:  # pragma: no cover - closing a read-only connection
        pass
