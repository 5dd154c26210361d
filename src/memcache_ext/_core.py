"""Choose the cache implementation: the compiled one unless told otherwise.

``MEMCACHE_EXT_PURE_PYTHON=1`` forces the pure-Python core; so does any
interpreter other than CPython, and a missing or broken compiled module.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from ._constants import PURE_PYTHON
from ._core_py import PyLruCache

__all__ = ["IMPLEMENTATION", "IMPORT_ERROR", "NO_WHEEL_HINT", "CLruCache", "LruCache", "PyLruCache"]

NO_WHEEL_HINT = (
    "the compiled memcache_ext core is not available{why}. Install a prebuilt wheel "
    "(`pip install --only-binary memcache-ext memcache-ext`) or build from source with a "
    "C compiler and Cython >= 3.1 (`MEMCACHE_EXT_REQUIRE_EXTENSIONS=1 pip install .` "
    "shows the compiler's error); PyLruCache and LruCache work without it."
)

IMPORT_ERROR: Optional[str] = None
CLruCache: Any = None
if sys.implementation.name != "cpython":
    IMPORT_ERROR = f" on {sys.implementation.name}"
else:
    try:
        from ._core_c import CLruCache
    except ImportError as exc:
        IMPORT_ERROR = f" ({exc})"

# For type checkers, every cache class has the pure twin's types (_core_c.pyi).
LruCache: type[PyLruCache[Any, Any]]
if PURE_PYTHON or IMPORT_ERROR is not None:
    LruCache = PyLruCache
    IMPLEMENTATION = "python"
else:
    LruCache = CLruCache
    IMPLEMENTATION = "c"
