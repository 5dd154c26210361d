"""SingletonMeta: one instance per class, races, subclasses, reset, arguments."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from memcache_ext import SingletonMeta


@pytest.fixture(autouse=True)
def _reset():
    yield
    SingletonMeta.reset()


def run(code: str, timeout: float = 60, check: bool = True) -> str:
    """Run ``code`` in a child: its stdout (its stderr too when not ``check``)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"timed out (deadlock?): {exc.stderr!r}")
    if not check:
        return proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_one_instance() -> None:
    class A(metaclass=SingletonMeta):
        def __init__(self) -> None:
            self.n = 1

    assert A() is A()
    assert A.has_instance()


def test_subclass_gets_its_own() -> None:
    class Base(metaclass=SingletonMeta):
        pass

    class Child(Base):
        pass

    b = Base()
    c = Child()
    assert b is not c
    assert type(c) is Child and type(b) is Base
    assert Child() is c and Base() is b


def test_subclass_first() -> None:
    class Base(metaclass=SingletonMeta):
        pass

    class Child(Base):
        pass

    c = Child()
    assert not Base.has_instance()
    assert type(Base()) is Base
    assert Child() is c


def test_reset_all_and_one() -> None:
    class A(metaclass=SingletonMeta):
        pass

    class B(metaclass=SingletonMeta):
        pass

    a, b = A(), B()
    SingletonMeta.reset(A)
    assert A() is not a
    assert B() is b
    SingletonMeta.reset()
    assert B() is not b
    b2 = B()
    B.reset()
    assert B() is not b2
    with pytest.raises(TypeError):
        SingletonMeta.reset(int)  # type: ignore[call-arg, misc]  # deliberately wrong


def test_class_own_reset_attribute_wins() -> None:
    class A(metaclass=SingletonMeta):
        def reset(self) -> str:
            return "mine"

    assert A().reset() == "mine"


def test_arguments_rule() -> None:
    class Config(metaclass=SingletonMeta):
        def __init__(self, path: str = "default", *, debug: bool = False) -> None:
            self.path = path
            self.debug = debug

    c = Config("a.toml", debug=True)
    assert Config() is c
    assert Config("a.toml", debug=True) is c
    with pytest.raises(TypeError, match="different arguments"):
        Config("b.toml")
    with pytest.raises(TypeError):
        Config("a.toml", debug=False)
    assert c.path == "a.toml"


def test_constructor_error_is_not_stored() -> None:
    calls = []

    class Flaky(metaclass=SingletonMeta):
        def __init__(self) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("first time fails")

    with pytest.raises(RuntimeError):
        Flaky()
    assert not Flaky.has_instance()
    f = Flaky()
    assert Flaky() is f and len(calls) == 2


def test_recursive_construction_raises() -> None:
    class Loop(metaclass=SingletonMeta):
        def __init__(self) -> None:
            Loop()

    with pytest.raises(RuntimeError, match="being constructed"):
        Loop()
    assert not Loop.has_instance()


def test_constructor_creating_other_singleton() -> None:
    class Inner(metaclass=SingletonMeta):
        pass

    class Outer(metaclass=SingletonMeta):
        def __init__(self) -> None:
            self.inner = Inner()

    assert Outer().inner is Inner()


def test_race_constructs_once() -> None:
    out = run("""
        import sys, threading, time
        sys.setswitchinterval(1e-6)
        from memcache_ext import SingletonMeta
        calls = []
        class Slow(metaclass=SingletonMeta):
            def __init__(self):
                calls.append(threading.get_ident())
                time.sleep(0.05)
        class Sub(Slow):
            pass
        T = 16
        barrier = threading.Barrier(T)
        got = [None] * T
        def work(i):
            barrier.wait()
            got[i] = (Slow if i % 2 else Sub)()
        ts = [threading.Thread(target=work, args=(i,)) for i in range(T)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert len(calls) == 2, calls
        assert len({id(g) for g in got[1::2]}) == 1
        assert len({id(g) for g in got[0::2]}) == 1
        assert type(got[0]) is Sub and type(got[1]) is Slow
        print("ok")
    """)
    assert out.strip() == "ok"


