"""The manager's total byte budget, as it works today: a ``sizeof`` wrapper.

Every cache the manager creates under ``max_total_bytes`` gets a byte bound
(its own ``max_bytes``, or the budget when it has none, so its entries are
measured) and a ``BudgetSizeof`` around ``deep_sizeof`` (or the cache's own
``sizeof``). When measuring a new entry (the core measures its key, then its
value) shows that the sum of every cache's ``nbytes`` plus the entry would
pass the budget, the wrapper asks the manager to trim *other* caches, least
recently used cache first, their LRU entries first, then the inserting cache's
own LRU entries; if the entry still does not fit, it reports a size above the
cache's ``max_bytes`` so the core refuses it (``set`` returns False, counted
in ``rejected``), the same way as an entry larger than ``max_bytes``. Both
cores call ``sizeof`` before taking their own lock, so trimming other caches
from inside it holds no lock and cannot deadlock with another thread doing the
same. Limits of the approach: concurrent inserts into different caches each
check the budget without seeing the other's entry in flight, so the sum can
pass the budget by those entries until the next insert or cleanup; replacing a
key counts the old value until the core drops it (the check is conservative);
a copy or unpickled copy of a managed cache keeps the wrapper, bound to the
original cache.

It relies on the core measuring each insert exactly twice, key then value;
issue 12 replaces it with budgets set through the caches' public API.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .manager import CacheManager

__all__ = ["BudgetSizeof", "fit", "free_bytes"]

_REJECTED: Any = object()


class BudgetSizeof:
    """The ``sizeof`` of a cache under the manager's total byte budget."""

    __slots__ = ("manager_ref", "name", "cache_ref", "inner", "local")

    def __init__(
        self, manager: CacheManager, name: str, inner: Optional[Callable[[Any], int]]
    ) -> None:
        self.manager_ref = weakref.ref(manager)
        self.name = name
        self.cache_ref: Callable[[], Any] = lambda: None
        if inner is None:
            from ._sizeof import deep_sizeof

            inner = deep_sizeof
        self.inner: Callable[[Any], int] = inner
        self.local = threading.local()  # pending key size of this thread's insert

    def __call__(self, obj: Any) -> int:
        # The core measures an entry's key, then its value: the first call of a
        # pair stores the key's size in ``pending``, the second adds it.
        local = self.local
        pending = getattr(local, "pending", None)
        local.pending = None  # nested inserts (from on_evict) start their own pairs
        try:
            size = self.inner(obj)
        except BaseException:
            local.pending = None
            raise
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return size  # the core rejects it
        if pending is _REJECTED:
            return size
        is_key = pending is None
        total = size if pending is None else pending + size
        manager = self.manager_ref()
        cache = self.cache_ref()
        fits = True
        if manager is not None and cache is not None:
            fits = manager._make_room(self.name, cache, total)
        max_bytes = getattr(cache, "max_bytes", None) if not fits else None
        if max_bytes is not None:
            local.pending = _REJECTED if is_key else None
            return int(max_bytes) + 1  # does not fit the budget: the core refuses it
        local.pending = size if is_key else None
        return size


def free_bytes(cache: Any, need: int) -> int:
    """Trim LRU entries of ``cache`` until about ``need`` bytes are released.

    Safe to call from inside another cache's ``sizeof``: both cores measure
    before taking their own lock, so no lock is held here.
    """
    freed = 0
    for _ in range(8):
        size, before = len(cache), cache.nbytes
        if size == 0 or before == 0:
            break
        count = max(1, math.ceil((need - freed) / (before / size)))
        try:
            cache.trim(min(1.0, count / size))
        except Exception:  # noqa: BLE001, S110 - on_evict raised; the entries are gone
            pass
        freed += max(0, before - cache.nbytes)
        if freed >= need:
            break
    return freed


def fit(incoming: int, budget: int, cache: Any, others: list[Any], caches: list[Any]) -> bool:
    """Make ``incoming`` more bytes for ``cache`` fit ``budget`` over all ``caches``.

    Trims ``others`` (least recently used first), then ``cache`` itself;
    False if the bytes still do not fit.
    """
    if not any(c is cache for c in caches):
        caches = [*caches, cache]
    need: int = sum(c.nbytes for c in caches) + incoming - budget
    if need <= 0:
        return True
    for other in others:
        need -= free_bytes(other, need)
        if need <= 0:
            return True
    need -= free_bytes(cache, need)
    return need <= 0
