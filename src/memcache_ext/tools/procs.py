"""Process helpers shared by the tools and the tests: ports, polling, child processes.

One home for what the load test, the demo's replica supervisor, the benchmarks
and ``tests/support.py`` each need: a free loopback port, a poll with a
deadline, an HTTP health probe, stopping a child (and its process group on
POSIX) without leaving anything behind, a throwaway ``redis-server``, and a
progress line for long work on a terminal.
"""

from __future__ import annotations

import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any, Optional, TextIO

__all__ = [
    "ProcessError",
    "free_port",
    "free_ports",
    "port_in_use",
    "port_free",
    "poll",
    "http_ok",
    "send_signal",
    "stop_process",
    "RedisServer",
    "ProgressLine",
    "eta",
]

LOOPBACK = "127.0.0.1"


class ProcessError(RuntimeError):
    """A child process did not start, answer or stop as expected (a clear, user-facing message)."""


# -- ports ----------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A port free on ``host`` now (not reserved): ``free_ports(1)``."""
    return free_ports(1, host)


def _kernel_pick(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now (as uvicorn does, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (Linux; else 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int, host: str = LOOPBACK) -> int:
    """A port p with p..p+n-1 free on ``host`` (checked, not reserved).

    Taken below the ephemeral range: a port from ``bind(0)`` is one the kernel
    may give to the next outgoing connection (a Redis client's, say) before
    the server that was meant to have it binds it.
    """
    high = _ephemeral_low() - n
    for _ in range(200):
        base = random.randrange(10_000, high) if high > 10_000 else _kernel_pick(host)
        if base + n - 1 < 65536 and all(port_free(host, base + i) for i in range(n)):
            return base
    raise ProcessError(f"found no {n} consecutive free ports on {host}")


# -- waiting --------------------------------------------------------------------


def poll(check: Callable[[], Any], timeout: float, what: str = "", pause: float = 0.002) -> Any:
    """Call ``check`` until it returns something true, and return that.

    Raises TimeoutError after ``timeout`` seconds; an exception from ``check``
    (a child that died, say) ends the wait at once.
    """
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise TimeoutError(f"not true after {timeout:g}s: {what or check}")
        time.sleep(pause)


def http_ok(port: int, host: str = LOOPBACK, path: str = "/health", timeout: float = 2.0) -> bool:
    """Whether ``GET http://host:port/path`` answers 200 now."""
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", path)
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return False


# -- stopping children ------------------------------------------------------------


def send_signal(proc: subprocess.Popen[Any], sig: int, group: bool = True) -> None:
    """Send ``sig`` to ``proc``, or to its process group with ``group`` on POSIX.

    A child started with ``start_new_session=True`` leads its own group, so
    the group signal reaches whatever it started too. Off POSIX, SIGKILL is
    ``proc.kill()`` and anything else ``proc.terminate()``. A process already
    gone is not an error.
    """
    try:
        if group and hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        elif sig == getattr(signal, "SIGKILL", None):
            proc.kill()
        else:
            proc.terminate()
    except ProcessLookupError:
        pass


def stop_process(
    proc: subprocess.Popen[Any],
    timeout: float = 10.0,
    sig: Optional[int] = signal.SIGTERM,
    group: bool = True,
    on_kill: Optional[Callable[[], None]] = None,
) -> Optional[int]:
    """Stop ``proc``: ``sig`` (None: already sent), wait ``timeout`` s, then kill it.

    ``on_kill`` is called before the kill (to say so). Returns the exit code.
    """
    if proc.poll() is not None:
        return proc.returncode
    if sig is not None:
        send_signal(proc, sig, group)
    try:
        return proc.wait(timeout=max(0.1, timeout))
    except subprocess.TimeoutExpired:
        if on_kill is not None:
            on_kill()
        send_signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM), group)
        return proc.wait(timeout=10)


# -- redis-server -----------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of our own on a free loopback port, for tests and tools.

    ``start()`` (or ``with``) runs it without persistence and waits for PING;
    ``kill()``/``stop()``/``restart()``/``ensure_up()`` let tests take it away
    and bring it back on the same port. ``proc`` is the child process.
    """

    def __init__(self, port: Optional[int] = None, exe: Optional[str] = None) -> None:
        self.exe = exe or shutil.which("redis-server")
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        """Start it (it must not be running) and wait until it answers PING."""
        if self.exe is None:
            raise ProcessError("redis-server is not on PATH (apt-get install redis-server)")
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._close_log()
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            poll(self._answers, timeout, what="redis-server answers PING", pause=0.01)
        except BaseException as exc:
            self.kill()
            if isinstance(exc, TimeoutError):
                raise ProcessError(
                    f"redis-server did not answer PING within {timeout:g} s"
                ) from None
            raise

    def _answers(self) -> bool:
        proc = self.proc
        if proc is not None and proc.poll() is not None:
            raise ProcessError(f"redis-server exited with code {proc.returncode}:\n{self.output()}")
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def output(self) -> str:
        """The server's last lines of output."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL (a crash, for outage tests)."""
        if self.proc is not None and self.proc.poll() is None:
            send_signal(self.proc, getattr(signal, "SIGKILL", signal.SIGTERM), group=False)
            self.proc.wait(10)

    def stop(self) -> None:
        """Terminate it (killed after 10 s) and close its log."""
        if self.proc is not None:
            stop_process(self.proc, 10.0, group=False)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def ensure_up(self) -> None:
        """Start it again if it is not running (a test may have killed it)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- progress on a terminal ---------------------------------------------------------


class ProgressLine:
    """One line of progress that redraws itself on a terminal, and says nothing elsewhere.

    ``update(text)`` redraws the line (at most ``rate`` times a second, cut to
    the terminal's width); ``close()`` clears it, so what is printed next
    starts on a clean line. When ``stream`` is not a terminal (a pipe, a log
    file, CI) nothing is ever written: logs and ``--json`` output stay clean.
    ``enabled`` forces either way (tests).
    """

    def __init__(
        self,
        stream: Optional[TextIO] = None,
        *,
        enabled: Optional[bool] = None,
        rate: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = bool(self.stream.isatty())
            except (AttributeError, ValueError, OSError):
                enabled = False
        self.enabled = enabled
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._last = -float("inf")
        self._shown = 0

    def _width(self) -> int:
        try:
            return max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        except (OSError, ValueError):  # pragma: no cover - no terminal size to read
            return 99

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        text = text[: self._width()]
        pad = max(0, self._shown - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._shown = len(text)

    def close(self) -> None:
        """Clear the line (nothing was written when disabled)."""
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eta(done: float, total: float, elapsed: float) -> Optional[float]:
    """Seconds left at the rate so far (None before there is a rate)."""
    if done <= 0 or elapsed <= 0 or total <= done:
        return None if done <= 0 or elapsed <= 0 else 0.0
    return elapsed * (total - done) / done
