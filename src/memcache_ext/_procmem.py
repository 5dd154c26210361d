"""Process memory: resident set size, the memory limit, and ``malloc_trim``.

* RSS: on Linux it is read from ``/proc/self/statm`` with ``os.pread`` on a
  file descriptor kept open for the life of the process (about a microsecond
  per read, no allocation beyond a small bytes object); elsewhere, or when that
  file cannot be read, through ``psutil``. The descriptor is reopened in a
  forked child (``/proc/self`` is resolved when the file is opened, so an
  inherited descriptor would keep reporting the parent).
* The memory limit: the process's own cgroup (v2 ``memory.max`` or v1
  ``memory.limit_in_bytes``, the smallest over the cgroup and its ancestors,
  since every ancestor's limit also applies), else physical memory. "max" and
  the huge "unlimited" values mean no limit. A missing, unreadable or malformed
  file never raises: detection falls back and says so in ``source``.
* ``malloc_trim()``: glibc's ``malloc_trim(0)`` through ctypes, which returns
  freed heap pages to the kernel so RSS can actually drop after a cleanup.

Every function that reads the file system takes ``root`` (default ``"/"``) so
tests can point it at a fake tree.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

__all__ = [
    "MemoryLimit",
    "RssReader",
    "RssProbe",
    "shared_probe",
    "rss",
    "rss_bytes",
    "rss_source",
    "read_rss_statm",
    "read_rss_psutil",
    "physical_memory",
    "memory_limit",
    "cgroup_limit",
    "malloc_trim",
    "glibc_version",
]

#: Limits at or above this are the kernel's way of writing "unlimited"
#: (cgroup v1 prints 9223372036854771712, i.e. LONG_MAX rounded to a page).
UNLIMITED_THRESHOLD = 2**60

try:
    PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
    PAGE_SIZE = 4096


# -- RSS ----------------------------------------------------------------------

_pread: Optional[Callable[[int, int, int], bytes]] = getattr(os, "pread", None)


def read_rss_psutil() -> int:
    """RSS in bytes through psutil (a fresh ``Process`` each call: slow, portable)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


class RssReader:
    """Reads this process's RSS in bytes, as cheaply as the platform allows.

    ``source`` is ``"/proc/self/statm"`` or ``"psutil"`` (or ``"unavailable"``
    when neither works, in which case ``read()`` returns 0). ``root`` is the
    file-system root the statm path is taken under (tests use a fake one).
    Thread-safe: ``pread`` does not share a file offset.
    """

    def __init__(self, root: str = "/") -> None:
        self._root = root
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._process: object = None
        self.source = "unavailable"
        self.error: Optional[str] = None
        self._open()

    def _open(self) -> None:
        self._fd = None
        self._process = None
        path = os.path.join(self._root, "proc/self/statm")
        if _pread is not None and (sys.platform.startswith("linux") or self._root != "/"):
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                self.error = f"{path}: {exc.strerror or exc}"
            else:
                try:
                    int(_pread(fd, 64, 0).split(None, 2)[1])
                except (OSError, ValueError, IndexError) as exc:
                    os.close(fd)
                    self.error = f"{path}: malformed ({exc})"
                else:
                    self._fd = fd
                    self.source = "/proc/self/statm"
                    return
        try:
            import psutil

            self._process = psutil.Process()
            self.source = "psutil"
        except Exception as exc:  # noqa: BLE001 - psutil missing or broken
            self.error = (self.error + "; " if self.error else "") + f"psutil: {exc}"
            self.source = "unavailable"

    def read(self) -> int:
        """Current RSS in bytes."""
        fd = self._fd
        if fd is not None and _pread is not None:
            try:
                # statm is "size resident shared ...", in pages; 64 bytes hold
                # the first two fields of any realistic process.
                return int(_pread(fd, 64, 0).split(None, 2)[1]) * PAGE_SIZE
            except (OSError, ValueError, IndexError) as exc:
                # The file went away (or the fd was closed): switch to psutil.
                with self._lock:
                    if self._fd == fd:
                        self.error = f"statm read failed: {exc}"
                        self._fd = None
                        try:
                            import psutil

                            self._process = psutil.Process()
                            self.source = "psutil"
                        except Exception:  # noqa: BLE001 - psutil missing or broken
                            self.source = "unavailable"
        process = self._process
        if process is not None:
            return int(process.memory_info().rss)  # type: ignore[attr-defined]  # a psutil.Process
        return 0

    __call__ = read

    def reopen(self) -> None:
        """Close and reopen (used in a forked child)."""
        with self._lock:
            self.close()
            self._open()

    def close(self, _close: Any = os.close) -> None:  # bound early: runs at shutdown
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                _close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


_reader = RssReader()


def _after_fork() -> None:
    _reader.reopen()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

#: RSS in bytes, the fastest way available here.
rss_bytes: Callable[[], int] = _reader.read


def read_rss_statm() -> int:
    """RSS in bytes from ``/proc/self/statm`` (the module's kept-open reader)."""
    return _reader.read()


def rss_source() -> str:
    """Where ``rss_bytes()`` reads from: "/proc/self/statm", "psutil" or "unavailable"."""
    return _reader.source


def rss() -> tuple[int, str]:
    """``(rss_bytes, source)``."""
    return _reader.read(), _reader.source


