"""Threads, hostile keys and re-entrant callbacks against both implementations.

The scenarios live in tests/concurrency_scenarios.py; each runs here in a
fresh interpreter with a timeout, so a crash or a deadlock (the compiled core
used to hang holding the GIL) fails one test instead of the run. Each test
runs its scenario several times (the races are rare per run); the slow loop
runs every scenario 200 times.
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
        pytest.fail(f"timed out after {timeout}s (deadlock?)\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario(impl: str, scenario: str) -> None:
    run(impl, 10, [scenario], timeout=240)


@pytest.mark.slow
def test_every_scenario_200_times(impl: str) -> None:
    """The whole module's scenarios, 200 times over, in one interpreter."""
    run(impl, 200, [], timeout=1800)
