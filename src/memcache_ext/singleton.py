"""SingletonMeta: one instance per class, created exactly once under any race.

Rules:

* Each class that uses the metaclass gets one instance; a subclass gets its
  own (instances are stored on each class's own ``__dict__``, never looked
  up through inheritance).
* Construction runs exactly once even when many threads call the class at
  the same moment: the first caller builds the instance under a lock that
  belongs to that class alone, so different classes never wait for each other
  and a constructor that creates *another* singleton does not deadlock.
* A constructor that calls its own class again (on the same thread) raises
  RuntimeError instead of recursing or deadlocking.
* Arguments on later calls: a call with no arguments, or with arguments equal
  to the first call's, returns the instance. Arguments are compared as the
  constructor binds them, defaults applied: ``B(1)`` and ``B(x=1)`` are the
  same call, and so are ``D()`` and ``D(None)`` when None is the default. A
  call with *different* arguments raises TypeError naming both calls:
  silently returning an instance configured differently from what the caller
  asked for hides bugs. The first call's arguments are kept (strongly) for that
  comparison until ``reset``.
* If the constructor raises, nothing is stored and the next call tries again.
* ``copy.copy`` and ``copy.deepcopy`` return the instance itself. Pickling
  stores the first call's arguments, not the instance's state: unpickling
  calls the class with them, so it gives that process's instance (built then
  if there is none; TypeError if it was built with other arguments). A class
  that defines its own copy or pickle methods keeps them.
* ``SingletonMeta.reset()`` forgets every instance; ``SingletonMeta.reset(cls)``
  or ``cls.reset()`` forgets one class's (not its subclasses'). Meant for
  tests; code already holding the old instance keeps it.

Two classes whose constructors create each other from two threads at once
can still deadlock (a genuine lock cycle); construct such pairs eagerly.
"""

from __future__ import annotations

import inspect
import reprlib
import threading
import weakref
from typing import TYPE_CHECKING, Any, Optional, overload

from ._constants import MISSING

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SingletonMeta"]

_INSTANCE = "_SingletonMeta__instance"
_ARGS = "_SingletonMeta__args"
_LOCK = "_SingletonMeta__lock"
_BUILDER = "_SingletonMeta__builder"
_SIGNATURE = "_SingletonMeta__signature"
_NO_SIGNATURE = object()
_PICKLE_HOOKS = (
    "__reduce__",
    "__reduce_ex__",
    "__getstate__",
    "__setstate__",
    "__getnewargs__",
    "__getnewargs_ex__",
)


def _signature(cls: type) -> Any:
    """The constructor's signature without ``self``/``cls``, or _NO_SIGNATURE (builtins)."""
    sig = cls.__dict__.get(_SIGNATURE)
    if sig is not None:
        return sig
    init: Any = getattr(cls, "__init__")  # noqa: B009 - mypy refuses cls.__init__
    new: Any = getattr(cls, "__new__")  # noqa: B009
    try:
        if init is not object.__init__:
            full = inspect.signature(init)
        elif new is not object.__new__:
            full = inspect.signature(new)
        else:
            full = inspect.Signature()  # object's: no arguments
            type.__setattr__(cls, _SIGNATURE, full)
            return full
        params = list(full.parameters.values())
        if params and params[0].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):  # self/cls; a wrapper's (*args, **kwargs) has none to drop
            params = params[1:]
        sig = full.replace(parameters=params)
    except (TypeError, ValueError):  # no signature to read: compare the calls as given
        sig = _NO_SIGNATURE
    type.__setattr__(cls, _SIGNATURE, sig)
    return sig


def _normalized(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """(args, kwargs) as the constructor binds them, defaults applied."""
    sig = _signature(cls)
    if sig is _NO_SIGNATURE:
        return args, kwargs
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}(): {exc}") from None
    bound.apply_defaults()
    return bound.args, bound.kwargs


def _call_repr(cls: type, call: Any) -> str:
    args, kwargs = call
    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = 40
    parts = [shown.repr(a) for a in args] + [f"{k}={shown.repr(v)}" for k, v in kwargs.items()]
    return f"{cls.__name__}({', '.join(parts)})"


def _reset(cls: Optional[type] = None) -> None:
    """Forget the instance of ``cls``, or of every singleton class when None."""
    if cls is None:
        with SingletonMeta._registry_lock:
            classes = list(SingletonMeta._classes)
        for c in classes:
            _reset(c)
        return
    if not isinstance(cls, SingletonMeta):
        raise TypeError(f"{cls!r} is not a class created by SingletonMeta")
    with _lock_of(cls):  # then the registry lock: the order __call__ takes them in
        for name in (_INSTANCE, _ARGS):
            if name in cls.__dict__:
                type.__delattr__(cls, name)
        with SingletonMeta._registry_lock:
            SingletonMeta._classes.discard(cls)


