"""Hit ratios of the cache's policies next to libCacheSim's, on the same requests.

libCacheSim (``pip install libcachesim``) is the reference cache simulator of
the S3-FIFO and SIEVE authors. Every trace here is generated from a seed and
fed, request for request, to ``LruCache(capacity, policy=...)`` (through
``get_or_set``) and to libCacheSim's LRU, S3-FIFO, W-TinyLFU and Belady (the
offline optimum), with unit-size objects, so the figures compare the same
request sequences. The traces:

* Zipf 0.8 and Zipf 1.0 over ``objects`` keys, at 1%, 5% and 10% of the keys
  the trace requests (libCacheSim's convention for a cache size);
* the Zipf 0.8 trace with a one-time scan of 5x the capacity (keys never seen
  again) in the middle; the hit ratio over the requests after the scan is set
  against the same requests in the trace without it, over all of them and over
  the first 10x the capacity (where a flushed cache shows: over half a million
  requests, even LRU refills and ends close);
* a loop over 1.2x the capacity (every key in turn), where LRU never hits.

``python -m memcache_ext bench`` prints the table (``--quick``: a smaller
trace); ``benchmarks/bench_hitratio.py`` adds the cost side by side and writes
``docs/hitratio.json``, which the docs read.
"""

from __future__ import annotations

import bisect
import os
import random
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Optional

from .. import LruCache
from .progress import Task

#: (column key, label) in table order; "ours" first, then libCacheSim's.
POLICIES = [
    ("lru", "lru"),
    ("s3fifo", "s3fifo"),
    ("lcs_lru", "LRU"),
    ("lcs_s3fifo", "S3-FIFO"),
    ("lcs_wtinylfu", "W-TinyLFU"),
    ("belady", "Belady"),
]
OURS = ("lru", "s3fifo")
NEVER = 2**63 - 1  # libCacheSim's "no next access" for Belady
_ORACLE = struct.Struct("<IQIq")  # oracleGeneral: time, id, size, next access
#: Right after the scan, hit ratios are also taken over this many times the capacity.
WINDOW = 10


@dataclass
class Trace:
    """One row: a request sequence and a capacity."""

    name: str
    family: str  # "zipf0.8", "zipf1.0", "scan", "loop"
    keys: list[int]
    capacity: int
    objects: int
    #: hit ratios are also taken over the requests from here on (the scan rows: after the scan),
    #: and over the ``window`` requests from here
    split: Optional[int] = None
    window: int = 0
    #: scan rows: the name of the row with the same requests and no scan
    base: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


def zipf_trace(n_obj: int, n_req: int, alpha: float, seed: int) -> list[int]:
    """``n_req`` keys drawn from Zipf(``alpha``) over ``n_obj`` keys, popularity shuffled."""
    rnd = random.Random(seed)
    cum, total = [], 0.0
    for i in range(1, n_obj + 1):
        total += 1.0 / i**alpha
        cum.append(total)
    perm = list(range(n_obj))
    rnd.shuffle(perm)
    draw = rnd.random
    return [perm[bisect.bisect_left(cum, draw() * total)] for _ in range(n_req)]


def sizes(quick: bool) -> tuple[int, int]:
    """(objects, requests) of the Zipf traces."""
    return (20_000, 200_000) if quick else (100_000, 1_000_000)


