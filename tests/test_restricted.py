"""Restricted mode (RestrictedPython): ``Sandbox.exec`` and ``Policy.restricted_modules``.

Every published RestrictedPython advisory becomes a regression test that checks the real
effect (no file written, no secret read, no frame or ``__globals__`` reached) and runs the same
operation as plain Python outside the sandbox to show it works there, so the test can fail.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    AttributeRefused,
    BuiltinRefused,
    FileReadRefused,
    ImportRefused,
    Policy,
    RestrictedCodeError,
    Sandbox,
    SandboxViolation,
)

SECRET = "host-secret-value"


@pytest.fixture
def sandbox(policy: Policy) -> Sandbox:
    return Sandbox(policy)


def plain(source: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """The control: the same source as ordinary Python, outside any sandbox."""
    namespace = {} if namespace is None else namespace
    exec(compile(source, "<plain>", "exec"), namespace)
    return namespace


def host_function() -> str:
    """A host function whose ``__globals__`` hold :data:`SECRET`."""
    return "host"


# --- normal code works --------------------------------------------------------------------


def test_normal_code_runs_and_returns_its_globals(sandbox: Sandbox) -> None:
    source = """
import json
import math

def square(x):
    return x * x

class Counter:
    def add(self, value):
        self.total = getattr(self, "total", 0) + value
        return self

counter = Counter()
for i in range(10):
    counter.add(i)
squares = [square(i) for i in range(5)]
pairs = {key: value for key, value in zip("ab", [1, 2])}
n = 1
n += 2
first, *rest = [1, 2, 3]
for left, right in [(1, 2), (3, 4)]:
    n += left * right
print("hello", json.dumps(pairs, sort_keys=True), math.sqrt(16))
result["total"] = counter.total
result["sorted"] = sorted(pairs.items())
"""
    result: dict[str, Any] = {}
    namespace = sandbox.exec(source, {"result": result})
    assert result == {"total": 45, "sorted": [("a", 1), ("b", 2)]}
    assert namespace["squares"] == [0, 1, 4, 9, 16]
    assert namespace["n"] == 3 + 2 + 12
    assert namespace["rest"] == [2, 3]
    assert namespace["__printed__"] == 'hello {"a": 1, "b": 2} 4.0\n'


def test_exec_runs_inside_the_sandbox(sandbox: Sandbox, outside: Path) -> None:
    """The sandbox's other layers apply: a read outside the app is refused."""
    from gae_sandbox import current_sandbox

    seen: list[Any] = []
    sandbox.exec("record(1)", {"record": lambda _: seen.append(current_sandbox())})
    assert seen == [sandbox]
    with pytest.raises(ImportRefused):  # the import gate, as for app code
        sandbox.exec("import sqlite3")
    secret = outside / "secret.txt"
    read = {"read": lambda: secret.read_text()}
    assert plain("leak = read()", dict(read))["leak"] == "host secret\n"
    with pytest.raises(FileReadRefused):  # a host function called from it is sandboxed too
        sandbox.exec("leak = read()", dict(read))


def test_exec_inside_an_entered_sandbox_reuses_its_scope(sandbox: Sandbox) -> None:
    from gae_sandbox.context import active_scope

    with sandbox:
        scope = active_scope()
        scopes: list[Any] = []
        sandbox.exec("record(1)", {"record": lambda _: scopes.append(active_scope())})
    assert scopes == [scope]


def test_rejected_code_lists_every_construct_with_its_line(sandbox: Sandbox) -> None:
    source = "x = 1\nexec('1')\ny = ().__class__\nasync def f():\n    pass\n"
    plain("x = 1\ny = ().__class__\n")  # valid Python
    with pytest.raises(RestrictedCodeError) as caught:
        sandbox.exec(source, filename="untrusted.py")
    error = caught.value
    assert isinstance(error, SyntaxError) and isinstance(error, SandboxViolation)
    assert error.kind == "restricted"
    assert [e.split(":")[0] for e in error.errors] == ["Line 2", "Line 3", "Line 4"]
    assert "untrusted.py" in str(error) and "Exec calls" in str(error)
    assert "__class__" in str(error) and "AsyncFunctionDef" in str(error)


