"""Helpers shared by test modules: polling, free ports, a real redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any, Callable, Optional

import pytest

REQUIRE_REDIS = os.environ.get("MEMCACHE_EXT_REQUIRE_REDIS", "") not in ("", "0")
REDIS_SERVER = shutil.which("redis-server")
DEADLINE = 15.0  # seconds for anything "eventually"


def eventually(check: Callable[[], Any], timeout: float = DEADLINE, what: str = "",
               pause: float = 0.002) -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"not true after {timeout}s: {what or check}")
        time.sleep(pause)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_missing() -> Optional[str]:
    """Why the Redis tests cannot run here, or None."""
    if REDIS_SERVER is None:
        return "redis-server not found on PATH (apt-get install -y redis-server)"
    try:
        import redis  # noqa: F401  (only whether it imports)
    except ImportError as exc:
        return f"redis-py not installed (pip install 'redis>=5'): {exc}"
    return None


def require_redis(module_level: bool = False) -> None:
    """Skip without a redis-server and redis-py, or fail under MEMCACHE_EXT_REQUIRE_REDIS (CI)."""
    why = redis_missing()
    if why is None:
        return
    if REQUIRE_REDIS:
        pytest.fail(f"MEMCACHE_EXT_REQUIRE_REDIS is set but {why}", pytrace=False)
    pytest.skip(why, allow_module_level=module_level)


class RedisServer:
    """A redis-server subprocess on 127.0.0.1 that tests may kill and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        assert self.proc is None or self.proc.poll() is not None
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            def up() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
                try:
                    return bool(client.ping())
                except redis.exceptions.RedisError:
                    return False
            eventually(up, what="redis-server answers PING")
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def ensure_up(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
