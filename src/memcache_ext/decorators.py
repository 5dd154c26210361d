"""``cached``: memoize sync and async functions and methods.

    from memcache_ext import LruCache, cached

    @cached                                  # a new LruCache() (128 entries)
    def parse(text: str) -> dict: ...

    @cached(maxsize=1024, ttl=60)            # a new LruCache(maxsize=1024, ttl=60)
    def user_context(user_id: int) -> dict: ...

    @cached(LruCache(maxsize=256, policy="s3fifo"))   # a cache of your own
    async def fetch(url: str) -> bytes: ...

The forms: ``@cached``, ``@cached()``, ``@cached(maxsize=..., ttl=...,
max_bytes=..., policy=...)`` (each builds an ``LruCache`` with those
settings), and ``@cached(cache)`` with any cache of this package (or any
object with ``get``, ``peek``, ``set`` and ``clear`` of the same meaning).
``key=`` and ``method=`` go with any of them. A wrong form raises TypeError
naming the right ones.

Semantics:

* Keys: by default built from the positional and keyword arguments, as
  ``functools.lru_cache(typed=False)`` does (``f(1)`` and ``f(1.0)`` share an
  entry), except that keyword order does not matter (``f(a=1, b=2)`` and
  ``f(b=2, a=1)`` share one). Every argument must be hashable (TypeError
  otherwise, as with functools). ``key(*args, **kwargs)`` replaces that with
  your own function. The function itself is *not* part of the key: give each
  decorated function its own cache, or a ``key`` that adds a prefix, if you
  share one cache between several functions.
* Hits cost one key build and one ``cache.get``: no lock is taken.
* Concurrent misses for one key share one computation: the first caller
  computes, threads that arrive meanwhile wait on a ``concurrent.futures.Future``
  and asyncio tasks await it (on any event loop). The result is stored, then
  handed to every waiter. An exception is not cached and is raised in every
  waiter; the next call computes again.
* Leases (caches with ``lease``/``fill``/``drop_lease``, as every cache of
  this package): the computation runs under a lease on its key, taken before
  it starts. If the key is written or invalidated meanwhile (``invalidate``,
  ``del``, ``pop``, ``set``, ``clear``), the result is still returned to the
  callers but not stored, so a value read before a writer's change never
  outlives it in the cache. A value another fill stored meanwhile wins and is
  returned instead. Other caches get a plain ``set`` of the result.
* Async: the computation runs in its own task, and every caller (the first
  one included) awaits it through ``asyncio.shield``: cancelling one caller
  does not cancel the computation or the other callers, and the result is
  still stored. If the computing task itself is cancelled, every waiter gets
  CancelledError.
* Re-entry with the same key from inside the computation (recursion on the
  same thread, or from the computing task) computes directly instead of
  waiting for itself.
* Methods (a function defined in a class body whose first parameter is
  ``self`` or ``cls``; force with ``method=True/False``): the instance is not
  part of the key. Each live instance gets a private token (found by ``id``
  and dropped by a weakref callback when the instance dies), so the cache never
  keeps ``self`` alive and a new object that reuses a dead one's id never sees
  its entries. Entries of a dead instance become unreachable and leave by LRU
  order. An instance that cannot be weakly referenced is keyed by itself
  (kept alive, as functools does). A custom ``key`` gets the arguments after
  ``self``.
* ``wrapped.cache`` is the cache, ``wrapped.cache_clear()`` clears it (the
  whole cache, shared or not), ``wrapped.__wrapped__`` the original function.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Optional, ParamSpec, Protocol, TypeVar, overload

from . import _fastcall
from ._constants import MISSING, UNSET
from ._core import LruCache
from .keys import KWARGS_MARK, make_key

if TYPE_CHECKING:
    from ._core_py import PyLruCache

__all__ = ["CachedFunction", "cached", "make_key"]

_P = ParamSpec("_P")
_Q = ParamSpec("_Q")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)
_C_co = TypeVar("_C_co", covariant=True)
_T = TypeVar("_T")

#: The methods ``cached`` needs of a cache.
CACHE_METHODS = ("get", "peek", "set", "clear")
FORMS = (
    "use @cached, @cached(), @cached(maxsize=..., ttl=..., max_bytes=..., policy=...) "
    "(each builds an LruCache), or @cached(cache) with a cache instance such as "
    "@cached(LruCache(maxsize=1024))"
)


class CacheLike(Protocol):
    """What ``cached`` needs of a cache (every cache of this package has it)."""

    def get(self, key: Any, default: Any, /) -> Any: ...

    def peek(self, key: Any, default: Any, /) -> Any: ...

    def set(self, key: Any, value: Any, /) -> Any: ...

    def clear(self) -> None: ...


_C = TypeVar("_C", bound=CacheLike)


class CachedFunction(Protocol[_P, _R_co, _C_co]):
    """What ``cached`` returns: the function, plus ``cache``, ``cache_clear`` and
    ``__wrapped__``. Read through an instance, it is bound (the first argument
    dropped); read through the class, its arguments are not checked (a type
    checker cannot tell a method from a classmethod or a staticmethod there)."""

    __name__: str
    __qualname__: str

    @property
    def cache(self) -> _C_co: ...

    @property
    def __wrapped__(self) -> Callable[..., _R_co]: ...

    def cache_clear(self) -> None: ...

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...

    @overload
    def __get__(
        self, obj: None, owner: Optional[type] = None, /
    ) -> CachedFunction[..., _R_co, _C_co]: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[_T, _Q], _R_co, _C_co],
        obj: _T,
        owner: Optional[type] = None,
        /,
    ) -> CachedFunction[_Q, _R_co, _C_co]: ...


class _Token:
    """Stands for one live instance in method keys (identity hash/eq)."""

    __slots__ = ("__weakref__",)

    def __repr__(self) -> str:
        return f"<instance token {id(self):#x}>"


class _InstanceTokens:
    """id(instance) -> (token, weakref); entries vanish when the instance dies."""

    __slots__ = ("_tokens", "_lock")

    def __init__(self) -> None:
        self._tokens: dict[int, tuple[_Token, weakref.ref[Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, obj: Any) -> Any:
        entry = self._tokens.get(id(obj))
        if entry is not None and entry[1]() is obj:
            return entry[0]
        return self._new(obj)

    def _new(self, obj: Any) -> Any:
        tokens = self._tokens
        ident = id(obj)

        def forget(ref: weakref.ref[Any]) -> None:
            cur = tokens.get(ident)
            if cur is not None and cur[1] is ref:
                del tokens[ident]

        with self._lock:
            entry = tokens.get(ident)
            if entry is not None and entry[1]() is obj:
                return entry[0]
            try:
                ref = weakref.ref(obj, forget)
            except TypeError:
                return obj  # not weakly referenceable: key on the object itself
            token = _Token()
            tokens[ident] = (token, ref)
            return token

    def __len__(self) -> int:
        return len(self._tokens)


class _Flight:
    """One computation in progress, shared by every caller of its key."""

    __slots__ = ("future", "owner", "task", "lease")

    def __init__(self, owner: int) -> None:
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.owner = owner
        self.task: Optional[asyncio.Task[Any]] = None
        self.lease: Optional[int] = None  # the cache's lease, once the computation took it


def _joinable(flight: Optional[_Flight], lease_valid: Optional[_Call]) -> bool:
    """Whether a caller may share this computation: not once a write made its
    result stale (a caller that arrives after a write must not get a value
    computed before it)."""
    if flight is None:
        return False
    return flight.lease is None or lease_valid is None or bool(lease_valid(flight.lease))


def _retrieve(fut: Any) -> None:
    """Mark a future's exception as retrieved (no "never retrieved" warning)."""
    if not fut.cancelled():
        fut.exception()