# --- advisories: format strings (CVE-2023-41039, PR #330) ----------------------------------


FORMAT_WALKS = [
    "leak = '{0.__init__.__globals__[SECRET]}'.format(target)",
    "leak = str.format('{0.__init__.__globals__[SECRET]}', target)",
    "leak = '{t.__init__.__globals__[SECRET]}'.format_map({'t': target})",
    "import string\nleak = string.Formatter().format('{0.__init__.__globals__[SECRET]}', target)",
    "from string import Formatter\n"
    "leak = Formatter().format('{0.__init__.__globals__[SECRET]}', target)",
    "leak = string.Formatter().format('{0.__init__.__globals__[SECRET]}', target)",
]


class Target:
    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize("source", FORMAT_WALKS)
def test_format_string_attribute_walk(sandbox: Sandbox, source: str) -> None:
    globals()["SECRET"] = SECRET  # reachable from Target.__init__.__globals__
    namespace = {"target": Target(), "string": string}
    if not source.startswith("leak = string."):  # the utility builtin, not a host module
        assert plain(source, dict(namespace))["leak"] == SECRET
    with pytest.raises((AttributeError, NotImplementedError)) as caught:
        sandbox.exec(source, {"target": Target()})
    assert isinstance(caught.value, SandboxViolation) or "not safe" in str(caught.value)


# --- advisories: generator and coroutine frames (CVE-2023-37271) ---------------------------


FRAME_WALKS = [
    "def gen():\n    yield 1\nleak = getattr(gen(), 'gi_frame')",
    "def gen():\n    yield 1\nleak = getattr(gen(), 'gi_code')",
    "def gen():\n    yield getattr(getattr(me, 'gi_frame'), 'f_back')\nme = gen()\nleak = next(me)",
    "def gen():\n    yield 1\n"
    "frame = getattr(gen(), 'gi_frame')\nleak = getattr(frame, 'f_globals')",
]


@pytest.mark.parametrize("source", FRAME_WALKS)
def test_generator_frames_are_refused_at_run_time(sandbox: Sandbox, source: str) -> None:
    assert plain(source)["leak"] is not None
    with pytest.raises(AttributeRefused):
        sandbox.exec(source)


@pytest.mark.parametrize("attribute", ["gi_frame", "gi_code", "f_back", "f_globals",
                                       "cr_frame", "ag_frame", "tb_frame"])
def test_frame_attributes_are_rejected_at_compile_time(sandbox: Sandbox,
                                                       attribute: str) -> None:
    with pytest.raises(RestrictedCodeError, match=attribute):
        sandbox.exec(f"leak = thing.{attribute}", {"thing": object()})


def test_coroutine_and_async_generator_frames(sandbox: Sandbox) -> None:
    source = "async def co():\n    pass\nc = co()\nleak = c.cr_frame\nc.close()\n"
    assert plain(source)["leak"] is not None
    with pytest.raises(RestrictedCodeError, match="AsyncFunctionDef"):
        sandbox.exec(source)
    source = "async def agen():\n    yield 1\nleak = agen().ag_frame\n"
    assert plain(source)["leak"] is not None
    with pytest.raises(RestrictedCodeError, match="ag_frame"):
        sandbox.exec(source)
    # a coroutine handed in by the host: its frame through getattr is refused too
    async def host_coroutine() -> None:
        pass

    coroutine = host_coroutine()
    try:
        with pytest.raises(AttributeRefused):
            sandbox.exec("leak = getattr(c, 'cr_frame')", {"c": coroutine})
    finally:
        coroutine.close()


# --- advisories: exception attributes (CVE-2024-47532) -------------------------------------


class Delegator:
    """A host wrapper that (like RestrictedPython's old ``_AttributeDelegator``) hides a
    module and raises AttributeError carrying it in ``.obj``."""

    def __init__(self, hidden: Any) -> None:
        self.hidden = hidden

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name, obj=self.hidden)


