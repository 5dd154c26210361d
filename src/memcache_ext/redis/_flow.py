"""Flows: the tier's operations written once, for a sync and an async adapter.

An operation (read, load, write, delete, clear, the background worker) is a
generator, a *flow*, that yields each call it needs as a zero-argument
callable: a Redis command (``RedisCall(self.redis.hmget, rkey, "v", "d")``),
the caller's loader, or one of the adapter's own calls (``_sleep``,
``_close_pubsub``). The adapter makes the call (``TieredCache`` calls it;
``AsyncTieredCache`` also awaits what it returns, a :class:`RedisCall` under
the tier's deadline) and resumes the flow with ``advance``: the result is sent
back into the flow, or the exception the call raised is thrown into it, where
the flow decides (a Redis error is counted and answered from the local tier;
anything else reaches the caller). So the adapters differ only in how they
call, never in what the tier does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any, Optional

__all__ = ["Flow", "RedisCall", "advance"]

#: A flow: yields zero-argument calls, is sent their results, returns the answer.
Flow = Generator[Callable[[], Any], Any, Any]


class RedisCall(functools.partial):  # type: ignore[type-arg]  # a partial of any command
    """A call to Redis, made under the per-call deadline (a loader or a sleep is not)."""

    __slots__ = ()


def advance(flow: Flow, value: Any, error: Optional[BaseException]) -> tuple[bool, Any]:
    """Resume ``flow`` with a call's result (or the exception it raised).

    Returns ``(False, the next call)``, or ``(True, the flow's answer)`` once it is done.
    """
    try:
        return False, (flow.send(value) if error is None else flow.throw(error))
    except StopIteration as stop:
        return True, stop.value
