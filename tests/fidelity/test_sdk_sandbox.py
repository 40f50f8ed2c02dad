"""Port of the SDK's ``sandbox_test.py``: libraries, the import hooks (pass-through modules,
path hooks, the loader API, C modules and the runtime's list, libraries' modules, modules only
from files the app may read). See ``conftest.py`` for what is not ported and why."""

from __future__ import annotations

import _thread
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import py_compile
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sdk_helpers import fresh_modules

from gae_sandbox import (
    CExtensionRefused,
    FileReadRefused,
    ImportRefused,
    Policy,
    Sandbox,
    policy_from_app_yaml,
)
from gae_sandbox.runtime import RUNTIME_C_MODULES

APP_YAML = """\
runtime: python27
api_version: 1
threadsafe: true

handlers:
- url: /.*
  script: main.app
"""


def write_app_yaml(root: Path, libraries: list[tuple[str, str]]) -> Path:
    text = APP_YAML
    if libraries:
        text += "\nlibraries:\n" + "".join(
            f"- name: {name}\n  version: \"{version}\"\n" for name, version in libraries)
    (root / "app.yaml").write_text(text)
    (root / "main.py").write_text("def app(environ, start_response):\n    return []\n")
    return root / "app.yaml"


def in_sandbox(policy: Policy, function: Any, *args: Any) -> Any:
    with Sandbox(policy):
        return function(*args)


# --- SandboxTest ---------------------------------------------------------------------------


def test_sandbox_enable_libraries(app_root: Path) -> None:
    """libraries: in app.yaml enable their C modules, in the order listed."""
    path = write_app_yaml(app_root, [("yaml", "5.1"), ("markupsafe", "1.0")])
    policy = policy_from_app_yaml(path, deadline=None)
    assert policy.allowed_c_extensions == ("_yaml", "yaml", "markupsafe")
    with fresh_modules("markupsafe"), Sandbox(policy):
        speedups = importlib.import_module("markupsafe._speedups")
        assert speedups.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_sandbox_enable_libraries_no_libraries(app_root: Path) -> None:
    path_before = list(sys.path)
    policy = policy_from_app_yaml(write_app_yaml(app_root, []), deadline=None)
    assert policy.allowed_c_extensions == ()
    with fresh_modules("markupsafe"), Sandbox(policy):
        with pytest.raises(CExtensionRefused):
            importlib.import_module("markupsafe._speedups")
        assert "markupsafe._speedups" not in sys.modules
    assert sys.path == path_before


# --- ModuleOverrideImportHookTest ------------------------------------------------------------


def test_sandbox_load_builtin_pass_through(policy: Policy) -> None:
    """The runtime's own C modules are the host's module, every function included."""
    module = in_sandbox(policy, importlib.import_module, "_thread")
    assert module is _thread
    assert module.start_new_thread is _thread.start_new_thread
    assert isinstance(module.__doc__, str)
    assert in_sandbox(policy, lambda: _thread.get_ident()) == _thread.get_ident()


class _FabricatingLoader(importlib.abc.Loader):
    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.made_by = f"fake name: {module.__name__}"


class _DummyPathFinder:
    """What a ``sys.path_hooks`` entry gives for the entry ``dummy/path``."""

    provides = True

    def find_spec(self, fullname: str, target: Any = None) -> Any:
        if not self.provides or fullname != "hooked_mod":
            return None
        return importlib.util.spec_from_loader(fullname, _FabricatingLoader())

    def invalidate_caches(self) -> None:
        pass


@pytest.fixture
def dummy_path_hook(app_on_path: Path) -> Iterator[_DummyPathFinder]:
    finder = _DummyPathFinder()

    def hook(entry: str) -> _DummyPathFinder:
        if entry != "dummy/path":
            raise ImportError("not mine")
        return finder

    (app_on_path / "hooked_mod.py").write_text("made_by = 'the app folder'\n")
    sys.path_hooks.insert(0, hook)
    sys.path.insert(0, "dummy/path")
    sys.path_importer_cache.pop("dummy/path", None)
    try:
        yield finder
    finally:
        sys.path.remove("dummy/path")
        sys.path_hooks.remove(hook)
        sys.path_importer_cache.pop("dummy/path", None)
        sys.modules.pop("hooked_mod", None)


