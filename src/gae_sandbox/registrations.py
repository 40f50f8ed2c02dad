"""Callbacks the app hands to process-wide machinery run later inside the app's sandbox.

Libraries register callbacks at import time (certifi's ``atexit.register``, a logging handler,
a ``weakref.finalize``); the machinery calls them later, from host code: at exit, when the
host logs, when an object dies. Refusing the registration breaks the library; letting the
callback run as host code lets the app out of its sandbox. So each callback registered from
inside a sandbox is wrapped: when it is called, it runs in a new scope under the policies of
the request that registered it (and of the request running at that moment, if any), with the
policy's deadline, and its refusals are recorded in that request's ``Sandbox`` report.

Covered: ``atexit.register`` (and ``unregister``), ``os.register_at_fork``,
``weakref.finalize``, ``codecs.register``, ``copyreg.pickle``, handlers and filters added to
loggers, ``logging.setLogRecordFactory``, and hooks assigned to ``sys.excepthook``,
``sys.unraisablehook``, ``sys.displayhook``, ``sys.breakpointhook`` and
``threading.excepthook``. A standard-library function registered without arguments (the
standard library's own ``logging.shutdown`` when ``logging`` is first imported inside a
request) is registered as it is: it is the interpreter's own code, and no argument of the
app's reaches it.
"""

from __future__ import annotations

import _thread
import atexit
import codecs
import copyreg
import gc
import logging
import os
import shutil
import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

from .context import HOST_ONLY_THREADS, Scope, active_scope, host_call, type_name
from .patches import ABSENT, _guarded, _named, _refuse_system, _refused_call

Patch = tuple[Any, str, Any, Any]

#: Values that carry no code of the app's when host code uses them (exact types only).
_PLAIN_TYPES = (str, bytes, int, float, bool, type(None))

_get_ident = _thread.get_ident

#: Set by sandbox.py: ``run_in_scope_of(scope, function, *args, **kwargs)``.
_runner: Callable[..., Any] | None = None


#: The standard library's own argument-less callbacks a request may register as they are,
#: by identity, captured as this module loads: ``weakref.finalize`` registers its class's
#: ``_exitfunc`` with ``atexit`` at its first use, ``logging`` its ``shutdown``. A function or
#: method found by name, module or file instead would be the app's to forge (a module
#: attribute it sets, a classmethod bound to its own class, code with a library file name).
_FINALIZE = weakref.finalize
_FINALIZE_EXIT = vars(_FINALIZE)["_exitfunc"].__func__
_STDLIB_CALLBACKS = (logging.shutdown,)


def _own_stdlib_callback(function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """One of the standard library's own callbacks (:data:`_STDLIB_CALLBACKS`, or
    ``weakref.finalize._exitfunc`` bound to ``weakref.finalize`` itself), registered with no
    arguments: the interpreter's own code, with nothing of the app's to run. Anything else a
    request registers runs in its sandbox."""
    if args or kwargs:
        return False
    if type(function) is types.MethodType:
        return function.__self__ is _FINALIZE and function.__func__ is _FINALIZE_EXIT
    return any(function is known for known in _STDLIB_CALLBACKS)


class SandboxedCallback:
    """A callable registered from inside a sandbox: called later, it runs in that sandbox."""

    __slots__ = ("__wrapped", "__scope", "__weakref__")

    def __init__(self, function: Any, scope: Scope) -> None:
        self.__wrapped = function
        self.__scope = scope

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if active_scope() is self.__scope:  # called back within the same request
            return self.__wrapped(*args, **kwargs)
        assert _runner is not None
        if _get_ident() in HOST_ONLY_THREADS:  # never app code on the deadline timer
            thread = threading.Thread(target=_runner, args=(self.__scope, self.__wrapped, *args),
                                      kwargs=kwargs, name="gae_sandbox-callback", daemon=True)
            host_call(thread.start)
            return None
        return _runner(self.__scope, self.__wrapped, *args, **kwargs)

    def wraps(self, function: Any) -> bool:
        return self.__wrapped is function or self.__wrapped == function

    def __repr__(self) -> str:  # not the app's __repr__: host code (atexit's report) asks
        return f"<sandboxed {type_name(self.__wrapped)} object>"


def sandboxed(function: Any, scope: Scope | None = None) -> Any:
    """``function`` wrapped to run in the active (or given) scope's sandbox when called.

    An object that is not callable yet is wrapped too when its class is the app's to change
    (it may get a ``__call__`` later); one of a built-in type (``None``) cannot."""
    scope = scope if scope is not None else active_scope()
    if scope is None or isinstance(function, SandboxedCallback) or not _may_be_called(
            function):
        return function
    return SandboxedCallback(function, scope)


def plain_result(value: Any, scope: Scope, depth: int = 0) -> Any:
    """What a callback of the app's returns, as host code may use it: exact ``str``,
    ``bytes``, ``int`` and ``float`` copies (read with the built-in types' own C methods, so
    no method of a subclass runs), tuples of those, and anything else wrapped to run in
    ``scope`` (:func:`_exported`)."""
    kind = type(value)
    if kind in _PLAIN_TYPES or kind is SandboxedCallback or kind is SandboxedObject:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes.__getitem__(value, slice(None))
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, tuple) and depth < 4:
        return tuple([plain_result(tuple.__getitem__(value, index), scope, depth + 1)
                      for index in range(tuple.__len__(value))])
    return _exported(value, scope)


