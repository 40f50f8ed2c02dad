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
* writes: ``full_write_guard`` (only ``dict``, ``list``, the code's ``defaultdict`` and its
  own classes). A mutable container read as an attribute of a module or of an object not
  made by the code (``html.entities.html5``, ``urllib.parse.uses_relative``) is handed out
  as a read-only view (mappingproxy, tuple, frozenset, bytes), its items too.
* process-wide state: setters of offered modules (:data:`PROCESS_WIDE_SETTERS`:
  ``random.seed``, ``csv.field_size_limit``...), ``register`` of abstract classes and
  ``clear_flags``/``clear_traps`` of shared decimal contexts are refused.
* functions: every ``def`` and ``lambda`` of the code, and every resumption of its
  generators and generator expressions, first checks that a sandbox is active: a callback
  the code leaves with the host (a logging handler, a hook, a generator) raises instead of
  running in host code. Built-ins that keep a callable for later (``map``, ``filter``,
  ``property``, ``itertools.starmap``, ``defaultdict``... :data:`_LAZY_CONSTRUCTORS`) wrap a
  callable not made by the code in the same check.

This raises the cost of an escape; it is not a security boundary (see the README).
"""

from __future__ import annotations

import abc
import array
import ast
import builtins
import collections
import collections.abc
import decimal
import importlib.util
import itertools
import operator
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
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


# --- what restricted code made ------------------------------------------------------------

#: Classes made by restricted code (``_restricted_class`` adds them): their instances are the
#: code's own, writable, and their callables check for a sandbox themselves.
_RESTRICTED_CLASSES: weakref.WeakSet[type] = weakref.WeakSet()


def _restricted_namespace(namespace: Any) -> bool:
    """Globals restricted code runs in (``Sandbox.exec``'s, a restricted module's): their
    built-ins are a dict holding this module's ``_sandboxed_`` guard."""
    built = namespace.get("__builtins__") if isinstance(namespace, dict) else None
    return type(built) is dict and built.get("_sandboxed_") is _require_sandbox


def _is_restricted_class(klass: Any) -> bool:
    try:
        return klass in _RESTRICTED_CLASSES
    except TypeError:  # an unhashable metaclass
        return False


def _made_by_restricted_code(value: Any) -> bool:
    """A function, method or class of restricted code, or an instance of such a class: it
    checks for a sandbox itself (every ``def`` and ``lambda`` does)."""
    if isinstance(value, types.MethodType):
        value = value.__func__
    if isinstance(value, types.FunctionType):
        return _restricted_namespace(value.__globals__)
    return _is_restricted_class(value) or _is_restricted_class(type(value))


# --- lazy work the host may run later ----------------------------------------------------

#: Callables harmless to call without a sandbox (pure built-in types): left unwrapped, so
#: that ``defaultdict(int)`` or ``map(str, ...)`` handed to the host keep working there.
_PURE_CALLABLES: frozenset[int] = frozenset(map(id, (
    bool, int, float, complex, str, bytes, tuple, frozenset, list, dict, set, bytearray)))


_SANDBOXED_CODE: Any = object()  # the wrapper's code, set below: never wrapped twice


