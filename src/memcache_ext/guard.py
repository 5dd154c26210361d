"""The memory guard: load shedding, a request body limit, and MemoryError as a 503 (pure ASGI).

    app.add_middleware(MemoryGuard, manager=cache_manager, max_body_bytes=2**20)  # FastAPI
    app = MemoryGuard(app, limit_mb=512, max_body_bytes=2**20)                    # any ASGI app

    guard = MemoryGuard(manager=cache_manager, max_body_bytes=2**20)  # built first, to share:
    app.add_middleware(guard.wrap)                 # FastAPI builds it around the app later
    app.include_router(memory_router(cache_manager, guard=guard))

No FastAPI or Starlette import. For every HTTP request, in this order:

1. **Body limit** (``max_body_bytes``, None for none): a ``Content-Length``
   above it is answered ``413`` before anything is read; otherwise the body
   is counted as it streams through ``receive`` (chunked bodies too) and the
   first message that passes the limit ends the request with ``413``: the app
   gets ``RequestBodyTooLargeError`` from ``receive()``, whatever it answers is
   dropped, and nothing more of the body is read (the server closes the
   connection rather than read the rest).
2. **Load shedding**: while RSS is at or above ``critical`` of the limit
   (default 0.95), new requests are answered ``503`` with ``Retry-After``
   without reaching the app; requests already in flight finish. Requests are
   let in again once RSS is below ``resume`` of the limit (default 0.90). When
   shedding starts, ``on_shed()`` is called (the demo asks its cleanup
   service for a cleanup now). Paths in ``exempt`` (health checks, say) are
   never shed.
3. **MemoryError**: a request whose handling raises MemoryError is answered
   ``503`` with ``Retry-After`` when no response had started (the error is
   logged, not re-raised: the server goes on serving). A ``500`` the app
   sends is held back until the app returns, so that a framework that turns
   the MemoryError into a 500 and re-raises it (Starlette's
   ServerErrorMiddleware) still yields the 503.

RSS comes from an ``RssProbe`` shared with ``MemoryMonitorMiddleware``: the
guard takes the recent reading (at most 2 ms old) rather than a new one, so
the two middlewares together cost about one RSS read per request under
load. Everything is counted in ``stats()`` (``GuardStats``), reported by
``/memory/stats`` and the Prometheus collector when passed to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Annotated, Any, Optional, TypedDict

from . import _procmem
from ._constants import MIB
from ._validate import check_mb

__all__ = ["MemoryGuard", "GuardStats", "RequestBodyTooLargeError", "SCOPE_KEY"]

#: The scope key under which the guard publishes itself (the stats endpoint finds it there).
SCOPE_KEY = "memcache_ext.guard"

log = logging.getLogger("memcache_ext.guard")

Scope = Any
Message = Any
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: A 500 the app sends is held until the app returns, up to this many body bytes.
_HELD_BODY_LIMIT = 64 * 1024


class RequestBodyTooLargeError(Exception):
    """Raised by the guard's ``receive()`` when the request body passes ``max_body_bytes``."""


