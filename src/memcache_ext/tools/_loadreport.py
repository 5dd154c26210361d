"""The load test's figures: what one run measured, the tables, the plot, the promises.

``loadtest`` (the driver) fills a ``Run`` per service; everything here reads
runs and never touches a process.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Optional

from .._constants import MIB as MB
from .procs import ProcessError


class LoadTestError(ProcessError):
    """A clear, user-facing failure (the server did not start, the port is busy, ...)."""


@dataclass
class Run:
    """What one service did under the workload."""

    mode: str
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    rss: list[tuple[float, int, int]] = field(default_factory=list)  # (s, bytes, requests)
    hit_rate: Optional[float] = None
    duration_s: float = 0.0
    #: --replicas: one dict per replica (port, pid, requests, writes, errors, rss
    #: samples (s, bytes), tier counters); ``rss`` above is then their sum.
    replicas: list[dict[str, Any]] = field(default_factory=list)
    writes: int = 0

    def summary(self) -> dict[str, Any]:
        values = [r for _, r, _ in self.rss] or [0]
        lat = sorted(self.latencies_ms) or [0.0]

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

        return {
            "mode": self.mode,
            "requests": self.requests,
            "errors": self.errors,
            "req_per_s": self.requests / self.duration_s if self.duration_s else 0.0,
            "rss_start_mb": values[0] / MB,
            "rss_peak_mb": max(values) / MB,
            "rss_end_mb": values[-1] / MB,
            "growth_mb": (max(values) - values[0]) / MB,
            "p50_ms": pct(50),
            "p95_ms": pct(95),
            "p99_ms": pct(99),
            "hit_rate": self.hit_rate,
            **(
                {
                    "writes": self.writes,
                    "replicas": [_replica_summary(r) for r in self.replicas],
                    "tier": tier_totals(self.replicas),
                }
                if self.replicas
                else {}
            ),
        }


#: Tier counters read from each replica's /memory/stats (``sources``), summed over caches.
TIER_COUNTERS = (
    "local_hits",
    "local_misses",
    "remote_hits",
    "remote_misses",
    "remote_skipped",
    "loads",
    "shared_loads",
    "writes",
    "deletes",
    "invalidations_sent",
    "invalidations_received",
    "redis_errors",
    "skipped_writes",
    "reconnects",
)


def _replica_summary(rep: dict[str, Any]) -> dict[str, Any]:
    values = [v for _, v in rep["rss"]] or [0]
    out = {k: rep[k] for k in ("port", "pid", "requests", "writes", "errors")}
    out.update(
        rss_start_mb=values[0] / MB,
        rss_peak_mb=max(values) / MB,
        rss_end_mb=values[-1] / MB,
        growth_mb=(max(values) - values[0]) / MB,
        tier=_with_rates(rep.get("tier") or {}),
        caches=rep.get("tier_caches") or {},
    )
    return out


def _with_rates(c: dict[str, Any]) -> dict[str, Any]:
    c = dict(c)
    lookups = c.get("local_hits", 0) + c.get("local_misses", 0)
    remote = c.get("remote_hits", 0) + c.get("remote_misses", 0)
    c["lookups"] = lookups
    c["local_hit_rate"] = c.get("local_hits", 0) / lookups if lookups else None
    c["remote_hit_rate"] = c.get("remote_hits", 0) / remote if remote else None
    c["load_rate"] = c.get("loads", 0) / lookups if lookups else None
    return c


def tier_totals(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """The tier counters summed over replicas, with the rates."""
    total = dict.fromkeys(TIER_COUNTERS, 0)
    for rep in replicas:
        for k, v in (rep.get("tier") or {}).items():
            total[k] = total.get(k, 0) + v
    return _with_rates(total)


def tier_counters(data: Optional[dict[str, Any]]) -> tuple[dict[str, int], dict[str, Any]]:
    """(counters summed over the tiers, per-cache counters) from one /memory/stats."""
    total = dict.fromkeys(TIER_COUNTERS, 0)
    per_cache: dict[str, Any] = {}
    for name, st in ((data or {}).get("sources") or {}).items():
        if not (name.startswith("redis:") and isinstance(st, dict)):
            continue
        cache = name.rsplit(":", 1)[-1]
        per_cache[cache] = {k: int(st.get(k, 0)) for k in TIER_COUNTERS}
        for k in TIER_COUNTERS:
            total[k] += int(st.get(k, 0))
    return total, per_cache


def hit_rate(data: Optional[dict[str, Any]]) -> Optional[float]:
    """Hits / lookups over every cache of one /memory/stats (None: nothing to read)."""
    if data is None:
        return None
    caches = data.get("caches") or {}
    hits = sum(c.get("hits", 0) for c in caches.values())
    misses = sum(c.get("misses", 0) for c in caches.values())
    return hits / (hits + misses) if hits + misses else None


def render(runs: list[Run], args: argparse.Namespace) -> str:
    rows = [r.summary() for r in runs]
    labels = [
        ("requests", "requests", "{:,}"),
        ("errors", "errors", "{:,}"),
        ("req_per_s", "requests/s", "{:,.0f}"),
        ("rss_start_mb", "RSS start (MB)", "{:.1f}"),
        ("rss_peak_mb", "RSS peak (MB)", "{:.1f}"),
        ("rss_end_mb", "RSS end (MB)", "{:.1f}"),
        ("growth_mb", "growth (MB)", "{:.1f}"),
        ("p50_ms", "latency p50 (ms)", "{:.2f}"),
        ("p95_ms", "latency p95 (ms)", "{:.2f}"),
        ("p99_ms", "latency p99 (ms)", "{:.2f}"),
        ("hit_rate", "cache hit rate", "{:.3f}"),
    ]
    out = [
        f"memcache_ext loadtest: demo service on 127.0.0.1, {args.users:,} users x "
        f"{args.days} days, {args.concurrency} keep-alive clients, {args.duration:.0f} s per "
        f"service",
        "",
    ]
    out.append(f"{'':20s}" + "".join(f"{r['mode']:>16s}" for r in rows))
    for key, label, fmt in labels:
        cells = ["-" if r[key] is None else fmt.format(r[key]) for r in rows]
        out.append(f"{label:20s}" + "".join(f"{c:>16s}" for c in cells))
    out += ["", "RSS (MB) after N requests"]
    out.append(f"{'requests':>20s}" + "".join(f"{r.mode:>16s}" for r in runs))
    for n in checkpoints(runs):
        cells = []
        for r in runs:
            rss = next((v for _, v, done in r.rss if done >= n), None)
            cells.append("-" if rss is None else f"{rss / MB:.1f}")
        out.append(f"{n:>20,}" + "".join(f"{c:>16s}" for c in cells))
    for r in runs:
        if r.replicas:
            out += ["", *render_tier(r, args)]
    return "\n".join(out)


def _fmt(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def render_tier(run: Run, args: argparse.Namespace) -> list[str]:
    """The replicas table: requests, RSS and the tier's counters per replica and in all."""
    s = run.summary()
    reps, total = s["replicas"], s["tier"]
    cols = [f":{r['port']}" for r in reps] + ["all"]
    width = max(12, *(len(c) + 2 for c in cols))
    out = [
        f"Redis tier: {len(reps)} replicas of the {run.mode} service, "
        f"{args.writes:.1%} of requests are profile writes (PUT /users/{{id}}/profile)",
        "",
        f"{'':26s}" + "".join(f"{c:>{width}s}" for c in cols),
    ]

    def row(label: str, per: list[Any], all_: Any, fmt: str) -> None:
        cells = [_fmt(v, fmt) for v in per] + [_fmt(all_, fmt)]
        out.append(f"{label:26s}" + "".join(f"{c:>{width}s}" for c in cells))

    row("requests", [r["requests"] for r in reps], s["requests"], "{:,}")
    row("writes", [r["writes"] for r in reps], s["writes"], "{:,}")
    row("errors", [r["errors"] for r in reps], s["errors"], "{:,}")
    row("RSS start (MB)", [r["rss_start_mb"] for r in reps], s["rss_start_mb"], "{:.1f}")
    row("RSS peak (MB)", [r["rss_peak_mb"] for r in reps], s["rss_peak_mb"], "{:.1f}")
    row("RSS end (MB)", [r["rss_end_mb"] for r in reps], s["rss_end_mb"], "{:.1f}")
    tiers = [r["tier"] for r in reps]
    for key, label, fmt in (
        ("lookups", "cache lookups", "{:,}"),
        ("local_hits", "local hits", "{:,}"),
        ("remote_hits", "remote hits (Redis)", "{:,}"),
        ("loads", "loads (database)", "{:,}"),
        ("shared_loads", "shared loads", "{:,}"),
        ("local_hit_rate", "local hit rate", "{:.3f}"),
        ("remote_hit_rate", "Redis hit rate (of misses)", "{:.3f}"),
        ("load_rate", "database loads / lookups", "{:.3f}"),
        ("invalidations_sent", "invalidations sent", "{:,}"),
        ("invalidations_received", "invalidations received", "{:,}"),
        ("redis_errors", "redis errors", "{:,}"),
    ):
        row(label, [t.get(key) for t in tiers], total.get(key), fmt)
    names = sorted({c for r in reps for c in r["caches"]})
    if names:
        out += [
            "",
            "per cache, all replicas"
            + " " * 3
            + "".join(f"{h:>{width}s}" for h in ("local hits", "Redis hits", "loads", "inv. recv")),
        ]
        for name in names:
            agg = {
                k: sum(r["caches"].get(name, {}).get(k, 0) for r in reps)
                for k in ("local_hits", "remote_hits", "loads", "invalidations_received")
            }
            out.append(f"{'  ' + name:26s}" + "".join(f"{v:>{width},}" for v in agg.values()))
    out += [
        "",
        "RSS: per replica process, 'all' is their sum (the supervisor is not counted); "
        "lookups = local hits + local misses; a local miss is answered by Redis, "
        "by another caller's load (shared), or by a database load",
    ]
    return out