def _sandboxed_callable(function: Any) -> Any:
    """``function`` if it checks for a sandbox itself (restricted code's own) or is pure;
    otherwise a library function that checks first. A host callable kept by a lazy object
    (``map(host_fn, ...)``) then runs only while a sandbox is active, not when the host
    consumes the object after the request."""
    if (function is None or id(function) in _PURE_CALLABLES or not callable(function)
            or getattr(function, "__code__", None) is _SANDBOXED_CODE
            or _made_by_restricted_code(function)):
        return function

    def sandboxed(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        _require_sandbox()
        return function(*args, **kwargs)
    return sandboxed


_SANDBOXED_CODE = _sandboxed_callable(len).__code__


def _sandboxed_iter(iterator: Iterator[Any]) -> Iterator[Any]:
    """``_sandboxed_iter_(genexp)``, around every generator expression of restricted code (it
    has no ``yield`` for :meth:`_SandboxedFunctions.visit_Yield` to check): each ``next``
    first checks that a sandbox is active."""
    while True:
        _require_sandbox()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item


#: Generators of restricted code whose ``finally`` could not be run in their sandbox: kept,
#: never closed as host code.
_UNCLOSED: list[Any] = []


class _SandboxedGenerator:
    """What restricted code's generator functions return: their generator, resumed, thrown
    into and closed only inside a sandbox. The check inside the generator
    (``_sandboxed_((yield x))``) runs within the code's own ``try``, where an ``except`` can
    catch it and a ``finally`` runs regardless; this one runs before the generator is
    touched. Closed outside a sandbox (by the host, or when collected), it is closed in a
    new scope of the one that made it, or kept."""

    __slots__ = ("__inner", "__scope")

    def __init__(self, inner: Any, scope: Any) -> None:
        self.__inner = inner
        self.__scope = scope

    def __iter__(self) -> _SandboxedGenerator:
        return self

    def __next__(self) -> Any:
        _require_sandbox()
        return self.__inner.__next__()

    def send(self, value: Any) -> Any:
        _require_sandbox()
        return self.__inner.send(value)

    def throw(self, *args: Any) -> Any:
        _require_sandbox()
        return self.__inner.throw(*args)

    def close(self) -> None:
        inner = self.__inner
        if inner.gi_frame is None:
            return  # finished or never started: nothing of the code's runs
        if active_scope() is not None:
            inner.close()
            return
        from . import registrations

        try:
            registrations._runner(self.__scope, inner.close)
        except BaseException:  # noqa: BLE001 - no sandbox to run its finally in: keep it
            if inner.gi_frame is not None:
                _UNCLOSED.append(inner)

    def __del__(self) -> None:
        try:
            self.close()
        except BaseException:  # noqa: BLE001, S110 - a finalizer: its own error stays here
            pass


def _sandboxed_generator(function: Callable[..., Any]) -> Callable[..., Any]:
    """``@_sandboxed_generator_``, added to each generator function of restricted code: its
    generators are :class:`_SandboxedGenerator`\\ s."""

    def call(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        _require_sandbox()
        return _SandboxedGenerator(function(*args, **kwargs), scope)

    call.__name__ = getattr(function, "__name__", "generator")
    call.__qualname__ = getattr(function, "__qualname__", call.__name__)
    call.__doc__ = getattr(function, "__doc__", None)
    return call


class _LazyConstructor:
    """What restricted code gets for a built-in that keeps a callable and calls it later
    (``map``, ``itertools.starmap``, ``property``...): the callable arguments are wrapped by
    :func:`_sandboxed_callable`. ``isinstance`` and ``issubclass`` against it test the
    original; other attributes are the original's (through the guards)."""

    # underscore names: the attribute guard never hands them out
    __slots__ = ("_original", "_positions", "_keywords", "_min_args", "_make")

    def __init__(self, original: Any, positions: tuple[int, ...] = (),
                 keywords: tuple[str, ...] = (), min_args: int = 0,
                 make: Callable[..., Any] | None = None) -> None:
        self._original = original
        self._positions = positions
        self._keywords = keywords
        self._min_args = min_args
        self._make = original if make is None else make

    def _wrap(self, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if len(args) >= self._min_args:
            args = tuple(_sandboxed_callable(arg) if index in self._positions else arg
                         for index, arg in enumerate(args))
        for name in self._keywords:
            if name in kwargs:
                kwargs = {**kwargs, name: _sandboxed_callable(kwargs[name])}
        return args, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = self._wrap(args, kwargs)
        return self._make(*args, **kwargs)

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        """``class Mine(json.JSONEncoder)``: the base is a subclass whose constructor wraps
        the same arguments (the code's class never gets the original's)."""
        if isinstance(self._make, type) and self._make is not self._original:
            return (self._make,)
        if self._make is not self._original or not isinstance(self._original, type):
            raise TypeError(f"restricted code cannot subclass {self._original!r}")
        return (_wrapping_subclass(self),)

    def __instancecheck__(self, instance: Any) -> bool:
        return isinstance(instance, self._original)

    def __subclasscheck__(self, subclass: Any) -> bool:
        return issubclass(subclass, self._original)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._original, name)

    def __repr__(self) -> str:
        return repr(self._original)


class _RestrictedDefaultdict(collections.defaultdict):  # type: ignore[type-arg]
    """The ``defaultdict`` restricted code makes: writable like a ``dict`` (the write guard
    lets ``d[k] = v`` through), and a ``default_factory`` set later is wrapped too."""

    __slots__ = ()
    _guarded_writes = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            args = (_sandboxed_callable(args[0]),) + args[1:]
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def default_factory(self) -> Any:
        return _DEFAULT_FACTORY.__get__(self)

    @default_factory.setter
    def default_factory(self, value: Any) -> None:
        _DEFAULT_FACTORY.__set__(self, _sandboxed_callable(value))


_DEFAULT_FACTORY: Any = collections.defaultdict.__dict__["default_factory"]
_RestrictedDefaultdict.__name__ = "defaultdict"  # its repr; pickled by its qualified name


_SUBCLASSES: dict[int, type] = {}
_subclasses_lock = threading.Lock()


def _wrapping_subclass(lazy: _LazyConstructor) -> type:
    """A subclass of ``lazy``'s original whose ``__new__``/``__init__`` wrap the callable
    arguments as ``lazy`` does (one per original, made on first use)."""
    base: type = lazy._original
    with _subclasses_lock:
        found = _SUBCLASSES.get(id(base))
        if found is not None:
            return found
        namespace: dict[str, Any] = {"__module__": base.__module__,
                                     "__qualname__": base.__qualname__}
        if base.__new__ is not object.__new__:
            def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
                args, kwargs = lazy._wrap(args, kwargs)
                return base.__new__(cls, *args, **kwargs)  # type: ignore[call-overload]
            namespace["__new__"] = __new__
        if base.__init__ is not object.__init__:
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
                args, kwargs = lazy._wrap(args, kwargs)
                base.__init__(self, *args, **kwargs)
            namespace["__init__"] = __init__
        found = _SUBCLASSES[id(base)] = type(base.__name__, (base,), namespace)
        return found


def _sandboxed_scanner(lexicon: Any, *args: Any, **kwargs: Any) -> Any:
    """``re.Scanner`` keeps the actions of its ``(pattern, action)`` pairs for ``scan``."""
    import re

    return re.Scanner([(pattern, _sandboxed_callable(action)) for pattern, action in lexicon],
                      *args, **kwargs)


def _lazy_constructors() -> dict[int, _LazyConstructor]:
    """The built-ins (exact objects) that keep a callable argument and call it when the host
    iterates or uses the result later, with which arguments are callables."""
    import difflib
    import heapq
    import json
    import re

    table = [
        _LazyConstructor(builtins.map, (0,)),
        _LazyConstructor(builtins.filter, (0,)),
        _LazyConstructor(builtins.iter, (0,), min_args=2),  # iter(callable, sentinel)
        _LazyConstructor(builtins.property, (0, 1, 2), ("fget", "fset", "fdel")),
        _LazyConstructor(builtins.staticmethod, (0,)),
        _LazyConstructor(builtins.classmethod, (0,)),
        _LazyConstructor(itertools.starmap, (0,)),
        _LazyConstructor(itertools.takewhile, (0,)),
        _LazyConstructor(itertools.dropwhile, (0,)),
        _LazyConstructor(itertools.filterfalse, (0,)),
        _LazyConstructor(itertools.groupby, (1,), ("key",)),
        _LazyConstructor(itertools.accumulate, (1,), ("func",)),
        _LazyConstructor(heapq.merge, (), ("key",)),
        _LazyConstructor(collections.defaultdict, make=_RestrictedDefaultdict),  # it wraps
        _LazyConstructor(json.JSONDecoder, (), ("object_hook", "parse_float", "parse_int",
                                                "parse_constant", "object_pairs_hook")),
        _LazyConstructor(json.JSONEncoder, (), ("default",)),
        _LazyConstructor(difflib.SequenceMatcher, (0,), ("isjunk",)),
        _LazyConstructor(difflib.Differ, (0, 1), ("linejunk", "charjunk")),
        _LazyConstructor(difflib.HtmlDiff, (2, 3), ("linejunk", "charjunk")),
        _LazyConstructor(difflib.ndiff, (2, 3), ("linejunk", "charjunk")),
        _LazyConstructor(difflib.diff_bytes, (0,), ("dfunc",)),
        _LazyConstructor(re.Scanner, make=_sandboxed_scanner),
    ]
    return {id(lazy._original): lazy for lazy in table}


#: Built when restricted code first runs (:func:`_build_tables`): the modules these tables
#: name (``difflib``, ``zoneinfo``, ``csv``...) are not imported into every host process.
_LAZY_CONSTRUCTORS: dict[int, _LazyConstructor] = {}
#: Methods of ``property`` that make a new property keeping the callable given: bound
#: (``p.setter(f)``) or read off the class (``property.setter(p, f)``).
_PROPERTY_METHODS = frozenset(("getter", "setter", "deleter"))
_LAZY_PROPERTY: Any = None


def _is_generator(function: ast.FunctionDef | ast.Lambda) -> bool:
    """Whether ``function`` itself yields (not a function, lambda or class inside it)."""
    body = function.body
    pending: list[ast.AST] = list(body) if isinstance(body, list) else [body]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                 ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))
    return False


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

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> Any:
        """``_sandboxed_iter_(genexp)``: a generator expression the host consumes after the
        request stops there, as a generator does."""
        node = super().visit_GeneratorExp(node)
        if not isinstance(node, ast.GeneratorExp):
            return node
        call = ast.Call(func=ast.Name(id="_sandboxed_iter_", ctx=ast.Load()), args=[node],
                        keywords=[])
        return ast.fix_missing_locations(ast.copy_location(call, node))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        generator = _is_generator(node)
        node = super().visit_FunctionDef(node)
        if isinstance(node, ast.FunctionDef) and generator:
            node.decorator_list.append(ast.copy_location(
                ast.Name(id="_sandboxed_generator_", ctx=ast.Load()), node))
        if isinstance(node, ast.FunctionDef) and node.body:
            first = node.body[0]
            docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                         and isinstance(first.value.value, str))
            statement = ast.copy_location(ast.Expr(self._check(first)), first)
            node.body.insert(1 if docstring else 0, statement)
            ast.fix_missing_locations(node)
        return node

    def visit_Lambda(self, node: ast.Lambda) -> Any:
        generator = _is_generator(node)
        node = super().visit_Lambda(node)
        if isinstance(node, ast.Lambda):  # (_sandboxed_() or body): the check returns None
            node.body = ast.copy_location(
                ast.BoolOp(op=ast.Or(), values=[self._check(node.body), node.body]), node.body)
            ast.fix_missing_locations(node)
            if generator:  # lambda: (yield x): its generators wrapped as a def's are
                call = ast.Call(func=ast.Name(id="_sandboxed_generator_", ctx=ast.Load()),
                                args=[node], keywords=[])
                return ast.fix_missing_locations(ast.copy_location(call, node))
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


