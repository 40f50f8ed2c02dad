"""The import gate: what sandboxed code may import, through every import route.

Refusals are checked both for a fresh import (the module is not in ``sys.modules``) and for a
module the host imported first (only ``builtins.__import__`` / ``_gcd_import`` see those).
Every test restores ``sys.modules`` and ``sys.path``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gae_sandbox import (
    CExtensionRefused,
    ImportRefused,
    Policy,
    Sandbox,
    SandboxViolation,
    current_sandbox,
)

# --- helpers --------------------------------------------------------------------------------

#: The list a marker module appends its name to when (and only when) it is executed.
MARKER = "gae_sandbox_test_executed"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _covered(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


@contextmanager
def fresh_modules(*roots: str) -> Iterator[None]:
    """Forget ``roots`` and their submodules; put the host's modules back afterwards."""
    saved = {name: mod for name, mod in sys.modules.items() if _covered(name, roots)}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [n for n in sys.modules if _covered(n, roots)]:
            del sys.modules[name]
        sys.modules.update(saved)
        for name, module in saved.items():  # parent packages point at the host's objects
            parent_name, _, child = name.rpartition(".")
            parent = sys.modules.get(parent_name) if parent_name else None
            if parent is not None:
                setattr(parent, child, module)


def import_statement(name: str, attr: str) -> Any:
    namespace: dict[str, Any] = {"__name__": "app_code"}
    exec(f"import {name}", namespace)
    return namespace[name.partition(".")[0]]


def from_import(name: str, attr: str) -> Any:
    namespace: dict[str, Any] = {"__name__": "app_code"}
    exec(f"from {name} import {attr}", namespace)
    return namespace[attr]


#: Every route into the import system an app can take.
ROUTES: dict[str, Callable[[str, str], Any]] = {
    "import": import_statement,
    "from-import": from_import,
    "__import__": lambda name, attr: __import__(name),
    "import_module": lambda name, attr: importlib.import_module(name),
    "importlib.__import__": lambda name, attr: importlib.__import__(name),
}

THIRD_PARTY = "<third-party>"

#: (module, an attribute for ``from m import a``, the Policy field, refusal class, rule text)
REFUSED = [
    pytest.param("ctypes", "CDLL", "blocked_modules", ImportRefused, "blocked_modules",
                 id="ctypes"),
    pytest.param("mmap", "mmap", "blocked_modules", ImportRefused, "blocked_modules",
                 id="mmap"),
    pytest.param("multiprocessing", "Process", "blocked_modules", ImportRefused,
                 "blocked_modules", id="multiprocessing"),
    pytest.param("_socket", "socket", "allowed_c_extensions", CExtensionRefused,
                 "module that wraps it", id="_socket"),
    pytest.param("posix", "getpid", "allowed_c_extensions", CExtensionRefused,
                 "module that wraps it", id="posix"),
    pytest.param("ssl", "SSLContext", "allowed_c_extensions", CExtensionRefused,
                 "libraries: - name: ssl", id="ssl"),
    pytest.param(THIRD_PARTY, "VALUE", "allowed_modules", ImportRefused,
                 "third-party module outside the allowed modules", id="third-party"),
]


def assert_refusal(exc: BaseException, name: str, setting: str,
                   cls: type[ImportRefused]) -> None:
    assert isinstance(exc, ImportError)
    assert isinstance(exc, SandboxViolation)
    assert isinstance(exc, ImportRefused)
    assert isinstance(exc, cls)
    if cls is ImportRefused:
        assert not isinstance(exc, CExtensionRefused)
        assert exc.kind == "import"
    else:
        assert exc.kind == "c_extension"
    assert exc.target == name
    assert exc.name == name
    assert exc.setting == setting
    message = str(exc)
    assert f" {name}:" in message
    assert exc.rule in message
    assert f"Policy.{setting}" in message


def write_module(folder: Path, name: str, body: str = "VALUE = 42\n") -> Path:
    """A module that appends its name to ``sys.<MARKER>`` (if present) when executed."""
    path = folder / f"{name}.py"
    path.write_text(
        "import sys\n"
        f"getattr(sys, {MARKER!r}, []).append(__name__)\n" + body
    )
    return path


def write_package(folder: Path, name: str) -> Path:
    """A pure-Python package with a submodule and relative imports."""
    package = folder / name
    package.mkdir()
    (package / "__init__.py").write_text("from .core import VALUE\nfrom . import util\n")
    (package / "core.py").write_text("VALUE = 42\n")
    (package / "util.py").write_text("from .core import VALUE\n\ndef twice():\n"
                                     "    return 2 * VALUE\n")
    return package


