"""Restricted mode: RestrictedPython around code a host marks untrusted.

The other layers judge *operations* (a file write, an import, a connection); they cannot stop
code from walking the object graph (``().__class__.__base__.__subclasses__()``, a generator's
``gi_frame.f_back.f_globals``) to the host's objects. Restricted mode compiles the code with
RestrictedPython, which rejects underscore names, frame attributes, ``exec``/``eval``, async
code, ``except*`` and ``match``, and routes every attribute, item, write, iteration and import
through the guards below. Used by :meth:`Sandbox.exec` and for app modules that match
``Policy.restricted_modules``.

Guards, on top of RestrictedPython's own:

* attributes: ``safer_getattr`` plus every name starting with ``_``, ``format``/``format_map``
  of any object (``str``'s, and those that call it: ``collections.UserString``), ``obj`` on
  exceptions (it hands out the object a failed lookup was made on);
  a result that is a module must pass the import rules, so ``json.decoder.re.enum.sys`` stops
  at ``sys``; raw gadget callables (``getattr``, ``eval``, ``operator.attrgetter``...) are
  never handed out.
* imports: the sandbox's import gate (as an app import, never as a trusted standard-library
  one), and of the standard library only :data:`RESTRICTED_STDLIB_MODULES` (an allow-list),
  others refused unless ``Policy.allowed_modules`` names them.
* writes: ``full_write_guard`` (only ``dict``, ``list`` and the code's own classes).
* functions: every ``def`` and ``lambda`` of the code, and every resumption of its
  generators, first checks that a sandbox is active: a callback the code leaves with the
  host (a logging handler, a hook, a generator) raises instead of running in host code.

This raises the cost of an escape; it is not a security boundary (see the README).
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import operator
import sys
import threading
import types
from collections.abc import Callable
from importlib.machinery import SourceFileLoader
from typing import Any

from RestrictedPython import (
    PrintCollector,
    compile_restricted_exec,
    limited_builtins,
    safe_builtins,
    utility_builtins,
)
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr,
)
from RestrictedPython.transformer import RestrictingNodeTransformer

from .context import active_scope
from .errors import ImportRefused, RestrictedCodeError, SandboxViolation
from .imports import GATE, check_import, gated_import
from .policy import module_matches
from .runtime import STDLIB_MODULE_NAMES

#: The standard-library modules restricted code may import (or reach as an attribute), with
#: their submodules: an allow-list. Every other standard-library module is refused unless
#: each policy's ``allowed_modules`` names it explicitly (``"*"`` does not count): many take
#: a name or a string and reach any object (``pkgutil.resolve_name``, ``pydoc.locate``,
#: ``logging.config``, ``typing.get_type_hints``'s ``eval``, ``timeit.Timer``,
#: ``unittest.mock.patch``), run registered callbacks in host code later, or change
#: process-wide state. Judged safe: pure functions and data types of values the code holds.
RESTRICTED_STDLIB_MODULES: frozenset[str] = frozenset({
    "array", "base64", "binascii", "bisect", "calendar", "cmath", "collections", "csv",
    "datetime", "decimal", "difflib", "fnmatch", "fractions", "hashlib",
    "heapq", "hmac", "html", "ipaddress", "itertools", "json", "keyword", "math", "numbers",
    "random", "re", "secrets", "statistics", "string", "struct", "textwrap", "time",
    "unicodedata", "urllib.parse", "uuid", "zlib", "zoneinfo",
    "urllib",  # the package itself (empty), so that urllib.parse imports
})

#: Why some notable standard-library modules are not on the list (for the refusal's text).
GADGET_MODULES: dict[str, str] = {
    "operator": "attrgetter/methodcaller read attributes by name, past the attribute guard",
    "functools": "update_wrapper/wraps read and write attributes given by name",
    "enum": "global_enum writes members into any module's globals",
    "sys": "sys.modules, frames and interpreter hooks reach every object",
    "gc": "get_objects/get_referrers reach every object",
    "inspect": "frames, getattr_static and members of any object",
    "types": "FunctionType/CodeType build functions from raw code objects",
    "importlib": "imports and reloads past the restricted import guard",
    "pkgutil": "resolve_name hands out any object by its name",
    "pydoc": "locate hands out any object by its name",
    "typing": "get_type_hints evaluates strings as unrestricted code",
    "timeit": "runs strings as unrestricted code",
    "unittest": "mock.patch replaces any object by its name",
    "logging": "formatters read attributes through format strings; handlers run later",
    "builtins": "the unguarded getattr, eval, exec, open and __import__",
    "os": "processes, file descriptors and the environment",
    "posix": "os's C module",
    "io": "raw file objects",
    "ctypes": "raw memory",
    "code": "an unrestricted interactive interpreter",
    "codeop": "compiles unrestricted code",
    "pickle": "loads call arbitrary callables",
    "copy": "copies through __reduce_ex__, which calls what it returns",
    "marshal": "builds raw code objects",
    "traceback": "walks frames and their globals",
    "pdb": "a debugger over the host's frames",
    "threading": "settrace/setprofile and the frames of every thread",
    "weakref": "finalizers that run later in host code",
    "atexit": "callbacks that run later in host code",
    "signal": "handlers that run later in host code",
    "subprocess": "processes",
    "shutil": "file operations",
    "contextvars": "lists and changes the context's variables, the host's included",
    "contextlib": "ExitStack.callback and friends call what they are given later",
    "codecs": "register adds a search function that runs later in host code",
    "copyreg": "registrations run later when the host pickles",
    "abc": "register puts the code's classes in the host's isinstance checks",
    "dataclasses": "generates and runs code",
    "warnings": "the filters are the whole process's",
}

#: Names the code may not call, with the reason the refusal gives.
REFUSED_BUILTINS: dict[str, str] = {
    "vars": "uncontrolled namespace access",
    "globals": "uncontrolled namespace access",
    "locals": "uncontrolled namespace access",
    "dir": "a general introspector",
    "compile": "no new unrestricted code",
    "exec": "no new unrestricted code",
    "eval": "no new unrestricted code",
    "breakpoint": "no debugger",
    "open": "no direct I/O in restricted mode",
    "input": "no direct I/O in restricted mode",
    "type": "classes of objects lead to the object graph",
    "object": "object.__subclasses__ leads to every class",
    "super": "needs the __class__ cell",
    "memoryview": "raw memory views",
    "help": "an interactive introspector",
}

_FORMAT_NAMES = frozenset(("format", "format_map"))


def _descriptor_adopters() -> tuple[tuple[type, str], ...]:
    """Class methods that adopt a descriptor given as a number: the host's as readily as the
    request's (``select.epoll.fromfd`` of the server's event loop), with no audit event."""
    import select

    return tuple((kind, "fromfd") for kind in (getattr(select, name, None)
                                               for name in ("epoll", "kqueue", "devpoll"))
                 if isinstance(kind, type))


_DESCRIPTOR_ADOPTERS = _descriptor_adopters()
_MISSING: Any = object()


class AttributeRefused(SandboxViolation, AttributeError):
    """An attribute restricted mode does not hand out (underscore names, frames, the
    format-string gadget): an AttributeError, as RestrictedPython raises."""

    kind = "restricted_attribute"

    def _init_builtin(self) -> None:
        AttributeError.__init__(self, self.message)


class BuiltinRefused(SandboxViolation, NameError):
    """A built-in restricted mode does not offer (``vars``, ``globals``, ``open``...)."""

    kind = "restricted_builtin"

    def _init_builtin(self) -> None:
        NameError.__init__(self, self.message, name=self.target)


class OutsideSandboxRefused(SandboxViolation, RuntimeError):
    """A function of restricted code called where no sandbox is active (a callback the code
    left with the host: a logging handler, a codec or pickling hook, a finalizer)."""

    kind = "restricted_outside"

    def _init_builtin(self) -> None:
        RuntimeError.__init__(self, self.message)


def _require_sandbox(value: Any = None) -> Any:
    """``_sandboxed_()``, the first statement of every function of restricted code, and
    ``_sandboxed_((yield x))`` where a generator resumes; returns ``value``."""
    __tracebackhide__ = True
    if active_scope() is None:
        raise OutsideSandboxRefused(
            "a function of restricted code", "restricted code runs only inside a sandbox; "
            "call it with sandbox.call(function)")
    return value


class _SandboxedFunctions(RestrictingNodeTransformer):
    """RestrictedPython's transformer, plus a ``_sandboxed_()`` check at the start of every
    ``def`` and ``lambda``: a function handed to host code (a handler, a hook, a default
    argument bound to a host callable, a generator resumed later) does nothing once the
    request's sandbox is gone."""

    @staticmethod
    def _check(at: ast.AST, *args: ast.expr) -> ast.Call:
        call = ast.Call(func=ast.Name(id="_sandboxed_", ctx=ast.Load()), args=list(args),
                        keywords=[])
        return ast.fix_missing_locations(ast.copy_location(call, at))

    def visit_Yield(self, node: ast.Yield) -> Any:
        """A generator resumed by host code after the request ends stops there."""
        return self._check(node, super().visit_Yield(node))

    def visit_YieldFrom(self, node: ast.YieldFrom) -> Any:
        return self._check(node, super().visit_YieldFrom(node))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        node = super().visit_FunctionDef(node)
        if isinstance(node, ast.FunctionDef) and node.body:
            first = node.body[0]
            docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                         and isinstance(first.value.value, str))
            statement = ast.copy_location(ast.Expr(self._check(first)), first)
            node.body.insert(1 if docstring else 0, statement)
            ast.fix_missing_locations(node)
        return node

    def visit_Lambda(self, node: ast.Lambda) -> Any:
        node = super().visit_Lambda(node)
        if isinstance(node, ast.Lambda):  # (_sandboxed_() or body): the check returns None
            node.body = ast.copy_location(
                ast.BoolOp(op=ast.Or(), values=[self._check(node.body), node.body]), node.body)
            ast.fix_missing_locations(node)
        return node


