"""Type stub for the compiled deep_sizeof (memcache_ext._sizeof_c)."""

from typing import Any, Final

DEFAULT_BUDGET: Final[int]

def deep_sizeof(obj: Any, *, budget: int = ...) -> int:
    """Approximate bytes that dropping ``obj`` frees; same rules and results
    as ``memcache_ext._sizeof_py.deep_sizeof``."""

def _deep_sizeof_stats(obj: Any, *, budget: int = ...) -> tuple[int, int, int]:
    """``(nbytes, units_examined, containers_sampled)``, for tests and tuning."""

def _live_blocks() -> int:
    """C memory blocks the walks hold now: 0 between calls (for the tests)."""
