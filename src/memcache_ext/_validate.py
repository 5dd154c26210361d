"""Argument checks and their messages, shared by both cache implementations.

Both cores call these, so a bad argument gets the same exception (TypeError
for a wrong type, ValueError for a wrong value) and the same message whichever
implementation is active.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

#: Raised when a key's ``__eq__`` keeps changing the cache during lookups.
MUTATED_DURING_LOOKUP = "cache changed during key comparison too many times"


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
