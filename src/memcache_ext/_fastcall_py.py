"""Pure-Python call paths for ``cached`` and the tiers (twins of ``_fastcall_c``).

``cached_call(cache, miss)`` returns ``f(*args, **kwargs)``: build the default
key (``keys.make_key``), return the cached value, or ``miss(key, args,
kwargs)`` on a miss. ``get_or(cache, fallback)`` returns ``get(key,
default=None)``: the cached value, or ``fallback(key, default)`` on a miss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .keys import make_key

__all__ = ["cached_call", "get_or"]

_MISSING: Any = object()


def cached_call(
    cache: Any, miss: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]
) -> Callable[..., Any]:
    """The hit path of ``cached`` for a plain function: one key build, one get."""
    if not callable(miss):
        raise TypeError(f"miss must be callable, not {type(miss).__name__}")
    get = cache.get

    def call(*args: Any, **kwargs: Any) -> Any:
        key = make_key(args, kwargs)
        value = get(key, _MISSING)
        if value is _MISSING:
            return miss(key, args, kwargs)
        return value

    return call


def get_or(cache: Any, fallback: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    """``get(key, default=None)`` over ``cache``, ``fallback(key, default)`` on a miss."""
    if not callable(fallback):
        raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
    get = cache.get

    def get_or_fallback(key: Any, default: Any = None) -> Any:
        value = get(key, _MISSING)
        if value is _MISSING:
            return fallback(key, default)
        return value

    return get_or_fallback
