"""Which sandbox, if any, governs the running code.

Every enforcement point starts with ``active_scope()``; ``None`` means host code, straight
through to the original function. A :class:`Scope` is one entered ``Sandbox``; nested
sandboxes form a stack of layers, and an operation must pass every layer, so nesting can only
narrow what is allowed.

The execution context carries a :class:`ScopeTicket`, not the scope: app code can list the
context's variables (``contextvars.copy_context()``) and set them, so what it finds there must
hold nothing to change. The scope is looked up by the ticket here. And each thread running a
scope's code is marked with its ticket, so a context with no ticket (``contextvars.Context()``,
the variable set to ``None``) on such a thread is still that scope's: no ticket means host code
only on a thread no scope runs on, or inside :func:`host_call`.
"""

from __future__ import annotations

import builtins
import contextvars
import importlib
import operator
import os
import sys
from _thread import get_ident as _get_ident
from _weakref import ref as _weak_reference
from collections.abc import Callable
from contextvars import ContextVar
from functools import partial as _partial
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import SandboxStateRefused, SandboxViolation
from .paths import is_inside, realpath_of_file
from .report import Report, Violation
from .runtime import interpreter_library_folders

if TYPE_CHECKING:
    from .policy import Policy

#: Threads of this library that never run app code (the deadline timer): a callback the app
#: registered that is called on one of them (a finalizer the collector runs there, a logging
#: handler reached by the timer's own log line) runs on a thread of its own instead.
HOST_ONLY_THREADS: set[int] = set()

_ACTIVE: ContextVar[ScopeTicket | None] = ContextVar("gae_sandbox.active", default=None)
#: Set while a patched function lets a reported operation through, so the audit hook does not
#: record the same operation a second time.
_PASSTHROUGH: ContextVar[bool] = ContextVar("gae_sandbox.passthrough", default=False)

#: Set while the library itself does work in a request's scope on the host's behalf
#: (formatting the app's error for the log): refusals still apply, but are not the app's, so
#: they are not recorded.
_QUIET: ContextVar[bool] = ContextVar("gae_sandbox.quiet", default=False)


class ScopeTicket:
    """What the context carries for a scope: an object with no state of its own."""

    __slots__ = ("__weakref__",)

    def __repr__(self) -> str:
        return "<gae_sandbox scope ticket>"


#: hash(ticket) -> its Scope, while the ticket lives (a weak reference's callback forgets it).
_scopes: dict[int, Scope] = {}
#: thread ident -> the ticket of the scope whose code that thread runs (the C accelerator
#: reads it too).
_thread_tickets: dict[int, ScopeTicket] = {}
_get_ticket = _ACTIVE.get


#: What host code run from inside a scope has in the variable (:func:`host_call`): a fresh
#: copy of the context holds it for the call, so no exception can leave it behind.
_HOST = ScopeTicket()


# --- the optional C accelerator -------------------------------------------------------------

#: Set to 1 to run the pure-Python code even where the C accelerator is built.
PURE_PYTHON_VARIABLE = "GAE_SANDBOX_PURE_PYTHON"


def _load_speedups() -> tuple[Any, str]:
    """``gae_sandbox._speedups`` (``_speedups.c``) and why not, when it is not used."""
    if os.environ.get(PURE_PYTHON_VARIABLE) == "1":
        return None, f"{PURE_PYTHON_VARIABLE}=1"
    name = f"{__package__}._speedups"
    try:
        return importlib.import_module(name), ""
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == name:
            return None, f"{name} is not built"  # no compiler where it was installed
        return None, f"{name} does not import: {error}"  # built for another Python, broken


#: The C accelerator module, or ``None`` (and why not): the pure-Python code is used.
SPEEDUPS, PURE_PYTHON_REASON = _load_speedups()
if SPEEDUPS is not None:  # the C checks see the thread marks and the scopes too
    SPEEDUPS.watch_threads(_thread_tickets, _HOST, _scopes, ScopeTicket)


