"""``python -m memcache_ext``: help, errors and exit codes, on a terminal and through a pipe.

Every path is run twice where it matters: on a pseudo-terminal (what a user at
a shell sees, stdout and stderr together) and through pipes (what a script or
a log sees, stdout and stderr apart).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ptyrun import on_pipe, on_pty, python
from support import posix_only

MAIN = ("-m", "memcache_ext")
COMMANDS = ("info", "bench", "demo", "loadtest")


def cli(*args: str) -> list[str]:
    return python(*MAIN, *args)


# -- the top level ----------------------------------------------------------------------


def test_help_goes_to_stdout_and_exits_0() -> None:
    for flag in ("--help", "-h"):
        r = on_pipe(cli(flag))
        assert r.returncode == 0, r.err
        assert r.err == ""
        assert r.out.startswith("usage: python -m memcache_ext")
        for name in COMMANDS:
            assert re.search(rf"^  {name} ", r.out, re.M), name


@posix_only
def test_help_on_a_terminal() -> None:
    r = on_pty(cli("--help"))
    assert r.returncode == 0
    assert "commands:" in r.screen() and "COMMAND --help" in r.screen()


def test_no_arguments_prints_help_and_exits_2() -> None:
    r = on_pipe(cli())
    assert r.returncode == 2
    assert r.out == ""
    assert r.err.startswith("usage: python -m memcache_ext") and "commands:" in r.err


@posix_only
def test_no_arguments_on_a_terminal() -> None:
    r = on_pty(cli())
    assert r.returncode == 2
    assert "commands:" in r.screen()


def test_unknown_command_names_itself() -> None:
    r = on_pipe(cli("frobnicate"))
    assert r.returncode == 2 and r.out == ""
    assert "error: unknown command 'frobnicate' (commands: info, bench, demo, loadtest)" in r.err
    r = on_pipe(cli("bnech"))
    assert r.returncode == 2 and "did you mean 'bench'?" in r.err


def test_unknown_option_names_itself() -> None:
    r = on_pipe(cli("--frobnicate"))
    assert r.returncode == 2 and r.out == ""
    assert "error: unknown option '--frobnicate'" in r.err
    assert "python -m memcache_ext COMMAND --frobnicate" in r.err


@posix_only
def test_unknown_command_on_a_terminal() -> None:
    r = on_pty(cli("frobnicate"))
    assert r.returncode == 2
    assert "unknown command 'frobnicate'" in r.screen()


def test_version() -> None:
    r = on_pipe(cli("--version"))
    assert r.returncode == 0 and re.fullmatch(r"memcache_ext \S+\n", r.out)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_on_stdout(command: str) -> None:
    r = on_pipe(cli(command, "--help"))
    assert r.returncode == 0, r.err
    assert r.out.startswith(f"usage: python -m memcache_ext {command}")


@pytest.mark.parametrize("command", ["info", "bench"])
def test_unknown_option_of_a_command_names_itself(command: str) -> None:
    r = on_pipe(cli(command, "--frobnicate"))
    assert r.returncode == 2 and r.out == ""
    assert "unrecognized arguments: --frobnicate" in r.err


# -- info --------------------------------------------------------------------------------


def test_info_through_a_pipe() -> None:
    r = on_pipe(cli("info"))
    assert r.returncode == 0, r.err
    assert r.err == ""
    for label in ("core:", "build:", "deep_sizeof:", "memory limit:", "process RSS:", "extras:"):
        assert re.search(rf"^{label}\s", r.out, re.M), label
    assert re.search(r"^memory limit: +[\d,]+ MB, from \S", r.out, re.M)
    for extra in ("bench", "fastapi", "prometheus", "redis", "plot"):
        assert (
            re.search(rf"^ +{extra} +(yes|no) ", r.out, re.M) or f"extras:        {extra}" in r.out
        )


@posix_only
def test_info_on_a_terminal() -> None:
    r = on_pty(cli("info"))
    assert r.returncode == 0
    assert "core:" in r.screen() and "memory limit:" in r.screen()
    assert "\x1b[" not in r.out  # no progress line, no colour: nothing to wait for


def test_info_json_and_summary() -> None:
    import memcache_ext

    r = on_pipe(cli("info", "--json"))
    assert r.returncode == 0, r.err
    data = json.loads(r.out)
    assert data["core"]["implementation"] == memcache_ext.IMPLEMENTATION
    assert data["memory_limit"]["bytes"] > 0 and data["memory_limit"]["source"]
    assert set(data["extras"]) == {"bench", "fastapi", "prometheus", "redis", "plot"}
    r = on_pipe(cli("info", "--summary"))
    assert r.returncode == 0 and r.out.count("\n") == 1
    assert re.match(r"memcache_ext \S+, \w+ [\d.]+: (compiled|PURE-PYTHON) core", r.out)
    assert "memory limit " in r.out and "extras: " in r.out


def test_info_says_why_the_core_is_pure_when_forced() -> None:
    r = on_pipe(cli("info"), {"MEMCACHE_EXT_PURE_PYTHON": "1"})
    assert r.returncode == 0, r.err
    assert "core:          pure-Python (forced): MEMCACHE_EXT_PURE_PYTHON is set" in r.out
    r = on_pipe(cli("info", "--summary"), {"MEMCACHE_EXT_PURE_PYTHON": "1"})
    assert "PURE-PYTHON core (MEMCACHE_EXT_PURE_PYTHON is set" in r.out


def test_info_names_the_import_error() -> None:
    code = (
        "import runpy, sys; sys.modules['memcache_ext._core_c'] = None; "
        "sys.argv = ['memcache_ext', 'info']; runpy.run_module('memcache_ext', run_name='__main__')"
    )
    r = on_pipe(python("-c", code), {"MEMCACHE_EXT_PURE_PYTHON": ""})
    assert r.returncode == 0, r.err
    assert "core:          pure-Python: the compiled core does not import: " in r.out
    assert "memcache_ext._core_c" in r.out
    assert "pip install --only-binary memcache-ext memcache-ext" in r.out


def test_summary_of_each_state() -> None:
    from memcache_ext.tools import info

    data = info.collect()
    data["core"] = {"implementation": "python", "why": "the build fell back: x" * 20}
    line = info.summary(data)
    assert "PURE-PYTHON core (the build fell back" in line and "...)" in line
    data["core"] = {
        "implementation": "c",
        "build": {"compiler": "gcc (Debian 12.2.0-14) 12.2.0", "cython": "3.1.2"},
    }
    assert "compiled core (gcc 12.2.0, Cython 3.1.2)" in info.summary(data)
    data["extras"] = {"bench": {"a": "1", "b": None}, "plot": {"matplotlib": None}}
    assert "extras: bench (partly) (not installed: plot)" in info.summary(data)


def test_a_reader_that_goes_away_is_no_error() -> None:
    import subprocess

    proc = subprocess.Popen(cli("info"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -1` does once it has its line
    err = proc.stderr.read().decode()
    assert proc.wait(60) in (0, 141), err
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.parametrize(
    "record, state, why",
    [
        (
            {"compiled": [], "failed": {}, "reason": "MEMCACHE_EXT_PURE_PYTHON was set"},
            "pure-Python (built without the extension)",
            "MEMCACHE_EXT_PURE_PYTHON was set",
        ),
        (
            {"compiled": [], "failed": {"*": "command 'false' failed: No such file"}},
            "pure-Python (the build fell back)",
            "the C extension could not be compiled: command 'false' failed: No such file",
        ),
        (
            None,
            "pure-Python",
            "the compiled core does not import: No module named 'memcache_ext._core_c'",
        ),
    ],
    ids=["pure-build", "fell-back", "no-record"],
)
def test_info_says_why_for_each_kind_of_pure_install(
    monkeypatch: pytest.MonkeyPatch, record: Any, state: str, why: str
) -> None:
    from memcache_ext import _core
    from memcache_ext.tools import info

    monkeypatch.setattr(info, "build_record", lambda: record)
    monkeypatch.setattr(info, "PURE_PYTHON", False)
    monkeypatch.setattr(_core, "IMPLEMENTATION", "python")
    monkeypatch.setattr(_core, "IMPORT_ERROR", " (No module named 'memcache_ext._core_c')")
    core = info.core()
    assert (core["state"], core["why"]) == (state, why)
    data = dict(info.collect(), core=core)
    text = info.render(data)
    assert f"core:          {state}: {why}" in text
    assert "pip install --only-binary memcache-ext memcache-ext" in text
    assert f"PURE-PYTHON core ({why[:67]}" in info.summary(data)
