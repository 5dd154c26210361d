"""A source install without a working compiler: the fallback says so, and ``info`` says why.

The project is copied to a temporary folder and built into a wheel by pip with
``CC=false`` (a compiler that always fails). pip hides a successful build's
output unless run with ``-v``, so the warning is checked where each kind of
user sees it: on the terminal pip runs in (the build writes it there), and in
pip's ``-v`` output through a pipe (a setuptools warning on stderr). The wheel
carries the build record; ``python -m memcache_ext info`` run from it names
the compiler error.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from ptyrun import on_pipe, on_pty, python
from support import posix_only

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, posix_only]

WARNING = "memcache_ext: the C extension could not be compiled ("
HOW = (
    "To get the compiled core, install a prebuilt wheel",
    "pip install --only-binary memcache-ext memcache-ext",
    "python -m memcache_ext info",
)
#: What a user's shell has: none of CI's switches that forbid or force the fallback.
BUILD_ENV = {
    "CC": "false",
    "MEMCACHE_EXT_REQUIRE_EXTENSIONS": "",
    "CIBUILDWHEEL": "",
    "MEMCACHE_EXT_PURE_PYTHON": "",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def project_copy(tmp: Path) -> Path:
    if not (ROOT / "setup.py").exists():
        pytest.skip("not a source tree (the setup.py is not here)")
    dest = tmp / "project"
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "src",
        dest / "src",
        ignore=shutil.ignore_patterns(
            "*.so", "*.pyd", "*.c", "__pycache__", "*.egg-info", "_build_info.json"
        ),
    )
    return dest


def the_wheel(out: Path) -> Path:
    wheels = list(out.glob("memcache_ext-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.timeout(1260)  # two builds, each under its own 600 s
def test_a_build_without_compiler_falls_back_and_says_so(tmp_path: Path) -> None:
    project = project_copy(tmp_path)
    pip_wheel = python("-m", "pip", "wheel", "--no-deps", "--no-cache-dir")

    # On a terminal, without -v: pip hides the build's output, the warning shows anyway.
    out = tmp_path / "tty"
    r = on_pty([*pip_wheel, "-w", str(out), str(project)], BUILD_ENV, timeout=600)
    assert r.returncode == 0, r.screen()
    screen = " ".join(r.screen().split())
    assert WARNING in screen, r.screen()
    for line in HOW:
        assert line in screen, line
    assert "command 'false' failed" in screen or "'false'" in screen

    # Through a pipe, with -v: the setuptools warning on the build's stderr.
    out = tmp_path / "pipe"
    r = on_pipe([*pip_wheel, "-v", "-w", str(out), str(project)], BUILD_ENV, timeout=600)
    assert r.returncode == 0, r.err
    text = r.out + r.err
    assert "PurePythonFallbackWarning" in text and WARNING in text

    # The wheel: no extension, and the record of why.
    wheel = the_wheel(out)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert not [n for n in names if n.endswith((".so", ".pyd"))], names
        record = json.loads(z.read("memcache_ext/_build_info.json"))
        z.extractall(tmp_path / "site")
    assert record["compiled"] == [] and record["failed"], record
    assert record["cython"] and record["compiler_command"] == "false"

    # `info` from that install names the fallback and the compiler's error.
    r = on_pipe(
        python("-m", "memcache_ext", "info"),
        {"PYTHONPATH": str(tmp_path / "site")},
        cwd=str(tmp_path),
    )
    assert r.returncode == 0, r.err
    assert (
        "core:          pure-Python (the build fell back): the C extension could not be "
        "compiled: " in r.out
    )
    assert "compiled: nothing" in r.out
    assert str(tmp_path / "site") in r.out or "memcache_ext" in r.out
    r = on_pipe(
        python("-m", "memcache_ext", "info", "--summary"),
        {"PYTHONPATH": str(tmp_path / "site")},
        cwd=str(tmp_path),
    )
    assert "PURE-PYTHON core (the C extension could not be compiled" in r.out