def _raise(refusal: SandboxViolation) -> None:
    """Record ``refusal`` in every active layer's report, then raise it: the guards enforce in
    report mode too, since they define the language subset, not an operation to migrate."""
    __tracebackhide__ = True
    scope = active_scope()
    if scope is not None:
        for layer in scope.layers:
            try:
                scope.refuse(layer, refusal)
            except SandboxViolation:
                pass
    raise refusal


def _gadget_refusal(name: str) -> ImportRefused | None:
    """Refuse a standard-library module not on :data:`RESTRICTED_STDLIB_MODULES` (nor a
    submodule of one) unless every active policy names it explicitly in ``allowed_modules``.
    App and third-party modules follow the import rules only."""
    if name.partition(".")[0] not in STDLIB_MODULE_NAMES or _offered(name):
        return None
    scope = active_scope()
    if scope is not None and all(
        module_matches(name, tuple(p for p in layer.policy.allowed_modules if p != "*"))
        for layer in scope.layers
    ):
        return None
    why = next((reason for gadget, reason in GADGET_MODULES.items()
                if name == gadget or name.startswith(gadget + ".")), None)
    return ImportRefused(
        name, "restricted mode offers only the standard-library modules of its list "
        "(gae_sandbox.restricted.RESTRICTED_STDLIB_MODULES)" + (f"; this one: {why}" if why
                                                                else ""), "allowed_modules")


