"""Helpers shared by test modules: polling, free ports, a real redis-server, platform marks.

The process helpers themselves live once, in ``memcache_ext.tools.procs``
(the load test and the demo use them too); this module adds what only tests
need: assertion-style polling, skipping or failing when Redis is missing, and
the platform marks.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pytest

import memcache_ext
from memcache_ext.tools import procs
from memcache_ext.tools.procs import RedisServer as _ProcsRedisServer
from memcache_ext.tools.procs import free_port

if TYPE_CHECKING:
    from memcache_ext import CacheManager

__all__ = [
    "DEADLINE",
    "PATIENT_DEADLINE",
    "RedisServer",
    "child_env",
    "eventually",
    "free_port",
    "linux_only",
    "posix_only",
    "redis_missing",
    "require_redis",
    "tier_defaults",
]

REQUIRE_REDIS = os.environ.get("MEMCACHE_EXT_REQUIRE_REDIS", "") not in ("", "0")
DEADLINE = 15.0  # seconds for anything "eventually"


#: A per-call deadline for Redis tiers in tests whose subject is not the deadline: a
#: loaded runner can pass the default 50 ms, which times the call out and opens the
#: breaker (by design).
PATIENT_DEADLINE = 1.0


def tier_defaults() -> dict[str, Any]:
    """The keyword defaults every Redis tier is made with (``TierDriver.__init__``'s)."""
    from memcache_ext.redis._driver import TierDriver

    defaults = TierDriver.__init__.__kwdefaults__
    assert defaults is not None and "deadline" in defaults
    return defaults


#: Reads /proc (RSS from statm, cgroup files as the kernel lays them out).
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
#: Process groups and signals (os.killpg, SIGSTOP): the demo's replicas, the load test.
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX process groups and signals")


#: Where the suite imported memcache_ext from: the installed package in CI (whose
#: src/ holds no compiled module), the source tree in an editable install.
PACKAGE_PARENT = str(Path(memcache_ext.__file__).resolve().parents[1])


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child interpreter that imports the memcache_ext this
    suite tests (not another copy: a clean clone's src/ would give the pure core)."""
    path = os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def sample_manager(rss_mb: float = 200) -> CacheManager:
    """A CacheManager with two caches, a hit, a miss and one cleanup: stats to look at."""
    from memcache_ext import CacheManager

    manager = CacheManager(memory_limit_mb=1000, rss=lambda: int(rss_mb * 2**20), min_interval=0)
    users = manager.create_cache("users", maxsize=10, ttl=60, max_bytes=10_000)
    users["a"] = "x" * 100
    users.get("a")
    users.get("missing")
    manager.create_cache("pages", maxsize=5)
    manager.cleanup(collect=False)
    return manager


def eventually(
    check: Callable[[], Any], timeout: float = DEADLINE, what: str = "", pause: float = 0.002
) -> Any:
    """Poll ``check`` until it returns something true; fail the test after ``timeout``."""
    try:
        return procs.poll(check, timeout, what=what, pause=pause)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def redis_missing() -> Optional[str]:
    """Why the Redis tests cannot run here, or None."""
    if shutil.which("redis-server") is None:
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


class RedisServer(_ProcsRedisServer):
    """The real redis-server of the tests, with clients configured for them."""

    def options(self, **kw: Any) -> dict[str, Any]:
        """Client options for tests: short timeouts, no hidden retries; ``kw`` wins."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return {
            "host": "127.0.0.1",
            "port": self.port,
            "socket_timeout": 1.0,
            "socket_connect_timeout": 1.0,
            "retry": Retry(NoBackoff(), 0),
            **kw,
        }

    def client(self, **kw: Any) -> Any:
        import redis

        return redis.Redis(**self.options(**kw))

    def async_client(self, **kw: Any) -> Any:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # redis.asyncio's own Retry: a sync one is converted, with a UserWarning
        return aredis.Redis(**self.options(**{"retry": Retry(NoBackoff(), 0), **kw}))

    def resume(self) -> None:
        """SIGCONT, in case a test left the server frozen."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
