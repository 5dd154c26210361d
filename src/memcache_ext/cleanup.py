"""The background cleanup service and its lifespan helper (asyncio only, no web framework).

service = MemoryCleanupService(cache_manager, interval=30)
async with service: ...                                   # any asyncio program
app = FastAPI(lifespan=cleanup_lifespan(service))         # or an ASGI lifespan
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any, Optional, TypedDict

from .manager import CacheManager, manager_or_default

__all__ = ["MemoryCleanupService", "CleanupServiceStats", "cleanup_lifespan"]

log = logging.getLogger("memcache_ext.cleanup")


class CleanupServiceStats(TypedDict):
    """``MemoryCleanupService.stats()``."""

    running: bool
    interval: float
    threshold_mb: Optional[float]
    runs: int
    expired: int
    cleanups: int
    errors: int
    last_error: Optional[str]
    last_run: Annotated[Optional[float], "Wall-clock time of the last run"]


class MemoryCleanupService:
    """Every ``interval`` seconds: ``expire()`` every cache, then clean up.

    With ``threshold_mb=None`` the cleanup is ``manager.cleanup_if_needed()``
    (the manager's high-water mark, hysteresis and ``min_interval``); with a
    threshold, ``manager.cleanup("threshold")`` runs whenever RSS is above it.
    The work runs on the event loop (it is short: expiring is a walk of the
    expired entries; a cleanup includes one ``gc.collect()``).

    ``await start()`` / ``await stop()`` (both idempotent), ``async with
    service:``, or ``FastAPI(lifespan=cleanup_lifespan(service))``. ``stop()``
    wakes the loop through an ``asyncio.Event`` and waits for it: nothing runs
    after it returns. A run that raises is logged and the loop goes on.
    """

    def __init__(
        self,
        manager: Optional[CacheManager] = None,
        interval: float = 30.0,
        threshold_mb: Optional[float] = None,
        *,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError("interval must be a number")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be > 0 and finite, got {interval!r}")
        if threshold_mb is not None and not threshold_mb > 0:
            raise ValueError(f"threshold_mb must be > 0 or None, got {threshold_mb!r}")
        self.manager = manager_or_default(manager)
        self.interval = float(interval)
        self.threshold_mb = threshold_mb
        self.logger = logger or log
        self._task: Optional[asyncio.Task[None]] = None
        self._stop: Optional[asyncio.Event] = None
        self.runs = 0
        self.expired = 0
        self.cleanups = 0
        self.errors = 0
        self.last_error: Optional[str] = None
        self.last_run: Optional[float] = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def run_once(self) -> dict[str, Any]:
        """One pass now (synchronous): expire every cache, then clean up if needed.

        Errors of one cache are logged and counted; the others still run.
        """
        expired = 0
        errors: list[str] = []
        for name, cache in self.manager.caches().items():
            try:
                expired += cache.expire()
            except Exception as exc:
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                self.logger.exception("memory cleanup: expire() of cache %r failed", name)
        event = None
        try:
            if self.threshold_mb is None:
                event = self.manager.cleanup_if_needed()
            elif self.manager.memory_usage_mb() > self.threshold_mb:
                event = self.manager.cleanup("threshold")
        except Exception as exc:
            errors.append(f"cleanup: {type(exc).__name__}: {exc}")
            self.logger.exception("memory cleanup failed")
        self.runs += 1
        self.expired += expired
        self.last_run = time.time()
        if event is not None:
            self.cleanups += 1
        if errors:
            self.errors += len(errors)
            self.last_error = errors[-1]
        return {"expired": expired, "cleanup": event, "errors": errors}

    async def _loop(self, stop: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            if stop.is_set():
                return
            try:
                self.run_once()
            except Exception:
                self.errors += 1
                self.logger.exception("memory cleanup pass failed")

    async def start(self) -> None:
        """Start the background task (no-op when it is running)."""
        if self.running:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._loop(self._stop), name="memcache_ext-cleanup"
        )

    async def stop(self) -> None:
        """Stop the task and wait for it (no-op when it is not running)."""
        task, stop = self._task, self._stop
        self._task = self._stop = None
        if task is None:
            return
        if stop is not None:
            stop.set()
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=max(5.0, self.interval))
            if not done:  # pragma: no cover - run_once hung past the timeout
                task.cancel()
                await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover
            self.logger.error("memory cleanup task ended with %r", task.exception())

    async def __aenter__(self) -> MemoryCleanupService:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def stats(self) -> CleanupServiceStats:
        return {
            "running": self.running,
            "interval": self.interval,
            "threshold_mb": self.threshold_mb,
            "runs": self.runs,
            "expired": self.expired,
            "cleanups": self.cleanups,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_run": self.last_run,
        }


def cleanup_lifespan(
    service: MemoryCleanupService, lifespan: Optional[Callable[[Any], Any]] = None
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    """A FastAPI ``lifespan`` that runs ``service`` inside the app's own ``lifespan``.

    ``FastAPI(lifespan=cleanup_lifespan(service, my_lifespan))``: ``my_lifespan``
    starts first (so caches it creates exist) and its state is passed on; the
    service starts, and on shutdown stops before ``my_lifespan`` tears down.
    """

    @contextlib.asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[Optional[Mapping[str, Any]]]:
        if lifespan is None:
            async with service:
                yield None
            return
        async with lifespan(app) as state:
            async with service:
                yield state

    return _lifespan