@pytest.fixture
def executed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the marker modules that were executed."""
    ran: list[str] = []
    monkeypatch.setattr(sys, MARKER, ran, raising=False)
    return ran


@pytest.fixture
def site_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder outside app_root on sys.path, like site-packages; its modules are forgotten
    afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    before = set(sys.modules)
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        sys.path_importer_cache.pop(str(folder), None)
        for name in set(sys.modules) - before:
            filename = getattr(sys.modules.get(name), "__file__", None) or ""
            if str(filename).startswith(str(folder) + os.sep):
                del sys.modules[name]


# --- refused imports ------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("state", ["fresh", "host-imported"])
@pytest.mark.parametrize(("module", "attr", "setting", "cls", "rule"), REFUSED)
def test_refused_import(policy: Policy, site_dir: Path, module: str, attr: str, setting: str,
                        cls: type[ImportRefused], rule: str, state: str, route: str) -> None:
    if module == THIRD_PARTY:
        module = unique("gae_thirdparty")
        write_module(site_dir, module)
        policy = policy.replace(allowed_modules=("somepkg",))
    with fresh_modules(module):
        if state == "host-imported":
            host_module = importlib.import_module(module)
            assert sys.modules[module] is host_module
        with Sandbox(policy) as sb:
            with pytest.raises(ImportError) as info:
                ROUTES[route](module, attr)
        assert_refusal(info.value, module, setting, cls)
        assert rule in info.value.rule
        assert [(v.kind, v.target, v.enforced) for v in sb.violations] == [
            (info.value.kind, module, True)
        ]
        if state == "fresh":
            assert module not in sys.modules
        else:
            assert sys.modules[module] is host_module


def test_refused_import_statements(policy: Policy) -> None:
    """The literal statements, for readers who do not trust ``exec``."""
    importlib.import_module("ctypes")  # host-imported first
    with Sandbox(policy):
        with pytest.raises(ImportRefused, match="ctypes"):
            import ctypes  # noqa: F401
        with pytest.raises(ImportRefused, match="mmap"):
            from mmap import mmap  # noqa: F401
        with pytest.raises(CExtensionRefused, match="_socket"):
            import _socket  # noqa: F401
        with pytest.raises(CExtensionRefused, match="posix"):
            from posix import getpid  # noqa: F401
        with pytest.raises(ImportRefused, match="multiprocessing"):
            import multiprocessing.pool  # noqa: F401


def test_blocked_parent_refuses_submodules(policy: Policy) -> None:
    narrowed = policy.replace(blocked_modules=(*policy.blocked_modules, "email.mime"))
    with Sandbox(narrowed):
        for load in (lambda: importlib.import_module("email.mime.text"),
                     lambda: import_statement("email.mime.text", ""),
                     lambda: from_import("email", "mime"),
                     lambda: from_import("email.mime.text", "MIMEText")):
            with pytest.raises(ImportRefused) as info:
                load()
            assert info.value.target == "email.mime"
            assert info.value.setting == "blocked_modules"
        with fresh_modules("email.mime"), pytest.raises(ImportRefused, match="email.mime"):
            importlib.import_module("email.mime.text")
        assert importlib.import_module("email.message").__name__ == "email.message"


def test_refused_fresh_import_executes_nothing(policy: Policy, site_dir: Path,
                                               executed: list[str]) -> None:
    by_name = unique("gae_blocked")
    third_party = unique("gae_thirdparty")
    write_module(site_dir, by_name)
    write_module(site_dir, third_party)
    blocking = policy.replace(blocked_modules=(*policy.blocked_modules, by_name),
                              allowed_modules=("somepkg",))
    with Sandbox(blocking):
        with pytest.raises(ImportRefused, match=by_name):
            importlib.import_module(by_name)
        with pytest.raises(ImportRefused, match=third_party):
            __import__(third_party)
    assert executed == []
    assert by_name not in sys.modules and third_party not in sys.modules
    # the control: the same modules do run when imported outside the sandbox
    importlib.import_module(by_name)
    importlib.import_module(third_party)
    assert executed == [by_name, third_party]


def test_private_c_module_with_forged_globals_dict_is_refused(policy: Policy) -> None:
    with Sandbox(policy):
        with pytest.raises(CExtensionRefused):
            __import__("_socket", {"__name__": "socket"})


# --- allowed imports ------------------------------------------------------------------------

#: module -> (an attribute for ``from m import a``, a check that the module works)
STDLIB_ALLOWED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "json": ("dumps", lambda m: m.loads(m.dumps({"a": [1]})) == {"a": [1]}),
    "email.mime.text": ("MIMEText",
                        lambda m: m.MIMEText("hi")["Content-Type"].startswith("text/plain")),
    "decimal": ("Decimal", lambda m: m.Decimal("1.1") + m.Decimal("2.2") == m.Decimal("3.3")),
    "socket": ("socket", lambda m: isinstance(m.socket, type) and m.AF_INET > 0),
    "asyncio": ("run", lambda m: callable(m.run) and isinstance(m.Queue, type)),
}


@pytest.mark.parametrize("state", ["cached", "fresh"])
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("module", STDLIB_ALLOWED)
def test_allowed_stdlib_modules(policy: Policy, module: str, route: str, state: str) -> None:
    attr, works = STDLIB_ALLOWED[module]
    importlib.import_module(module)
    with fresh_modules(module) if state == "fresh" else fresh_modules():
        host_module = sys.modules.get(module)
        with Sandbox(policy) as sb:
            loaded = ROUTES[route](module, attr)
            imported = sys.modules[module]
            assert works(imported)
            if route == "from-import":
                assert loaded is getattr(imported, attr)
        # asyncio probes for ssl and falls back without it: that refusal is the one record
        assert [v.target for v in sb.violations if v.target != "ssl"] == []
        if state == "fresh":
            assert host_module is None
            assert importlib.import_module(module) is imported


def test_allowed_import_statements(policy: Policy) -> None:
    with Sandbox(policy) as sb:
        import asyncio
        import decimal
        import email.mime.text
        import json
        import socket
        from email.mime.text import MIMEText

        assert json.dumps([1]) == "[1]"
        assert email.mime.text.MIMEText is MIMEText
        assert decimal.Decimal(1) == 1
        assert socket.socket.__module__ == "socket"
        assert asyncio.iscoroutinefunction(asyncio.sleep)
    assert sb.violations == []


def test_stdlib_module_imports_its_private_c_module_fresh(policy: Policy) -> None:
    host_socket, host_c = sys.modules["socket"], importlib.import_module("_socket")
    with fresh_modules("socket", "_socket"):
        with Sandbox(policy) as sb:
            import socket

            assert socket is not host_socket
            assert sys.modules["_socket"] is not host_c  # socket.py loaded it again
            assert socket.socket.__bases__[0] is sys.modules["_socket"].socket
            with pytest.raises(CExtensionRefused):
                import _socket  # noqa: F401  # the app itself still may not
        assert [v.target for v in sb.violations] == ["_socket"]
    assert sys.modules["socket"] is host_socket and sys.modules["_socket"] is host_c


def test_app_modules_and_packages(policy: Policy, app_on_path: Path) -> None:
    (app_on_path / "app_main.py").write_text("import pkg.helpers\nRESULT = pkg.helpers.double(4)\n")
    (app_on_path / "pkg" / "rel.py").write_text(
        "from . import helpers\nfrom .helpers import double\nVALUE = double(helpers.double(5))\n"
    )
    sub = app_on_path / "pkg" / "sub"
    sub.mkdir()
    (sub / "__init__.py").write_text("from ..helpers import double\nfrom .. import NAME\n")
    (sub / "leaf.py").write_text("from . import double\nLEAF = double(1)\n")
    with Sandbox(policy) as sb:
        import pkg.helpers

        assert pkg.helpers.double(3) == 6
        assert importlib.import_module("app_main").RESULT == 8
        assert importlib.import_module("pkg.rel").VALUE == 20
        assert importlib.import_module(".sub.leaf", "pkg").LEAF == 2
        assert sys.modules["pkg.sub"].NAME == "pkg"
        from pkg import helpers

        assert helpers is pkg.helpers
    assert sb.violations == []
    assert pkg.helpers.__file__ == str(app_on_path / "pkg" / "helpers.py")


def test_app_modules_allowed_even_with_narrow_allowed_modules(policy: Policy,
                                                              app_on_path: Path) -> None:
    with Sandbox(policy.replace(allowed_modules=("somepkg",))) as sb:
        assert importlib.import_module("pkg.helpers").double(2) == 4
    assert sb.violations == []


@pytest.mark.parametrize("allowed", [("*",), ("{name}",), ("gae_purelib_*",)])
def test_pure_python_package_outside_app_root(policy: Policy, site_dir: Path,
                                              app_root: Path, allowed: tuple[str, ...]) -> None:
    name = unique("gae_purelib")
    write_package(site_dir, name)
    narrowed = policy.replace(allowed_modules=tuple(a.format(name=name) for a in allowed))
    with Sandbox(narrowed) as sb:
        package = importlib.import_module(name)
        assert package.VALUE == 42
        assert package.util.twice() == 84
        assert importlib.import_module(f"{name}.core").VALUE == 42
        assert from_import(name, "util") is package.util
    assert sb.violations == []
    assert not Path(package.__file__).is_relative_to(app_root)


def test_third_party_submodule_refused_with_its_package(policy: Policy, site_dir: Path) -> None:
    name = unique("gae_purelib")
    write_package(site_dir, name)
    importlib.import_module(name)  # host-imported, with its submodules
    with Sandbox(policy.replace(allowed_modules=("somepkg",))):
        with pytest.raises(ImportRefused) as info:
            importlib.import_module(f"{name}.core")
    assert info.value.target == name  # the parent package is judged first
    assert info.value.setting == "allowed_modules"


# --- C extensions ---------------------------------------------------------------------------

C_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *answer(PyObject *self, PyObject *unused) { return PyLong_FromLong(42); }

static PyMethodDef methods[] = {
    {"answer", answer, METH_NOARGS, "Return 42."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "%(name)s", NULL, -1, methods};

PyMODINIT_FUNC PyInit_%(name)s(void) {
    PySys_SetObject("gae_cext_ran_%(name)s", Py_True);  /* shows the module was executed */
    return PyModule_Create(&moddef);
}
"""


