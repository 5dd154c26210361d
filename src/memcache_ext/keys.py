"""The one rule for turning a call's arguments into a cache key.

``make_key(args, kwargs)`` is what ``cached`` uses by default, in Python and in
the compiled call path (``_fastcall``), which reads ``KWARGS_MARK`` and
``FAST_TYPES`` from here:

* a single argument of a simple type (``FAST_TYPES``) is its own key, so no
  tuple is built or hashed; int, float and bool are all there so that
  ``f(1)``, ``f(1.0)`` and ``f(True)`` share an entry, as with
  ``functools.lru_cache(typed=False)``;
* otherwise the key is the tuple of positional arguments, followed by
  ``KWARGS_MARK`` and the sorted keyword items when there are any (keyword
  order does not matter). Multi-argument keys are tuples, so they never
  collide with a single simple argument.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAST_TYPES", "KWARGS_MARK", "make_key"]


class _KwargsMark:
    """Separates positional from keyword arguments in a key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<kwargs>"

    def __reduce__(self) -> str:
        return "KWARGS_MARK"


KWARGS_MARK: Any = _KwargsMark()

#: A single argument of exactly one of these types is its own key.
FAST_TYPES: frozenset[type] = frozenset({int, str, float, bool, bytes, type(None)})


def make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The default cache key for a call with ``args`` and ``kwargs``."""
    if kwargs:
        return (*args, KWARGS_MARK, *sorted(kwargs.items()))
    if len(args) == 1 and type(args[0]) in FAST_TYPES:
        return args[0]
    return args
