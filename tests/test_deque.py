"""BoundedDeque: bounds, dropped count, snapshots and thread safety."""

from __future__ import annotations

import pytest

from memcache_ext import BoundedDeque


def test_keeps_newest_and_counts_dropped() -> None:
    d: BoundedDeque[int] = BoundedDeque(3)
    for i in range(5):
        d.append(i)
    assert d.snapshot() == [2, 3, 4]
    assert len(d) == 3
    assert d.dropped == 2
    d.extend(range(10, 14))
    assert d.snapshot() == [11, 12, 13]
    assert d.dropped == 6


def test_extend_counts_only_overflow() -> None:
    d: BoundedDeque[int] = BoundedDeque(5, [1, 2])
    d.extend([3, 4])
    assert d.dropped == 0
    d.extend(iter([5, 6, 7]))
    assert d.snapshot() == [3, 4, 5, 6, 7]
    assert d.dropped == 2


def test_extend_with_a_long_iterable_holds_only_maxlen_items() -> None:
    """A generator of 200,000 strings (17.8 MB at once) into a deque of 10: its memory
    stays that of 10 items at any time (the old code made a list of all of them first)."""
    import tracemalloc

    d: BoundedDeque[str] = BoundedDeque(10, ["a", "b"])
    tracemalloc.start()
    try:
        d.extend(f"item number {i:>20}" for i in range(200_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # 17.8 MB on the old code; margin for other threads
    assert d.snapshot() == [f"item number {i:>20}" for i in range(199_990, 200_000)]
    assert d.dropped == 200_002 - 10


def test_recent() -> None:
    d: BoundedDeque[int] = BoundedDeque(4, range(6))
    assert d.recent(2) == [4, 5]
    assert d.recent(0) == []
    assert d.recent(10) == [2, 3, 4, 5]
    with pytest.raises(ValueError):
        d.recent(-1)
    with pytest.raises(TypeError):
        d.recent(1.5)  # type: ignore[arg-type]  # deliberately wrong


def test_clear_keeps_dropped() -> None:
    d: BoundedDeque[int] = BoundedDeque(2, range(4))
    d.clear()
    assert len(d) == 0 and not d
    assert d.dropped == 2
    assert d.snapshot() == []


@pytest.mark.parametrize(
    "bad,exc",
    [(0, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError), (None, TypeError)],
)
def test_maxlen_validation(bad: object, exc: type) -> None:
    with pytest.raises(exc):
        BoundedDeque(bad)  # type: ignore[arg-type]  # deliberately wrong


def test_iteration_is_over_a_snapshot() -> None:
    d: BoundedDeque[int] = BoundedDeque(10, range(3))
    seen = []
    for x in d:
        d.append(x + 100)  # must not raise "deque mutated during iteration"
        seen.append(x)
    assert seen == [0, 1, 2]
    assert d.snapshot() == [0, 1, 2, 100, 101, 102]
    assert "maxlen=10" in repr(d)
    assert d.maxlen == 10


def test_threads_append_consistently() -> None:
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, threading
        sys.setswitchinterval(1e-6)
        from memcache_ext import BoundedDeque
        d = BoundedDeque(100)
        N, T = 5000, 8
        barrier = threading.Barrier(T)
        errors = []
        def work(t):
            barrier.wait()
            try:
                for i in range(N):
                    if i % 2:
                        d.append((t, i))
                    else:
                        d.extend([(t, i)])
                    if i % 97 == 0:
                        snap = d.snapshot()
                        assert len(snap) <= 100
                        list(d)
                        d.recent(10)
            except BaseException as e:
                errors.append(e)
        ts = [threading.Thread(target=work, args=(t,)) for t in range(T)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert not errors, errors
        assert len(d) == 100
        assert d.dropped == N * T - 100, d.dropped
        # per thread, the kept items are in the order that thread appended them
        for t in range(T):
            mine = [i for (tt, i) in d if tt == t]
            assert mine == sorted(mine)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


_DEL_APPENDS = """
import faulthandler
faulthandler.dump_traceback_later(20, exit=True)  # a deadlock fails the test, with a traceback
from memcache_ext import BoundedDeque
log = BoundedDeque(2)
class Tracked:
    def __del__(self):
        log.append("freed")
log.append(Tracked()); log.append("a"); log.append("b")  # pushed out
log.extend([Tracked(), Tracked()]); log.extend(["c", "d", "e"])  # pushed out by extend
log.append(Tracked()); log.clear()  # cleared
assert log.snapshot() == ["freed"], log.snapshot()
assert log.dropped == 10, log.dropped  # the __del__ appends push items out too
print("ok")
"""


def test_an_item_whose_del_appends_to_the_deque_does_not_deadlock() -> None:
    """Pushed-out and cleared items are released after the lock (the lock was not
    re-entrant, and the item was freed while it was held: a hang)."""
    import subprocess
    import sys

    from support import child_env

    out = subprocess.run(
        [sys.executable, "-c", _DEL_APPENDS],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr[-3000:]


def test_huge_maxlen_and_self_reference() -> None:
    with pytest.raises(ValueError, match=r"maxlen must be in 1\.\."):
        BoundedDeque(2**63)
    d: BoundedDeque[object] = BoundedDeque(3)
    d.append(d)
    assert repr(d) == "BoundedDeque([...], maxlen=3, dropped=0)"


def test_recent_of_a_long_deque() -> None:
    d: BoundedDeque[int] = BoundedDeque(200_000, range(200_000))
    assert d.recent(100_000) == list(range(100_000, 200_000))
    assert d.recent(1) == [199_999] and d.recent(0) == []
    assert d.recent(2**70) == list(range(200_000))
