"""The demo service: user health data from SQLite, cached through the manager.

Endpoints:

* ``GET /users/{user_id}``: the profile;
* ``GET /users/{user_id}/readings?days=7``: hourly readings of the last ``days``
  days of data (1..365);
* ``GET /users/{user_id}/summary``: a computed object, daily aggregates over
  every day of data (heart rate mean/min/max, steps);
* ``PUT /users/{user_id}/profile``: change name, email and/or birth year
  (written to SQLite, then the cached profile is replaced and the cached
  summary dropped, in every replica when the Redis tier is on);
* ``GET /health``; ``GET /memory/stats``; ``GET /metrics`` (Prometheus).

With a ``token``, ``/memory/*``, ``/metrics`` and the API docs (``/docs``,
``/redoc``, ``/openapi.json``) answer only requests that carry it, as
``Authorization: Bearer <token>`` or as the password of HTTP Basic (what a
browser asks for on ``/docs``); the service endpoints and ``/health`` stay open.

Three caches hold profiles, readings lists and summaries: bounded caches
created through a ``CacheManager`` (maxsize, ttl and max_bytes), or, with
``unbounded=True``, the plain dicts a service starts with (the "before" of
the load test). The repository and the service are singletons
(``SingletonMeta``): built once, at start, where a missing or locked database
is reported as one clear error.

With a Redis client (``create_app(..., redis_url=...)``), each bounded cache
becomes the local tier of a ``TieredCache`` (namespace ``{prefix}:{name}``):
reads go through ``get_or_set``, the profile write through ``set``/``delete``
so that other replicas drop their local copies; each tier's stats appear
under ``sources`` in ``/memory/stats``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import hmac
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Annotated, Any, Optional, TypeVar

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...fastapi import (
    LoopStallMonitor,
    MemoryCleanupService,
    MemoryGuard,
    MemoryMonitorMiddleware,
    RequestMemoryMonitor,
    cleanup_lifespan,
    memory_router,
)
from ...manager import CacheManager, cache_manager
from .service import (
    _PROFILE_COLUMNS,
    CACHE_SETTINGS,
    DEFAULT_POLICY,
    HealthService,
    UserRepository,
    reset_singletons,
)

__all__ = [
    "create_app",
    "UserRepository",
    "HealthService",
    "CACHE_SETTINGS",
    "DEFAULT_POLICY",
    "DEFAULT_MAX_BODY_BYTES",
    "NEVER_SHED",
    "ProfileUpdate",
    "reset_singletons",
    "connect_redis",
    "TokenGuard",
]

log = logging.getLogger("memcache_ext.demo")
_T = TypeVar("_T")

#: The demo's request body limit: a profile update is a few hundred bytes.
DEFAULT_MAX_BODY_BYTES = 2**20
#: Paths the memory guard never sheds: liveness and the figures an operator needs most
#: when memory is short.
NEVER_SHED = ("/health", "/memory/stats", "/metrics")

UserId = Annotated[int, Path(ge=1, le=10**9, description="User id")]
Days = Annotated[int, Query(ge=1, le=365, description="Last N days of data")]


class ProfileUpdate(BaseModel):
    """The body of ``PUT /users/{user_id}/profile``: at least one field; unknown ones refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Optional[str] = Field(None, strict=True, min_length=1, max_length=100)
    email: Optional[str] = Field(
        None, strict=True, min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    )
    birth_year: Optional[int] = Field(None, strict=True, ge=1900, le=2100)

    @model_validator(mode="after")
    def _something_to_change(self) -> ProfileUpdate:
        if all(getattr(self, f) is None for f in _PROFILE_COLUMNS):
            raise ValueError("give at least one of name, email, birth_year")
        return self

    def changes(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _PROFILE_COLUMNS if getattr(self, f) is not None}