def _plain_function(func: Callable[..., Any]) -> bool:
    """Defined outside any class body, so never bound as a method."""
    parts = getattr(func, "__qualname__", "").split(".")
    return len(parts) < 2 or parts[-2] == "<locals>"


def _looks_like_method(func: Callable[..., Any]) -> bool:
    """Defined in a class body with a first parameter named self or cls (read through
    ``functools.wraps`` wrappers); a bound method is a plain function: its self is given."""
    if inspect.ismethod(func) or _plain_function(func):
        return False
    try:
        func = inspect.unwrap(func)
    except ValueError:  # a cycle of __wrapped__
        pass
    if inspect.ismethod(func):  # a bound method under a wraps() decorator
        return False
    code = getattr(func, "__code__", None)
    return code is not None and code.co_argcount >= 1 and code.co_varnames[0] in ("self", "cls")


def _not_a_cache(cache: Any) -> str:
    """Why ``cache`` cannot be the cache of ``cached``, with the forms that work."""
    name = type(cache).__name__
    if isinstance(cache, type):
        return (
            f"cached() needs a cache instance, not the class {cache.__name__}: "
            f"write @cached({cache.__name__}(maxsize=...)); {FORMS}"
        )
    if isinstance(cache, int) and not isinstance(cache, bool):
        return (
            f"cached({cache!r}): the first argument is the cache to use, not its size: "
            f"write @cached(maxsize={cache!r}); {FORMS}"
        )
    lacks = ", ".join(f"{m}()" for m in CACHE_METHODS if not callable(getattr(cache, m, None)))
    return (
        f"cached() needs a cache with get(), peek(), set() and clear(); "
        f"{name} has no {lacks}: {FORMS}"
    )


