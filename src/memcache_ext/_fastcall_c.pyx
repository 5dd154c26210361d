"""Compiled call paths over a CLruCache (twins: ``_fastcall_py``).

Small callables whose hit path is a key build and a lookup in C, with no
Python frame: ``CachedCall`` for ``cached`` on a plain function, ``GetOr``
for a tier's ``get``. A miss goes to the Python callback given at
construction. They take calls through vectorcall (PEP 590: no argument tuple
on the common call) and through tp_call, both set by hand on the types
(Cython's ``__call__`` would build a kwargs dict on every call).

The key rule is ``memcache_ext.keys.make_key``: ``KWARGS_MARK`` and
``FAST_TYPES`` are read from there.
"""

cimport cython
from cpython.object cimport PyObject

from memcache_ext._core_c cimport CLruCache
from memcache_ext.keys import FAST_TYPES, KWARGS_MARK

cdef extern from "Python.h":
    ctypedef PyObject* (*ternaryfunc)(PyObject*, PyObject*, PyObject*)
    ctypedef PyObject* (*vectorcallfunc)(PyObject*, PyObject**, size_t, PyObject*)
    ctypedef struct CallSlots "PyTypeObject":
        ternaryfunc tp_call
        Py_ssize_t tp_vectorcall_offset
        unsigned long tp_flags
    unsigned long Py_TPFLAGS_HAVE_VECTORCALL
    Py_ssize_t PyVectorcall_NARGS(size_t)
    object PyMethod_New(object, object)
    int Py_EnterRecursiveCall(const char*) except -1
    void Py_LeaveRecursiveCall()

cdef object _MISSING = object()
cdef frozenset _FAST = FAST_TYPES
cdef object _MARK = KWARGS_MARK


cdef tuple _positional(PyObject** args, size_t nargsf):
    """A vectorcall's positional arguments as a tuple."""
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf), i
    return tuple([<object>args[i] for i in range(n)])


cdef dict _keywords(PyObject** args, size_t nargsf, PyObject* kwnames):
    """A vectorcall's keyword arguments as a dict, or None without any."""
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf), i
    if kwnames == NULL or len(<tuple>kwnames) == 0:
        return None
    cdef dict kw = {}
    for i in range(len(<tuple>kwnames)):
        kw[(<tuple>kwnames)[i]] = <object>args[n + i]
    return kw


cdef inline CLruCache _ready(CLruCache cache, str name):
    if cache is None:   # made with __new__ and never initialized
        raise TypeError(f"{name} object is not initialized")
    return cache


@cython.final
cdef class CachedCall:
    """CachedCall(cache, miss): ``f(*args, **kwargs)`` over a CLruCache.

    Builds the default key (``keys.make_key``) and returns the cached value,
    or ``miss(key, args, kwargs)`` on a miss.
    """

    cdef vectorcallfunc _vectorcall
    cdef CLruCache _cache
    cdef object _miss
    cdef dict __dict__

    def __cinit__(self, *args, **kwargs):
        self._vectorcall = <vectorcallfunc>_cached_vectorcall

    def __init__(self, CLruCache cache not None, miss):
        if not callable(miss):
            raise TypeError(f"miss must be callable, not {type(miss).__name__}")
        self._cache = cache
        self._miss = miss

    def __call__(self, *args, **kwargs):
        return _cached_call(self, args, kwargs or None)

    def __get__(self, obj, objtype):
        """Bind as a method, as the function it wraps (and functools.lru_cache) does."""
        return self if obj is None else PyMethod_New(self, obj)

    def __reduce__(self):
        """Pickled by reference, as a function is (``update_wrapper`` set the names)."""
        return self.__qualname__

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


cdef object _call_miss(object miss, object key, tuple args, dict kwargs):
    """A miss calls Python code from C: count it as a level of recursion, so that
    a deep recursive cached function raises RecursionError instead of
    overflowing the C stack."""
    Py_EnterRecursiveCall(" in a cached function")
    try:
        return miss(key, args, kwargs)
    finally:
        Py_LeaveRecursiveCall()