def _lock_of(cls: type) -> Any:
    lock = cls.__dict__.get(_LOCK)
    if lock is None:  # a class whose metaclass __init__ was bypassed
        with SingletonMeta._registry_lock:
            lock = cls.__dict__.get(_LOCK)
            if lock is None:
                lock = threading.RLock()
                type.__setattr__(cls, _LOCK, lock)
    return lock


def _itself(self: Any, memo: Any = None) -> Any:
    """``__copy__`` and ``__deepcopy__``: a copy of the singleton is the singleton."""
    return self


def _reduce(self: Any) -> tuple[Any, ...]:
    """``__reduce__``: unpickled by calling the class with the first call's arguments."""
    cls = type(self)
    if cls.__dict__.get(_INSTANCE, MISSING) is not self:
        raise TypeError(
            f"cannot pickle this {cls.__qualname__}: it is no longer its class's instance "
            f"(SingletonMeta.reset ran since it was made)"
        )
    args, kwargs = cls.__dict__[_ARGS]
    return _restore, (cls, args, kwargs)


def _restore(cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return cls(*args, **kwargs)


def _defines(cls: type, name: str) -> bool:
    """Whether ``cls`` or a base other than ``object`` defines ``name``."""
    return any(name in base.__dict__ for base in cls.__mro__[:-1])


class SingletonMeta(type):
    """Metaclass: ``class Config(metaclass=SingletonMeta)`` has one instance."""

    _registry_lock = threading.Lock()
    #: Classes that currently hold an instance (weakly: a class may go away).
    _classes: weakref.WeakSet[type] = weakref.WeakSet()

    def __init__(cls, name: str, bases: tuple[type, ...], ns: dict[str, Any], **kw: Any) -> None:
        super().__init__(name, bases, ns, **kw)
        type.__setattr__(cls, _LOCK, threading.RLock())
        for hook in ("__copy__", "__deepcopy__"):
            if not _defines(cls, hook):
                type.__setattr__(cls, hook, _itself)
        if not any(_defines(cls, hook) for hook in _PICKLE_HOOKS):
            type.__setattr__(cls, "__reduce__", _reduce)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        # Fast path: no lock once the instance exists.
        inst = cls.__dict__.get(_INSTANCE, MISSING)
        if inst is not MISSING and not args and not kwargs:
            return inst
        with _lock_of(cls):
            inst = cls.__dict__.get(_INSTANCE, MISSING)
            if inst is not MISSING:
                if args or kwargs:
                    cls._check_args(args, kwargs)
                return inst
            me = threading.get_ident()
            if cls.__dict__.get(_BUILDER) == me:
                raise RuntimeError(
                    f"{cls.__qualname__}() called again while it is being constructed"
                )
            call = _normalized(cls, args, kwargs)  # a bad call fails before the constructor runs
            type.__setattr__(cls, _BUILDER, me)
            try:
                inst = super().__call__(*args, **kwargs)
            finally:
                type.__delattr__(cls, _BUILDER)
            type.__setattr__(cls, _ARGS, call)
            type.__setattr__(cls, _INSTANCE, inst)
            with SingletonMeta._registry_lock:
                SingletonMeta._classes.add(cls)
        return inst

    def _check_args(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = cls.__dict__.get(_ARGS, ((), {}))
        this = _normalized(cls, args, kwargs)
        try:
            same = bool(first == this)
        except Exception as exc:
            raise TypeError(
                f"{cls.__qualname__} is a singleton and its arguments "
                f"cannot be compared with the first call's"
            ) from exc
        if not same:
            raise TypeError(
                f"{cls.__name__} is a singleton already created with different arguments: "
                f"{_call_repr(cls, first)}, and this call asks for {_call_repr(cls, this)}; "
                f"call it without arguments, or SingletonMeta.reset({cls.__name__}) first"
            )

    # Overloads: mypy refuses ``C.reset()`` when the first parameter has a default.
    @overload
    def reset(cls: Optional[SingletonMeta]) -> None: ...  # C.reset(), SingletonMeta.reset(C)

    @overload
    def reset(*no_class: Unpack[tuple[()]]) -> None: ...  # SingletonMeta.reset()

    def reset(cls: Optional[type] = None) -> None:
        """``SingletonMeta.reset()``: forget every instance; ``SingletonMeta.reset(C)`` or
        ``C.reset()``: forget class C's (not its subclasses'). A class that defines its
        own ``reset`` keeps it."""
        _reset(cls)

    def has_instance(cls) -> bool:
        """Whether this class's instance exists now."""
        return _INSTANCE in cls.__dict__