def ran(name: str) -> bool:
    """Whether the C extension's ``PyInit`` was executed."""
    return hasattr(sys, f"gae_cext_ran_{name}")


@pytest.fixture
def build_extension(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Compile a real single-phase C extension into a folder; return its module name."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot compile a real C extension")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        pytest.skip(f"Python headers are not installed (no Python.h in {include})")
    built: list[str] = []

    def build(folder: Path) -> str:
        name = unique("gae_cext")
        source = tmp_path / f"{name}.c"
        source.write_text(C_SOURCE % {"name": name})
        target = folder / (name + EXTENSION_SUFFIXES[0])
        subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-I", include, "-o", str(target),
                        str(source)], check=True, capture_output=True, timeout=60)
        built.append(name)
        return name

    try:
        yield build
    finally:
        for name in built:
            sys.modules.pop(name, None)
            if ran(name):
                delattr(sys, f"gae_cext_ran_{name}")


@pytest.mark.parametrize("route", ROUTES)
def test_c_extension_refused_fresh(policy: Policy, site_dir: Path,
                                   build_extension: Callable[[Path], str], route: str) -> None:
    name = build_extension(site_dir)
    with Sandbox(policy) as sb:
        with pytest.raises(CExtensionRefused) as info:
            ROUTES[route](name, "answer")
    assert_refusal(info.value, name, "allowed_c_extensions", CExtensionRefused)
    assert "C extension" in info.value.rule
    assert not ran(name) and name not in sys.modules
    assert [(v.kind, v.target) for v in sb.violations] == [("c_extension", name)]
    # the control: it is a working extension, outside the sandbox
    assert importlib.import_module(name).answer() == 42
    assert ran(name)


