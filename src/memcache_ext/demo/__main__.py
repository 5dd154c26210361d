"""``python -m memcache_ext.demo`` (same as ``python -m memcache_ext demo``)."""

import sys

from . import main

sys.exit(main())
