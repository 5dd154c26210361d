"""One cleanup pass over the manager's caches, and ``CleanupEvent``, its record.

* A pass: (1) ``expire()`` every cache (dead entries go first, so live ones
  are not evicted in their place); (2) trim caches one after another, **least
  recently used cache first**, each by ``fraction`` of its entries (its own LRU
  entries), until the accounted bytes released reach ``RSS - target``. When
  the caches account no bytes (none has a byte bound) there is no estimate to
  stop on, so every cache is trimmed; with no target (``cleanup()``) too; (3)
  ``gc.collect()``; (4) ``malloc_trim(0)`` on glibc. The manager then reads RSS
  again and records the event.
* Steps: ``sweep_steps`` runs the pass as a generator of bounded steps (one
  cache's ``expire()``, a slice of a trim sized to about 2 ms, the collection,
  ``malloc_trim``) so that the cleanup service can let the event loop run
  between them; ``sweep`` runs them back to back.
* Freed memory is reported honestly and twice: ``accounted_bytes_released``
  is the drop in the caches' own byte accounting (0 for caches without a byte
  bound), ``rss_freed_bytes`` is RSS before minus RSS after, and
  ``rss_before_malloc_trim`` shows what ``malloc_trim`` gave back. They
  differ: pymalloc keeps its arenas (freed blocks are reused by the next
  allocations, not returned), objects referenced elsewhere survive eviction,
  and other threads allocate meanwhile. A cleanup's purpose is that RSS stops
  growing, not that it falls.
* Errors: a cache removed meanwhile is skipped (``skipped``); a cache whose
  ``on_evict`` (or anything else) raises is recorded under ``errors`` and the
  pass goes on with the rest.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Optional, TypedDict, Union

from . import _procmem
from ._constants import MIB
from ._core import CLruCache, PyLruCache

__all__ = [
    "CleanupEvent",
    "CleanupEventDict",
    "expire_slices",
    "sweep",
    "sweep_steps",
    "SLICE_SECONDS",
]


class CleanupEventDict(TypedDict):
    """One cleanup run by the manager (``CleanupEvent.as_dict()``)."""

    time: Annotated[float, "Wall-clock start (Unix time)"]
    reason: str
    rss_before: int
    rss_after: int
    limit_bytes: int
    target_bytes: Optional[int]
    accounted_bytes_released: Annotated[int, "Drop in the caches' accounted bytes"]
    entries_evicted: int
    entries_expired: int
    objects_collected: int
    malloc_trimmed: bool
    rss_before_malloc_trim: Annotated[
        int, "RSS after evicting and collecting, before malloc_trim (0: not read)"
    ]
    duration: Annotated[float, "Seconds, start to end (other work may run between steps)"]
    gc_duration: Annotated[float, "Seconds spent in gc.collect()"]
    malloc_trim_duration: Annotated[float, "Seconds spent in malloc_trim(0)"]
    steps: Annotated[int, "Steps the cleanup ran in (expire and trim slices, gc, trim)"]
    longest_step: Annotated[float, "Seconds of CPU: the longest step (what it held its thread)"]
    caches_trimmed: list[str]
    skipped: list[str]
    errors: list[str]
    rss_freed_bytes: Annotated[int, "rss_before - rss_after (may be negative)"]
    rss_before_mb: float
    rss_after_mb: float
    accounted_mb_released: float


@dataclass
class CleanupEvent:
    """One cleanup, as recorded in the history (``as_dict()`` for JSON)."""

    time: float  #: wall-clock time the cleanup started (time.time())
    reason: str  #: "high_water" or "forced" (or the caller's reason)
    rss_before: int
    rss_after: int = 0
    limit_bytes: int = 0
    target_bytes: Optional[int] = None  #: RSS aimed at (None: trim everything)
    accounted_bytes_released: int = 0  #: drop in the caches' nbytes
    entries_evicted: int = 0  #: by trim
    entries_expired: int = 0
    objects_collected: int = 0  #: gc.collect()'s return value
    malloc_trimmed: bool = False
    rss_before_malloc_trim: int = 0  #: RSS after evicting and collecting
    duration: float = 0.0  #: seconds, whole cleanup
    gc_duration: float = 0.0  #: seconds spent in gc.collect()
    malloc_trim_duration: float = 0.0  #: seconds spent in malloc_trim(0)
    steps: int = 0  #: bounded steps it ran in
    longest_step: float = 0.0  #: seconds, the longest of them
    caches_trimmed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  #: removed while cleaning
    errors: list[str] = field(default_factory=list)

    @property
    def rss_freed_bytes(self) -> int:
        """RSS before minus RSS after (negative if RSS grew meanwhile)."""
        return self.rss_before - self.rss_after

    def as_dict(self) -> CleanupEventDict:
        # Not dataclasses.asdict: it deep-copies recursively (~20 us an event,
        # which made up most of a /memory/stats answer with a full history).
        d = {name: getattr(self, name) for name in _EVENT_FIELDS}
        for name in ("caches_trimmed", "skipped", "errors"):
            d[name] = list(d[name])
        d["rss_freed_bytes"] = self.rss_freed_bytes
        d["rss_before_mb"] = self.rss_before / MIB
        d["rss_after_mb"] = self.rss_after / MIB
        d["accounted_mb_released"] = self.accounted_bytes_released / MIB
        return d  # type: ignore[return-value]  # keys checked by tests/test_shapes.py


_EVENT_FIELDS = tuple(f.name for f in fields(CleanupEvent))


def _fraction_of(count: int, size: int) -> float:
    """The largest fraction ``f`` with ``ceil(size * f) == count`` (``trim`` takes a
    fraction; ``count / size`` can round up to one entry more)."""
    if count >= size:
        return 1.0
    f = count / size
    while math.ceil(size * f) > count:
        f = math.nextafter(f, 0.0)
    return f


def _failed(event: CleanupEvent, what: str, exc: BaseException) -> None:
    event.errors.append(f"{what}: {type(exc).__name__}: {exc}")


def sweep(
    event: CleanupEvent,
    caches: Sequence[tuple[str, Any, Callable[[], bool]]],
    fraction: float,
    collect: Union[bool, int],
) -> None:
    """Steps 1-4 of a pass over ``(name, cache, still_registered)``, LRU cache first.

    Fills ``event`` in; its ``rss_before`` and ``target_bytes`` say when to stop.
    """
    for _ in sweep_steps(event, caches, fraction, collect):
        pass


#: A trim slice aims at this many seconds of work (it adapts its entry count to it).
SLICE_SECONDS = 0.002
#: Each cache's first slice is small (one entry may hold a large value), and a slice
#: is at most four times the one before it, so that a cache's first entries, or a
#: change of cost within a cache, cannot make a slice long.
_FIRST_SLICE, _MIN_SLICE, _MAX_SLICE, _GROWTH = 8, 8, 8192, 4


def _next_slice(count: int, spent: float, slice_seconds: float) -> int:
    """The next slice's entry count: about ``slice_seconds`` of work at the rate the
    last slice (``count`` entries, ``spent`` seconds) showed."""
    grown = min(_MAX_SLICE, count * _GROWTH)
    if spent <= 0:
        return grown
    return int(min(grown, max(_MIN_SLICE, count * slice_seconds / spent)))


def _expires_in_slices(cache: Any) -> bool:
    """The caches of this package take ``expire(limit=...)``; others expire in one call."""
    return isinstance(cache, PyLruCache) or (CLruCache is not None and isinstance(cache, CLruCache))


def expire_slices(
    cache: Any,
    *,
    slice_seconds: float = SLICE_SECONDS,
    clock: Callable[[], float] = time.thread_time,
) -> Iterator[int]:
    """``cache.expire()`` in bounded slices: yields how many entries each slice dropped.

    A slice looks at as many entries as fit in about ``slice_seconds`` (learnt
    from the previous slice); together they look at every entry once. A slice
    whose ``on_evict`` raised is counted as dropping none; the first such error
    is raised once every slice has run.
    """
    if not _expires_in_slices(cache):
        yield cache.expire()
        return
    left, count = len(cache), _FIRST_SLICE
    error: Optional[Exception] = None
    while left > 0:
        count = min(count, left)
        t0 = clock()
        try:
            dropped = cache.expire(limit=count)
        except Exception as exc:  # noqa: BLE001 - on_evict raised; that slice finished
            dropped = 0
            error = error or exc
        spent = clock() - t0
        left -= count
        yield dropped
        count = _next_slice(count, spent, slice_seconds)
    if error is not None:
        raise error


def sweep_steps(
    event: CleanupEvent,
    caches: Sequence[tuple[str, Any, Callable[[], bool]]],
    fraction: float,
    collect: Union[bool, int],
    *,
    slice_seconds: float = SLICE_SECONDS,
    rss: Callable[[], int] = _procmem.rss_bytes,
    clock: Callable[[], float] = time.thread_time,
) -> Iterator[None]:
    """The same pass, one bounded step at a time: a generator that yields between steps.

    A step is one slice of a cache's expiry (``expire_slices``) or of its
    trim (a ``trim()`` of as many entries as fit in about ``slice_seconds``,
    learnt from the cache's previous slice), ``gc.collect()`` or
    ``malloc_trim(0)``. The caller may do
    other work between two steps (the cleanup service lets the event loop
    run). ``event.longest_step`` records the longest step. ``collect``: True
    for a full ``gc.collect()``, a generation (0 or 1) for a young collection
    only (bounded in time: the young generations are bounded in size; a full
    collection walks every object the interpreter tracks), False for none.
    """
    # clock: CPU time of this thread, what a step held its thread (the event loop's,
    # in the service) for; wall time would add the waits for the GIL and a CPU.

    def timed(t0: float) -> None:
        event.steps += 1
        event.longest_step = max(event.longest_step, clock() - t0)

    for name, cache, registered in caches:  # 1. expired entries first
        if not registered():
            continue
        slices = expire_slices(cache, slice_seconds=slice_seconds, clock=clock)
        while True:
            t0 = clock()
            try:
                event.entries_expired += next(slices)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - recorded, the rest goes on
                _failed(event, f"{name}: expire", exc)
                break
            finally:
                timed(t0)
            yield
    target = event.target_bytes
    need = None if target is None else event.rss_before - target
    if need is not None and not any(cache.nbytes for _, cache, _ in caches):
        need = None  # nothing accounted: no estimate to stop on
    for name, cache, registered in caches:  # 2. trim, least recently used cache first
        if need is not None and event.accounted_bytes_released >= need:
            break
        if not registered():
            event.skipped.append(name)
            continue
        try:
            before = cache.stats()
        except Exception as exc:  # noqa: BLE001 - recorded, the rest goes on
            _failed(event, f"{name}: stats", exc)
            continue
        if not before.get("size"):
            continue
        goal = math.ceil(before["size"] * fraction)
        done, step = 0, _FIRST_SLICE
        failed = False
        while done < goal:
            size = len(cache)
            if not size:
                break
            count = min(step, goal - done)
            nbytes = cache.nbytes  # once: another thread may empty the cache meanwhile
            if need is not None and nbytes:
                # No more than the entries that should cover what is still needed.
                left = need - event.accounted_bytes_released - (before["nbytes"] - nbytes)
                count = max(1, min(count, math.ceil(left / (nbytes / size))))
            t0 = clock()
            try:
                done += cache.trim(_fraction_of(count, size))
            except Exception as exc:  # noqa: BLE001 - on_evict raised; that trim finished
                done += count
                if not failed:
                    _failed(event, f"{name}: trim", exc)
                    failed = True
            spent = clock() - t0
            timed(t0)
            released = max(0, before["nbytes"] - cache.nbytes)
            step = _next_slice(count, spent, slice_seconds)
            yield
            if need is not None and event.accounted_bytes_released + released >= need:
                break
        try:
            after = cache.stats()
        except Exception as exc:  # noqa: BLE001 - recorded, the rest goes on
            _failed(event, f"{name}: stats", exc)
            continue
        event.caches_trimmed.append(name)
        event.entries_evicted += max(
            0, after["evictions_by_reason"]["trim"] - before["evictions_by_reason"]["trim"]
        )
        event.accounted_bytes_released += max(0, before["nbytes"] - after["nbytes"])
    if collect is not False:  # 3. collect
        t0, w0 = clock(), time.perf_counter()
        generation = 2 if collect is True else int(collect)
        try:
            event.objects_collected = gc.collect(generation)
        except Exception as exc:  # noqa: BLE001 - a finalizer raised
            _failed(event, "gc.collect", exc)
        event.gc_duration = time.perf_counter() - w0
        timed(t0)
        yield
    event.rss_before_malloc_trim = rss()
    t0, w0 = clock(), time.perf_counter()
    try:  # 4. give freed heap back to the kernel
        event.malloc_trimmed = _procmem.malloc_trim(0)
    except Exception as exc:  # noqa: BLE001 - recorded
        _failed(event, "malloc_trim", exc)
    event.malloc_trim_duration = time.perf_counter() - w0
    timed(t0)
