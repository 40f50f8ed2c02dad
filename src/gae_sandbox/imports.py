"""The import gate.

A ``sys.meta_path`` finder sees only fresh imports; an ``import`` of a module already in
``sys.modules`` is judged from inside the interpreter's own C import, through the hooks it
calls (see "enforcement points"), so ``builtins.__import__`` stays the C function and an
import adds no Python frame to anyone's traceback; ``importlib``'s ``_gcd_import`` covers
``importlib.import_module`` and ``importlib.__import__`` (even references captured before
install).

Rules, for each module and each of its parent packages:

1. ``Policy.blocked_modules`` are refused to every importer.
2. C modules (built in or shared libraries): the runtime's list and
   ``Policy.allowed_c_extensions``; a standard-library module may also use its own private C
   modules (``socket`` imports ``_socket``), as ``os`` used ``posix`` on the runtime.
3. Python modules: the app's own (under ``app_root``) and the standard library; third-party
   ones when they match ``Policy.allowed_modules``.
"""

from __future__ import annotations

import _imp
import builtins
import fnmatch
import importlib
import importlib.util
import opcode
import operator
import os
import re
import stat
import sys
import types
from _thread import get_ident as _get_ident
from importlib.machinery import EXTENSION_SUFFIXES, BuiltinImporter, ExtensionFileLoader
from typing import Any

from .context import _ACTIVE, SPEEDUPS, Layer, Scope, active_scope, passthrough, resolve_file
from .errors import CExtensionRefused, ImportRefused, SandboxViolation, SystemCallRefused
from .paths import is_inside, realpath
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
original_lock_unlock_module = _bootstrap._lock_unlock_module
original_handle_fromlist = _bootstrap._handle_fromlist
original_load_unlocked = _bootstrap._load_unlocked

_SUFFIXES = tuple(EXTENSION_SUFFIXES)
_BUILTIN_NAMES = frozenset(sys.builtin_module_names)


# --- decisions ------------------------------------------------------------------------------


class _Patterns:
    """A policy's module pattern list compiled once: what ``policy.module_matches`` answers,
    as one set lookup per dotted prefix of the name and one expression for the globs."""

    __slots__ = ("any", "names", "globs")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.any = "*" in patterns
        self.names = frozenset(patterns)
        globs = [p for p in patterns if any(c in p for c in "*?[")]
        self.globs = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in globs)).match \
            if globs else None

    def matches(self, name: str) -> bool:
        if self.any:
            return True
        if type(name) is not str:
            name = str.__str__(name)  # an exact copy: a subclass cannot answer for itself
        names = self.names
        if name in names:
            return True
        dot = name.find(".")
        while dot != -1:
            if name[:dot] in names:
                return True
            dot = name.find(".", dot + 1)
        return self.globs is not None and self.globs(name) is not None


def _matches(policy: Any, field: str, name: str) -> bool:
    """Whether ``name`` matches the module patterns of ``policy.<field>``, the list compiled
    once per policy (a frozen object: its fields never change)."""
    key = ("module patterns", field)
    compiled = policy._cache.get(key)
    if compiled is None:
        compiled = policy._cache[key] = _Patterns(getattr(policy, field))
    return bool(compiled.matches(name))


def check_import(layer: Layer, name: str, trusted: bool) -> SandboxViolation | None:
    """Judge ``name`` and its parents by name and, where loaded already, by the module."""
    decided: set[Any] = layer.policy._cache.setdefault("imports_allowed", set())
    key = (name, trusted)
    if key in decided:
        return None
    prefix = ""
    for part in name.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        if (prefix, trusted) in decided:
            continue  # a parent allowed (and loaded) before: judged once
        refusal = _judge_name(layer, prefix, trusted)
        if refusal is not None:
            return refusal
    if name in sys.modules:
        decided.add(key)
        if _python_only(name) and (not name.startswith("gae_sandbox.")
                                   or name in PUBLIC_SANDBOX_MODULES):
            # allowed whoever imports it: the fast path may skip judging
            layer.imports_any.add(name)
    return None


def _python_only(name: str) -> bool:
    prefix = ""
    for part in name.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        module = sys.modules.get(prefix)
        if module is None or _module_is_c(module):
            return False
    return True