def test_sandbox_load_with_path_hook(policy: Policy, dummy_path_hook: _DummyPathFinder) -> None:
    module = in_sandbox(policy, importlib.import_module, "hooked_mod")
    assert module.made_by == "fake name: hooked_mod"


def test_sandbox_load_with_path_hook_cant_find(policy: Policy,
                                                dummy_path_hook: _DummyPathFinder) -> None:
    dummy_path_hook.provides = False  # the next path entry (the app folder) has it
    module = in_sandbox(policy, importlib.import_module, "hooked_mod")
    assert module.made_by == "the app folder"


def test_sandbox_load_without_path_hook(policy: Policy) -> None:
    with fresh_modules("urllib.request"):
        module = in_sandbox(policy, importlib.import_module, "urllib.request")
        assert module.__name__ == "urllib.request"
        assert callable(module.urlopen)
        assert module.__file__ == importlib.util.find_spec("urllib.request").origin


def test_sandbox_load_without_path_hook_not_found(policy: Policy) -> None:
    with pytest.raises(ImportError) as caught:
        in_sandbox(policy, importlib.import_module, "fake_module")
    assert type(caught.value) is ModuleNotFoundError  # not a refusal: it does not exist
    assert "fake_module" not in sys.modules


def test_sandbox_load_already_in_sys_modules(policy: Policy, app_root: Path) -> None:
    module = types.ModuleType("fidelity_cached_module")
    sys.modules["fidelity_cached_module"] = module
    try:
        assert in_sandbox(policy, importlib.import_module, "fidelity_cached_module") is module
    finally:
        del sys.modules["fidelity_cached_module"]


def _spec(name: str) -> Any:
    return importlib.util.find_spec(name)


def test_sandbox_is_package(policy: Policy, app_on_path: Path) -> None:
    spec = in_sandbox(policy, _spec, "pkg")
    assert spec.submodule_search_locations == [str(app_on_path / "pkg")]
    assert spec.loader.is_package("pkg")


def test_sandbox_is_package_standard_lib(policy: Policy) -> None:
    spec = in_sandbox(policy, _spec, "email")
    assert spec.submodule_search_locations and spec.loader.is_package("email")


def test_sandbox_is_package_not_package_standard_lib(policy: Policy) -> None:
    spec = in_sandbox(policy, _spec, "http.client")
    assert spec.submodule_search_locations is None
    assert not spec.loader.is_package("http.client")


def test_sandbox_is_package_not_package(policy: Policy, app_on_path: Path) -> None:
    spec = in_sandbox(policy, _spec, "pkg.helpers")
    assert spec.submodule_search_locations is None
    assert spec.origin == str(app_on_path / "pkg" / "helpers.py")


def test_sandbox_is_package_does_not_exist(policy: Policy) -> None:
    with pytest.raises(ModuleNotFoundError):
        in_sandbox(policy, _spec, "foo.bar")


def test_sandbox_get_source(policy: Policy, app_on_path: Path) -> None:
    source = in_sandbox(policy, lambda: _spec("pkg").loader.get_source("pkg"))
    assert source == (app_on_path / "pkg" / "__init__.py").read_text()


def test_sandbox_get_source_does_not_exist(policy: Policy, app_on_path: Path) -> None:
    loader = _spec("pkg").loader
    with pytest.raises(ImportError):
        in_sandbox(policy, loader.get_source, "foo.bar")


def test_sandbox_get_source_standard_library(policy: Policy) -> None:
    source = in_sandbox(policy, lambda: _spec("json").loader.get_source("json"))
    assert source and source == Path(json.__file__).read_text(encoding="utf-8")