class GuardStats(TypedDict):
    """What the MemoryGuard did (``MemoryGuard.stats()``)."""

    limit_bytes: Annotated[int, "The memory limit the marks are fractions of"]
    critical_bytes: Annotated[int, "RSS at or above which new requests are shed"]
    resume_bytes: Annotated[int, "RSS below which requests are let in again"]
    shedding: Annotated[bool, "Whether new requests are being shed now"]
    shed_total: Annotated[int, "Requests answered 503 because RSS was above the critical mark"]
    shed_episodes: Annotated[int, "Times shedding started"]
    shedding_seconds: Annotated[float, "Time spent shedding, in all"]
    max_body_bytes: Annotated[Optional[int], "Request body limit (null: none)"]
    body_rejected_total: Annotated[int, "Requests answered 413 (body over the limit)"]
    body_rejected_early: Annotated[int, "Of those, refused on Content-Length, before reading"]
    memory_errors_total: Annotated[int, "Requests that raised MemoryError (answered 503)"]
    requests: Annotated[int, "HTTP requests seen"]
    in_flight: Annotated[int, "Requests being handled now"]
    max_in_flight: int
    rss_bytes: Annotated[int, "The last RSS reading the guard saw"]


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is a ``kind``, or an exception group (nested or not) of ``kind`` only."""
    inner = getattr(exc, "exceptions", None)
    if type(exc).__name__.endswith("ExceptionGroup") and isinstance(inner, tuple) and inner:
        return all(_only(e, kind) for e in inner)
    return isinstance(exc, kind)


def _json_response(status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    body = b'{"detail":"' + detail.replace('"', "'").encode() + b'"}'
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        },
        {"type": "http.response.body", "body": body, "more_body": False},
    ]


class MemoryGuard:
    """Pure ASGI middleware: load shedding, a request body limit, MemoryError as 503.

    ``limit_mb``: the memory limit the marks are fractions of (default: the
    manager's limit, ``manager.limit``; the manager defaults to
    ``cache_manager``). ``critical``/``resume``: fractions of the limit where
    shedding starts and stops. ``retry_after``: seconds, the ``Retry-After``
    of a 503. ``max_body_bytes``: request body limit (None: none).
    ``exempt``: paths never shed. ``on_shed``: called when shedding starts.
    ``probe``: the RssProbe (default: the manager's, shared with
    MemoryMonitorMiddleware). See the module doc for the exact behaviour.
    ``app`` may be left out and bound later with ``wrap(app)`` (which
    ``app.add_middleware(guard.wrap)`` does), so the guard can be built
    first and handed to ``memory_router`` and the Prometheus collector.
    """

    def __init__(
        self,
        app: Optional[ASGIApp] = None,
        *,
        manager: Any = None,
        limit_mb: Optional[float] = None,
        critical: float = 0.95,
        resume: float = 0.90,
        retry_after: int = 5,
        max_body_bytes: Optional[int] = None,
        exempt: Collection[str] = (),
        on_shed: Optional[Callable[[], None]] = None,
        probe: Optional[_procmem.RssProbe] = None,
        logger: Optional[logging.Logger] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("critical", critical), ("resume", resume)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number")
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if resume > critical:
            raise ValueError(f"resume ({resume}) must be <= critical ({critical})")
        if max_body_bytes is not None and (
            isinstance(max_body_bytes, bool)
            or not isinstance(max_body_bytes, int)
            or max_body_bytes < 0
        ):
            raise ValueError(f"max_body_bytes must be an int >= 0 or None, got {max_body_bytes!r}")
        if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
            raise ValueError(f"retry_after must be an int >= 0, got {retry_after!r}")
        check_mb("limit_mb", limit_mb)  # None, or finite, 1 byte or more, and <= sys.maxsize
        if on_shed is not None and not callable(on_shed):
            raise TypeError("on_shed must be callable")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        if probe is not None and not callable(getattr(probe, "recent", None)):
            raise TypeError(f"probe must be an RssProbe, not {type(probe).__name__}")
        if manager is not None or limit_mb is None or probe is None:
            from .manager import manager_or_default

            manager = manager_or_default(manager)
        self.app = app
        self.manager = manager
        self.limit_bytes = int(limit_mb * MIB) if limit_mb is not None else manager.limit.nbytes
        self.critical = float(critical)
        self.resume = float(resume)
        self.critical_bytes = int(self.critical * self.limit_bytes)
        self.resume_bytes = int(self.resume * self.limit_bytes)
        self.retry_after = retry_after
        self.max_body_bytes = max_body_bytes
        if isinstance(exempt, (str, bytes)):
            raise TypeError(
                f"exempt must be a collection of paths, not a single {type(exempt).__name__}"
            )
        self.exempt = frozenset(exempt)
        self.on_shed = on_shed
        self.probe = probe if probe is not None else manager.probe
        self.logger = logger or log
        self._clock = clock
        self._shed_headers = [(b"retry-after", str(retry_after).encode())]
        self._shedding = False
        self._shed_since = 0.0
        self._shed_seconds = 0.0
        self.shed_total = 0
        self.shed_episodes = 0
        self.body_rejected_total = 0
        self.body_rejected_early = 0
        self.memory_errors_total = 0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def wrap(self, app: ASGIApp) -> MemoryGuard:
        """Bind the app this guard protects and return the guard (a middleware factory)."""
        self.app = app
        return self

    # -- state --------------------------------------------------------------------------

    @property
    def shedding(self) -> bool:
        return self._shedding

    def check(self, rss: Optional[int] = None) -> bool:
        """Update the shedding state from ``rss`` (default: the probe's recent reading).

        Returns whether new requests are shed now.
        """
        if self.critical_bytes <= 0:
            return False  # no known limit (physical memory unreadable): nothing to shed for
        if rss is None:
            rss = self.probe.recent()
        if self._shedding:
            if rss < self.resume_bytes:
                self._shedding = False
                self._shed_seconds += self._clock() - self._shed_since
                self.logger.warning(
                    "memory guard: RSS %.1f MB below %.0f%% of the %.0f MB limit: "
                    "letting requests in again",
                    rss / MIB,
                    self.resume * 100,
                    self.limit_bytes / MIB,
                )
        elif rss >= self.critical_bytes:
            self._shedding = True
            self._shed_since = self._clock()
            self.shed_episodes += 1
            self.logger.warning(
                "memory guard: RSS %.1f MB at or above %.0f%% of the %.0f MB limit: "
                "answering new requests 503 until it falls below %.0f%% (%d in flight)",
                rss / MIB,
                self.critical * 100,
                self.limit_bytes / MIB,
                self.resume * 100,
                self.in_flight,
            )
            if self.on_shed is not None:
                try:
                    self.on_shed()
                except Exception:
                    self.logger.exception("memory guard: on_shed failed")
        return self._shedding

    def stats(self) -> GuardStats:
        shedding_seconds = self._shed_seconds
        if self._shedding:
            shedding_seconds += self._clock() - self._shed_since
        return {
            "limit_bytes": self.limit_bytes,
            "critical_bytes": self.critical_bytes,
            "resume_bytes": self.resume_bytes,
            "shedding": self._shedding,
            "shed_total": self.shed_total,
            "shed_episodes": self.shed_episodes,
            "shedding_seconds": shedding_seconds,
            "max_body_bytes": self.max_body_bytes,
            "body_rejected_total": self.body_rejected_total,
            "body_rejected_early": self.body_rejected_early,
            "memory_errors_total": self.memory_errors_total,
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rss_bytes": self.probe.last,
        }

    # -- ASGI ---------------------------------------------------------------------------

    async def _answer(self, send: Send, status: int, detail: str, close: bool = False) -> None:
        headers = list(self._shed_headers) if status == 503 else []
        if close:
            headers.append((b"connection", b"close"))
        for message in _json_response(status, detail, headers):
            await send(message)

    def _too_long(self, scope: Scope) -> bool:
        limit = self.max_body_bytes
        if limit is None:
            return False
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    return int(value) > limit
                except ValueError:
                    return False  # the server refuses a malformed length itself
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        if app is None:
            raise RuntimeError("MemoryGuard has no app: build it with one, or bind one with wrap()")
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        scope[SCOPE_KEY] = self
        self.requests += 1
        limit = self.max_body_bytes
        if limit is not None and self._too_long(scope):
            self.body_rejected_total += 1
            self.body_rejected_early += 1
            await self._answer(send, 413, f"request body larger than {limit} bytes", close=True)
            return
        if self.check() and scope.get("path") not in self.exempt:
            self.shed_total += 1
            await self._answer(send, 503, "the server is low on memory; retry later")
            return
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._serve(scope, receive, send, limit)
        finally:
            self.in_flight -= 1

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, limit: Optional[int]
    ) -> None:
        received = 0
        too_large = False
        started = False  # a response start went to the client
        held: list[Any] = []  # a 500 held back (see the module doc)
        held_bytes = 0

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                raise RequestBodyTooLargeError(f"request body larger than {limit} bytes")
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    too_large = True
                    raise RequestBodyTooLargeError(f"request body larger than {limit} bytes")
            return message

        async def flush() -> None:
            nonlocal started
            messages = held[:]
            held.clear()
            for message in messages:
                if message["type"] == "http.response.start":
                    started = True
                await send(message)

        async def guarded_send(message: Message) -> None:
            nonlocal started, held_bytes
            if too_large and not started:
                return  # the 413 replaces whatever the app answers
            if held:
                held.append(message)
                held_bytes += len(message.get("body", b""))
                if held_bytes > _HELD_BODY_LIMIT:
                    await flush()  # a large 500 is the app's own answer: let it through
                return
            if message["type"] == "http.response.start":
                if message.get("status") == 500:
                    held.append(message)
                    return
                started = True
            await send(message)

        try:
            app = self.app
            assert app is not None  # checked in __call__
            await app(scope, counting_receive if limit is not None else receive, guarded_send)
        except BaseException as exc:
            # a middleware's task group (BaseHTTPMiddleware, asyncio.TaskGroup)
            # wraps the error in an exception group: look inside
            if too_large and _only(exc, RequestBodyTooLargeError):
                pass  # answered 413 below
            elif _only(exc, MemoryError):
                held.clear()
                self.memory_errors_total += 1
                self.logger.error(
                    "memory guard: MemoryError while handling %s %s: %s",
                    scope.get("method", ""),
                    scope.get("path", ""),
                    "re-raised, the response had started" if started else "answered 503",
                )
                if not started:
                    await self._answer(send, 503, "the server ran out of memory; retry later")
                    return
                raise
            else:
                if held and not too_large:
                    await flush()
                raise
        if too_large:
            self.body_rejected_total += 1
            if not started:
                await self._answer(send, 413, f"request body larger than {limit} bytes", close=True)
            return
        if held:
            await flush()