def test_different_classes_do_not_serialize() -> None:
    # A's constructor waits until B has been constructed on another thread:
    # with one global lock this would deadlock (and time out).
    out = run(
        """
        import threading
        from memcache_ext import SingletonMeta
        b_done = threading.Event()
        class A(metaclass=SingletonMeta):
            def __init__(self):
                assert b_done.wait(10), "B was blocked by A's construction"
        class B(metaclass=SingletonMeta):
            def __init__(self):
                pass
        t = threading.Thread(target=A); t.start()
        import time; time.sleep(0.05)
        B(); b_done.set()
        t.join()
        assert A.has_instance() and B.has_instance()
        print("ok")
    """,
        timeout=30,
    )
    assert out.strip() == "ok"


def test_nested_singletons_across_threads() -> None:
    out = run(
        """
        import sys, threading
        sys.setswitchinterval(1e-6)
        from memcache_ext import SingletonMeta
        class Leaf(metaclass=SingletonMeta):
            pass
        class Mid(metaclass=SingletonMeta):
            def __init__(self): self.leaf = Leaf()
        class Top(metaclass=SingletonMeta):
            def __init__(self): self.mid = Mid()
        barrier = threading.Barrier(12)
        res = []
        def work(i):
            barrier.wait()
            res.append((Top, Mid, Leaf)[i % 3]())
        ts = [threading.Thread(target=work, args=(i,)) for i in range(12)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert Top().mid is Mid() and Mid().leaf is Leaf()
        assert len({id(r) for r in res}) == 3
        print("ok")
    """,
        timeout=30,
    )
    assert out.strip() == "ok"


# -- arguments are compared as the constructor binds them ------------------------------


def test_positional_and_keyword_are_the_same_call() -> None:
    class B(metaclass=SingletonMeta):
        def __init__(self, x: int, y: int = 2) -> None:
            self.x, self.y = x, y

    b = B(1)
    assert B(x=1) is b and B(1, 2) is b and B(1, y=2) is b and B(y=2, x=1) is b


def test_the_default_value_is_the_same_call_as_leaving_it_out() -> None:
    class D(metaclass=SingletonMeta):
        def __init__(self, conn: object = None, *, retries: int = 3) -> None:
            self.conn = conn

    d = D()
    assert D(None) is d and D(conn=None) is d and D(None, retries=3) is d


def test_different_arguments_name_both_calls_and_the_way_out() -> None:
    class B(metaclass=SingletonMeta):
        def __init__(self, x: int, y: int = 2) -> None:
            pass

    B(1)
    with pytest.raises(TypeError) as err:
        B(1, y=3)
    assert str(err.value) == (
        "B is a singleton already created with different arguments: B(1, 2), and this call "
        "asks for B(1, 3); call it without arguments, or SingletonMeta.reset(B) first"
    )


def test_arguments_the_constructor_refuses_are_named() -> None:
    class B(metaclass=SingletonMeta):
        def __init__(self, x: int = 0) -> None:
            pass

    class N(metaclass=SingletonMeta):
        pass

    B()
    N()
    with pytest.raises(TypeError, match=r"^B\(\): got an unexpected keyword argument 'z'$"):
        B(z=1)  # type: ignore[call-arg]  # deliberately wrong
    with pytest.raises(TypeError, match=r"^N\(\): too many positional arguments$"):
        N(1)  # type: ignore[call-arg]  # deliberately wrong