def _offered(name: str) -> bool:
    while name:
        if name in RESTRICTED_STDLIB_MODULES:
            return True
        name = name.rpartition(".")[0]
    return False


def _judge_module(module: types.ModuleType, how: str) -> None:
    """A module reached through an attribute, item or ``from`` import must pass the rules an
    import of it would."""
    name = getattr(module, "__name__", None)
    if not isinstance(name, str):
        _raise(ImportRefused(repr(module), f"an unnamed module reached through {how}"))
        return
    refusal = _gadget_refusal(name)
    if refusal is not None:
        _raise(refusal)
    scope = active_scope()
    if scope is not None:
        scope.judge(check_import, name, False)


def _gadget_callables() -> dict[int, str]:
    found: dict[int, str] = {}
    for name in ("getattr", "setattr", "delattr", "hasattr", "vars", "globals", "locals",
                 "dir", "eval", "exec", "compile", "open", "__import__", "breakpoint",
                 "input", "help"):
        value = getattr(builtins, name, None)
        if value is not None:
            found[id(value)] = f"the built-in {name}"
    for value, name in ((operator.attrgetter, "operator.attrgetter"),
                        (operator.methodcaller, "operator.methodcaller"),
                        (types.FunctionType, "types.FunctionType"),
                        (types.CodeType, "types.CodeType"),
                        (sys._getframe, "sys._getframe"), (gated_import, "__import__")):
        found[id(value)] = name
    import warnings

    for name in ("simplefilter", "filterwarnings", "resetwarnings"):
        found[id(getattr(warnings, name))] = (f"warnings.{name} (it changes the one "
                                              "process-wide list of warning filters)")
    return found


