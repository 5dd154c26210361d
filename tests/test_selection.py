"""How the implementation is chosen."""

from __future__ import annotations

import os
import subprocess
import sys

import memcache_ext
from memcache_ext import PyLruCache


def run(code: str, **env: str) -> str:
    environ = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                          text=True, timeout=60, check=True).stdout.strip()


def test_pure_switch_forces_the_twin():
    out = run("import memcache_ext as m; print(m.IMPLEMENTATION, m.LruCache.__name__)",
              MEMCACHE_EXT_PURE_PYTHON="1")
    assert out == "python PyLruCache"


def test_default_is_the_compiled_core_when_built():
    from conftest import C_IMPORT_ERROR

    out = run("import memcache_ext as m; print(m.IMPLEMENTATION, m.LruCache.__name__)",
              MEMCACHE_EXT_PURE_PYTHON="")
    expected = "python PyLruCache" if C_IMPORT_ERROR else "c CLruCache"
    assert out == expected


def test_missing_extension_gives_a_helpful_import_error():
    code = (
        "import sys; sys.modules['memcache_ext._core_c'] = None\n"
        "import memcache_ext as m\n"
        "print(m.IMPLEMENTATION, m.LruCache.__name__)\n"
        "try:\n"
        "    from memcache_ext import CLruCache\n"
        "except ImportError as e:\n"
        "    print('ImportError', 'wheel' in str(e))\n"
    )
    assert run(code).splitlines() == ["python PyLruCache", "ImportError True"]


def test_public_names():
    assert memcache_ext.PyLruCache is PyLruCache
    assert memcache_ext.IMPLEMENTATION in ("c", "python")
    assert callable(memcache_ext.deep_sizeof)
    assert set(memcache_ext.__all__) <= set(dir(memcache_ext))
