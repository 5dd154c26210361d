"""Threads, hostile keys and re-entrant callbacks against both implementations.

The scenarios live in tests/concurrency_scenarios.py; each runs here in a
fresh interpreter with a timeout, so a crash or a deadlock (the compiled core
used to hang holding the GIL) fails one test instead of the run. Each test
runs its scenario several times (the races are rare per run); the slow loop
runs every scenario many times over in one interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from concurrency_scenarios import SCENARIOS

HERE = Path(__file__).resolve().parent


def run(impl: str, iterations: int, names: list[str], timeout: float) -> None:
    cmd = [
        sys.executable,
        "-X",
        "faulthandler",
        str(HERE / "concurrency_scenarios.py"),
        impl,
        str(iterations),
        *names,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout}s (deadlock?)\n{exc.stdout!r}\n{exc.stderr!r}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario(impl: str, scenario: str) -> None:
    run(impl, 10, [scenario], timeout=240)


# Iterations of the slow loop: one pass over every scenario takes about 0.27 s
# with the compiled core and 1.45 s with the pure twin (every thread switch at
# 1 us runs Python code). The pure twin runs each operation under one RLock,
# so its races do not hinge on where a switch lands inside the structure; 50
# passes (about 75 s idle) keep it well inside the timeout on a loaded host,
# where 200 passes (290 s idle) ran into pytest's 300 s limit.
SLOW_LOOP = {"c": 200, "py": 50}
SLOW_LOOP_TIMEOUT = 600  # below the test's own limit, so the report names the cause


@pytest.mark.slow
@pytest.mark.timeout(SLOW_LOOP_TIMEOUT + 60)
def test_every_scenario_many_times(impl: str) -> None:
    """The whole module's scenarios, many times over, in one interpreter."""
    run(impl, SLOW_LOOP[impl], [], timeout=SLOW_LOOP_TIMEOUT)
