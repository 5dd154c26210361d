"""Argument checks and their messages, shared by both cache implementations.

Both cores call these, so a bad argument gets the same exception (TypeError
for a wrong type, ValueError for a wrong value) and the same message whichever
implementation is active.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Callable
from typing import Any, Optional

from ._constants import MIB

#: Raised when a key's ``__eq__`` keeps changing the cache during lookups.
MUTATED_DURING_LOOKUP = "cache changed during key comparison too many times"
#: Raised when resize's first byte bound keeps being taken away while it measures.
BOUND_TAKEN_DURING_MEASURE = "the byte bound was taken away too many times while resize measured"
#: Raised when a pickled state would put a byte bound over entries nobody measured.
NO_BOUND_ON_HELD_ENTRIES = (
    "cannot set a byte bound on a cache that holds unmeasured entries; use resize(max_bytes=...)"
)


def _typename(obj: object) -> str:
    return type(obj).__name__


def check_bool(name: str, value: Any) -> bool:
    """A flag must be a bool: ``"false"`` from the environment is not False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {_typename(value)}")
    return value


def check_size(name: str, value: Any) -> Optional[int]:
    """Validate maxsize/max_bytes: None or an int >= 0 (bool is refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {_typename(value)}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if value > sys.maxsize:
        raise ValueError(f"{name} must be <= {sys.maxsize}, got {value}")
    return int(value)


def check_ttl(value: Any) -> Optional[float]:
    """Validate a TTL: None or a real number > 0 (inf means never)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"ttl must be a number or None, not {_typename(value)}")
    seconds = float(value)
    if not seconds > 0:  # also refuses NaN
        raise ValueError(f"ttl must be > 0, got {seconds!r}")
    return seconds


def check_callable(name: str, value: Any) -> Optional[Callable[..., Any]]:
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable or None, not {_typename(value)}")
    return value  # type: ignore[no-any-return]  # callable(): a Callable


def check_fraction(value: Any, name: str = "fraction") -> float:
    """Validate a fraction in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {_typename(value)}")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def check_limit(value: Any) -> int:
    """Validate expire's ``limit``: an int >= 1, held at sys.maxsize."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"limit must be an int or None, not {_typename(value)}")
    if value < 1:
        raise ValueError(f"limit must be >= 1, got {value}")
    return min(value, sys.maxsize)


def check_mb(name: str, value: Any) -> Optional[float]:
    """Validate None or a size in MiB: finite, > 0, and from 1 byte to sys.maxsize bytes."""
    check_positive(name, value)
    if value is not None and not 1 <= value * MIB <= sys.maxsize:
        raise ValueError(f"{name} must be from 1 byte to {sys.maxsize >> 20} MB, got {value!r}")
    return None if value is None else float(value)


def check_max_total(value: Any) -> Optional[int]:
    """Validate None or a byte total: an int from 1 to sys.maxsize."""
    check_positive("max_total_bytes", value, integer=True)
    if value is not None and value > sys.maxsize:
        raise ValueError(f"max_total_bytes must be <= {sys.maxsize}, got {value}")
    return value  # type: ignore[no-any-return]  # an int or None, checked


def check_collect(value: Any) -> Any:
    """Validate a cleanup's ``collect``: True, False or a generation 0-2."""
    if value not in (True, False, 0, 1, 2) or not isinstance(value, int):
        raise ValueError(f"collect must be True, False or a generation 0-2, got {value!r}")
    return value


def check_positive(name: str, value: Any, *, integer: bool = False) -> Any:
    """Validate None or a finite number > 0 (an int with ``integer``)."""
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(
            f"{name} must be {'an int' if integer else 'a number'} or None, not {_typename(value)}"
        )
    if not value > 0 or (not integer and math.isinf(value)):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return value


