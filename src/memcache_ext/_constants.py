"""Constants and switches shared by every layer (the one home of each)."""

from __future__ import annotations

import os
from typing import Any

#: Bytes in a mebibyte: every "MB" figure in this package is MiB.
MIB = 1024 * 1024


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<{self._name}>"


#: "No value here" (a cache miss, an absent entry); never stored by users.
MISSING: Any = _Sentinel("missing")
#: "Argument not given" where None has a meaning (``resize(maxsize=None)``).
UNSET: Any = _Sentinel("unset")

#: How often a lookup restarts when a key's ``__eq__`` keeps changing the cache
#: under it, before it gives up with RuntimeError (dict restarts forever).
MAX_LOOKUP_RESTARTS = 64

#: The most fingerprints an S3-FIFO ghost keeps, whatever the entries held (90 %
#: of the most held otherwise, at most 90 % of maxsize). The compiled ghost
#: stores 32-bit ring positions; a limit of 90 % of a maxsize near 2**63 once
#: made its table size wrap.
GHOST_MAX = 1 << 28


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to something other than 0/false/no."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


#: MEMCACHE_EXT_PURE_PYTHON=1 forces the pure-Python cores (cache, deep_sizeof, call paths).
PURE_PYTHON = env_flag("MEMCACHE_EXT_PURE_PYTHON")