def _known_everywhere(scope: Scope, name: str) -> bool:
    """Whether every layer already allowed the cached Python module ``name`` (for any
    importer): a repeated ``import json`` then costs a few set lookups."""
    known = scope.known_imports
    if known is not None:
        return name in known
    for layer in scope.layers:
        if name not in layer.imports_any:
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
    return _check_python(layer, name, origin, fresh=True)


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
    if location is not None and is_inside(resolve_file(location), layer.app_roots):
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
    if _matches(policy, "blocked_modules", name):
        return ImportRefused(
            name, "the runtime does not offer this module (it is in Policy.blocked_modules)",
            "blocked_modules",
        )
    library = LIBRARY_MODULES.get(name)
    if library is not None and not (_matches(policy, "allowed_c_extensions", library)
                                    or _matches(policy, "allowed_c_extensions", name)):
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
    if _matches(policy, "blocked_modules", name):
        return ImportRefused(
            name, "the runtime does not offer this module (it is in Policy.blocked_modules)",
            "blocked_modules",
        )
    if name in RUNTIME_C_MODULES or _matches(policy, "allowed_c_extensions", name):
        return None
    if name in STDLIB_C_MODULES:
        if trusted and wraps(trusted, name):
            return None
        owners = WRAPPERS.get(name)
        rule = (f"the runtime offers this standard-library C module to app code only through "
                f"{' or '.join(owners)}, the module that wraps it" if owners else
                "the runtime does not offer this standard-library C module")
    else:
        rule = "C extension modules are refused unless enabled (app.yaml libraries:)"
    return CExtensionRefused(name, rule, "allowed_c_extensions")


#: The standard-library C modules outside the runtime's list (``RUNTIME_C_MODULES``) that
#: the standard library may load, each with the modules that wrap it: an allow-list. Any
#: other standard-library module importing a private C module is a trampoline
#: (``pkgutil.resolve_name``, ``logging.config``, ``pickle``) and is refused like app code;
#: a C module listed nowhere is refused to everyone (``pwd``/``grp`` too: the user database,
#: which the runtime did not offer; ``os.path.expanduser`` falls back without it). What these
#: give is covered by the sandbox's own replacements (``posix``, ``_socket``, ``_signal``,
#: ``_posixsubprocess``), or is the module's own pure work.
WRAPPERS: dict[str, tuple[str, ...]] = {
    "posix": ("os",),
    "_socket": ("socket", "types"),  # 3.13's types.CapsuleType is type(_socket.CAPI)
    "_signal": ("signal",),
    "_ssl": ("ssl",),
    "_posixsubprocess": ("subprocess",),
    "_elementtree": ("xml.etree.ElementTree",),
    "_pickle": ("pickle",),
    "_sha2": ("hashlib",),
    "_md5": ("hashlib",),
    "_sha1": ("hashlib",),
    "_sha3": ("hashlib",),
    "_blake2": ("hashlib",),
    "_sysconfig": ("sysconfig",),
    "_suggestions": ("traceback",),
}


def wraps(importer_file: Any, name: str) -> bool:
    """Whether the standard-library module in ``importer_file`` is one that wraps the C
    module ``name`` (decided from the module that imports, never from who called it). Only
    the pairs :data:`WRAPPERS` lists: a C module it does not list is refused to every
    importer (``readline``, ``_tkinter``, ``_curses``, ``syslog``, ...)."""
    owners = WRAPPERS.get(name)
    if owners is None:
        return False
    importer = _stdlib_module_name(importer_file) if isinstance(importer_file, str) else None
    if importer is None:
        return False
    return any(importer == owner or importer.startswith(owner + ".") for owner in owners)


_module_names: dict[str, str | None] = {}


