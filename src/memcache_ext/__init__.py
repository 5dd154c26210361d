"""memcache_ext: fast caches bounded by entries and by real bytes.

``LruCache`` is the best implementation available here (``IMPLEMENTATION``
says which: "c" or "python"); ``CLruCache`` is the compiled one and
``PyLruCache`` the pure-Python twin. The memory-management helpers are loaded
on first use, so importing the cache imports nothing else.
"""

from __future__ import annotations

import dis
import importlib
import sys
from typing import TYPE_CHECKING, Any

from . import _core
from ._core import IMPLEMENTATION, LruCache, PyLruCache
from ._sizeof import deep_sizeof

_LAZY = {
    "__version__": "_version",  # importlib.metadata costs more than the cache itself
    "CacheManager": "manager",
    "cache_manager": "manager",
    "BoundedDeque": "deque",
    "SingletonMeta": "singleton",
    "cached": "decorators",
    "GCStats": "gcstats",
    "gc_stats": "gcstats",
}

# Names that cannot be had here (no compiled core) are left out, as propcache
# does: `from memcache_ext import *`, `hasattr()` and pydoc keep working.
__all__ = [
    "CLruCache",
    "PyLruCache",
    "LruCache",
    "IMPLEMENTATION",
    "deep_sizeof",
    "__version__",
    "CacheManager",
    "cache_manager",
    "BoundedDeque",
    "SingletonMeta",
    "cached",
    "GCStats",
    "gc_stats",
]
if _core.IMPORT_ERROR is not None:
    __all__.remove("CLruCache")

if TYPE_CHECKING:  # the lazy names, typed (at run time __getattr__ imports them)
    from ._core_c import CLruCache as CLruCache
    from ._version import __version__ as __version__
    from .decorators import cached as cached
    from .deque import BoundedDeque as BoundedDeque
    from .gcstats import GCStats as GCStats
    from .gcstats import gc_stats as gc_stats
    from .manager import CacheManager as CacheManager
    from .manager import cache_manager as cache_manager
    from .singleton import SingletonMeta as SingletonMeta

_IMPORT_FROM = dis.opmap["IMPORT_FROM"]


def __getattr__(name: str) -> Any:
    if name == "CLruCache":
        if _core.IMPORT_ERROR is None:
            return _core.CLruCache
        # getattr()/hasattr() get AttributeError; `from memcache_ext import
        # CLruCache` gets the ImportError that says how to get the wheel
        # (Python turns an AttributeError there into a message without it).
        caller = sys._getframe(1)
        message = _core.NO_WHEEL_HINT.format(why=_core.IMPORT_ERROR)
        if caller.f_code.co_code[caller.f_lasti] == _IMPORT_FROM:
            raise ImportError(message, name=__name__)
        raise AttributeError(message)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'memcache_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
