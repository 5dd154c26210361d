"""Shared fixtures: every cache test runs against both implementations.

The compiled core is tested whenever it can be imported. If it cannot, its
tests are skipped with the import error as the reason -- unless
MEMCACHE_EXT_REQUIRE_EXTENSIONS is set (CI, wheel builds), where a missing
extension fails the run instead of silently testing only the pure twin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import ModuleType
from typing import Any, Optional

import pytest

from memcache_ext._core_py import PyLruCache

REQUIRE_EXT = os.environ.get("MEMCACHE_EXT_REQUIRE_EXTENSIONS", "") not in ("", "0")
#: Running under AddressSanitizer (its runtime preloaded: see .ci/run): memory
#: figures mean nothing there (freed memory sits in its quarantine).
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")

try:
    # `as CLruCache`: re-exported (mypy's strict no_implicit_reexport), tests import it from here
    from memcache_ext._core_c import CLruCache as CLruCache  # noqa: PLC0414

    C_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the build
    CLruCache = None  # type: ignore[assignment,misc]
    C_IMPORT_ERROR = str(exc)


sizeof_c: Optional[ModuleType]  # None without the compiled module
try:
    from memcache_ext import _sizeof_c as sizeof_c

    SIZEOF_C_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the build
    sizeof_c = None
    SIZEOF_C_ERROR = str(exc)


def compiled_sizeof() -> Any:
    """memcache_ext._sizeof_c; the test is skipped without it, or fails where
    MEMCACHE_EXT_REQUIRE_EXTENSIONS is set."""
    if sizeof_c is None:
        if REQUIRE_EXT:
            pytest.fail(
                f"MEMCACHE_EXT_REQUIRE_EXTENSIONS is set but memcache_ext._sizeof_c "
                f"failed to import: {SIZEOF_C_ERROR}"
            )
        pytest.skip(f"compiled deep_sizeof not available: {SIZEOF_C_ERROR}")
    return sizeof_c


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_EXT and C_IMPORT_ERROR is not None:
        pytest.exit(
            f"MEMCACHE_EXT_REQUIRE_EXTENSIONS is set but the compiled core "
            f"failed to import: {C_IMPORT_ERROR}",
            returncode=3,
        )


IMPLS = [
    pytest.param("c", marks=pytest.mark.c_extension, id="c-extension"),
    pytest.param("py", id="pure-python"),
]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    """ "c" or "py": which implementation this test runs against."""
    if request.param == "c" and CLruCache is None:
        pytest.skip(f"compiled core not importable: {C_IMPORT_ERROR}")
    return str(request.param)


@pytest.fixture
def cache_cls(impl: str) -> type:
    """CLruCache or PyLruCache."""
    return CLruCache if impl == "c" else PyLruCache


class FakeTimer:
    """A settable monotonic clock for TTL tests."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def timer() -> FakeTimer:
    return FakeTimer()


def run_isolated(code: str, impl: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``Cache`` bound to the implementation.

    Used for every risky case (re-entrancy, threads, leaks) so that a deadlock
    fails on the timeout instead of hanging the suite, and a crash fails one
    test instead of killing the run.
    """
    header = "import gc, sys, threading\n" + (
        "from memcache_ext._core_c import CLruCache as Cache\n"
        if impl == "c"
        else "from memcache_ext._core_py import PyLruCache as Cache\n"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", header + textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"timed out after {timeout}s (deadlock?)\n"
            f"stdout: {exc.stdout!r}\nstderr: {exc.stderr!r}"
        )
    assert proc.returncode == 0, (
        f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


@pytest.fixture
def isolated(impl: str) -> Any:
    """``isolated(code, timeout=...)``: run_isolated bound to this test's implementation."""
    return lambda code, timeout=60.0: run_isolated(code, impl, timeout)


# -- a real redis-server, shared by the Redis test modules ---------------------


@pytest.fixture(scope="module")
def server() -> Any:
    """One redis-server per module (the test modules that use it skip without one)."""
    from support import RedisServer

    srv = RedisServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.resume()
        srv.stop()


@pytest.fixture
def srv(server: Any) -> Any:
    """The module's server, up (a previous test may have killed it) and not frozen after."""
    server.ensure_up()
    yield server
    server.resume()


@pytest.fixture
def patient_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis tiers made during the test get ``support.PATIENT_DEADLINE`` per call."""
    from support import PATIENT_DEADLINE, tier_defaults

    monkeypatch.setitem(tier_defaults(), "deadline", PATIENT_DEADLINE)


@pytest.fixture
def ns() -> str:
    """A namespace of its own for each test."""
    import uuid

    return f"t{uuid.uuid4().hex[:10]}"
