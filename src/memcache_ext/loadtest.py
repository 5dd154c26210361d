"""``python -m memcache_ext loadtest``: memory under load, bounded vs unbounded.

Starts the demo service (``python -m memcache_ext demo``) under uvicorn on
127.0.0.1 as a separate process, drives it with concurrent keep-alive clients
over many distinct users, samples the server's RSS, and stops it. It runs the
bounded service and the ``--unbounded`` one (plain dict caches) on the same
database and workload and prints them side by side. The server it started is
always stopped, whatever happens.

``--quick`` (under a minute) checks what CI checks: the bounded service grows
by less than 100 MB, peaks under 400 MB and answers every request, while the
unbounded one grows past the bounded one's peak; it exits 1 when one fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

MB = 1024 * 1024


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
        }


class LoadTestError(RuntimeError):
    """A clear, user-facing failure (the server did not start, the port is busy, ...)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """The demo service in its own process group; stopped on exit, always."""

    def __init__(self, port: int, db: str, users: int, days: int, unbounded: bool,
                 extra: list[str]) -> None:
        self.port = port
        cmd = [sys.executable, "-m", "memcache_ext", "demo", "--port", str(port), "--db", db,
               "--users", str(users), "--days", str(days), "--log-level", "warning", *extra]
        if unbounded:
            cmd.append("--unbounded")
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LoadTestError(f"the demo service exited with code {self.proc.returncode} "
                                    f"before answering:\n{self.output()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise LoadTestError(f"the demo service did not answer within {timeout:.0f} s:\n"
                            f"{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self.log.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _client(port: int, users: int, days: int, stop: threading.Event, run: Run,
            lock: threading.Lock, seed: int, progress: list[int]) -> None:
    rnd = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    lat: list[float] = []
    done = errors = 0
    while not stop.is_set():
        user = rnd.randint(1, users)
        r = rnd.random()
        if r < 0.3:
            path = f"/users/{user}"
        elif r < 0.75:
            path = f"/users/{user}/readings?days={rnd.randint(1, days)}"
        else:
            path = f"/users/{user}/summary"
        t0 = time.perf_counter()
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        lat.append((time.perf_counter() - t0) * 1000)
        done += 1
        progress[seed] = done  # this thread's slot only: read by the sampler
        errors += not ok
    conn.close()
    with lock:
        run.requests += done
        run.errors += errors
        run.latencies_ms.extend(lat)


def _hit_rate(port: int) -> Optional[float]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/memory/stats")
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return None
    caches = data.get("caches") or {}
    hits = sum(c.get("hits", 0) for c in caches.values())
    misses = sum(c.get("misses", 0) for c in caches.values())
    return hits / (hits + misses) if hits + misses else None


def drive(mode: str, args: argparse.Namespace, db: str) -> Run:
    import psutil

    port = args.port if args.port else free_port()
    if port_in_use(port):
        raise LoadTestError(f"port {port} on 127.0.0.1 is busy: pick another with --port")
    run = Run(mode)
    extra = ["--cleanup-interval", "2"]
    with Server(port, db, args.users, args.days, mode == "unbounded", extra) as server:
        server.wait_ready(args.start_timeout)
        proc = psutil.Process(server.proc.pid)
        stop = threading.Event()
        lock = threading.Lock()
        progress = [0] * args.concurrency
        t0 = time.monotonic()
        run.rss.append((0.0, proc.memory_info().rss, 0))
        clients = [threading.Thread(target=_client, daemon=True,
                                    args=(port, args.users, args.days, stop, run, lock, i,
                                          progress))
                   for i in range(args.concurrency)]
        for c in clients:
            c.start()
        try:
            while time.monotonic() - t0 < args.duration:
                time.sleep(args.sample_interval)
                if server.proc.poll() is not None:
                    raise LoadTestError(f"the {mode} service died under load "
                                        f"(exit {server.proc.returncode}):\n{server.output()}")
                run.rss.append((time.monotonic() - t0, proc.memory_info().rss, sum(progress)))
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=60)
        run.duration_s = time.monotonic() - t0
        run.rss.append((run.duration_s, proc.memory_info().rss, run.requests))
        if mode == "bounded":
            run.hit_rate = _hit_rate(port)
    return run