cdef object _cached_call(CachedCall self, tuple args, object kwargs):
    cdef object key
    cdef CLruCache cache = _ready(self._cache, "CachedCall")
    if kwargs:
        key = (*args, _MARK, *sorted(kwargs.items()))
    elif len(args) == 1 and type(args[0]) in _FAST:
        key = args[0]
    else:
        key = args
    cdef object value = cache._get(key, _MISSING)
    if value is _MISSING:
        return _call_miss(self._miss, key, args, {} if kwargs is None else kwargs)
    return value


cdef object _cached_tp_call(PyObject* o, PyObject* args, PyObject* kwargs):
    return _cached_call(<CachedCall>o, <tuple>args, None if kwargs == NULL else <object>kwargs)


cdef object _cached_vectorcall(PyObject* o, PyObject** args, size_t nargsf, PyObject* kwnames):
    """f(x) with one argument of a simple type: no tuple, no frame."""
    cdef CachedCall self
    cdef object arg, value
    if kwnames == NULL and PyVectorcall_NARGS(nargsf) == 1:
        self = <CachedCall>o
        arg = <object>args[0]
        if type(arg) in _FAST:
            value = _ready(self._cache, "CachedCall")._get(arg, _MISSING)
            if value is not _MISSING:
                return value
            return _call_miss(self._miss, arg, (arg,), {})
    # Straight to the call, not through type(self).__call__: one C level per
    # call, as the common path (a recursion reaches the same depth either way).
    return _cached_call(<CachedCall>o, _positional(args, nargsf),
                        _keywords(args, nargsf, kwnames))


@cython.final
cdef class GetOr:
    """GetOr(cache, fallback): ``get(key, default=None)`` over a CLruCache,
    calling ``fallback(key, default)`` only on a miss: a second tier's hit
    path without a Python frame."""

    cdef vectorcallfunc _vectorcall
    cdef CLruCache _cache
    cdef object _fallback
    cdef dict __dict__

    def __cinit__(self, *args, **kwargs):
        self._vectorcall = <vectorcallfunc>_get_or_vectorcall

    def __init__(self, CLruCache cache not None, fallback):
        if not callable(fallback):
            raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
        self._cache = cache
        self._fallback = fallback

    def __call__(self, key, default=None):
        return _get_or(self, key, default)


cdef object _get_or(GetOr self, object key, object default):
    cdef object value = _ready(self._cache, "GetOr")._get(key, _MISSING)
    if value is _MISSING:
        return self._fallback(key, default)
    return value


cdef object _get_or_tp_call(PyObject* o, PyObject* args, PyObject* kwargs):
    """The common call, get(key) or get(key, default), parsed by hand."""
    cdef tuple a = <tuple>args
    if kwargs == NULL and 1 <= len(a) <= 2:
        return _get_or(<GetOr>o, a[0], a[1] if len(a) == 2 else None)
    return GetOr.__call__(<GetOr>o, *a, **(<dict>kwargs if kwargs != NULL else {}))


cdef object _get_or_vectorcall(PyObject* o, PyObject** args, size_t nargsf, PyObject* kwnames):
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf)
    if kwnames == NULL and (n == 1 or n == 2):
        return _get_or(<GetOr>o, <object>args[0], <object>args[1] if n == 2 else None)
    cdef dict kw = _keywords(args, nargsf, kwnames)
    return GetOr.__call__(<GetOr>o, *_positional(args, nargsf), **({} if kw is None else kw))


cdef void _install_call_slots(type cls, object instance, vectorcallfunc* field,
                              ternaryfunc tp_call) noexcept:
    """tp_call, and vectorcall at the offset of ``field`` in ``instance``."""
    cdef CallSlots* slots = <CallSlots*>cls
    slots.tp_call = tp_call
    slots.tp_vectorcall_offset = <Py_ssize_t>(<char*>field - <char*><PyObject*>instance)
    slots.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL


cdef CachedCall _cc_probe = CachedCall.__new__(CachedCall)
_install_call_slots(CachedCall, _cc_probe, &_cc_probe._vectorcall, <ternaryfunc>_cached_tp_call)
cdef GetOr _go_probe = GetOr.__new__(GetOr)
_install_call_slots(GetOr, _go_probe, &_go_probe._vectorcall, <ternaryfunc>_get_or_tp_call)
_cc_probe = None
_go_probe = None
