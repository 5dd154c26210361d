"""The load test's figures: what one run measured, the tables, the plot, the promises.

``loadtest`` (the driver) fills a ``Run`` per service; everything here reads
runs and never touches a process.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
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
    #: answers by status (0: the connection failed without one), oversized bodies apart
    statuses: dict[int, int] = field(default_factory=dict)
    oversized: int = 0  #: requests sent with a body over the server's limit
    oversized_statuses: dict[int, int] = field(default_factory=dict)
    policy: Optional[str] = None  #: the bounded caches' eviction policy
    limit_mb: Optional[float] = None  #: the server's configured memory limit
    #: /memory/stats polled during the run: (seconds, stats) pairs, the last one at the end
    polls: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    #: hit rate of the uniform phase at the end (--skew 0 traffic), per cache and overall
    uniform_hit_rate: Optional[float] = None
    #: the server's /health at the end (database pool, caches)
    health: Optional[dict[str, Any]] = None
    load_started: float = 0.0  #: wall-clock time the load began
    warmup_s: float = 0.0  #: seconds of warm-up, left out of the second-half figures
    warmup_requests: int = 0  #: requests served by the end of the warm-up

    @property
    def label(self) -> str:
        if self.mode == "bounded" and self.policy:
            return f"bounded {self.policy}"
        return self.mode

    def summary(self) -> dict[str, Any]:
        values = [r for _, r, _ in self.rss] or [0]
        lat = sorted(self.latencies_ms) or [0.0]

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

        return {
            "mode": self.mode,
            "policy": self.policy,
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
            "uniform_hit_rate": self.uniform_hit_rate,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
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
        ("uniform_hit_rate", "  uniform (skew 0)", "{:.3f}"),
    ]
    out = [
        f"memcache_ext loadtest: demo service on 127.0.0.1, {args.users:,} users x "
        f"{args.days} days, {args.concurrency} keep-alive clients, {args.duration:.0f} s per "
        f"service",
        traffic_line(args),
        "",
    ]
    out.append(f"{'':20s}" + "".join(f"{r.label:>16s}" for r in runs))
    for key, label, fmt in labels:
        cells = ["-" if r[key] is None else fmt.format(r[key]) for r in rows]
        out.append(f"{label:20s}" + "".join(f"{c:>16s}" for c in cells))
    out += ["", "RSS (MB) after N requests"]
    out.append(f"{'requests':>20s}" + "".join(f"{r.label:>16s}" for r in runs))
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


def traffic_line(args: argparse.Namespace) -> str:
    """The traffic in one line (what the clients ask for)."""
    users = "uniform users" if not args.skew else f"Zipf({args.skew:g}) user popularity"
    parts = [
        f"traffic: {users}",
        "readings for 7/30/90 days 90% of the time",
    ]
    if args.writes:
        parts.append(f"{args.writes:.0%} profile writes")
    if getattr(args, "oversize", 0):
        parts.append(f"{args.oversize:.0%} oversized bodies")
    return ", ".join(parts)


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


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LoadTestError("--plot needs matplotlib: pip install 'memcache-ext[plot]'") from exc
    return plt


def plot(runs: list[Run], path: str) -> None:
    plt = _pyplot()
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
        ax.plot([t for t, _, _ in r.rss], [v / MB for _, v, _ in r.rss], label=f"{r.label} caches")
    ax.axhline(400, color="grey", linestyle="--", linewidth=0.8, label="400 MB")
    ax.set_xlabel("seconds under load")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("memcache_ext demo service: RSS under the same workload")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- the soak form ---------------------------------------------------------------------

#: The soak's promises (issue 12): checked by ``check_soak``.
SOAK_TARGETS = {
    "slope_mb_per_min": 1.0,  # |RSS slope| over the second half
    # The quick form (60 s) judges 20 s (40-60 s), before the allocator and
    # the caches have settled (about five minutes, see the 10-minute plot in
    # docs/performance.md). RSS grows in 1 MiB steps (pymalloc arenas), and one
    # step in 20 s reads as 3 MB/min: the earlier 3 MB/min bound sat at that
    # resolution (six runs: +1.5 to +4.2 MB/min, one failed). This bound allows
    # two steps and is still well below the leak issue 12 found (22 MB/min).
    # It is judged on RSS less what the caches hold (``accounted_bytes``): on a
    # slow machine the caches are still filling towards their budget at 40-60 s
    # (a run at 300 requests/s read +8 to +10 MB/min of RSS with no leak behind
    # it), and a leak is memory that no cache holds.
    "quick_slope_mb_per_min": 6.0,
    "stall_ms": 10.0,  # longest event-loop stall under load
    # The quick (CI) form's guard against a stall regression, see check_soak.
    "quick_stall_ms": 50.0,
    "quick_over_10ms_per_request": 1e-3,
    "hit_rate": 0.80,  # with the default skew
}


def slope_mb_per_min(points: Sequence[tuple[float, float]]) -> Optional[float]:
    """Least-squares slope of ``(seconds, bytes)`` points, in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if not var:
        return None
    cov = sum((t - mt) * (v - mv) for t, v in points)
    return cov / var * 60 / MB