@pytest.mark.parametrize("route", ROUTES)
def test_c_extension_refused_when_host_imported_first(
    policy: Policy, site_dir: Path, build_extension: Callable[[Path], str], route: str
) -> None:
    name = build_extension(site_dir)
    host_module = importlib.import_module(name)
    assert host_module.answer() == 42
    with Sandbox(policy):
        with pytest.raises(CExtensionRefused) as info:
            ROUTES[route](name, "answer")
    assert_refusal(info.value, name, "allowed_c_extensions", CExtensionRefused)
    assert sys.modules[name] is host_module


@pytest.mark.parametrize("pattern", ["{name}", "gae_cext_*"])
@pytest.mark.parametrize("state", ["fresh", "host-imported"])
def test_c_extension_allowed_by_policy(policy: Policy, site_dir: Path,
                                       build_extension: Callable[[Path], str], state: str,
                                       pattern: str) -> None:
    name = build_extension(site_dir)
    if state == "host-imported":
        importlib.import_module(name)
    allowing = policy.replace(allowed_c_extensions=(pattern.format(name=name),))
    with Sandbox(allowing) as sb:
        module = importlib.import_module(name)
        assert module.answer() == 42
        assert from_import(name, "answer")() == 42
    assert sb.violations == []
    assert ran(name)


def test_c_extension_inside_app_root_refused(policy: Policy, app_on_path: Path,
                                             build_extension: Callable[[Path], str]) -> None:
    fresh_name = build_extension(app_on_path)
    host_name = build_extension(app_on_path)
    importlib.import_module(host_name)
    with Sandbox(policy):
        for name in (fresh_name, host_name):
            with pytest.raises(CExtensionRefused) as info:
                importlib.import_module(name)
            assert_refusal(info.value, name, "allowed_c_extensions", CExtensionRefused)
    assert not ran(fresh_name)
    with Sandbox(policy.replace(allowed_c_extensions=(fresh_name,))):
        assert importlib.import_module(fresh_name).answer() == 42


def test_c_extension_nested_sandbox_does_not_widen(policy: Policy, site_dir: Path,
                                                   build_extension: Callable[[Path], str]
                                                   ) -> None:
    name = build_extension(site_dir)
    wider = policy.replace(allowed_c_extensions=(name,))
    with Sandbox(policy) as outer:
        with Sandbox(wider):
            with pytest.raises(CExtensionRefused):
                importlib.import_module(name)
    assert not ran(name)
    assert [v.target for v in outer.violations] == [name]


