"""``AsyncTieredCache``: the tier for a ``redis.asyncio.Redis`` client (calls awaited)."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional, Union

from .._constants import MISSING
from .._validate import check_ttl
from ._driver import TierDriver
from ._flow import Flow, RedisCall, advance

__all__ = ["AsyncTieredCache"]

if sys.version_info >= (3, 11):

    async def _within(awaitable: Awaitable[Any], seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # pragma: no cover - Python 3.10

    async def _within(awaitable: Awaitable[Any], seconds: float) -> Any:
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError as exc:  # not yet the builtin TimeoutError on 3.10
            raise TimeoutError(f"no answer within {seconds:g} s") from exc


#: The get_or_set load tasks this task runs in or descends from (a task copies its context).
_loading: contextvars.ContextVar[frozenset[Any]] = contextvars.ContextVar(
    "memcache_ext.redis: loads of this task", default=frozenset()
)


class AsyncTieredCache(TierDriver):
    """The same tier for a ``redis.asyncio.Redis`` client; methods are coroutines.

    Same constructor as :class:`TieredCache` (no ``start``). Start the
    background worker (a task) with ``await tier.start()`` or ``async with``;
    ``await tier.aclose()`` stops it. One instance belongs to one event loop.
    Every Redis call is awaited under the ``deadline``. Concurrent
    ``get_or_set`` calls for a key share one load (a task: cancelling one
    caller cancels neither the load nor the others).
    """

    _ASYNC = True

    def __init__(self, local: Any, redis_client: Any, namespace: str, **options: Any) -> None:
        super().__init__(local, redis_client, namespace, **options)
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._task: Optional[asyncio.Task[None]] = None

    # -- the adapter: calls made and awaited ---------------------------------------------

    async def _run(self, flow: Flow) -> Any:
        deadline = self.deadline
        done, out = advance(flow, None, None)
        while not done:
            try:
                value, error = out(), None
                if inspect.isawaitable(value):
                    if type(out) is RedisCall:
                        value = await _within(value, deadline)
                    else:
                        value = await value
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which decides
                value, error = None, exc
            done, out = advance(flow, value, error)
        return out

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # aclose() cancels it

    async def _close_pubsub(self, pubsub: Any) -> None:
        closer = getattr(pubsub, "aclose", None) or pubsub.reset
        await asyncio.shield(closer())

    # -- public API ---------------------------------------------------------------------

    async def get(self, key: Any, default: Any = None) -> Any:
        """As ``TieredCache.get``."""
        if self._closed:
            self._check_open()
        enc = self.key_encoder
        k = key if enc is None else self._key(key)
        value = self._lget(k, MISSING)
        if value is not MISSING:
            return value
        return await self._run(self._get_flow(self._key(k) if enc is None else k, default))

    async def get_or_set(
        self,
        key: Any,
        loader: Callable[[], Union[Any, Awaitable[Any]]],
        ttl: Optional[float] = None,
    ) -> Any:
        """As ``TieredCache.get_or_set``; ``loader`` may be sync or return an awaitable."""
        self._check_open()
        ttl = check_ttl(ttl)  # before the loader runs
        if not callable(loader):  # found on a hit too, not only on the first miss
            raise TypeError(f"loader must be callable, not {type(loader).__name__}")
        value, k = self._local_first(key)
        if value is not MISSING:
            return value
        task = self._flights.get(k)
        if task is not None and task in _loading.get():
            # Called from its own load (or a task it started): it would wait on itself.
            value = loader()
            return await value if inspect.isawaitable(value) else value
        if task is None:
            task = asyncio.ensure_future(self._load(k, ttl, loader))
            self._flights[k] = task

            def done(t: asyncio.Future[Any], k: str = k) -> None:
                if self._flights.get(k) is t:
                    del self._flights[k]
                if not t.cancelled():
                    t.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(done)
        else:
            self.counts.add("shared_loads")
        return await asyncio.shield(task)

    async def _load(self, k: str, ttl: Optional[float], loader: Callable[[], Any]) -> Any:
        """The load of ``get_or_set``, in a task of its own; the tasks it starts know it."""
        this = asyncio.current_task()
        _loading.set(_loading.get() | {this})
        return await self._run(self._load_flow(k, ttl, loader))

    async def set(
        self, key: Any, value: Any, ttl: Optional[float] = None, *, version: Optional[int] = None
    ) -> bool:
        """As ``TieredCache.set``."""
        self._check_open()
        ttl = check_ttl(ttl)
        return bool(await self._run(self._set_flow(self._key(key), value, ttl, version)))

    async def delete(self, key: Any, *, version: Optional[int] = None) -> bool:
        """As ``TieredCache.delete``."""
        self._check_open()
        return bool(await self._run(self._delete_flow(self._key(key), version)))

    async def clear(self, remote: bool = True) -> None:
        """As ``TieredCache.clear``."""
        self._check_open()
        await self._run(self._clear_flow(remote))

    # -- the background worker ------------------------------------------------------------

    async def start(self) -> None:
        """Start the background worker task on the running loop (idempotent)."""
        self._check_open()
        if self._task is not None and not self._task.done():
            return
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(
            self._run(self._listen_flow()), name=f"memcache_ext.redis[{self.namespace}]"
        )

    async def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the worker has subscribed once; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def aclose(self) -> None:
        """Stop the worker and close the tier's own connections (idempotent); the client
        passed in is the caller's to close. Afterwards every operation raises
        TierClosedError; ``stats()`` still answers."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._connected = False
        self._bypass = True
        try:
            await self.redis.aclose()
            await self.redis.connection_pool.disconnect()
        except Exception:  # noqa: BLE001, S110 - closing connections to a server that is gone
            pass

    async def __aenter__(self) -> AsyncTieredCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
