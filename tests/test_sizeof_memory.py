"""deep_sizeof memory safety: regressions for what an AddressSanitizer build found.

* Use after free: the walk held borrowed pointers into the container it was
  expanding while it called ``sys.getsizeof`` on a child (a legacy str before
  3.12, a big int after): that call allocates, the allocation can start a
  collection, and a finalizer can empty the container and free its items.
* Out-of-bounds read: sampling a one-item list (a 100,000-deep ``[[[...]]]``
  reaches the node cap with weight 1) compared the item with ``items[-1]``.
* Totals that wrapped: user ``__sizeof__`` values add up past PY_SSIZE_T_MAX,
  and sampled weights multiply along chains of sampled containers.
* A type freed while the walk still read it: a ``__sizeof__`` that assigns
  ``__class__`` and collects the old class.

Each risky case runs in a fresh interpreter with a timeout (``run_case``), so
a crash or an ASan report fails one test. Under an ASan build (runtime in
LD_PRELOAD) the child also gets ``PYTHONMALLOC=malloc``: pymalloc's pools are
invisible to ASan, and the item arrays involved are small. Both
implementations run every case; the pure one cannot crash, but must give the
same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from conftest import SANITIZED, compiled_sizeof
from memcache_ext import _sizeof_py as P

#: Where a child's collection can run inside deep_sizeof's C code: before
#: 3.12 an allocation collects at once; from 3.12 a collection only runs at
#: the next bytecode boundary, so the compiled walk cannot be interrupted.
GC_IN_C_CALLS = sys.version_info < (3, 12)

PRELUDE = '''
import ctypes, gc, sys
IMPL = {impl!r}
if IMPL == "c":
    from memcache_ext import _sizeof_c as M
else:
    from memcache_ext import _sizeof_py as M
from memcache_ext import _sizeof_py as P
ds = M.deep_sizeof
gs = sys.getsizeof


def fresh(s):
    return "".join(list(s))


if sys.version_info < (3, 12):
    _as_unicode = ctypes.pythonapi.PyUnicode_AsUnicode
    _as_unicode.argtypes = [ctypes.py_object]
    _as_unicode.restype = ctypes.c_void_p


def slow_leaf(i):
    """An exact leaf only sys.getsizeof can size, so measuring it allocates:
    a str with a cached wchar_t copy before 3.12, a big int after."""
    if sys.version_info < (3, 12):
        s = fresh(f"legacy str {{i}}")
        _as_unicode(s)
        return s
    return 10**30 + i


class Plain:
    def __init__(self, a, b, c=None):
        self.a = a
        self.b = b
        self.c = c


class Slotted:
    __slots__ = ("a", "b", "c")

    def __init__(self, a, b, c=None):
        self.a = a
        self.b = b
        self.c = c
'''


def impl_module(impl: str) -> Any:
    if impl == "py":
        return P
    return compiled_sizeof()


@pytest.fixture(params=["c", "py"], ids=["c-extension", "pure-python"])
def impl(request: pytest.FixtureRequest) -> str:
    impl_module(request.param)
    return str(request.param)


def run_case(code: str, impl: str, timeout: float = 120.0) -> str:
    """Run ``code`` after PRELUDE in a fresh interpreter; return its stdout.

    Fails on a non-zero exit (a crash, a failed assert), on any sanitizer
    report, and on the timeout (a hang)."""
    env = dict(os.environ)
    if SANITIZED:
        env["PYTHONMALLOC"] = "malloc"
    src = PRELUDE.format(impl=impl) + textwrap.dedent(code)
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", src],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out after {timeout}s\nstdout: {exc.stdout!r}\nstderr: {exc.stderr!r}")
    report = f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, report
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, report
    return proc.stdout


# ------------------------------------------------------- use after free

UAF_SHAPES = {
    # exact list small enough for the C fast path (no heap, one recursion)
    "small-list": ("[slow_leaf(0), 1.5, 2.5, [3.5], (4.5, 5.5), slow_leaf(1), 6.5]", "o.clear()"),
    # the general walk: the items are copied to the child buffer first
    "list": (
        "[slow_leaf(i) for i in range(3)] + [float(i) + 0.5 for i in range(200)]"
        " + [[float(i)] for i in range(50)]",
        "o.clear()",
    ),
    # sampled: more items than the budget
    "sampled-list": (
        "[slow_leaf(i) for i in range(40)] + [float(i) + 0.5 for i in range(30000)]",
        "o.clear()",
    ),
    "small-dict": (
        "{fresh('k a'): slow_leaf(0), fresh('k b'): 1.5, fresh('k c'): [2.5]}",
        "o.clear()",
    ),
    "dict": (
        "{fresh(f'key {i}'): (slow_leaf(i) if i % 50 == 0 else float(i)) for i in range(300)}",
        "o.clear()",
    ),
    "set": ("{slow_leaf(i) for i in range(8)} | {float(i) + 0.5 for i in range(300)}", "o.clear()"),
    "instance": ("Plain(slow_leaf(0), [1.5, 2.5], fresh('attr c'))", "o.__dict__.clear()"),
    "slots": ("Slotted(slow_leaf(0), [1.5, 2.5], fresh('attr c'))", "o.b = o.c = None"),
}


@pytest.mark.parametrize("shape", sorted(UAF_SHAPES))
def test_finalizer_empties_the_container_being_walked(impl: str, shape: str) -> None:
    """A collection started inside getsizeof(child) runs a finalizer that
    empties the container whose children the walk is reading.

    With the collection threshold at 1, the k-th collection during the call
    (k = 1..8) plants a finalizer cycle that it then collects: that walks the
    mutation across the first calls that allocate (before 3.12, for the
    compiled walk: the container's own getsizeof, the set iterator, each slow
    leaf). The walk must not crash, and must return a positive size no larger
    than the sizes of the two states added (the compiled walk: exactly what it
    had read, when the finalizer runs among the children)."""
    build, mutate = UAF_SHAPES[shape]
    out = run_case(
        f"""
        def build():
            return {build}

        phase, armed, seen = "idle", 0, 0
        fired = []

        class Finalizer:
            def __del__(self):
                fired.append(phase)
                {mutate}

        def plant(step, info):
            global seen
            if step == "start" and armed:
                seen += 1
                if seen == armed:
                    f = Finalizer()
                    f.cycle = f
                    del f

        gc.callbacks.append(plant)
        sizes = []
        for k in range(1, 9):
            o = build()
            before = ds(o)
            fired.clear()
            seen, armed = 0, k
            gc.set_threshold(1)
            phase = "walk"
            r = ds(o)
            phase = "idle"
            gc.set_threshold(700, 10, 10)
            armed = 0
            gc.collect()
            if not fired:  # fewer than k collections in the call
                assert r == before, (k, r, before)
                break
            after = ds(o)
            {mutate}
            assert ds(o) == after  # the finalizer had emptied it
            assert 0 < r <= before + after, (k, r, before, after)
            sizes.append(r)
            if IMPL == "c" and k == 1 and {shape!r} != "set":
                # the first collection is in the first slow leaf's getsizeof,
                # after the children were read (and pinned)
                assert r == before, (r, before, after)
        gc.callbacks.remove(plant)
        print(len(sizes), sizes)
    """,
        impl,
    )
    mutated_during_walk = int(out.split()[0])
    if GC_IN_C_CALLS or impl == "py":
        assert mutated_during_walk > 0, out  # the hazard was really exercised


def test_sizeof_that_frees_its_class(impl: str) -> None:
    """A nested object's ``__sizeof__`` assigns ``__class__`` and collects the
    old class: the walk must not read the freed type afterwards."""
    run_case(
        """
        class Other:
            pass

        def make():
            class Doomed:
                def __sizeof__(self):
                    self.__class__ = Other
                    gc.collect()
                    return 64
            return [Doomed() for _ in range(3)]

        for _ in range(20):
            o = make()
            r = ds([o, 1.5])
            assert r > 0
            assert all(type(x) is Other for x in o)
        gc.collect()
        print("ok")
    """,
        impl,
    )


# --------------------------------------------------- out-of-bounds sampling


def test_deep_nested_lists_default_budget(impl: str) -> None:
    """100,000-deep ``[[[...]]]`` and ``((...),)``: past the node cap every
    one-item container is "sampled" with weight 1."""
    run_case(
        """
        depth = 100_000
        x = []
        for _ in range(depth):
            x = [x]
        assert ds(x) == depth * gs([None]) + gs([])
        t = ()
        for _ in range(depth):
            t = (t,)
        assert ds(t) == depth * gs((None,))  # the innermost () is shared
        # stored in a byte-bounded cache, as the issue reported
        if IMPL == "c":
            from memcache_ext._core_c import CLruCache as Cache
        else:
            from memcache_ext._core_py import PyLruCache as Cache
        c = Cache(10, max_bytes=10**9)
        c["deep"] = x
        assert c.nbytes == ds("deep") + ds(x)
        print("ok")
    """,
        impl,
        timeout=300,
    )


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8])
def test_one_item_containers_at_the_cap(impl: str, budget: int) -> None:
    """Chains of one-item lists, tuples, dicts and sets longer than the cap
    (8 * budget units): the containers past it are sampled with m == n == 1."""
    run_case(
        f"""
        budget = {budget}
        for depth in (8 * budget - 1, 8 * budget, 8 * budget + 1, 200):
            lst, tup, dct, fset = [], (), {{}}, frozenset()
            for i in range(depth):
                lst = [lst]
                tup = (tup,)
                dct = {{fresh(f"k {{i}}"): dct}}
                fset = frozenset([fset])
            assert ds(lst, budget=budget) == depth * gs([None]) + gs([])
            assert ds(tup, budget=budget) == depth * gs((None,))
            assert P.deep_sizeof(lst, budget=budget) == ds(lst, budget=budget)
            for obj in (dct, fset):
                want = M._deep_sizeof_stats(obj, budget=budget)
                assert P._deep_sizeof_stats(obj, budget=budget) == want
        print("ok")
    """,
        impl,
    )


# ----------------------------------------------------------- saturation


class HugeButPlausible:
    """Reports just under MAX_OBJECT_SIZE (2**48): accepted as is."""

    __slots__ = ()

    def __sizeof__(self) -> int:
        return P.MAX_OBJECT_SIZE - 4096


def sampled_chain(depth: int) -> list[Any]:
    """Nine-item lists nested so that each one's single sampled position (at
    budget 1) is the next list: the weight is multiplied by 9 per level."""
    node: list[Any] = []
    for level in range(depth, 0, -1):
        items: list[Any] = [float(j) + 0.5 for j in range(9)]
        items[P.sample_positions(level, 9, 1)[0]] = node
        node = items
    return node


@pytest.mark.parametrize("budget", [P.DEFAULT_BUDGET, sys.maxsize])
def test_sum_of_sizes_saturates(impl: str, budget: int) -> None:
    mod = impl_module(impl)
    many = [HugeButPlausible() for _ in range(40_000)]  # about 2**63.3 bytes
    assert mod.deep_sizeof(many, budget=budget) == sys.maxsize
    few = many[:100]
    assert mod.deep_sizeof(few, budget=budget) == sys.getsizeof(few) + 100 * sys.getsizeof(few[0])


@pytest.mark.parametrize("depth", [5, 25, 400])
def test_weights_multiplied_along_a_chain_saturate(impl: str, depth: int) -> None:
    mod = impl_module(impl)
    chain = sampled_chain(depth)
    size, _units, sampled = mod._deep_sizeof_stats(chain, budget=1)
    assert sampled == depth  # each level was sampled, the weight grew by 9
    if depth == 5:
        assert 0 < size < sys.maxsize
    else:  # 9**25 * 136 bytes is past sys.maxsize; 9**400 overflows a double
        assert size == sys.maxsize
    assert P._deep_sizeof_stats(chain, budget=1) == mod._deep_sizeof_stats(chain, budget=1)


def test_live_blocks_released() -> None:
    """Every C block a walk takes is released, whatever path it took."""
    mod = impl_module("c")
    big = [(float(i), str(i) * 3) for i in range(50_000)]
    keep = list(big)
    for budget in (1, 100, P.DEFAULT_BUDGET, sys.maxsize):
        mod.deep_sizeof(big, budget=budget)
        assert mod._live_blocks() == 0
    assert keep[0] is big[0]
