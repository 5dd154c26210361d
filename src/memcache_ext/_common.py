"""Argument checks and constants shared by both cache implementations.

Both cores call these, so a bad argument gets the same exception type and the
same message whichever implementation is active.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Callable, Optional

#: Reasons passed to ``on_evict`` (automatic removals only).
EVICT_REASONS = ("capacity", "bytes", "expired", "trim")

#: How often a lookup restarts when a key's ``__eq__`` keeps changing the cache
#: under it, before it gives up with RuntimeError (dict restarts forever).
MAX_LOOKUP_RESTARTS = 64

MUTATED_DURING_LOOKUP = "cache changed during key comparison too many times"

# Sentinel for "argument not given" in resize().
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "<unset>"})()


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to something other than 0/false/no."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


#: MEMCACHE_EXT_PURE_PYTHON=1 forces the pure-Python cache and deep_sizeof.
PURE_PYTHON = env_flag("MEMCACHE_EXT_PURE_PYTHON")


def _typename(obj: object) -> str:
    return type(obj).__name__


def check_size(name: str, value: Any) -> Optional[int]:
    """Validate maxsize/max_bytes: None or an int >= 0 (bool is refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {_typename(value)}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_ttl(value: Any) -> Optional[float]:
    """Validate a TTL: None or a real number > 0 (inf means never)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"ttl must be a number or None, not {_typename(value)}")
    value = float(value)
    if not value > 0:  # also refuses NaN
        raise ValueError(f"ttl must be > 0, got {value!r}")
    return value


def check_callable(name: str, value: Any) -> Optional[Callable[..., Any]]:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, not {_typename(value)}")
    return value


def check_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fraction must be a number, not {_typename(value)}")
    if not 0 < value <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {value!r}")
    return float(value)


def check_nbytes(value: Any) -> int:
    """Validate what a ``sizeof`` callable returned."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"sizeof() must return an int, not {_typename(value)}")
    if value < 0:
        raise ValueError(f"sizeof() must return a size >= 0, got {value}")
    return int(value)


def iter_pairs(other: Any, kwargs: dict[str, Any]) -> Any:
    """The (key, value) pairs of ``update(other, **kwargs)``, as dict.update reads them."""
    if hasattr(other, "keys"):
        for key in other.keys():
            yield key, other[key]
    else:
        for key, value in other:
            yield key, value
    yield from kwargs.items()


def trim_count(size: int, fraction: float) -> int:
    """How many entries ``trim(fraction)`` evicts from ``size`` entries."""
    return min(size, math.ceil(size * fraction))


def stats_dict(
    size: int,
    maxsize: Optional[int],
    nbytes: int,
    max_bytes: Optional[int],
    hits: int,
    misses: int,
    by_reason: dict[str, int],
    rejected: int,
    ttl: Optional[float],
) -> dict[str, Any]:
    lookups = hits + misses
    evictions = by_reason["capacity"] + by_reason["bytes"] + by_reason["trim"]
    return {
        "size": size,
        "maxsize": maxsize,
        "nbytes": nbytes,
        "max_bytes": max_bytes,
        "hits": hits,
        "misses": misses,
        "hit_rate": hits / lookups if lookups else 0.0,
        "evictions": evictions,
        "evictions_by_reason": {r: by_reason[r] for r in ("capacity", "bytes", "trim")},
        "expirations": by_reason["expired"],
        "rejected": rejected,
        "ttl": ttl,
    }


def repr_cache(name: str, items: list[tuple[Any, Any]], maxsize: Optional[int]) -> str:
    body = ", ".join(f"{k!r}: {v!r}" for k, v in items)
    return f"{name}({{{body}}}, maxsize={maxsize!r})"