def check_nbytes(value: Any) -> int:
    """Validate what a ``sizeof`` callable returned."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"sizeof() must return an int, not {_typename(value)}")
    if value < 0:
        raise ValueError(f"sizeof() must return a size >= 0, got {value}")
    return int(value)


#: A pickled entry's last field: its frequency (bits 0-1) and S3-FIFO queue (bit 2).
_ENTRY_STATE_MAX = 7


def check_state(state: Any, max_nbytes: int) -> tuple[Any, ...]:
    """Validate a pickled cache's state (what ``__reduce__`` made) before any of it is used.

    Returns ``(max_bytes, sizeof, timer, on_evict, policy, entries)`` with
    ``entries`` a list of ``(key, value, remaining, nbytes, state)`` whose
    ``remaining`` is None or a float and whose ``nbytes`` is at most
    ``max_nbytes``. A bad field anywhere, or a key that cannot be hashed,
    raises before the cache changes.
    """
    if not isinstance(state, tuple):
        raise TypeError(f"state must be a tuple of 6 items, not {_typename(state)}")
    if len(state) != 6:
        raise TypeError(f"state must be a tuple of 6 items, not of {len(state)}")
    max_bytes, sizeof, timer, on_evict, policy, entries = state
    checked = []
    for entry in entries:
        if not isinstance(entry, tuple) or len(entry) != 5:
            raise TypeError(
                "a pickled entry must be a (key, value, remaining, nbytes, state) tuple"
            )
        key, value, remaining, nbytes, bits = entry
        hash(key)  # an unhashable key fails here, before the cache changes
        if remaining is not None:
            if isinstance(remaining, bool) or not isinstance(remaining, numbers.Real):
                raise TypeError(
                    f"a pickled entry's remaining time must be a number or None,"
                    f" not {_typename(remaining)}"
                )
            remaining = float(remaining)
            if not math.isfinite(remaining):
                raise ValueError(
                    f"a pickled entry's remaining time must be finite, got {remaining!r}"
                )
        if isinstance(nbytes, bool) or not isinstance(nbytes, int):
            raise TypeError(f"a pickled entry's size must be an int, not {_typename(nbytes)}")
        if nbytes < 0:
            raise ValueError(f"a pickled entry's size must be >= 0, got {nbytes}")
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise TypeError(f"a pickled entry's state must be an int, not {_typename(bits)}")
        if not 0 <= bits <= _ENTRY_STATE_MAX:
            raise ValueError(
                f"a pickled entry's state must be an int in 0..{_ENTRY_STATE_MAX}, got {bits!r}"
            )
        checked.append((key, value, remaining, min(int(nbytes), max_nbytes), int(bits)))
    return (
        check_size("max_bytes", max_bytes),
        check_callable("sizeof", sizeof),
        check_callable("timer", timer),
        check_callable("on_evict", on_evict),
        check_policy(policy),
        checked,
    )


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


class SizeofWithoutBoundWarning(UserWarning):
    """A cache got ``sizeof`` but no ``max_bytes``: nothing is measured yet."""


#: The eviction policies, by name (the compiled core numbers them in this order).
POLICIES = ("lru", "s3fifo")

#: The constructor's parameters, in order, with their defaults (both cores).
CACHE_PARAMS = (
    ("maxsize", 128),
    ("ttl", None),
    ("max_bytes", None),
    ("sizeof", None),
    ("timer", None),
    ("on_evict", None),
    ("policy", "lru"),
)
_POSITIONAL = 2  # maxsize and ttl; the rest are keyword-only


def check_policy(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"policy must be a str, not {_typename(value)}")
    if value not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(map(repr, POLICIES))}, got {value!r}")
    return value


def parse_cache_args(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], stacklevel: int = 2
) -> tuple[
    Optional[int],
    Optional[float],
    Optional[int],
    Optional[Callable[..., Any]],
    Optional[Callable[..., Any]],
    Optional[Callable[..., Any]],
    str,
]:
    """Bind and check ``name(maxsize=128, ttl=None, *, max_bytes=None, sizeof=None,
    timer=None, on_evict=None, policy="lru")``: the same messages from both cores."""
    if len(args) > _POSITIONAL:
        raise TypeError(
            f"{name}() takes from 0 to {_POSITIONAL} positional arguments "
            f"but {len(args)} were given"
        )
    bound = dict(CACHE_PARAMS)
    names = [p for p, _ in CACHE_PARAMS]
    for param, value in zip(names, args, strict=False):
        bound[param] = value
    for param, value in kwargs.items():
        if param not in bound:
            raise TypeError(f"{name}() got an unexpected keyword argument {param!r}")
        if param in names[: len(args)]:
            raise TypeError(f"{name}() got multiple values for argument {param!r}")
        bound[param] = value
    maxsize = check_size("maxsize", bound["maxsize"])
    max_bytes = check_size("max_bytes", bound["max_bytes"])
    sizeof = check_callable("sizeof", bound["sizeof"])
    if sizeof is not None and max_bytes is None:
        warnings.warn(
            f"{name}(sizeof=...) without max_bytes measures nothing until "
            "resize(max_bytes=...) sets a byte bound",
            SizeofWithoutBoundWarning,
            stacklevel=stacklevel + 1,
        )
    return (
        maxsize,
        check_ttl(bound["ttl"]),
        max_bytes,
        sizeof,
        check_callable("timer", bound["timer"]),
        check_callable("on_evict", bound["on_evict"]),
        check_policy(bound["policy"]),
    )


class LazySignature:
    """``__signature__`` of both cache classes: the documented constructor
    signature, built on first use (importing inspect costs more than the cache)."""

    _signature: Any = None

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if LazySignature._signature is None:
            import inspect

            param = inspect.Parameter
            LazySignature._signature = inspect.Signature(
                [
                    param(
                        name,
                        param.POSITIONAL_OR_KEYWORD if i < _POSITIONAL else param.KEYWORD_ONLY,
                        default=default,
                    )
                    for i, (name, default) in enumerate(CACHE_PARAMS)
                ]
            )
        return LazySignature._signature
