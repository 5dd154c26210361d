"""``python -m memcache_ext info``: what is installed here, and why.

The implementation in use and the reason (compiled; pure-Python because it
was forced, because the build fell back, or because the compiled module does
not import, with the error), what the compiled core was built with (the
record ``setup.py`` leaves in the package: compiler, Cython, Python), the
memory limit this process lives under and where it comes from, and which
optional extras are installed. ``summary()`` is the same in one line: bench
and the load test print it at the top of their output.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from importlib import metadata, resources
from typing import Any, Optional

from .. import _core, _sizeof
from .._constants import MIB, PURE_PYTHON
from .._procmem import memory_limit, rss
from .._version import __version__

BUILD_INFO = "_build_info.json"
DIST = "memcache-ext"
#: The extras a user installs for a feature (test, lint and docs are for development).
USER_EXTRAS = ("bench", "fastapi", "prometheus", "redis", "plot")
#: Used when the package metadata cannot be read (a source tree on sys.path).
FALLBACK_EXTRAS = {
    "bench": ["cachetools", "lru-dict", "cachebox", "libcachesim"],
    "fastapi": ["fastapi", "uvicorn"],
    "prometheus": ["prometheus-client"],
    "redis": ["redis"],
    "plot": ["matplotlib"],
}
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)[^;]*;\s*.*extra\s*==\s*['\"]([\w-]+)['\"]")


def build_record() -> Optional[dict[str, Any]]:
    """What ``setup.py`` recorded when it built this install, or None."""
    try:
        text = resources.files("memcache_ext").joinpath(BUILD_INFO).read_text(encoding="utf-8")
        record = json.loads(text)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _compiled_file() -> Optional[str]:
    module = sys.modules.get("memcache_ext._core_c")
    return getattr(module, "__file__", None)


def core() -> dict[str, Any]:
    """The core in use: ``implementation`` ("c" or "python"), ``state`` and ``why``."""
    importable = _core.IMPORT_ERROR is None
    error = (_core.IMPORT_ERROR or "").strip().strip("()")
    record = build_record()
    out: dict[str, Any] = {
        "implementation": _core.IMPLEMENTATION,
        "deep_sizeof": _sizeof.IMPLEMENTATION,
        "compiled_importable": importable,
        "import_error": None if importable else error,
        "file": _compiled_file(),
        "build": record,
    }
    failed = (record or {}).get("failed") or {}
    if _core.IMPLEMENTATION == "c":
        out["state"] = "compiled"
        out["why"] = "the compiled core imported"
    elif PURE_PYTHON:
        out["state"] = "pure-Python (forced)"
        out["why"] = "MEMCACHE_EXT_PURE_PYTHON is set" + (
            "; the compiled core is installed" if importable else ""
        )
    elif failed:
        out["state"] = "pure-Python (the build fell back)"
        out["why"] = "the C extension could not be compiled: " + str(next(iter(failed.values())))
    elif record is not None and record.get("reason"):
        out["state"] = "pure-Python (built without the extension)"
        out["why"] = str(record["reason"])
    else:
        out["state"] = "pure-Python"
        out["why"] = f"the compiled core does not import: {error}"
    return out


def _compiler_short(text: Optional[str]) -> Optional[str]:
    """``gcc (Debian 12.2.0-14) 12.2.0`` -> ``gcc 12.2.0``."""
    if not text:
        return None
    name = next((n for n in ("clang", "gcc", "icx", "icc", "msvc") if n in text.lower()), None)
    version = re.search(r"\d+\.\d+(?:\.\d+)?", text)
    if name is None:
        return text.split()[0]
    return f"{name} {version.group(0)}" if version else name


def extras() -> dict[str, dict[str, Optional[str]]]:
    """Extra -> {distribution: installed version or None}, for the user-facing extras."""
    wanted: dict[str, list[str]] = {}
    try:
        for req in metadata.requires(DIST) or []:
            m = _REQ.match(req)
            if m and m.group(2) in USER_EXTRAS:
                wanted.setdefault(m.group(2), []).append(m.group(1))
    except metadata.PackageNotFoundError:
        pass
    if not wanted:
        wanted = FALLBACK_EXTRAS
    out: dict[str, dict[str, Optional[str]]] = {}
    for extra in USER_EXTRAS:
        found: dict[str, Optional[str]] = {}
        for dist in wanted.get(extra, []):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                found[dist] = None
        out[extra] = found
    return out


def collect() -> dict[str, Any]:
    """Everything ``info`` reports, as a dict (what ``--json`` prints)."""
    limit = memory_limit()
    rss_bytes, rss_source = rss()
    return {
        "memcache_ext": __version__,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "core": core(),
        "memory_limit": {"bytes": limit.nbytes, "source": limit.source},
        "rss": {"bytes": rss_bytes, "source": rss_source},
        "extras": extras(),
    }


def _limit_short(source: str) -> str:
    if source.startswith("physical memory"):
        return "physical memory"
    if source.startswith("cgroup"):
        return " ".join(source.split()[:2])
    return source


def _core_short(c: dict[str, Any]) -> str:
    if c["implementation"] == "c":
        build = c.get("build") or {}
        made = ", ".join(
            x
            for x in (
                _compiler_short(build.get("compiler")),
                f"Cython {build['cython']}" if build.get("cython") else None,
            )
            if x
        )
        return f"compiled core ({made or 'no build record'})"
    why = c["why"]
    if len(why) > 70:
        why = why[:67] + "..."
    return f"PURE-PYTHON core ({why})"


def summary(data: Optional[dict[str, Any]] = None) -> str:
    """The one line bench and the load test print first."""
    d = collect() if data is None else data
    have = {e: [v is not None for v in dists.values()] for e, dists in d["extras"].items()}
    present = [e for e, got in have.items() if got and all(got)]
    partial = [f"{e} (partly)" for e, got in have.items() if any(got) and not all(got)]
    missing = [e for e, got in have.items() if got and not any(got)]
    extras_text = ", ".join(present + partial) or "none"
    if missing:
        extras_text += f" (not installed: {', '.join(missing)})"
    limit = d["memory_limit"]
    return (
        f"memcache_ext {d['memcache_ext']}, {d['python_implementation']} {d['python']}: "
        f"{_core_short(d['core'])}; memory limit {limit['bytes'] / MIB:,.0f} MB "
        f"({_limit_short(limit['source'])}); extras: {extras_text}"
    )


def render(d: dict[str, Any]) -> str:
    """The human-readable report."""
    c = d["core"]
    lines = [
        f"memcache_ext {d['memcache_ext']} on {d['python_implementation']} {d['python']} "
        f"({d['platform']})",
        f"python:        {d['executable']}",
        f"core:          {c['state']}: {c['why']}",
    ]
    if c["file"]:
        lines.append(f"               {c['file']}")
    build = c.get("build")
    if build is None:
        lines.append(
            "build:         no build record (a wheel or a tree built before records existed, "
            "or a source tree on sys.path)"
        )
    else:
        made = ", ".join(
            x
            for x in (
                build.get("compiler"),
                f"Cython {build['cython']}" if build.get("cython") else None,
                f"Python {build.get('python')}",
                f"{build.get('kind', 'release')} build",
            )
            if x
        )
        lines.append(f"build:         {made}")
        done = [name.rsplit(".", 1)[-1] for name in build.get("compiled") or []]
        lines.append(f"               compiled: {', '.join(done) or 'nothing'}")
        for name, error in (build.get("failed") or {}).items():
            lines.append(f"               failed: {name}: {error}")
        if build.get("reason"):
            lines.append(f"               why: {build['reason']}")
    lines.append(f"deep_sizeof:   {'compiled' if c['deep_sizeof'] == 'c' else 'pure-Python'}")
    limit = d["memory_limit"]
    lines.append(f"memory limit:  {limit['bytes'] / MIB:,.0f} MB, from {limit['source']}")
    lines.append(f"process RSS:   {d['rss']['bytes'] / MIB:,.1f} MB (from {d['rss']['source']})")
    first = True
    for extra, dists in d["extras"].items():
        if not dists:
            continue
        label = "extras:" if first else ""
        first = False
        have = all(dists.values())
        mark = "yes" if have else "no"
        text = ", ".join(f"{k} {v}" if v else f"{k} (missing)" for k, v in dists.items())
        hint = "" if have else f'   pip install "{DIST}[{extra}]"'
        lines.append(f"{label:15s}{extra:11s}{mark:4s}{text}{hint}")
    if c["implementation"] != "c" and not PURE_PYTHON:
        lines += [
            "",
            "The compiled core is several times faster. Get it from a prebuilt wheel",
            f"(pip install --only-binary {DIST} {DIST}) or install a C compiler and reinstall;",
            "MEMCACHE_EXT_REQUIRE_EXTENSIONS=1 pip install . shows the compiler's error.",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m memcache_ext info",
        description="What is installed here: the cache core in use and why, what it was built "
        "with, the memory limit and its source, the optional extras.",
    )
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.add_argument(
        "--summary", action="store_true", help="print the one-line summary bench starts with"
    )
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.summary:
        print(summary(data))
    else:
        print(render(data))
    return 0
