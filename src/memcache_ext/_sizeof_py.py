"""deep_sizeof: pure-Python implementation (the reference for the compiled twin).

``deep_sizeof(obj, *, budget=DEFAULT_BUDGET)`` returns the approximate number of
bytes that evicting ``obj`` from a cache would free: the ``sys.getsizeof`` of
every object reachable from it, each counted once, minus what the process shares
anyway (types, modules, functions, singletons, small ints, interned strings...).
``memcache_ext._sizeof_c`` implements exactly the same rules and returns the same
numbers; the tests check that they agree. The accounting rules are documented in
the README ("Measuring entries: deep_sizeof") and summarised here:

* Own size of an object: ``sys.getsizeof(obj)`` (so the GC header and, on 3.11+,
  the managed-dict pre-header are included). On CPython 3.11/3.12 an instance
  whose attributes live in the object's inline "values" array (no ``__dict__``
  materialized yet) also pays for that array, which ``sys.getsizeof`` omits.
  On CPython 3.13 the array is embedded in the object (still omitted by
  ``sys.getsizeof``): an instance pays ``inline_block_size(capacity)`` for it,
  its per-instance capacity (one slot under for a class's first instances),
  plus ``DICT_SHELL`` (``sys.getsizeof({})``)
  if a materialized ``__dict__`` borrows it; such a dict is not walked (its
  values are the inline ones). A dict that owns its values (the inline ones
  were invalidated) is reported by tp_traverse and walked like any dict.
* Children: dict keys and values (any dict, subclasses too), list/tuple items,
  set/frozenset members, and for every other object what its ``tp_traverse``
  reports (``gc.get_referents``): instance attributes (inline or ``__dict__``),
  ``__slots__``, deque items, a memoryview's exporter, ... The walk never reads
  ``obj.__dict__`` (which would materialize it on 3.11+) and never calls Python
  attribute access on the objects it measures.
* Skipped (charged 0, not followed): None, True, False, Ellipsis,
  NotImplemented, exact ints in -5..256, the empty str, 1-char latin-1 strs,
  interned strs, empty bytes and 1-byte bytes, the empty tuple, instances of
  ``type``/modules/functions/builtin functions/bound methods/code objects/
  method and attribute descriptors, and enum members.
* Budget: see ``_walk``. A container whose item count exceeds the allowance it
  was given is sampled (one position in each of ``m`` equal strata) and its
  sampled children are scaled by ``n / m``.
* Exceptions: the top-level object's ``__sizeof__`` errors propagate (as from
  ``sys.getsizeof``); a nested object whose ``__sizeof__`` raises any Exception
  (or returns a non-int, negative or huge value) is charged its basic size
  ``object.__sizeof__(o)`` plus its header instead. A MemoryError always
  propagates, wherever it is raised: a walk that lost a measurement cannot
  return a right size; so does a SystemError (the interpreter's own failure,
  which CPython 3.10 raises for some failed allocations in Python code).
* The result saturates at ``sys.maxsize`` (``PY_SSIZE_T_MAX``, what a cache can
  hold): user ``__sizeof__`` values up to MAX_OBJECT_SIZE each, and sampled
  weights that multiply along chains of sampled containers, could exceed it.
"""

from __future__ import annotations

import enum
import gc
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["deep_sizeof", "DEFAULT_BUDGET"]

#: Default node budget: how many child references (list items, dict entries,
#: referents) one call examines before it starts sampling. See the README.
DEFAULT_BUDGET = 10_000

#: A reported ``__sizeof__`` above this (256 TiB) is treated as an error.
MAX_OBJECT_SIZE = 2**48

#: An object with at most this many units (a small dict, a short list, an
#: instance's attributes) is expanded in full even when its allowance is spent,
#: as long as the walk has examined fewer than SMALL_CAP_FACTOR * budget units.
#: Sampling one attribute of four and multiplying by four is a poor estimator,
#: and along chains of small objects (linked nodes, graphs) the multiplied
#: weights would compound.
SMALL_UNITS = 8
SMALL_CAP_FACTOR = 8