def test_sandbox_get_code(policy: Policy, app_on_path: Path) -> None:
    filename = str(app_on_path / "pkg" / "__init__.py")
    code = in_sandbox(policy, lambda: _spec("pkg").loader.get_code("pkg"))
    assert code == compile(Path(filename).read_text(), filename, "exec", dont_inherit=True)


def test_sandbox_get_code_does_not_exist(policy: Policy, app_on_path: Path) -> None:
    loader = _spec("pkg").loader
    with pytest.raises(ImportError):
        in_sandbox(policy, loader.get_code, "foo.bar")


def test_sandbox_get_code_standard_library(policy: Policy) -> None:
    code = in_sandbox(policy, lambda: _spec("json").loader.get_code("json"))
    assert isinstance(code, types.CodeType) and code.co_filename == json.__file__


def test_sandbox_os_module_policy(policy: Policy, app_root: Path, host_file: Path) -> None:
    """os: the ids answer -1, walk is os.walk over what the app may read; a descriptor the
    host holds cannot be synced (the SDK's fsync stub)."""
    fd = os.open(host_file, os.O_RDWR)
    try:
        with Sandbox(policy):
            pid = os.getpid()
            walked = [(Path(top).name, sorted(files)) for top, _, files in os.walk(app_root)]
            with pytest.raises(OSError):
                os.fsync(fd)
        os.fstat(fd)  # still open: the request did not close it either
    finally:
        os.close(fd)
    assert pid == -1 and os.getpid() > 0
    assert ("app", ["data.txt"]) in walked and ("pkg", ["__init__.py", "helpers.py"]) in walked


# --- CModuleImportHookTest -------------------------------------------------------------------


def test_sandbox_find_module_enabled_module(policy: Policy) -> None:
    enabled = policy.replace(allowed_c_extensions=("markupsafe",))
    with fresh_modules("markupsafe"), Sandbox(enabled):
        package = importlib.import_module("markupsafe")
        speedups = importlib.import_module("markupsafe._speedups")
        assert package.escape("<") == "&lt;"
        assert speedups.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_sandbox_find_module_disabled_module(policy: Policy) -> None:
    other = policy.replace(allowed_c_extensions=("numpy",))
    with fresh_modules("markupsafe"), Sandbox(other):
        package = importlib.import_module("markupsafe")  # pure Python, with a fallback
        with pytest.raises(CExtensionRefused) as caught:
            importlib.import_module("markupsafe._speedups")
        assert package.escape("<") == "&lt;"
        assert "markupsafe._speedups" not in sys.modules
    assert caught.value.setting == "allowed_c_extensions"


def test_sandbox_find_module_not_c_module(policy: Policy) -> None:
    with fresh_modules("http.client"):
        module = in_sandbox(policy, importlib.import_module, "http.client")
        assert module.HTTPConnection


def test_sandbox_find_module_whitelisted(policy: Policy) -> None:
    """Every C module on the runtime's list this interpreter has is importable by the app."""
    before = set(sys.modules)
    imported = []
    try:
        with Sandbox(policy):
            for name in sorted(RUNTIME_C_MODULES):
                if name in sys.modules or name in sys.builtin_module_names or (
                        importlib.util.find_spec(name) is not None):
                    imported.append(importlib.import_module(name).__name__)
    finally:
        for name in set(sys.modules) - before:  # fresh ones: as if never imported
            del sys.modules[name]
    assert len(imported) > 50 and "_json" in imported and "_thread" in imported


def test_sandbox_find_module_not_whitelisted(policy: Policy) -> None:
    """A built-in C module off the runtime's list (``__builtin__`` there; ``pwd`` here)."""
    with pytest.raises(CExtensionRefused) as caught:
        in_sandbox(policy, importlib.import_module, "pwd")
    assert caught.value.setting == "allowed_c_extensions"