class RssProbe:
    """RSS for per-request checks: at most one read per request on average under load.

    ``read()`` reads RSS now and remembers it; ``recent()`` returns the last
    reading when it is younger than ``max_age`` seconds, else reads. A request
    middleware takes its "before" from ``recent()`` and its "after" from
    ``read()``: back to back (or overlapping) requests then share readings,
    so a busy server pays about one read per request, while a request that
    arrives after a quiet spell still starts from a fresh figure. ``reads``
    counts the reads actually made. Thread-safe enough for counters: a lost
    update under a race costs one extra read, never a wrong figure.
    """

    __slots__ = ("_read", "max_age", "_clock", "_value", "_when", "reads")

    def __init__(
        self,
        read: Optional[Callable[[], int]] = None,
        max_age: float = 0.002,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not 0 <= max_age < float("inf"):
            raise ValueError(f"max_age must be >= 0 and finite, got {max_age!r}")
        for name, value in (("read", read), ("clock", clock)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, not {type(value).__name__}")
        self._read = read if read is not None else rss_bytes
        self.max_age = float(max_age)
        self._clock = clock
        self._value = 0
        self._when = -float("inf")
        self.reads = 0

    def read(self) -> int:
        """RSS in bytes now (and the new "recent" figure)."""
        value = int(self._read())
        self._value, self._when = value, self._clock()
        self.reads += 1
        return value

    def recent(self) -> int:
        """The last reading if younger than ``max_age``, else a new one."""
        if self._clock() - self._when <= self.max_age:
            return self._value
        return self.read()

    @property
    def last(self) -> int:
        """The last reading, however old (0 before the first)."""
        return self._value


#: The process-wide probe the request middlewares share when given no other.
shared_probe = RssProbe()


# -- memory limit -------------------------------------------------------------


class MemoryLimit(NamedTuple):
    """A memory limit in bytes and a description of where it came from."""

    nbytes: int
    source: str

    @property
    def mb(self) -> float:
        return self.nbytes / 2**20


def physical_memory() -> int:
    """Total physical memory in bytes (psutil, else sysconf; 0 if unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001, S110 - psutil missing or broken: sysconf below
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def _read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="strict") as f:
        return f.read(4096)


def _parse_proc_cgroup(text: str) -> tuple[Optional[str], Optional[str]]:
    """(v2 path, v1 memory path) from the text of /proc/self/cgroup."""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _candidate_dirs(base: str, cgpath: str) -> list[str]:
    """``base/cgpath`` and each ancestor up to ``base`` (deepest first)."""
    parts = [p for p in cgpath.split("/") if p and p not in (".", "..")]
    return [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_limit(root: str = "/", physical: Optional[int] = None) -> tuple[Optional[int], str]:
    """The cgroup memory limit in bytes, or None, and a description.

    The description names the file the limit came from, or why there is none
    ("no limit", "missing", "malformed", ...). Never raises for file problems.
    """
    proc = os.path.join(root, "proc/self/cgroup")
    try:
        text = _read_text(proc)
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{proc} unreadable ({type(exc).__name__})"
    v2, v1 = _parse_proc_cgroup(text)
    if v1 is not None:
        version, base, fname, cgpath = (
            "v1",
            os.path.join(root, "sys/fs/cgroup/memory"),
            "memory.limit_in_bytes",
            v1,
        )
    elif v2 is not None:
        version, base, fname, cgpath = "v2", os.path.join(root, "sys/fs/cgroup"), "memory.max", v2
    else:
        return None, f"{proc} names no memory cgroup"
    if physical is None:
        physical = physical_memory()
    best: Optional[int] = None
    best_path = ""
    notes: list[str] = []
    found = False
    for directory in _candidate_dirs(base, cgpath):
        path = os.path.join(directory, fname)
        try:
            raw = _read_text(path).strip()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            notes.append(f"{path} unreadable ({type(exc).__name__})")
            continue
        found = True
        if raw == "max":
            continue
        try:
            value = int(raw)
        except ValueError:
            notes.append(f"{path} malformed ({raw[:40]!r})")
            continue
        if value <= 0:
            notes.append(f"{path} malformed ({value})")
            continue
        if value >= UNLIMITED_THRESHOLD or (physical and value > physical):
            continue
        if best is None or value < best:
            best, best_path = value, path
    if best is not None:
        return best, f"cgroup {version} {best_path}"
    if notes:
        return None, f"cgroup {version}: " + "; ".join(notes)
    if not found:
        return None, f"cgroup {version}: no {fname} under {base}"
    return None, f"cgroup {version}: no limit"


def memory_limit(
    limit_bytes: Optional[int] = None, root: str = "/", physical: Optional[int] = None
) -> MemoryLimit:
    """The memory limit this process lives under.

    ``limit_bytes`` when given ("configured"); else the cgroup limit; else
    physical memory. ``source`` says which, and, for physical memory, why the
    cgroup gave none.
    """
    if limit_bytes is not None:
        return MemoryLimit(int(limit_bytes), "configured")
    if physical is None:
        physical = physical_memory()
    limit, why = cgroup_limit(root, physical)
    if limit is not None:
        return MemoryLimit(limit, why)
    return MemoryLimit(physical, f"physical memory ({why})")


# -- malloc_trim ----------------------------------------------------------------


def glibc_version() -> Optional[str]:
    """ "2.36" on glibc, else None."""
    try:
        value = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    if value and value.startswith("glibc "):
        return value.split(" ", 1)[1]
    return None


_malloc_trim: Optional[Callable[[int], int]] = None
_malloc_trim_loaded = False


def malloc_trim(pad: int = 0) -> bool:
    """Call glibc's ``malloc_trim(pad)``; return whether it ran (False off glibc)."""
    global _malloc_trim, _malloc_trim_loaded
    if not _malloc_trim_loaded:
        fn = None
        if glibc_version() is not None:
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                fn = libc.malloc_trim
                fn.argtypes = [ctypes.c_size_t]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _malloc_trim, _malloc_trim_loaded = fn, True
    if _malloc_trim is None:
        return False
    _malloc_trim(pad)
    return True
