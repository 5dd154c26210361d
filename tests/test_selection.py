"""How the implementation is chosen."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import memcache_ext
from memcache_ext import PyLruCache


def run(code: str, **env: str) -> str:
    environ = dict(os.environ, **env)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


def test_pure_switch_forces_the_twin():
    out = run(
        "import memcache_ext as m; print(m.IMPLEMENTATION, m.LruCache.__name__)",
        MEMCACHE_EXT_PURE_PYTHON="1",
    )
    assert out == "python PyLruCache"


def test_default_is_the_compiled_core_when_built():
    from conftest import C_IMPORT_ERROR

    out = run(
        "import memcache_ext as m; print(m.IMPLEMENTATION, m.LruCache.__name__)",
        MEMCACHE_EXT_PURE_PYTHON="",
    )
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


def test_names_that_cannot_be_had_are_absent_not_broken():
    """Without the compiled core (PyPy, no compiler), CLruCache is left out of
    __all__: star-imports, hasattr() and pydoc work; getattr() raises
    AttributeError; `from memcache_ext import CLruCache` raises ImportError
    with the reason (as propcache's facade does)."""
    code = (
        "import sys; sys.modules['memcache_ext._core_c'] = None\n"
        "import memcache_ext as m, pydoc\n"
        "print('CLruCache' in m.__all__, hasattr(m, 'CLruCache'))\n"
        "ns = {}; exec('from memcache_ext import *', ns); print('LruCache' in ns)\n"
        "print('LruCache' in pydoc.render_doc(m))\n"
        "try:\n"
        "    m.CLruCache\n"
        "except AttributeError as e:\n"
        "    print('AttributeError', 'wheel' in str(e))\n"
        "def f():\n"
        "    from memcache_ext import CLruCache\n"
        "try:\n"
        "    f()\n"
        "except ImportError as e:\n"
        "    print('ImportError', 'wheel' in str(e), e.name)\n"
    )
    assert run(code).splitlines() == [
        "False False",
        "True",
        "True",
        "AttributeError True",
        "ImportError True memcache_ext",
    ]


def test_public_names():
    assert memcache_ext.PyLruCache is PyLruCache
    assert memcache_ext.IMPLEMENTATION in ("c", "python")
    assert callable(memcache_ext.deep_sizeof)
    assert set(memcache_ext.__all__) <= set(dir(memcache_ext))


def test_readme_quick_start_runs():
    """The README's quick start is real code: run it and check what it claims."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("## Quick start") :].split("```python")[1].split("```")[0]
    namespace: dict[str, Any] = {}
    exec(compile(block, "README quick start", "exec"), namespace)
    stats = namespace["cache"].stats()
    assert (stats["size"], stats["hits"], stats["misses"]) == (3, 1, 1)
    assert namespace["profile"] == {"id": 7, "name": "Grace"}