#: Entries of :data:`RESTRICTED_STDLIB_MODULES` offered without their submodules
#: (``urllib.request`` opens connections and installs the process-wide opener).
_PACKAGE_ONLY: frozenset[str] = frozenset({"urllib"})


def _offered(name: str) -> bool:
    asked = name
    while name:
        if name in RESTRICTED_STDLIB_MODULES and (name == asked or name not in _PACKAGE_ONLY):
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


# --- process-wide state -------------------------------------------------------------------


def _process_wide_setters() -> dict[int, tuple[Any, str]]:
    """Functions of offered modules that change state the whole process shares (the host's
    and every other request's): refused however the module was allowed. Keyed by the exact
    object; the value keeps it alive (ids stay unique) and says what it changes."""
    import calendar
    import csv
    import random
    import re
    import time
    import urllib.parse
    import zoneinfo

    entries: list[tuple[Any, str, str]] = [
        (random.seed, "random.seed", "the one hidden Random behind random's functions"),
        (random.setstate, "random.setstate", "the one hidden Random behind random's functions"),
        (decimal.setcontext, "decimal.setcontext", "the thread's decimal context (the host's)"),
        (zoneinfo.reset_tzpath, "zoneinfo.reset_tzpath", "where every ZoneInfo is looked up"),
        (calendar.setfirstweekday, "calendar.setfirstweekday",
         "the first weekday of calendar's module-level functions"),
        (calendar.different_locale, "calendar.different_locale", "the process's locale"),
        (calendar.LocaleTextCalendar, "calendar.LocaleTextCalendar",
         "the process's locale, while it formats"),
        (calendar.LocaleHTMLCalendar, "calendar.LocaleHTMLCalendar",
         "the process's locale, while it formats"),
        (csv.field_size_limit, "csv.field_size_limit", "the limit of every csv reader"),
        (csv.register_dialect, "csv.register_dialect", "the table of named csv dialects"),
        (csv.unregister_dialect, "csv.unregister_dialect", "the table of named csv dialects"),
        (time.tzset, "time.tzset", "the process's time zone"),
        (re.purge, "re.purge", "re's compiled-pattern cache"),
    ]
    for name in ("clock_settime", "clock_settime_ns"):
        if hasattr(time, name):
            entries.append((getattr(time, name), f"time.{name}", "the system clock"))
    if hasattr(urllib.parse, "clear_cache"):
        entries.append((urllib.parse.clear_cache, "urllib.parse.clear_cache",
                        "urllib.parse's caches"))
    return {id(value): (value, f"{name} (it changes {why})") for value, name, why in entries}


