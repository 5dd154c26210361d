"""BoundedDeque: a thread-safe history that keeps only the newest items."""

from __future__ import annotations

import itertools
import operator
import reprlib
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["BoundedDeque"]

T = TypeVar("T")


class BoundedDeque(Generic[T]):
    """Keeps the newest ``maxlen`` items; older ones are pushed out and counted.

    A ``collections.deque(maxlen=...)`` plus one lock, so that compound
    operations (``extend`` with its ``dropped`` count, ``recent``, ``snapshot``,
    iteration) see a consistent state while other threads append. Iteration
    runs over a snapshot, so appending while iterating never raises.
    ``dropped`` counts items pushed out by newer ones; ``clear()`` does not
    count as dropping. Items pushed out or cleared are released after the
    lock, so a ``__del__`` that appends to the same deque cannot deadlock.
    """

    __slots__ = ("_items", "_lock", "_dropped", "__weakref__")

    def __init__(self, maxlen: int, iterable: Iterable[T] = ()) -> None:
        if isinstance(maxlen, bool) or not isinstance(maxlen, int):
            raise TypeError(f"maxlen must be an int, not {type(maxlen).__name__}")
        if not 1 <= maxlen <= sys.maxsize:
            raise ValueError(f"maxlen must be in 1..{sys.maxsize}, got {maxlen}")
        self._items: deque[T] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._dropped = 0
        self.extend(iterable)

    @property
    def maxlen(self) -> int:
        return self._items.maxlen  # type: ignore[return-value]  # maxlen is always set here

    @property
    def dropped(self) -> int:
        """How many items have been pushed out by newer ones so far."""
        return self._dropped

    def append(self, item: T) -> None:
        """Add ``item`` as the newest, pushing out the oldest when full."""
        old = None
        with self._lock:
            items = self._items
            if len(items) == items.maxlen:
                old = items[0]  # held: the append below pushes it out
                self._dropped += 1
            items.append(item)
        del old  # released here, after the lock

    def extend(self, items: Iterable[T]) -> None:
        """Append every item of ``items``. They are read first, outside the lock, keeping
        only the newest ``maxlen`` (numbered, to count the others)."""
        new = deque(enumerate(items, 1), maxlen=self.maxlen)
        count = new[-1][0] if new else 0
        with self._lock:
            mine = self._items
            overflow = len(mine) + count - self.maxlen
            # held: the extend below pushes them out
            old = list(itertools.islice(mine, max(0, min(overflow, len(mine)))))
            if overflow > 0:
                self._dropped += overflow
            mine.extend(map(operator.itemgetter(1), new))
        del old, new  # released here, after the lock

    def recent(self, n: int) -> list[T]:
        """The newest ``n`` items, oldest first (fewer if there are fewer)."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        with self._lock:
            newest = list(itertools.islice(reversed(self._items), min(n, len(self._items))))
        newest.reverse()
        return newest

    def snapshot(self) -> list[T]:
        """Every item, oldest first, as a new list."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Remove every item (``dropped`` is kept)."""
        with self._lock:
            old, self._items = self._items, deque(maxlen=self._items.maxlen)
        del old  # released here, after the lock

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.snapshot())

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.snapshot()!r}, maxlen={self.maxlen}, "
            f"dropped={self._dropped})"
        )