def test_attribute_error_obj_does_not_leak(sandbox: Sandbox) -> None:
    source = ("try:\n    wrapper.missing\nexcept AttributeError as error:\n"
              "    leak = error.obj\n")
    assert plain(source, {"wrapper": Delegator(sys)})["leak"] is sys
    with pytest.raises(AttributeRefused, match="obj"):
        sandbox.exec(source, {"wrapper": Delegator(sys)})
    # getattr with a default must not hand it over either
    source = ("try:\n    wrapper.missing\nexcept AttributeError as error:\n"
              "    leak = getattr(error, 'obj', None)\n")
    with pytest.raises(AttributeRefused):
        sandbox.exec(source, {"wrapper": Delegator(sys)})


def test_name_error_carries_only_strings(sandbox: Sandbox) -> None:
    source = ("try:\n    undefined_name\nexcept NameError as error:\n"
              "    leak = error.name\n    args = error.args\n")
    namespace = sandbox.exec(source)
    assert namespace["leak"] == "undefined_name"
    assert all(isinstance(arg, str) for arg in namespace["args"])
    source = ("try:\n    undefined_name\nexcept NameError as error:\n"
              "    leak = error.__traceback__\n")
    assert plain(source)["leak"] is not None
    with pytest.raises(RestrictedCodeError, match="__traceback__"):
        sandbox.exec(source)
    source = ("try:\n    undefined_name\nexcept NameError as error:\n"
              "    leak = getattr(error, '__traceback__')\n")
    with pytest.raises(AttributeRefused):
        sandbox.exec(source)


# --- advisories: except* (CVE-2025-22153) ---------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="except* is 3.11+ syntax")
def test_try_star_is_rejected_at_compile_time(sandbox: Sandbox) -> None:
    source = "try:\n    raise ValueError(1)\nexcept* ValueError as group:\n    leak = group\n"
    assert plain(source)["leak"] is not None
    with pytest.raises(RestrictedCodeError, match="TryStar"):
        sandbox.exec(source)


# --- advisories: operator gadgets (PR #330) and getattr with underscore names --------------


@pytest.mark.parametrize("source", [
    "import operator\nleak = operator.attrgetter('__globals__')(target)",
    "from operator import attrgetter\nleak = attrgetter('__globals__')(target)",
    "import operator\nleak = operator.methodcaller('__getattribute__', '__globals__')(target)",
    "import operator\nleak = operator.itemgetter('SECRET')(g)",
])
def test_operator_gadgets(sandbox: Sandbox, source: str) -> None:
    namespace = {"target": host_function, "g": {"SECRET": SECRET}}
    assert plain(source, dict(namespace))["leak"] is not None
    with pytest.raises(ImportRefused, match="operator"):
        sandbox.exec(source, namespace)


def test_operator_reached_through_another_module_is_refused(sandbox: Sandbox) -> None:
    # json -> json.decoder -> re -> enum -> sys: a module reached as an attribute is judged
    # (enum is not on restricted mode's list either: the walk stops there)
    source = "import json\nleak = json.decoder.re.enum.sys.modules"
    assert plain(source)["leak"] is sys.modules
    with pytest.raises(ImportRefused, match="enum"):
        sandbox.exec(source)
    with pytest.raises(ImportRefused, match="enum"):
        sandbox.exec("from enum import sys")


@pytest.mark.parametrize("name", ["__globals__", "__class__", "__dict__", "__code__",
                                  "_private"])
def test_getattr_builtin_refuses_underscore_names(sandbox: Sandbox, name: str) -> None:
    host_function._private = 1  # type: ignore[attr-defined]
    assert getattr(host_function, name) is not None
    with pytest.raises(AttributeRefused, match="starting with '_'"):
        sandbox.exec(f"leak = getattr(target, {name!r})", {"target": host_function})
    namespace = sandbox.exec(f"found = hasattr(target, {name!r})", {"target": host_function})
    assert namespace["found"] is False