def _refuse_state() -> SandboxStateRefused:
    return SandboxStateRefused(
        "the sandbox's context variable", "it holds a value the sandbox did not put there "
        "(app code set it); every operation in this context is refused")


def _scope_of(ticket: Any) -> Scope:
    # a ScopeTicket's hash comes from its address: no other live ticket has it (and id(),
    # which would say the same, raises an audit event)
    scope = _scopes.get(hash(ticket)) if type(ticket) is ScopeTicket else None
    if scope is None:
        raise _refuse_state()
    return scope


def active_scope() -> Scope | None:
    """The scope governing the running code, or ``None`` for host code.

    On a thread marked as running a scope, that scope governs, whatever the context holds,
    unless the context holds an open scope nested inside it (a sandbox entered within)."""
    ticket = _get_ticket()
    if ticket is _HOST:
        return None
    mark = _thread_tickets.get(_get_ident()) if _thread_tickets else None
    if mark is None or ticket is mark:
        return None if ticket is None else _scope_of(ticket)
    if ticket is None:
        return _scope_of(mark)
    scope = _scope_of(ticket)
    marked = _scope_of(mark)
    within = scope.parent
    while within is not None and within is not marked:
        within = within.parent
    if within is None or scope.closed:  # another request's ticket, or an ended one
        raise _refuse_state()
    return scope


def mark_thread(ticket: ScopeTicket | None) -> ScopeTicket | None:
    """Mark the current thread as running ``ticket``'s scope (``None``: host code); returns
    the previous mark, for :func:`restore_mark`."""
    ident = _get_ident()
    previous = _thread_tickets.get(ident)
    if ticket is None:
        _thread_tickets.pop(ident, None)
    else:
        _thread_tickets[ident] = ticket
    return previous


def restore_mark(previous: ScopeTicket | None) -> None:
    if previous is None:
        _thread_tickets.pop(_get_ident(), None)
    else:
        _thread_tickets[_get_ident()] = previous


