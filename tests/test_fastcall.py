"""The call paths of ``cached`` and the tiers: compiled (_fastcall_c) and pure
(_fastcall_py) twins, chosen by _fastcall."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from memcache_ext import _fastcall, _fastcall_py
from memcache_ext.keys import KWARGS_MARK, make_key


def test_uninitialized_compiled_callables_raise_instead_of_crashing(isolated: Any) -> None:
    """GetOr/CachedCall made with __new__ and never initialized: TypeError, not
    a segfault (the call path read an unset cache)."""
    pytest.importorskip("memcache_ext._fastcall_c")
    isolated("""
from memcache_ext._fastcall_c import CachedCall, GetOr
for make, call in ((GetOr, lambda f: f("k")), (GetOr, lambda f: f("k", 1)),
                   (GetOr, lambda f: f(key="k")), (CachedCall, lambda f: f(1, 2)),
                   (CachedCall, lambda f: f(1)), (CachedCall, lambda f: f(a=1))):
    obj = make.__new__(make)
    try:
        call(obj)
    except TypeError as exc:
        assert "not initialized" in str(exc), exc
    else:
        raise AssertionError("no error")
print("ok")
""")


def test_twins_build_the_same_keys_and_results(cache_cls: type) -> None:
    cache = cache_cls(16)
    seen: list[Any] = []

    def miss(key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append(key)
        assert key == make_key(args, kwargs)
        cache[key] = ("v", args, tuple(sorted(kwargs.items())))
        return cache[key]

    compiled = _fastcall.cached_call(cache, miss)
    pure = _fastcall_py.cached_call(cache, miss)
    for args, kwargs in [
        ((1,), {}),
        (("a",), {}),
        ((1, 2), {}),
        ((), {"x": 1}),
        ((1,), {"b": 2, "a": 1}),
        ((1.0,), {}),
        ((None,), {}),
    ]:
        assert compiled(*args, **kwargs) == pure(*args, **kwargs)
    assert seen == [
        1,
        "a",
        (1, 2),
        (KWARGS_MARK, ("x", 1)),
        (1, KWARGS_MARK, ("a", 1), ("b", 2)),
        None,
    ]  # 1.0 == 1: a hit


def test_get_or_twins(cache_cls: type) -> None:
    cache = cache_cls(4)
    cache["a"] = 1
    for get in (
        _fastcall.get_or(cache, lambda k, d: ("fallback", k, d)),
        _fastcall_py.get_or(cache, lambda k, d: ("fallback", k, d)),
    ):
        assert get("a") == 1 and get("a", 9) == 1 and get(key="a") == 1
        assert get("b") == ("fallback", "b", None) and get("b", default=2) == ("fallback", "b", 2)
    with pytest.raises(TypeError, match="fallback must be callable"):
        _fastcall.get_or(cache, None)  # type: ignore[arg-type]


def test_cached_call_twins_refuse_a_miss_that_is_not_callable(cache_cls: type) -> None:
    """At construction, in both twins (the pure one failed only at the first miss)."""
    for build in (_fastcall.cached_call, _fastcall_py.cached_call):
        with pytest.raises(TypeError, match=r"^miss must be callable, not NoneType$"):
            build(cache_cls(4), None)  # type: ignore[arg-type]


def test_compiled_call_paths_leak_no_references() -> None:
    """CachedCall and GetOr take calls through vectorcall and tp_call; every
    form of call leaves the arguments' reference counts as they were."""
    fast = pytest.importorskip("memcache_ext._fastcall_c")
    core = pytest.importorskip("memcache_ext._core_c")
    from memcache_ext.decorators import cached

    cache = core.CLruCache(4)
    key, default, other = "k" * 20, object(), object()
    before = [sys.getrefcount(o) for o in (key, default, other)]
    get = fast.GetOr(cache, lambda k, d: d)

    @cached(core.CLruCache(4))
    def f(*args: Any, **kwargs: Any) -> Any:
        return other

    assert type(f).__name__ == "CachedCall"
    for _ in range(200):
        cache[key] = default
        get(key)
        get(key, other)
        get("missing", default)
        get(key=key)
        get("x", default=other)
        cache.clear()
        f(key)
        f(key, other)
        f(key, y=other)
        f()
        f(x=key)
    f.cache.clear()
    del get, f
    assert [sys.getrefcount(o) for o in (key, default, other)] == before
