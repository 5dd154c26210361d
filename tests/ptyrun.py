"""Run a command the way a user does: on a pseudo-terminal, or through pipes.

``on_pty(argv)`` starts the command as the leader of a new session whose
controlling terminal is a pty of ``columns`` x ``rows`` (so ``isatty()`` is
true, ``/dev/tty`` works and the size is known) and returns its exit status
and everything it wrote there (stdout and stderr together, as on a screen).
``on_pipe(argv)`` is ``subprocess.run`` with captured, separate streams.
"""

from __future__ import annotations

import dataclasses
import os
import re
import select
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Optional

#: The environment of a terminal user: no size or colour overrides leaking in.
_DROP = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TERM", "PYTHONUNBUFFERED")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclasses.dataclass
class Result:
    returncode: int
    out: str  # pty: the screen's bytes as text; pipe: stdout
    err: str = ""  # pipe only

    def screen(self) -> str:
        """What the screen ends up showing: redrawn lines resolved, escapes removed."""
        lines = []
        for raw in self.out.replace("\r\n", "\n").split("\n"):
            lines.append(ANSI.sub("", raw.split("\r")[-1]))
        return "\n".join(lines)


def env(extra: Optional[dict[str, str]] = None, term: Optional[str] = "xterm") -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in _DROP}
    if term:
        e["TERM"] = term
    e.update(extra or {})
    return e


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def on_pty(
    argv: Sequence[str],
    extra_env: Optional[dict[str, str]] = None,
    timeout: float = 120,
    columns: int = 100,
    rows: int = 40,
    cwd: Optional[str] = None,
) -> Result:
    import fcntl  # POSIX only: imported here so that the module imports everywhere
    import pty
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # the child: set the window size, then become the command
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            if cwd:
                os.chdir(cwd)
            os.execvpe(argv[0], list(argv), env(extra_env))
        finally:
            os._exit(127)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise TimeoutError(
                    f"{argv} timed out; output so far:\n{b''.join(chunks).decode(errors='replace')}"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return Result(os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace"))


def on_pipe(
    argv: Sequence[str],
    extra_env: Optional[dict[str, str]] = None,
    timeout: float = 120,
    cwd: Optional[str] = None,
) -> Result:
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(extra_env, term=None),
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