def _stdlib_module_name(filename: str) -> str | None:
    """``json.decoder`` for ``.../lib/python3.X/json/decoder.py``; ``None`` elsewhere."""
    known = _module_names.get(filename, "")
    if known != "":
        return known
    name = None
    path = resolve_file(filename)
    for folder in _STDLIB_FOLDERS:
        if path.startswith(folder + os.sep) and "site-packages" not in path:
            relative = path[len(folder) + 1:]
            if relative.endswith(".py"):
                parts = relative[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                name = ".".join(parts) or None
            break
    _module_names[filename] = name
    return name


def _check_hidden_file(layer: Layer, name: str, location: Any) -> SandboxViolation | None:
    """A C extension in the app's files with an allowed name is still refused when its file
    is one the app does not see (skip_files, static files), as the runtime refused it."""
    if not isinstance(location, str) or not location.endswith(_SUFFIXES):
        return None
    resolved = resolve_file(location, fresh=True)
    if is_inside(resolved, layer.app_roots):
        hidden_by = layer.policy.hidden_by(resolved)
        if hidden_by is not None:
            return CExtensionRefused(name, f"the module's file is hidden by {hidden_by}, so "
                                     "the app does not see it", hidden_by)
    return None


def _check_python(layer: Layer, name: str, location: str | None, *,
                  fresh: bool = False) -> SandboxViolation | None:
    """``fresh``: the module is about to be loaded, so its file is resolved now; a loaded
    module's file is where it was loaded from, resolved then (``context.resolve_file``)."""
    if location is not None:
        resolved = resolve_file(location, fresh)
        if is_inside(resolved, layer.app_roots):
            if layer.policy.hidden_by(resolved):
                return ImportRefused(name, "the module's file is listed in skip_files",
                                     "skip_files")
            return None
    if name.partition(".")[0] in STDLIB_MODULE_NAMES:
        return None
    if _matches(layer.policy, "allowed_modules", name):
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
            path = resolve_file(filename)
            known = (is_inside(path, _STDLIB_FOLDERS) and "site-packages" not in path) or (
                is_inside(path, (_PACKAGE_FOLDER,)))
        _stdlib_code[filename] = known
    return known


def _allowed_untrusted(scope: Scope, check: Any, *args: Any) -> bool:
    """Whether every layer allows it to an importer that is not trusted, the strictest case
    (trust only ever adds: a standard-library module's own C module, reloads): then who
    imports need not be found (:func:`importer_trusted` walks the stack). Records nothing;
    otherwise the caller judges with the importer's trust."""
    for layer in scope.layers:
        if check(layer, *args, False) is not None:
            return False
    return True


def importer_trusted(scope: Scope, frame: Any) -> Any:
    """The file of the standard-library module that imports (the frame that imports: the
    first one outside importlib's own machinery and the gate's wrappers around it), or
    ``False``: a private C module is then allowed only to the module that wraps it
    (:func:`wraps`)."""
    while frame is not None and _passes_through(frame.f_code):
        frame = frame.f_back
    if frame is None:
        return False
    filename = frame.f_code.co_filename
    if type(filename) is not str or not is_stdlib_code(filename):
        return False
    if all(layer.frame_kind(filename) != "app" for layer in scope.layers):
        return filename
    return False


#: Files whose frames stand between an importer and the import machinery: ``importlib``'s
#: entry points (``import_module``, ``__import__``, ``util.find_spec``; frozen copies are
#: named ``<frozen importlib...>``) and the audit hook that asks who imports.
_PASS_THROUGH_FILES = frozenset({
    getattr(importlib, "__file__", None), getattr(importlib.util, "__file__", None),
    os.path.join(_PACKAGE_FOLDER, "audit.py"),
})
_pass_through_codes: set[Any] = set()


def _passes_through(code: Any) -> bool:
    filename = code.co_filename
    return (filename.startswith("<frozen importlib") or filename in _PASS_THROUGH_FILES
            or code in _pass_through_codes)


# --- enforcement points ---------------------------------------------------------------------
#
# ``builtins.__import__`` stays the interpreter's C function, so an import adds no Python
# frame between the importer and what it imports: tracebacks are exactly an unsandboxed
# import's (libraries tell "the module is missing" from "it failed inside" by the traceback's
# depth: ``except ImportError: if sys.exc_info()[2].tb_next: raise``). The gate is asked from
# inside the C import instead, through the hooks of importlib it calls:
#
# - a module already in ``sys.modules``: the C import reads ``module.__spec__._initializing``
#   and, when true, calls ``_bootstrap._lock_unlock_module(name)`` (to wait for a module
#   another thread is loading). Inside a scope the spec answers true unless every layer already
#   allowed the module, and that call judges the import by its full name;
# - a fresh module: the ``sys.meta_path`` finder (GATE), before anything is loaded;
# - ``from package import name``: ``_bootstrap._handle_fromlist`` judges cached submodules;
# - a failed fresh load: ``_bootstrap._load_unlocked`` forgets the submodules it left behind.
#
# Host code pays one Python call per import of a cached module (the spec's answer; none
# with the C accelerator) and no frame: the last two hooks are objects whose ``__call__``
# property hands C the original function when no sandbox is active.

gated_import = original_import  # builtins.__import__, inside and outside sandboxes
gated_import_module = original_import_module  # judged by _gcd_import

_UNSET = object()
_frame = sys._getframe
#: Instructions that import: ``import`` statements, and calls (``__import__(name)``, C code
#: that imports). A module's missing attribute also asks its spec, for the error message
#: ("partially initialized module"): then the instruction is an attribute read.
_IMPORTING = frozenset(opcode.opmap[name] for name in (
    "IMPORT_NAME", "CALL", "CALL_KW", "CALL_FUNCTION", "CALL_FUNCTION_KW", "CALL_FUNCTION_EX",
    "CALL_METHOD", "PRECALL") if name in opcode.opmap)


def _importing(frame: Any) -> bool:
    code = frame.f_code
    if code.co_filename.startswith("<frozen importlib"):
        return False  # importlib's Python code reads the flag for itself
    lasti = frame.f_lasti
    return lasti >= 0 and code.co_code[lasti] in _IMPORTING


def _spec_initializing(spec: Any) -> Any:
    """``ModuleSpec._initializing``: the spec's own flag, except inside a scope when the C
    import asks about a module not yet allowed by every layer; then true, so that it calls
    ``_lock_unlock_module`` (:func:`gated_lock_unlock_module`) before using the module."""
    values = spec.__dict__
    value = values.get("_initializing", _UNSET)
    if value is not True:
        scope = active_scope()
        if scope is not None:
            name = values.get("name")
            known = scope.known_imports
            if type(name) is not str or (
                    name not in known if known is not None else
                    not _known_everywhere(scope, name)):
                if _importing(_frame(1)):
                    return True
    if value is _UNSET:
        raise AttributeError("_initializing")
    return value


def _set_spec_initializing(spec: Any, value: Any) -> None:
    spec.__dict__["_initializing"] = value


def _del_spec_initializing(spec: Any) -> None:
    try:
        del spec.__dict__["_initializing"]
    except KeyError:
        raise AttributeError("_initializing") from None


def gated_lock_unlock_module(name: str) -> None:
    """``_bootstrap._lock_unlock_module``: judges an import of a cached module (the C import
    calls it when the spec said so), then waits for the module only if it is really being
    loaded."""
    __tracebackhide__ = True
    scope = active_scope()
    if scope is not None:
        frame = _frame(1)
        if not frame.f_code.co_filename.startswith("<frozen importlib"):
            if type(name) is str and not _known_everywhere(scope, name) and not (
                    _allowed_untrusted(scope, check_import, name)):
                scope.judge(check_import, name, importer_trusted(scope, frame))
            spec = getattr(sys.modules.get(name), "__spec__", None)
            if getattr(spec, "__dict__", {}).get("_initializing") is not True:
                return None
    return original_lock_unlock_module(name)


def _refusals_kept(import_: Any) -> Any:
    """``import_`` for ``_handle_fromlist``, which takes a ``ModuleNotFoundError`` named
    after the submodule for "no such submodule" and says only "cannot import name": a
    refusal (one, since it is what the runtime's missing module raised) keeps its message."""

    def import_submodule(name: Any) -> Any:
        try:
            return import_(name)
        except ImportRefused as refusal:
            refusal.name = None
            raise

    return import_submodule


def _fromlist_judged(module: Any, fromlist: Any, import_: Any, *, recursive: bool = False) -> Any:
    """``_bootstrap._handle_fromlist`` inside a scope: ``from package import name`` of a
    submodule already in ``sys.modules`` is judged (fresh ones met the finder)."""
    result = original_handle_fromlist(module, fromlist, _refusals_kept(import_),
                                      recursive=recursive)
    scope = active_scope()
    base = getattr(module, "__name__", None)
    if scope is not None and isinstance(base, str) and not isinstance(fromlist, str):
        trusted = None
        for item in fromlist:
            if isinstance(item, str) and item != "*":
                name = f"{base}.{item}"
                if name in sys.modules and not _known_everywhere(scope, name) and not (
                        _allowed_untrusted(scope, check_import, name)):
                    if trusted is None:
                        trusted = importer_trusted(scope, _frame(1))
                    scope.judge(check_import, name, trusted)
    return result


def _load_forgetting_orphans(spec: Any) -> Any:
    """``_bootstrap._load_unlocked`` inside a scope: a module whose execution fails (a refused
    import in a package's ``__init__``) leaves no half-built package (:func:`drop_orphans`)."""
    before = set(sys.modules)
    try:
        module = original_load_unlocked(spec)
    except BaseException:
        drop_orphans(before)
        raise
    name = getattr(spec, "name", None)
    if type(name) is str and name in LATE_MODULES and after_load is not None:
        after_load()  # patch it before the app can call what it defines
    return module


#: Modules the sandbox patches only once they are imported, and what sandbox.py does when a
#: request has loaded one of them: both set by sandbox.py (the names are the keys of
#: registrations.LATE_BUILDERS).
LATE_MODULES: frozenset[str] = frozenset()
after_load: Any = None


# The two wrappers above stand in for importlib's own functions inside a scope: their frames
# are trimmed from import tracebacks as importlib's are (the interpreter removes frames named
# "<frozen importlib._bootstrap>" from a failed import's traceback).
for _function in (_fromlist_judged, _load_forgetting_orphans):
    _function.__code__ = _function.__code__.replace(co_filename="<frozen importlib._bootstrap>")
del _function


class _InScope:
    """A function importlib's C code looks up by name and calls: the original for host code
    (handed over by the ``__call__`` property, so no Python frame is added), the sandbox's
    version inside a scope."""

    __slots__ = ("_host", "_sandboxed", "__name__", "__qualname__")

    def __init__(self, host: Any, sandboxed: Any) -> None:
        self._host = host
        self._sandboxed = sandboxed
        self.__name__ = host.__name__
        self.__qualname__ = host.__qualname__

    @property
    def __call__(self) -> Any:
        return self._host if active_scope() is None else self._sandboxed

    def __repr__(self) -> str:
        return f"<gae_sandbox: {self._host!r} (judged inside a sandbox)>"


def _module_maker(original: Any, what: str) -> Any:
    """``_imp.create_builtin(spec)`` / ``_imp.create_dynamic(spec[, file])``: inside a scope
    they make only modules not loaded yet (the import system loading them). A second
    instance of a loaded module (``importlib.util.module_from_spec`` of its spec) would have
    none of the sandbox's replacements: a fresh ``_thread``, ``posix`` or ``_socket``. The
    spec is read once, into a spec of exact values the original then gets."""

    def create(spec: Any, *rest: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return original(spec, *rest)
        name = getattr(spec, "name", None)
        origin = getattr(spec, "origin", None)
        if type(name) is not str or (origin is not None and type(origin) is not str):
            name, origin = str.__str__(name), None if origin is None else str.__str__(origin)
        if name in sys.modules:
            scope.judge(_refuse_copy, name, what)
        return original(importlib.machinery.ModuleSpec(name, None, origin=origin), *rest)

    return create


def _code_renamer(original: Any) -> Any:
    """``_imp._fix_co_filename(code, path)`` renames a code object's file in place, with no
    audit event, and a standard-library module's trust (its own C modules) is decided from
    that name. Inside a scope it may only rename the code of a module the gate is loading
    to that module's own file (the import system, for bytecode compiled elsewhere), or
    leave the name as it is."""

    def fix_co_filename(code: Any, path: Any) -> Any:
        scope = active_scope()
        if scope is not None and not (type(path) is str and (
                path in loading_files(scope)[0]
                or type(code) is types.CodeType and code.co_filename == path)):
            scope.judge(_refuse_rename, path)
            return passthrough(original, code, path)
        return original(code, path)

    from .patches import _guarded

    return _guarded(fix_co_filename, original)


#: Thread ident -> the import locks that thread took inside a scope and holds still, oldest
#: first, each with that scope: the interpreter's import lock (``_IMPORT_LOCK``) and the
#: import system's per-module locks (``_bootstrap._ModuleLock``).
HELD_IMPORT_LOCKS: dict[int, list[tuple[Any, Any]]] = {}
_IMPORT_LOCK = object()
_release_import_lock = _imp.release_lock


def _lock_taker(original: Any, lock_of: Any) -> Any:
    """``_imp.acquire_lock`` (the interpreter's one import lock, which every fresh import,
    ``fork`` and ``subprocess`` of every thread takes) and ``_ModuleLock.acquire`` (one
    module's, which every import of that module waits for). The import system takes and
    releases them around each import; a request may take them too (``imp.acquire_lock``,
    ``_bootstrap._get_module_lock(name).acquire()``), but what its thread still holds when
    it leaves the request is released then (:func:`release_import_locks`): it cannot hang
    the host's imports for good. ``lock_of(args)``: which lock a call takes."""

    def acquire(*args: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return original(*args)
        held = HELD_IMPORT_LOCKS.setdefault(_get_ident(), [])
        lock = lock_of(args)
        held.append((scope, lock))  # listed first: an error in between can only make the
        try:  # release at the end find nothing held (RuntimeError, ignored)
            return original(*args)
        except BaseException:
            _strike(held, lock)
            raise

    from .patches import _guarded

    return _guarded(acquire, original)


def _lock_giver(original: Any, lock_of: Any) -> Any:
    """``_imp.release_lock`` / ``_ModuleLock.release``, struck off the thread's list."""

    def release(*args: Any) -> Any:
        result = original(*args)
        if active_scope() is not None:
            held = HELD_IMPORT_LOCKS.get(_get_ident())
            if held:
                _strike(held, lock_of(args))
        return result

    from .patches import _guarded

    return _guarded(release, original)


def _strike(held: list[tuple[Any, Any]], lock: Any) -> None:
    """Strike the newest entry of ``lock`` off a thread's list."""
    for index in range(len(held) - 1, -1, -1):
        if held[index][1] is lock:
            del held[index]
            return


def _the_import_lock(args: tuple[Any, ...]) -> Any:
    return _IMPORT_LOCK


def _the_module_lock(args: tuple[Any, ...]) -> Any:
    return args[0] if args else None


def release_import_locks(ident: int, scope: Any = None) -> None:
    """Thread ``ident`` (the calling thread) leaves ``scope`` (None: every scope, as the
    thread ends): release the import locks it took inside that scope, or a scope nested in
    it, and still holds, newest first."""
    held = HELD_IMPORT_LOCKS.get(ident)
    if not held:
        return
    keep: list[tuple[Any, Any]] = []
    leaving: list[Any] = []
    for entry in held:
        taken_in = entry[0]
        while scope is not None and taken_in is not None and taken_in is not scope:
            taken_in = taken_in.parent  # a scope nested in the one being left
        if scope is None or taken_in is scope:
            leaving.append(entry[1])
        else:
            keep.append(entry)
    if keep:
        HELD_IMPORT_LOCKS[ident] = keep
    else:
        HELD_IMPORT_LOCKS.pop(ident, None)
    for lock in reversed(leaving):
        try:
            if lock is _IMPORT_LOCK:
                _release_import_lock()
            else:
                _module_lock_release(lock)
        except RuntimeError:  # not held by this thread (after all)
            pass


_module_lock_release = _bootstrap._ModuleLock.release


def _refuse_rename(layer: Layer, path: Any) -> SandboxViolation:
    return SystemCallRefused(
        f"_imp._fix_co_filename(code, {path!r})",
        "it renames a code object's file, from which the standard library's trust is "
        "decided; the import system renames only the code of the module it is loading", None)


def _refuse_copy(layer: Layer, name: str, what: str) -> SandboxViolation:
    return ImportRefused(name, f"{what} of a module already loaded: a second instance "
                         "would have none of the sandbox's replacements", None)


def build_patches(speedups: Any = None) -> list[tuple[Any, str, Any, Any]]:
    """The hooks the gate adds to importlib (``sandbox.install`` applies them). With the C
    accelerator (``speedups``) the spec's flag is its ``Attribute``: host code reads the
    spec's own value with no Python call."""
    flag = (property(_spec_initializing, _set_spec_initializing, _del_spec_initializing)
            if speedups is None else speedups.Attribute(
                "_initializing", _spec_initializing, _set_spec_initializing,
                _del_spec_initializing, _ACTIVE))
    taker = _lock_taker(_imp.acquire_lock, _the_import_lock)
    giver = _lock_giver(_imp.release_lock, _the_import_lock)
    module_lock = _bootstrap._ModuleLock
    # (the deprecated ``imp`` re-exports them, on 3.10 and 3.11, when it is loaded already)
    lock_holders = [holder for holder in (_imp, sys.modules.get("imp"))
                    if holder is not None and holder.__dict__.get("acquire_lock") is (
                        _imp.acquire_lock)]
    return [
        (_imp, "create_builtin", _imp.create_builtin,
         _module_maker(_imp.create_builtin, "_imp.create_builtin")),
        (_imp, "create_dynamic", _imp.create_dynamic,
         _module_maker(_imp.create_dynamic, "_imp.create_dynamic")),
        (_imp, "_fix_co_filename", _imp._fix_co_filename,
         _code_renamer(_imp._fix_co_filename)),
        *[(holder, "acquire_lock", _imp.acquire_lock, taker) for holder in lock_holders],
        *[(holder, "release_lock", _imp.release_lock, giver) for holder in lock_holders],
        (module_lock, "acquire", module_lock.acquire,
         _lock_taker(module_lock.acquire, _the_module_lock)),
        (module_lock, "release", module_lock.release,
         _lock_giver(module_lock.release, _the_module_lock)),
        (_bootstrap.ModuleSpec, "_initializing", None, flag),
        (_bootstrap, "_lock_unlock_module", original_lock_unlock_module,
         gated_lock_unlock_module),
        (_bootstrap, "_handle_fromlist", original_handle_fromlist,
         _InScope(original_handle_fromlist, _fromlist_judged)),
        (_bootstrap, "_load_unlocked", original_load_unlocked,
         _InScope(original_load_unlocked, _load_forgetting_orphans)),
    ]


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


def gated_gcd_import(name: str, package: str | None = None, level: int = 0) -> Any:
    """``importlib._bootstrap._gcd_import``: the common path of importlib's entry points."""
    scope = active_scope()
    if scope is not None:
        try:
            absolute = importlib.util.resolve_name("." * level + name, package) if level else name
        except (ImportError, ValueError, TypeError, AttributeError):
            absolute = None
        if absolute and absolute not in scope.reported_imports and not _allowed_untrusted(
            scope, check_import, absolute
        ) and scope.judge(check_import, absolute, importer_trusted(scope, _frame(1))):
            scope.reported_imports.add(absolute)
            try:
                return original_gcd_import(name, package, level)
            finally:
                scope.reported_imports.discard(absolute)
    return original_gcd_import(name, package, level)


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
        caller = _frame(1)
        trusted: Any = None  # who imports: found only when a decision depends on it
        if target is not None and sys.modules.get(fullname) is target:  # importlib.reload
            trusted = importer_trusted(scope, caller)
            scope.judge(check_reload, target, trusted)
        if not _allowed_untrusted(scope, check_import, fullname):
            if trusted is None:
                trusted = importer_trusted(scope, caller)
            if scope.judge(check_import, fullname, trusted):
                scope.reported_imports.add(fullname)
                return _noted(scope, _find_elsewhere(self, fullname, path, target))
        spec, finder = _find_elsewhere(self, fullname, path, target)
        if spec is None and (fullname in ("google", "google.appengine")
                             or fullname.startswith("google.appengine.")):
            raise ModuleNotFoundError(
                f"No module named {fullname!r}; if the app wants the App Engine SDK's "
                "google.appengine (ndb, users, memcache, taskqueue...): gae_sandbox emulates "
                "the runtime's sandbox, not its bundled services; install the SDK's package "
                "for them, or use the Cloud client libraries (google-cloud-ndb, ...)",
                name=fullname)
        # (judged once: check_spec resolves the module's file, a walk of its path)
        if spec is not None and not _allowed_untrusted(scope, check_spec, fullname, spec):
            source = _pure_python_sibling(fullname, spec)
            if source is not None and _allowed_untrusted(scope, check_spec, fullname, source):
                # what the runtime ran: the .py beside the .so
                return _noted(scope, (source, finder))
            if trusted is None:
                trusted = importer_trusted(scope, caller)
            if scope.judge(check_spec, fullname, spec, trusted):
                # the audit hook sees the extension load next: one record is enough
                scope.reported_imports.add(fullname)
        return _noted(scope, (spec, finder))

    def invalidate_caches(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<gae_sandbox import gate>"


_original_stat = os.stat  # taken before install(): the gate's own look is not the app's


def _isfile(path: str) -> bool:
    try:
        return stat.S_ISREG(_original_stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _pure_python_sibling(fullname: str, spec: Any) -> Any:
    """For a C extension module with a ``.py`` of the same name beside it (a package's
    ``__init__.py``), as packages compiled with Cython or mypyc ship (SQLAlchemy 2.1,
    chardet), the spec of that source: the module the runtime imported, where C extensions
    were refused."""
    origin = getattr(spec, "origin", None)
    if not isinstance(spec.loader, ExtensionFileLoader) or type(origin) is not str:
        return None
    package = spec.submodule_search_locations
    stem = "__init__" if package is not None else fullname.rpartition(".")[2]
    source = os.path.join(os.path.dirname(origin), stem + ".py")
    if not _isfile(source):
        return None
    return importlib.util.spec_from_file_location(
        fullname, source, submodule_search_locations=None if package is None else list(package))


class HostImports:
    """Which ``sys.path`` entries and ``sys.meta_path`` finders the host put there.

    Both lists are the process's, and app code may add to them; the import machinery may
    read a module's files beyond the app's own read permission only where the host's import
    system found them. What is on the lists when a sandbox starts while none is open and no
    thread is marked (no request's code is running) is the host's, except what was first
    seen when a sandbox, or a thread it started, ended (an app added it). An entry or
    finder the app added is searched with the app's own read permission: its files and
    folders are judged as any read. The lists are compared by identity, once per change.
    (A context a closed sandbox left behind, that host code later runs, is still
    sandboxed, but what it adds meanwhile counts as the host's at the next start.)
    """

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.app_paths: set[str] = set()
        self.finders: dict[int, Any] = {}  # id -> finder, held: no id is reused
        self.app_finders: dict[int, Any] = {}
        self._seen_path: list[Any] = []
        self._seen_finders: list[Any] = []
        self._folders: tuple[str, ...] = ()  # the real paths of ``paths``
        self._real_folders: dict[str, str] = {}  # folder -> its real path ("": none)

    def unchanged(self) -> bool:
        """Whether both lists hold what they held at the last look (by identity: comparing
        values would call an app object's ``__eq__`` in host code). One C call with the
        accelerator: it is asked at every scope's start and end."""
        return _same_items(sys.path, self._seen_path, sys.meta_path, self._seen_finders)

    def _take(self, paths: set[str], finders: dict[int, Any], other_paths: set[str],
              other_finders: dict[int, Any]) -> None:
        path, meta_path = list(sys.path), list(sys.meta_path)
        for entry in path:
            if type(entry) is str and entry not in other_paths and entry not in paths:
                paths.add(entry)
                real = realpath(entry or ".") if paths is self.paths else None
                if real is not None:  # (None: a symlink loop, a bad entry)
                    self._folders = (*self._folders, real)
        for finder in meta_path:
            if finder is not GATE and id(finder) not in other_finders:
                finders.setdefault(id(finder), finder)
        self._seen_path, self._seen_finders = path, meta_path

    def host_moment(self) -> None:
        """No sandbox exists: what is new on the lists is the host's."""
        if not self.unchanged():
            self._take(self.paths, self.finders, self.app_paths, self.app_finders)

    def sandbox_ended(self) -> None:
        """A sandbox ended: what is new on the lists since the host's last look is the app's."""
        if not self.unchanged():
            self._take(self.app_paths, self.app_finders, self.paths, self.finders)

    def trusts_finder(self, finder: Any) -> bool:
        return self.finders.get(id(finder)) is finder

    def on_host_path(self, file: str) -> bool:
        """Whether ``file`` is inside a folder the host put on ``sys.path`` (its folder's
        real path, cached: a fresh import asks for each module; the content of host folders
        is the host's)."""
        folder = file.rpartition("/")[0] or "/"
        real = self._real_folders.get(folder)
        if real is None:
            real = realpath(folder) or ""
            if len(self._real_folders) >= 4096:
                self._real_folders.clear()
            self._real_folders[folder] = real
        return bool(real) and is_inside(real, self._folders)


def _python_same_items(*lists: Any) -> bool:
    """``_speedups.same_items`` in Python."""
    if len(lists) % 2:
        raise TypeError("same_items(list, seen, ...): pairs of lists")
    for now, seen in zip(lists[::2], lists[1::2], strict=True):
        if not (isinstance(now, list) and len(now) == len(seen)
                and all(map(operator.is_, now, seen))):
            return False
    return True


_same_items = getattr(SPEEDUPS, "same_items", None) or _python_same_items


HOST_IMPORTS = HostImports()
_PATH_FINDER = importlib.machinery.PathFinder


def note_module_files(scope: Scope, spec: Any, finder: Any = None) -> None:
    """Remember the files the import system may now read for this judged module (its source,
    its cached bytecode, the archive it is in) and the folders it may list (a package's
    search path): the audit hook lets the import machinery read those, and only those.

    Only for a spec a finder of the host's found (:class:`HostImports`); the path finder's
    (whose entry finders and hooks the app can replace) only where each file and folder is
    inside a folder the host put on ``sys.path`` or a readable folder (an app may add
    folders to ``sys.path`` or a package's ``__path__``). Any other module's files are read
    with the app's own permission."""
    if finder is not None and not HOST_IMPORTS.trusts_finder(finder):
        return
    located = finder is _PATH_FINDER

    name = getattr(spec, "name", None)
    last = name.rpartition(".")[2] if type(name) is str else None

    def allowed(path: str, *, folder: bool = False) -> bool:
        """The path finder's: in a host folder, one named as the module's own file
        (``name.py``, ``name/__init__.py``, an extension) or folder, what an ordinary
        import of that name finds there anyway; else a file the app may read itself."""
        if not located:
            return True
        return (_named_for(path, last, folder) and HOST_IMPORTS.on_host_path(path)) or (
            _app_may_read(scope, path))

    files, folders = loading_files(scope)
    origin, cached = getattr(spec, "origin", None), getattr(spec, "cached", None)
    if type(origin) is not str or origin in ("built-in", "frozen", "namespace"):
        origin = None
    elif not allowed(origin):
        origin = None
    if type(cached) is not str or not (
            not located or (origin is not None and cached in (origin, _bytecode_of(origin)))):
        cached = None  # (the path finder's: only the bytecode cache of a noted source)
    for value in (origin, cached):
        if value is not None:
            files.add(value)
            archive, found, _ = value.partition(".zip" + os.sep)
            if found:
                files.add(archive + ".zip")
    for folder in getattr(spec, "submodule_search_locations", None) or ():
        if type(folder) is str and allowed(folder, folder=True):
            folders.add(folder)


#: What a module's own file ends with (sources, bytecode, extensions).
_SOURCE_SUFFIXES = tuple(importlib.machinery.all_suffixes())


def _named_for(path: str, last: str | None, folder: bool) -> bool:
    """Whether ``path`` is named as module ``last``'s own folder or file."""
    if last is None:
        return False
    base = os.path.basename(path)
    if folder:
        return base == last
    if not base.endswith(_SOURCE_SUFFIXES):
        return False
    if base.startswith("__init__."):
        return os.path.basename(os.path.dirname(path)) == last
    return base.startswith(last + ".")


def _app_may_read(scope: Scope, path: str) -> bool:
    """Whether every layer lets the app read ``path`` itself (``skip_files`` included)."""
    # filesystem.py imports this module; an import statement here, inside a scope, would
    # itself be judged by the gate
    check_read = sys.modules[f"{__package__}.filesystem"].check_read
    return all(check_read(layer, path) is None for layer in scope.layers)


def _bytecode_of(source: str) -> str | None:
    try:
        return importlib.util.cache_from_source(source)
    except (NotImplementedError, ValueError):
        return None


def _noted(scope: Scope, found: tuple[Any, Any]) -> Any:
    spec, finder = found
    if spec is not None:
        note_module_files(scope, spec, finder)
    return spec


def loading_files(scope: Scope) -> tuple[set[str], set[str]]:
    """The scope's ``(files, folders)`` noted by :func:`note_module_files`."""
    noted = scope.extras.get("module_files")
    if noted is None:
        noted = scope.extras["module_files"] = (set(), set())
    return noted


def _find_elsewhere(gate: Any, fullname: str, path: Any, target: Any) -> tuple[Any, Any]:
    """The spec the finders after the gate find, and the finder that found it."""
    for finder in list(sys.meta_path):
        if finder is gate:
            continue
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec, finder
    return None, None


GATE = ImportGateFinder()


def trusted_import_context() -> bool:
    """Whether the import in progress (an extension module's audit event) was made by the
    standard library: the importer found from the caller's frame."""
    scope = active_scope()
    return scope is not None and importer_trusted(scope, _frame(1))


_pass_through_codes.update(function.__code__ for function in (
    gated_gcd_import, ImportGateFinder.find_spec, _find_elsewhere, trusted_import_context))
# the _imp.create_builtin/create_dynamic wrappers are between the importer and the load too
_pass_through_codes.update(const for const in _module_maker.__code__.co_consts
                           if isinstance(const, type(_module_maker.__code__)))


def extension_filename(filename: Any) -> bool:
    return isinstance(filename, str) and filename.endswith(_SUFFIXES)
