"""FastAPI integration (extra ``[fastapi]``): the ``/memory/stats`` router and its models.

    from fastapi import FastAPI
    from memcache_ext import cache_manager
    from memcache_ext.fastapi import (MemoryCleanupService, MemoryMonitorMiddleware,
                                      cleanup_lifespan, memory_router)

    service = MemoryCleanupService(cache_manager, interval=30)
    app = FastAPI(lifespan=cleanup_lifespan(service))
    app.add_middleware(MemoryMonitorMiddleware, memory_limit_mb=400)
    app.include_router(memory_router(cache_manager, dependencies=[Depends(require_admin)]))

The middleware (``memcache_ext.asgi``) and the cleanup service
(``memcache_ext.cleanup``) need no FastAPI and are re-exported here. This is
the only module that imports FastAPI and pydantic; its response models are
generated from the ``TypedDict`` of each statistics shape, next to the code
that builds it, so the endpoint's schema cannot drift from what it returns.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from ._cleanup_pass import CleanupEventDict
from .asgi import (
    OTHER,
    SCOPE_KEY,
    UNMATCHED,
    MemoryMonitorMiddleware,
    RequestMemoryMonitor,
    RequestMonitorStats,
)
from .cleanup import (
    CleanupServiceStats,
    LoopStallMonitor,
    LoopStallStats,
    MemoryCleanupService,
    cleanup_lifespan,
)
from .gcstats import GCSnapshot, GCStats, gc_stats
from .guard import SCOPE_KEY as GUARD_SCOPE_KEY
from .guard import GuardStats, MemoryGuard
from .manager import CacheManager, ManagedCacheStats, ManagerStats, manager_or_default

__all__ = [
    "MemoryGuard",
    "LoopStallMonitor",
    "MemoryMonitorMiddleware",
    "RequestMemoryMonitor",
    "memory_router",
    "MemoryCleanupService",
    "cleanup_lifespan",
    "MemoryStats",
    "MemoryStatsDict",
    "model_of",
    "SCOPE_KEY",
    "UNMATCHED",
    "OTHER",
]


class MemoryStatsDict(ManagerStats):
    """``GET /memory/stats``: process memory, limit, caches, cleanups, requests, GC."""

    requests: typing.Annotated[
        Optional[RequestMonitorStats], "null when no MemoryMonitorMiddleware wraps the app"
    ]
    cleanup_service: Optional[CleanupServiceStats]
    gc: GCSnapshot
    guard: typing.Annotated[Optional[GuardStats], "null when no MemoryGuard guards the app"]
    loop: typing.Annotated[Optional[LoopStallStats], "null unless a LoopStallMonitor is passed"]


# -- pydantic models from the TypedDicts --------------------------------------------

#: Schema names kept from the hand-written models these replace (clients may know them).
_NAMES = {
    ManagedCacheStats: "CacheStats",
    GCSnapshot: "GCStatsModel",
    CleanupEventDict: "CleanupEventModel",
    MemoryStatsDict: "MemoryStats",
}
#: Descriptions of fields whose TypedDict lives in the core (``_stats.CacheStats``).
_CORE_DESCRIPTIONS = {
    "size": "Entries",
    "maxsize": "Entry bound (null: none)",
    "nbytes": "Accounted bytes (0 without max_bytes)",
    "max_bytes": "Byte bound (null: none)",
    "evictions": "capacity + bytes + trim evictions",
    "rejected": "Entries refused as larger than max_bytes",
    "lookups": "Counted lookups, hits + misses: get, [], setdefault and get_or_set "
    "count; `in` and peek do not (so `if k in c: c[k]` reports only hits)",
}
_MODELS: dict[Any, type[BaseModel]] = {}


def model_of(td: Any) -> type[BaseModel]:
    """The pydantic model of a TypedDict: same fields, ``Annotated`` text as descriptions.

    Nested TypedDicts become models too; keys a TypedDict does not require get
    a default of None; extra keys are allowed (a cache class may report more).
    """
    model = _MODELS.get(td)
    if model is not None:
        return model
    name = _NAMES.get(td, td.__name__)
    fields: dict[str, Any] = {}
    for key, annotated in typing.get_type_hints(td, include_extras=True).items():
        hint, description = (
            annotated,
            _CORE_DESCRIPTIONS.get(key) if td is ManagedCacheStats else None,
        )
        if typing.get_origin(annotated) is typing.Annotated:
            hint, *meta = typing.get_args(annotated)
            description = next((m for m in meta if isinstance(m, str)), description)
        default = ... if key in td.__required_keys__ else None
        fields[key] = (_modelled(hint), Field(default, description=description))
    model = create_model(name, __config__=ConfigDict(extra="allow"), __doc__=td.__doc__, **fields)
    _MODELS[td] = model
    return model


def _modelled(hint: Any) -> Any:
    """``hint`` with every TypedDict in it (in lists, dicts, unions) replaced by its model."""
    if typing.is_typeddict(hint):
        return model_of(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if not args:
        return hint
    if origin is typing.Annotated:  # the metadata stays as it is
        params = (_modelled(args[0]), *hint.__metadata__)
        return typing.Annotated[params]
    new = tuple(_modelled(a) for a in args)
    if origin in (Union, types.UnionType):
        return Union[new]
    return origin[new] if len(new) > 1 else origin[new[0]]


MemoryStats = model_of(MemoryStatsDict)


# -- the router ------------------------------------------------------------------------


def memory_router(
    manager: Optional[CacheManager] = None,
    *,
    prefix: str = "/memory",
    dependencies: Optional[Sequence[Any]] = None,
    tags: Optional[Sequence[str]] = ("memory",),
    monitor: Optional[RequestMemoryMonitor] = None,
    cleanup_service: Optional[MemoryCleanupService] = None,
    gc: Optional[GCStats] = None,
    include_in_schema: bool = True,
    guard: Optional[MemoryGuard] = None,
    loop_monitor: Optional[LoopStallMonitor] = None,
) -> APIRouter:
    """An APIRouter with ``GET {prefix}/stats`` (response model ``MemoryStats``).

    ``manager``: the CacheManager to report (default ``cache_manager``).
    ``dependencies``: FastAPI dependencies run before the endpoint (put your
    auth here: ``dependencies=[Depends(require_admin)]``). ``monitor``: the
    request monitor to report (default: the one of the MemoryMonitorMiddleware
    that wrapped this request, if any). ``gc``: GC statistics (default
    ``gc_stats``, installed here). ``guard``, ``loop_monitor``: a MemoryGuard
    and a LoopStallMonitor whose figures to report (default for the guard:
    the one that guarded this request, if any).
    """
    mgr = manager_or_default(manager)
    gcs = gc if gc is not None else gc_stats
    gcs.install()
    router = APIRouter(prefix=prefix, dependencies=list(dependencies or ()), tags=list(tags or ()))

    @router.get(
        "/stats",
        response_model=MemoryStats,
        include_in_schema=include_in_schema,
        summary="Process memory, caches, cleanups, high-memory requests, GC",
    )
    async def memory_stats(request: Request) -> Mapping[str, Any]:
        mon = monitor if monitor is not None else request.scope.get(SCOPE_KEY)
        grd = guard if guard is not None else request.scope.get(GUARD_SCOPE_KEY)
        st: MemoryStatsDict = {
            **mgr.stats(),
            "requests": mon.stats() if mon is not None else None,
            "cleanup_service": cleanup_service.stats() if cleanup_service is not None else None,
            "gc": gcs.snapshot(),
            "guard": grd.stats() if grd is not None else None,
            "loop": loop_monitor.stats() if loop_monitor is not None else None,
        }
        return st

    return router
