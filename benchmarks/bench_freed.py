"""What a cleanup gives back to the kernel: malloc_trim, PYTHONMALLOC and glibc arenas.

    PYTHONPATH=src python benchmarks/bench_freed.py            # the table (about a minute)
    PYTHONPATH=src python benchmarks/bench_freed.py --worker   # one configuration (internal)

Each configuration runs in a fresh interpreter (the allocator settings are
environment variables read at start-up) and goes through the life of a cache
under a cleanup, RSS read after each phase:

1. ``baseline``: the interpreter and the package;
2. ``filled``: the demo's kinds of values (profiles as dicts, readings as tuples
   of tuples, summaries as dicts of lists) inserted from 4 threads into three
   byte-bounded caches, 60 MiB accounted;
3. ``trimmed``: ``cleanup()`` without its ``malloc_trim``: half of every cache
   evicted, ``gc.collect()``;
4. ``malloc_trim``: then glibc's ``malloc_trim(0)``;
5. ``refilled``: the same amount inserted again (new keys): does the process
   reuse what it freed, or grow?

Configurations: the defaults; ``PYTHONMALLOC=malloc`` (every object from
glibc malloc, no pymalloc arenas); ``MALLOC_ARENA_MAX=2`` (glibc's per-thread
arenas capped, as many container images do); ``MALLOC_TRIM_THRESHOLD_=131072``
(glibc gives freed heap top back on its own sooner). Linux and glibc only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

MB = 2**20

CONFIGS = [
    ("defaults (pymalloc, glibc arenas)", {}),
    ("PYTHONMALLOC=malloc", {"PYTHONMALLOC": "malloc"}),
    ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"}),
    ("MALLOC_TRIM_THRESHOLD_=131072", {"MALLOC_TRIM_THRESHOLD_": "131072"}),
    (
        "PYTHONMALLOC=malloc + MALLOC_ARENA_MAX=2",
        {"PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "2"},
    ),
]
PHASES = ("baseline", "filled", "trimmed", "malloc_trim", "refilled")


def _values(kind: str, i: int) -> object:
    if kind == "profiles":
        return {
            "id": i,
            "name": f"User {i}",
            "email": f"user{i}@example.org",
            "birth_year": 1950 + i % 50,
            "created_at": 1_700_000_000 + i,
        }
    if kind == "readings":
        return tuple(
            (1_700_000_000 + h * 3600, 60.0 + (i + h) % 40 / 2, (i * h) % 1500) for h in range(336)
        )
    daily = [
        {"date": f"2026-11-{d:02d}", "readings": 24, "heart_rate_mean": 70.0 + d, "steps": d * i}
        for d in range(1, 15)
    ]
    return {"user_id": i, "name": f"User {i}", "days": 14, "daily": daily}


def worker() -> dict[str, int]:
    """One configuration, in this interpreter: RSS (bytes) after each phase."""
    from memcache_ext import CacheManager, _procmem

    rss = _procmem.rss_bytes
    out = {"baseline": rss()}
    manager = CacheManager(memory_limit_mb=4096, cache_share=None)
    caches = {
        "profiles": manager.create_cache("profiles", maxsize=None, max_bytes=10 * MB),
        "readings": manager.create_cache("readings", maxsize=None, max_bytes=40 * MB),
        "summaries": manager.create_cache("summaries", maxsize=None, max_bytes=10 * MB),
    }
    counts = {"profiles": 15_000, "readings": 800, "summaries": 2_500}

    def fill(offset: int) -> None:
        def run(t: int) -> None:
            for kind, cache in caches.items():
                for i in range(t, counts[kind], 4):
                    cache[offset + i] = _values(kind, offset + i)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    fill(0)
    out["filled"] = rss()
    out["accounted_filled"] = manager.total_nbytes()
    event = manager.cleanup("bench", collect=True)  # includes malloc_trim at its end
    assert event is not None
    out["trimmed"] = event.rss_before_malloc_trim
    out["malloc_trim"] = event.rss_after
    out["accounted_released"] = event.accounted_bytes_released
    fill(1_000_000)
    out["refilled"] = rss()
    out["accounted_refilled"] = manager.total_nbytes()
    return out


def main() -> None:
    if "--worker" in sys.argv:
        print(json.dumps(worker()))
        return
    rows = []
    for label, extra in CONFIGS:
        env = dict(os.environ, **extra)
        proc = subprocess.run(
            [sys.executable, __file__, "--worker"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=True,
        )
        rows.append((label, json.loads(proc.stdout.strip().splitlines()[-1])))
    print(
        f"Python {sys.version.split()[0]}, glibc {os.confstr('CS_GNU_LIBC_VERSION')}; "
        "RSS in MB after each phase (accounted bytes: filled "
        f"{rows[0][1]['accounted_filled'] / MB:.1f}, released by the cleanup "
        f"{rows[0][1]['accounted_released'] / MB:.1f})"
    )
    head = f"{'configuration':42s}" + "".join(f"{p:>12s}" for p in PHASES)
    print(head + f"{'trim gave':>11s}{'refill grew':>12s}")
    for label, r in rows:
        cells = "".join(f"{r[p] / MB:12.1f}" for p in PHASES)
        gave = (r["trimmed"] - r["malloc_trim"]) / MB
        grew = (r["refilled"] - r["filled"]) / MB
        print(f"{label:42s}{cells}{gave:11.1f}{grew:+12.1f}")


if __name__ == "__main__":
    main()
