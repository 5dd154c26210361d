"""A small FastAPI service behind MemoryGuard, for the tests that start a real server.

    python tests/guard_app.py PORT [MAX_BODY_BYTES]

Endpoints: ``GET /health``; ``GET /sync`` (a plain ``def``: runs in the thread
pool); ``GET /alloc?mb=N`` (a ``def`` that allocates N MiB and touches it)
and ``GET /alloc-async?mb=N`` (the same on the event loop); ``PUT /echo``
(reads the whole body, answers its length); ``GET /memory/stats``. A cleanup
service runs every 0.2 s, so the tests can see it survive.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request

from memcache_ext import CacheManager
from memcache_ext.fastapi import (
    MemoryCleanupService,
    MemoryGuard,
    MemoryMonitorMiddleware,
    cleanup_lifespan,
    memory_router,
)


def build(max_body: int) -> FastAPI:
    manager = CacheManager(memory_limit_mb=4096, cache_share=None)
    cache = manager.create_cache("items", maxsize=1000)
    cleanup = MemoryCleanupService(manager, interval=0.2)
    guard = MemoryGuard(manager=manager, max_body_bytes=max_body, exempt=("/health",))
    app = FastAPI(lifespan=cleanup_lifespan(cleanup))
    app.add_middleware(MemoryMonitorMiddleware, manager=manager)
    app.add_middleware(guard.wrap)
    app.include_router(memory_router(manager, cleanup_service=cleanup, guard=guard))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/sync")
    def sync() -> dict[str, int]:
        cache["k"] = cache.get("k", 0) + 1
        return {"n": cache["k"]}

    @app.get("/alloc")
    def alloc(mb: int) -> dict[str, int]:
        block = bytearray(mb * 2**20)
        block[:: 2**12] = b"x" * len(block[:: 2**12])  # touch every page
        return {"mb": len(block) // 2**20}

    @app.get("/alloc-async")
    async def alloc_async(mb: int) -> dict[str, int]:
        block = bytearray(mb * 2**20)
        return {"mb": len(block) // 2**20}

    @app.put("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    max_body = int(sys.argv[2]) if len(sys.argv) > 2 else 2**20
    uvicorn.run(build(max_body), host="127.0.0.1", port=port, log_level="warning")
