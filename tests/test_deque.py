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