def _shared_methods() -> dict[tuple[int, str], tuple[Any, str]]:
    """Methods of objects the whole process shares, by (owner, name): a fresh bound method
    is made at each access, so the owner identifies them."""
    import calendar
    import zoneinfo

    entries: list[tuple[Any, str, str, str]] = [
        (calendar.c, "setfirstweekday", "calendar.c.setfirstweekday",
         "the first weekday of calendar's module-level functions"),
        (zoneinfo.ZoneInfo, "clear_cache", "zoneinfo.ZoneInfo.clear_cache",
         "the cache every ZoneInfo(key) lookup shares"),
    ]
    return {(id(owner), name): (owner, f"{label} (it changes {why})")
            for owner, name, label, why in entries}


#: Process-wide setters restricted code is never handed (see :func:`_process_wide_setters`).
PROCESS_WIDE_SETTERS: dict[int, tuple[Any, str]] = {}
_SHARED_METHODS: dict[tuple[int, str], tuple[Any, str]] = {}
_SHARED_METHOD_TYPES: tuple[type, ...] = ()
_SPECIAL_IDS: frozenset[int] = frozenset()
_tables_lock = threading.Lock()


def _build_tables() -> None:
    """Fill the lazy-constructor and process-wide tables (once, before any restricted code
    runs: every run gets its built-ins from :func:`restricted_builtins`, which calls this)."""
    global _LAZY_PROPERTY, _SHARED_METHOD_TYPES, _SPECIAL_IDS
    with _tables_lock:
        if _SPECIAL_IDS:
            return
        _LAZY_CONSTRUCTORS.update(_lazy_constructors())
        _LAZY_PROPERTY = _LAZY_CONSTRUCTORS[id(property)]
        PROCESS_WIDE_SETTERS.update(_process_wide_setters())
        _SHARED_METHODS.update(_shared_methods())
        _SHARED_METHOD_TYPES = tuple({type(getattr(owner, key[1]))
                                      for key, (owner, _) in _SHARED_METHODS.items()})
        _SPECIAL_IDS = frozenset(PROCESS_WIDE_SETTERS) | frozenset(_LAZY_CONSTRUCTORS)