class PlainCallback:
    """A callback whose result host code uses (a codec's function, an error handler, an
    archive format): run like :class:`SandboxedCallback`, its result made plain."""

    __slots__ = ("_call", "_scope")

    def __init__(self, function: Any, scope: Scope) -> None:
        self._call = SandboxedCallback(function, scope)
        self._scope = scope

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return plain_result(self._call(*args, **kwargs), self._scope)

    def wraps(self, function: Any) -> bool:
        return self._call.wraps(function)

    def __repr__(self) -> str:
        return repr(self._call)


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by Python code


def _may_be_called(value: Any) -> bool:
    """Callable now, or an instance of a class Python code made (it may get a ``__call__``
    later); a value of a built-in type that is not callable (``None``) never will be."""
    return callable(value) or bool(type(value).__flags__ & _HEAP_TYPE)


# --- atexit ---------------------------------------------------------------------------------

_exit_callbacks: list[SandboxedCallback] = []
_codec_searches: list[SandboxedCallback] = []


def _atexit_register(original: Callable[..., Any]) -> Callable[..., Any]:
    def register(function: Any, /, *args: Any, **kwargs: Any) -> Any:
        if active_scope() is None or _own_stdlib_callback(function, args, kwargs):
            return original(function, *args, **kwargs)
        wrapper = sandboxed(function)
        _exit_callbacks.append(wrapper)
        original(wrapper, *args, **kwargs)
        return function  # as atexit.register does, so it works as a decorator

    return _named(register, original)


def _unregister(original: Callable[..., Any],
                wrappers: list[SandboxedCallback]) -> Callable[..., Any]:
    """``atexit.unregister`` / ``codecs.unregister``: also the wrappers of ``function``."""

    def unregister(function: Any, /) -> None:
        if active_scope() is None:  # inside a sandbox: only what requests registered
            original(function)
        for wrapper in [w for w in wrappers if w.wraps(function)]:
            wrappers.remove(wrapper)
            original(wrapper)

    return _named(unregister, original)


def _codecs_register(original: Callable[..., Any]) -> Callable[..., Any]:
    def register(search_function: Any, /) -> None:
        scope = active_scope()
        if scope is not None:
            search_function = _CodecSearch(search_function, scope)
            _codec_searches.append(search_function)  # type: ignore[arg-type]
        original(search_function)

    return _named(register, original)


_CODEC_FUNCTIONS = ("encode", "decode", "streamreader", "streamwriter", "incrementalencoder",
                    "incrementaldecoder")


def _codec_fields(search: Any) -> Callable[[Any], Any]:
    """``search`` and the reading of the ``CodecInfo`` it returns, inside its sandbox."""

    def fields(name: Any) -> Any:
        info = search(name)
        if info is None:
            return None
        functions = tuple(getattr(info, attribute, None) for attribute in _CODEC_FUNCTIONS)
        codec_name = getattr(info, "name", None)
        return (*functions, codec_name if isinstance(codec_name, str) else None,
                bool(getattr(info, "_is_text_encoding", True)))

    return fields


class _CodecSearch:
    """A codec search function registered from inside a sandbox. The interpreter keeps what
    a search returns for the process's life (its codec cache) and calls its functions from
    host code too, so what goes back is a ``CodecInfo`` made here, whose functions run in
    the registering sandbox and return plain values."""

    __slots__ = ("_search", "_fields", "_scope")

    def __init__(self, search: Any, scope: Scope) -> None:
        self._search = search  # for codecs.unregister(search)
        self._fields = PlainCallback(_codec_fields(search), scope)
        self._scope = scope

    def __call__(self, name: Any) -> Any:
        fields = self._fields(name)
        if type(fields) is not tuple or len(fields) != len(_CODEC_FUNCTIONS) + 2:
            return None
        functions = [value if value is None else PlainCallback(value, self._scope)
                     for value in fields[:len(_CODEC_FUNCTIONS)]]
        codec_name, is_text = fields[-2:]
        info = codecs.CodecInfo(*functions, name=codec_name)
        info._is_text_encoding = bool(is_text)
        return info

    def wraps(self, function: Any) -> bool:
        return self._search is function

    def __repr__(self) -> str:
        return "<sandboxed codec search function>"


