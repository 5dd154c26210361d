"""``TieredCache``: the tier for a sync ``redis.Redis`` client, called in the caller's thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Optional

from .. import _fastcall
from .._constants import MISSING
from ._driver import TierDriver
from ._flow import Flow, advance

__all__ = ["TieredCache"]


class _Flight:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None


class TieredCache(TierDriver):
    """A local cache in front of Redis, for a sync ``redis.Redis`` client.

    ``TieredCache(local, redis_client, namespace, *, ttl=300, local_ttl=None,
    serializer="pickle", max_value_bytes=1 MiB, key_encoder=None,
    retry_interval=1.0, backoff=(0.05, 5.0), poll_interval=0.2,
    max_pending=10_000, start=True)``

    ``ttl``: Redis expiry in seconds (None: none); ``local_ttl``: longest a
    local copy lives (None: ``ttl``, and the local cache's own ttl). Configure
    ``socket_timeout``/``socket_connect_timeout`` on the client: they bound
    how long a request can wait for a slow Redis. The listener thread starts
    at construction (``start=False``: call ``start()``); ``close()`` stops it.
    """

    def __init__(
        self, local: Any, redis_client: Any, namespace: str, *, start: bool = True, **options: Any
    ) -> None:
        super().__init__(local, redis_client, namespace, **options)
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if self.key_encoder is not None:
            self.get = self._get_encoded  # type: ignore[method-assign]  # chosen per instance
        else:
            # The local hit in C over a CLruCache; Python runs only on a local miss.
            self.get = _fastcall.get_or(local, self._get_remote)  # type: ignore[method-assign]  # the compiled hit path
        if start:
            self.start()

    # -- the adapter: calls made here and now ---------------------------------------

    def _run(self, flow: Flow) -> Any:
        done, out = advance(flow, None, None)
        while not done:
            try:
                value, error = out(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which decides
                value, error = None, exc
            done, out = advance(flow, value, error)
        return out

    def _pipeline(self, queue: Callable[[Any], None]) -> Any:
        with self.redis.pipeline(transaction=False) as pipe:
            queue(pipe)
            return pipe.execute()

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # close() cuts it short

    def _close_pubsub(self, pubsub: Any) -> None:
        pubsub.close()

    # -- public API ---------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        """The value from the local tier, else from Redis (then kept locally), else ``default``."""
        # The hit path is one C call; with a key_encoder, __init__ installs _get_encoded.
        value = self._lget(key, MISSING)
        if value is not MISSING:
            return value
        return self._run(self._get_flow(self._key(key), default))

    def _get_remote(self, key: Any, default: Any = None) -> Any:
        """get() after a local miss (the compiled hit path's fallback)."""
        return self._run(self._get_flow(self._key(key), default))

    def _get_encoded(self, key: Any, default: Any = None) -> Any:
        k = self._key(key)
        value = self._lget(k, MISSING)
        if value is not MISSING:
            return value
        return self._run(self._get_flow(k, default))

    def get_or_set(self, key: Any, loader: Callable[[], Any], ttl: Optional[float] = None) -> Any:
        """The cached value, else ``loader()``, called once per instance for concurrent callers.

        The loaded value is written to Redis (unless another instance wrote
        the key meanwhile) and to the local tier. Exceptions from the loader
        reach every waiting caller and nothing is cached.
        """
        value, k = self._local_first(key)
        if value is not MISSING:
            return value
        with self._flights_lock:
            flight = self._flights.get(k)
            leader = flight is None
            if leader:
                flight = self._flights[k] = _Flight()
        assert flight is not None
        if not leader:
            self.counts.add("shared_loads")
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = self._run(self._load_flow(k, ttl, loader))
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                self._flights.pop(k, None)
            flight.event.set()

    def set(self, key: Any, value: Any, ttl: Optional[float] = None) -> bool:
        """Write to Redis and the local tier and invalidate other instances' copies.

        True if Redis stored it; False if it was refused (oversized or not
        serializable: the key is then deleted everywhere) or Redis was
        unavailable (the local tier keeps it; Redis's copy of the key is
        deleted once Redis answers again).
        """
        return bool(self._run(self._set_flow(self._key(key), value, ttl)))

    def delete(self, key: Any) -> bool:
        """Delete everywhere and invalidate.

        True if Redis (or, while it is away, the local tier) had the key.
        """
        return bool(self._run(self._delete_flow(self._key(key))))

    def clear(self, remote: bool = True) -> None:
        """Clear the local tier and, with ``remote``, every key of the namespace in Redis
        (SCAN + UNLINK) and every other instance's local tier."""
        self._run(self._clear_flow(remote))

    # -- listener -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the invalidation listener thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run,
            args=(self._listen_flow(),),
            daemon=True,
            name=f"memcache_ext.redis[{self.namespace}]",
        )
        self._thread.start()

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the listener has subscribed once; False on timeout."""
        return self._ready.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the listener thread (the client is the caller's to close)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._connected = False

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