_GADGET_CALLABLES = _gadget_callables()
_GADGET_TYPES = (operator.attrgetter, operator.methodcaller, types.FrameType, types.CodeType,
                 types.TracebackType)


def _check_result(value: Any, how: str) -> Any:
    """Refuse values that would reopen what the guards close."""
    if isinstance(value, types.ModuleType):
        _judge_module(value, how)
    elif id(value) in _GADGET_CALLABLES and not isinstance(value, (int, str)):
        _raise(AttributeRefused(how, f"restricted mode does not hand out "
                                     f"{_GADGET_CALLABLES[id(value)]}"))
    elif isinstance(value, _GADGET_TYPES):
        _raise(AttributeRefused(how, f"restricted mode does not hand out "
                                     f"{type(value).__name__} objects"))
    return value


def guarded_getattr(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """``_getattr_``: RestrictedPython's ``safer_getattr`` plus this sandbox's rules."""
    __tracebackhide__ = True
    if type(name) is not str:
        raise TypeError("attribute name must be str")
    what = f"{type(obj).__name__}.{name}"
    if name.startswith("_"):
        _raise(AttributeRefused(what, "restricted mode refuses names starting with '_'"))
    if name in _FORMAT_NAMES:  # of any object: UserString's, a wrapper's, call str.format
        _raise(AttributeRefused(what, "format and format_map walk attributes from a format "
                                      "string (the format-string gadget)"))
    for kind, adopter in _DESCRIPTOR_ADOPTERS:
        if name == adopter and (isinstance(obj, kind) or (isinstance(obj, type)
                                                          and issubclass(obj, kind))):
            _raise(AttributeRefused(what, "it adopts any descriptor number, the host's too "
                                          "(restricted mode hands out no such method)"))
    if name == "obj" and isinstance(obj, BaseException):
        _raise(AttributeRefused(what, "an exception's obj hands out the object a failed "
                                      "lookup was made on"))
    try:
        value = safer_getattr(obj, name, _MISSING)
    except (AttributeError, NotImplementedError) as error:
        _raise(AttributeRefused(what, str(error)))
    if value is _MISSING:
        if default is not _MISSING:
            return default
        # a fresh error: the one getattr raised carries the object in .obj
        raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
    return _check_result(value, what)


def guarded_getattr_builtin(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """The ``getattr`` built-in of restricted code: the same guard as ``obj.name``."""
    return guarded_getattr(obj, name, default)


def guarded_hasattr(obj: Any, name: str) -> bool:
    """``hasattr`` that probes only what ``getattr`` would hand out."""
    try:
        guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


def guarded_setattr(obj: Any, name: str, value: Any) -> None:
    """``setattr``: no underscore names, and only objects the write guard lets through."""
    if not isinstance(name, str) or name.startswith("_"):
        _raise(AttributeRefused(f"{type(obj).__name__}.{name}",
                                "restricted mode refuses names starting with '_'"))
    setattr(full_write_guard(obj), name, value)


def guarded_delattr(obj: Any, name: str) -> None:
    """``delattr``: as :func:`guarded_setattr`."""
    if not isinstance(name, str) or name.startswith("_"):
        _raise(AttributeRefused(f"{type(obj).__name__}.{name}",
                                "restricted mode refuses names starting with '_'"))
    delattr(full_write_guard(obj), name)


def guarded_getitem(obj: Any, index: Any) -> Any:
    """``_getitem_``: the item, unless it is a module or gadget the guards would refuse."""
    return _check_result(obj[index], f"item of {type(obj).__name__}")


def guarded_apply(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``_apply_`` (calls with ``*args``/``**kwargs``)."""
    return function(*args, **kwargs)


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow,
    "<<=": operator.ilshift, ">>=": operator.irshift, "&=": operator.iand,
    "|=": operator.ior, "^=": operator.ixor, "@=": operator.imatmul,
}


def guarded_inplacevar(op: str, target: Any, value: Any) -> Any:
    """``_inplacevar_`` (``x += y`` on names)."""
    function = _INPLACE.get(op)
    if function is None:
        raise SyntaxError(f"restricted mode does not support {op!r}")
    return function(target, value)


def _restricted_class(name: str, bases: tuple[Any, ...], namespace: dict[str, Any],
                      **kwargs: Any) -> type:
    """``__metaclass__`` of restricted classes: marks them writable by the write guard, so
    ``self.total = 1`` works on the code's own objects and nowhere else."""
    meta: type = type
    for base in bases:
        base_meta = type(base)
        if issubclass(base_meta, meta):
            meta = base_meta
    namespace["_guarded_writes"] = True
    return meta(name, bases, namespace, **kwargs)


class _SharedPrint(PrintCollector):
    """A print collector writing into one list per run, so output from every function of
    the code is kept, in order."""

    def __init__(self, sink: list[str], _getattr_: Any = None) -> None:
        super().__init__(_getattr_)
        self.txt = sink


def _refused_builtin(name: str, why: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        _raise(BuiltinRefused(name, f"restricted mode does not offer {name}() ({why})"))
    refused.__name__ = name
    return refused


def _guarded_import(name: str, globals: Any = None, locals: Any = None,
                    fromlist: Any = (), level: int = 0) -> Any:
    """``__import__`` of restricted code: gadget modules refused, then the sandbox's gate."""
    __tracebackhide__ = True
    absolute = name
    if level and isinstance(globals, dict):
        package = globals.get("__package__") or str(globals.get("__name__", "")).rpartition(
            ".")[0]
        try:
            absolute = importlib.util.resolve_name("." * level + name, package)
        except (ImportError, ValueError):
            absolute = name
    refusal = _gadget_refusal(absolute)
    if refusal is not None:
        _raise(refusal)
    module = _untrusted_call(gated_import, name, globals, locals, fromlist, level)
    for item in fromlist or ():
        if isinstance(item, str) and item != "*":
            _check_result(getattr(module, item, None), f"from {absolute} import {item}")
    return module


# Called through a frame whose file is not this library's, so the gate judges the import as
# an app's (never as a trusted standard-library one that may use private C modules).
_untrusted_call: Callable[..., Any] = eval(  # noqa: S307 - a fixed trampoline
    compile("lambda function, *args: function(*args)", "<gae_sandbox restricted code>", "eval")
)


def restricted_builtins(printed: list[str]) -> dict[str, Any]:
    """The built-ins and guards of one run: RestrictedPython's safe, limited and utility
    built-ins, common pure functions, refusing stubs, and the guard functions."""
    names: dict[str, Any] = dict(safe_builtins)
    names.update(utility_builtins)
    names.update(limited_builtins)
    names["range"] = range  # limited_range caps at 1000 items; the deadline bounds loops
    for name in ("all", "any", "bytes", "dict", "enumerate", "filter", "iter", "map", "max",
                 "min", "next", "reversed", "sorted", "sum", "zip", "NotImplemented",
                 "property", "staticmethod", "classmethod", "frozenset", "set"):
        names[name] = getattr(builtins, name)
    for name, why in REFUSED_BUILTINS.items():
        names[name] = _refused_builtin(name, why)
    names.update({
        "__import__": _guarded_import,
        "__metaclass__": _restricted_class,
        "_getattr_": guarded_getattr,
        "getattr": guarded_getattr_builtin,
        "hasattr": guarded_hasattr,
        "setattr": guarded_setattr,
        "delattr": guarded_delattr,
        "_getitem_": guarded_getitem,
        "_write_": full_write_guard,
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_inplacevar_": guarded_inplacevar,
        "_apply_": guarded_apply,
        "_print_": lambda _getattr_=None: _SharedPrint(printed, _getattr_),
        "_sandboxed_": _require_sandbox,
    })
    return names


def compile_restricted(source: str | bytes, filename: str) -> types.CodeType:
    """Compile with RestrictedPython, or raise one :class:`RestrictedCodeError` listing every
    rejected construct with its line."""
    if not isinstance(source, (str, bytes)):
        raise TypeError(f"restricted source must be str or bytes, got {type(source).__name__}")
    result = compile_restricted_exec(source, filename=filename, policy=_SandboxedFunctions)
    if result.errors or result.code is None:
        errors = list(result.errors) or ["Line ?: RestrictedPython produced no code"]
        rule = (f"RestrictedPython rejected {len(errors)} construct"
                f"{'s' if len(errors) != 1 else ''}:\n"
                + "\n".join(f"  {error}" for error in errors))
        raise RestrictedCodeError(f"code in {filename}", rule)
    return result.code


def prepare_globals(namespace: dict[str, Any], printed: list[str]) -> dict[str, Any]:
    """Give ``namespace`` the restricted built-ins (the guards live there too, so the code's
    own names stay clean) and the place printed output is collected."""
    namespace["__builtins__"] = restricted_builtins(printed)
    namespace.setdefault("__name__", "__restricted__")
    return namespace


def run_code(code: types.CodeType, namespace: dict[str, Any] | None) -> dict[str, Any]:
    """Run restricted ``code`` in the current context; the globals after it. Printed output
    is in ``namespace["__printed__"]`` (a name the code cannot read)."""
    namespace = {} if namespace is None else namespace
    if not isinstance(namespace, dict):
        raise TypeError(f"Sandbox.exec(globals=...) must be a dict, got "
                        f"{type(namespace).__name__}")
    printed: list[str] = []
    prepare_globals(namespace, printed)
    try:
        exec(code, namespace)
    finally:
        namespace["__printed__"] = "".join(printed)
    return namespace


# --- app modules under Policy.restricted_modules ------------------------------------------


class RestrictedSourceLoader(SourceFileLoader):
    """Loads an app module from its source with RestrictedPython (never from a ``.pyc``,
    which would hold unrestricted code) and runs it with the guards."""

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        return compile_restricted(self.get_data(path), path)

    def exec_module(self, module: types.ModuleType) -> None:
        code = self.get_code(module.__name__)
        printed: list[str] = []
        prepare_globals(module.__dict__, printed)
        try:
            exec(code, module.__dict__)
        finally:
            module.__dict__["__printed__"] = "".join(printed)


class RestrictedFinder:
    """``sys.meta_path`` finder (consulted by the import gate, which asks the finders after
    it): modules matching ``Policy.restricted_modules`` of an active layer get a
    :class:`RestrictedSourceLoader`. Inert outside a sandbox."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        scope = active_scope()
        if scope is None or not any(
            module_matches(fullname, layer.policy.restricted_modules) for layer in scope.layers
        ):
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or finder is GATE or isinstance(finder, RestrictedFinder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is not None:
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None:
            return None
        if not isinstance(spec.loader, SourceFileLoader) or not isinstance(spec.origin, str):
            _raise(ImportRefused(
                fullname, "a module under Policy.restricted_modules must be Python source, "
                "compiled by restricted mode", "restricted_modules"))
        spec.loader = RestrictedSourceLoader(fullname, spec.origin)
        spec.cached = None
        return spec

    def invalidate_caches(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<gae_sandbox restricted-mode finder>"


FINDER = RestrictedFinder()
_install_lock = threading.RLock()


def install_finder() -> None:
    """Put :data:`FINDER` on ``sys.meta_path`` before the path finders (idempotent); the
    import gate stays first."""
    with _install_lock:
        if FINDER in sys.meta_path:
            return
        position = 1 if sys.meta_path and sys.meta_path[0] is GATE else 0
        sys.meta_path.insert(position, FINDER)

