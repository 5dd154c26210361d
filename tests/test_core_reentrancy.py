"""User code that raises or calls back into the cache: no deadlock, no crash,
no corruption. Each case runs in a fresh interpreter with a timeout."""

from __future__ import annotations

import pytest

CHECK = """
def check(c):
    # the structure is consistent: keys, items, len and the bound agree
    keys = c.keys()
    assert len(keys) == len(set(keys)) == len(c.items()), (keys, len(c))
    assert c.maxsize is None or len(c) <= c.maxsize
    for k in keys:
        assert k in c
"""


def test_eq_that_mutates_the_cache(isolated):
    isolated(
        CHECK
        + """
c = Cache(4)
class K:
    def __init__(self, v, mutate):
        self.v, self.mutate = v, mutate
    def __hash__(self):
        return 42                      # every K collides
    def __eq__(self, other):
        if self.mutate:
            self.mutate = False
            c.clear(); c["x"] = 1; c["y"] = 2; c.pop("y")
        return isinstance(other, K) and other.v == self.v
c[K(1, True)] = "one"                  # stored keys' __eq__ runs on later lookups
c[K(2, False)] = "two"                 # K(1).__eq__ clears the cache mid-lookup
check(c)
assert c.get(K(2, False)) == "two" and "x" in c
for i in range(50):
    c[K(i, i % 3 == 0)] = i
    check(c)
"""
    )


def test_eq_that_mutates_on_every_call_terminates(isolated):
    isolated(
        CHECK
        + """
c = Cache(8)
on = [True]
class K:
    def __init__(self, v): self.v = v
    def __hash__(self): return 7
    def __eq__(self, other):
        if on[0]:
            c[object()] = 0            # mutates on every comparison
        return isinstance(other, K) and other.v == self.v
for i in range(3):
    try:
        c[K(i)] = i
    except RuntimeError as e:  # CLruCache gives up; PyLruCache's dict recurses
        assert "changed during key comparison" in str(e) or isinstance(e, RecursionError)
    on[0] = False
    check(c)
    on[0] = True
""",
        timeout=60,
    )


def test_hash_and_eq_that_raise(isolated):
    isolated(
        CHECK
        + """
class BadHash:
    def __hash__(self): raise ValueError("hash")
class BadEq:
    def __init__(self, v): self.v = v
    def __hash__(self): return 1
    def __eq__(self, other): raise KeyError("eq")
c = Cache(4)
c["a"] = 1
c[BadEq(1)] = 1                         # first of its hash: no comparison yet
before = (c.keys(), c.stats())
for op in (lambda: c[BadHash()], lambda: c.__setitem__(BadHash(), 1),
           lambda: c.get(BadEq(2)), lambda: c.__setitem__(BadEq(3), 3),
           lambda: c.pop(BadEq(4)), lambda: BadEq(5) in c):
    try:
        op()
    except (ValueError, KeyError):
        pass
    else:
        raise AssertionError("no error")
assert (c.keys(), c.stats()) == before, (c.keys(), c.stats())
check(c)
"""
    )


@pytest.mark.parametrize(
    "trigger", ["evict", "replace", "clear", "del", "pop", "trim", "expire", "dealloc"]
)
def test_value_del_that_uses_the_cache(isolated, trigger):
    isolated(
        CHECK
        + f"""
class T:
    now = 0.0
    def __call__(self): return self.now
timer = T()
c = Cache(3, timer=timer)
log = []
class V:
    def __init__(self, n): self.n = n
    def __del__(self):
        # runs when the cache lets go of the value: read, write, delete
        log.append(self.n)
        c.get("other"); c["from_del_%d" % self.n] = 1; c.pop("k0", None); len(c); c.keys()
        check(c)
for i in range(3):
    c.set("k%d" % i, V(i), ttl=5)
trigger = {trigger!r}
if trigger == "evict":
    c["new"] = 1
elif trigger == "replace":
    c["k1"] = 2
elif trigger == "clear":
    c.clear()
elif trigger == "del":
    del c["k1"]
elif trigger == "pop":
    c.pop("k2")
elif trigger == "trim":
    c.trim(1.0)
elif trigger == "expire":
    timer.now = 10
    c.expire()
elif trigger == "dealloc":
    c2 = Cache(3); c2["x"] = V(9); del c2
check(c)
gc.collect()
assert log, "no __del__ ran"
check(c)
"""
    )


def test_on_evict_that_reenters_and_raises(isolated):
    isolated(
        CHECK
        + """
calls = []
def on_evict(k, v, reason):
    calls.append((k, reason))
    c.get(k)                       # already gone
    if len(calls) < 20:
        c["re%d" % len(calls)] = v # triggers more evictions, recursively
    check(c)
    if len(calls) % 3 == 0:
        raise RuntimeError("boom")
c = Cache(3, on_evict=on_evict)
errors = 0
for i in range(30):
    try:
        c[i] = i
    except RuntimeError:
        errors += 1
    check(c)
assert errors > 0 and len(calls) > 20 and len(c) == 3
"""
    )


def test_sizeof_and_timer_that_reenter(isolated):
    isolated(
        CHECK
        + """
depth = []
def sizeof(o):
    if not depth:
        depth.append(1)
        c["inner"] = "x"           # re-enters set() from inside set()
        depth.pop()
    return 1
class T:
    busy = False
    def __call__(self):
        if not self.busy:          # re-enters from the clock (once per call)
            self.busy = True
            c.peek("a"); len(c); c.keys()
            self.busy = False
        return 100.0
c = Cache(3, max_bytes=100, sizeof=sizeof, timer=T(), ttl=10)
for i in range(10):
    c[i] = i
    check(c)
assert c.nbytes == 2 * len(c)
"""
    )


def test_factory_that_reenters(isolated):
    isolated(
        CHECK
        + """
c = Cache(10)
def fib(n):
    if n < 2:
        return n
    return c.get_or_set(n - 1, lambda: fib(n - 1)) + c.get_or_set(n - 2, lambda: fib(n - 2))
assert c.get_or_set(30, lambda: fib(30)) == 832040
check(c)
"""
    )


def test_recursive_cache_in_cache_dealloc(isolated):
    isolated(
        """
c = Cache(None)
inner = c
for i in range(1000000):      # a deep chain of caches: no C stack overflow on release
    nxt = Cache(1)
    inner["next"] = nxt
    inner = nxt
del inner
c.clear()
print("ok")
""",
        timeout=120,
    )