def test_setattr_refuses_underscore_names_and_host_objects(sandbox: Sandbox) -> None:
    class Host:
        pass

    host = Host()
    with pytest.raises(AttributeRefused):
        sandbox.exec("class Mine:\n    pass\nsetattr(Mine(), '__class__', thing)",
                     {"thing": Host})
    with pytest.raises(TypeError):  # full_write_guard: host objects are read-only
        sandbox.exec("host.flag = True", {"host": host})
    assert not hasattr(host, "flag")


# --- advisories: positional-only parameter shadowing (8.3) --------------------------------


def test_positional_only_parameters_cannot_shadow_guards(sandbox: Sandbox) -> None:
    source = ("def walk(target, _getattr_=getattr, /):\n    return target.value\n"
              "leak = walk(target)\n")
    assert plain(source, {"target": Target()})["leak"] == 1
    with pytest.raises(RestrictedCodeError, match="_getattr_"):
        sandbox.exec(source, {"target": Target()})
    assert sandbox.exec("def f(a, /, b):\n    return a + b\nx = f(1, 2)")["x"] == 3


# --- the object graph: __subclasses__, vars, globals, sys.modules --------------------------


@pytest.mark.parametrize("source", [
    "leak = ().__class__.__base__.__subclasses__()",
    "leak = type.__subclasses__(type)",
    "leak = ().__class__.__base__",
    "leak = [c for c in object.__subclasses__() if c.__name__ == 'Popen']",
])
def test_class_hierarchy_walks_are_rejected(sandbox: Sandbox, source: str) -> None:
    assert plain(source)["leak"] is not None
    with pytest.raises(RestrictedCodeError):
        sandbox.exec(source)