def render(runs: list[Run], args: argparse.Namespace) -> str:
    rows = [r.summary() for r in runs]
    labels = [("requests", "requests", "{:,}"), ("errors", "errors", "{:,}"),
              ("req_per_s", "requests/s", "{:,.0f}"), ("rss_start_mb", "RSS start (MB)", "{:.1f}"),
              ("rss_peak_mb", "RSS peak (MB)", "{:.1f}"), ("rss_end_mb", "RSS end (MB)", "{:.1f}"),
              ("growth_mb", "growth (MB)", "{:.1f}"), ("p50_ms", "latency p50 (ms)", "{:.2f}"),
              ("p95_ms", "latency p95 (ms)", "{:.2f}"), ("p99_ms", "latency p99 (ms)", "{:.2f}"),
              ("hit_rate", "cache hit rate", "{:.3f}")]
    out = [f"memcache_ext loadtest: demo service on 127.0.0.1, {args.users:,} users x "
           f"{args.days} days, {args.concurrency} keep-alive clients, {args.duration:.0f} s per "
           f"service", ""]
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
    return "\n".join(out)


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
        if b["growth_mb"] >= 100:
            failures.append(f"bounded service grew {b['growth_mb']:.1f} MB (limit 100)")
        if b["rss_peak_mb"] >= 400:
            failures.append(f"bounded service peaked at {b['rss_peak_mb']:.1f} MB (limit 400)")
        if b["errors"]:
            failures.append(f"bounded service answered {b['errors']} requests with errors")
        if not b["requests"]:
            failures.append("bounded service answered no requests")
    u = by.get("unbounded")
    if b is not None and u is not None and u["rss_peak_mb"] <= b["rss_peak_mb"]:
        failures.append(f"unbounded service peaked at {u['rss_peak_mb']:.1f} MB, not above the "
                        f"bounded one's {b['rss_peak_mb']:.1f} MB: the workload is too small")
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
        ax.plot([t for t, _, _ in r.rss], [v / MB for _, v, _ in r.rss], label=f"{r.mode} caches")
    ax.axhline(400, color="grey", linestyle="--", linewidth=0.8, label="400 MB")
    ax.set_xlabel("seconds under load")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("memcache_ext demo service: RSS under the same workload")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m memcache_ext loadtest",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true",
                   help="under a minute; checks the bounded/unbounded promises (exit 1 on failure)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of load per service (default 90; --quick 20). A long "
                        "--duration is the soak form")
    p.add_argument("--users", type=int, default=None,
                   help="distinct users in the database (default 5000; --quick 3000)")
    p.add_argument("--days", type=int, default=14, help="days of readings per user")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--only", choices=["bounded", "unbounded"], help="run one service only")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--db", help="SQLite database to use or create (default: a temporary one)")
    p.add_argument("--plot", metavar="FILE.png", help="draw RSS over time (needs matplotlib)")
    p.add_argument("--json", metavar="FILE", help="write the figures and RSS samples as JSON")
    p.add_argument("--sample-interval", type=float, default=0.25, help=argparse.SUPPRESS)
    p.add_argument("--start-timeout", type=float, default=180.0, help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.duration = args.duration or (20.0 if args.quick else 90.0)
    args.users = args.users or (3000 if args.quick else 5000)
    if args.duration <= 0 or args.users < 1 or args.concurrency < 1 or args.days < 1:
        print("error: --duration, --users, --concurrency and --days must be positive",
              file=sys.stderr)
        return 2
    if args.port and not 0 < args.port < 65536:
        print("error: --port must be in 1..65535", file=sys.stderr)
        return 2
    modes = [args.only] if args.only else ["bounded", "unbounded"]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or os.path.join(tmp, "demo.sqlite3")
        try:
            for mode in modes:
                print(f"  loading the {mode} service for {args.duration:.0f} s ...",
                      file=sys.stderr)
                runs.append(drive(mode, args, db))
        except LoadTestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(render(runs, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": {k: v for k, v in vars(args).items()},
                       "runs": [dict(r.summary(), rss=r.rss) for r in runs]}, f, indent=1)
    if args.plot:
        try:
            plot(runs, args.plot)
        except LoadTestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"RSS plot written to {args.plot}")
    if args.quick:
        failures = check(runs)
        for failure in failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        if failures:
            return 1
        print("quick load test: all promises held")
    return 0