_SHARED_METHOD_NAMES = frozenset(("register", "clear_flags", "clear_traps"))
_SHARED_DECIMAL_CONTEXTS = (decimal.DefaultContext, decimal.BasicContext,
                            decimal.ExtendedContext)


def _process_wide_refusal(what: str, label: str) -> AttributeRefused:
    return AttributeRefused(what, f"restricted mode does not hand out {label}, state the "
                                  "whole process shares (the host and every other request); "
                                  "Policy.allowed_modules does not change this")


def _refuse_shared_method(obj: Any, name: str, what: str) -> None:
    """Process-wide changes made through a method of a shared object: ``register`` of an
    abstract class (``collections.abc.Mapping.register(X)``: the host's ``isinstance`` checks;
    registering with a subclass reaches its bases too), ``clear_flags``/``clear_traps`` of a
    decimal context the host uses."""
    if name == "register" and isinstance(obj, abc.ABCMeta):
        _raise(_process_wide_refusal(what, "register of an abstract class (it changes the "
                                           "isinstance checks of the host's abstract classes)"))
    if name in ("clear_flags", "clear_traps") and isinstance(obj, decimal.Context) and (
            any(obj is shared for shared in _SHARED_DECIMAL_CONTEXTS)
            or obj is decimal.getcontext()):
        _raise(_process_wide_refusal(what, f"{name} of a shared decimal context (it changes "
                                           "the decimal arithmetic of the host's thread)"))


