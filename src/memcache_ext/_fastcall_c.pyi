"""Types of the compiled call paths (twins: _fastcall_py)."""

from collections.abc import Callable
from typing import Any

from ._core_py import PyLruCache

class CachedCall:
    def __init__(
        self,
        cache: PyLruCache[Any, Any],
        miss: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any],
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

class GetOr:
    def __init__(
        self, cache: PyLruCache[Any, Any], fallback: Callable[[Any, Any], Any]
    ) -> None: ...
    def __call__(self, key: Any, default: Any = None) -> Any: ...
