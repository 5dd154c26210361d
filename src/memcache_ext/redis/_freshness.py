"""Freshness of the local tier: leases, the versions seen, and the bypass.

Every store of a value *read* (from Redis, or from the loader) into the local
tier is a *fill* through a lease of the local cache (``lease`` before the
remote step, ``fill`` after it): a write, a delete, an invalidation message or
a clear of the key that comes in between refuses the fill, so a slow read can
never reinstall a value that was replaced while it was in flight, whatever the
thread or task; and a fill never replaces a value stored meanwhile.

This instance's own writes replace the local value (``set``: it invalidates
every lease on the key), once Redis has taken them, unless a newer version is
already known here: the comparison with the newest version seen and the store
are one step under ``_state_lock``, the lock the listener takes to apply an
invalidation, so a newer write from elsewhere is never overwritten by ours.

The tier remembers the newest version it has seen per key (bounded; when the
table is full it is emptied and ``_seen_epoch`` moves, so that a write in
flight across it keeps nothing): an invalidation message older than it, or a
value read from Redis older than it, is ignored. Dropping the whole local tier
(a resubscription, the bypass, a clear) moves ``_seen_epoch`` too: messages
may have been missed, so an own write whose answer comes after it is not kept
locally either.

The *bypass*: while invalidations cannot arrive (no subscription yet, the
channel lost for longer than ``max_stale``), the local tier is emptied and
nothing is stored in it, so every read goes to Redis or the loader. Entering
the bypass clears the local cache, which refuses every fill in flight.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

__all__ = ["Freshness"]

logger = logging.getLogger("memcache_ext.redis")

_MAX_SEEN = 65_536  # versions remembered; past it, forgotten (only ignoring old messages suffers)
_ABSENT: Any = object()


class Freshness:
    """The local tier, the versions seen, the bypass flag."""

    namespace: str

    def __init__(self, local: Any) -> None:
        self.local = local
        self._bypass = True  # until the listener has subscribed
        self._seen: dict[str, int] = {}
        self._seen_epoch = 0
        # Versions seen, the bypass, own stores and applied invalidations: one at a time.
        self._state_lock = threading.Lock()

    def _note(self, key: str, version: int) -> None:
        seen = self._seen
        if version > seen.get(key, -1):
            if len(seen) >= _MAX_SEEN:
                seen.clear()
                self._seen_epoch += 1
            seen[key] = version

    def _older(self, key: str, version: Optional[int]) -> bool:
        return version is not None and version < self._seen.get(key, -1)

    def _fill(
        self, key: str, value: Any, lease: int, ttl: Optional[float], version: Optional[int]
    ) -> None:
        """End ``lease``: store ``value`` unless bypassed, older than seen, or refused.

        Its version counts as seen only if the fill stored it: a version noted for a
        value the local tier does not hold would make the listener ignore the
        invalidation of the (older) value it does hold."""
        local = self.local
        with self._state_lock:
            if self._bypass or self._older(key, version):
                local.drop_lease(lease)
                return
            try:
                kept = local.fill(key, value, lease, ttl)
            except Exception as exc:  # noqa: BLE001 - e.g. a sizeof that raises: not cached
                self._store_failed(key, exc)
                return
            if version is not None and kept is value and local.peek(key, _ABSENT) is value:
                self._note(key, version)

    def _own(
        self, key: str, value: Any, ttl: Optional[float], version: Optional[int], epoch: int
    ) -> None:
        """After this instance's write of ``value`` (Redis holds ``version``; None: Redis
        was not written, the local tier keeps it for read-your-writes)."""
        local = self.local
        with self._state_lock:
            if (
                self._bypass
                or epoch != self._seen_epoch
                or (version is not None and version < self._seen.get(key, -1))
            ):
                local.invalidate(key)
                return
            if version is not None:
                self._note(key, version)
            try:
                if ttl is None:
                    local.set(key, value)
                else:
                    local.set(key, value, ttl=ttl)
            except Exception as exc:  # noqa: BLE001 - e.g. a sizeof that raises: not cached
                local.invalidate(key)
                self._store_failed(key, exc)

    def _store_failed(self, key: str, exc: BaseException) -> None:
        logger.warning(
            "redis tier %r: local store of %r failed: %s: %s",
            self.namespace,
            key,
            type(exc).__name__,
            exc,
        )

    def _forget_key(self, key: str, version: Optional[int] = None) -> bool:
        """Drop ``key`` locally (fills in flight refused); whether it was there."""
        if version is not None:
            self._note(key, version)
        return bool(self.local.invalidate(key))

    def _forget_local(self) -> None:
        """Clear the local tier; every fill in flight is refused, and so is every own
        write in flight (its answer may come after a newer write's missed message)."""
        self._seen_epoch += 1
        self.local.clear()