def _is_cache(obj: Any) -> bool:
    return not isinstance(obj, type) and all(callable(getattr(obj, m, None)) for m in CACHE_METHODS)


@overload
def cached(func: Callable[_P, _R], /) -> CachedFunction[_P, _R, PyLruCache[Any, Any]]: ...


@overload
def cached(
    cache: _C,
    key: Optional[Callable[..., Any]] = None,
    *,
    method: Optional[bool] = None,
) -> Callable[[Callable[_P, _R]], CachedFunction[_P, _R, _C]]: ...


@overload
def cached(
    cache: None = None,
    key: Optional[Callable[..., Any]] = None,
    *,
    method: Optional[bool] = None,
    maxsize: Optional[int] = ...,
    ttl: Optional[float] = ...,
    max_bytes: Optional[int] = ...,
    policy: str = ...,
) -> Callable[[Callable[_P, _R]], CachedFunction[_P, _R, PyLruCache[Any, Any]]]: ...


def cached(
    cache: Any = None,
    key: Optional[Callable[..., Any]] = None,
    *,
    method: Optional[bool] = None,
    maxsize: Any = UNSET,
    ttl: Any = UNSET,
    max_bytes: Any = UNSET,
    policy: Any = UNSET,
) -> Any:
    """Memoize a sync or async function or method (see the module docstring).

    ``@cached`` and ``@cached()`` use a new ``LruCache()``;
    ``@cached(maxsize=..., ttl=..., max_bytes=..., policy=...)`` a new
    ``LruCache`` with those settings; ``@cached(cache)`` the cache given (any
    cache of this package, or an object with ``get``, ``peek``, ``set`` and
    ``clear`` of the same meaning). ``key`` builds the cache key from the
    call's arguments; ``method`` overrides the detection of methods.
    """
    settings = {
        name: value
        for name, value in (
            ("maxsize", maxsize),
            ("ttl", ttl),
            ("max_bytes", max_bytes),
            ("policy", policy),
        )
        if value is not UNSET
    }
    func: Any = None
    if cache is not None and not _is_cache(cache):
        if callable(cache) and not isinstance(cache, type):
            func, cache = cache, None  # @cached, without parentheses
        else:
            raise TypeError(_not_a_cache(cache))
    elif cache is not None and settings:
        raise TypeError(
            f"cached() takes a cache or the settings of a new one, not both "
            f"(got a {type(cache).__name__} and {', '.join(f'{k}=' for k in settings)}): "
            f"write @cached({', '.join(f'{k}=...' for k in settings)}) for a new LruCache, "
            f"or give those settings to the cache you pass"
        )
    if key is not None and not callable(key):
        raise TypeError(f"key must be callable or None, not {type(key).__name__}")
    if cache is None:
        cache = LruCache(**settings)

    def decorator(func: Callable[_P, _R]) -> CachedFunction[_P, _R, Any]:
        if not callable(func):
            raise TypeError(
                f"cached decorates a function or method, not {type(func).__name__!r}; {FORMS}"
            )
        is_method = _looks_like_method(func) if method is None else bool(method)
        if inspect.iscoroutinefunction(func):
            wrapper = _async_wrapper(func, cache, key, is_method)
        else:
            wrapper = _sync_wrapper(func, cache, key, is_method)
        functools.update_wrapper(wrapper, func)
        wrapper.cache = cache  # type: ignore[attr-defined]  # attributes of the wrapper
        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]  # attributes of the wrapper
        return wrapper  # type: ignore[return-value]  # func's signature, and the attributes above

    return decorator if func is None else decorator(func)