def test_sandbox_find_module_not_whitelisted_enabled_via_libaries(policy: Policy) -> None:
    module = in_sandbox(policy.replace(allowed_c_extensions=("pwd",)),
                        importlib.import_module, "pwd")
    assert module is sys.modules["pwd"] and module.getpwuid


def test_sandbox_load_module(policy: Policy) -> None:
    with fresh_modules("markupsafe"), pytest.raises(ImportError) as caught:
        in_sandbox(policy, importlib.import_module, "markupsafe._speedups")
    assert isinstance(caught.value, CExtensionRefused)
    assert caught.value.name == "markupsafe._speedups"


# --- PathOverrideImportHookTest --------------------------------------------------------------


def test_sandbox_package_success(policy: Policy, outside: Path) -> None:
    """A library enabled by name loads from where it is installed (the same file and package
    path as the host's), and its folder is readable (the SDK's extra accessible path)."""
    import markupsafe

    enabled = policy.replace(allowed_c_extensions=("markupsafe",))
    host_file, host_path = markupsafe.__file__, list(markupsafe.__path__)
    with fresh_modules("markupsafe"), Sandbox(enabled):
        module = importlib.import_module("markupsafe")
        with open(module.__file__, encoding="utf-8") as source:
            text = source.read()
        names = os.listdir(module.__path__[0])
        with pytest.raises(FileReadRefused):
            os.listdir(outside)
    assert (module.__file__, list(module.__path__)) == (host_file, host_path)
    assert module is not markupsafe  # loaded anew, from the same files
    assert "def escape" in text and "__init__.py" in names


def test_sandbox_module_success(policy: Policy) -> None:
    with fresh_modules("json"):
        module = in_sandbox(policy, importlib.import_module, "json.decoder")
        assert module.__file__ == str(Path(json.__file__).parent / "decoder.py")
        assert not hasattr(module, "__path__")


def test_sandbox_disabled_modules(policy: Policy) -> None:
    """Enabling one library enables its modules, not another C module nor a lookalike name."""
    enabled = policy.replace(allowed_c_extensions=("markupsafe",))
    with fresh_modules("yaml"), Sandbox(enabled):
        importlib.import_module("yaml")  # pure Python, with a fallback
        with pytest.raises(CExtensionRefused):
            importlib.import_module("yaml._yaml")
        with pytest.raises(CExtensionRefused):
            importlib.import_module("pwd")


def test_sandbox_module_not_installed(policy: Policy) -> None:
    enabled = policy.replace(allowed_c_extensions=("foo_not_installed",))
    with Sandbox(enabled) as box:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("foo_not_installed")
    assert box._layer.readable_roots == Sandbox(policy)._layer.readable_roots


def test_sandbox_import_alread_in_sys_modules(policy: Policy) -> None:
    assert in_sandbox(policy, importlib.import_module, "os") is sys.modules["os"]


# --- PathRestrictingImportHookTest: modules only from files the app may read -----------------


def test_sandbox_accessible(policy: Policy, app_on_path: Path) -> None:
    (app_on_path / "visible.py").write_text("VALUE = 42\n")
    assert in_sandbox(policy, importlib.import_module, "visible").VALUE == 42


def test_sandbox_not_accessible(policy: Policy, app_on_path: Path) -> None:
    (app_on_path / "hidden.py").write_text("VALUE = 42\n")
    with pytest.raises(ImportRefused) as caught:
        in_sandbox(policy.replace(skip_files=(r"^hidden\.py$",)), importlib.import_module,
                   "hidden")
    assert caught.value.setting == "skip_files" and "hidden" not in sys.modules


