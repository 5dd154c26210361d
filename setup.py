"""Build the compiled parts of memcache_ext.

Metadata lives in pyproject.toml; this file only decides whether and how the
Cython modules are compiled.

Switches (environment variables):
  MEMCACHE_EXT_PURE_PYTHON=1        build no extension: a pure-Python install.
  MEMCACHE_EXT_REQUIRE_EXTENSIONS=1 a failed compile fails the build (set in CI
                                    and inside cibuildwheel, never a silent
                                    pure wheel).
  MEMCACHE_EXT_DEBUG_BUILD=1        -O0 -g3, C assertions on, Cython bounds and
                                    wraparound checks on.
  MEMCACHE_EXT_SANITIZE=1           AddressSanitizer + UndefinedBehaviorSanitizer
                                    (gcc/clang); run the tests with the runtime
                                    preloaded (see .ci/run).
The Cython directives live here only (DIRECTIVES below), never in the .pyx
headers, so a debug build really gets its checks.
Without a switch, a source install on a machine with no compiler falls back to
pure Python and says so.
"""

import os
import platform
import sys
from glob import glob

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


PURE = _flag("MEMCACHE_EXT_PURE_PYTHON") or platform.python_implementation() != "CPython"
REQUIRE = _flag("MEMCACHE_EXT_REQUIRE_EXTENSIONS") or _flag("CIBUILDWHEEL")
DEBUG = _flag("MEMCACHE_EXT_DEBUG_BUILD")
SANITIZE = _flag("MEMCACHE_EXT_SANITIZE")

# The one home of the Cython directives. cdivision stays on in every build:
# it changes the meaning of / and % on negative C ints, and a debug build
# must compute what the release build computes.
DIRECTIVES = {
    "language_level": "3",
    "embedsignature": True,
    "cdivision": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
}

if PURE and _flag("MEMCACHE_EXT_REQUIRE_EXTENSIONS"):
    sys.exit(
        "memcache_ext: MEMCACHE_EXT_REQUIRE_EXTENSIONS is set but the extension "
        "cannot be built here (pure-Python switch or non-CPython interpreter)"
    )


class OptionalBuildExt(build_ext):
    """Fall back to pure Python on a failed compile, unless the extension is required."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            self._fallback(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)

    @staticmethod
    def _fallback(exc: BaseException) -> None:
        if REQUIRE:
            raise exc
        print("*" * 72, file=sys.stderr)
        print("memcache_ext: the C extension could not be compiled:", exc, file=sys.stderr)
        print("memcache_ext: installing the pure-Python implementation (slower).", file=sys.stderr)
        print("*" * 72, file=sys.stderr)


def extensions() -> list:
    if PURE:
        print("memcache_ext: pure-Python build (MEMCACHE_EXT_PURE_PYTHON or non-CPython)")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE:
            raise
        print("memcache_ext: Cython is not available; pure-Python build", file=sys.stderr)
        return []
    from setuptools import Extension

    if sys.platform == "win32":
        cflags = ["/Od", "/Zi"] if DEBUG else ["/O2"]
        ldflags: list = []
    else:
        cflags = ["-O0", "-g3", "-UNDEBUG"] if DEBUG else ["-O3"]
        ldflags = []
        if SANITIZE:
            san = [
                "-fsanitize=address,undefined",
                "-fno-omit-frame-pointer",
                "-fno-sanitize-recover=undefined",
            ]
            cflags = ["-O1", "-g", "-UNDEBUG", *san]
            ldflags = san
    exts = [
        Extension(
            "memcache_ext." + os.path.splitext(os.path.basename(path))[0],
            [path],
            include_dirs=["src/memcache_ext"],
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
        for path in sorted(glob("src/memcache_ext/*.pyx"))
    ]
    kind = " (sanitizers)" if SANITIZE else " (debug)" if DEBUG else ""
    print("memcache_ext: accelerated build of", ", ".join(e.name for e in exts) + kind)
    # force: never reuse C files cythonized with another build's directives.
    return cythonize(exts, compiler_directives=DIRECTIVES, force=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
