"""MkDocs hook: figures in the docs come from the JSON files the benchmarks write.

A page writes a placeholder where a measured figure goes; the build replaces it
with the value read from ``docs/<source>.json`` (today: ``bench.json``, written
by ``python -m memcache_ext bench --json docs/bench.json``):

    {{ bench.table }}        the side-by-side table, as a Markdown table
    {{ bench.environment }}  Python, CPU, platform, library versions, rounds
    {{ figure("bench", "CLruCache", "get_hit") }}            one figure: 14.5
    {{ ratio("bench", "get_hit", "CLruCache", "lru-dict") }}  a / b: 0.80
    {{ ratio("bench", "get_hit", "classic OrderedDict+RLock", "CLruCache", 1) }}

A placeholder that names a missing file, row or field fails the build, so a
figure cannot silently go stale. Inside code (a `span` or a fenced block) a
placeholder is shown as written. ``tests/test_docs.py`` renders every page
through ``render`` too, so the suite checks the placeholders without MkDocs.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

PLACEHOLDER = r"\{\{\s*([a-z_]+)(?:\.([a-z_]+)|\((.*?)\))\s*\}\}"
# Code is matched first and kept as it is: a fenced block, or an inline span.
CODE = r"(^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\2[^\n]*$|``.+?``|`[^`\n]+`)"
TOKEN = re.compile(f"{CODE}|{PLACEHOLDER}", re.M | re.S)

# Column order and labels of ``python -m memcache_ext bench``.
COLUMNS = [
    ("get_hit", "get hit"),
    ("get_miss", "get miss"),
    ("set_update", "set update"),
    ("set_evict", "set+evict"),
    ("zipf", "zipf get_or_set"),
    ("bytes_per_entry", "B/entry"),
    ("zipf_hit_ratio", "hit ratio"),
]
BASELINES = [("PyLruCache", "x PyLru"), ("classic OrderedDict+RLock", "x classic")]


class FigureError(ValueError):
    """A placeholder that cannot be filled from the benchmark files."""


def _load(docs_dir: Path, source: str) -> dict[str, Any]:
    path = docs_dir / f"{source}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FigureError(f"cannot read {path}: {exc}") from exc
    return data


def _fmt(field: str, value: float) -> str:
    return f"{value:.4f}" if field.endswith("ratio") else f"{value:,.1f}"


def _value(data: dict[str, Any], source: str, row: str, field: str) -> float:
    for result in data.get("results", []):
        if result.get("name") == row:
            if field not in result:
                raise FigureError(f"{source}.json: {row!r} has no {field!r}")
            return float(result[field])
    raise FigureError(f"{source}.json: no row named {row!r}")


def _table(data: dict[str, Any]) -> str:
    by_name = {r["name"]: r for r in data["results"]}
    head = ["cache"] + [label for _, label in COLUMNS] + [label for _, label in BASELINES]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for r in data["results"]:
        cells = [r["name"]] + ["-" if r.get(k) is None else _fmt(k, r[k]) for k, _ in COLUMNS]
        for base, _ in BASELINES:
            b = by_name.get(base)
            cells.append(f"{b['get_hit'] / r['get_hit']:.1f}" if b else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _environment(data: dict[str, Any]) -> str:
    env = data["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    return (
        f"Python {env['python']} on {env['cpu']} ({env['cpus']} CPUs), "
        f"{env['platform']}, memcache_ext {env['memcache_ext']} "
        f"(implementation: {env['implementation']}); {versions}; "
        f"{data['size']:,}-entry caches, median of {data['rounds']} round(s) "
        f"x {data['repeats']} repeats"
    )


def render(markdown: str, docs_dir: Path) -> str:
    """Replace every placeholder in ``markdown``; raise FigureError on a bad one."""
    cache: dict[str, dict[str, Any]] = {}

    def data(source: str) -> dict[str, Any]:
        if source not in cache:
            cache[source] = _load(docs_dir, source)
        return cache[source]

    def fill(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return m.group(0)
        name, attr, args = m.group(3), m.group(4), m.group(5)
        if attr is not None:
            if attr == "table":
                return _table(data(name))
            if attr == "environment":
                return _environment(data(name))
            raise FigureError(f"unknown placeholder {m.group(0)}")
        try:
            params = ast.literal_eval(f"({args},)")
        except (ValueError, SyntaxError) as exc:
            raise FigureError(f"bad arguments in {m.group(0)}") from exc
        if name == "figure" and len(params) == 3:
            source, row, field = params
            return _fmt(field, _value(data(source), source, row, field))
        if name == "ratio" and len(params) in (4, 5):
            source, field, a, b = params[:4]
            digits = params[4] if len(params) == 5 else 2
            d = data(source)
            return f"{_value(d, source, a, field) / _value(d, source, b, field):.{digits}f}"
        raise FigureError(f"unknown placeholder {m.group(0)}")

    return TOKEN.sub(fill, markdown)


def placeholders(markdown: str) -> list[str]:
    """The placeholders of ``markdown`` that ``render`` fills (code excluded)."""
    return [m.group(0) for m in TOKEN.finditer(markdown) if m.group(1) is None]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown, Path(config["docs_dir"]))
