"""The load test's clients: keep-alive HTTP users of the demo service, and its stats.

The traffic (``Traffic``): users are picked with a Zipf-like popularity (user
of rank ``k`` asked ``1/k**skew`` as often as the most popular; ``skew=0`` is
uniform), the same ranking for every client (a fixed shuffle of the ids, so
the popular users are not simply the lowest ids); readings are asked for one
of the common windows (7, 30 or 90 days) most of the time and any window of
1..days otherwise; ``write_fraction`` of the requests are profile writes and
``oversize_fraction`` are profile writes with a body over the server's limit
(half announced by ``Content-Length``, half chunked), which must come back
``413``. Latencies and ``Run.statuses`` cover the ordinary requests; the
oversized ones are counted apart (``Run.oversized_statuses``).
"""

from __future__ import annotations

import bisect
import http.client
import itertools
import json
import random
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ._loadreport import Run

__all__ = ["Traffic", "client", "memory_stats", "health", "oversized_put"]

#: Windows (days) the readings are asked for most of the time, and how often each.
COMMON_WINDOWS = ((7, 0.5), (30, 0.3), (90, 0.2))
#: Share of readings requests for one of the common windows (the rest: any 1..days).
COMMON_SHARE = 0.9


@dataclass
class Traffic:
    """What the clients ask for (the same for every client)."""

    users: int
    days: int
    skew: float = 1.0
    write_fraction: float = 0.0
    oversize_fraction: float = 0.0
    oversize_bytes: int = 2 * 2**20
    _cum: list[float] = field(default_factory=list, repr=False)
    _ids: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._ids = list(range(1, self.users + 1))
        random.Random(12345).shuffle(self._ids)  # rank -> user id, the same in every client
        if self.skew:
            weights = (1.0 / k**self.skew for k in range(1, self.users + 1))
            self._cum = list(itertools.accumulate(weights))

    def user(self, rnd: random.Random) -> int:
        if not self.skew:
            return rnd.randint(1, self.users)
        x = rnd.random() * self._cum[-1]
        return self._ids[min(bisect.bisect_left(self._cum, x), self.users - 1)]

    def window(self, rnd: random.Random) -> int:
        if rnd.random() < COMMON_SHARE:
            x = rnd.random()
            for days, share in COMMON_WINDOWS:
                if x < share:
                    return days
                x -= share
            return COMMON_WINDOWS[-1][0]
        return rnd.randint(1, self.days)


def oversized_put(port: int, path: str, nbytes: int, chunked: bool, timeout: float = 10.0) -> int:
    """Send a body of ``nbytes`` to ``path`` the way a careless client would; the status.

    With ``Content-Length`` the headers go first and the body only if no answer
    came within a second (a server that refuses on the length answers before
    reading anything); chunked, the body is streamed until the server answers.
    Returns the status code, or 0 when the connection ended without one.
    """
    head = f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {nbytes}\r\n"
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((head + "\r\n").encode())
        sent = 0
        answered = False
        if not chunked:
            answered = bool(select.select([sock], [], [], 1.0)[0])
        try:
            while not answered and sent < nbytes:
                piece = chunk[: min(len(chunk), nbytes - sent)]
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                answered = bool(select.select([sock], [], [], 0)[0])
            if not answered and chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed its end: its answer may still be readable
        data = b""
        try:
            while b"\r\n" not in data:
                more = sock.recv(4096)
                if not more:
                    break
                data += more
        except OSError:
            pass
    try:
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    except (IndexError, ValueError):
        return 0


def client(
    port: int,
    traffic: Traffic,
    stop: threading.Event,
    run: Run,
    lock: threading.Lock,
    seed: int,
    progress: list[int],
    ports: Optional[list[int]] = None,
    per_port: Optional[dict[int, list[int]]] = None,
    base: int = 0,
) -> None:
    """One keep-alive client; with ``ports``, requests go round-robin over them
    (one connection each). Every answer is counted by status; a connection that
    fails counts under status 0. ``seed`` is also this client's slot in
    ``progress``; ``base`` is added to it for the random numbers only."""
    rnd = random.Random(base + seed)
    ports = ports or [port]
    conns = {p: http.client.HTTPConnection("127.0.0.1", p, timeout=30) for p in ports}
    counts = {p: [0, 0, 0] for p in ports}  # requests, writes, errors
    statuses: dict[int, int] = {}
    big: dict[int, int] = {}  # statuses of the oversized requests
    lat: list[float] = []
    done = errors = writes = oversized = 0
    turn = seed
    while not stop.is_set():
        p = ports[turn % len(ports)]
        turn += 1
        conn = conns[p]
        user = traffic.user(rnd)
        r = rnd.random()
        body = None
        t0 = time.perf_counter()
        if traffic.oversize_fraction and rnd.random() < traffic.oversize_fraction:
            status = oversized_put(
                p, f"/users/{user}/profile", traffic.oversize_bytes, chunked=bool(done % 2)
            )
            oversized += 1
            big[status] = big.get(status, 0) + 1
            ok = status == 413
        else:
            if traffic.write_fraction and rnd.random() < traffic.write_fraction:
                method, path = "PUT", f"/users/{user}/profile"
                body = json.dumps({"name": f"Load Tester {rnd.randint(1, 10**6)}"})
            elif r < 0.3:
                method, path = "GET", f"/users/{user}"
            elif r < 0.75:
                method, path = "GET", f"/users/{user}/readings?days={traffic.window(rnd)}"
            else:
                method, path = "GET", f"/users/{user}/summary"
            try:
                if body is None:
                    conn.request(method, path)
                else:
                    headers = {"Content-Type": "application/json"}
                    conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conns[p] = http.client.HTTPConnection("127.0.0.1", p, timeout=30)
            ok = status == 200
            lat.append((time.perf_counter() - t0) * 1000)
            statuses[status] = statuses.get(status, 0) + 1
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
        run.oversized += oversized
        for status, n in statuses.items():
            run.statuses[status] = run.statuses.get(status, 0) + n
        for status, n in big.items():
            run.oversized_statuses[status] = run.oversized_statuses.get(status, 0) + n
        run.latencies_ms.extend(lat)
        if per_port is not None:
            for p, (n, w, e) in counts.items():
                tot = per_port.setdefault(p, [0, 0, 0])
                tot[0] += n
                tot[1] += w
                tot[2] += e


def _get_json(port: int, path: str, timeout: float = 10.0) -> Optional[dict[str, Any]]:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            data = json.loads(conn.getresponse().read())
        finally:
            conn.close()
    except (OSError, ValueError, http.client.HTTPException):
        return None
    return data if isinstance(data, dict) else None


def memory_stats(port: int) -> Optional[dict[str, Any]]:
    """``GET /memory/stats`` of the demo on ``port`` (None when it does not answer)."""
    return _get_json(port, "/memory/stats")


def health(port: int) -> Optional[dict[str, Any]]:
    """``GET /health`` of the demo on ``port`` (None when it does not answer)."""
    return _get_json(port, "/health")
