"""The import gate.

A ``sys.meta_path`` finder sees only fresh imports, so the gate also sits in
``builtins.__import__`` (every ``import`` statement, cached modules included) and in
``importlib``'s ``_gcd_import`` (``importlib.import_module``, ``importlib.__import__``, even
references captured before install).

Rules, for each module and each of its parent packages:

1. ``Policy.blocked_modules`` are refused to every importer.
2. C modules (built in or shared libraries): the runtime's list and
   ``Policy.allowed_c_extensions``; a standard-library module may also use its own private C
   modules (``socket`` imports ``_socket``), as ``os`` used ``posix`` on the runtime.
3. Python modules: the app's own (under ``app_root``) and the standard library; third-party
   ones when they match ``Policy.allowed_modules``.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import os
import sys
from contextvars import ContextVar
from importlib.machinery import EXTENSION_SUFFIXES, BuiltinImporter, ExtensionFileLoader
from typing import Any

from .context import Layer, Scope, active_scope
from .errors import CExtensionRefused, ImportRefused, SandboxViolation
from .paths import is_inside, realpath
from .policy import module_matches
from .runtime import (
    LIBRARY_MODULES,
    RUNTIME_C_MODULES,
    STDLIB_C_MODULES,
    STDLIB_MODULE_NAMES,
    stdlib_folders,
)

_bootstrap: Any = sys.modules["_frozen_importlib"]

original_import = builtins.__import__
original_import_module = importlib.import_module
original_gcd_import = _bootstrap._gcd_import

#: Whether the import in progress was started by standard-library code, which may use its own
#: private C modules. Unknown importers are strict.
_TRUSTED_IMPORTER: ContextVar[bool] = ContextVar("gae_sandbox.trusted_importer", default=False)

_SUFFIXES = tuple(EXTENSION_SUFFIXES)
_BUILTIN_NAMES = frozenset(sys.builtin_module_names)


# --- decisions ------------------------------------------------------------------------------


def check_import(layer: Layer, name: str, trusted: bool) -> SandboxViolation | None:
    """Judge ``name`` and its parents by name and, where loaded already, by the module."""
    decided: set[Any] = layer.policy._cache.setdefault("imports_allowed", set())
    key = (name, trusted)
    if key in decided:
        return None
    prefix = ""
    for part in name.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        refusal = _judge_name(layer, prefix, trusted)
        if refusal is not None:
            return refusal
    if name in sys.modules:
        decided.add(key)
        if _python_only(name) and (not name.startswith("gae_sandbox.")
                                   or name in PUBLIC_SANDBOX_MODULES):
            # allowed whoever imports it: the fast path may skip judging
            layer.policy._cache.setdefault("imports_any", set()).add(name)
    return None


def _python_only(name: str) -> bool:
    prefix = ""
    for part in name.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        module = sys.modules.get(prefix)
        if module is None or _module_is_c(module):
            return False
    return True


def _all_attributes(module: Any, fromlist: Any) -> bool:
    """Whether ``from module import ...`` only reads attributes (imports nothing more)."""
    names = getattr(module, "__dict__", None)
    if names is None or isinstance(fromlist, str):
        return False
    for item in fromlist:
        if item == "*" or type(item) is not str or item not in names:
            return False
    return True


def _known_everywhere(scope: Scope, name: str) -> bool:
    """Whether every layer already allowed the cached Python module ``name`` (for any
    importer): a repeated ``import json`` then costs a few set lookups."""
    for layer in scope.layers:
        known = layer.policy._cache.get("imports_any")
        if known is None or name not in known:
            return False
    return True


def check_spec(layer: Layer, name: str, spec: Any, trusted: bool) -> SandboxViolation | None:
    """Judge a module about to be loaded, from the spec a finder returned."""
    if _spec_is_c(spec):
        return _check_c(layer, name, trusted) or _check_hidden_file(layer, name, spec.origin)
    origin = spec.origin if isinstance(spec.origin, str) and spec.origin not in (
        "namespace", "frozen", "built-in") else None
    if origin is None and spec.submodule_search_locations:
        origin = next(iter(spec.submodule_search_locations), None)
    return _check_python(layer, name, origin)


def check_extension_file(layer: Layer, name: str, filename: str,
                         trusted: bool) -> SandboxViolation | None:
    """The ``import`` audit event of a C extension loaded from a file (any route)."""
    return _check_c(layer, name, trusted) or _check_hidden_file(layer, name, filename)


#: This library's modules app code may import: the package (its public API) and the errors.
PUBLIC_SANDBOX_MODULES = frozenset(("gae_sandbox", "gae_sandbox.errors"))


def check_reload(layer: Layer, module: Any, trusted: bool) -> SandboxViolation | None:
    """``importlib.reload`` of a module outside the app: it would re-run a module the host
    and every request share, replacing what the sandbox patched in it (``os``, ``signal``)."""
    if trusted:
        return None
    location = _module_file(module)
    if location is not None and is_inside(realpath(location) or location, layer.app_roots):
        return None
    return ImportRefused(
        f"{getattr(module, '__name__', module)!s} (reload)",
        "reloading a module outside the app re-runs it for the whole process (the host and "
        "every request share it)", None,
    )


def _judge_name(layer: Layer, name: str, trusted: bool) -> SandboxViolation | None:
    policy = layer.policy
    if name.startswith("gae_sandbox.") and not trusted and name not in PUBLIC_SANDBOX_MODULES:
        return ImportRefused(
            name, "the sandbox's own modules hold its state and are not the app's to import "
            "(the package gae_sandbox is its public API)", None,
        )
    if module_matches(name, policy.blocked_modules):
        return ImportRefused(
            name, "the runtime does not offer this module (it is in Policy.blocked_modules)",
            "blocked_modules",
        )
    library = LIBRARY_MODULES.get(name)
    if library is not None and not (module_matches(library, policy.allowed_c_extensions)
                                    or module_matches(name, policy.allowed_c_extensions)):
        return CExtensionRefused(
            name, f"the runtime offers {library} only when app.yaml asks for it "
            f"(libraries: - name: {library}; on the command line --allow-c-extension "
            f"{library})", "allowed_c_extensions",
        )
    module = sys.modules.get(name)
    if module is not None:
        if _module_is_c(module):
            return _check_c(layer, name, trusted) or _check_hidden_file(
                layer, name, _module_file(module))
        return _check_python(layer, name, _module_file(module))
    if name in _BUILTIN_NAMES:
        return _check_c(layer, name, trusted)
    return None  # not loaded yet: the finder judges it from its spec


def _check_c(layer: Layer, name: str, trusted: bool) -> SandboxViolation | None:
    policy = layer.policy
    if module_matches(name, policy.blocked_modules):
        return ImportRefused(
            name, "the runtime does not offer this module (it is in Policy.blocked_modules)",
            "blocked_modules",
        )
    if name in RUNTIME_C_MODULES or module_matches(name, policy.allowed_c_extensions):
        return None
    if name in STDLIB_C_MODULES:
        if trusted:
            return None
        rule = ("the runtime offers this standard-library C module to app code only through "
                "the module that wraps it")
    else:
        rule = "C extension modules are refused unless enabled (app.yaml libraries:)"
    return CExtensionRefused(name, rule, "allowed_c_extensions")


def _check_hidden_file(layer: Layer, name: str, location: Any) -> SandboxViolation | None:
    """A C extension in the app's files with an allowed name is still refused when its file
    is one the app does not see (skip_files, static files), as the runtime refused it."""
    if not isinstance(location, str) or not location.endswith(_SUFFIXES):
        return None
    resolved = realpath(location) or location
    if is_inside(resolved, layer.app_roots):
        hidden_by = layer.policy.hidden_by(resolved)
        if hidden_by is not None:
            return CExtensionRefused(name, f"the module's file is hidden by {hidden_by}, so "
                                     "the app does not see it", hidden_by)
    return None


def _check_python(layer: Layer, name: str, location: str | None) -> SandboxViolation | None:
    if location is not None:
        resolved = realpath(location) or location
        if is_inside(resolved, layer.app_roots):
            if layer.policy.hidden_by(resolved):
                return ImportRefused(name, "the module's file is listed in skip_files",
                                     "skip_files")
            return None
    if name.partition(".")[0] in STDLIB_MODULE_NAMES:
        return None
    if module_matches(name, layer.policy.allowed_modules):
        return None
    return ImportRefused(
        name, "third-party module outside the allowed modules", "allowed_modules"
    )


def _module_is_c(module: Any) -> bool:
    try:
        spec = getattr(module, "__spec__", None)
        loader = getattr(spec, "loader", None) or getattr(module, "__loader__", None)
        if isinstance(loader, ExtensionFileLoader) or loader is BuiltinImporter:
            return True
        if getattr(module, "__name__", None) in _BUILTIN_NAMES and getattr(
            spec, "origin", "built-in"
        ) == "built-in":
            return True
        filename = getattr(module, "__file__", None)
        return isinstance(filename, str) and filename.endswith(_SUFFIXES)
    except Exception:  # exotic objects in sys.modules: judge them as Python code
        return False


def _module_file(module: Any) -> str | None:
    try:
        filename = getattr(module, "__file__", None)
        if isinstance(filename, str):
            return filename
        path = getattr(module, "__path__", None)
        if path is not None:
            return next(iter(path), None)
    except Exception:
        pass
    return None


def _spec_is_c(spec: Any) -> bool:
    loader = getattr(spec, "loader", None)
    if isinstance(loader, ExtensionFileLoader) or loader is BuiltinImporter:
        return True
    origin = getattr(spec, "origin", None)
    return origin == "built-in" or (isinstance(origin, str) and origin.endswith(_SUFFIXES))


_STDLIB_FOLDERS = stdlib_folders()
_PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))
_stdlib_code: dict[str, bool] = {}


def is_stdlib_code(filename: str) -> bool:
    """Whether a code object's file is the standard library's (or this library's) own.

    Judged from the code that runs, not from the ``globals`` an importer passes, which app
    code can forge (``__import__("_socket", {"__name__": "socket"})``).
    """
    known = _stdlib_code.get(filename)
    if known is None:
        if filename.startswith("<frozen "):
            known = True
        elif filename.startswith("<"):
            known = False
        else:
            path = realpath(filename) or filename
            known = (is_inside(path, _STDLIB_FOLDERS) and "site-packages" not in path) or (
                is_inside(path, (_PACKAGE_FOLDER,)))
        _stdlib_code[filename] = known
    return known


def importer_trusted(scope: Scope, frame: Any) -> bool:
    """Whether the import runs in standard-library code (the frame that imports)."""
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    if frame is None:
        return False
    filename = frame.f_code.co_filename
    if not is_stdlib_code(filename):
        return False
    return all(layer.frame_kind(filename) != "app" for layer in scope.layers)


# --- enforcement points ---------------------------------------------------------------------


def gated_import(name: str, globals: Any = None, locals: Any = None,
                 fromlist: Any = (), level: int = 0) -> Any:
    """``builtins.__import__``: one ContextVar read for host code."""
    scope = active_scope()
    if scope is None:
        return original_import(name, globals, locals, fromlist, level)
    if not level and name in sys.modules and _known_everywhere(scope, name) and (
            not fromlist or _all_attributes(sys.modules[name], fromlist)):
        return original_import(name, globals, locals, fromlist, level)
    trusted = importer_trusted(scope, sys._getframe(1))
    if globals is None:  # called as a function: relative names resolve in the caller
        globals = sys._getframe(1).f_globals
    absolute = _absolute_name(name, globals, level)
    reported = bool(absolute) and scope.judge(check_import, absolute, trusted)
    if reported:  # report mode: the finder and the audit hook need not record it again
        scope.reported_imports.add(absolute)
    before = set(sys.modules) if absolute and absolute not in sys.modules else None
    token = _TRUSTED_IMPORTER.set(trusted)
    try:
        module = original_import(name, globals, locals, fromlist, level)
    except BaseException:
        if before is not None:
            drop_orphans(before)
        raise
    finally:
        _TRUSTED_IMPORTER.reset(token)
        if reported:
            scope.reported_imports.discard(absolute)
    if fromlist:
        base = getattr(module, "__name__", None)
        if isinstance(base, str):
            for item in fromlist:
                if isinstance(item, str) and item != "*" and f"{base}.{item}" in sys.modules:
                    scope.judge(check_import, f"{base}.{item}", trusted)
    return module


def drop_orphans(before: set[str]) -> None:
    """After a failed fresh import: forget the modules it left behind whose package is gone.

    Python removes the module that raised from ``sys.modules`` but keeps the submodules it had
    already loaded; the next ``import`` of the package would run its ``__init__`` again
    against those stale entries and see a half-built package (``requests`` without
    ``requests.exceptions``). A module whose parent package is missing is such a leftover.
    """
    modules = sys.modules
    for name in [n for n in list(modules) if n not in before and "." in n]:
        parent = name.rpartition(".")[0]
        while parent:
            if parent not in modules:
                modules.pop(name, None)
                break
            parent = parent.rpartition(".")[0]


def gated_import_module(name: str, package: str | None = None) -> Any:
    """``importlib.import_module``: records who imports; ``_gcd_import`` judges."""
    scope = active_scope()
    if scope is None:
        return original_import_module(name, package)
    before = set(sys.modules) if name not in sys.modules else None
    token = _TRUSTED_IMPORTER.set(importer_trusted(scope, sys._getframe(1)))
    try:
        return original_import_module(name, package)
    except BaseException:
        if before is not None:
            drop_orphans(before)
        raise
    finally:
        _TRUSTED_IMPORTER.reset(token)


def gated_gcd_import(name: str, package: str | None = None, level: int = 0) -> Any:
    """``importlib._bootstrap._gcd_import``: the common path of importlib's entry points."""
    scope = active_scope()
    if scope is not None:
        try:
            absolute = importlib.util.resolve_name("." * level + name, package) if level else name
        except (ImportError, ValueError, TypeError, AttributeError):
            absolute = None
        if absolute and absolute not in scope.reported_imports and scope.judge(
            check_import, absolute, _TRUSTED_IMPORTER.get()
        ):
            scope.reported_imports.add(absolute)
            try:
                return original_gcd_import(name, package, level)
            finally:
                scope.reported_imports.discard(absolute)
    return original_gcd_import(name, package, level)


def _absolute_name(name: Any, importer_globals: Any, level: int) -> str | None:
    if not isinstance(name, str):
        return None
    if not level:
        return name
    try:
        package = importer_globals.get("__package__")
        if not package:
            module_name = importer_globals["__name__"]
            package = module_name if "__path__" in importer_globals else (
                module_name.rpartition(".")[0]
            )
        return importlib.util.resolve_name("." * level + name, package).rstrip(".")
    except Exception:  # let the real import raise its own error
        return None


class ImportGateFinder:
    """The ``sys.meta_path`` finder: judges fresh imports from their spec.

    It asks the finders after it for the spec, judges it, and returns it, so a refused module
    is never executed.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        scope = active_scope()
        if scope is None:
            return None
        if fullname in scope.reported_imports:  # report mode: recorded once already
            return _noted(scope, _find_elsewhere(self, fullname, path, target))
        trusted = _TRUSTED_IMPORTER.get()
        if target is not None and sys.modules.get(fullname) is target:  # importlib.reload
            scope.judge(check_reload, target, trusted)
        if scope.judge(check_import, fullname, trusted):
            scope.reported_imports.add(fullname)
            return _noted(scope, _find_elsewhere(self, fullname, path, target))
        spec = _find_elsewhere(self, fullname, path, target)
        if spec is not None and scope.judge(check_spec, fullname, spec, trusted):
            # the audit hook sees the extension load next: one record is enough
            scope.reported_imports.add(fullname)
        return _noted(scope, spec)

    def invalidate_caches(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<gae_sandbox import gate>"


def note_module_files(scope: Scope, spec: Any) -> None:
    """Remember the files the import system may now read for this judged module (its source,
    its cached bytecode, the archive it is in) and the folders it may list (a package's
    search path): the audit hook lets the import machinery read those, and only those."""
    files, folders = loading_files(scope)
    for value in (getattr(spec, "origin", None), getattr(spec, "cached", None)):
        if isinstance(value, str) and value not in ("built-in", "frozen", "namespace"):
            files.add(value)
            archive, found, _ = value.partition(".zip" + os.sep)
            if found:
                files.add(archive + ".zip")
    for folder in getattr(spec, "submodule_search_locations", None) or ():
        if isinstance(folder, str):
            folders.add(folder)


def _noted(scope: Scope, spec: Any) -> Any:
    if spec is not None:
        note_module_files(scope, spec)
    return spec


def loading_files(scope: Scope) -> tuple[set[str], set[str]]:
    """The scope's ``(files, folders)`` noted by :func:`note_module_files`."""
    noted = scope.extras.get("module_files")
    if noted is None:
        noted = scope.extras["module_files"] = (set(), set())
    return noted


def _find_elsewhere(gate: Any, fullname: str, path: Any, target: Any) -> Any:
    for finder in list(sys.meta_path):
        if finder is gate:
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


GATE = ImportGateFinder()


def trusted_import_context() -> bool:
    return _TRUSTED_IMPORTER.get()


def extension_filename(filename: Any) -> bool:
    return isinstance(filename, str) and filename.endswith(_SUFFIXES)
