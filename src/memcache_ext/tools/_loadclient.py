"""The load test's clients: keep-alive HTTP users of the demo service, and its stats."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from typing import Any, Optional

from ._loadreport import Run

__all__ = ["client", "memory_stats"]


def client(
    port: int,
    users: int,
    days: int,
    stop: threading.Event,
    run: Run,
    lock: threading.Lock,
    seed: int,
    progress: list[int],
    ports: Optional[list[int]] = None,
    write_fraction: float = 0.0,
    per_port: Optional[dict[int, list[int]]] = None,
) -> None:
    """One keep-alive client; with ``ports``, requests go round-robin over them
    (one connection each) and ``write_fraction`` of them are profile writes."""
    rnd = random.Random(seed)
    ports = ports or [port]
    conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=30) for p in ports}
    counts = {p: [0, 0, 0] for p in ports}  # requests, writes, errors
    lat: list[float] = []
    done = errors = writes = 0
    turn = seed
    while not stop.is_set():
        p = ports[turn % len(ports)]
        turn += 1
        conn = conns[p]
        user = rnd.randint(1, users)
        r = rnd.random()
        body = None
        if write_fraction and rnd.random() < write_fraction:
            method, path = "PUT", f"/users/{user}/profile"
            body = json.dumps({"name": f"Load Tester {rnd.randint(1, 10**6)}"})
        elif r < 0.3:
            method, path = "GET", f"/users/{user}"
        elif r < 0.75:
            method, path = "GET", f"/users/{user}/readings?days={rnd.randint(1, days)}"
        else:
            method, path = "GET", f"/users/{user}/summary"
        t0 = time.perf_counter()
        try:
            if body is None:
                conn.request(method, path)
            else:
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conns[p] = http.client.HTTPConnection("127.0.0.1", p, timeout=30)
        lat.append((time.perf_counter() - t0) * 1000)
        done += 1
        progress[seed] = done  # this thread's slot only: read by the sampler
        errors += not ok
        writes += body is not None
        c = counts[p]
        c[0] += 1
        c[1] += body is not None
        c[2] += not ok
    for conn in conns.values():
        conn.close()
    with lock:
        run.requests += done
        run.errors += errors
        run.writes += writes
        run.latencies_ms.extend(lat)
        if per_port is not None:
            for p, (n, w, e) in counts.items():
                tot = per_port.setdefault(p, [0, 0, 0])
                tot[0] += n
                tot[1] += w
                tot[2] += e


def memory_stats(port: int) -> Optional[dict[str, Any]]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/memory/stats")
        resp = conn.getresponse()
        data = json.loads(resp.read())
        conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return data if isinstance(data, dict) else None
