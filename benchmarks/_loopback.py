"""What the fault and consistency benchmarks share: HTTP on loopback, servers, faults, figures.

Not a benchmark itself (no ``bench_`` prefix): imported by ``bench_redis_faults.py`` and
``bench_consistency.py``, which run as scripts from any directory.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from memcache_ext.tools.procs import RedisServer, http_ok, poll, stop_process

__all__ = [
    "Conn",
    "Faults",
    "Replicas",
    "percentile",
    "SRC",
]

SRC = str(Path(__file__).resolve().parents[1] / "src")


class Conn:
    """One keep-alive HTTP/1.1 connection to ``127.0.0.1:port``, reopened after an error."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._c: Optional[http.client.HTTPConnection] = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Optional[dict[str, str]] = None,
    ) -> tuple[int, bytes, float]:
        """(status, body, seconds); status 0 for a failed request (the error in the body)."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["content-type"] = "application/json"
        t0 = time.perf_counter()
        try:
            if self._c is None:
                self._c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self._c.request(method, path, body=data, headers=hdrs)
            resp = self._c.getresponse()
            payload = resp.read()
            return resp.status, payload, time.perf_counter() - t0
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return 0, f"{type(exc).__name__}: {exc}".encode(), time.perf_counter() - t0

    def json(self, path: str) -> Any:
        status, body, _ = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} on :{self.port}: {status} {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        if self._c is not None:
            self._c.close()
            self._c = None


class Faults:
    """A redis-server of our own, killed, restarted, frozen and resumed on demand."""

    def __init__(self) -> None:
        self.server = RedisServer()
        self.events: list[tuple[float, str]] = []

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def _note(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def kill(self) -> None:
        self.server.kill()
        self._note("kill")

    def restart(self) -> None:
        self.server.start()
        self._note("restart")

    def freeze(self) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGSTOP)
        self._note("freeze")

    def resume(self) -> None:
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGCONT)
        self._note("resume")

    def stop(self) -> None:
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        self.server.stop()


class Replicas:
    """Server processes on consecutive loopback ports, each in its own process group."""

    def __init__(self, argvs: Sequence[list[str]], ports: Sequence[int], env: dict[str, str]):
        self.ports = list(ports)
        # stderr to files, not pipes: a pipe nobody reads until the end would block a
        # server that logs more than its buffer, and show up as a slow request
        self.logs = [tempfile.TemporaryFile() for _ in argvs]
        self.procs = [
            subprocess.Popen(
                argv,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
            for argv, log in zip(argvs, self.logs, strict=True)
        ]

    def output(self, i: int) -> str:
        log = self.logs[i]
        log.seek(0)
        return log.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 120.0, path: str = "/health") -> None:
        def ready() -> bool:
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"a server exited with {proc.returncode}:\n{self.output(i)[-3000:]}"
                    )
            return all(http_ok(p, path=path) for p in self.ports)

        poll(ready, timeout, what="the servers answer", pause=0.1)

    def stop(self) -> list[str]:
        """Stop them all (SIGTERM, then SIGKILL); their stderr."""
        errs = []
        for i, proc in enumerate(self.procs):
            stop_process(proc, 20.0)
            errs.append(self.output(i))
            self.logs[i].close()
        return errs


def python_env() -> dict[str, str]:
    """The environment for a child: it imports memcache_ext from where we do (this source
    tree with ``PYTHONPATH=src``, else the installed package, compiled core and all)."""
    import memcache_ext

    env = dict(os.environ)
    if Path(memcache_ext.__file__).resolve().is_relative_to(Path(SRC).resolve()):
        env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    k = max(0, min(len(xs) - 1, math.ceil(q * len(xs)) - 1))
    return xs[k]


def python() -> str:
    return sys.executable
