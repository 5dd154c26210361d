"""``python -m memcache_ext COMMAND``: info, bench, demo, loadtest.

Conventions: ``--help`` prints to stdout and exits 0; no arguments prints the
help to stderr and exits 2 (a usage error); an unknown command or option is
named in the error, with the valid ones. Each command parses its own options
(``python -m memcache_ext COMMAND --help``).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import Optional

from .._version import __version__

PROG = "python -m memcache_ext"
COMMANDS = {
    "info": ("memcache_ext.tools.info", "what is installed: the core in use and why, memory limit"),
    "bench": ("memcache_ext.tools.bench", "side-by-side speed, memory and hit-ratio tables"),
    "demo": ("memcache_ext.tools.demo", "the demo service (FastAPI, SQLite) under uvicorn"),
    "loadtest": (
        "memcache_ext.tools.loadtest",
        "RSS under load: bounded vs unbounded demo service",
    ),
}
USAGE = f"usage: {PROG} [-h] [--version] COMMAND [options]"


def help_text() -> str:
    names = "\n".join(f"  {name:10s} {help_}" for name, (_, help_) in COMMANDS.items())
    return (
        f"{USAGE}\n\n"
        f"commands:\n{names}\n\n"
        f"options:\n"
        f"  -h, --help  show this help and exit\n"
        f"  --version   print the version and exit\n\n"
        f"'{PROG} COMMAND --help' shows the options of a command."
    )


def usage_error(message: str) -> int:
    print(f"{USAGE}\n{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(help_text(), file=sys.stderr)
        return 2
    first = argv[0]
    if first in ("-h", "--help"):
        print(help_text())
        return 0
    if first == "--version":
        print(f"memcache_ext {__version__}")
        return 0
    names = ", ".join(COMMANDS)
    if first.startswith("-"):
        return usage_error(
            f"unknown option {first!r} (options here: -h, --help, --version; a command's "
            f"options go after it: {PROG} COMMAND {first})"
        )
    if first not in COMMANDS:
        close = difflib.get_close_matches(first, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return usage_error(f"unknown command {first!r} (commands: {names}){hint}")
    module = importlib.import_module(COMMANDS[first][0])
    try:
        return int(module.main(argv[1:]))
    except BrokenPipeError:  # `... | head`: the reader has gone, as for any Unix tool
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
        return 141