@pytest.mark.parametrize("source, refused", [
    ("leak = getattr(getattr((), '__class__'), '__base__')", AttributeRefused),
    ("leak = vars()", BuiltinRefused),
    ("leak = globals()", BuiltinRefused),
    ("leak = locals()", BuiltinRefused),
    ("leak = dir(target)", BuiltinRefused),
    ("leak = type(target)", BuiltinRefused),
    ("leak = object", BuiltinRefused),
    ("import sys\nleak = sys.modules", ImportRefused),
    ("import gc\nleak = gc.get_objects()", ImportRefused),
    ("import inspect\nleak = inspect.currentframe()", ImportRefused),
    ("import builtins as b\nleak = b.getattr", RestrictedCodeError),
    ("from enum import sys as s\nleak = s.modules", ImportRefused),
    ("import types\nleak = types.FunctionType", ImportRefused),
    ("import importlib\nleak = importlib.import_module('os')", ImportRefused),
    ("leak = compile('1', 'x', 'eval')", BuiltinRefused),
    ("leak = open(path).read()", BuiltinRefused),
])
def test_namespace_and_introspection_routes(sandbox: Sandbox, source: str,
                                            refused: type[Exception], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    namespace = {"target": host_function, "path": str(secret), "SECRET": SECRET}
    assert plain(source, dict(namespace))["leak"] is not None
    with pytest.raises(refused):
        result = sandbox.exec(source, dict(namespace))
        if source == "leak = object":  # bare name: refused only when called
            result["leak"]()


def test_refused_builtin_never_reads_the_file(sandbox: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    source = "try:\n    leak = open(path).read()\nexcept NameError:\n    leak = None\n"
    assert plain(source, {"path": str(secret)})["leak"] == SECRET
    assert sandbox.exec(source, {"path": str(secret)})["leak"] is None


# --- exec, eval, compile, breakpoint, print >> -----------------------------------------------


@pytest.mark.parametrize("source, expected", [
    ("exec(\"open(path, 'w').write('x')\")", "Exec calls"),
    ("eval(\"open(path, 'w').write('x')\")", "Eval calls"),
    ("breakpoint()", "breakpoint"),
])
def test_exec_eval_breakpoint_are_rejected(sandbox: Sandbox, source: str, expected: str,
                                           tmp_path: Path) -> None:
    path = tmp_path / "written.txt"
    if "breakpoint" not in source:
        plain(source, {"path": str(path)})
        assert path.read_text() == "x"
        path.unlink()
    with pytest.raises(RestrictedCodeError, match=expected):
        sandbox.exec(source, {"path": str(path)})
    assert not path.exists()


def test_compile_inside_is_refused_and_writes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "written.txt"
    source = "code = compile(\"open(path, 'w').write('x')\", 'x', 'exec')\nrun(code)\n"
    plain(source, {"path": str(path), "run": lambda c: plain_exec(c, str(path))})
    assert path.read_text() == "x"
    path.unlink()
    with pytest.raises(BuiltinRefused, match="compile"):
        sandbox.exec(source, {"path": str(path), "run": lambda c: None})
    assert not path.exists()


def plain_exec(code: Any, path: str) -> None:
    exec(code, {"path": path})


def test_print_chevron_does_not_reach_host_streams(sandbox: Sandbox,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = "import sys\nprint >>sys.stderr, 'leaked'\n"
    with pytest.raises(TypeError):  # Python 3: '>>' on the print function
        plain(source)
    with pytest.raises(ImportRefused, match="sys"):
        sandbox.exec(source)
    namespace = sandbox.exec("print('collected', 1)\nprint('twice')\n")
    assert namespace["__printed__"] == "collected 1\ntwice\n"
    assert capsys.readouterr() == ("", "")


def test_printed_inside_the_code(sandbox: Sandbox) -> None:
    namespace = sandbox.exec("def f():\n    print('in f')\nf()\nprint('top')\nout = printed\n")
    assert namespace["out"] == "in f\ntop\n"


# --- imports --------------------------------------------------------------------------------


def test_gadget_module_allowed_only_when_named(policy: Policy) -> None:
    with pytest.raises(ImportRefused):
        Sandbox(policy).exec("import functools\nimport operator")
    allowed = Sandbox(policy.replace(allowed_modules=("*", "operator")))
    assert allowed.exec("import operator\nx = operator.add(1, 2)")["x"] == 3
    # the import gate still applies to what it refuses for all code
    with pytest.raises(ImportRefused):
        allowed.exec("import sqlite3")


def test_refusals_are_recorded_in_report_mode_and_still_raised(policy: Policy) -> None:
    sandbox = Sandbox(policy.replace(mode="report"))
    with pytest.raises(AttributeRefused):
        sandbox.exec("leak = getattr(target, '__globals__')", {"target": host_function})
    assert any(v.kind == "restricted_attribute" for v in sandbox.violations)


# --- Policy.restricted_modules -------------------------------------------------------------


def test_restricted_modules_validated(app_root: Path) -> None:
    with pytest.raises(ValueError, match="restricted_modules"):
        Policy.python27(app_root=app_root, restricted_modules=("not a module",))
    with pytest.raises(TypeError, match="restricted_modules"):
        Policy.python27(app_root=app_root, restricted_modules="plugins")


def test_restricted_module_is_compiled_restricted(app_on_path: Path, policy: Policy) -> None:
    plugins = app_on_path / "plugins"
    plugins.mkdir()
    (plugins / "__init__.py").write_text("")
    (plugins / "good.py").write_text(
        "import json\nVALUE = json.dumps([1, 2])\ndef double(x):\n    return 2 * x\n"
        "print('loaded')\n"
    )
    (plugins / "bad.py").write_text("x = 1\nleak = ().__class__\nexec('2')\n")
    (plugins / "sneaky.py").write_text("leak = getattr(len, '__self__')\n")
    sandbox = Sandbox(policy.replace(restricted_modules=("plugins.*",)))
    with sandbox:
        import plugins.good as good  # type: ignore[import-not-found]

        assert good.VALUE == "[1, 2]" and good.double(4) == 8
        assert good.__printed__ == "loaded\n"
        with pytest.raises(RestrictedCodeError) as caught:
            import plugins.bad  # type: ignore[import-not-found]  # noqa: F401
        assert [e.split(":")[0] for e in caught.value.errors] == ["Line 2", "Line 3"]
        with pytest.raises(AttributeRefused):
            import plugins.sneaky  # type: ignore[import-not-found]  # noqa: F401
    # the same file as ordinary Python is fine outside restricted mode
    assert plain((plugins / "sneaky.py").read_text())["leak"] is not None


def test_unlisted_app_modules_are_not_restricted(app_on_path: Path, policy: Policy) -> None:
    (app_on_path / "normal_mod.py").write_text("leak = ().__class__\n")
    with Sandbox(policy.replace(restricted_modules=("plugins",))):
        import normal_mod  # type: ignore[import-not-found]
    assert normal_mod.leak is tuple


def test_restricted_code_error_points_at_the_first_line(sandbox: Sandbox) -> None:
    import pickle

    with pytest.raises(RestrictedCodeError) as caught:
        sandbox.exec("x = 1\n\nleak = x.__class__\n", filename="plugin.py")
    assert (caught.value.filename, caught.value.lineno) == ("plugin.py", 3)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert copy.errors == caught.value.errors


# --- escape suite (issue 5): modules whose registrations or contexts run code outside --------


@pytest.mark.parametrize("source", [
    "import contextvars\ncontextvars.Context().run(len, 'x')\n",  # an empty context
    "import codecs\ncodecs.register(len)\n",  # a search function called later by the host
    "import copyreg\ncopyreg.pickle(complex, len)\n",  # called when the host pickles
    "from contextvars import Context\n",
])
def test_modules_that_run_code_outside_the_sandbox_are_refused(sandbox: Sandbox,
                                                               source: str) -> None:
    import codecs
    import copyreg

    before = dict(copyreg.dispatch_table)
    with pytest.raises(ImportRefused, match="restricted mode offers only"):
        sandbox.exec(source)
    assert copyreg.dispatch_table == before
    with pytest.raises(LookupError):
        codecs.lookup("x")


def test_functions_of_restricted_code_run_only_inside_a_sandbox(sandbox: Sandbox,
                                                                tmp_path: Path) -> None:
    """A function the code leaves with the host (a logging handler, a hook) would otherwise
    run later in host code, with a default argument bound to a host callable: it is
    refused there, and runs with ``sandbox.call``."""
    import logging

    from gae_sandbox.restricted import OutsideSandboxRefused

    target = tmp_path / "written.txt"
    namespace = sandbox.exec(  # (logging is handed in: restricted code may not import it)
        "def double(x):\n"
        "    'a docstring stays the docstring'\n"
        "    return 2 * x\n"
        "triple = lambda x: 3 * x\n"
        "class Handler(logging.Handler):\n"
        "    def emit(self, record, make=logging.FileHandler):\n"
        "        make(target)\n"
        "handler = Handler()\n",
        {"target": str(target), "logging": logging})
    assert namespace["double"].__doc__ == "a docstring stays the docstring"
    for function in (namespace["double"], namespace["triple"]):
        with pytest.raises(OutsideSandboxRefused):
            function(1)
    assert sandbox.call(namespace["double"], 2) == 4
    assert sandbox.call(namespace["triple"], 2) == 6
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m", None, None)
    with pytest.raises(OutsideSandboxRefused):
        namespace["handler"].emit(record)
    assert not target.exists()


def test_generator_of_restricted_code_resumed_outside_is_refused(sandbox: Sandbox) -> None:
    """A generator started in the request and resumed by host code after it: the code after
    the ``yield`` would run outside any sandbox; ``yield`` and ``yield from`` still work."""
    from gae_sandbox.restricted import OutsideSandboxRefused

    namespace = sandbox.exec(
        "def steps():\n"
        "    received = yield 1\n"
        "    yield received\n"
        "    yield from [3, 4]\n"
        "started = steps()\n"
        "first = next(started)\n"
        "second = started.send(2)\n"
        "rest = list(steps())\n")
    assert (namespace["first"], namespace["second"], namespace["rest"]) == (1, 2, [1, None, 3, 4])
    with pytest.raises(OutsideSandboxRefused):
        next(namespace["started"])