def run_marked(ticket: ScopeTicket | None, function: Callable[..., Any], *args: Any,
               **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` with this thread marked as running ``ticket``'s scope."""
    previous = mark_thread(ticket)
    try:
        return function(*args, **kwargs)
    finally:
        restore_mark(previous)


def host_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call host code (the server's ``start_response``, this library's own log records and
    ctypes calls) from inside a scope. It runs in a copy of the current context whose
    variable says "host"; the thread's mark stays, and ``Context.run`` (C) returns to the
    caller's context however the call ends, so nothing an exception interrupts can leave a
    request's code outside its sandbox."""
    context = _copy_context()
    context.run(_set_ticket, _HOST)
    return context.run(function, *args, **kwargs)


_set_ticket = _ACTIVE.set
_copy_context = contextvars.copy_context

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
LIBRARY_FOLDERS: tuple[str, ...] = interpreter_library_folders()


#: Source file names (module origins, code objects' ``co_filename``) -> their resolved path:
#: the decisions made from them (``Layer.frame_kind``, ``imports.is_stdlib_code``) are kept
#: per file name for the process's life anyway, so each file is walked once for all of them.
_resolved_files: dict[str, str] = {}


def resolve_file(filename: str, fresh: bool = False) -> str:
    """``realpath(filename)``, or ``filename`` when it cannot be resolved; remembered.
    ``fresh``: walk it now (a module about to be loaded is judged from where it is now)."""
    if type(filename) is not str:  # a module's __file__ may be anything the app set
        filename = str.__str__(filename)
    if not fresh:
        known = _resolved_files.get(filename)
        if known is not None:
            return known
    resolved = realpath_of_file(filename) or filename
    if type(resolved) is str:
        if len(_resolved_files) >= 16384:
            _resolved_files.clear()
        _resolved_files[filename] = resolved
    return resolved


class Layer:
    """One entered :class:`~gae_sandbox.Sandbox`: its policy, report and readable folders."""

    __slots__ = ("policy", "report", "readable_roots", "app_roots", "enforce", "_frame_kinds",
                 "readable", "imports_any")

    def __init__(self, policy: Policy, report: Report) -> None:
        self.policy = policy
        self.report = report
        self.enforce = policy.mode == "enforce"
        self.app_roots = (policy.app_root,)
        # this library's own files too: tracebacks formatted inside a request read them
        self.readable_roots = (policy.app_root, *policy.readable_paths, *LIBRARY_FOLDERS,
                               _PACKAGE_DIR)
        self._frame_kinds: dict[str, str] = policy._cache.setdefault("frame_kinds", {})
        #: Resolved paths this policy lets the app read (filesystem.check_resolved): the
        #: answer depends on the exact path and the frozen policy only.
        self.readable: set[str] = policy._cache.setdefault("readable_resolved", set())
        #: Cached Python modules this policy allows whoever imports them (imports.py).
        self.imports_any: set[str] = policy._cache.setdefault("imports_any", set())

    def frame_kind(self, filename: str) -> str:
        """``app``, ``lib`` (interpreter, site-packages), ``self`` (gae_sandbox) or ``other``."""
        kind = self._frame_kinds.get(filename)
        if kind is None:
            if filename.startswith("<frozen"):
                kind = "lib"
            elif filename.startswith("<"):
                kind = "other"
            else:
                path = resolve_file(filename)
                if is_inside(path, (_PACKAGE_DIR,)):
                    kind = "self"
                elif is_inside(path, self.app_roots):
                    kind = "app"
                elif is_inside(path, LIBRARY_FOLDERS):
                    kind = "lib"
                else:
                    kind = "other"
            self._frame_kinds[filename] = kind
        return kind

    def caused_by_library(self) -> bool:
        """Whether third-party code, not the app, made the refused call: the innermost frame
        outside this library and the standard library is not the app's (urllib3 probing for
        IPv6, Django probing for ``termios``: refusals such code usually expects and swallows).
        """
        frame: Any = sys._getframe(2)
        while frame is not None:
            filename = str.__str__(frame.f_code.co_filename)  # an exact str, never app code
            kind = self.frame_kind(filename)
            if kind != "self" and not _is_stdlib_file(filename):
                return kind == "lib"  # installed packages; the app's or the host's own code
            frame = frame.f_back
        return False

    def location(self) -> str:
        """``file:line`` of the app code that caused the operation: the innermost app frame,
        else the innermost frame that is neither the library nor the interpreter's."""
        frame: Any = sys._getframe(1)
        fallback = None
        while frame is not None:
            filename = str.__str__(frame.f_code.co_filename)
            kind = self.frame_kind(filename)
            if kind == "app":
                return f"{filename}:{frame.f_lineno}"
            if fallback is None and kind == "other":
                fallback = f"{filename}:{frame.f_lineno}"
            frame = frame.f_back
        return fallback or "<unknown>"


def _is_stdlib_file(filename: str) -> bool:
    # imports.py imports this module; no import statement here: inside a scope it would go
    # through the import gate, which may be what is refusing
    return sys.modules[f"{__package__}.imports"].is_stdlib_code(filename)  # type: ignore


def exact_fd(value: Any) -> int | None:
    """A descriptor argument as the exact ``int`` the C function would use, read once, so
    that what is judged is what is used: an ``int`` subclass by its value (never its own
    ``__eq__`` or ``__index__``), another object by one call of its ``fileno()`` (or
    ``__index__``). ``None`` when it cannot be read so (callers refuse that: an object that
    answers differently later must never be judged by its ``__eq__``). Callers pass the
    result on in place of the argument."""
    if type(value) is int:
        return value
    if isinstance(value, int):
        return int.__index__(value)
    try:
        fileno = value.fileno
    except AttributeError:
        try:
            number = _index(value)
        except TypeError:
            return None
        return int.__index__(number)
    number = fileno()
    return int.__index__(number) if isinstance(number, int) else None


_index = operator.index


class OwnedFds:
    """The descriptors a request opened, known by the open file itself, not by its number:
    a number the request closed and the host then reused is the host's again.

    A number an object of the request holds (a socket, an event loop, a file object made
    with ``open(fd)``) is its own only while that object still holds it, read with the C
    type's own ``fileno``: once the object closes it (``close()``, or when it is collected),
    the number is free for the host, even where the open file cannot tell the two apart
    (event loops, ``eventfd``, ``pidfd`` and ``timerfd`` share one anonymous inode). Such a
    number cannot be closed by number (``os.close``) either: the object would go on using
    it after the host reuses it (:meth:`holder`)."""

    __slots__ = ("_files", "_holders")

    def __init__(self) -> None:
        self._files: dict[int, tuple[int, int]] = {}
        #: fd -> (a weak reference of the object holding it, or the object itself where the
        #: type takes no weak reference; the C ``fileno`` of its type; whether closing the
        #: object closes the number)
        self._holders: dict[int, tuple[Any, Callable[[Any], int], bool]] = {}

    def add(self, fd: int, holder: Any = None, fileno: Any = None,
            closes: bool = True) -> None:
        """``fd`` is the request's; ``holder`` (with its type's C ``fileno``) holds it, and
        ``closes`` it when it is closed (not a file object made with ``closefd=False``)."""
        try:
            info = _fstat(fd)
        except (OSError, TypeError, ValueError, OverflowError):
            return
        self._files[fd] = (info.st_dev, info.st_ino)
        if holder is None:
            self._holders.pop(fd, None)
            return
        try:
            kept: Any = _weak_reference(holder)
        except TypeError:  # (select.epoll takes none: held until the scope goes)
            kept = _partial(_same, holder)
        self._holders[fd] = (kept, fileno, closes)

    def update(self, fds: Any) -> None:
        for fd in fds:
            self.add(fd)

    def discard(self, fd: Any) -> None:
        self._files.pop(fd, None)
        self._holders.pop(fd, None)

    def holder(self, fd: Any) -> Any:
        """The object of the request that holds ``fd`` now, or None."""
        held = self._holders.get(fd) if type(fd) is int else None
        if held is None:
            return None
        kept, fileno, _ = held
        owner = kept()
        if owner is None:
            return None
        try:
            return owner if fileno(owner) == fd else None
        except (OSError, ValueError):  # closed
            return None

    def refresh(self, fd: int) -> None:
        """``fd`` now names another open file of the request's (``dup2`` onto it): its
        identity anew, the object holding the number (if any) still holding it."""
        held = self._holders.get(fd)
        self.add(fd)
        if held is not None and fd in self._files:
            self._holders[fd] = held

    def let_go(self, fd: Any, holder: Any) -> None:
        """``holder`` gave ``fd`` up without closing it (``socket.detach()``): the number is
        the request's by itself again."""
        held = self._holders.get(fd) if type(fd) is int else None
        if held is not None and held[0]() is holder:
            del self._holders[fd]

    def __contains__(self, fd: object) -> bool:
        if type(fd) is not int:
            return False
        known = self._files.get(fd)
        if known is None:
            return False
        held = self._holders.get(fd)
        if held is not None and held[2] and self.holder(fd) is None:
            return False  # the object that held it closed it
        try:
            info = _fstat(fd)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == known

    def __iter__(self) -> Any:
        return iter(list(self._files))


_HELD_RULE = ("an object of the request (a socket, an event loop, a file object) holds this "
              "descriptor: use and close it through that object (os.dup it for another); "
              "closed by its number or by a second object, the first would go on using the "
              "number after the host reuses it")


def check_not_held(layer: Layer, scope: Scope, fd: Any, what: str) -> SandboxViolation | None:
    """Closing a descriptor by its number: not one an object of the request still holds."""
    holder = scope.opened_fds.holder(fd)
    if holder is None:
        return None
    return errors.SystemCallRefused(
        f"{what} on fd {fd!r} (held by a {type(holder).__name__})",
        _HELD_RULE, None)


def _same(value: Any) -> Any:
    return value


_fstat = os.fstat


class Scope:
    """The state of one entered sandbox in one execution context."""

    __slots__ = ("layers", "parent", "owner", "resolved_hosts", "opened_fds", "extras",
                 "deadline", "threads", "token", "closed", "reported_imports", "thread",
                 "memory", "cwd", "known_imports", "_ticket", "_ticket_reference",
                 "previous_mark", "children", "open_roots")

    def __init__(self, layer: Layer, parent: Scope | None, owner: Any) -> None:
        self.layers: tuple[Layer, ...] = (*parent.layers, layer) if parent else (layer,)
        self.parent = parent
        self.owner = owner
        #: address -> the allowed host names whose lookup returned it in this request.
        self.resolved_hosts: dict[str, set[str]] = dict(parent.resolved_hosts) if parent else {}
        #: fds the request opened itself (it may close them; the host's it may not).
        self.opened_fds = OwnedFds()
        self.extras: dict[str, Any] = {}
        #: The request's Deadline (deadline.py), the nearest of this scope's and its parent's.
        self.deadline: Any = parent.deadline if parent else None
        #: The ThreadRegistry (threads.py) of threads started in this scope.
        self.threads: Any = None
        self.token: Any = None
        self.closed = False
        #: Report mode: modules whose import is being let through after being recorded.
        self.reported_imports: set[str] = set()
        #: The thread the scope was entered in.
        self.thread: int | None = None
        #: The MemoryFilesystem (memoryfs.py) when every layer has filesystem="memory".
        self.memory: Any = None
        #: The request's working directory (emulation.py): the app root, or with
        #: working_directory="host" the enclosing scope's (None: the process's own).
        #: With one layer, its ``Layer.imports_any``: a repeated import is one set lookup.
        self.known_imports: set[str] | None = None if parent else layer.imports_any
        #: The folders a read beneath which is the whole rule (filesystem.open_roots), worked
        #: out at the scope's first open: ``()`` where it is not (the C open answers then).
        self.open_roots: tuple[str, ...] | None = None
        policy = layer.policy
        self.cwd: str | None = policy.app_root if policy.working_directory == "app_root" else (
            parent.cwd if parent else None)
        # The ticket lives while the scope is open (held here) and then while any context or
        # thread still carries it; when it dies the scope is forgotten. The callback is C
        # (dict.pop, the weak reference its default): no asynchronous error (a deadline's)
        # can cut it short and leave a dead ticket's address mapped to this scope.
        ticket = self._ticket = ScopeTicket()
        key = hash(ticket)
        self._ticket_reference = _weak_reference(ticket, _partial(_scopes.pop, key))
        _scopes[key] = self
        #: The thread's mark before this scope was entered with ``attach`` (restored after).
        self.previous_mark: ScopeTicket | None = None
        #: Scopes opened inside this one and not closed yet (sandbox.py): they end with it.
        self.children: set[Scope] | None = None

    @property
    def ticket(self) -> ScopeTicket:
        """What contexts and threads running this scope's code carry."""
        ticket = self._ticket  # held while the scope is open
        if ticket is None:
            ticket = self._ticket_reference()
            assert ticket is not None  # only code running under the ticket asks
        return ticket

    def release_ticket(self) -> None:
        """The scope is closed: it lives on only while something still runs under it."""
        self._ticket = None

    @property
    def policy(self) -> Policy:
        """The innermost policy."""
        return self.layers[-1].policy

    def judge(self, check: Callable[..., SandboxViolation | None], *args: Any) -> bool:
        """Run ``check(layer, *args)`` for every layer; refuse or record what it returns.
        Returns whether a violation was recorded and let through (report mode)."""
        __tracebackhide__ = True  # pytest: show the app's line, not the sandbox's frames
        reported = False
        for layer in self.layers:
            refusal = check(layer, *args)
            if refusal is not None:
                self.refuse(layer, refusal)
                reported = True
        return reported

    def refuse(self, layer: Layer, refusal: SandboxViolation) -> None:
        """Record ``refusal``; raise it when the layer enforces, return when it reports."""
        __tracebackhide__ = True
        if not (_PASSTHROUGH.get() and not layer.enforce) and not _QUIET.get():
            message = refusal.message
            if not layer.enforce:  # report mode let it through
                message = message.replace("gae_sandbox refused ", "gae_sandbox would refuse ",
                                          1)
            violation = Violation(
                kind=refusal.kind,
                target=refusal.target,
                location=layer.location(),
                rule=refusal.rule,
                setting=refusal.setting,
                message=message,
                enforced=layer.enforce,
            )
            # the host's log handlers are not the app's
            host_call(layer.report.record, violation, by_library=layer.caused_by_library())
        if layer.enforce:
            raise refusal


def passthrough(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` (an operation a patch already judged) without re-recording it."""
    token = _PASSTHROUGH.set(True)
    try:
        return function(*args, **kwargs)
    finally:
        _PASSTHROUGH.reset(token)


# --- what crosses from a sandbox to host code ---------------------------------------------


def type_name(value: Any) -> str:
    """The qualified name of ``value``'s class, read from the type's slot as an exact
    ``str``: never a metaclass property or a ``str`` subclass of the app's (app code)."""
    return str.__str__(type.__dict__["__qualname__"].__get__(type(value)))


def error_text(error: BaseException) -> str:
    """``str(error)`` as an exact ``str`` ("" if it fails). It runs the app's ``__str__``:
    call it inside the request's scope."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - the app's __str__ may raise anything
        return ""
    return str.__str__(text) if issubclass(type(text), str) else ""


#: The interpreter's own exception classes: a stand-in keeps the class, so host code that
#: catches ``LookupError`` from a codec search or ``TypeError`` from a reducer still does.
_BUILTIN_ERRORS = frozenset(
    value for value in vars(builtins).values()
    if isinstance(value, type) and issubclass(value, BaseException))


def stand_in(error: BaseException) -> BaseException:
    """The copy of an app error that host code gets (call inside the request's scope): the
    same built-in class, or the library's ``AppFailedError`` for an app-defined one,
    carrying the text only, so no method or attribute of the app's object reaches host
    code when it formats or inspects the error."""
    kind = type(error)
    text = error_text(error)
    if kind in (errors.DeadlineExceededError, errors.HardDeadlineExceeded):
        return kind(text)
    if kind in errors.REFUSAL_CLASSES:  # its fields as exact str (app code may have made it)
        fields = [getattr(error, name, None) for name in ("target", "rule", "setting")]
        target, rule, setting = (str.__str__(value) if issubclass(type(value), str) else None
                                 for value in fields)
        try:
            return kind(target or text, rule or "", setting)  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - a refusal with a constructor of its own
            pass
    if kind in _BUILTIN_ERRORS:
        try:
            return kind(text)  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - UnicodeDecodeError & co. want more arguments
            pass
    name = type_name(error)
    return errors.AppFailedError(f"{name}: {text}" if text else name)


def contained(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in a request's scope, for host code that called it (a
    callback the app registered): an error it raises leaves as :func:`stand_in`, with no
    ``__context__`` leading back to the app's."""
    try:
        return function(*args, **kwargs)
    except BaseException as error:  # noqa: BLE001 - every error crosses as a stand-in
        replacement = stand_in(error)
    raise replacement


def quietly(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function`` with its refusals unrecorded (see ``_QUIET``)."""
    token = _QUIET.set(True)
    try:
        return function(*args)
    finally:
        _QUIET.reset(token)


class unsandboxed:
    """``with unsandboxed():`` runs host code inside a sandboxed call without the sandbox:
    for host code only (the pytest plugin's fixture), never around code the app can
    interrupt (an asynchronous error between the two steps would leave the context's
    variable saying "host"): the library itself uses :func:`host_call`."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _ACTIVE.set(_HOST)

    def __exit__(self, *exc_info: object) -> None:
        _ACTIVE.reset(self._token)