def _at(points: list[tuple[float, int]], t: float) -> float:
    """``points`` (sorted by time) read at ``t``: linear between two, the nearest outside."""
    if t <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in itertools.pairwise(points):
        if t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return points[-1][1]


def _cache_bytes(run: Run) -> list[tuple[float, int]]:
    """What the caches held (the budget's ``accounted_bytes``) at each poll, up to what
    they were granted: bytes over their bound are not a cache filling, and stay in RSS."""
    out = []
    for t, st in run.polls:
        budget = st.get("budget") or {}
        held, granted = budget.get("accounted_bytes"), budget.get("granted_bytes")
        if isinstance(held, int) and isinstance(granted, int):
            out.append((t, min(held, granted)))
    return out


def _hits(stats: Optional[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    caches = (stats or {}).get("caches") or {}
    return {n: (c.get("hits", 0), c.get("misses", 0)) for n, c in caches.items() if "hits" in c}


def hit_rates(
    end: Optional[dict[str, Any]], start: Optional[dict[str, Any]] = None
) -> dict[str, Optional[float]]:
    """Hit rate per cache and ``"all"`` between two /memory/stats (or since start)."""
    a, b = _hits(start), _hits(end)
    out: dict[str, Optional[float]] = {}
    th = tm = 0
    for name, (h, m) in sorted(b.items()):
        h0, m0 = a.get(name, (0, 0))
        dh, dm = h - h0, m - m0
        th, tm = th + dh, tm + dm
        out[name] = dh / (dh + dm) if dh + dm else None
    out["all"] = th / (th + tm) if th + tm else None
    return out


def _poll_at(run: Run, t: float) -> Optional[dict[str, Any]]:
    """The poll taken at or just after ``t`` seconds (None when there is none)."""
    return next((st for when, st in run.polls if when >= t), None)


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else seconds * 1e3


def soak_figures(run: Run, load_started: float) -> dict[str, Any]:
    """What the soak measured, with every figure the targets are checked on.

    ``load_started``: wall-clock time the load began (stalls before it, during
    the server's start-up, are reported apart). The "second half" figures (the
    slope and the hit rate) leave out ``run.warmup_s`` and take the second half
    of what follows; the peak covers it all.
    """
    warmup = run.warmup_s
    limit = (run.limit_mb or 0) * MB
    values = [v for _, v, _ in run.rss] or [0]
    half = warmup + (run.duration_s - warmup) / 2
    second = [(t, v) for t, v, _ in run.rss if t >= half]
    measured = [(t, v) for t, v, _ in run.rss if t >= warmup]
    held = _cache_bytes(run)
    outside = [(t, v - _at(held, t)) for t, v in second] if held else []
    outside_measured = [(t, v - _at(held, t)) for t, v in measured] if held else []
    end = run.polls[-1][1] if run.polls else None
    mid = _poll_at(run, half)
    guard = (end or {}).get("guard") or {}
    loop = (end or {}).get("loop") or {}
    service = (end or {}).get("cleanup_service") or {}
    seen: dict[float, float] = {}
    for _, st in run.polls:
        for stall in (st.get("loop") or {}).get("stalls") or ():
            if stall["time"] >= load_started:
                seen[stall["time"]] = stall["seconds"]
    longest = max(seen.values(), default=0.0)
    if not seen and loop.get("samples"):
        longest = 0.0  # nothing reached record_over (5 ms) during the load
    fivexx = sum(n for st, n in run.statuses.items() if st >= 500)
    sheds = int(guard.get("shed_total", 0))
    cleanups = (end or {}).get("cleanups") or []
    return {
        "policy": run.policy,
        "limit_mb": run.limit_mb,
        "duration_s": run.duration_s,
        "warmup_s": warmup,
        "warmup_requests": run.warmup_requests,
        "requests": run.requests + run.oversized,
        "req_per_s": (run.requests + run.oversized) / run.duration_s if run.duration_s else 0.0,
        "rss_start_mb": values[0] / MB,
        "rss_peak_mb": max(values) / MB,
        "rss_end_mb": values[-1] / MB,
        "peak_over_limit_mb": (max(values) - limit) / MB if limit else None,
        "slope_second_half_mb_per_min": slope_mb_per_min(second),
        # the same, for RSS less what the caches hold: growth no cache accounts for
        "slope_outside_caches_mb_per_min": slope_mb_per_min(outside),
        # and over the whole measured window (after the warm-up): the quick form's second
        # opinion, twice as long, so one allocator step moves it half as much
        "slope_outside_caches_measured_mb_per_min": slope_mb_per_min(outside_measured),
        "cache_mb_second_half": ((_at(held, half) / MB, held[-1][1] / MB) if held else None),
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "oversized_statuses": {str(k): v for k, v in sorted(run.oversized_statuses.items())},
        "connection_failures": run.statuses.get(0, 0),
        "sheds_503": sheds,
        "shed_episodes": int(guard.get("shed_episodes", 0)),
        "other_5xx": max(0, fivexx - sheds),
        "memory_errors": int(guard.get("memory_errors_total", 0)),
        "rejected_413": int(guard.get("body_rejected_total", 0)),
        "rejected_413_early": int(guard.get("body_rejected_early", 0)),
        "hit_rate_all_run": hit_rates(end),
        "hit_rate_second_half": hit_rates(end, mid),
        "longest_lateness_ms": longest * 1e3,
        "lateness_over_10ms": sum(1 for s in seen.values() if s >= 0.01),
        "longest_stall_startup_ms": (loop.get("longest_stall", 0.0)) * 1e3,
        "longest_callback_ms": None
        if loop.get("longest_callback") is None
        else loop["longest_callback"] * 1e3,
        "longest_callback_wall_ms": None
        if loop.get("longest_callback_wall") is None
        else loop["longest_callback_wall"] * 1e3,
        "callbacks_over_10ms": loop.get("callbacks_over_10ms"),
        "longest_callback_without_gc_ms": _ms(loop.get("longest_callback_without_gc")),
        "longest_gc_on_loop_ms": _ms(loop.get("longest_gc_on_loop")),
        "loop_noise_ms": _ms(loop.get("noise")),
        "longest_callbacks": loop.get("longest_callbacks") or [],
        "cleanups": len(cleanups),
        "cleanup_longest_step_ms": float(service.get("longest_step", 0.0)) * 1e3,
        "cleanup_longest_step_wall_ms": float(service.get("longest_step_wall", 0.0)) * 1e3,
        "cleanup_rss_freed_mb": sum(c.get("rss_freed_bytes", 0) for c in cleanups) / MB,
        "cleanup_accounted_released_mb": sum(c.get("accounted_bytes_released", 0) for c in cleanups)
        / MB,
        "budget": (end or {}).get("budget"),
        "database": (run.health or {}).get("database"),
        "p50_ms": run.summary()["p50_ms"],
        "p99_ms": run.summary()["p99_ms"],
    }


def check_soak(
    fig: dict[str, Any], skewed: bool, quick: bool = False
) -> list[tuple[str, str, str]]:
    """``(target, verdict, measured)`` for each promise of the soak.

    The verdict is PASS or FAIL, or NOTE for a figure shown next to a target
    without deciding it: the longest hold of the loop including the
    interpreter's own cyclic garbage collections, which the package does not
    schedule (docs/performance.md says what was done about them).
    """
    out: list[tuple[str, str, str]] = []

    def add(target: str, held: bool, measured: str) -> None:
        out.append((target, "PASS" if held else "FAIL", measured))

    limit = fig["limit_mb"]
    add(
        f"peak RSS never above the limit ({limit:g} MB)",
        fig["rss_peak_mb"] <= limit,
        f"peak {fig['rss_peak_mb']:.1f} MB",
    )
    slope = fig["slope_second_half_mb_per_min"]
    outside = fig.get("slope_outside_caches_mb_per_min")
    if quick and outside is not None:
        # A leak fails both windows; one step of the allocator (RSS grows by 1-1.5 MB at
        # a time) near the middle of the 20 s half reads as 4.7-7 MB/min there, and as half
        # that over the 40 s measured (a CI run: +6.55 over the half, about +3 over all 40 s).
        tol = SOAK_TARGETS["quick_slope_mb_per_min"]
        whole = fig.get("slope_outside_caches_measured_mb_per_min")
        add(
            f"RSS slope less what the caches hold within +/-{tol:g} MB/min, over the second "
            f"half or over the whole measured window",
            abs(outside) <= tol or (whole is not None and abs(whole) <= tol),
            f"{outside:+.2f} MB/min over the second half, "
            f"{'-' if whole is None else f'{whole:+.2f}'} over the whole "
            f"(RSS {'-' if slope is None else f'{slope:+.2f}'})",
        )
    else:
        tol = SOAK_TARGETS["quick_slope_mb_per_min" if quick else "slope_mb_per_min"]
        add(
            f"RSS slope over the second half within +/-{tol:g} MB/min",
            slope is not None and abs(slope) <= tol,
            "-" if slope is None else f"{slope:+.2f} MB/min",
        )
    add(
        "no 5xx other than intended 503 sheds, no failed connection",
        fig["other_5xx"] + fig["connection_failures"] == 0,
        f"{fig['other_5xx']} other 5xx, {fig['connection_failures']} failed connections, "
        f"{fig['sheds_503']} sheds",
    )
    stall = SOAK_TARGETS["stall_ms"]
    own = fig["longest_callback_without_gc_ms"]
    noise = fig.get("loop_noise_ms") or 0.0
    if quick:
        # The 10 ms bound is the full soak's: on the shared two-core machines CI
        # runs on, a handful of callbacks that do little (a socket read, a timer
        # of the cleanup task) measure 10-15 ms of CPU in a minute of load, with
        # no collection, page fault or lost CPU behind it (docs/performance.md).
        # The CI form guards what a regression would change: no callback holds
        # the loop SOAK_TARGETS["quick_stall_ms"], and holds over 10 ms stay rare.
        most = SOAK_TARGETS["quick_stall_ms"]
        over, requests = fig.get("callbacks_over_10ms") or 0, fig.get("requests") or 0
        allowed = requests * SOAK_TARGETS["quick_over_10ms_per_request"]
        add(
            f"no event-loop stall over {most:g} ms, and at most 1 callback over {stall:g} ms "
            f"per {1 / SOAK_TARGETS['quick_over_10ms_per_request']:,.0f} requests",
            own is not None and own <= most and over <= allowed,
            "-"
            if own is None
            else f"longest {own:.1f} ms; {over} over {stall:g} ms in {requests:,} requests "
            f"(noise floor {noise:.1f} ms)",
        )
    else:
        add(
            f"longest event-loop stall <= {stall:g} ms (one callback's hold of the loop, CPU)",
            own is not None and own <= stall,
            "-" if own is None else f"{own:.1f} ms (noise floor of the measure: {noise:.1f} ms)",
        )
    # The quick form judges cleanup steps as it judges callbacks (above): a step of 1-3 ms
    # that the host's taken CPU lands on measures 10-16 ms; a blocking cleanup held 120-370 ms.
    step_bound = SOAK_TARGETS["quick_stall_ms"] if quick else stall
    add(
        f"no cleanup step holds the loop more than {step_bound:g} ms",
        fig["cleanup_longest_step_ms"] <= step_bound,
        f"{fig['cleanup_longest_step_ms']:.1f} ms (CPU; {fig['cleanups']} cleanups and the "
        f"expiry passes)",
    )
    hold = fig["longest_callback_ms"]
    if hold is not None:
        out.append(
            (
                "  with the collections the interpreter ran inside a callback",
                "NOTE",
                f"{hold:.1f} ms ({fig['callbacks_over_10ms']} callbacks over {stall:g} ms; "
                f"longest collection {fig['longest_gc_on_loop_ms']:.1f} ms wall)",
            )
        )
    hit = fig["hit_rate_second_half"].get("all")
    if skewed:
        add(
            f"hit rate >= {SOAK_TARGETS['hit_rate']:.0%} (second half)",
            hit is not None and hit >= SOAK_TARGETS["hit_rate"],
            "-" if hit is None else f"{hit:.3f}",
        )
    big = sum(int(v) for v in fig["oversized_statuses"].values())
    add(
        "every oversized body refused with 413",
        fig["oversized_statuses"].get("413", 0) == big,
        f"{fig['oversized_statuses'].get('413', 0)} of {big} seen as 413 "
        f"({fig['rejected_413']} counted by the server)",
    )
    return out


def _warmup_words(fig: dict[str, Any], args: argparse.Namespace) -> str:
    """How the soak's warm-up went, for its title line ("" without one)."""
    if not fig["warmup_s"]:
        return ""
    served = fig.get("warmup_requests") or 0
    wanted = getattr(args, "warmup_requests", 0) or 0
    if wanted and served < wanted:
        return (
            f" (the first {fig['warmup_s']:.0f} s a warm-up, cut short at {served:,} "
            f"of {wanted:,} requests: a slow host)"
        )
    return f" (the first {fig['warmup_s']:.0f} s, {served:,} requests, a warm-up)"


def render_soak(run: Run, fig: dict[str, Any], args: argparse.Namespace) -> str:
    """The soak's table, its targets, and the RSS timeline in a few lines."""
    out = [
        f"memcache_ext loadtest --soak: demo service on 127.0.0.1 under a "
        f"{fig['limit_mb']:g} MB limit ({fig['policy']} caches), {args.users:,} users x "
        f"{args.days} days, {args.concurrency} clients, {fig['duration_s']:.0f} s"
        + _warmup_words(fig, args),
        traffic_line(args),
        "",
    ]

    def row(label: str, value: str) -> None:
        out.append(f"  {label:34s} {value}")

    row("requests", f"{fig['requests']:,} ({fig['req_per_s']:,.0f}/s)")
    row(
        "answers by status",
        ", ".join(f"{k}: {v:,}" for k, v in fig["statuses"].items()) or "-",
    )
    row(
        "oversized bodies, by status",
        ", ".join(f"{k}: {v:,}" for k, v in fig["oversized_statuses"].items()) or "-",
    )
    row(
        "413 (server count, early)",
        f"{fig['rejected_413']:,} ({fig['rejected_413_early']:,} on Content-Length)",
    )
    row("503 sheds (episodes)", f"{fig['sheds_503']:,} ({fig['shed_episodes']})")
    row("other 5xx, failed connections", f"{fig['other_5xx']}, {fig['connection_failures']}")
    row("MemoryError answered 503", f"{fig['memory_errors']}")
    row(
        "RSS start / peak / end (MB)",
        f"{fig['rss_start_mb']:.1f} / {fig['rss_peak_mb']:.1f} / {fig['rss_end_mb']:.1f} "
        f"(limit {fig['limit_mb']:g})",
    )
    slope = fig["slope_second_half_mb_per_min"]
    row("RSS slope, second half", "-" if slope is None else f"{slope:+.2f} MB/min")
    outside, held = fig.get("slope_outside_caches_mb_per_min"), fig.get("cache_mb_second_half")
    if outside is not None and held is not None:
        row("  less what the caches hold", f"{outside:+.2f} MB/min")
        whole = fig.get("slope_outside_caches_measured_mb_per_min")
        if whole is not None:
            row("  same, whole measured window", f"{whole:+.2f} MB/min")
        row("  caches held (MB)", f"{held[0]:.1f} -> {held[1]:.1f} over the second half")
    for label, key in (
        ("hit rate, second half", "hit_rate_second_half"),
        ("hit rate, whole run", "hit_rate_all_run"),
    ):
        rates = fig[key]
        row(
            label,
            ", ".join(f"{n} {'-' if r is None else f'{r:.3f}'}" for n, r in rates.items()),
        )
    if fig["longest_callback_ms"] is not None:
        row(
            "longest hold of the loop (CPU)",
            f"{fig['longest_callback_ms']:.1f} ms ({fig['callbacks_over_10ms']} callbacks over "
            f"10 ms); without GC {fig['longest_callback_without_gc_ms']:.1f} ms; longest GC on "
            f"the loop {fig['longest_gc_on_loop_ms']:.1f} ms (wall)",
        )
        row("  same, wall clock", f"{fig['longest_callback_wall_ms']:.1f} ms (waits included)")
        if fig["loop_noise_ms"] is not None:
            row(
                "  noise floor of that figure",
                f"{fig['loop_noise_ms']:.1f} ms charged to the monitor's own step "
                f"(microseconds of work)",
            )
    row(
        "timer lateness (queueing)",
        f"{fig['longest_lateness_ms']:.1f} ms under load ({fig['lateness_over_10ms']} over "
        f"10 ms); {fig['longest_stall_startup_ms']:.1f} ms since start-up",
    )
    row(
        "cleanups",
        f"{fig['cleanups']} (longest step {fig['cleanup_longest_step_ms']:.1f} ms CPU, "
        f"{fig['cleanup_longest_step_wall_ms']:.1f} ms wall; released "
        f"{fig['cleanup_accounted_released_mb']:.1f} MB accounted, RSS "
        f"{fig['cleanup_rss_freed_mb']:+.1f} MB)",
    )
    budget = fig["budget"] or {}
    if budget.get("total_bytes"):
        grants = ", ".join(
            f"{n} {g['granted_bytes'] / MB:.1f}" for n, g in (budget.get("caches") or {}).items()
        )
        row(
            "cache budget (MB)",
            f"{budget['total_bytes'] / MB:.1f} ({budget['source']}; baseline "
            f"{(budget.get('baseline_rss_bytes') or 0) / MB:.1f}): {grants}",
        )
    db = fig["database"]
    if db:
        row(
            "database pool",
            f"{db['open']} open of {db['pool_size']}, {db['opened_total']} opened in all",
        )
    row("latency p50 / p99 (ms)", f"{fig['p50_ms']:.2f} / {fig['p99_ms']:.2f}")
    out += ["", "targets:"]
    for target, verdict, measured in check_soak(fig, bool(args.skew), args.quick):
        out.append(f"  {verdict}  {target}: {measured}")
    out += ["", "RSS over time (MB)"]
    step = max(1, len(run.rss) // 12)
    for t, v, done in run.rss[::step]:
        out.append(f"  {t:7.0f} s  {v / MB:7.1f}  after {done:,} requests")
    return "\n".join(out)


def plot_soak(run: Run, fig: dict[str, Any], path: str) -> None:
    """RSS over time with the limit and the guard's mark (needs matplotlib)."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(8, 4.5))
    ts = [t / 60 for t, _, _ in run.rss]
    ax.plot(ts, [v / MB for _, v, _ in run.rss], label=f"server RSS ({fig['policy']} caches)")
    limit = fig["limit_mb"]
    ax.axhline(limit, color="red", linestyle="--", linewidth=0.9, label=f"limit {limit:g} MB")
    ax.axhline(
        0.95 * limit, color="orange", linestyle=":", linewidth=0.9, label="shedding mark (95%)"
    )
    budget = fig["budget"] or {}
    if budget.get("baseline_rss_bytes"):
        ax.axhline(
            budget["high_water_bytes"] / MB,
            color="grey",
            linestyle=":",
            linewidth=0.8,
            label="cleanup mark (high water)",
        )
    ax.set_xlabel("minutes under load")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(0, limit * 1.1)
    slope = fig["slope_second_half_mb_per_min"]
    ax.set_title(
        f"memcache_ext demo under a {limit:g} MB limit: {fig['requests']:,} requests, "
        f"slope {'-' if slope is None else f'{slope:+.2f}'} MB/min (second half)",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
