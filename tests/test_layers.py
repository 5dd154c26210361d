"""The package's layers: imports go only downward, and every module imports on its own.

core < memory < integrations < tools (DESIGN.md section 2). Every import in
every module (top-level, inside functions, under TYPE_CHECKING) is read with
``ast`` (``.pyx`` files with a regular expression) and must name a module of
its own layer or a lower one. Only the selector modules import a compiled
``*_c`` module at run time. Then, as multidict's ``test_circular_imports.py``
does, each module is imported alone in a fresh interpreter with warnings as
errors, which finds import cycles and modules that only work after another
was imported first.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

import memcache_ext

PACKAGE = Path(memcache_ext.__file__).resolve().parent
LAYERS = ("core", "memory", "integrations", "tools")

#: The first component below memcache_ext -> its layer. A new module must be placed here.
LAYER_OF = {
    **dict.fromkeys(
        (
            "__init__",
            "_constants",
            "_version",
            "_validate",
            "_stats",
            "keys",
            "_core",
            "_core_c",
            "_core_py",
            "_sizeof",
            "_sizeof_c",
            "_sizeof_py",
            "_fastcall",
            "_fastcall_c",
            "_fastcall_py",
        ),
        "core",
    ),
    **dict.fromkeys(
        (
            "_procmem",
            "gcstats",
            "deque",
            "singleton",
            "decorators",
            "manager",
            "_budget",
            "_cleanup_pass",
            "_manager_stats",
        ),
        "memory",
    ),
    **dict.fromkeys(("asgi", "guard", "cleanup", "fastapi", "prometheus", "redis"), "integrations"),
    **dict.fromkeys(("tools", "__main__"), "tools"),
}
#: The only modules that may import a compiled *_c module at run time.
SELECTORS = {"_core", "_sizeof", "_fastcall"}
#: The package's lazy exports (name -> module): its ``__getattr__`` imports them on first
#: use, and ``__init__`` imports them under TYPE_CHECKING only, for type checkers.
LAZY = dict(memcache_ext._LAZY)
LAZY_IMPORTS = {f"memcache_ext.{m}" for m in LAZY.values()} | {
    f"memcache_ext.{m}.{name}" for name, m in LAZY.items()
}

_PYX_IMPORT = re.compile(
    r"^\s*(?:from\s+(\S+)\s+import\s+([\w, ()]+)|import\s+(\S+))", re.MULTILINE
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def package_files() -> list[Path]:
    return sorted(
        p
        for p in PACKAGE.rglob("*")
        if p.suffix in (".py", ".pyx") and "__pycache__" not in p.parts
    )


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(
    source: str, module: str, is_package: bool, pyx: bool = False
) -> Iterator[tuple[str, int, bool]]:
    """(absolute module imported, line, only under TYPE_CHECKING) for each import."""
    package = module if is_package else module.rpartition(".")[0]
    if pyx:  # Cython: Python-level imports only (cimports are compile-time links)
        for m in _PYX_IMPORT.finditer(source):
            line = source.count("\n", 0, m.start()) + 1
            base, names, plain = m.groups()
            if plain:
                yield plain, line, False
            elif base:
                yield from (
                    (f"{base}.{n.strip()}", line, False)
                    for n in names.strip("() ").split(",")
                    if n.strip()
                )
                yield base, line, False
        return
    tree = ast.parse(source)
    typing_only = _type_checking_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, node.lineno in typing_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno, node.lineno in typing_only
            for alias in node.names:  # ``from . import manager`` imports a module
                yield f"{target}.{alias.name}", node.lineno, node.lineno in typing_only


def layer_key(name: str) -> Optional[str]:
    """The first component below memcache_ext of an absolute module name (None: outside)."""
    parts = name.split(".")
    if parts[0] != "memcache_ext":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def violations(module: str, source: str, is_package: bool, pyx: bool = False) -> list[str]:
    """Every import in ``source`` (the text of ``module``) that breaks the layers."""
    own = layer_key(module)
    assert own in LAYER_OF, f"{module}: not placed in a layer (add it to LAYER_OF)"
    found = []
    for target, line, typing_only in imports_of(source, module, is_package, pyx):
        key = layer_key(target)
        if key is None or key not in LAYER_OF:
            continue  # another package, or an attribute such as ``from . import LruCache``
        if own == "__init__" and typing_only and target in LAZY_IMPORTS:
            continue  # a lazy export's type: no import at run time
        if LAYERS.index(LAYER_OF[key]) > LAYERS.index(LAYER_OF[own]):
            found.append(f"{module}:{line} ({LAYER_OF[own]}) imports {target} ({LAYER_OF[key]})")
        if key.endswith("_c") and own not in SELECTORS and not typing_only and key != own:
            found.append(
                f"{module}:{line} imports the compiled {target}; only the "
                f"selectors {sorted(SELECTORS)} may"
            )
    return found


def test_every_module_imports_only_downward() -> None:
    found = []
    for path in package_files():
        found += violations(
            module_name(path),
            path.read_text(),
            path.name == "__init__.py",
            pyx=path.suffix == ".pyx",
        )
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_library_never_imports_the_tools() -> None:
    users = []
    for path in package_files():
        module = module_name(path)
        if LAYER_OF[layer_key(module) or "__init__"] == "tools":
            continue
        users += [
            f"{module}:{line}"
            for target, line, _ in imports_of(
                path.read_text(), module, path.name == "__init__.py", path.suffix == ".pyx"
            )
            if layer_key(target) == "tools"
        ]
    assert not users, users


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from .tools import procs\n", "memory) imports memcache_ext.tools"),
        ("from . import fastapi\n", "memory) imports memcache_ext.fastapi"),
        ("def f():\n    from .redis import TieredCache\n", "memory) imports memcache_ext.redis"),
        ("import memcache_ext.tools.cli\n", "memory) imports memcache_ext.tools"),
        ("from ._core_c import CLruCache\n", "only the selectors"),
    ],
)
def test_the_check_sees_an_upward_import(source: str, expected: str) -> None:
    """The checker itself: a memory module importing upward (or a compiled core) is caught."""
    found = violations("memcache_ext.deque", source, is_package=False)
    assert any(expected in f for f in found), found
    assert not violations("memcache_ext.deque", "from ._constants import MIB\n", False)


def test_the_check_allows_only_typed_lazy_exports_in_init() -> None:
    """``__init__`` may name a lazy export's module under TYPE_CHECKING, nothing else above it."""
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    {}\n"
    lazy = "from .manager import CacheManager as CacheManager"
    assert not violations("memcache_ext", typed.format(lazy), is_package=True)
    assert violations("memcache_ext", lazy + "\n", is_package=True)  # at run time
    for other in ("from .manager import manager_or_default", "from .fastapi import memory_router"):
        assert violations("memcache_ext", typed.format(other), is_package=True), other


