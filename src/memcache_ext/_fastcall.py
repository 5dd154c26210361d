"""Call paths for ``cached`` and the tiers: compiled over a CLruCache, else pure.

``cached_call(cache, miss)`` and ``get_or(cache, fallback)`` (see
``_fastcall_py``) return the compiled callable when ``cache`` is a
``CLruCache`` and the compiled module is in use, and the pure-Python one for
any other cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _fastcall_py
from ._core import IMPLEMENTATION

__all__ = ["cached_call", "get_or"]

#: The compiled cache class the compiled call paths accept, or None.
_compiled: Any = None
if IMPLEMENTATION == "c":
    try:
        from ._fastcall_c import CachedCall, GetOr
    except ImportError:  # the core compiled and this module did not: the pure paths
        pass
    else:
        from . import _core_c

        _compiled = _core_c.CLruCache

if _compiled is not None:

    def cached_call(cache: Any, miss: Callable[..., Any]) -> Callable[..., Any]:
        if type(cache) is _compiled:
            return CachedCall(cache, miss)
        return _fastcall_py.cached_call(cache, miss)

    def get_or(cache: Any, fallback: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        if type(cache) is _compiled:
            return GetOr(cache, fallback)
        return _fastcall_py.get_or(cache, fallback)
else:
    cached_call = _fastcall_py.cached_call
    get_or = _fastcall_py.get_or
