"""``python -m memcache_ext COMMAND``: the tools' command line (``tools.cli``)."""

from __future__ import annotations

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