RUNTIME_C = {
    "math": lambda m: m.sqrt(16) == 4.0,
    "_json": lambda m: m.encode_basestring_ascii("é") == '"\\u00e9"',
    "zlib": lambda m: m.decompress(m.compress(b"data")) == b"data",
    "array": lambda m: m.array("i", [1, 2]).tolist() == [1, 2],
    "unicodedata": lambda m: m.name("A") == "LATIN CAPITAL LETTER A",
}


@pytest.mark.parametrize("state", ["cached", "fresh"])
@pytest.mark.parametrize("module", RUNTIME_C)
def test_runtime_c_modules_are_allowed(policy: Policy, module: str, state: str) -> None:
    importlib.import_module(module)
    with fresh_modules(module) if state == "fresh" else fresh_modules():
        with Sandbox(policy) as sb:
            imported = __import__(module)
            assert RUNTIME_C[module](imported)
            assert RUNTIME_C[module](importlib.import_module(module))
        assert sb.violations == []


@pytest.mark.parametrize("state", ["fresh", "host-imported"])
def test_allowed_c_extensions_does_not_override_blocked_modules(policy: Policy,
                                                                state: str) -> None:
    with fresh_modules("mmap"):
        if state == "host-imported":
            importlib.import_module("mmap")
        with Sandbox(policy.replace(allowed_c_extensions=("mmap",))):
            with pytest.raises(ImportRefused) as info:
                importlib.import_module("mmap")
        assert_refusal(info.value, "mmap", "blocked_modules", ImportRefused)


# --- report mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "kind", "setting"), [
    ("_socket", "c_extension", "allowed_c_extensions"),
    ("ctypes", "import", "blocked_modules"),
])
def test_report_mode_records_and_lets_through(policy: Policy, module: str, kind: str,
                                              setting: str) -> None:
    host_module = importlib.import_module(module)
    with Sandbox(policy.replace(mode="report")) as sb:
        line = sys._getframe().f_lineno + 1
        imported = importlib.import_module(module)
    assert imported is host_module
    [violation] = sb.violations
    assert (violation.kind, violation.target, violation.setting) == (kind, module, setting)
    assert violation.location == f"{__file__}:{line}"
    assert violation.count == 1
    assert violation.enforced is False
    assert module in violation.message and f"Policy.{setting}" in violation.message


def test_report_mode_same_line_twice_counts_two(policy: Policy) -> None:
    importlib.import_module("_socket")
    with Sandbox(policy.replace(mode="report")) as sb:
        line = sys._getframe().f_lineno + 2
        for _ in range(2):
            import _socket  # noqa: F401
        import _socket  # noqa: F401,F811  # a second line: a second record
    assert [(v.target, v.location, v.count) for v in sb.violations] == [
        ("_socket", f"{__file__}:{line}", 2),
        ("_socket", f"{__file__}:{line + 1}", 1),
    ]


def test_report_mode_fresh_third_party_runs_and_records(policy: Policy, site_dir: Path,
                                                        executed: list[str]) -> None:
    name = unique("gae_thirdparty")
    write_module(site_dir, name)
    with Sandbox(policy.replace(mode="report", allowed_modules=("somepkg",))) as sb:
        line = sys._getframe().f_lineno + 1
        module = importlib.import_module(name)
    assert module.VALUE == 42 and executed == [name]
    assert [(v.kind, v.target, v.location, v.count, v.setting) for v in sb.violations] == [
        ("import", name, f"{__file__}:{line}", 1, "allowed_modules")
    ]


def test_report_mode_location_is_the_app_line(policy: Policy, app_on_path: Path) -> None:
    (app_on_path / "uses_socket.py").write_text("import json\nimport _socket\n")
    importlib.import_module("_socket")
    with Sandbox(policy.replace(mode="report")) as sb:
        importlib.import_module("uses_socket")
    assert [(v.target, v.location) for v in sb.violations] == [
        ("_socket", f"{app_on_path / 'uses_socket.py'}:2")
    ]


def test_report_mode_c_extension_host_imported(policy: Policy, site_dir: Path,
                                               build_extension: Callable[[Path], str]) -> None:
    name = build_extension(site_dir)
    importlib.import_module(name)
    with Sandbox(policy.replace(mode="report")) as sb:
        line = sys._getframe().f_lineno + 1
        assert importlib.import_module(name).answer() == 42
    assert [(v.kind, v.target, v.location, v.count) for v in sb.violations] == [
        ("c_extension", name, f"{__file__}:{line}", 1)
    ]


def test_report_mode_fresh_blocked_import_counts_once(policy: Policy, site_dir: Path) -> None:
    name = unique("gae_blocked")
    write_module(site_dir, name)
    reporting = policy.replace(mode="report",
                               blocked_modules=(*policy.blocked_modules, name))
    with Sandbox(reporting) as sb:
        importlib.import_module(name)
    assert [(v.target, v.count) for v in sb.violations] == [(name, 1)]


