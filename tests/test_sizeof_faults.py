"""deep_sizeof under failed allocations: fault injection with ``_testcapi``.

For k = 0, 1, 2, ... ``_testcapi.set_nomemory(k, k + 1)`` fails only the
(k+1)-th allocation after it is called (raw, mem and object domains), then
deep_sizeof runs once. Every call must either raise MemoryError or return the
right size, until a k past the call's last allocation (seen when a probe
allocation after the call is the one that fails); on CPython 3.10 a
SystemError "... returned NULL without setting an exception" counts as the
MemoryError it is (its eval loop loses some raised in a Python
``__sizeof__``). Afterwards the process must be healthy: the same sizes
again, every C block released (``_live_blocks``), the reference counts of
every object in the shape unchanged, a collection that runs.

The compiled walk gets shapes that reach every C allocation (the stack, the
visited set, the child buffer, growth and sampling) at three budgets; the pure
twin gets smaller copies of the same shapes (it allocates at every step). Each
shape runs in its own interpreter with a timeout (``run_case``).
"""

from __future__ import annotations

import importlib.util

import pytest

from test_sizeof_memory import impl, run_case  # noqa: F401  (impl is a fixture)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("_testcapi") is None
    or not hasattr(importlib.import_module("_testcapi"), "set_nomemory"),
    reason="_testcapi.set_nomemory is not available in this interpreter",
)

INJECT = '''
import _testcapi

SMALL = IMPL == "py"  # the pure twin allocates at every step: smaller copies
N = (lambda big, small: small if SMALL else big)


def shape(name):
    if name == "big-list":
        # tuples held twice: the visited set grows; slow leaves: getsizeof calls
        keep = [(float(i), fresh(f"s {{i}}")) for i in range(N(30000, 300))]
        return list(keep) + [slow_leaf(i) for i in range(4)], keep
    if name == "nested-dicts":
        return {{fresh(f"k {{i}}"): {{"a": [float(i), float(i) + 0.5], "b": {{"c": 1000 + i}}}}
                for i in range(N(2000, 30))}}, None
    if name == "instances":
        # Sized: a __sizeof__ in Python, called for each nested instance
        n = N(300, 15)
        return ([Plain(float(i), [i + 1000], fresh(f"p {{i}}")) for i in range(n)]
                + [Slotted(float(i), (i + 1000, slow_leaf(i)), Plain(1.5, None)) for i in range(n)]
                + [Sized(fresh(f"z {{i}}")) for i in range(n)]), None
    if name == "sets":
        big = ({{fresh(f"m {{i}}") for i in range(N(20000, 300))}}
               | {{slow_leaf(i) for i in range(3)}})
        return [big, frozenset({{1.5, 2.5, fresh("x y")}}), {{3.5}}], None
    if name == "deep":
        x = []
        for _ in range(N(100_000, 300)):
            x = [x]
        return x, None
    raise ValueError(name)


class Sized:
    def __init__(self, v):
        self.v = v

    def __sizeof__(self):
        return object.__sizeof__(self) + 100


def nodes_of(root):
    """Every container and instance reachable from root (for refcounts)."""
    out, todo, seen = [], [root], set()
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, (type, int, float, str, bytes, type(None))):
            continue
        seen.add(id(o))
        out.append(o)
        todo.extend(gc.get_referents(o))
    return out


def inject(f, obj, expect, limit=200_000):
    """Fail the k-th allocation for every k along f(obj); return (calls, raised)."""
    k = raised = 0
    while True:
        gc.disable()
        _testcapi.set_nomemory(k, k + 1)
        try:
            try:
                r = f(obj)
            except MemoryError:
                r = None
            except SystemError as exc:  # CPython 3.10 loses some MemoryErrors
                if "without setting an exception" not in str(exc):
                    raise
                r = None
            try:
                probe = [k, k]  # fails here if the call never reached allocation k + 1
                consumed = probe is not None
            except MemoryError:
                consumed = False
        finally:
            _testcapi.remove_mem_hooks()
            gc.enable()
        if r is None:
            raised += 1
        else:
            assert r == expect, (k, r, expect)
        if not consumed:
            return k + 1, raised
        k += 1
        assert k < limit, "no end to the allocations?"


obj, keep = shape(NAME)
budgets = [50, sys.maxsize] if SMALL else [100, P.DEFAULT_BUDGET, sys.maxsize]
calls = [(b, (lambda o, b=b: ds(o, budget=b))) for b in budgets]
calls.append(("default", ds))
expected = {{b: f(obj) for b, f in calls}}
nodes = nodes_of(obj)
refcounts = [sys.getrefcount(x) for x in nodes]
report = []
for b, f in calls:
    n, raised = inject(f, obj, expected[b])
    assert raised > 0, ("no allocation failure surfaced", b)
    report.append(f"{{b}}: {{n}} points, {{raised}} MemoryError")

# healthy afterwards
for b, f in calls:
    assert f(obj) == expected[b], b
gc.collect()
after = [sys.getrefcount(x) for x in nodes]
# The compiled walk must give back exactly what it took. The pure twin is
# Python code: it cannot lose a reference, but CPython 3.11 itself leaks one
# to a call's arguments when pushing the callee's frame fails.
changed = [(type(nodes[i]).__name__, refcounts[i], after[i]) for i in range(len(nodes))
           if after[i] < refcounts[i] or (IMPL == "c" and after[i] != refcounts[i])]
assert not changed, ("reference leak or loss", changed[:5], len(changed))
if IMPL == "c":
    assert getattr(M, "_live_blocks", lambda: 0)() == 0, "C blocks not released"
gc.collect()
assert ds([1.5, fresh("still fine")]) == gs([1.5, 1.5]) + gs(1.5) + gs(fresh("still fine"))
print("; ".join(report))
'''

SHAPES = ["big-list", "nested-dicts", "instances", "sets", "deep"]


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.timeout(960)  # above the child's own 900 s, which reports its output
def test_every_allocation_failure_is_a_memory_error(impl: str, name: str) -> None:  # noqa: F811
    out = run_case(f"NAME = {name!r}\n" + INJECT.format(), impl, timeout=900)
    print(out)