@pytest.fixture
def app_c_module(app_on_path: Path) -> str:
    """A C extension among the app's files: a copy of the standard library's ``_bisect``,
    in the app's package ``vendored`` (its init function matches the last name)."""
    import _bisect

    if not str(getattr(_bisect, "__file__", "")).endswith(
            tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        pytest.skip("this interpreter has _bisect built in, not as a shared library")
    (app_on_path / "vendored").mkdir()
    (app_on_path / "vendored" / "__init__.py").write_text("")
    shutil.copy(_bisect.__file__, app_on_path / "vendored" / Path(_bisect.__file__).name)
    return "vendored._bisect"


def test_sandbox_c_module_accessible(policy: Policy, app_c_module: str) -> None:
    enabled = policy.replace(allowed_c_extensions=(app_c_module,))
    module = in_sandbox(enabled, importlib.import_module, app_c_module)
    assert module.__name__ == app_c_module and module.bisect_left([1, 2, 3], 2) == 1


def test_sandbox_c_module_not_accessible(policy: Policy, app_c_module: str) -> None:
    """An allowed C module in a file skip_files hides is refused, as the runtime did."""
    hidden = policy.replace(allowed_c_extensions=(app_c_module,),
                            skip_files=(r"^vendored/_bisect\..*$",))
    with pytest.raises(CExtensionRefused) as caught:
        in_sandbox(hidden, importlib.import_module, app_c_module)
    assert caught.value.setting == "skip_files"
    assert app_c_module not in sys.modules


def _sourceless_module(folder: Path, name: str) -> None:
    source = folder / f"{name}.py"
    source.write_text("VALUE = 'compiled'\n")
    py_compile.compile(str(source), cfile=str(folder / f"{name}.pyc"), doraise=True)
    source.unlink()


def test_sandbox_compiled_python_accessible(policy: Policy, app_on_path: Path) -> None:
    _sourceless_module(app_on_path, "legacy")
    assert in_sandbox(policy, importlib.import_module, "legacy").VALUE == "compiled"


def test_sandbox_compiled_python_not_accessible(policy: Policy, app_on_path: Path) -> None:
    """A ``.pyc`` without its source, hidden by app.yaml's default skip_files."""
    _sourceless_module(app_on_path, "legacy_hidden")
    default_skip = policy.replace(skip_files=(r"^(.*/)?.*\.py[co]$",))
    with pytest.raises(ImportRefused):
        in_sandbox(default_skip, importlib.import_module, "legacy_hidden")
    assert "legacy_hidden" not in sys.modules


def test_sandbox_c_builtin(tmp_path: Path) -> None:
    """A built-in module on the list needs no file the app may read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    module = in_sandbox(Policy.python27(app_root=elsewhere, deadline=None),
                        importlib.import_module, "time")
    assert module is sys.modules["time"] and module.time() > 0


def test_sandbox_py_frozen(policy: Policy, capsys: pytest.CaptureFixture[str]) -> None:
    with fresh_modules("__phello__"):
        module = in_sandbox(policy, importlib.import_module, "__phello__")
        assert module.__spec__.origin == "frozen"


def test_sandbox_enabled_c_library(policy: Policy, app_c_module: str) -> None:
    """A library name covers itself and its submodules, not a longer name it prefixes."""
    with pytest.raises(CExtensionRefused):
        in_sandbox(policy.replace(allowed_c_extensions=("vendore",)), importlib.import_module,
                   app_c_module)
    module = in_sandbox(policy.replace(allowed_c_extensions=("vendored",)),
                        importlib.import_module, app_c_module)
    assert module.bisect_right([1, 2], 2) == 2


def test_sandbox_path_restricting_load_module(policy: Policy, app_on_path: Path) -> None:
    """(``PathRestrictingImportHookTest.test_load_module``) A refused module raises
    ImportError naming it, and is not left half-imported."""
    (app_on_path / "hidden_too.py").write_text("import json\n")
    with pytest.raises(ImportError) as caught:
        in_sandbox(policy.replace(skip_files=(r"^hidden_too\.py$",)),
                   importlib.import_module, "hidden_too")
    assert caught.value.name == "hidden_too" and "hidden_too" not in sys.modules