def safe_url(url: str) -> str:
    """``url`` without its password (for logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TokenGuard:
    """Pure ASGI: requests to ``protected`` paths need the token, else 401.

    The token comes as ``Authorization: Bearer <token>`` or as the password of
    HTTP Basic (any user name), compared in constant time. A 401 asks for Basic,
    so a browser opening ``/docs`` prompts for it.
    """

    PROTECTED = ("/memory", "/metrics", "/docs", "/redoc", "/openapi.json")

    def __init__(self, app: Any, token: str, protected: tuple[str, ...] = PROTECTED) -> None:
        if not token:
            raise ValueError("the token must not be empty")
        self.app = app
        self._token = token.encode()
        self.protected = protected

    def _guarded(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.protected)

    def _allowed(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name.lower() != b"authorization":
                continue
            kind, _, cred = value.partition(b" ")
            if kind.lower() == b"bearer":
                return hmac.compare_digest(cred.strip(), self._token)
            if kind.lower() == b"basic":
                try:
                    decoded = base64.b64decode(cred.strip(), validate=True)
                except (binascii.Error, ValueError):
                    return False
                return hmac.compare_digest(decoded.partition(b":")[2], self._token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._guarded(scope["path"]) and not self._allowed(scope):
            body = b'{"detail":"this path needs the demo\'s token"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b'Basic realm="memcache-ext demo"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def connect_redis(url: str, timeout: float = 0.5, password: Optional[str] = None) -> Any:
    """A redis-py client for ``url`` (bytes responses, bounded timeouts, one retry);
    ``password`` (from the environment or a file) overrides the URL's.

    Never fails because Redis is down: a server that does not answer now is
    logged as a warning and the tier falls back to the local caches and the
    database until it answers. A malformed URL raises ValueError. The tiers
    take only the connection settings from it: each runs its own call policy.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ValueError(
            f"--redis needs redis-py: pip install 'memcache-ext[redis]' ({exc})"
        ) from exc
    extra = {} if password is None else {"password": password}
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
        **extra,
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        log.warning(
            "Redis at %s does not answer (%s: %s): serving from the local caches and "
            "the database until it does",
            safe_url(url),
            type(exc).__name__,
            exc,
        )
    return client


def threads_of_the_server() -> int:
    """The most threads the server runs sync endpoints on (AnyIO's default limiter)."""
    try:
        from anyio.to_thread import current_default_thread_limiter

        return max(1, int(current_default_thread_limiter().total_tokens))
    except Exception:  # noqa: BLE001 - not under AnyIO: Starlette's default
        return 40