# --- read-only views of host containers --------------------------------------------------

_MUTABLE_CONTAINERS: tuple[type, ...] = (
    dict, list, set, bytearray, collections.deque, array.array, collections.abc.MutableMapping,
    collections.abc.MutableSequence, collections.abc.MutableSet)


#: Types that are never mutable containers: skips the (slower) abstract-class checks.
_PLAIN_TYPES: frozenset[type] = frozenset({
    int, float, complex, bool, str, bytes, type(None), tuple, frozenset, range, type,
    types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
    types.MethodDescriptorType, types.WrapperDescriptorType, types.MethodWrapperType,
    types.ClassMethodDescriptorType, types.GetSetDescriptorType, types.MemberDescriptorType,
    types.MappingProxyType, property, staticmethod, classmethod, decimal.Decimal})


class _HostTuple(tuple):  # type: ignore[type-arg]
    """A read-only copy of a host list (or deque, array): its items, viewed on reading."""

    __slots__ = ()


class _HostFrozenset(frozenset):  # type: ignore[type-arg]
    """A read-only copy of a host set."""

    __slots__ = ()


_VIEW_TYPES = (types.MappingProxyType, _HostTuple)


def _read_only(value: Any) -> Any:
    """A read-only view of a mutable host container: a live ``MappingProxyType`` of a dict
    (a copy of other mappings: a ``defaultdict``'s view would still insert), a tuple of a
    list, a frozenset of a set, bytes of a bytearray. The code's own objects stay as they
    are."""
    if (type(value) in _PLAIN_TYPES or not isinstance(value, _MUTABLE_CONTAINERS)
            or _made_by_restricted_code(value)):
        return value
    if isinstance(value, dict) and not isinstance(value, collections.defaultdict):
        return types.MappingProxyType(value)
    if isinstance(value, collections.abc.Mapping):
        return types.MappingProxyType(dict(value))
    if isinstance(value, collections.abc.Set):
        return _HostFrozenset(value)
    if isinstance(value, bytearray):
        return bytes(value)
    return _HostTuple(value)


