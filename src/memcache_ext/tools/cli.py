"""``python -m memcache_ext COMMAND``: bench, demo, loadtest."""

from __future__ import annotations

import importlib
import sys
from typing import Optional

COMMANDS = {
    "bench": ("memcache_ext.tools.bench", "side-by-side speed and memory table"),
    "demo": ("memcache_ext.tools.demo", "the demo service (FastAPI, SQLite) under uvicorn"),
    "loadtest": (
        "memcache_ext.tools.loadtest",
        "RSS under load: bounded vs unbounded demo service",
    ),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        names = "\n".join(f"  {name:10s} {help_}" for name, (_, help_) in COMMANDS.items())
        print(
            f"usage: python -m memcache_ext COMMAND [options]\n\ncommands:\n{names}",
            file=sys.stderr,
        )
        return 2 if argv and argv[0] not in ("-h", "--help") else 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]))