_Call = Callable[..., Any]


def _leases(cache: Any) -> Optional[tuple[_Call, _Call, _Call]]:
    """(lease, fill, drop_lease) of ``cache``, or None for a cache without leases."""
    lease, fill, drop = (getattr(cache, n, None) for n in ("lease", "fill", "drop_lease"))
    if callable(lease) and callable(fill) and callable(drop):
        return lease, fill, drop
    return None


def _key_builders(
    key: Optional[Callable[..., Any]], is_method: bool
) -> tuple[Callable[..., Any], Optional[_InstanceTokens]]:
    """(build(args, kwargs) -> key, instance tokens or None) for the miss path."""
    tokens = _InstanceTokens() if is_method else None
    if not is_method:
        if key is None:
            return make_key, None
        return (lambda args, kwargs: key(*args, **kwargs)), None
    assert tokens is not None
    if key is None:

        def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if kwargs:
                return (tokens(args[0]), *args[1:], KWARGS_MARK, *sorted(kwargs.items()))
            return (tokens(args[0]), *args[1:])
    else:

        def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return (tokens(args[0]), key(*args[1:], **kwargs))

    return build, tokens


def _sync_wrapper(
    func: Callable[..., Any], cache: Any, key: Optional[Callable[..., Any]], is_method: bool
) -> Callable[..., Any]:
    get, peek, store = cache.get, cache.peek, cache.set
    leases = _leases(cache)
    lease_valid = getattr(cache, "lease_valid", None) if leases else None
    lock = threading.RLock()  # RLock: a key's __eq__ may call the function again
    inflight: dict[Any, _Flight] = {}
    build, tokens = _key_builders(key, is_method)
    get_ident = threading.get_ident

    def compute(k: Any, flight: _Flight, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call the function and store its result (under a lease, when the cache has them)."""
        if leases is None:
            value = func(*args, **kwargs)
            store(k, value)
            return value
        lease, fill, drop_lease = leases
        token = flight.lease = lease(k)
        try:
            value = func(*args, **kwargs)
        except BaseException:
            drop_lease(token)
            raise
        return fill(k, value, token)  # not stored if k was written or invalidated meanwhile

    def miss(k: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        me = get_ident()
        with lock:
            flight = inflight.get(k)
            leader = not _joinable(flight, lease_valid)
            if leader:  # none, or one whose result a write made stale
                flight = inflight[k] = _Flight(me)
        assert flight is not None
        if not leader:
            if flight.owner == me:  # recursion with the same key
                return func(*args, **kwargs)
            return flight.future.result()
        try:
            value = peek(k, MISSING)  # someone may have stored it since our miss
            if value is MISSING:
                value = compute(k, flight, args, kwargs)
        except BaseException as exc:
            with lock:
                if inflight.get(k) is flight:
                    del inflight[k]
            flight.future.set_exception(exc)
            raise
        with lock:
            if inflight.get(k) is flight:
                del inflight[k]
        flight.future.set_result(value)
        return value

    # The hit paths are written out in full: one key build, one get, no lock.
    if is_method and key is None:
        assert tokens is not None
        tok_get = tokens._tokens.get
        mark = KWARGS_MARK

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                entry = tok_get(id(args[0]))
            except IndexError:  # self by keyword, or missing: uncached, as func answers
                return func(**kwargs)
            if entry is not None and entry[1]() is args[0]:
                token = entry[0]
            else:
                token = tokens(args[0])
            if kwargs:
                k: Any = (token, *args[1:], mark, *sorted(kwargs.items()))
            else:
                k = (token, *args[1:])
            value = get(k, MISSING)
            if value is MISSING:
                return miss(k, args, kwargs)
            return value
    elif is_method:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not args:  # self by keyword, or missing: uncached, as func answers
                return func(**kwargs)
            k = build(args, kwargs)
            value = get(k, MISSING)
            if value is MISSING:
                return miss(k, args, kwargs)
            return value
    elif key is not None:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = key(*args, **kwargs)
            value = get(k, MISSING)
            if value is MISSING:
                return miss(k, args, kwargs)
            return value
    else:
        # One key build and one lookup, in C over a CLruCache.
        wrapper = _fastcall.cached_call(cache, miss)

    wrapper._inflight = inflight  # type: ignore[attr-defined]  # for tests
    wrapper._instance_tokens = tokens  # type: ignore[attr-defined]  # for tests
    return wrapper


def _async_wrapper(
    func: Callable[..., Any], cache: Any, key: Optional[Callable[..., Any]], is_method: bool
) -> Callable[..., Any]:
    get, peek, store = cache.get, cache.peek, cache.set
    leases = _leases(cache)
    lease_valid = getattr(cache, "lease_valid", None) if leases else None
    lock = threading.RLock()
    inflight: dict[Any, _Flight] = {}
    build, tokens = _key_builders(key, is_method)
    computing: contextvars.ContextVar[frozenset[_Flight]] = contextvars.ContextVar(
        "memcache_ext.cached: the flights this task and its ancestors compute",
        default=frozenset(),
    )

    async def call_and_store(
        k: Any, flight: _Flight, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Await the function and store its result (under a lease, when the cache has them)."""
        if leases is None:
            value = await func(*args, **kwargs)
            store(k, value)
            return value
        lease, fill, drop_lease = leases
        token = flight.lease = lease(k)
        try:
            value = await func(*args, **kwargs)
        except BaseException:  # CancelledError too
            drop_lease(token)
            raise
        return fill(k, value, token)  # not stored if k was written or invalidated meanwhile

    def finish(k: Any, flight: _Flight) -> None:
        with lock:
            if inflight.get(k) is flight:
                del inflight[k]

    async def compute(
        k: Any, flight: _Flight, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # Seen by the tasks this computation starts (a task copies its context): a call
        # that meets this flight from one of them is re-entry, computed directly, as in
        # sync. The flight, not the key: a task that outlives it joins the next one.
        computing.set(computing.get() | {flight})
        try:
            value = peek(k, MISSING)
            if value is MISSING:
                value = await call_and_store(k, flight, args, kwargs)
        except asyncio.CancelledError:
            finish(k, flight)
            flight.future.cancel()
            raise
        except BaseException as exc:
            finish(k, flight)
            flight.future.set_exception(exc)
            raise
        finish(k, flight)
        flight.future.set_result(value)
        return value

    def settle(k: Any, flight: _Flight, task: asyncio.Task[Any]) -> None:
        """The computing task is done. Cancelled before its first step, its coroutine
        never ran (nor its clean-up): free the key, or every later call waits on it."""
        _retrieve(task)
        if not flight.future.done():
            finish(k, flight)
            flight.future.cancel()

    async def miss(k: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        with lock:
            flight = inflight.get(k)
            leader = not _joinable(flight, lease_valid)
            if leader:  # none, or one whose result a write made stale
                flight = inflight[k] = _Flight(0)
                # Created under the lock so a waiter never sees a flight
                # without its task; the task starts on the next loop turn.
                flight.task = loop.create_task(compute(k, flight, args, kwargs))
                flight.task.add_done_callback(functools.partial(settle, k, flight))
        assert flight is not None
        if leader:
            assert flight.task is not None
            return await asyncio.shield(flight.task)
        if flight in computing.get():
            return await func(*args, **kwargs)  # re-entry from within this computation
        waiter = asyncio.wrap_future(flight.future)
        waiter.add_done_callback(_retrieve)
        return await asyncio.shield(waiter)

    make = build if (is_method or key is not None) else make_key

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if is_method and not args:  # self by keyword, or missing: uncached, as func answers
            return await func(**kwargs)
        k = make(args, kwargs)
        value = get(k, MISSING)
        if value is MISSING:
            return await miss(k, args, kwargs)
        return value

    wrapper._inflight = inflight  # type: ignore[attr-defined]  # for tests
    wrapper._instance_tokens = tokens  # type: ignore[attr-defined]  # for tests
    return wrapper