def _owned_by_restricted_code(obj: Any, name: str) -> bool:
    """Whether attribute ``name`` of ``obj`` is restricted code's own: a global of one of its
    modules, or defined by one of its classes or on one of their instances."""
    if isinstance(obj, types.ModuleType):
        return _restricted_namespace(getattr(obj, "__dict__", None))
    if isinstance(obj, type):
        classes = obj.__mro__
    elif _is_restricted_class(type(obj)):
        try:
            if name in object.__getattribute__(obj, "__dict__"):
                return True
        except (AttributeError, TypeError):
            pass
        classes = type(obj).__mro__
    else:
        return False
    for klass in classes:
        if name in klass.__dict__:
            return _is_restricted_class(klass)
    return not isinstance(obj, type)  # an instance's own (a slot, its __getattr__)


def _check_result(value: Any, how: str) -> Any:
    """Refuse values that would reopen what the guards close, and hand out the restricted
    version of a constructor that keeps callables (:data:`_LAZY_CONSTRUCTORS`)."""
    if isinstance(value, types.ModuleType):
        _judge_module(value, how)
    elif id(value) in _GADGET_CALLABLES and not isinstance(value, (int, str)):
        _raise(AttributeRefused(how, f"restricted mode does not hand out "
                                     f"{_GADGET_CALLABLES[id(value)]}"))
    elif isinstance(value, _GADGET_TYPES):
        _raise(AttributeRefused(how, f"restricted mode does not hand out "
                                     f"{type(value).__name__} objects"))
    elif id(value) in _SPECIAL_IDS:
        setter = PROCESS_WIDE_SETTERS.get(id(value))
        if setter is not None and setter[0] is value:
            _raise(_process_wide_refusal(how, setter[1]))
        lazy = _LAZY_CONSTRUCTORS.get(id(value))
        if lazy is not None and lazy._original is value:
            return lazy
    elif isinstance(value, _SHARED_METHOD_TYPES):
        owner = getattr(value, "__self__", None)
        method = _SHARED_METHODS.get((id(owner), getattr(value, "__name__", "")))
        if method is not None and method[0] is owner:
            _raise(_process_wide_refusal(how, method[1]))
    return value


def _attribute_result(obj: Any, name: str, value: Any, how: str) -> Any:
    """The rules for ``obj.name`` once read: :func:`_check_result`, a read-only view of a
    mutable container that is not restricted code's own (a module's table, a host class's
    list), the wrapping methods of a ``property``."""
    value = _check_result(value, how)
    if isinstance(value, type) and issubclass(value, type) and value is not type:
        _raise(AttributeRefused(how, f"restricted mode does not hand out metaclasses "
                                     f"({value.__name__}): a class they build reaches past "
                                     "the class statement's checks"))
    if (type(value) not in _PLAIN_TYPES and isinstance(value, _MUTABLE_CONTAINERS)
            and not _owned_by_restricted_code(obj, name)):
        return _read_only(value)
    if name in _PROPERTY_METHODS and (isinstance(obj, property) or obj is _LAZY_PROPERTY):
        return _LazyConstructor(value, (0, 1))  # the property itself is not callable: kept
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
    if name in _SHARED_METHOD_NAMES:
        _refuse_shared_method(obj, name, what)
    try:
        value = safer_getattr(obj, name, _MISSING)
    except (AttributeError, NotImplementedError) as error:
        _raise(AttributeRefused(what, str(error)))
    value = _guarded_getattr_value(obj, name, value, default, what)
    if isinstance(obj, type) and name in _UNBOUND_SETTER_NAMES and callable(value):
        return _unbound_setter(value, name, what)
    return value


#: Setter methods whose unbound form (read from the class: ``Context.clear_traps(ctx)``,
#: ``ABCMeta.register(Mapping, X)``) is judged by the object passed as ``self``.
_UNBOUND_SETTER_NAMES = frozenset(("register", "clear_flags", "clear_traps",
                                   "setfirstweekday", "clear_cache"))


