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
pure Python and says so: a setuptools warning on stderr (pip shows it with -v)
and, since pip hides a build's output otherwise, the same text on the terminal
pip runs in. Every build leaves a record, memcache_ext/_build_info.json (the
compiler and Cython versions, or why there is no extension), which
``python -m memcache_ext info`` reads.
"""

import json
import os
import platform
import subprocess
import sys
from glob import glob

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py


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


BUILD_INFO = "_build_info.json"
#: What the build knows before it starts: completed by the build commands.
BUILD = {
    "python": platform.python_version(),
    "platform": platform.platform(),
    "kind": "sanitizers" if SANITIZE else "debug" if DEBUG else "release",
    "cython": None,
}

FALLBACK_WARNING = """\
memcache_ext: the C extension could not be compiled ({error}).
The pure-Python core was installed instead: it works, several times slower.
To get the compiled core, install a prebuilt wheel
    pip install --only-binary memcache-ext memcache-ext
or a C compiler, then install again; MEMCACHE_EXT_REQUIRE_EXTENSIONS=1 makes this
an error that shows the compiler's output. Check what is installed with
    python -m memcache_ext info"""


def _write_record(directory: str, record: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, BUILD_INFO), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, sort_keys=True)


def _compiler_version(compiler: object) -> tuple:
    """(command, first line of its --version), as far as they can be known."""
    command = getattr(compiler, "compiler_so", None) or getattr(compiler, "compiler", None)
    if isinstance(command, (list, tuple)) and command:
        exe = str(command[0])
        try:
            out = subprocess.run(
                [exe, "--version"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        return exe, (out.strip().splitlines() or [exe])[0]
    kind = getattr(compiler, "compiler_type", None)
    return kind, kind


def _to_terminal(text: str) -> None:
    """Show ``text`` on the terminal even when the build's output is captured.

    pip hides a successful build's stdout and stderr unless run with -v
    (pypa/pip#6634), so a warning there never reaches a user at a terminal;
    the terminal itself (``/dev/tty``) still does. Nothing when there is none
    (CI) or when stderr is that terminal already.
    """
    try:
        if sys.stderr.isatty():
            return
        with open("CONOUT$" if os.name == "nt" else "/dev/tty", "w", encoding="utf-8") as tty:
            tty.write("\n" + text + "\n")
    except OSError:
        pass


def _warn_fallback(error: str) -> None:
    """A setuptools warning on stderr, and the same text on the terminal."""
    import warnings

    base: type[Warning]
    try:
        from setuptools.warnings import SetuptoolsWarning

        base = SetuptoolsWarning
    except ImportError:  # setuptools < 67
        base = UserWarning
    category = type("PurePythonFallbackWarning", (base,), {"__module__": "setup"})
    boxed = "*" * 79 + "\n" + FALLBACK_WARNING.format(error=error) + "\n" + "*" * 79
    warnings.warn("\n" + boxed, category, stacklevel=2)
    _to_terminal("WARNING: " + boxed)


class PureRecordBuildPy(build_py):
    """A pure-Python build (no extension to compile) records why."""

    def run(self) -> None:
        super().run()
        if not self.distribution.ext_modules:
            reason = (
                "MEMCACHE_EXT_PURE_PYTHON was set, or the interpreter is not CPython"
                if PURE
                else "Cython was not available"
            )
            record = dict(BUILD, compiled=[], failed={}, reason=reason)
            _write_record(os.path.join(self.build_lib, "memcache_ext"), record)


class OptionalBuildExt(build_ext):
    """Fall back to pure Python on a failed compile, unless the extension is required."""

    def initialize_options(self) -> None:
        super().initialize_options()
        self._failed: dict = {}  # extension name (or "*": all) -> the error

    def run(self) -> None:
        inplace = self.inplace  # super().run() clears it while it builds
        try:
            super().run()
        except Exception as exc:
            if REQUIRE:
                raise
            self._failed["*"] = str(exc)
        built = [e.name for e in self.extensions if e.name not in self._failed]
        if "*" in self._failed:
            built = []
        cmd, version = _compiler_version(getattr(self, "compiler", None))
        record = dict(
            BUILD, compiled=built, failed=self._failed, compiler=version, compiler_command=cmd
        )
        _write_record(os.path.join(self.build_lib, "memcache_ext"), record)
        if inplace:  # pip install -e / build_ext --inplace: next to the sources
            package_dir = self.get_finalized_command("build_py").get_package_dir("memcache_ext")
            _write_record(package_dir, record)
        if self._failed:
            _warn_fallback(next(iter(self._failed.values())))

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE:
                raise
            self._failed[ext.name] = str(exc)


def extensions() -> list:
    if PURE:
        print("memcache_ext: pure-Python build (MEMCACHE_EXT_PURE_PYTHON or non-CPython)")
        return []
    try:
        import Cython
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
    BUILD["cython"] = Cython.__version__
    kind = " (sanitizers)" if SANITIZE else " (debug)" if DEBUG else ""
    print("memcache_ext: accelerated build of", ", ".join(e.name for e in exts) + kind)
    # force: never reuse C files cythonized with another build's directives.
    return cythonize(exts, compiler_directives=DIRECTIVES, force=True)


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": PureRecordBuildPy},
)