def test_report_mode_fresh_c_extension_counts_once(policy: Policy, site_dir: Path,
                                                   build_extension: Callable[[Path], str]
                                                   ) -> None:
    name = build_extension(site_dir)
    with Sandbox(policy.replace(mode="report")) as sb:
        assert importlib.import_module(name).answer() == 42
    assert [(v.kind, v.target, v.count) for v in sb.violations] == [("c_extension", name, 1)]


# --- nesting --------------------------------------------------------------------------------


def test_nested_wider_policy_does_not_widen(policy: Policy, site_dir: Path) -> None:
    name = unique("gae_thirdparty")
    write_module(site_dir, name)
    outer_policy = policy.replace(allowed_modules=("somepkg",))
    wider = policy.replace(blocked_modules=(), allowed_modules=("*",))
    with Sandbox(outer_policy) as outer:
        with Sandbox(wider) as inner:
            assert current_sandbox() == inner
            with pytest.raises(ImportRefused) as blocked:
                importlib.import_module("mmap")
            with pytest.raises(ImportRefused) as third:
                __import__(name)
        assert current_sandbox() == outer
    assert blocked.value.setting == "blocked_modules"
    assert third.value.setting == "allowed_modules"
    assert {v.target for v in outer.violations} == {"mmap", name}
    assert name not in sys.modules


def test_nested_narrower_policy_narrows_then_ends(policy: Policy) -> None:
    narrower = policy.replace(blocked_modules=(*policy.blocked_modules, "json"))
    with Sandbox(policy) as outer:
        with Sandbox(narrower):
            with pytest.raises(ImportRefused, match="json"):
                import json  # noqa: F401
        import json

        assert json.loads("1") == 1
    assert [v.target for v in outer.violations] == []


# --- outside any sandbox --------------------------------------------------------------------


@pytest.mark.parametrize(("module", "attr"), [
    ("ctypes", "CDLL"), ("mmap", "mmap"), ("multiprocessing", "Process"),
    ("_socket", "socket"), ("posix", "getpid"), ("ssl", "SSLContext"),
])
def test_outside_sandbox_before_and_after(policy: Policy, module: str, attr: str) -> None:
    assert current_sandbox() is None
    for route in ROUTES.values():
        loaded = route(module, attr)
        assert isinstance(loaded, ModuleType) or callable(loaded)
    with Sandbox(policy):
        with pytest.raises(ImportRefused):
            importlib.import_module(module)
    assert current_sandbox() is None
    for route in ROUTES.values():
        loaded = route(module, attr)
        assert isinstance(loaded, ModuleType) or callable(loaded)
    with fresh_modules(module):  # a fresh import is the host's business too
        assert importlib.import_module(module).__name__ == module


def test_outside_sandbox_third_party_and_c_extension(policy: Policy, site_dir: Path,
                                                     build_extension: Callable[[Path], str],
                                                     executed: list[str]) -> None:
    pure = unique("gae_thirdparty")
    write_module(site_dir, pure)
    name = build_extension(site_dir)
    narrow = policy.replace(allowed_modules=("somepkg",))
    with Sandbox(narrow), pytest.raises(ImportRefused):
        importlib.import_module(pure)
    with Sandbox(narrow), pytest.raises(CExtensionRefused):
        importlib.import_module(name)
    assert importlib.import_module(pure).VALUE == 42
    assert importlib.import_module(name).answer() == 42
    assert executed == [pure]


# --- the sandbox's own modules and reloads (escape suite, issue 5) ---------------------------


@pytest.mark.parametrize("statement", [
    "import gae_sandbox.audit",
    "from gae_sandbox.context import _ACTIVE",
    "importlib.import_module('gae_sandbox.patches')",
])
def test_sandbox_internals_refused_to_app_code(policy: Policy, statement: str) -> None:
    """Their state (the audit handlers, the ContextVar) is the sandbox's: not importable by
    the app; the package (the public API) and its errors are."""
    with Sandbox(policy):
        with pytest.raises(ImportRefused, match="the sandbox's own modules"):
            exec(statement, {"importlib": importlib})  # noqa: S102
        exec("import gae_sandbox\nimport gae_sandbox.errors\n"  # noqa: S102
             "from gae_sandbox import start_background_thread\n", {})


def test_reload_of_a_shared_module_refused(policy: Policy, app_on_path: Path) -> None:
    """Reloading ``signal`` or ``os`` would re-run it for the whole process and undo the
    sandbox's patches in it; the app's own modules may be reloaded."""
    import json
    import signal

    dumps, handler = json.dumps, signal.signal
    with Sandbox(policy):
        for module in (json, signal):
            with pytest.raises(ImportRefused, match="reload"):
                importlib.reload(module)
        helpers = importlib.import_module("pkg.helpers")
        assert importlib.reload(helpers) is helpers
    assert json.dumps is dumps and signal.signal is handler


