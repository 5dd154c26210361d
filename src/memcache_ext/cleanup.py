"""The background cleanup service, its lifespan helper, and an event-loop stall monitor.

service = MemoryCleanupService(cache_manager, interval=30)
async with service: ...                                   # any asyncio program
app = FastAPI(lifespan=cleanup_lifespan(service))         # or an ASGI lifespan

asyncio only, no web framework. The service runs on the event loop in short
steps (one cache's ``expire()``, a trim slice of about 2 ms, the collection,
``malloc_trim``) and lets the loop run between two of them, so a cleanup
never holds the loop for long (``stats()["longest_step"]`` says how long it
did). ``LoopStallMonitor`` measures how late the loop runs a timer, i.e. the
longest time nothing else could run, whatever held it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any, Optional, TypedDict, Union

from ._cleanup_pass import expire_slices
from ._validate import check_bool, check_collect, check_mb
from .manager import CacheManager, CleanupEvent, manager_or_default

__all__ = [
    "MemoryCleanupService",
    "CleanupServiceStats",
    "cleanup_lifespan",
    "LoopStallMonitor",
    "LoopStallStats",
]

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
    wakeups: Annotated[
        int, "Passes run early because wake() was called (the guard started shedding)"
    ]
    longest_step: Annotated[
        float, "Seconds of CPU: the longest the service held the event loop at once"
    ]
    longest_step_wall: Annotated[float, "Seconds, wall clock: the same step, waits included"]


class MemoryCleanupService:
    """Every ``interval`` seconds: ``expire()`` every cache, then clean up.

    With ``threshold_mb=None`` the cleanup is ``manager.cleanup_if_needed()``
    (the manager's high-water mark, hysteresis and ``min_interval``); with a
    threshold, ``manager.cleanup("threshold")`` runs whenever RSS is above it.
    ``wake(reason)`` runs a forced ``cleanup(reason)`` now (the memory guard
    calls it when it starts shedding). The work runs on the event loop in
    bounded steps (``CacheManager.cleanup_steps``) with the loop free to run
    other callbacks between two of them. ``collect``: what a cleanup collects:
    the young generations by default (1), bounded in time; ``True`` for a
    full ``gc.collect()``, whose duration grows with every object the process
    tracks (30 ms for 80,000 cached lists here: a step that holds the loop
    that long), and which the interpreter runs on its own schedule anyway;
    ``False`` for none.

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
        collect: Union[bool, int] = 1,
        logger: Optional[logging.Logger] = None,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError("interval must be a number")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be > 0 and finite, got {interval!r}")
        check_mb("threshold_mb", threshold_mb)
        self.manager = manager_or_default(manager)
        self.interval = float(interval)
        self.threshold_mb = threshold_mb
        self.collect = check_collect(collect)
        self.logger = logger or log
        self._wake: Optional[str] = None
        self._stopping = False
        self.wakeups = 0
        self.longest_step = 0.0
        self.longest_step_wall = 0.0
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
        return self._account(expired, event, errors)

    def _account(
        self, expired: int, event: Optional[CleanupEvent], errors: list[str]
    ) -> dict[str, Any]:
        self.runs += 1
        self.expired += expired
        self.last_run = time.time()
        if event is not None:
            self.cleanups += 1
        if errors:
            self.errors += len(errors)
            self.last_error = errors[-1]
        return {"expired": expired, "cleanup": event, "errors": errors}

    def wake(self, reason: str = "wake") -> None:
        """Run a forced cleanup (``manager.cleanup(reason)``) at the next turn of the loop.

        Call it from the event loop's thread (the memory guard does). A no-op
        when the service is not running.
        """
        stop = self._stop
        if stop is None or not self.running:
            return
        self._wake = reason
        stop.set()  # ends the wait; _loop tells a wake from a stop by _wake

    async def _loop(self, stop: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            reason, self._wake = self._wake, None
            if stop.is_set():
                if self._stopping or reason is None:
                    return
                stop.clear()
                self.wakeups += 1
            try:
                await self.run_once_async(reason)
            except Exception as exc:
                self.errors += 1
                self.last_error = f"pass: {type(exc).__name__}: {exc}"
                self.logger.exception("memory cleanup pass failed")

    @staticmethod
    def _step_start() -> tuple[float, float]:
        return time.perf_counter(), time.thread_time()

    def _step_end(self, start: tuple[float, float]) -> None:
        """Record a step's CPU time (how long it held the loop) and its wall time."""
        wall, cpu = time.perf_counter() - start[0], time.thread_time() - start[1]
        self.longest_step = max(self.longest_step, cpu)
        self.longest_step_wall = max(self.longest_step_wall, wall)

    async def run_once_async(self, reason: Optional[str] = None) -> dict[str, Any]:
        """``run_once()`` in bounded steps, letting the event loop run between them.

        ``reason``: a forced cleanup with that reason instead of the usual
        condition (``wake()`` passes its reason here).
        """
        expired = 0
        errors: list[str] = []
        for name, cache in self.manager.caches().items():
            slices = expire_slices(cache)
            while True:
                t0 = self._step_start()
                try:
                    expired += next(slices)
                except StopIteration:
                    break
                except Exception as exc:
                    errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    self.logger.exception("memory cleanup: expire() of cache %r failed", name)
                    break
                finally:
                    self._step_end(t0)
                await asyncio.sleep(0)
        event = None
        if reason is None and self.threshold_mb is not None:
            # With a threshold, only the threshold decides (as in run_once).
            if self.manager.memory_usage_mb() <= self.threshold_mb:
                return self._account(expired, None, errors)
            reason = "threshold"
        steps = None
        try:
            steps = self.manager.cleanup_steps(reason, collect=self.collect)
            while True:
                t0 = self._step_start()
                try:
                    next(steps)
                except StopIteration as done:
                    event = done.value
                    break
                finally:
                    self._step_end(t0)
                await asyncio.sleep(0)
        except Exception as exc:
            errors.append(f"cleanup: {type(exc).__name__}: {exc}")
            self.logger.exception("memory cleanup failed")
        finally:
            if steps is not None:
                steps.close()  # a cancelled pass releases the manager's cleanup lock
        return self._account(expired, event, errors)

    async def start(self) -> None:
        """Start the background task (no-op when it is running)."""
        if self.running:
            return
        self._stopping = False
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
        self._stopping = True
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
            "wakeups": self.wakeups,
            "longest_step": self.longest_step,
            "longest_step_wall": self.longest_step_wall,
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


# -- event-loop stalls ---------------------------------------------------------------


class LoopStall(TypedDict):
    """One time the loop ran a timer late by at least ``record_over`` seconds."""

    time: Annotated[float, "Wall-clock time the stall ended (Unix time)"]
    seconds: Annotated[float, "How late the timer ran"]


class LoopCallback(TypedDict):
    """One of the longest callbacks the loop ran (with ``callbacks=True``)."""

    time: Annotated[float, "Wall-clock time it ended (Unix time)"]
    seconds: Annotated[float, "CPU time the loop's thread spent in it: how long it held the loop"]
    wall: Annotated[float, "Wall-clock time it took (waits for the GIL and the CPU included)"]
    gc: Annotated[float, "Of its wall-clock time, seconds in garbage collections it triggered"]
    what: Annotated[str, "The callback, shortened"]


class LoopStallStats(TypedDict):
    """``LoopStallMonitor.stats()``."""

    running: bool
    interval: Annotated[float, "Seconds between two timer checks"]
    samples: int
    longest_callback: Annotated[
        Optional[float],
        "Seconds of CPU: the longest one callback held the loop (null: not measured)",
    ]
    longest_callback_wall: Annotated[
        Optional[float], "Seconds, wall clock: the longest a callback took, waits included"
    ]
    callbacks: Annotated[int, "Callbacks timed (0 unless measured)"]
    callbacks_over_10ms: Annotated[int, "Callbacks that held the loop 10 ms of CPU or more"]
    longest_callback_without_gc: Annotated[
        Optional[float],
        "Seconds of CPU: the longest hold once the collections it triggered are taken out",
    ]
    longest_gc_on_loop: Annotated[
        Optional[float], "Seconds: the longest garbage collection run on the loop's thread"
    ]
    noise: Annotated[
        Optional[float],
        "Seconds of CPU charged to the monitor's own step (microseconds of work): the "
        "measurement's noise floor on this machine",
    ]
    longest_callbacks: Annotated[
        list[LoopCallback], "The ten longest callbacks without their collections, longest first"
    ]
    longest_stall: Annotated[float, "Seconds: the latest a timer ran since start"]
    mean_lateness: Annotated[float, "Seconds: the mean lateness of the checks"]
    over_10ms: Annotated[int, "Checks that ran 10 ms late or more"]
    over_50ms: int
    stalls: Annotated[list[LoopStall], "The most recent stalls over record_over, oldest first"]


def _frame_of(handle: asyncio.Handle) -> Any:
    """The frame of the coroutine a task step runs (kept: it outlives the coroutine)."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    if isinstance(task, asyncio.Task):
        return getattr(task.get_coro(), "cr_frame", None)
    return None


def _describe(handle: asyncio.Handle, frame: Any = None) -> str:
    """What a handle runs: the task's coroutine for a task step, else the handle."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None)
        if code is not None:
            where = f"{code.co_filename}:{code.co_firstlineno}"
            # An ASGI server's request task: name the request too.
            if frame is None:
                frame = getattr(coro, "cr_frame", None)
            owner = frame.f_locals.get("self") if frame is not None else None
            scope = getattr(owner, "scope", None)
            if isinstance(scope, dict) and "path" in scope:
                where = f"{scope.get('method', '')} {scope['path']}; {where}"
            name = getattr(code, "co_qualname", code.co_name)  # 3.10 has no co_qualname
            return f"task {task.get_name()}: {name} ({where})"
        return f"task {task.get_name()}: {coro!r}"
    return repr(handle)


class LoopStallMonitor:
    """How long the event loop goes without running its callbacks, measured from inside.

    Two figures. The timer lateness: a task sleeps ``interval`` seconds again
    and again and records how late it wakes, i.e. the time the loop spent on
    something else before it could run a ready timer (a long callback, a
    blocking call, the GIL held by another thread, many callbacks queued at
    once, the process waiting for a CPU). Stalls of ``record_over`` seconds
    or more are kept (the newest ``history``) with their time. Costs one
    timer every ``interval`` (about 200 wake-ups a second by default). With
    ``callbacks=True`` (stdlib event loop only), every callback is timed too:
    the CPU time each one held the loop's thread (what "holds the event loop"
    means: work done without yielding), its wall-clock time, and the ten
    longest with what they were.
    """

    def __init__(
        self,
        interval: float = 0.005,
        *,
        record_over: float = 0.005,
        history: int = 256,
        callbacks: bool = False,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError(f"interval must be a number, not {type(interval).__name__}")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be > 0 and finite, got {interval!r}")
        if isinstance(record_over, bool) or not isinstance(record_over, (int, float)):
            raise TypeError(f"record_over must be a number, not {type(record_over).__name__}")
        if not 0 <= record_over < math.inf:
            raise ValueError(f"record_over must be >= 0 and finite, got {record_over!r}")
        self.interval = float(interval)
        self.time_callbacks = check_bool("callbacks", callbacks)
        self._cb_longest = 0.0
        self._cb_longest_wall = 0.0
        self._cb_count = 0
        self._cb_over = 0
        self._cb_top: list[tuple[float, float, float, float, str]] = []  # cpu, wall, gc, t, what
        self._cb_longest_nogc = 0.0
        self._noise = 0.0
        self._gc_total = 0.0  # seconds of collections on the loop's thread
        self._gc_started = 0.0
        self._gc_longest = 0.0
        self._unpatch: Optional[Callable[[], None]] = None
        self._timed = False  # callbacks were timed by this monitor (not uvloop, not another's)
        self.record_over = float(record_over)
        from .deque import BoundedDeque

        self._stalls: BoundedDeque[LoopStall] = BoundedDeque(history)
        self._task: Optional[asyncio.Task[None]] = None
        self.samples = 0
        self.longest = 0.0
        self._total = 0.0
        self.over_10ms = 0
        self.over_50ms = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            late = max(0.0, loop.time() - t0 - interval)
            self.samples += 1
            self._total += late
            self.longest = max(self.longest, late)
            if late >= 0.01:
                self.over_10ms += 1
                if late >= 0.05:
                    self.over_50ms += 1
            if late >= self.record_over:
                self._stalls.append({"time": time.time(), "seconds": late})

    def _patch_handles(self) -> None:
        """Time every callback the running loop's thread runs (stdlib loop only).

        ``asyncio.Handle._run`` is where the stdlib event loop runs each
        callback and each task step; it is wrapped for this thread only
        (others pass straight through). Each callback's CPU time on this
        thread (``time.thread_time``) is how long it held the loop doing work;
        its wall-clock time adds the waits for the GIL and for a CPU, which on
        a busy or shared machine dwarf the work. About 2 us per callback. Not
        available on uvloop, whose handles are compiled: the timer lateness is
        then the only figure.
        """
        handle_cls = asyncio.Handle
        original = handle_cls._run
        if getattr(original, "_memcache_ext_timed", False):
            return  # another monitor times them already: this one reports None
        thread = threading.get_ident()
        clock, cpu = time.perf_counter, time.thread_time
        monitor = self

        def _run(handle: asyncio.Handle) -> None:
            if threading.get_ident() != thread:
                original(handle)
                return
            frame = _frame_of(handle)  # before: a step that ends the coroutine drops it
            t0, c0, g0 = clock(), cpu(), monitor._gc_total
            try:
                original(handle)
            finally:
                spent, wall = cpu() - c0, clock() - t0
                monitor._cb_count += 1
                if wall >= 0.001:
                    try:  # a measuring error must never reach the event loop
                        monitor._callback(spent, wall, monitor._gc_total - g0, handle, frame)
                    except Exception:  # noqa: BLE001, S110 - the figure is lost, the loop goes on
                        pass

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if threading.get_ident() != thread:
                return
            if phase == "start":
                monitor._gc_started = clock()
            else:
                took = clock() - monitor._gc_started
                monitor._gc_total += took
                monitor._gc_longest = max(monitor._gc_longest, took)

        import gc

        gc.callbacks.append(on_gc)

        _run._memcache_ext_timed = True  # type: ignore[attr-defined]  # marker on the wrapper
        handle_cls._run = _run  # type: ignore[method-assign,assignment]  # the wrapper above

        def unpatch() -> None:
            if handle_cls._run is _run:
                handle_cls._run = original  # type: ignore[method-assign]  # put back
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(on_gc)

        self._unpatch = unpatch
        self._timed = True

    def _callback(
        self, spent: float, wall: float, in_gc: float, handle: asyncio.Handle, frame: Any
    ) -> None:
        callback = getattr(handle, "_callback", None)
        if self._task is not None and getattr(callback, "__self__", None) is self._task:
            self._noise = max(self._noise, spent)  # our own step: a few microseconds of work
        self._cb_longest_wall = max(self._cb_longest_wall, wall)
        self._cb_longest = max(self._cb_longest, spent)
        # A collection's wall time stands in for its CPU time (an upper bound).
        if spent - in_gc > self._cb_longest_nogc:
            self._cb_longest_nogc = max(0.0, spent - in_gc)
        if spent >= 0.01:
            self._cb_over += 1
        # The ten longest by what the callback itself did (the collections it
        # triggered taken out): the ones to look at when the loop is held.
        top = self._cb_top
        own = spent - in_gc
        if len(top) < 10 or own > top[-1][0] - top[-1][2]:
            what = _describe(handle, frame)
            top.append((spent, wall, in_gc, time.time(), what[:200]))
            top.sort(key=lambda item: item[2] - item[0])
            del top[10:]

    async def start(self) -> None:
        if not self.running:
            if self.time_callbacks and self._unpatch is None:
                loop = asyncio.get_running_loop()
                if isinstance(loop, asyncio.BaseEventLoop):
                    self._patch_handles()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="memcache_ext-loop-stall-monitor"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        unpatch, self._unpatch = self._unpatch, None
        if unpatch is not None:
            unpatch()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> LoopStallMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def reset(self) -> None:
        self.samples = 0
        self.longest = self._total = 0.0
        self.over_10ms = self.over_50ms = 0
        self._stalls.clear()
        self._cb_longest = self._cb_longest_wall = self._cb_longest_nogc = 0.0
        self._cb_count = self._cb_over = 0
        self._cb_top.clear()
        self._gc_longest = self._noise = 0.0

    def stats(self) -> LoopStallStats:
        timed = self._timed
        return {
            "running": self.running,
            "interval": self.interval,
            "samples": self.samples,
            "longest_callback": self._cb_longest if timed else None,
            "longest_callback_wall": self._cb_longest_wall if timed else None,
            "callbacks": self._cb_count,
            "callbacks_over_10ms": self._cb_over,
            "longest_callback_without_gc": self._cb_longest_nogc if timed else None,
            "longest_gc_on_loop": self._gc_longest if timed else None,
            "noise": self._noise if timed else None,
            "longest_callbacks": [
                {"time": when, "seconds": spent, "wall": wall, "gc": in_gc, "what": what}
                for spent, wall, in_gc, when, what in list(self._cb_top)
            ],
            "longest_stall": self.longest,
            "mean_lateness": self._total / self.samples if self.samples else 0.0,
            "over_10ms": self.over_10ms,
            "over_50ms": self.over_50ms,
            "stalls": self._stalls.snapshot(),
        }
