"""The tier's call policy: its own client, a deadline per call, a circuit breaker.

Whatever client the caller passes, the tier talks to Redis through a client of
its own, built from the caller's connection settings (host, port, db, TLS,
credentials, unix socket) with the tier's policy in place of redis-py's:

* a deadline per call (``deadline``, default 50 ms): socket connect and read
  timeouts, and for the asyncio client a timeout around each awaited call;
* no hidden retries: redis-py 8 retries a failed command three times with
  exponential backoff by default (seconds per request while Redis is away);
  the tier's client retries once, at once, and only on a connection error (a
  pooled connection the server closed: a restart), never on a timeout;
* a circuit breaker (:class:`Breaker`) that opens on the first connection
  error or timeout. While it is open the request path does not touch Redis;
  the tier's background worker alone probes it (one ``PING`` every
  ``probe_interval``) and closes it when Redis answers.

The caller's client is never used for a command and never changed; closing it
remains the caller's business. ``close()``/``aclose()`` of the tier closes the
tier's own connections.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Optional

import redis
import redis.asyncio
import redis.exceptions as rexc
from redis.backoff import NoBackoff

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_PROBE_INTERVAL",
    "BREAKER_STATES",
    "ERROR_KINDS",
    "REDIS_ERRORS",
    "Breaker",
    "error_kind",
    "own_client",
]

logger = logging.getLogger("memcache_ext.redis")

DEFAULT_DEADLINE = 0.05
DEFAULT_PROBE_INTERVAL = 0.1

#: Errors that mean "Redis did not answer properly": counted, never raised into a request.
#: (asyncio's timeout raises the builtin TimeoutError, an OSError.)
REDIS_ERRORS: tuple[type[BaseException], ...] = (rexc.RedisError, OSError)

#: The kinds an error is counted under; "timeout" and "connection" open the breaker.
ERROR_KINDS = ("timeout", "connection", "response", "other")
BREAKER_STATES = ("closed", "open", "half_open")

# What the tier's own client does not copy from the caller's connection settings:
# its policy replaces them, or the new pool makes its own.
_NOT_COPIED = frozenset(
    {
        "retry",
        "retry_on_error",
        "retry_on_timeout",
        "socket_timeout",
        "socket_connect_timeout",
        "health_check_interval",
        "decode_responses",
        "driver_info",
        "lib_name",
        "lib_version",
        "maint_notifications_pool_handler",
        "orig_host_address",
        "orig_socket_timeout",
        "orig_socket_connect_timeout",
        "himport_registry",
    }
)


def error_kind(exc: BaseException) -> str:
    """The kind ``exc`` is counted under (see ``ERROR_KINDS``)."""
    if isinstance(exc, (rexc.TimeoutError, socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, rexc.MaxConnectionsError):
        return "other"  # our own pool is full: Redis itself may be fine
    if isinstance(exc, (rexc.ConnectionError, OSError)):
        return "connection"
    if isinstance(exc, rexc.ResponseError):
        return "response"
    return "other"


def _tier_names(is_async: bool) -> tuple[str, str, str]:
    if is_async:
        return "AsyncTieredCache", "redis.asyncio.Redis", "TieredCache"
    return "TieredCache", "redis.Redis", "AsyncTieredCache"


def own_client(user: Any, deadline: float, is_async: bool) -> Any:
    """The tier's client: ``user``'s connection settings under the tier's policy.

    TypeError for a client of the other flavour (naming the tier class to use
    instead) or one the tier cannot copy (Cluster, Sentinel).
    """
    tier, wants, other = _tier_names(is_async)
    sync_cls, async_cls = redis.Redis, redis.asyncio.Redis
    if isinstance(user, async_cls if not is_async else sync_cls):
        got = "redis.asyncio.Redis" if not is_async else "redis.Redis"
        raise TypeError(f"{tier} needs a {wants} client, got a {got}: use {other} for it")
    if not isinstance(user, async_cls if is_async else sync_cls):
        raise TypeError(
            f"{tier} needs a {wants} client (host, port, db, TLS and credentials are "
            f"copied from it), got {type(user).__module__}.{type(user).__qualname__}"
        )
    pool = user.connection_pool
    pool_types = (
        (redis.asyncio.ConnectionPool, redis.asyncio.BlockingConnectionPool)
        if is_async
        else (redis.ConnectionPool, redis.BlockingConnectionPool)
    )
    if type(pool) not in pool_types:
        raise TypeError(
            f"{tier} copies the connection settings of a client over a plain "
            f"ConnectionPool; this one uses {type(pool).__qualname__} (Sentinel and "
            f"Cluster clients are not supported)"
        )
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _NOT_COPIED}
    if is_async:
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(NoBackoff(), 1, (rexc.ConnectionError,))
        pool_cls: Any = redis.asyncio.ConnectionPool
        client_cls: Any = redis.asyncio.Redis
    else:
        from redis.retry import Retry

        retry = Retry(NoBackoff(), 1, (rexc.ConnectionError,))
        pool_cls, client_cls = redis.ConnectionPool, redis.Redis
    own_pool = pool_cls(
        connection_class=pool.connection_class,
        max_connections=max(getattr(pool, "max_connections", 0) or 0, 1000),
        socket_timeout=deadline,
        socket_connect_timeout=deadline,
        retry=retry,
        retry_on_error=[],
        health_check_interval=0,
        decode_responses=False,
        driver_info=None,  # no CLIENT SETINFO: one round trip less per new connection
        **kwargs,
    )
    return client_cls(connection_pool=own_pool)


class Breaker:
    """A circuit breaker: ``closed`` (Redis is used), ``open`` (it is not), ``half_open``
    (the one background probe is in flight; requests still do not use Redis).

    Opens on the first connection error or timeout (``fail``); ``probe_due`` tells the
    background worker when to probe, ``end_probe`` closes or re-opens it.
    Thread-safe; ``closed`` is a plain attribute read (the request path's check).
    """

    def __init__(self, name: str, probe_interval: float) -> None:
        self.name = name
        self.probe_interval = probe_interval
        self.state = "closed"
        self.closed = True
        self.changed_at = time.monotonic()
        self.transitions = dict.fromkeys(BREAKER_STATES, 0)
        self.next_probe = 0.0
        self._lock = threading.Lock()

    def _to(self, state: str, now: float) -> None:
        # Counted: closed -> open (an outage begins), -> half_open (a probe), -> closed.
        # A failed probe (half_open -> open) is half_open's count minus closed's.
        if not (state == "open" and self.state == "half_open"):
            self.transitions[state] += 1
        self.state = state
        self.closed = state == "closed"
        self.changed_at = now

    def fail(self, exc: BaseException) -> bool:
        """A call failed with a connection error or timeout: open; True if it just opened."""
        now = time.monotonic()
        with self._lock:
            if self.state == "open":
                return False
            was = self.state
            self._to("open", now)
            self.next_probe = now + self.probe_interval
        if was == "closed":
            logger.warning(
                "redis tier %r: %s: %s; breaker open: serving from the local tier and the "
                "loader, probing Redis every %g s",
                self.name,
                type(exc).__name__,
                exc,
                self.probe_interval,
            )
        return was == "closed"

    def probe_due(self, now: float) -> bool:
        """Whether the background worker should probe now (then the breaker is half-open)."""
        if self.closed or now < self.next_probe:
            return False
        with self._lock:
            if self.state != "open" or now < self.next_probe:
                return False
            self._to("half_open", now)
            return True

    def end_probe(self, ok: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if self.state != "half_open":
                return
            if ok:
                self._to("closed", now)
            else:
                self._to("open", now)
                self.next_probe = now + self.probe_interval
        if ok:
            logger.info("redis tier %r: Redis answers again; breaker closed", self.name)

    def succeeded(self) -> None:
        """Redis answered another call (a subscription): close an open breaker."""
        if self.closed:
            return
        now = time.monotonic()
        with self._lock:
            if self.state == "closed":
                return
            self._to("closed", now)
        logger.info("redis tier %r: Redis answers again; breaker closed", self.name)

    def seconds_in_state(self, now: Optional[float] = None) -> float:
        return max(0.0, (time.monotonic() if now is None else now) - self.changed_at)