# --- decisions made once ----------------------------------------------------------------------


class _Sly(str):
    """A module name whose own comparisons lie: the gate must judge the exact characters."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("json")

    def startswith(self, *args: Any) -> bool:  # type: ignore[override]
        return True


PATTERN_LISTS = [
    ("*",), (), ("flask",), ("flask", "jinja2.ext"), ("_codecs_*", "numpy"), ("a?c", "x[yz]"),
    "blocked by default", ("pkg", "pkg.sub"),
]
NAMES = ["flask", "flask.app", "flaskx", "jinja2", "jinja2.ext", "jinja2.ext.more", "jinja2.e",
         "_codecs_jp", "_codecs", "numpy.linalg", "abc", "axc", "abcd", "xy", "xz", "xa",
         "ctypes", "ctypes.util", "_ctypes", "os", "pkg..x", "pkg...sub", "pkg..sub.more",
         "", ".", "a.b.c"]


@pytest.mark.parametrize("patterns", PATTERN_LISTS)
def test_compiled_module_patterns_answer_as_module_matches(
        patterns: Any, app_root: Path) -> None:
    from gae_sandbox import imports
    from gae_sandbox.policy import module_matches

    if patterns == "blocked by default":
        patterns = Policy.python27(app_root=app_root).blocked_modules
    policy = Policy.python27(app_root=app_root, allowed_modules=patterns)
    for name in NAMES:
        assert imports._matches(policy, "allowed_modules", name) == module_matches(
            name, patterns), name
    # judged by its exact characters, not by what a str subclass says of itself
    if patterns and "*" not in patterns:
        assert not imports._matches(policy, "allowed_modules", _Sly("not.listed.anywhere"))


def test_a_parent_allowed_by_one_policy_is_judged_again_by_another(
        policy: Policy, site_dir: Path) -> None:
    """Parents are judged once per policy (the decision is the policy's), never shared."""
    name = unique("gae_purelib")
    write_package(site_dir, name)
    importlib.import_module(name)
    with Sandbox(policy):
        importlib.import_module(f"{name}.core")  # allowed_modules=("*",): parent decided
    with Sandbox(policy.replace(allowed_modules=("somepkg",))):
        with pytest.raises(ImportRefused) as info:
            importlib.import_module(f"{name}.core")
    assert info.value.target == name


@pytest.mark.parametrize("route", ["__import__", "import_module", "import", "from-import"])
def test_a_wrapped_c_module_stays_refused_to_the_app_after_its_wrapper_loaded_it(
        policy: Policy, route: str) -> None:
    """``socket``'s own import of ``_socket`` is allowed by who imports; the app's import of
    the same module, judged after, still needs that trust (what is decided without looking
    for the importer is only what an untrusted importer gets too)."""
    with fresh_modules("socket", "_socket"), Sandbox(policy):
        importlib.import_module("socket")  # socket.py imports _socket
        assert "_socket" in sys.modules
        for _ in range(2):  # the second time from the decisions kept
            with pytest.raises(CExtensionRefused):
                ROUTES[route]("_socket", "socket")
        importlib.import_module("socket")


def test_a_module_file_is_judged_from_where_it_was_loaded(
        policy: Policy, app_on_path: Path, outside: Path) -> None:
    """A module's file is resolved when the module is judged before loading; a symlink
    moved after loading does not change where the loaded module came from, and a fresh
    import through the moved link is judged from where it leads now."""
    (outside / "elsewhere").mkdir()
    (outside / "elsewhere" / "third.py").write_text("VALUE = 'outside'\n")
    (app_on_path / "real").mkdir()
    (app_on_path / "real" / "third.py").write_text("VALUE = 'app'\n")
    link = app_on_path / "linked"
    link.symlink_to(app_on_path / "real", target_is_directory=True)
    sandbox = Sandbox(policy.replace(allowed_modules=("somepkg",)))
    sys.path.insert(0, str(link))
    try:
        with fresh_modules("third"):
            assert sandbox.call(importlib.import_module, "third").VALUE == "app"  # the app's
            link.unlink()
            link.symlink_to(outside / "elsewhere", target_is_directory=True)
            assert sandbox.call(importlib.import_module, "third").VALUE == "app"
            del sys.modules["third"]
            importlib.invalidate_caches()
            with pytest.raises(ImportRefused):  # third-party now, outside allowed_modules
                sandbox.call(importlib.import_module, "third")
    finally:
        sys.path.remove(str(link))


# --- a refused C extension with its pure-Python source beside it ----------------------------


def test_a_refused_c_extension_falls_back_to_the_python_file_beside_it(
        policy: Policy, app_on_path: Path) -> None:
    """Cython and mypyc packages ship ``name.py`` beside ``name.cpython-*.so`` (SQLAlchemy
    2.1, chardet): the runtime refused the C file and ran the source; so does the gate. With
    no source beside it, the C extension is refused as before."""
    from importlib.machinery import EXTENSION_SUFFIXES

    suffix = EXTENSION_SUFFIXES[0]
    package = app_on_path / "compiled"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for stem, folder in (("speedy", package), ("__init__", package / "sub"),
                         ("only_c", package)):
        (folder / f"{stem}{suffix}").write_bytes(b"not an ELF file: never loaded")
    (package / "speedy.py").write_text("VALUE = 'pure speedy'\n")
    (package / "sub" / "__init__.py").write_text("VALUE = 'pure sub'\n")
    importlib.invalidate_caches()
    with fresh_modules("compiled"):
        # control: plain Python's import system picks the C files
        assert importlib.util.find_spec("compiled.speedy").origin.endswith(suffix)
        with Sandbox(policy):
            import compiled.speedy
            import compiled.sub

            assert compiled.speedy.VALUE == "pure speedy"
            assert compiled.sub.VALUE == "pure sub"
            assert compiled.sub.__path__ == [str(package / "sub")]
            with pytest.raises(CExtensionRefused):
                import compiled.only_c  # noqa: F401


def test_module_file_judged_where_its_folder_leads_now(policy: Policy, site_dir: Path,
                                                       app_root: Path) -> None:
    """A module's file is judged from where its folder leads when it is loaded: the folder's
    remembered real path is used again only while the folder is the same one. Here a
    ``sys.path`` folder is a symlink, first to a folder outside the app (the module is
    allowed), then to one of the app's ``skip_files`` folders: the second import is refused."""
    name = unique("gae_moved")
    outside = site_dir.parent / "outside_lib"
    hidden = app_root / "hidden"
    for folder in (outside, hidden):
        folder.mkdir()
        (folder / f"{name}.py").write_text("VALUE = 1\n")
    link = site_dir.parent / "linked_lib"
    link.symlink_to(outside)
    narrowed = policy.replace(allowed_modules=(name,), skip_files=(r"^hidden/.*",))
    sys.path.insert(0, str(link))
    try:
        with Sandbox(narrowed) as sb:
            assert importlib.import_module(name).VALUE == 1
        assert sb.violations == []
        del sys.modules[name]
        link.unlink()
        link.symlink_to(hidden)  # the same spelling now leads into the skip_files folder
        sys.path_importer_cache.pop(str(link), None)
        with Sandbox(narrowed), pytest.raises(ImportRefused, match="skip_files"):
            importlib.import_module(name)
        # the control: the folder's real path really changed
        assert Path(os.path.realpath(link / f"{name}.py")).is_relative_to(app_root)
    finally:
        sys.path.remove(str(link))
        sys.path_importer_cache.pop(str(link), None)
        sys.modules.pop(name, None)


def test_types_may_reach_the_socket_module_it_names_a_type_from(policy: Policy) -> None:
    """3.13's ``types.CapsuleType`` is found lazily as ``type(_socket.CAPI)`` (so
    ``typing_extensions``, and bs4 with it, read it at import); app code's own
    ``import _socket`` stays refused, and ``pwd`` (wrapped by no module) says so."""
    import types

    with Sandbox(policy):
        if sys.version_info >= (3, 13):
            assert types.CapsuleType.__name__ == "PyCapsule"
        with pytest.raises(CExtensionRefused, match="through socket or types"):
            importlib.import_module("_socket")
        with pytest.raises(CExtensionRefused, match="does not offer this standard-library"):
            importlib.import_module("pwd")


def test_the_sdks_bundled_services_are_missing_with_a_reason(policy: Policy) -> None:
    """``google.appengine`` (ndb, users, memcache) is the SDK's, not the sandbox's: the
    import fails as a missing module, saying so (unless a ``google`` package is there)."""
    if importlib.util.find_spec("google") is not None:
        pytest.skip("a google package is installed here")
    with Sandbox(policy), pytest.raises(ModuleNotFoundError, match="bundled services"):
        from google.appengine.ext import ndb  # type: ignore[import-not-found]  # noqa: F401
    with pytest.raises(ModuleNotFoundError) as plain:  # outside: Python's own message
        importlib.import_module("google.appengine.ext")
    assert "bundled services" not in str(plain.value)


def test_a_refused_module_is_a_missing_one_for_optional_imports(policy: Policy) -> None:
    """Libraries guard optional dependencies with ``except ModuleNotFoundError`` (pyjwt,
    sqlalchemy, babel, pandas): on the runtime the module was absent, so a refusal is one
    too, named after the module, with its message."""
    with Sandbox(policy):
        try:
            import ctypes  # noqa: F401
        except ModuleNotFoundError as error:
            assert isinstance(error, ImportRefused) and error.name == "ctypes"
            assert "blocked_modules" in str(error)
        else:
            pytest.fail("ctypes was imported")