def test_star_arguments_and_new() -> None:
    class V(metaclass=SingletonMeta):
        def __init__(self, *args: int, **kwargs: int) -> None:
            pass

    class W(metaclass=SingletonMeta):
        def __new__(cls, size: int = 4) -> W:
            return super().__new__(cls)

    v, w = V(1, a=2), W()
    assert V(1, a=2) is v and W(4) is w and W(size=4) is w
    with pytest.raises(TypeError, match="different arguments"):
        V(1)
    with pytest.raises(TypeError, match=r"W\(4\), and this call asks for W\(5\)"):
        W(5)


def test_long_arguments_are_shortened_in_the_message() -> None:
    class C(metaclass=SingletonMeta):
        def __init__(self, text: str) -> None:
            pass

    C("a" * 1000)
    with pytest.raises(TypeError) as err:
        C("b" * 1000)
    assert len(str(err.value)) < 300 and "..." in str(err.value)


def test_a_constructor_wrapped_without_functools_wraps_runs_once() -> None:
    """The wrapper's signature is (*args, **kwargs): dropping its first parameter
    as if it were self made every call fail after the constructor had run."""
    calls: list[str] = []

    def logged(f: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return f(*args, **kwargs)

        return wrapper

    class Conf(metaclass=SingletonMeta):
        @logged
        def __init__(self, path: str = "app.toml") -> None:
            calls.append(path)

    first = Conf("prod.toml")
    assert Conf("prod.toml") is first and Conf() is first
    assert calls == ["prod.toml"] and Conf.has_instance()


def test_a_call_the_constructor_cannot_take_fails_before_it_runs() -> None:
    calls: list[int] = []

    class One(metaclass=SingletonMeta):
        def __init__(self, n: int) -> None:
            calls.append(n)

    with pytest.raises(TypeError, match="One"):
        One(1, 2)  # type: ignore[call-arg]  # deliberately wrong
    assert calls == [] and not One.has_instance()
    assert One(1) is One(1) and calls == [1]


CONF = """
from memcache_ext import SingletonMeta


class Settings(metaclass=SingletonMeta):
    def __init__(self, path="app.toml", *, debug=False):
        self.path, self.debug, self.state = path, debug, {}


class OwnState(metaclass=SingletonMeta):
    def __getstate__(self):
        return {"mine": 1}
"""


def test_a_copy_is_the_instance_and_unpickling_calls_the_class_again(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A second instance made by copy or pickle would break "one instance per class"."""
    import copy
    import pickle

    (tmp_path / "conf_single.py").write_text(CONF)
    monkeypatch.syspath_prepend(str(tmp_path))
    from conf_single import OwnState, Settings  # type: ignore[import-not-found]

    s = Settings("prod.toml", debug=True)
    s.state["k"] = 1
    assert copy.copy(s) is s and copy.deepcopy({"a": [s, s]})["a"][1] is s
    assert pickle.loads(pickle.dumps(s)) is s
    blob = tmp_path / "s.pickle"
    blob.write_bytes(pickle.dumps(s))
    load = f"import pickle, sys; sys.path.insert(0, {str(tmp_path)!r}); "
    fresh = run(
        load + f"s = pickle.loads(open({str(blob)!r}, 'rb').read()); "
        "from conf_single import Settings; "
        "print(s is Settings(), s.path, s.debug, s.state)"
    )
    assert fresh.split() == ["True", "prod.toml", "True", "{}"]  # the arguments, not the state
    other = run(
        load + "from conf_single import Settings; Settings('dev.toml'); "
        f"pickle.loads(open({str(blob)!r}, 'rb').read())",
        check=False,
    )
    assert (
        "different arguments: Settings('dev.toml', debug=False), and this call asks for "
        "Settings('prod.toml', debug=True)" in other
    )

    own = OwnState()
    assert copy.copy(own) is own  # still the instance
    assert pickle.loads(pickle.dumps(own)) is not own  # its own pickling, as it defined it

    SingletonMeta.reset(Settings)
    assert copy.copy(s) is s
    with pytest.raises(TypeError, match="no longer its class's instance"):
        pickle.dumps(s)
