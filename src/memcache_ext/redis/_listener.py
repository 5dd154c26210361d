"""The invalidation listener: subscribe, apply what other instances publish, recover.

One flow (see ``_driver``) for both adapters: a thread runs it for
``TieredCache``, a task for ``AsyncTieredCache``. Every (re)subscription
clears the local tier (invalidations may have been missed while away);
pub/sub is at-most-once, so ``local_ttl`` bounds how long a copy can live.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
from typing import Any

from ._counters import Counters
from ._flow import Flow
from ._freshness import Freshness

__all__ = ["Listener"]

logger = logging.getLogger("memcache_ext.redis")


class Listener(Freshness):
    """The listener's state and flow, over the tier's freshness bookkeeping."""

    redis: Any
    channel: str
    instance_id: str
    poll_interval: float
    backoff: tuple[float, float]
    counts: Counters
    _down_until: float
    _pending: dict[str, None]

    def __init__(self, local: Any) -> None:
        super().__init__(local)
        self._stop = threading.Event()  # set when the listener must end
        self._ready = threading.Event()  # set once the listener has subscribed
        self._connected = False  # listener subscribed now
        self._ever_subscribed = False
        self._listener_error_logged = False

    def _sleep(self, seconds: float) -> Any:
        raise NotImplementedError

    def _close_pubsub(self, pubsub: Any) -> Any:
        raise NotImplementedError

    def _flush_flow(self) -> Flow:
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        """Whether the listener is subscribed now."""
        return self._connected

    def _listen_flow(self) -> Flow:
        """The invalidation listener: subscribe, apply what arrives, flush pending deletes;
        on any error, back off (full jitter, exponential) and subscribe again."""
        delay = self.backoff[0]
        try:
            while not self._stop.is_set():
                pubsub = None
                try:
                    pubsub = self.redis.pubsub()
                    yield functools.partial(pubsub.subscribe, self.channel)
                    while not self._stop.is_set():
                        msg = yield functools.partial(
                            pubsub.get_message, timeout=self.poll_interval
                        )
                        if msg is not None and self._on_pubsub(msg):
                            delay = self.backoff[0]
                        if self._pending and self._connected:
                            yield from self._flush_flow()
                except GeneratorExit:  # the flow is discarded: no more calls, not even close
                    pubsub = None
                    raise
                except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                    self._on_listener_error(exc)
                    sleep = random.uniform(delay / 2, delay)
                    delay = min(delay * 2, self.backoff[1])
                    yield functools.partial(self._sleep, sleep)
                finally:
                    if pubsub is not None:
                        try:
                            yield functools.partial(self._close_pubsub, pubsub)
                        except Exception:  # noqa: BLE001, S110 - closing a broken connection
                            pass
        finally:
            self._connected = False

    def _on_listener_error(self, exc: BaseException) -> None:
        self._connected = False
        self.counts.add("redis_errors")
        if not self._listener_error_logged:
            self._listener_error_logged = True
            logger.warning(
                "redis tier %r: invalidation listener lost Redis (%s: %s); retrying with backoff",
                self.namespace,
                type(exc).__name__,
                exc,
            )

    # -- invalidations received ----------------------------------------------------

    def _on_pubsub(self, msg: dict[str, Any]) -> bool:
        """Apply one pub/sub message; True for the confirmation of our subscription."""
        kind = msg.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == "subscribe":
            self._on_subscribed()
            return True
        if kind == "message":
            self._on_message(msg.get("data"))
        return False

    def _on_message(self, data: Any) -> None:
        try:
            src, op, key = json.loads(data)
            if not (isinstance(src, str) and isinstance(op, str) and isinstance(key, str)):
                raise ValueError("bad field types")
        except Exception:  # noqa: BLE001 - someone else's garbage on our channel
            self.counts.add("bad_messages")
            logger.debug("redis tier %r: bad invalidation message %r", self.namespace, data)
            return
        if src == self.instance_id:
            self.counts.add("invalidations_ignored_own")
            return
        self.counts.add("invalidations_received")
        if op == "*":
            self._forget_local()
            self.counts.add("local_clears")
        else:
            self._forget_key(key)

    def _on_subscribed(self) -> None:
        with self._lock:
            again = self._ever_subscribed
            self._ever_subscribed = True
            self._connected = True
            self._listener_error_logged = False
            clear = again or len(self.local) > 0
            self._forget_local()  # anything read before now may have missed an invalidation
        self._down_until = 0.0
        self._ready.set()
        if again:
            self.counts.add("reconnects")
            logger.info("redis tier %r: listener resubscribed; local tier cleared", self.namespace)
        if clear:
            self.counts.add("local_clears")