def traces(quick: bool = False) -> list[Trace]:
    """Every row of the table, in order."""
    n_obj, n_req = sizes(quick)
    rows: list[Trace] = []
    zipf08: list[Trace] = []
    for alpha, seed in ((0.8, 1), (1.0, 2)):
        keys = zipf_trace(n_obj, n_req, alpha, seed)
        distinct = len(set(keys))
        for pct in (1, 5, 10):
            capacity = max(2, distinct * pct // 100)
            t = Trace(
                f"Zipf {alpha}, {pct}%",
                f"zipf{alpha}",
                keys,
                capacity,
                distinct,
                split=n_req // 2,
                window=WINDOW * capacity,
            )
            rows.append(t)
            if alpha == 0.8:
                zipf08.append(t)
    for t in zipf08:
        mid, length = n_req // 2, 5 * t.capacity
        scan = list(range(n_obj, n_obj + length))  # keys the Zipf trace never requests
        rows.append(
            Trace(
                f"Zipf 0.8 + scan, {t.name.rsplit(' ', 1)[1]}",
                "scan",
                t.keys[:mid] + scan + t.keys[mid:],
                t.capacity,
                t.objects + length,
                split=mid + length,
                window=t.window,
                base=t.name,
            )
        )
    for t in zipf08:
        span = t.capacity * 12 // 10
        rows.append(
            Trace(
                f"loop 1.2x, {t.name.rsplit(' ', 1)[1]}",
                "loop",
                [i % span for i in range(n_req)],
                t.capacity,
                span,
            )
        )
    return rows


def _marks(t: Trace) -> list[int]:
    """Where the trace is cut into segments (hits are counted per segment)."""
    n = len(t.keys)
    if t.split is None:
        return [n]
    return sorted({t.split, min(n, t.split + t.window), n})


def _ours(t: Trace, policy: str) -> list[int]:
    """Hits per segment of ``LruCache(capacity, policy=policy)`` through get_or_set."""
    cache: Any = LruCache(t.capacity, policy=policy)
    gos = cache.get_or_set
    out, start, before = [], 0, 0
    for end in _marks(t):
        for k in t.keys[start:end]:
            gos(k, int)
        hits = cache.stats()["hits"]
        out.append(hits - before)
        start, before = end, hits
    return out


def _oracle_file(keys: list[int], directory: str) -> str:
    """The trace in libCacheSim's oracleGeneral format (what Belady needs: next access)."""
    nxt = [NEVER] * len(keys)
    last: dict[int, int] = {}
    for i in range(len(keys) - 1, -1, -1):
        k = keys[i]
        nxt[i] = last.get(k, NEVER)
        last[k] = i
    path = os.path.join(directory, f"trace-{len(os.listdir(directory))}.oracleGeneral")
    with open(path, "wb") as f:
        n = len(keys)
        f.write(
            b"".join(map(_ORACLE.pack, range(1, n + 1), [k + 1 for k in keys], repeat(1, n), nxt))
        )
    return path


def _lcs_classes() -> Optional[dict[str, Any]]:
    try:
        import libcachesim as lcs
    except ImportError:
        return None
    return {
        "lcs_lru": lcs.LRU,
        "lcs_s3fifo": lcs.S3FIFO,
        "lcs_wtinylfu": lcs.WTinyLFU,
        "belady": lcs.Belady,
    }


def available() -> bool:
    """Whether libCacheSim is installed (else its columns stay empty)."""
    return _lcs_classes() is not None


def _lcs(t: Trace, cls: Any, path: str) -> list[int]:
    """Hits per segment of a libCacheSim policy over the trace file."""
    import libcachesim as lcs

    reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    cache = cls(cache_size=t.capacity)
    out, start = [], 0
    for end in _marks(t):
        # Calls on the same cache carry on from the previous call's state.
        miss, _ = cache.process_trace(reader, start, end - start)
        out.append(round((1 - miss) * (end - start)))
        start = end
    return out


def tasks(rows: list[Trace]) -> list[Task]:
    """Progress tasks, one per row; priors in seconds per million requests measured here."""
    per_million = 9.0 if available() else 2.0
    return [
        Task(f"hit ratios: {t.name}", [("hitratio", len(t.keys))], per_million * len(t.keys) / 1e6)
        for t in rows
    ]


def run(
    rows: list[Trace],
    on_row: Optional[Callable[[int], None]] = None,
    on_step: Optional[Callable[[str], None]] = None,
    on_done: Optional[Callable[[], None]] = None,
) -> list[dict[str, Any]]:
    """Measure every row; the callbacks report progress (row index, policy, row done)."""
    lcs = _lcs_classes()
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memcache-ext-hitratio-") as tmp:
        files: dict[int, str] = {}
        for i, t in enumerate(rows):
            if on_row:
                on_row(i)
            n = len(t.keys)
            res: dict[str, Any] = {
                "name": t.name,
                "family": t.family,
                "capacity": t.capacity,
                "objects": t.objects,
                "requests": n,
            }
            if t.split is not None:
                res["rest_requests"] = n - t.split
                res["window_requests"] = min(n, t.split + t.window) - t.split
            if t.base:
                res["base"] = t.base
            for key, _ in POLICIES:
                if key in OURS:
                    if on_step:
                        on_step(f"ours, {key}")
                    segments = _ours(t, key)
                elif lcs is None:
                    continue
                else:
                    if on_step:
                        on_step(f"libCacheSim {dict(POLICIES)[key]}")
                    if id(t.keys) not in files:
                        files[id(t.keys)] = _oracle_file(t.keys, tmp)
                    segments = _lcs(t, lcs[key], files[id(t.keys)])
                res[f"{key}_hits"] = sum(segments)
                res[f"{key}_hit_ratio"] = sum(segments) / n
                if t.split is not None:
                    res[f"{key}_rest_hit_ratio"] = sum(segments[1:]) / res["rest_requests"]
                    res[f"{key}_window_hit_ratio"] = segments[1] / res["window_requests"]
            _derive(res)
            out.append(res)
            if on_done:
                on_done()
    by_name = {r["name"]: r for r in out}
    for r in out:  # scan rows against the same requests without the scan
        base = by_name.get(r.get("base", ""))
        if base is not None:
            for key, _ in POLICIES:
                for part in ("rest", "window"):
                    if f"{key}_{part}_hit_ratio" in base:
                        r[f"{key}_{part}_no_scan_hit_ratio"] = base[f"{key}_{part}_hit_ratio"]
            if "s3fifo_rest_hit_ratio" in r:
                r["s3fifo_scan_minus_no_scan_hit_ratio"] = (
                    r["s3fifo_rest_hit_ratio"] - r["s3fifo_rest_no_scan_hit_ratio"]
                )
    return out


def _derive(r: dict[str, Any]) -> None:
    """Differences the targets read (names end in "ratio": the docs print 4 decimals)."""
    r["s3fifo_minus_lru_hit_ratio"] = r["s3fifo_hit_ratio"] - r["lru_hit_ratio"]
    if "lcs_s3fifo_hit_ratio" in r:
        r["s3fifo_minus_lcs_s3fifo_hit_ratio"] = r["s3fifo_hit_ratio"] - r["lcs_s3fifo_hit_ratio"]
        r["s3fifo_minus_lcs_s3fifo_hits"] = r["s3fifo_hits"] - r["lcs_s3fifo_hits"]
        r["lru_minus_lcs_lru_hit_ratio"] = r["lru_hit_ratio"] - r["lcs_lru_hit_ratio"]


def check(rows: list[dict[str, Any]]) -> Iterator[tuple[str, str, bool]]:
    """(target, what was measured, met) for the hit-ratio targets of issue 15."""
    if not rows or "lcs_lru_hits" not in rows[0]:
        yield "libCacheSim installed (pip install libcachesim)", "not installed", False
    else:
        off = [r["name"] for r in rows if r["lru_hits"] != r["lcs_lru_hits"]]
        yield (
            "lru hits == libCacheSim LRU hits on every row",
            "equal on every row" if not off else f"differs on {', '.join(off)}",
            not off,
        )
        worst = max(rows, key=lambda r: abs(r["s3fifo_minus_lcs_s3fifo_hit_ratio"]))
        gap = abs(worst["s3fifo_minus_lcs_s3fifo_hit_ratio"])
        same = sum(r["s3fifo_minus_lcs_s3fifo_hits"] == 0 for r in rows)
        yield (
            "s3fifo within 0.005 of libCacheSim S3-FIFO on every row",
            f"largest gap {gap:.6f} ({worst['s3fifo_minus_lcs_s3fifo_hits']:+d} hits, "
            f"{worst['name']}); hit for hit on {same} of {len(rows)} rows",
            gap <= 0.005,
        )
    z08 = [r for r in rows if r["family"] == "zipf0.8"]
    if z08:
        least = min(z08, key=lambda r: r["s3fifo_minus_lru_hit_ratio"])
        gain = least["s3fifo_minus_lru_hit_ratio"]
        yield (
            "s3fifo >= lru + 0.05 on the Zipf 0.8 rows",
            f"smallest gain {gain:+.4f} ({least['name']})",
            gain >= 0.05,
        )
    scans = [r for r in rows if "s3fifo_scan_minus_no_scan_hit_ratio" in r]
    if scans:
        worst = max(scans, key=lambda r: abs(r["s3fifo_scan_minus_no_scan_hit_ratio"]))
        d = worst["s3fifo_scan_minus_no_scan_hit_ratio"]
        yield (
            "after the scan, s3fifo within 0.01 of the same requests without it",
            f"largest difference {d:+.4f} ({worst['name']})",
            abs(d) <= 0.01,
        )


def render(rows: list[dict[str, Any]]) -> str:
    """The tables (under 100 columns) and their legend."""
    if not rows:
        return ""
    have_lcs = "lcs_lru_hit_ratio" in rows[0]
    name_w = max(len(r["name"]) for r in rows) + 2
    cols = [(k, label) for k, label in POLICIES if have_lcs or k in OURS]
    w = 10
    groups = f"{'':{name_w}s}{' ours ':-^{2 * w - 1}s} "
    if have_lcs:
        groups += f"{' libCacheSim ':-^{4 * w - 1}s}"
    head = f"{'trace, capacity':{name_w}s}" + "".join(f"{label:>{w - 1}s} " for _, label in cols)
    head += f"{'capacity':>{w}s}"
    lines = [
        "Hit ratios: the same requests through our policies and libCacheSim's "
        f"({rows[0]['requests']:,} per Zipf trace)",
        "",
        groups.rstrip(),
        head,
        "-" * len(head),
    ]
    for r in rows:
        cells = "".join(
            f"{r[f'{k}_hit_ratio']:>{w - 1}.4f} " if f"{k}_hit_ratio" in r else f"{'-':>{w - 1}s} "
            for k, _ in cols
        )
        lines.append(f"{r['name']:{name_w}s}{cells}{r['capacity']:>{w},d}")
    scans = [r for r in rows if "s3fifo_rest_no_scan_hit_ratio" in r]
    if scans:
        w = 9
        lines += [
            "",
            "After the scan: hit ratios over the requests that follow it, and over the same",
            "requests of the trace without the scan",
            "",
            f"{'':{name_w}s}{f' next {WINDOW}x capacity ':-^{4 * w - 1}s} "
            f"{' the rest of the trace ':-^{4 * w - 1}s}",
            f"{'trace, capacity':{name_w}s}"
            + " ".join(
                f"{label:>{w - 1}s}" for label in ("s3fifo", "no scan", "lru", "no scan") * 2
            ),
        ]
        for r in scans:
            cells = " ".join(
                f"{r[f'{k}_{part}{suffix}_hit_ratio']:>{w - 1}.4f}"
                for part in ("window", "rest")
                for k in OURS[::-1]
                for suffix in ("", "_no_scan")
            )
            lines.append(f"{r['name']:{name_w}s}{cells}")
    lines += ["", *LEGEND]
    if not have_lcs:
        lines.append("libCacheSim is not installed: its columns are left out.")
    return "\n".join(lines)


LEGEND = [
    "lru, s3fifo        LruCache(capacity, policy=...), driven through get_or_set",
    "LRU ... Belady     libCacheSim's policies on the same requests; Belady (offline optimum,",
    "                   it knows the future) is the ceiling",
    "Zipf a, n%         Zipf(a) popularity; capacity n% of the distinct keys the trace requests",
    "+ scan             5x the capacity of never-repeated keys once, in the middle of the trace",
    "no scan            the same requests in the trace without the scan",
    "loop 1.2x          every key of a set 1.2x the capacity in turn (LRU never hits)",
]
