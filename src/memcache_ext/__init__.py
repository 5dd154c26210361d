"""memcache_ext: fast LRU/TTL caches bounded by entries and by real bytes.

``LruCache`` is the best implementation available here (``IMPLEMENTATION``
says which: "c" or "python"); ``CLruCache`` is the compiled one and
``PyLruCache`` the pure-Python twin. The memory-management helpers are loaded
on first use, so importing the cache imports nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._core import IMPLEMENTATION, LruCache, PyLruCache
from ._sizeof import deep_sizeof

__version__ = "0.1.0"

_LAZY = {
    "CacheManager": "manager",
    "cache_manager": "manager",
    "BoundedDeque": "deque",
    "SingletonMeta": "singleton",
    "cached": "decorators",
    "GCStats": "gcstats",
    "gc_stats": "gcstats",
}

__all__ = [
    "CLruCache", "PyLruCache", "LruCache", "IMPLEMENTATION", "deep_sizeof",
    "__version__", *_LAZY,
]

if TYPE_CHECKING:
    from ._core_c import CLruCache


def __getattr__(name: str) -> Any:
    if name == "CLruCache":
        from ._core import compiled_class

        return compiled_class()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memcache_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
