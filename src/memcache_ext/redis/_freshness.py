"""Freshness: a value read before its key was invalidated is never stored locally.

Every invalidation (received, or one of this instance's own writes) bumps a
generation; a read remembers the generation it started at, and its value is
stored in the local tier only if no invalidation of its key (or of
everything) came since. So a slow read cannot reinstall a value another
instance has just replaced.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

__all__ = ["Freshness"]

logger = logging.getLogger("memcache_ext.redis")

_MAX_KEY_GENS = 65_536  # per-key generations kept; past it, everything in flight is stale
# pop()'s default here: not _constants.MISSING, which the cores take as "no default given".
_ABSENT: Any = object()


class Freshness:
    """The local tier and the generations that guard it (``_lock`` guards both)."""

    namespace: str

    def __init__(self, local: Any) -> None:
        self.local = local
        self._lock = threading.RLock()  # generations + local stores; never held over I/O
        self._gen = 0  # bumped by every invalidation
        self._floor_gen = 0  # reads started before this are stale
        self._key_gen: dict[str, int] = {}

    def _bump(self, key: str) -> None:
        """Under ``_lock``: ``key`` changed; reads of it in flight are stale."""
        self._gen += 1
        if len(self._key_gen) >= _MAX_KEY_GENS:
            self._key_gen.clear()
            self._floor_gen = self._gen
        self._key_gen[key] = self._gen

    def _stale(self, key: str, since: int) -> bool:
        return since < self._floor_gen or self._key_gen.get(key, 0) > since

    def _forget_local(self) -> None:
        """Clear the local tier; reads in flight must not refill it with what they read."""
        with self._lock:
            self._gen += 1
            self._floor_gen = self._gen
            self._key_gen.clear()
            self.local.clear()

    def _forget_key(self, key: str) -> bool:
        """Drop ``key`` locally (reads of it in flight are stale); whether it was there."""
        with self._lock:
            self._bump(key)
            return self.local.pop(key, _ABSENT) is not _ABSENT

    def _store_if_fresh(self, key: str, value: Any, since: int, ttl: Optional[float]) -> None:
        with self._lock:
            if not self._stale(key, since):
                self._store_local(key, value, ttl)

    def _store_local(self, key: str, value: Any, ttl: Optional[float]) -> None:
        try:
            if ttl is None:
                self.local.set(key, value)
            else:
                self.local.set(key, value, ttl=ttl)
        except Exception as exc:  # noqa: BLE001 - e.g. a sizeof that raises: not cached
            logger.warning(
                "redis tier %r: local store of %r failed: %s: %s",
                self.namespace,
                key,
                type(exc).__name__,
                exc,
            )

    def _own_change(
        self, key: str, value: Any, since: int, ttl: Optional[float], store: bool
    ) -> None:
        """After this instance's write (``store``: keep ``value``) or delete of ``key``."""
        with self._lock:
            fresh = not self._stale(key, since)
            self._bump(key)
            if store and fresh:
                self._store_local(key, value, ttl)
            else:
                self.local.pop(key, None)
