"""The tier's background worker: the invalidation channel, its heartbeat, the breaker's probe.

One flow (see ``_flow``) for both adapters: a thread runs it for
``TieredCache``, a task for ``AsyncTieredCache``. It

* subscribes to the namespace's channel and applies what other instances
  publish (each message names a key and its version; older than what this
  instance has seen: ignored);
* pings Redis over the subscription every ``heartbeat`` seconds: any message
  or reply is news from the channel. A channel silent for ``channel_timeout``
  seconds (a frozen server) or broken (a killed one) is *lost*: the worker
  resubscribes with exponential backoff and jitter, and every resubscription
  drops the local tier (invalidations may have been missed);
* enforces bounded staleness: ``max_stale`` seconds after the channel was last
  heard from, the local tier is dropped and bypassed until the next
  subscription (``max_stale=0``: as soon as the loss is seen);
* probes Redis while the breaker is open (one ``PING`` every
  ``probe_interval``; the request path never probes), and replays the deletes
  of keys written while Redis was away.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from typing import Any, Optional

from ._counters import Counters
from ._flow import Flow, RedisCall
from ._freshness import Freshness
from ._policy import Breaker
from ._versions import parse_message
from .serializers import RateLimitedLog

__all__ = ["Listener", "ChannelSilentError"]

logger = logging.getLogger("memcache_ext.redis")


class ChannelSilentError(TimeoutError):
    """Nothing came over the subscription (not even the heartbeat's reply) in time."""


class Listener(Freshness):
    """The worker's state and flow, over the local tier's freshness bookkeeping."""

    redis: Any
    channel: str
    instance_id: str
    poll_interval: float
    backoff: tuple[float, float]
    max_stale: float
    heartbeat: float
    channel_timeout: float
    counts: Counters
    breaker: Breaker
    log: RateLimitedLog
    _clock_at: float

    def __init__(self, local: Any) -> None:
        super().__init__(local)
        self._stop = threading.Event()  # set when the worker must end
        self._ready = threading.Event()  # set once the worker has subscribed
        self._connected = False  # subscribed, and heard from lately
        self._ever_subscribed = False
        self._channel_changed_at = time.monotonic()
        self._heard_at = 0.0  # monotonic time of the last news from the channel
        self._lost_logged = False
        self._lag_last: Optional[float] = None
        self._lag_max = 0.0
        self._lag_max_at = 0.0

    # -- what the driver and the adapters provide ---------------------------------------

    def _sleep(self, seconds: float) -> Any:
        raise NotImplementedError

    def _close_pubsub(self, pubsub: Any) -> Any:
        raise NotImplementedError

    def _flush_due(self) -> bool:
        raise NotImplementedError

    def _flush_flow(self) -> Flow:
        raise NotImplementedError

    def _probe_flow(self) -> Flow:
        raise NotImplementedError

    def _count_error(self, exc: BaseException) -> str:
        raise NotImplementedError

    def _subscribed_flow(self) -> Flow:
        """Once (re)subscribed: what the driver prepares (its script loaded, say)."""
        yield from ()

    def _clock_flow(self) -> Flow:
        """Measure Redis's clock against ours."""
        yield from ()

    @property
    def connected(self) -> bool:
        """Whether the invalidation channel is up now (subscribed and heard from lately)."""
        return self._connected

    # -- the flow -------------------------------------------------------------------------

    def _listen_flow(self) -> Flow:
        lo, hi = self.backoff
        delay = lo
        pubsub: Any = None
        opened_at = 0.0  # when the current subscription was sent
        retry_at = 0.0  # next subscription attempt
        ping_at = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self.breaker.probe_due(now):
                    if (yield from self._probe_flow()):
                        retry_at = min(retry_at, now)  # Redis is back: subscribe at once
                if self._ever_subscribed and now - self._clock_at > 60.0 and self.breaker.closed:
                    yield from self._clock_flow()
                if self.breaker.closed and self._flush_due():
                    try:
                        yield from self._flush_flow()
                    except Exception as exc:  # noqa: BLE001 - the worker must go on
                        self.log.report(
                            "flush", "redis tier %r: replay failed: %r", self.namespace, exc
                        )
                if pubsub is None and now >= retry_at:
                    pubsub = self.redis.pubsub()
                    opened_at = ping_at = time.monotonic()
                    try:
                        yield RedisCall(pubsub.subscribe, self.channel)
                    except GeneratorExit:
                        pubsub = None
                        raise
                    except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                        retry_at, delay = yield from self._lost(pubsub, exc, delay, hi)
                        pubsub = None
                if pubsub is not None:
                    try:
                        wait = self._wait(
                            time.monotonic(),
                            [ping_at, max(self._heard_at, opened_at) + self.channel_timeout],
                        )
                        msg = yield functools.partial(
                            pubsub.get_message, ignore_subscribe_messages=False, timeout=wait
                        )
                        while msg is not None:
                            if self._on_pubsub(msg):
                                delay = lo
                                yield from self._subscribed_flow()
                            msg = yield functools.partial(
                                pubsub.get_message, ignore_subscribe_messages=False, timeout=0.0
                            )
                        now = time.monotonic()
                        if now - max(self._heard_at, opened_at) > self.channel_timeout:
                            raise ChannelSilentError(
                                f"no reply on the channel for {self.channel_timeout:g} s"
                            )
                        if self._ever_subscribed and now >= ping_at:
                            ping_at = now + self.heartbeat
                            yield RedisCall(pubsub.ping)
                    except GeneratorExit:
                        pubsub = None
                        raise
                    except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                        retry_at, delay = yield from self._lost(pubsub, exc, delay, hi)
                        pubsub = None
                else:
                    yield functools.partial(self._sleep, self._wait(time.monotonic(), [retry_at]))
                self._check_stale(time.monotonic())
        finally:
            if pubsub is not None:
                yield from self._drop_pubsub(pubsub)
            self._set_down()

    def _wait(self, now: float, events: list[float]) -> float:
        """Seconds until the worker has something to do (at most ``poll_interval``)."""
        events = [*events, now + self.poll_interval]
        if not self._bypass and self.max_stale > 0:
            events.append(self._heard_at + self.max_stale)
        if not self.breaker.closed:
            events.append(self.breaker.next_probe)
        return max(0.001, min(events) - now)

    def _drop_pubsub(self, pubsub: Any) -> Flow:
        try:
            yield functools.partial(self._close_pubsub, pubsub)
        except Exception:  # noqa: BLE001, S110 - closing a broken connection
            pass

    def _lost(self, pubsub: Any, exc: BaseException, delay: float, hi: float) -> Flow:
        """The channel failed: drop it, say so, and back off (jittered, doubling up to
        ``hi``); returns (when to retry, the next delay)."""
        yield from self._drop_pubsub(pubsub)
        self._channel_failed(exc)
        return time.monotonic() + random.uniform(delay / 2, delay), min(delay * 2, hi)

    # -- channel state ----------------------------------------------------------------------

    def _channel_failed(self, exc: BaseException) -> None:
        kind = self._count_error(exc)
        if kind in ("timeout", "connection"):
            self.breaker.fail(exc)
        was = self._set_down()
        if was:
            self.counts.add("channel_losses")
        if not self._lost_logged:
            self._lost_logged = True
            logger.warning(
                "redis tier %r: invalidation channel lost (%s: %s); resubscribing with "
                "backoff; local entries served for at most max_stale=%g s more",
                self.namespace,
                type(exc).__name__,
                exc,
                self.max_stale,
            )
        if self.max_stale == 0:
            self._enter_bypass()

    def _set_down(self) -> bool:
        """The channel is down; whether it was up."""
        with self._state_lock:
            was = self._connected
            if was:
                self._connected = False
                self._channel_changed_at = time.monotonic()
        return was

    def _check_stale(self, now: float) -> None:
        if self._bypass:
            return
        if self.max_stale > 0 and now > self._heard_at + self.max_stale:
            self._enter_bypass()

    def _enter_bypass(self) -> None:
        with self._state_lock:
            if self._bypass:
                return
            self._bypass = True
            self._forget_local()  # refuses every fill in flight
        self.counts.add("stale_bypasses")
        self.counts.add("local_clears")
        logger.warning(
            "redis tier %r: no news from the invalidation channel for %g s (max_stale): "
            "local tier dropped and bypassed until it is back",
            self.namespace,
            max(self.max_stale, 0.0),
        )

    # -- what arrives -------------------------------------------------------------------------

    def _on_pubsub(self, msg: dict[str, Any]) -> bool:
        """Apply one pub/sub message; True for the confirmation of our subscription."""
        self._heard_at = time.monotonic()
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
            src, op, key, version, sent_us = parse_message(data)
        except ValueError as exc:
            self.counts.add("bad_messages")
            self.log.report(
                "message",
                "redis tier %r: unparseable invalidation message %.200r ignored (%s)",
                self.namespace,
                data,
                exc,
            )
            return
        if sent_us is not None:
            self._note_lag(max(0.0, time.time() - sent_us / 1e6))
        if src == self.instance_id:
            self.counts.add("invalidations_ignored_own")
            return
        if op == "*":
            self._forget_local()
            self.counts.add("invalidations_received")
            self.counts.add("local_clears")
            return
        with self._state_lock:  # against an own write storing its older version meanwhile
            if version is not None and version <= self._seen.get(key, -1):
                self.counts.add("invalidations_ignored_old")
                return
            self._forget_key(key, version)
        self.counts.add("invalidations_received")

    def _note_lag(self, lag: float) -> None:
        now = time.monotonic()
        self._lag_last = lag
        if lag >= self._lag_max or now - self._lag_max_at > 60.0:
            self._lag_max, self._lag_max_at = lag, now

    def _on_subscribed(self) -> None:
        now = time.monotonic()
        with self._state_lock:
            again = self._ever_subscribed
            self._ever_subscribed = True
            # Anything read before now may have missed an invalidation: drop it
            # (refusing the fills in flight), then use the local tier again.
            self._forget_local()
            self._bypass = False
            if not self._connected:
                self._connected = True
                self._channel_changed_at = now
            self._lost_logged = False
        self.breaker.succeeded()
        self._ready.set()
        self.counts.add("local_clears")
        if again:
            self.counts.add("reconnects")
            logger.info(
                "redis tier %r: invalidation channel back; local tier dropped", self.namespace
            )

    def lag(self) -> tuple[Optional[float], float]:
        """(the last message's delay from publish to here, the largest in the last minute)."""
        recent = time.monotonic() - self._lag_max_at <= 60.0
        return self._lag_last, self._lag_max if recent else 0.0
