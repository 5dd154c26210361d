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

if IMPLEMENTATION == "c":
    from ._core_c import CLruCache
    from ._fastcall_c import CachedCall, GetOr

    def cached_call(cache: Any, miss: Callable[..., Any]) -> Callable[..., Any]:
        if type(cache) is CLruCache:
            return CachedCall(cache, miss)
        return _fastcall_py.cached_call(cache, miss)

    def get_or(cache: Any, fallback: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        if type(cache) is CLruCache:
            return GetOr(cache, fallback)
        return _fastcall_py.get_or(cache, fallback)
else:
    cached_call = _fastcall_py.cached_call
    get_or = _fastcall_py.get_or
