"""A progress line for long commands: on a terminal only, redrawn in place.

``Progress(total)`` shows ``[done/total] what: step   0:42 elapsed, about 1:10 left``
on stderr when stderr is a terminal (and ``TERM`` is not ``dumb``), and
nothing otherwise, so logs, pipes and ``--json`` output stay clean. The
estimate of the time left comes from the tasks finished so far: a task of a
kind already seen is expected to take what that kind took (the most specific
kind with a measurement wins), and until something is measured the caller's
prior (seconds, measured on a small machine) stands in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Optional, TextIO


def enabled_for(stream: TextIO) -> bool:
    """Whether a progress line belongs on ``stream``: a terminal that can redraw."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def clock(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Task:
    """One unit of work: its label, the kinds it is estimated by, a prior in seconds."""

    __slots__ = ("kinds", "label", "prior")

    def __init__(self, label: str, kinds: Sequence[object], prior: float) -> None:
        self.label = label
        self.kinds = tuple(kinds)
        self.prior = prior


class Progress:
    """A redrawing progress line over a known list of tasks (see the module docstring)."""

    def __init__(
        self,
        tasks: Sequence[Task],
        title: str,
        stream: Optional[TextIO] = None,
        enabled: Optional[bool] = None,
        interval: float = 0.5,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled_for(self.stream) if enabled is None else enabled
        self.title = title
        self._tasks = list(tasks)
        self._durations: dict[object, list[float]] = {}
        self._index = -1
        self._step = ""
        self._started = time.monotonic()
        self._task_started = self._started
        self._lock = threading.Lock()  # the state above
        self._out = threading.RLock()  # the line on the terminal
        self._stop = threading.Event()
        self._interval = interval
        self._thread: Optional[threading.Thread] = None
        self._shown = False

    # -- the caller's side -------------------------------------------------------------

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, index: int) -> None:
        """Task ``index`` (into the list given at construction) starts now."""
        with self._lock:
            self._index = index
            self._step = ""
            self._task_started = time.monotonic()
        self._draw()

    def step(self, step: str) -> None:
        """The current task moved to ``step`` (a workload, a phase)."""
        with self._lock:
            self._step = step
        self._draw()

    def done(self) -> None:
        """The current task finished: its time teaches the estimate."""
        with self._lock:
            if self._index < 0:
                return
            took = time.monotonic() - self._task_started
            for kind in self._tasks[self._index].kinds:
                self._durations.setdefault(kind, []).append(took)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Erase the line and keep it away while the caller prints (a table, a message)."""
        with self._out:
            if self.enabled and self._shown:
                self._write("\r\x1b[K")
                self._shown = False
            yield

    def close(self) -> None:
        """Stop redrawing and erase the line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.enabled and self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    # -- estimates ---------------------------------------------------------------------

    def expected(self, task: Task) -> float:
        """Seconds ``task`` should take, from the most specific kind measured so far."""
        for kind in task.kinds:
            seen = self._durations.get(kind)
            if seen:
                return statistics.median(seen)
        return task.prior

    def remaining(self) -> float:
        """Seconds left: the rest of the current task, then every task after it."""
        with self._lock:
            index, started = self._index, self._task_started
        now = time.monotonic()
        left = 0.0
        if 0 <= index < len(self._tasks):
            left = max(0.0, self.expected(self._tasks[index]) - (now - started))
        for task in self._tasks[index + 1 :]:
            left += self.expected(task)
        return left

    def line(self) -> str:
        """The text of the progress line now."""
        with self._lock:
            index, step = self._index, self._step
        n = len(self._tasks)
        what = self._tasks[index].label if 0 <= index < n else "starting"
        if step:
            what += f": {step}"
        elapsed = time.monotonic() - self._started
        return (
            f"{self.title} [{max(index, 0) + 1}/{n}] {what}   "
            f"{clock(elapsed)} elapsed, about {clock(self.remaining())} left"
        )

    # -- drawing -----------------------------------------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw()

    def _draw(self) -> None:
        if not self.enabled or self._stop.is_set():
            return
        text = "\r" + self.line()[: max(10, self._width() - 1)] + "\x1b[K"
        with self._out:
            self._write(text)
            self._shown = True

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 100
        except (AttributeError, ValueError, OSError):
            return shutil.get_terminal_size((100, 24)).columns

    def _write(self, text: str) -> None:
        with self._out:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # the terminal went away: stop drawing
                self.enabled = False