def test_init_types_every_lazy_export_and_imports_none() -> None:
    """The TYPE_CHECKING block of ``__init__`` gives each lazy name its type (``from .m
    import name as name``), and ``import memcache_ext`` imports none of their modules."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {
        alias.name: node.module
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
        if alias.asname == alias.name
    }
    assert {n: m for n, m in typed.items() if n in LAZY} == LAZY
    modules = sorted({f"memcache_ext.{m}" for m in LAZY.values()})
    code = (
        "import sys, memcache_ext\n"
        f"loaded = [m for m in {modules!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        f"for name, module in {LAZY!r}.items():\n"
        "    value = getattr(memcache_ext, name)\n"
        "    assert value is getattr(sys.modules['memcache_ext.' + module], name), name\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=60)


def importables() -> list[str]:
    names = set()
    for path in package_files():
        if path.suffix == ".pyx":
            name = module_name(path)
            if (path.parent / f"{path.stem}.pyi").exists():
                names.add(name)  # the compiled module, when built
            continue
        names.add(module_name(path))
    return sorted(names)


@pytest.mark.parametrize("module", importables())
def test_module_imports_alone(module: str) -> None:
    """No import cycle, no hidden order: ``import module`` works in a fresh interpreter."""
    if module.endswith("_c"):
        pytest.importorskip(module, reason="compiled module not built")
    subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"], check=True, timeout=60
    )
