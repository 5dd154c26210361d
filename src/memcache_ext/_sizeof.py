"""deep_sizeof: the compiled implementation when available, else the pure one.

``MEMCACHE_EXT_PURE_PYTHON=1`` forces the pure-Python twin (same results,
slower). ``IMPLEMENTATION`` says which one ``deep_sizeof`` is ("c" or
"python"); both take ``deep_sizeof(obj, *, budget=DEFAULT_BUDGET)``.
"""

from __future__ import annotations

from ._constants import PURE_PYTHON as _PURE
from ._sizeof_py import DEFAULT_BUDGET
from ._sizeof_py import deep_sizeof as py_deep_sizeof

__all__ = ["deep_sizeof", "DEFAULT_BUDGET", "IMPLEMENTATION", "py_deep_sizeof"]

if _PURE:
    deep_sizeof = py_deep_sizeof
    IMPLEMENTATION = "python"
else:
    try:
        from ._sizeof_c import deep_sizeof
    except ImportError:
        deep_sizeof = py_deep_sizeof
        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "c"
