"""The documentation is tested: every Python example runs, every figure resolves, the site builds.

The convention for code blocks in README.md and docs/*.md:

* a ```` ```python ```` block is run with ``exec``; a ```` ```pycon ```` block (``>>>`` prompts
  and their output) is run with doctest (ELLIPSIS on);
* the blocks of one page run in order in one namespace (later examples build on earlier ones),
  each page in its own fresh interpreter, so a page's global state (``cache_manager``, the
  Prometheus registry, GC callbacks) never leaks into another page or into this suite;
* a block that is shown but not run has the line ``<!-- no-run: why -->`` right before its
  fence; any other Python-like fence (``py``, ``python3``, ...) is an error, so no example
  escapes the tests by a typo;
* a page that needs a service says so once, e.g. ``<!-- requires: redis-server -->``: the test
  starts a redis-server on a free port and passes its URL as ``REDIS_URL`` (skipped without
  one, failed under ``MEMCACHE_EXT_REQUIRE_REDIS``).

Each block is its own test (``docs/cache.md:42``). The page runner is this file run as a script.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

RUN = {"python": "exec", "pycon": "doctest"}
PYTHON_LIKE = {"py", "py3", "python3", "ipython", "ipython3", "pyi", "python-repl", "pyrepl"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*(?P<why>\S.*?)\s*-->\s*$")
REQUIRES = re.compile(r"^<!--\s*requires:\s*(?P<what>[\w, -]+?)\s*-->\s*$", re.M)
SERVICES = {"redis-server"}
# Examples that use an optional integration are skipped (not failed) when it is missing.
OPTIONAL_MODULES = {
    "fastapi",
    "starlette",
    "httpx",
    "prometheus_client",
    "redis",
    "msgpack",
    "uvicorn",
    "pydantic",
}
README_COMMANDS = (
    'pip install ".[bench]" && python -m memcache_ext bench',
    'pip install ".[test]" && python -m pytest',
)


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    no_run: Optional[str]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    found = [README] if README.exists() else []
    return found + (sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else [])


def parse(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with its language and no-run marker."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        lang = (m.group("info").split() or [""])[0].lower()
        prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        marker = NO_RUN.match(prev)
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            close = lines[j].strip()
            if close.startswith(fence[0] * len(fence)) and not close.strip(fence[0]):
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append(
            Block(rel, i + 1, lang, "\n".join(body) + "\n", marker.group("why") if marker else None)
        )
        i = j + 1
    return out


ALL_BLOCKS = [b for p in pages() for b in parse(p)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang in RUN and b.no_run is None]


def page_requires(page: str) -> set[str]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return {w.strip() for m in REQUIRES.finditer(text) for w in m.group("what").split(",")}


# -- the page runner (this file as a script, in a fresh interpreter per page) ----------------


def _compiled_core_error() -> Optional[str]:
    """Why the compiled core is not the active one here, or None."""
    import memcache_ext

    if memcache_ext.IMPLEMENTATION == "c":
        return None
    try:
        import memcache_ext._core_c
    except ImportError as exc:
        return str(exc)
    return "the pure-Python core is forced (MEMCACHE_EXT_PURE_PYTHON)"


def run_page(page: str) -> dict[str, dict[str, str]]:
    """Run the runnable blocks of ``page`` in order in one namespace; the result per block."""
    import doctest
    import traceback

    namespace: dict[str, Any] = {"__name__": "__docs__"}
    results: dict[str, dict[str, str]] = {}
    core_error = _compiled_core_error()
    for block in parse(ROOT / page):
        if block.lang not in RUN or block.no_run is not None:
            continue
        if core_error and "CLruCache" in block.code:
            results[block.id] = {
                "status": "skipped",
                "why": f"needs the compiled core: {core_error}",
            }
            continue
        source = "\n" * (block.line) + block.code  # tracebacks show the page's line numbers
        try:
            if RUN[block.lang] == "exec":
                exec(compile(source, page, "exec"), namespace)
            else:
                test = doctest.DocTestParser().get_doctest(
                    block.code, namespace, block.id, page, block.line
                )
                report: list[str] = []
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
                runner.run(test, out=report.append, clear_globs=False)
                if runner.failures:
                    raise AssertionError("doctest failed:\n" + "".join(report))
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in OPTIONAL_MODULES:
                results[block.id] = {
                    "status": "skipped",
                    "why": f"optional dependency missing: {exc.name}",
                }
                continue
            results[block.id] = {"status": "failed", "error": traceback.format_exc()}
        except BaseException:  # noqa: BLE001 - reported to the parent test
            results[block.id] = {"status": "failed", "error": traceback.format_exc()}
        else:
            results[block.id] = {"status": "passed"}
    return results


# -- the tests ------------------------------------------------------------------------------

_results: dict[str, dict[str, dict[str, str]]] = {}


@pytest.fixture(scope="session")
def page_results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    def get(page: str) -> dict[str, dict[str, str]]:
        if page in _results:
            return _results[page]
        env = dict(os.environ)
        server = None
        try:
            if "redis-server" in page_requires(page):
                from support import RedisServer, require_redis

                require_redis()
                server = RedisServer()
                server.start()
                env["REDIS_URL"] = server.url
            workdir = tmp_path_factory.mktemp("docs")
            out = workdir / "results.json"
            proc = subprocess.run(
                [sys.executable, __file__, page, str(out)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if proc.returncode != 0 or not out.exists():
                pytest.fail(
                    f"page runner for {page} exited with {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
                    pytrace=False,
                )
            _results[page] = json.loads(out.read_text())
        finally:
            if server is not None:
                server.stop()
        return _results[page]

    return get


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_example_runs(block: Block, page_results: Any) -> None:
    missing = page_requires(block.page) - SERVICES
    assert not missing, f"{block.page}: unknown requirement(s) {missing}; known: {SERVICES}"
    result = page_results(block.page).get(block.id)
    assert result is not None, f"{block.id} was not run"
    if result["status"] == "skipped":
        pytest.skip(result["why"])
    if result["status"] == "failed":
        pytest.fail(f"{block.id}:\n{block.code}\n{result['error']}", pytrace=False)


def test_every_python_block_is_run_or_marked() -> None:
    assert RUNNABLE, "no runnable example found"
    bad = [
        f"{b.id}: fence '{b.lang}': use ```python (run) or ```pycon (doctest), "
        f"or mark it <!-- no-run: why -->"
        for b in ALL_BLOCKS
        if b.lang in PYTHON_LIKE
    ]
    bad += [
        f"{b.id}: a ```python block starting with >>> must be ```pycon"
        for b in ALL_BLOCKS
        if b.lang == "python" and b.code.lstrip().startswith(">>>")
    ]
    bad += [
        f"{b.id}: <!-- no-run --> before a '{b.lang}' block, which is never run"
        for b in ALL_BLOCKS
        if b.no_run is not None and b.lang not in RUN
    ]
    for path in pages():  # a marker must stand right before a fence
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if NO_RUN.match(line):
                nxt = next((ln for ln in lines[n + 1 :] if ln.strip()), "")
                if not FENCE.match(nxt):
                    bad.append(f"{path.relative_to(ROOT)}:{n + 1}: no-run marker without a fence")
    assert not bad, "\n".join(bad)


def test_readme_is_one_screen_with_the_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for command in README_COMMANDS:  # .ci/run and the tests rely on these exact lines
        assert command in text, command
    assert "## Quick start" in text


def test_readme_links_resolve() -> None:
    if not DOCS.is_dir():
        pytest.skip("docs/ is not part of this copy (sdist, wheel tests)")
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not missing, missing


def _hooks() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figures_come_from_the_benchmark_files() -> None:
    if not (DOCS / "hooks.py").exists():
        pytest.skip("docs/ is not part of this copy (sdist, wheel tests)")
    hooks = _hooks()
    used = 0
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        used += len(hooks.placeholders(text))
        rendered = hooks.render(text, DOCS)  # raises on a missing file, row or field
        assert not hooks.placeholders(rendered), f"{path.name}: a placeholder was left"
    assert used, "no page uses a figure placeholder"
    bench = json.loads((DOCS / "bench.json").read_text())
    table = hooks.render("{{ bench.table }}", DOCS)
    assert len(table.splitlines()) == 2 + len(bench["results"])
    with pytest.raises(hooks.FigureError):
        hooks.render('{{ figure("bench", "no such cache", "get_hit") }}', DOCS)


def test_readme_figures_match_bench_json() -> None:
    """The README's small speed table is a copy: it must say what docs/bench.json says."""
    if not (DOCS / "bench.json").exists():
        pytest.skip("docs/ is not part of this copy (sdist, wheel tests)")
    hooks = _hooks()
    text = README.read_text(encoding="utf-8")
    header = next(ln for ln in text.splitlines() if ln.strip().startswith("| ns per operation |"))
    fields = {"get hit": "get_hit", "set+evict": "set_evict", "bytes per entry": "bytes_per_entry"}
    columns = [fields[c.strip()] for c in header.strip().strip("|").split("|")[1:]]
    rows = re.findall(r"^\s*\| ([\w.-]+) \|((?: [\d.,]+ \|)+)\s*$", text, re.M)
    assert len(rows) >= 3
    for name, cells in rows:
        for field, cell in zip(columns, cells.strip(" |").split("|"), strict=True):
            want = hooks.render(f'{{{{ figure("bench", "{name}", "{field}") }}}}', DOCS)
            assert cell.strip() == want, f"README {name} {field}: {cell.strip()} != {want}"


def test_docs_build_strict(tmp_path: Path) -> None:
    if not (ROOT / "mkdocs.yml").exists() or not DOCS.is_dir():
        pytest.skip("mkdocs.yml or docs/ is not part of this copy")
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install '.[docs]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


if __name__ == "__main__":
    # python tests/test_docs.py PAGE OUT: run one page's examples, write the results to OUT.
    page_arg, out_arg = sys.argv[1], sys.argv[2]
    if "redis-server" in page_requires(page_arg):
        # The examples show what the tier does, not its deadline: a call past 50 ms on a
        # loaded runner would turn an example's remote hit into a miss.
        from support import PATIENT_DEADLINE, tier_defaults

        tier_defaults()["deadline"] = PATIENT_DEADLINE
    outcome = run_page(page_arg)
    Path(out_arg).write_text(json.dumps(outcome))
