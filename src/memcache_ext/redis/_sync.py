"""``TieredCache``: the tier for a sync ``redis.Redis`` client, called in the caller's thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Optional

from .. import _fastcall
from .._constants import MISSING
from .._validate import check_ttl
from ._driver import TierDriver
from ._flow import Flow, advance

__all__ = ["TieredCache"]


class _Flight:
    __slots__ = ("event", "value", "error", "owner")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.owner = threading.get_ident()  # the thread that loads
        self.value: Any = None
        self.error: Optional[BaseException] = None


class TieredCache(TierDriver):
    """A local cache in front of Redis, for a sync ``redis.Redis`` client.

    ``TieredCache(local, redis_client, namespace, *, ttl=300, local_ttl=None,
    serializer="json", max_value_bytes=1 MiB, key_encoder=None,
    version_of=None, deadline=0.05, probe_interval=0.1, max_stale=1.0,
    backoff=(0.05, 1.0), poll_interval=0.2, max_pending=10_000, start=True)``

    ``ttl``: Redis expiry in seconds (None: none); ``local_ttl``: longest a
    local copy lives (None: ``ttl``, and the local cache's own ttl).
    ``redis_client`` gives the connection settings; the tier talks to Redis
    through its own connections, each call bounded by ``deadline``, behind a
    breaker (see ``_policy``). ``version_of``: where a value's version comes
    from (None: a per-key counter kept in Redis; see ``_versions``).
    ``max_stale``: how long local entries are served after the invalidation
    channel was lost. The background worker (a thread) starts at
    construction (``start=False``: call ``start()``); ``close()`` stops it,
    after which every operation raises :class:`TierClosedError`.
    """

    _ASYNC = False

    def __init__(
        self, local: Any, redis_client: Any, namespace: str, *, start: bool = True, **options: Any
    ) -> None:
        super().__init__(local, redis_client, namespace, **options)
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._install_get()
        if start:
            self.start()

    def _install_get(self) -> None:
        if self.key_encoder is not None:
            self.get = self._get_encoded  # type: ignore[method-assign]  # chosen per instance
        else:
            # The local hit in C over a CLruCache; Python runs only on a local miss.
            self.get = _fastcall.get_or(self.local, self._get_remote)  # type: ignore[method-assign]  # the compiled hit path

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

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # close() cuts it short

    def _close_pubsub(self, pubsub: Any) -> None:
        pubsub.close()

    # -- public API ---------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        """The value from the local tier, else from Redis (then kept locally), else ``default``."""
        # __init__ installs the compiled hit path (or _get_encoded) over this method.
        value = self._lget(key, MISSING)
        if value is not MISSING:
            return value
        return self._get_remote(key, default)

    def _get_remote(self, key: Any, default: Any = None) -> Any:
        """get() after a local miss (the compiled hit path's fallback)."""
        self._check_open()
        return self._run(self._get_flow(self._key(key), default))

    def _get_encoded(self, key: Any, default: Any = None) -> Any:
        k = self._key(key)
        value = self._lget(k, MISSING)
        if value is not MISSING:
            return value
        self._check_open()
        return self._run(self._get_flow(k, default))

    def _get_closed(self, key: Any, default: Any = None) -> Any:
        self._check_open()

    def get_or_set(self, key: Any, loader: Callable[[], Any], ttl: Optional[float] = None) -> Any:
        """The cached value, else ``loader()``, called once per instance for concurrent callers.

        The loaded value is written to Redis unless a newer version is there
        (a write that happened while the loader ran) and kept locally unless
        the key was invalidated meanwhile. Exceptions from the loader reach
        every waiting caller and nothing is cached.
        """
        self._check_open()
        ttl = check_ttl(ttl)  # before the loader runs
        if not callable(loader):  # found on a hit too, not only on the first miss
            raise TypeError(f"loader must be callable, not {type(loader).__name__}")
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
            if flight.owner == threading.get_ident():
                return loader()  # called from its own load: it would wait on itself
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

    def set(
        self, key: Any, value: Any, ttl: Optional[float] = None, *, version: Optional[int] = None
    ) -> bool:
        """Write to Redis and the local tier and invalidate other instances' copies.

        ``version``: the value's version (default ``version_of(value)``, or the
        tier's per-key counter). True if Redis holds it now; False if Redis
        holds a newer version (then nothing is kept locally), if the value was
        refused (oversized or not serializable: the key is then deleted
        everywhere), or if Redis was unavailable (the local tier keeps it; the
        key is deleted in Redis once it answers again). TypeError/ValueError for
        a version that is not an int >= 0.
        """
        self._check_open()
        return bool(self._run(self._set_flow(self._key(key), value, check_ttl(ttl), version)))

    def delete(self, key: Any, *, version: Optional[int] = None) -> bool:
        """Delete everywhere and invalidate; Redis keeps a tombstone at ``version`` (default:
        the tier's counter, or the version there) so that no older fill lands afterwards.

        True if Redis (or, while it is away, the local tier) had the key.
        """
        self._check_open()
        return bool(self._run(self._delete_flow(self._key(key), version)))

    def clear(self, remote: bool = True) -> None:
        """Clear the local tier and, with ``remote``, every value of the namespace in Redis
        (each becomes a tombstone at its version) and every other instance's local tier;
        while Redis is away, the remote part is done when it answers."""
        self._check_open()
        self._run(self._clear_flow(remote))

    # -- the background worker ------------------------------------------------------------

    def start(self) -> None:
        """Start the background worker thread (idempotent)."""
        self._check_open()
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
        """Wait until the worker has subscribed once; False on timeout."""
        return self._ready.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker and close the tier's own connections (idempotent). The client
        passed in is the caller's to close. Afterwards every operation raises
        TierClosedError; ``stats()`` still answers."""
        if self._closed:
            return
        self._closed = True
        self.get = self._get_closed  # type: ignore[method-assign]  # the hit path too
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._connected = False
        self._bypass = True
        try:
            self.redis.close()
            self.redis.connection_pool.disconnect()
        except Exception:  # noqa: BLE001, S110 - closing connections to a server that is gone
            pass

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