_M64 = (1 << 64) - 1


_LCG_A = 6364136223846793005
_LCG_C = 1442695040888963407


def splitmix64(counter: int) -> int:
    """splitmix64 of ``counter``: the seed of the ``counter``-th sampled container
    (deterministic: both implementations compute the same)."""
    z = (counter * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def sample_positions(counter: int, n: int, m: int) -> list[int]:
    """The ``m`` positions in ``[0, n)`` sampled in the ``counter``-th sampled
    container (``1 <= m <= n``), in increasing order.

    One in each of ``m`` strata, the j-th ``[j * n // m, (j + 1) * n // m)``, at
    an offset drawn from a 64-bit LCG seeded with ``splitmix64(counter)``: its
    high 32 bits scaled to the stratum's length (``x * length >> 32``; modulo
    the length from 2**32 items on). Evenly spaced positions would all fall on
    one residue of the stride, so data with that period (``[key, value, key,
    value, ...]``) would be counted from one kind of item only.
    """
    s = splitmix64(counter)
    positions: list[int] = []
    append = positions.append
    start = 0
    for end in [j * n // m for j in range(1, m + 1)]:
        s = (s * _LCG_A + _LCG_C) & _M64
        length = end - start
        if length <= 1:
            append(start)
        elif length <= 0xFFFFFFFF:
            append(start + ((s >> 32) * length >> 32))
        else:
            append(start + (s >> 32) % length)
        start = end
    return positions


_PTR = 8 if sys.maxsize > 2**32 else 4

# --- calibration of what sys.getsizeof adds to __sizeof__ -------------------
# GC header (all GC types) and, on 3.11+, the 2-pointer pre-header of types
# with a managed dict (3.12+: or managed weakref list). Measured, not assumed.
TPFLAGS_HAVE_GC = 1 << 14
TPFLAGS_MANAGED_DICT = (1 << 4) if sys.version_info >= (3, 11) else 0
TPFLAGS_PREHEADER = TPFLAGS_MANAGED_DICT | ((1 << 3) if sys.version_info >= (3, 12) else 0)

_type_flags: Callable[[type], int] = type.__dict__["__flags__"].__get__

GC_HEAD = sys.getsizeof([]) - [].__sizeof__()


class _Probe:
    pass


_probe = _Probe()
PREHEADER = (sys.getsizeof(_probe) - _probe.__sizeof__() - GC_HEAD) if TPFLAGS_PREHEADER else 0
del _probe

#: On 3.11 and 3.12 the inline attribute values of a managed-dict instance are a
#: separate allocation that sys.getsizeof does not report.
INLINE_VALUES = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info < (3, 13)

#: CPython 3.13 (Py_TPFLAGS_INLINE_VALUES, 1 << 2): the attribute values are
#: embedded in the object's own allocation, right after ``tp_basicsize``, and
#: sys.getsizeof still omits them (python/cpython#128762). Their capacity is
#: per instance and is not the attribute count: a class's shared keys start
#: with room for 30 and shrink by one per instance created, so early instances
#: carry up to ~270 bytes of slots. (The shrink happens after the allocation is
#: sized: until the keys settle at attribute count + 1, each instance holds one
#: slot more than its capacity byte says, which the walk cannot see: 8 bytes,
#: or 16, under per such instance; exact in steady state.) A materialized
#: ``__dict__`` (``vars(obj)``) is then only a dict header that borrows those values: it allocates
#: ``sys.getsizeof({})`` (64) bytes, although ``sys.getsizeof`` of it reports
#: the borrowed values as well, and the object's tp_traverse does not report it
#: (it visits the inline values as long as they are valid). Both are read in
#: place (read-only): the capacity byte of the values block and the managed
#: dict pointer of the pre-header. Enabled only if a probe matches the layout.
#: Not enabled on 3.14+, whose layout has not been checked.
TPFLAGS_INLINE_VALUES = (
    (1 << 2) if (sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 13)) else 0
)

#: What a materialized dict that borrows inline values allocates: its header.
DICT_SHELL = sys.getsizeof({})

_type_basicsize: Callable[[type], int] = type.__dict__["__basicsize__"].__get__


def header_size(tp: type) -> int:
    """What ``sys.getsizeof`` adds to ``__sizeof__`` for instances of ``tp``."""
    flags = _type_flags(tp)
    return (GC_HEAD if flags & TPFLAGS_HAVE_GC else 0) + (
        PREHEADER if flags & TPFLAGS_PREHEADER else 0
    )


def inline_values_size(k: int) -> int:
    """Estimated size of the inline values array holding ``k`` attributes.

    CPython allocates ``prefix + size * sizeof(PyObject*)`` bytes, where
    ``size`` is the class's shared-keys size (in steady state the number of
    attribute names + 1) and ``prefix`` is ``size + 2`` rounded up to a pointer.
    """
    n = k + 1
    return ((n + 2 + _PTR - 1) // _PTR) * _PTR + n * _PTR


def inline_block_size(capacity: int) -> int:
    """Bytes of a 3.13 inline values block with ``capacity`` slots
    (``_PyInlineValuesSize``): a 4-byte header padded to a pointer, the slots,
    and the insertion-order bytes rounded up to a pointer."""
    return ((capacity + _PTR - 1) // _PTR) * _PTR + (capacity + 1) * _PTR


def _make_inline_extra() -> Callable[[Any, type], int] | None:
    """On 3.13: ``inline_extra(o, t)``, what an instance of a type with inline
    values allocates beyond ``sys.getsizeof(o)``: its values block, plus the
    dict header of a materialized ``__dict__`` that still borrows the block."""
    if not TPFLAGS_INLINE_VALUES:
        return None
    try:
        import ctypes

        c_uint8 = ctypes.c_uint8
        c_void_p = ctypes.c_void_p
        dict_slot = 3 * _PTR  # MANAGED_DICT_OFFSET: the pre-header's dict pointer

        def inline_extra(o: Any, t: type) -> int:
            base = id(o) + _type_basicsize(t)
            size = inline_block_size(c_uint8.from_address(base).value)
            # valid (byte 3): the values are live; a dict, if any, borrows them
            borrowed = c_void_p.from_address(id(o) - dict_slot).value
            if c_uint8.from_address(base + 3).value and borrowed:
                size += DICT_SHELL
            return size

        class _Inline:
            def __init__(self) -> None:
                self.a = 1.5
                self.b = 2.5

        probes = [_Inline() for _ in range(4)]
        fresh = _Inline()
        caps = [c_uint8.from_address(id(p) + _type_basicsize(_Inline)).value for p in probes]
        ok = (
            _type_flags(_Inline) & TPFLAGS_INLINE_VALUES
            and all(2 <= c <= 30 for c in caps)
            and c_uint8.from_address(id(fresh) + _type_basicsize(_Inline) + 1).value == 2  # size
            and not c_void_p.from_address(id(fresh) - dict_slot).value
        )
        if ok:
            plain = inline_extra(fresh, _Inline)
            d = vars(fresh)
            ok = (
                c_void_p.from_address(id(fresh) - dict_slot).value == id(d)
                and inline_extra(fresh, _Inline) == plain + DICT_SHELL
                and not any(type(r) is dict for r in gc.get_referents(fresh))
            )
        if ok:
            return inline_extra
    except Exception:  # noqa: BLE001, S110 - any surprise in the probe: no inline-values layout
        pass  # pragma: no cover
    return None  # pragma: no cover


inline_extra = _make_inline_extra()
if inline_extra is None:
    TPFLAGS_INLINE_VALUES = 0


def _make_has_values() -> Callable[[Any], bool] | None:
    """On 3.11/3.12: ``has_values(o)``, whether a managed-dict instance still
    holds its attributes in an inline values array (read-only: the pre-header's
    values pointer, 3.11, or its tagged dict-or-values word, 3.12). A subclass
    of list/dict/set... never gets one, and an instance whose ``__dict__`` was
    materialized has none left. Enabled only if a probe matches the layout."""
    if not INLINE_VALUES:
        return None
    try:
        import ctypes

        if sys.version_info < (3, 12):

            def has_values(o: Any) -> bool:
                return ctypes.c_void_p.from_address(id(o) - 4 * _PTR).value is not None

        else:

            def has_values(o: Any) -> bool:
                return bool(ctypes.c_size_t.from_address(id(o) - 3 * _PTR).value & 1)

        class _V:
            def __init__(self) -> None:
                self.a = 1.5
                self.b: dict[str, int] = {}

        class _L(list):  # type: ignore[type-arg]
            pass

        fresh, mat, sub = _V(), _V(), _L([1.5])
        vars(mat)
        if has_values(fresh) and not has_values(mat) and not has_values(sub):
            return has_values
    except Exception:  # noqa: BLE001, S110 - any surprise in the probe: the referent heuristic
        pass  # pragma: no cover
    return None  # pragma: no cover


has_values = _make_has_values()
#: read by _sizeof_c: both twins use the values pointer only when this probe passed
HAS_VALUES_PROBED = has_values is not None


# --- interned strings --------------------------------------------------------


def _make_is_interned() -> Callable[[str], bool]:
    fn = getattr(sys, "_is_interned", None)
    if fn is not None:  # CPython 3.13+
        return fn  # type: ignore[no-any-return]
    if sys.implementation.name == "cpython":
        try:
            import ctypes

            # PyASCIIObject: ob_refcnt, ob_type, length, hash, then the state
            # bitfield whose two low bits are `interned`. Read-only.
            offset = 4 * _PTR
            c_uint8 = ctypes.c_uint8

            def _is_interned(s: str) -> bool:
                return bool(c_uint8.from_address(id(s) + offset).value & 3)

            fresh = "".join(["memcache_ext", "_probe_", "not_interned"])
            mine = sys.intern("".join(["memcache_ext", "_probe_", "interned"]))
            if (
                not _is_interned(fresh)
                and _is_interned(mine)
                and _is_interned("deep_sizeof")
                and not _is_interned(str(10**20))
            ):
                return _is_interned
        except Exception:  # noqa: BLE001, S110 - any surprise in the probe: fall back below
            pass  # pragma: no cover

    def _approx(s: str) -> bool:  # pragma: no cover - non-CPython only
        # No way to ask: identifier-like strings are what compilers intern.
        return s.isidentifier() and s.isascii() and len(s) <= 40

    return _approx


is_interned = _make_is_interned()

# --- what is shared by the whole process -------------------------------------

SHARED_TYPES: tuple[type, ...] = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
    types.ClassMethodDescriptorType,
)
ENUM_META: type = enum.EnumMeta
_SINGLETONS = (None, True, False, Ellipsis, NotImplemented)
LEAF_TYPES = frozenset((int, float, str, bytes, complex))


def is_shared(o: Any, t: type) -> bool:
    """True if ``o`` (of exact type ``t``) is shared by the process: charged 0."""
    if t is int:
        return bool(-5 <= o <= 256)
    if t is str:
        n = len(o)
        return n == 0 or (n == 1 and ord(o) < 256) or is_interned(o)
    if t is bytes:
        return len(o) < 2
    if t is tuple:
        return not o
    if t is float or t is list or t is dict:
        return False
    for s in _SINGLETONS:
        if o is s:
            return True
    return issubclass(t, SHARED_TYPES) or issubclass(type(t), ENUM_META)


_object_sizeof = object.__sizeof__
_getsizeof = sys.getsizeof
_get_referents = gc.get_referents
_CONTAINERS = (list, tuple, dict, set, frozenset)


def check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int, not {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    return min(int(budget), sys.maxsize)


def _entries(d: dict[Any, Any]) -> list[Any]:
    """``[k0, v0, k1, v1, ...]`` of any dict (subclasses too: no user code
    runs), read in two C calls."""
    keys = list(dict.keys(d))
    values = list(dict.values(d))
    n = len(keys)
    if len(values) != n:  # a finalizer changed d between the two reads
        n = min(n, len(values))
        del keys[n:], values[n:]
    out: list[Any] = [None] * (2 * n)
    out[::2] = keys
    out[1::2] = values
    return out


def _walk(root: Any, budget: int) -> tuple[int, int, int]:
    """Return ``(nbytes, units, sampled)`` for ``root``.

    ``units`` is the number of child references examined (the budget counts
    these) and ``sampled`` the number of containers that were sampled.

    Each stack entry carries a weight ``w`` (1.0 unless some ancestor was
    sampled) and an allowance ``a`` (how many child references it and its
    descendants may examine). Expanding an object with ``n`` units (dict
    entries, items, referents):

    * ``n <= a``: every unit is examined; the ``a - n`` left are split evenly
      (floor) between the children pushed for later expansion.
    * ``n <= SMALL_UNITS`` and fewer than ``SMALL_CAP_FACTOR * budget`` units
      examined so far (counting these): every unit is examined, the children
      get allowance 0.
    * past that cap, a small object reached with a weight other than 1 is
      charged its own size only (not expanded): weights multiplied along
      chains of small objects (linked nodes, graphs) would explode.
    * otherwise ``m = max(a, 1)`` units are examined, one in each of ``m``
      equal strata at a pseudo-random offset (``sample_positions``), with
      weight ``w * n / m``; an object met twice or more in
      the sample, or (lists, tuples, referents) identical to the item next to
      its position, is charged with weight ``w`` (it is repeated, like
      ``[x] * k``, not one of ``n / m`` distinct objects). The children of a
      sampled container get allowance 0.
    """
    t = type(root)
    if is_shared(root, t):
        return 0, 0, 0
    if t in LEAF_TYPES:
        return _getsizeof(root), 0, 0

    seen = {id(root)}
    stack: list[tuple[Any, float, int]] = [(root, 1.0, budget)]
    hard_cap = (
        budget * SMALL_CAP_FACTOR if budget <= sys.maxsize // SMALL_CAP_FACTOR else sys.maxsize
    )
    total_i = 0
    total_f = 0.0
    units = 0
    sampled = 0
    is_root = True
    while stack:
        o, w, a = stack.pop()
        t = type(o)
        refs = None
        # ---- own size
        if t in _CONTAINERS:
            size = _getsizeof(o)
        else:
            try:
                size = _getsizeof(o)
                if size > MAX_OBJECT_SIZE:
                    raise ValueError(f"__sizeof__() returned an implausible size: {size}")
            except (MemoryError, SystemError):
                raise
            except Exception:
                if is_root:
                    raise
                # object.__sizeof__ is basicsize + Py_SIZE * itemsize, negative
                # for a negative int subclass (3.11): count |Py_SIZE| items
                basic = _type_basicsize(t)
                size = basic + abs(_object_sizeof(o) - basic) + header_size(t)
            if INLINE_VALUES and _type_flags(t) & TPFLAGS_MANAGED_DICT:
                refs = _get_referents(o)
                k = 0
                materialized = False
                for r in refs:
                    if has_values is None and type(r) is dict:
                        materialized = True
                        break
                    if r is not t:
                        k += 1
                if has_values is not None:
                    materialized = not has_values(o)
                if not materialized:
                    size += inline_values_size(k)
            elif TPFLAGS_INLINE_VALUES and _type_flags(t) & TPFLAGS_INLINE_VALUES:
                size += inline_extra(o, t)  # type: ignore[misc]
        is_root = False
        if w == 1.0:
            total_i += size
        else:
            total_f += size * w

        # ---- units: dict entries (key, value) or single children. A collection
        # can run a finalizer between any two bytecodes, and a finalizer can
        # change these containers: they are read in single C calls (list(),
        # dict views), never iterated step by step (which would raise).
        pairs = t is dict
        if t is list or t is tuple:
            seq = o
            n = len(o)
        elif pairs or t is set or t is frozenset:
            seq = None
            n = len(o)
        else:
            if refs is None:
                refs = _get_referents(o)
            if issubclass(t, dict):
                seq = _entries(o)
                seq.extend(refs)
            else:
                seq = refs
            n = len(seq)
        if n == 0:
            continue
        if n > a and n <= SMALL_UNITS and w != 1.0 and units + n > hard_cap:
            # past the cap, a small object already inside a sampled part is not
            # expanded: multiplying weights along chains would explode
            continue

        if n <= a or (n <= SMALL_UNITS and units + n <= hard_cap):
            used = n
            if seq is not None:
                children = list(seq) if seq is o else seq
            elif pairs:
                children = _entries(o)
            else:
                children = list(o)
            weights = None
            wc = w
        else:
            sampled += 1
            m = a if a > 0 else 1
            used = m
            positions = sample_positions(sampled, n, m)
            repeated: set[int] = set()
            if seq is not None:
                children = []
                for p in positions:
                    try:
                        c = seq[p]
                        # an item equal (identical) to its neighbour is a
                        # repeated object, like [x] * k: charge it once, not
                        # n / m times
                        nb = seq[p + 1 if p + 1 < n else p - 1]
                    except IndexError:  # a finalizer shrank the list meanwhile
                        break
                    children.append(c)
                    if nb is c:
                        repeated.add(id(c))
            elif pairs:
                ents = _entries(o)
                children = [
                    x
                    for p in positions
                    if 2 * p + 1 < len(ents)
                    for x in (ents[2 * p], ents[2 * p + 1])
                ]
            else:
                members = list(o)
                children = [members[p] for p in positions if p < len(members)]
            counts: dict[int, int] = {}
            for c in children:
                counts[id(c)] = counts.get(id(c), 0) + 1
            for ic in repeated:
                counts[ic] = 2
            weights = counts
            wc = w * n / m
        units += used

        pushed: list[Any] = []
        pushed_w: list[float] = []
        for c in children:
            ct = type(c)
            if is_shared(c, ct):
                continue
            ic = id(c)
            if ic in seen:
                continue
            seen.add(ic)
            cw = wc if weights is None or weights[ic] < 2 else w
            if ct in LEAF_TYPES:
                size = _getsizeof(c)
                if cw == 1.0:
                    total_i += size
                else:
                    total_f += size * cw
            else:
                pushed.append(c)
                pushed_w.append(cw)
        if pushed:
            rest = a - used
            ca = rest // len(pushed) if rest > 0 else 0
            for c, cw in zip(pushed, pushed_w, strict=True):
                stack.append((c, cw, ca))
    return _total(total_i, total_f), units, sampled


_MAXSIZE_F = float(sys.maxsize)


def _total(exact: int, weighted: float) -> int:
    """The walk's result: ``exact`` plus ``weighted`` rounded half up, at most
    ``sys.maxsize`` (an infinite or NaN weighted part gives ``sys.maxsize``)."""
    rest = weighted + 0.5
    if not rest < _MAXSIZE_F:
        return sys.maxsize
    return min(exact + int(rest), sys.maxsize)


def deep_sizeof(obj: Any, *, budget: int = DEFAULT_BUDGET) -> int:
    """Approximate bytes that dropping ``obj`` (and what only it holds) frees.

    Walks the object graph with ``sys.getsizeof`` semantics, counting each
    object once and skipping objects the process shares (see the module
    docstring). Past ``budget`` examined child references it samples and
    extrapolates, so the cost is bounded whatever the size of ``obj``.
    """
    return _walk(obj, check_budget(budget))[0]


def _deep_sizeof_stats(obj: Any, *, budget: int = DEFAULT_BUDGET) -> tuple[int, int, int]:
    """``(nbytes, units_examined, containers_sampled)``, for tests and tuning."""
    return _walk(obj, check_budget(budget))
