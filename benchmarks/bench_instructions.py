"""Instructions per operation of the compiled core, lru against s3fifo, counted by callgrind.

    python benchmarks/bench_instructions.py          # both operations, under a minute here
    python benchmarks/bench_instructions.py --against OLD/src   # and lru of another build
    python benchmarks/bench_instructions.py --worker OP POLICY N   # one count (internal)

Time on a shared virtual machine moves by tens of percent between two processes
(docs/performance.md); an instruction count does not. Each figure is the
difference between two runs under ``valgrind --tool=callgrind`` that do the same
set-up and then 10,000 or 30,000 operations, divided by 20,000: what one more
operation costs, the Python loop around it included (as in the timed bench).

- ``set_evict``: a full 10,000-entry cache (its ghost full too, after 20,000
  evictions) takes fresh int keys, ``cache[k] = 0`` over a list, as
  ``memcache_ext.tools.bench`` times it;
- ``get_hit``: ``cache[k]`` over keys that are all in it.

``--against DIR`` also counts the LRU core importable from DIR (the ``src`` of an
older checkout, built with ``python setup.py build_ext --inplace``): the same
loops side by side, for a change's cost against the code before it.

Needs valgrind and the compiled core. ``PYTHONHASHSEED=0`` for the same run twice.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

SIZE = 10_000
COUNTS = (10_000, 30_000)
OPS = ("set_evict", "get_hit")


def worker(op: str, policy: str, n: int) -> None:
    """The workload whose instructions callgrind counts (run under valgrind)."""
    from memcache_ext._core_c import CLruCache

    cache: CLruCache[int, int] = (
        CLruCache(SIZE) if policy == "lru" else CLruCache(SIZE, policy=policy)
    )
    for k in range(SIZE):
        cache[k] = k
    for k in range(10**12, 10**12 + 2 * SIZE):  # evictions: the ghost fills
        cache[k] = 0
    # The same keys are built in every run (only the loop's length differs), so
    # that building them is not counted as the operation.
    if op == "set_evict":
        fresh = list(range(10**13, 10**13 + COUNTS[-1]))[:n]
        for k in fresh:
            cache[k] = 0
    else:
        present = (list(cache.keys()) * (COUNTS[-1] // SIZE))[:n]
        for k in present:
            cache[k]


def count(op: str, policy: str, n: int, path: Optional[str] = None) -> int:
    """Instructions callgrind counted for one worker run (memcache_ext from path)."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if path is not None:
        env["PYTHONPATH"] = os.path.abspath(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        argv += [sys.executable, __file__, "--worker", op, policy, str(n)]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or not found:
            raise SystemExit(f"callgrind failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return int(found.group(1))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_instructions.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--worker", nargs=3, metavar=("OP", "POLICY", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--against", metavar="DIR", help="also count the LRU core importable from DIR"
    )
    args = parser.parse_args(argv)
    if args.worker:
        op, policy, n = args.worker
        worker(op, policy, int(n))
        return 0
    low, high = COUNTS

    def per_op(op: str, policy: str, path: Optional[str] = None) -> float:
        return (count(op, policy, high, path) - count(op, policy, low, path)) / (high - low)

    print(f"instructions per operation, {SIZE:,}-entry cache (callgrind, Python loop included)")
    head = f"{'':12s}{'lru':>8s}{'s3fifo':>9s}{'ratio':>8s}"
    if args.against:
        head += f"{'DIR lru':>9s}{'lru/DIR':>9s}"
        print(f"DIR: {args.against}")
    print(head, flush=True)
    for op in OPS:
        lru, s3fifo = per_op(op, "lru"), per_op(op, "s3fifo")
        line = f"{op:12s}{lru:>8.0f}{s3fifo:>9.0f}{s3fifo / lru:>7.2f}x"
        if args.against:
            old = per_op(op, "lru", args.against)
            line += f"{old:>9.0f}{lru / old:>8.3f}x"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