def _codecs_register_error(original: Callable[..., Any]) -> Callable[..., Any]:
    """``codecs.register_error``: from inside a sandbox a new error handler runs there and
    returns plain values; replacing one that exists (``strict``, ``replace``, ...) would
    change how the host's own text is encoded and decoded, and is refused."""
    lookup = codecs.lookup_error

    def register_error(name: Any, error_handler: Any, /) -> None:
        scope = active_scope()
        if scope is not None and isinstance(name, str):
            name = str.__str__(name)
            try:
                lookup(name)
            except LookupError:
                error_handler = PlainCallback(error_handler, scope)
            else:
                scope.judge(_refuse_system, f"codecs.register_error({name!r}, ...)",
                            _REPLACES_RULE.format(what="error handler"))
        original(name, error_handler)

    return _named(register_error, original)


_REPLACES_RULE = ("it replaces the process's {what} of that name, which the host's code uses "
                  "too; a new name may be registered")


def _archive_register(original: Callable[..., Any], formats: dict[str, Any],
                      what: str) -> Callable[..., Any]:
    """``shutil.register_archive_format`` / ``register_unpack_format``: from inside a
    sandbox a new format's function runs there; replacing a format (``zip``, ``gztar``,
    ...) would change what the host's own ``make_archive``/``unpack_archive`` do."""

    def register(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return original(*args, **kwargs)
        values = list(args)
        # all is stored and used by host code later: the function wrapped to run here, the
        # rest exact values read now
        for index, (keyword, plain) in enumerate(_ARCHIVE_ARGUMENTS[what]):
            make = plain or (lambda function: PlainCallback(function, scope))
            if len(values) > index:
                values[index] = make(values[index])
            elif keyword in kwargs:
                kwargs[keyword] = make(kwargs[keyword])
        name = values[0] if values else kwargs.get("name")
        if type(name) is str:
            if name in formats:
                scope.judge(_refuse_system, f"shutil.{what}({name!r}, ...)",
                            _REPLACES_RULE.format(what="archive format"))
            _sandbox_formats.add((what, name))
        return original(*values, **kwargs)

    return _named(register, original)


def _plain_strings(values: Any) -> Any:
    """A list of exact ``str`` (an unpack format's extensions), or the value as it is."""
    if values is None or isinstance(values, str):
        return values
    return [str.__str__(value) if isinstance(value, str) else value for value in values]


def _plain_pairs(pairs: Any) -> Any:
    """``extra_args``: a list of exact ``(str, value)`` tuples (their values reach only the
    format's own function, which runs in the sandbox)."""
    if pairs is None:
        return None
    plain = []
    for pair in pairs:
        name, value = pair
        plain.append((str.__str__(name) if isinstance(name, str) else name, value))
    return plain


def _plain_text(text: Any) -> Any:
    return str.__str__(text) if isinstance(text, str) else text


#: Each registration function's parameters in order: keyword, and how its value is made
#: plain (None: the format's function, wrapped to run in the sandbox instead).
_ARCHIVE_ARGUMENTS: dict[str, tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {
    "register_archive_format": (("name", _plain_text), ("function", None),
                                ("extra_args", _plain_pairs), ("description", _plain_text)),
    "register_unpack_format": (("name", _plain_text), ("extensions", _plain_strings),
                               ("function", None), ("extra_args", _plain_pairs),
                               ("description", _plain_text)),
}


#: (registration function, format name) of archive formats registered from inside sandboxes.
_sandbox_formats: set[tuple[str, str]] = set()


def _archive_unregister(original: Callable[..., Any], what: str) -> Callable[..., Any]:
    """Inside a sandbox only formats registered from inside one may be removed."""

    def unregister(name: Any) -> Any:
        scope = active_scope()
        if scope is not None and (what, name if type(name) is str else None) not in (
                _sandbox_formats):
            scope.judge(_refuse_system, f"shutil.un{what}({name!r})",
                        "the format is the host's (registered outside any sandbox)")
        return original(name)

    return _named(unregister, original)


# --- functions taking a callable ------------------------------------------------------------


def _wrapping(original: Callable[..., Any], *positions: int,
              keywords: tuple[str, ...] = ()) -> Callable[..., Any]:
    """``original`` with the callables at ``positions`` / ``keywords`` wrapped in a sandbox."""

    def register(*args: Any, **kwargs: Any) -> Any:
        if active_scope() is not None:
            args = tuple(sandboxed(a) if i in positions else a for i, a in enumerate(args))
            for key in keywords:
                if key in kwargs:
                    kwargs[key] = sandboxed(kwargs[key])
        return original(*args, **kwargs)

    return _named(register, original)


def _plain_arguments(original: Callable[..., Any], skip: int = 0) -> Callable[..., Any]:
    """A function that keeps its arguments in a process-wide table host code reads later
    (``logging.addLevelName``, ``mimetypes.add_type``): inside a sandbox each argument after
    the first ``skip`` (``self``) is made plain first (:func:`plain_result`: exact ``str``/
    ``int`` copies), so no method of the app's (a ``str`` subclass's ``__str__``,
    ``__hash__``, ``__eq__``) runs when the host looks a value up or formats it."""

    def store(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            args = args[:skip] + tuple(plain_result(value, scope) for value in args[skip:])
            kwargs = {key: plain_result(value, scope) for key, value in kwargs.items()}
        return original(*args, **kwargs)

    return _guarded(store, original)


def _finalize_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, obj: Any, func: Any, /, *args: Any, **kwargs: Any) -> None:
        if active_scope() is not None and not _own_stdlib_callback(func, args, kwargs):
            func = sandboxed(func)
        original(self, obj, func, *args, **kwargs)

    return _named(__init__, original)


# --- logging --------------------------------------------------------------------------------


_LogRecord = logging.LogRecord


def _record_factory_setter(original: Callable[..., Any]) -> Callable[..., Any]:
    """``logging.setLogRecordFactory``: a factory set from inside a sandbox makes the records
    of every logging call, the host's too. It runs in that sandbox, and what it returns
    crosses into host code as plain data: the record host handlers format is the host's own
    ``LogRecord`` of the call's arguments, with the factory's record's attributes of exact
    ``str``/``bytes``/``int``/``float``/``bool``/``None`` value copied onto it (a ``getMessage`` or
    ``__str__`` of the app's would otherwise run in host code)."""

    def setLogRecordFactory(factory: Any) -> Any:  # noqa: N802 - logging's own name
        scope = active_scope()
        if scope is not None and factory is not _LogRecord and _may_be_called(factory):
            factory = _PlainRecordFactory(SandboxedCallback(_plain_fields(factory), scope))
        return original(factory)

    return _named(setLogRecordFactory, original)


def _plain_fields(factory: Any) -> Callable[..., dict[str, Any]]:
    """``factory``'s record reduced, inside its sandbox, to a dict of plain attributes."""

    def fields(*args: Any, **kwargs: Any) -> dict[str, Any]:
        record = factory(*args, **kwargs)
        values = getattr(record, "__dict__", None)
        if type(values) is not dict:
            return {}
        return {key: value for key, value in dict.items(values)
                if type(key) is str and type(value) in _PLAIN_TYPES}

    return fields


class _PlainRecordFactory:
    """The record factory host code calls: the host's own record, the app's plain fields."""

    __slots__ = ("_fields",)

    def __init__(self, fields: SandboxedCallback) -> None:
        self._fields = fields

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fields = self._fields(*args, **kwargs)
        record = _LogRecord(*args, **kwargs)
        if type(fields) is dict:  # made in the sandbox by _plain_fields: exact keys, values
            record.__dict__.update(fields)
        return record

    def __repr__(self) -> str:
        return "<sandboxed log record factory>"


class SandboxedHandler:
    """A logging handler added from inside a sandbox: the host's logging calls reach it
    through here, and it formats and emits inside the sandbox that added it."""

    def __init__(self, handler: Any, scope: Scope) -> None:
        self._handler = handler
        self._handle = SandboxedCallback(handler.handle, scope)

    @property
    def level(self) -> Any:
        return self._handler.level

    def handle(self, record: Any) -> Any:
        return self._handle(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SandboxedHandler):
            other = other._handler
        return self._handler is other

    def __hash__(self) -> int:
        return id(self._handler)

    def __repr__(self) -> str:
        return f"<sandboxed {self._handler!r}>"


class _SandboxedFilter:
    def __init__(self, filter_: Any, scope: Scope) -> None:
        self._filter = filter_
        method = getattr(filter_, "filter", None)
        self.filter = SandboxedCallback(method if callable(method) else filter_, scope)

    def __eq__(self, other: object) -> bool:
        return self._filter is getattr(other, "_filter", other)

    def __hash__(self) -> int:
        return id(self._filter)


def _add_handler(original: Callable[..., Any]) -> Callable[..., Any]:
    def addHandler(self: Any, handler: Any) -> None:  # noqa: N802
        scope = active_scope()
        if scope is not None and not isinstance(handler, SandboxedHandler):
            handler = SandboxedHandler(handler, scope)
        original(self, handler)

    return _named(addHandler, original)


def _add_filter(original: Callable[..., Any]) -> Callable[..., Any]:
    def addFilter(self: Any, filter_: Any) -> None:  # noqa: N802
        scope = active_scope()
        if scope is not None and not isinstance(filter_, _SandboxedFilter):
            filter_ = _SandboxedFilter(filter_, scope)
        original(self, filter_)

    return _named(addFilter, original)


def _add_handler_ref(original: Callable[..., Any]) -> Callable[..., Any]:
    def _addHandlerRef(handler: Any) -> None:  # noqa: N802
        if active_scope() is None:  # logging.shutdown() at exit flushes and closes these:
            original(handler)       # the app's would run as host code

    return _named(_addHandlerRef, original)


def _set_formatter(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Handler.setFormatter`` from inside a sandbox (a handler of the host's, too): the
    formatter formats in that sandbox and hands back an exact ``str``."""

    def setFormatter(self: Any, fmt: Any) -> None:  # noqa: N802 - logging's own name
        scope = active_scope()
        if scope is not None and fmt is not None and not isinstance(fmt, SandboxedFormatter):
            fmt = SandboxedFormatter(fmt, scope)
        original(self, fmt)

    return _named(setFormatter, original)


class SandboxedFormatter:
    """A formatter set from inside a sandbox: host handlers call ``format`` (and read its
    other attributes) through here; each runs in the sandbox that set it."""

    __slots__ = ("_target", "_format")

    def __init__(self, formatter: Any, scope: Scope) -> None:
        self._target = SandboxedObject(formatter, scope)
        self._format = PlainCallback(_formatted(formatter), scope)

    def format(self, record: Any) -> str:
        text = self._format(record)
        return text if type(text) is str else ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return "<sandboxed logging formatter>"


def _formatted(formatter: Any) -> Callable[[Any], str]:
    def format_record(record: Any) -> str:
        return str(formatter.format(record))

    return format_record


def _logger_class_setter(original: Callable[..., Any]) -> Callable[..., Any]:
    """``logging.setLoggerClass`` (and the manager's): the class of every logger made later,
    the host's too. From inside a sandbox only ``logging.Logger`` (or the class already
    set) may be chosen."""
    default = logging.Logger

    def setLoggerClass(*args: Any) -> Any:  # noqa: N802 - logging's own name
        scope = active_scope()
        if scope is not None:
            klass = args[-1] if args else None
            if klass is not default and klass is not logging.getLoggerClass():
                scope.judge(_refuse_system, "logging.setLoggerClass()",
                            "the logger class is the whole process's: the host's loggers "
                            "would be made by the app's class")
        return original(*args)

    return _named(setLoggerClass, original)


def _object_setter(original: Callable[..., Any]) -> Callable[..., Any]:
    """A setter of a process-wide object whose methods host code calls later
    (``urllib.request.install_opener``): an object set from inside a sandbox is wrapped so
    that they run there (:class:`SandboxedObject`)."""

    def set_object(value: Any, /) -> Any:
        scope = active_scope()
        if scope is not None and type(value) not in _PLAIN_TYPES and not isinstance(
                value, (SandboxedObject, SandboxedCallback)):
            value = SandboxedObject(value, scope)
        return original(value)

    return _named(set_object, original)


# --- hooks assigned as module attributes ----------------------------------------------------

#: Module attributes the interpreter or the standard library calls later from host code.
HOOK_ATTRIBUTES: dict[str, frozenset[str]] = {
    "sys": frozenset({"excepthook", "unraisablehook", "displayhook", "breakpointhook"}),
    "threading": frozenset({"excepthook"}),
    "warnings": frozenset({"showwarning", "formatwarning"}),
}
#: Module attributes holding objects whose methods host code calls later: the standard
#: streams (every host ``print``) and logging's handler of last resort.
OBJECT_ATTRIBUTES: dict[str, frozenset[str]] = {
    "sys": frozenset({"stdout", "stderr", "stdin", "__stdout__", "__stderr__", "__stdin__"}),
    "logging": frozenset({"lastResort"}),
}
class SandboxedObject:
    """An object the app left where host code uses it (``sys.stdout = Out()``): attributes
    are read, and methods called, inside the sandbox that put it there; what they give back
    is an exact ``str``/``bytes``/number, or wrapped again. Threads of that request still
    reach the object directly."""

    __slots__ = ("__target", "__scope")

    def __init__(self, target: Any, scope: Scope) -> None:
        object.__setattr__(self, "_SandboxedObject__target", target)
        object.__setattr__(self, "_SandboxedObject__scope", scope)

    def __getattr__(self, name: str) -> Any:
        if active_scope() is self.__scope:
            return getattr(self.__target, name)
        if _get_ident() in HOST_ONLY_THREADS:  # the deadline timer runs no app code: what
            return _discard                    # it would write to the app's stream is dropped
        assert _runner is not None
        return _exported(_runner(self.__scope, _read_plain, self.__target, name), self.__scope)

    def __setattr__(self, name: str, value: Any) -> None:
        if active_scope() is self.__scope:
            setattr(self.__target, name, value)
            return
        assert _runner is not None
        _runner(self.__scope, setattr, self.__target, name, value)

    def __repr__(self) -> str:
        return f"<sandboxed {type_name(self.__target)} object>"


def _discard(*args: Any, **kwargs: Any) -> None:
    return None


def _read_plain(target: Any, name: str) -> Any:
    """``getattr``, run in the app's sandbox: a value of a plain type comes back exact (a
    ``str`` subclass's own methods never reach the host)."""
    value = getattr(target, name)
    for plain in _PLAIN_TYPES:
        if isinstance(value, plain) and type(value) is not plain:
            return plain(value)
    return value


def _exported(value: Any, scope: Scope) -> Any:
    if type(value) in _PLAIN_TYPES or isinstance(value, (SandboxedObject, SandboxedCallback)):
        return value
    if callable(value):
        return SandboxedCallback(value, scope)
    return SandboxedObject(value, scope)


class _HookedModule(types.ModuleType):
    """The class of ``sys``, ``threading``, ``warnings`` and ``logging`` while installed: a
    hook or object assigned from inside a sandbox is wrapped to run in it, unless it is a
    value the host had there (``contextlib.redirect_stdout`` putting the host's stream
    back). Reads are untouched (no ``__getattribute__``).

    Only those modules change class: the import system makes new modules with
    ``type(sys)(name)``, which gives a plain module, not this class."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        return types.ModuleType(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        module = types.ModuleType.__getattribute__(self, "__name__")
        hook = name in HOOK_ATTRIBUTES.get(module, ())
        if hook or name in OBJECT_ATTRIBUTES.get(module, ()):  # any other name: as it is
            scope = active_scope()
            if scope is None:  # the host's own value (pytest's capture swapping sys.stdout)
                _remember_host_value(module, name, value)
            elif any(value is v for v in _host_values.get((module, name), ())) or (
                    type(value) in _PLAIN_TYPES):
                pass
            elif hook:
                value = sandboxed(value)
            elif not isinstance(value, (SandboxedObject, SandboxedCallback)):
                # the request uses its own object as it is (iteration, isinstance, with);
                # what it leaves there is wrapped when its scope closes (wrap_left_objects)
                scope.extras.setdefault("left_objects", []).append((self, name, value))
        types.ModuleType.__setattr__(self, name, value)


def wrap_left_objects(scope: Scope) -> None:
    """Called as ``scope`` closes: an object the request put in ``sys.stdout`` (or another
    of :data:`OBJECT_ATTRIBUTES`) and left there is wrapped, so later host code reaches it
    only through the request's sandbox."""
    for module, name, value in scope.extras.pop("left_objects", ()):
        if vars(module).get(name) is value:
            types.ModuleType.__setattr__(module, name, SandboxedObject(value, scope))


#: (module, attribute) -> values host code assigned (or found at install): never wrapped.
_host_values: dict[tuple[str, str], list[Any]] = {}


def _remember_host_value(module: str, name: str, value: Any) -> None:
    """Keep ``value`` among the recent host values of ``module.name`` (what a request may
    put back, unwrapped)."""
    values = _host_values.setdefault((module, name), [])
    if not any(value is v for v in values):
        values.append(value)
        del values[:-8]


def hook_modules() -> list[Patch]:
    """Patches (as ``(module, "__class__", old, new)``) that route hook assignments."""
    modules = [sys.modules.get(name) for name in (*HOOK_ATTRIBUTES, *OBJECT_ATTRIBUTES)]
    found = [m for m in dict.fromkeys(modules) if type(m) is types.ModuleType]
    for module in found:
        for name in (*HOOK_ATTRIBUTES.get(module.__name__, ()),
                     *OBJECT_ATTRIBUTES.get(module.__name__, ())):
            _remember_host_value(module.__name__, name, vars(module).get(name))
    return [(module, "__class__", type(module), _HookedModule) for module in found]


# --- the table ------------------------------------------------------------------------------


def build_patches() -> list[Patch]:
    """Every (owner, attribute, original, replacement) this layer installs."""
    patches: list[Patch] = []

    def add(owner: Any, attribute: str, make: Callable[[Any], Any]) -> None:
        original = vars(owner).get(attribute) if isinstance(owner, type) else getattr(
            owner, attribute, None)
        if original is not None:
            patches.append((owner, attribute, original, make(original)))

    add(atexit, "register", _atexit_register)
    # threading's own exit list (concurrent.futures registers there), and the hooks of
    # asynchronous generators a thread keeps after the request
    add(threading, "_register_atexit", lambda original: _wrapping(original, 0))
    add(sys, "set_asyncgen_hooks", lambda original: _wrapping(
        original, 0, 1, keywords=("firstiter", "finalizer")))
    add(atexit, "unregister", lambda original: _unregister(original, _exit_callbacks))
    for module in (os, sys.modules[os.name]):  # os re-exports posix's: both names
        add(module, "register_at_fork", lambda original: _wrapping(
            original, keywords=("before", "after_in_child", "after_in_parent")))
    for module in (codecs, sys.modules["_codecs"]):
        add(module, "register", _codecs_register)
        add(module, "register_error", _codecs_register_error)
        add(module, "unregister", lambda original: _unregister(original, _codec_searches))
    add(copyreg, "pickle", lambda original: _wrapping(original, 1, 2))
    add(weakref.finalize, "__init__", _finalize_init)
    add(logging.Logger, "addHandler", _add_handler)
    add(logging.Filterer, "addFilter", _add_filter)
    add(logging, "_addHandlerRef", _add_handler_ref)
    add(logging, "setLogRecordFactory", _record_factory_setter)
    # logging.disable silences every logger of the process, the host's and the sandbox's own
    add(logging, "disable", lambda original: _refused_call(
        original, _refuse_system, "logging.disable()",
        "it silences the logging of the whole process, the host's included"))
    add(shutil, "register_archive_format", lambda original: _archive_register(
        original, shutil._ARCHIVE_FORMATS, "register_archive_format"))
    add(shutil, "register_unpack_format", lambda original: _archive_register(
        original, shutil._UNPACK_FORMATS, "register_unpack_format"))
    add(shutil, "unregister_archive_format", lambda original: _archive_unregister(
        original, "register_archive_format"))
    add(shutil, "unregister_unpack_format", lambda original: _archive_unregister(
        original, "register_unpack_format"))
    add(logging.Handler, "setFormatter", _set_formatter)
    add(logging, "addLevelName", _plain_arguments)
    add(logging, "setLoggerClass", _logger_class_setter)
    add(logging.Manager, "setLoggerClass", _logger_class_setter)
    patches.extend(_gc_callbacks_patches())
    LATE_PENDING.clear()
    LATE_PENDING.update(LATE_BUILDERS)
    patches.extend(late_patches())
    return patches + hook_modules()


def _event_loop_policy(module: Any) -> list[Patch]:
    """``asyncio.set_event_loop_policy``: the policy makes every thread's event loop, the
    host's too; refused inside a sandbox (what the request sets any other way is put back
    as it ends: :func:`event_loop_state`). In ``asyncio.events`` and the package's copy."""
    _LOOP_SLOT[:] = [vars(module).get("_get_running_loop"),
                     vars(module).get("_set_running_loop")]  # the C functions, as loaded
    original = vars(module).get("set_event_loop_policy")
    if original is None:
        return []
    replacement = _refused_call(original, _refuse_system, "asyncio.set_event_loop_policy()",
                                "the event loop policy is the whole process's: the host's "
                                "threads would get their event loops from the app's policy")
    found = [(module, "set_event_loop_policy", original, replacement)]
    package = sys.modules.get("asyncio")
    if package is not None and vars(package).get("set_event_loop_policy") is original:
        found.append((package, "set_event_loop_policy", original, replacement))
    return found


#: ``asyncio.events``' own functions for the thread's running loop, taken when it loaded.
_LOOP_SLOT: list[Any] = []
_LOCAL_GET = _thread._local.__getattribute__
_LOCAL_SET = _thread._local.__setattr__
_OBJECT_GET = object.__getattribute__


def event_loop_state(events: Any) -> tuple[Any, ...]:
    """What asyncio keeps for this thread and for the process, read with built-in methods
    only: the policy, its attributes (a child watcher is kept there), its thread-local, that
    local's loop and flag, and the running loop. A request can change each of them in many
    ways (``set_event_loop``, the policy's method, ``_set_running_loop``, the module's
    variable); the host's threads then hand their next coroutine to the app's loop. So the
    state is read as a scope opens, and :func:`restore_event_loop_state` puts it back as it
    closes. Meanwhile the thread has no event loop, set or running: the request makes its
    own (``asyncio.run``), as a request thread of the runtime would, and the host's loop is
    not handed to it (its task factory, exception handler and callbacks would run the app's
    functions as host code)."""
    policy = vars(events).get("_event_loop_policy")
    local = loop = called = attributes = None
    if policy is not None:
        try:
            values = _OBJECT_GET(policy, "__dict__")
            attributes = dict(values)
            local = values.get("_local")
            if isinstance(local, _thread._local):
                loop = _LOCAL_GET(local, "_loop")
                called = _LOCAL_GET(local, "_set_called")
                if loop is not None:
                    _LOCAL_SET(local, "_loop", None)  # (the flag stays: no loop is made
                    # for the request by get_event_loop where the host had set one)
        except Exception:  # noqa: BLE001 - a policy without these: nothing more to keep
            local = None
    running = None
    if len(_LOOP_SLOT) == 2 and _LOOP_SLOT[0] is not None:
        running = _LOOP_SLOT[0]()
        if running is not None and _LOOP_SLOT[1] is not None:
            _LOOP_SLOT[1](None)
    return (_get_ident(), policy, attributes, local, loop, called, running)


def restore_event_loop_state(events: Any, state: tuple[Any, ...] | None) -> None:
    """Put back what :func:`event_loop_state` read (``None``: asyncio was first imported by
    the request, so nothing was set), on the thread that read it."""
    thread, policy, attributes, local, loop, called, running = state or (
        _get_ident(), None, None, None, None, None, None)
    if thread != _get_ident():
        return
    module_vars = vars(events)
    if module_vars.get("_event_loop_policy") is not policy:
        module_vars["_event_loop_policy"] = policy
    if policy is not None and attributes is not None:
        try:
            values = _OBJECT_GET(policy, "__dict__")
            if values.keys() != attributes.keys() or any(
                    values[name] is not value for name, value in attributes.items()):
                values.clear()
                values.update(attributes)
            if isinstance(local, _thread._local) and (
                    _LOCAL_GET(local, "_loop") is not loop
                    or _LOCAL_GET(local, "_set_called") is not called):
                _LOCAL_SET(local, "_loop", loop)
                _LOCAL_SET(local, "_set_called", called)
        except Exception:  # noqa: BLE001, S110 - a policy without these: nothing to restore
            pass
    if len(_LOOP_SLOT) == 2 and _LOOP_SLOT[1] is not None and _LOOP_SLOT[0]() is not running:
        _LOOP_SLOT[1](running)


def _opener(module: Any) -> list[Patch]:
    original = vars(module).get("install_opener")
    if original is None:
        return []
    return [(module, "install_opener", original,
             _object_setter(original))]


#: Modules often imported after the sandbox is installed, with the patches of each: made
#: when the module first appears (sandbox.py: at a scope's start, and right after a request
#: loads one, before its code can call them).
def _mime_types(module: Any) -> list[Patch]:
    """``mimetypes.add_type`` (the module function calls the method on its database): the
    app's type and extension, read later by host code (a server's static files), plain."""
    original = vars(module.MimeTypes).get("add_type")
    if original is None:
        return []
    return [(module.MimeTypes, "add_type", original, _plain_arguments(original, skip=1))]


def _module_cleanups(module: Any) -> list[Patch]:
    """``unittest.addModuleCleanup``, ``TestCase.addClassCleanup`` and ``addCleanup`` (and the
    ``enter*Context`` methods, which call them): a test runner (host code) calls the
    functions later, at the module's, the class's or the test's end."""
    found: list[Patch] = []
    original = vars(module).get("addModuleCleanup")
    if original is not None:
        found.append((module, "addModuleCleanup", original, _wrapping(original, 0)))
        package = sys.modules.get("unittest")
        if package is not None and vars(package).get("addModuleCleanup") is original:
            found.append((package, "addModuleCleanup", original, found[0][3]))
    case = vars(module).get("TestCase")
    if isinstance(case, type):
        method = vars(case).get("addCleanup")
        if callable(method):
            found.append((case, "addCleanup", method, _wrapping(method, 1)))
        held = vars(case).get("addClassCleanup")
        if type(held) is classmethod:
            found.append((case, "addClassCleanup", held,
                          classmethod(_wrapping(held.__func__, 1))))
    return found


LATE_BUILDERS: dict[str, Callable[[Any], list[Patch]]] = {
    "asyncio.events": _event_loop_policy,
    "urllib.request": _opener,
    "mimetypes": _mime_types,
    "unittest.case": _module_cleanups,
    "sqlite3": lambda module: _memoryfs().sqlite_patches(module),
}


def _memoryfs() -> Any:
    from . import memoryfs

    return memoryfs
LATE_PENDING: set[str] = set()


def late_patches() -> list[Patch]:
    """The patches of the pending late modules that are now imported (no longer pending)."""
    found: list[Patch] = []
    for name in [name for name in LATE_PENDING if name in sys.modules]:
        LATE_PENDING.discard(name)
        module = sys.modules.get(name)
        if module is not None:
            found.extend(LATE_BUILDERS[name](module))
    return found


_GC_CALLBACKS_RULE = ("the collector calls them from whatever thread collects, the host's "
                      "included, outside the request")


def _gc_callbacks_patches() -> list[Patch]:
    """``gc.callbacks``: one process-wide list the collector calls from whatever code
    triggers a collection, appended to with no audit event. The module attribute is
    removed while installed and answered by the module's ``__getattr__``: the list for host
    code, refused inside a sandbox (report mode: recorded, then the list)."""
    callbacks = vars(gc).get("callbacks")
    if type(callbacks) is not list or "__getattr__" in vars(gc):
        return []

    def attribute(name: str) -> Any:
        if type(name) is str and name == "callbacks":  # an exact str: no app __eq__
            return callbacks
        raise AttributeError(f"module 'gc' has no attribute {name!r}" if type(name) is str
                             else "module 'gc' attribute names are str")

    def checked_attribute(name: str) -> Any:
        if type(name) is not str:  # an app object's __eq__ could answer twice differently
            raise AttributeError("module 'gc' attribute names are str")
        scope = active_scope()
        if scope is not None and name == "callbacks":
            scope.judge(_refuse_system, "gc.callbacks", _GC_CALLBACKS_RULE)
        return attribute(name)

    attribute.__qualname__ = attribute.__name__ = "__getattr__"
    attribute.__module__ = "gc"
    return [(gc, "callbacks", callbacks, ABSENT),
            (gc, "__getattr__", ABSENT, _guarded(checked_attribute, attribute))]