def _unbound_setter(function: Any, name: str, what: str) -> Any:
    """The unbound form of a setter method: refused when its first argument (the object it
    changes) is shared by the whole process."""
    def unbound(*args: Any, **kwargs: Any) -> Any:
        if args:
            target = args[0]
            _refuse_shared_method(target, name, what)
            method = _SHARED_METHODS.get((id(target), name))
            if method is not None and method[0] is target:
                _raise(_process_wide_refusal(what, method[1]))
        return function(*args, **kwargs)
    return unbound


def _guarded_getattr_value(obj: Any, name: str, value: Any, default: Any, what: str) -> Any:
    """The end of :func:`guarded_getattr`: a missing attribute, else the result rules."""
    if value is _MISSING:
        if default is not _MISSING:
            return default
        if isinstance(obj, (*_VIEW_TYPES, _HostFrozenset)):
            _raise(AttributeRefused(what, "a mutable container of a module or of an object "
                                          "restricted code did not make is handed out as a "
                                          "read-only view; change a copy (dict(x), list(x))"))
        # a fresh error: the one getattr raised carries the object in .obj
        raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}")
    return _attribute_result(obj, name, value, what)


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
    """``_getitem_``: the item, unless it is a module or gadget the guards would refuse; an
    item of a read-only view of a host container is viewed too."""
    value = _check_result(obj[index], f"item of {type(obj).__name__}")
    return _read_only(value) if isinstance(obj, _VIEW_TYPES) else value


def guarded_iter(obj: Any) -> Iterator[Any]:
    """``_getiter_``: ``iter``; the items of a read-only view of a host list are viewed."""
    if isinstance(obj, _HostTuple):
        return builtins.map(_read_only, obj)
    return iter(obj)


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
    klass = meta(name, bases, namespace, **kwargs)
    _RESTRICTED_CLASSES.add(klass)
    return klass


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
    names: dict[str, Any] = {}
    for item in fromlist or ():
        if isinstance(item, str) and item != "*":
            value = getattr(module, item, _MISSING)
            if value is _MISSING:
                _check_result(None, f"from {absolute} import {item}")
                continue
            names[item] = _attribute_result(module, item, value,
                                            f"from {absolute} import {item}")
    if any(names[item] is not getattr(module, item) for item in names):
        # the from-import reads the names off what this returns, past the attribute guard
        proxy = types.ModuleType(module.__name__)
        proxy.__dict__.update(names)
        return proxy
    return module


# Called through a frame whose file is not this library's, so the gate judges the import as
# an app's (never as a trusted standard-library one that may use private C modules).
_untrusted_call: Callable[..., Any] = eval(  # noqa: S307 - a fixed trampoline
    compile("lambda function, *args: function(*args)", "<gae_sandbox restricted code>", "eval")
)


def restricted_builtins(printed: list[str]) -> dict[str, Any]:
    """The built-ins and guards of one run: RestrictedPython's safe, limited and utility
    built-ins, common pure functions, refusing stubs, and the guard functions."""
    if not _SPECIAL_IDS:
        _build_tables()
    names: dict[str, Any] = dict(safe_builtins)
    names.update(utility_builtins)
    names.update(limited_builtins)
    names["range"] = range  # limited_range caps at 1000 items; the deadline bounds loops
    for name in ("all", "any", "bytes", "dict", "enumerate", "filter", "iter", "map", "max",
                 "min", "next", "reversed", "sorted", "sum", "zip", "NotImplemented",
                 "property", "staticmethod", "classmethod", "frozenset", "set"):
        value = getattr(builtins, name)
        names[name] = _LAZY_CONSTRUCTORS[id(value)] if id(value) in _LAZY_CONSTRUCTORS else value
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
        "_getiter_": guarded_iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_inplacevar_": guarded_inplacevar,
        "_apply_": guarded_apply,
        "_print_": lambda _getattr_=None: _SharedPrint(printed, _getattr_),
        "_sandboxed_": _require_sandbox,
        "_sandboxed_iter_": _sandboxed_iter,
        "_sandboxed_generator_": _sandboxed_generator,
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