def checkpoints(runs: list[Run]) -> list[int]:
    """Round request counts that every run reached: 1, 2, 5 x 10^k."""
    reached = min((r.requests for r in runs), default=0)
    points, k = [], 1000
    while k <= reached:
        points += [p for p in (k, 2 * k, 5 * k) if p <= reached]
        k *= 10
    return points


def check(runs: list[Run]) -> list[str]:
    """The quick form's promises; returns what failed."""
    by = {r.mode: r.summary() for r in runs}
    failures = []
    b = by.get("bounded")
    if b is not None:
        # With --replicas, the promises hold for each replica (each is one service).
        for where, fig in (
            [(f"bounded replica :{r['port']}", r) for r in b["replicas"]]
            if b.get("replicas")
            else [("bounded service", b)]
        ):
            if fig["growth_mb"] >= 100:
                failures.append(f"{where} grew {fig['growth_mb']:.1f} MB (limit 100)")
            if fig["rss_peak_mb"] >= 400:
                failures.append(f"{where} peaked at {fig['rss_peak_mb']:.1f} MB (limit 400)")
        if b["errors"]:
            failures.append(f"bounded service answered {b['errors']} requests with errors")
        if not b["requests"]:
            failures.append("bounded service answered no requests")
    u = by.get("unbounded")
    if b is not None and u is not None and u["rss_peak_mb"] <= b["rss_peak_mb"]:
        failures.append(
            f"unbounded service peaked at {u['rss_peak_mb']:.1f} MB, not above the "
            f"bounded one's {b['rss_peak_mb']:.1f} MB: the workload is too small"
        )
    return failures


def plot(runs: list[Run], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LoadTestError("--plot needs matplotlib: pip install 'memcache-ext[plot]'") from exc
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        if r.replicas:
            for rep in r.replicas:
                ax.plot(
                    [t for t, _ in rep["rss"]],
                    [v / MB for _, v in rep["rss"]],
                    label=f"{r.mode} caches, replica :{rep['port']}",
                )
            continue
        ax.plot([t for t, _, _ in r.rss], [v / MB for _, v, _ in r.rss], label=f"{r.mode} caches")
    ax.axhline(400, color="grey", linestyle="--", linewidth=0.8, label="400 MB")
    ax.set_xlabel("seconds under load")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("memcache_ext demo service: RSS under the same workload")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