def create_app(
    db_path: str,
    *,
    unbounded: bool = False,
    manager: Optional[CacheManager] = None,
    memory_limit_mb: float = 400,
    cleanup_interval: float = 30.0,
    metrics: bool = True,
    redis_url: Optional[str] = None,
    redis_client: Any = None,
    redis_prefix: str = "demo",
    redis_password: Optional[str] = None,
    max_stale: float = 1.0,
    token: Optional[str] = None,
    policy: str = DEFAULT_POLICY,
    max_body_bytes: Optional[int] = DEFAULT_MAX_BODY_BYTES,
    shed_at: float = 0.95,
    resume_at: float = 0.90,
) -> FastAPI:
    """The demo FastAPI app over the database at ``db_path`` (which must exist).

    Raises ``memcache_ext.demo.db.DatabaseError`` when the database is missing,
    is not a demo database, or is locked. ``manager``: the CacheManager for the
    caches (default ``cache_manager``); ``memory_limit_mb``: the middleware's
    high-memory threshold; ``metrics``: serve ``/metrics`` (needs
    prometheus-client). ``redis_url`` (or an existing ``redis_client``):
    put a Redis second tier behind the bounded caches (namespaces
    ``{redis_prefix}:{cache}``); Redis being down at start is a warning, not an
    error; ``redis_password`` overrides the URL's, ``max_stale`` bounds how long
    local entries are served once invalidations cannot arrive. The app closes
    the tiers (and a client it created) on shutdown. ``token``: protect
    ``/memory/*``, ``/metrics`` and the docs with it (see :class:`TokenGuard`).
    ``policy``: the caches' eviction policy. ``max_body_bytes`` (None: no
    limit), ``shed_at`` and ``resume_at``: the memory guard's body limit and
    load-shedding marks (fractions of the manager's limit). The database pool
    is sized to the server's thread count at start-up; everything the guard,
    the event loop and the cleanups do is in ``/memory/stats``, the database
    pool's figures in ``/health``.
    """
    manager = manager if manager is not None else cache_manager
    own_client = None
    if redis_url is not None:
        if redis_client is not None:
            raise ValueError("pass redis_url or redis_client, not both")
        if unbounded:
            raise ValueError("the Redis tier needs the bounded caches (drop --unbounded)")
        redis_client = own_client = connect_redis(redis_url, password=redis_password)
    try:
        # Without a tier, the singleton's arguments are the same as they always were.
        # Without a tier and with the default policy, the singleton's arguments are
        # the same as they always were (it compares the arguments it was called with).
        tier_args = () if redis_client is None else (redis_client, redis_prefix, max_stale)
        extra: dict[str, Any] = {} if policy == DEFAULT_POLICY else {"policy": policy}
        service = HealthService(db_path, unbounded, manager, *tier_args, **extra)
    except BaseException:
        if own_client is not None:
            own_client.close()
        raise
    cleanup = MemoryCleanupService(manager, interval=cleanup_interval)
    monitor = RequestMemoryMonitor(memory_limit_mb)
    loop_monitor = LoopStallMonitor(callbacks=True)
    guard = MemoryGuard(
        manager=manager,
        critical=shed_at,
        resume=resume_at,
        max_body_bytes=max_body_bytes,
        exempt=NEVER_SHED,
        on_shed=lambda: cleanup.wake("shed"),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One database connection per server thread at most (sync endpoints run
        # in the thread pool), so nothing per-thread can pile up.
        service.repo.db.resize(threads_of_the_server())
        log.info(
            "demo service up: %s users, %s days of data, %s caches (%s), database pool of %d",
            service.repo.db.meta.get("users"),
            service.repo.db.meta.get("days"),
            "unbounded dict" if unbounded else "bounded",
            service.policy,
            service.repo.db.pool_size,
        )
        if service.tiers:
            log.info(
                "Redis tier on: %s", ", ".join(service.tiers[n].namespace for n in service.tiers)
            )
        # Everything built so far (FastAPI, pydantic, the modules) lives as long as
        # the process: out of the collector's sight, so that a full collection
        # (an automatic one on the event loop, or a cleanup's) walks only what was
        # made since (the soak's "longest GC on the loop" is the figure to watch).
        gc.collect()
        gc.freeze()
        await loop_monitor.start()
        try:
            yield
        finally:
            await loop_monitor.stop()
            service.close_tiers()
            if own_client is not None:
                with contextlib.suppress(Exception):
                    own_client.close()
            service.repo.close()

    app = FastAPI(
        title="memcache-ext demo: user health data",
        description="Profiles, readings and daily summaries from SQLite, cached.",
        lifespan=cleanup_lifespan(cleanup, lifespan),
    )
    app.state.service = service
    app.state.manager = manager
    app.state.cleanup = cleanup
    app.state.monitor = monitor
    app.state.guard = guard
    app.state.loop_monitor = loop_monitor
    app.add_middleware(MemoryMonitorMiddleware, manager=manager, monitor=monitor)
    if token is not None:
        app.add_middleware(TokenGuard, token=token)
    app.state.protected = token is not None
    app.add_middleware(guard.wrap)  # outermost: a shed or refused request costs nothing else
    app.include_router(
        memory_router(
            manager,
            monitor=monitor,
            cleanup_service=cleanup,
            guard=guard,
            loop_monitor=loop_monitor,
        )
    )

    if metrics:
        from prometheus_client import CollectorRegistry, ProcessCollector

        from ...prometheus import MemcacheCollector, metrics_router

        registry = CollectorRegistry()
        registry.register(
            MemcacheCollector(
                manager,
                monitor=monitor,
                tiers=service.tiers.values(),
                guard=guard,
                loop_monitor=loop_monitor,
            )
        )
        ProcessCollector(registry=registry)
        app.state.registry = registry
        app.include_router(metrics_router(registry))

    @app.exception_handler(sqlite3.Error)
    async def database_error(request: Request, exc: sqlite3.Error) -> JSONResponse:
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    def _missing(user_id: int) -> HTTPException:
        return HTTPException(status_code=404, detail=f"user {user_id} not found")

    @app.get("/users/{user_id}", summary="A user's profile")
    def get_user(user_id: UserId) -> dict[str, Any]:
        profile = service.profile(user_id)
        if profile is None:
            raise _missing(user_id)
        return profile

    # The two large answers (up to 8,760 readings; a summary's daily list) are
    # rendered to JSON here, in the server's worker thread that runs the endpoint:
    # returned as a dict, FastAPI would encode them on the event loop, one 5-13 ms
    # hold of the loop per answer in the soak test (docs/performance.md).
    @app.get(
        "/users/{user_id}/readings",
        summary="A user's hourly readings",
        response_model=None,
        responses={200: {"description": "`{user_id, days, count, readings: [...]}`"}},
    )
    def get_readings(user_id: UserId, days: Days = 7) -> JSONResponse:
        readings = service.readings(user_id, days)
        if readings is None:
            raise _missing(user_id)
        return JSONResponse(
            {"user_id": user_id, "days": days, "count": len(readings), "readings": readings}
        )

    @app.get(
        "/users/{user_id}/summary",
        summary="Daily aggregates of a user's readings",
        response_model=None,
        responses={200: {"description": "`{user_id, version, name, days, daily: [...], ...}`"}},
    )
    def get_summary(user_id: UserId) -> JSONResponse:
        summary = service.summary(user_id)
        if summary is None:
            raise _missing(user_id)
        return JSONResponse(summary)

    @app.put("/users/{user_id}/profile", summary="Change a user's name, email or birth year")
    def put_profile(user_id: UserId, update: ProfileUpdate) -> dict[str, Any]:
        profile = service.update_profile(user_id, update.changes())
        if profile is None:
            raise _missing(user_id)
        return profile

    @app.get("/health", summary="Liveness and cache sizes")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "cache_mode": "unbounded" if unbounded else "bounded",
            "users": int(service.repo.db.meta["users"]),
            "days": int(service.repo.db.meta["days"]),
            "caches": service.cache_sizes(),
            "policy": None if unbounded else service.policy,
            "database": service.repo.db.stats(),
            "redis": service.tier_state(),
            "rss_mb": round(manager.memory_usage_mb(), 1),
        }

    return app
