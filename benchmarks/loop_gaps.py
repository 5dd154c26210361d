"""Where the event loop's longest holds go: the demo's loop thread sampled by perf during a soak.

    python benchmarks/loop_gaps.py                 # the quick soak (about 90 s); needs perf, Linux
    python benchmarks/loop_gaps.py --duration 300  # a longer soak

The soak's "longest hold of the loop" is the CPU time (``time.thread_time``) of
the loop's thread during one callback. This script runs ``loadtest --soak``
while ``perf record`` samples the demo server (4,000 samples a second of its
CPU time, wall-clock stamps), then looks inside the ten longest callbacks the
soak reports. A thread that runs is sampled every 0.25 ms at a moving
instruction; time the thread is charged for while it does not run shows as an
interval with no sample, or as samples stuck at one user-space instruction;
the samples that show it advancing measure the callback's own work.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

KERNEL = 0xFFFF800000000000
#: perf's sampling rate (per second of the thread's CPU time).
SAMPLE_HZ = 4000
#: Two samples further apart than this (4 kHz: 0.25 ms expected) lost the time between them.
GAP_S = 0.002
#: This many samples in a row at one user-space instruction: the thread did not advance.
STUCK_RUN = 4


def server_pid(parent: int, timeout: float = 120.0) -> int:
    """The demo server the load test started (a child process running ``memcache_ext demo``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == parent and b"demo" in cmd and b"memcache_ext" in cmd:
                return int(entry)
        time.sleep(0.2)
    raise SystemExit("the load test started no demo server")


def samples(data: Path, tid: int) -> list[tuple[float, int, str]]:
    """``(time, user-space instruction, symbol)`` of each sample of thread tid."""
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "--tid", str(tid), "-F", "time,ip,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows: list[tuple[float, int, str]] = []
    when: Optional[float] = None
    for line in out.splitlines():
        head = re.match(r"\s*(\d+\.\d+):", line)
        if head:
            when = float(head.group(1))
            continue
        frame = re.match(r"\s*([0-9a-f]+)\s+(\S+)", line)
        if frame and when is not None and int(frame.group(1), 16) < KERNEL:
            rows.append((when, int(frame.group(1), 16), frame.group(2)))
            when = None  # the first user-space frame is the one
    return rows


def inspect(rows: list[tuple[float, int, str]], start: float, end: float) -> tuple[int, float, str]:
    """Within [start, end]: the samples that show the thread advancing, the longest
    interval in which it did not advance, and the instruction it stood at then.

    Not advancing: no sample for over ``GAP_S``, or ``STUCK_RUN`` samples or more
    in a row at one user-space instruction (those count once, as the first).
    """
    inside = [r for r in rows if start <= r[0] <= end]
    advancing, longest, where = 0, 0.0, ""
    stamps = [start] + [r[0] for r in inside] + [end]
    for a, b in itertools.pairwise(stamps):
        if b - a > max(GAP_S, longest):
            longest, where = b - a, "(no sample)"
    i = 0
    while i < len(inside):
        j = i
        while j + 1 < len(inside) and inside[j + 1][1] == inside[i][1]:
            j += 1
        run = j - i + 1
        if run >= STUCK_RUN:
            advancing += 1
            span = inside[j][0] - inside[i][0]
            if span > longest:
                longest, where = span, inside[i][2]
        else:
            advancing += run
        i = j + 1
    return advancing, longest, where


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/loop_gaps.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="soak seconds (default: --quick)"
    )
    args = parser.parse_args(argv)
    if sys.platform != "linux" or not shutil.which("perf"):
        raise SystemExit("needs Linux and perf")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        soak = [sys.executable, "-m", "memcache_ext", "loadtest", "--soak"]
        soak += ["--quick"] if args.duration is None else ["--duration", str(args.duration)]
        soak += ["--json", str(work / "soak.json"), "--db", str(work / "db.sqlite3")]
        load = subprocess.Popen(soak, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            pid = server_pid(load.pid)
            record = ["perf", "record", "-q", "-F", str(SAMPLE_HZ), "-e", "cpu-clock", "-g"]
            perf = subprocess.Popen(
                [*record, "-k", "realtime", "-p", str(pid), "-o", str(work / "perf.data")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            report, _ = load.communicate()
        finally:
            if load.poll() is None:
                load.kill()
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
        print(report.rstrip())
        run = json.loads((work / "soak.json").read_text())["runs"][0]
        rows = samples(work / "perf.data", pid)  # the loop runs on the main thread
    print()
    print(f"the loop thread sampled {len(rows):,} times; the longest callbacks:")
    print(
        f"{'CPU ms':>7s} {'work ms':>8s} {'stood ms':>9s} {'ends, mod 100 ms':>17s}"
        "  where it stood / callback"
    )
    works = []
    for cb in run["longest_callbacks"]:
        end, cpu = cb["time"], cb["seconds"]
        advancing, stood, where = inspect(rows, end - cb["wall"], end)
        own = advancing / SAMPLE_HZ
        works.append(own)
        print(
            f"{cpu * 1e3:7.2f} {own * 1e3:8.2f} {stood * 1e3:9.2f} {(end % 0.1) * 1e3:17.1f}"
            f"  {where or '-'} / {cb['what'][:60]}"
        )
    if works:
        print(f"the most work one of them did: about {max(works) * 1e3:.2f} ms")
    print(
        "CPU: the thread's CPU time during the callback, as the soak reports it; work: the\n"
        "samples that show it advancing, at 0.25 ms each; stood: the longest interval it\n"
        "did not advance (no sample, or samples stuck at one instruction)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
