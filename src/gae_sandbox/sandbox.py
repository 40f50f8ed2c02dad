"""The request scope, and the process-wide install it relies on.

Hooks are installed once (idempotently, on first use); a ``Sandbox`` only switches the
ContextVar that every hook reads, so entering and leaving costs microseconds and the host's
other threads are never restricted.
"""

from __future__ import annotations

import builtins
import contextvars
import importlib
import logging
import sys
import threading
import weakref
from _thread import get_ident as _get_ident
from collections.abc import Callable
from functools import partial as _partial
from types import TracebackType
from typing import Any

from . import allowlist, emulation, imports, memoryfs, patches, registrations, threads
from . import deadline as deadline_layer
from .audit import install_audit_hook
from .context import (
    _ACTIVE,
    Layer,
    Scope,
    _scopes,
    _thread_tickets,
    active_scope,
    contained,
    restore_mark,
    run_marked,
)
from .deadline import Deadline, recycle, start_deadline
from .errors import SandboxStateRefused
from .policy import Policy
from .report import Report, Violation
from .threads import join_scope_threads, put_back_thread_state

logger = logging.getLogger("gae_sandbox")

_install_lock = threading.RLock()
_patches: list[patches.Patch] = []
#: The in-memory filesystem's routers (memoryfs.py), installed on the first memory-mode scope
#: so that hosts that never use it pay nothing for them.
_memory_patches: list[patches.Patch] = []
_installed = False


def install() -> None:
    """Install the process-wide hooks (idempotent). Called by the first ``Sandbox`` entry;
    call it early yourself to keep references captured later by host code patched too."""
    global _installed
    with _install_lock:
        if _installed:
            _ensure_gate_first()
            return
        install_audit_hook()
        _patches[:] = patches.build_patches()
        _patches.extend(emulation.build_patches())
        _patches.extend(deadline_layer.build_patches())
        _patches.extend(threads.build_patches())
        _patches.extend(registrations.build_patches())
        _patches.extend([
            (builtins, "__import__", imports.original_import, imports.gated_import),
            (importlib, "import_module", imports.original_import_module,
             imports.gated_import_module),
            (imports._bootstrap, "_gcd_import", imports.original_gcd_import,
             imports.gated_gcd_import),
        ])
        _patches.extend(imports.build_patches(patches.SPEEDUPS))
        patches.apply(_patches)
        # last: what the layers above replaced is no longer a C function to list or refuse
        listed = allowlist.build_patches()
        patches.apply(listed)
        _patches.extend(listed)
        _ensure_gate_first()
        _installed = True


def uninstall() -> None:
    """Remove the patches and the import finder (the audit hook stays, inert). For tests;
    refused while a sandbox is active anywhere in the process."""
    global _installed
    with _install_lock:
        if _open_scopes:
            raise RuntimeError(
                f"gae_sandbox.uninstall(): {len(_open_scopes)} sandbox scope(s) are still "
                "active"
            )
        memoryfs.restore(_memory_patches)
        _memory_patches.clear()
        patches.restore(_patches)
        _patches.clear()
        while imports.GATE in sys.meta_path:
            sys.meta_path.remove(imports.GATE)
        _installed = False


def is_installed() -> bool:
    return _installed


def _install_memory_routers() -> None:
    with _install_lock:
        if not _memory_patches:
            install()
            _memory_patches.extend(memoryfs.build_patches())
            memoryfs.apply(_memory_patches)


def _apply_late_patches() -> None:
    """Patch the late modules (``registrations.LATE_BUILDERS``) that have been imported."""
    with _install_lock:
        if _installed:
            found = registrations.late_patches()
            patches.apply(found)
            _patches.extend(found)


imports.LATE_MODULES = frozenset(registrations.LATE_BUILDERS)
imports.after_load = _apply_late_patches


def _ensure_gate_first() -> None:
    if not sys.meta_path or sys.meta_path[0] is not imports.GATE:
        while imports.GATE in sys.meta_path:
            sys.meta_path.remove(imports.GATE)
        sys.meta_path.insert(0, imports.GATE)
    if builtins.__import__ is not imports.gated_import:
        builtins.__import__ = imports.gated_import


#: The scopes open now: set.add and set.discard are atomic, so counting needs no lock on
#: the per-request path.
_open_scopes: set[Scope] = set()
_HOST_IMPORTS = imports.HOST_IMPORTS
#: Scope.extras: the app's objects a host-side holder (the middleware) leaves to be let go
#: of as the scope closes, with the scope's context and CGI environ (see close_scope).
APP_OBJECTS = "gae_sandbox.app_objects"
_LATE_PENDING = registrations.LATE_PENDING
_modules = sys.modules
_LOOPS = "gae_sandbox.event_loops"  # Scope.extras: the thread's asyncio state at the start


def active_scope_count() -> int:
    """How many sandbox scopes are open in the process now (tests, health checks)."""
    return len(_open_scopes)


def _count(scope: Scope, opening: bool) -> None:
    if opening:
        _open_scopes.add(scope)
    else:
        _open_scopes.discard(scope)


HardDeadlineHandler = Callable[["Sandbox", int], None]


class Sandbox:
    """``with Sandbox(policy):`` runs the body under the policy.

    One ``Sandbox`` may be entered by many threads at once (each entry is its own scope in
    its own context); ``violations`` collects what all its entries did. Entering inside
    another sandbox adds a layer: the operation must pass both, so nesting only narrows.

    ``on_hard_deadline(sandbox, thread_ident)`` is called (from the timer thread) when a
    request carries on past its deadline plus ``Policy.hard_deadline_grace``: the host should
    recycle the worker, as a Python thread cannot be killed.
    """

    def __init__(self, policy: Policy, *,
                 on_hard_deadline: HardDeadlineHandler | None = None,
                 keep_memory_filesystem: bool = False) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(
                f"Sandbox(policy) needs a gae_sandbox.Policy, got {type(policy).__name__}; "
                "build one with Policy.python27(app_root=...)"
            )
        if on_hard_deadline is not None and not callable(on_hard_deadline):
            raise TypeError("Sandbox(on_hard_deadline=...) must be callable")
        if active_scope() is None:  # host code made it: its callback is host code
            key = id(self)
            _HOST_MADE[key] = weakref.ref(self, lambda _, key=key: _HOST_MADE.pop(key, None))
        self.policy = policy
        self.on_hard_deadline = on_hard_deadline
        #: What the timer calls for this Sandbox's own (not nested) scopes.
        self._on_hard = _partial(_HARD_DEADLINE, self, None)
        self._report = Report()
        self._layer = Layer(policy, self._report)
        #: filesystem="memory": one filesystem shared by this Sandbox's requests (kept across
        #: them) instead of a private one per request.
        #: filesystem="tmp" keeps one too: the python3 runtime's /tmp lasts as long as the
        #: instance.
        self.keep_memory_filesystem = bool(keep_memory_filesystem) or policy.filesystem == "tmp"
        self._kept_memory: memoryfs.MemoryFilesystem | None = None
        self._restricted_finder = False

    # -- the with statement ----------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        scope = self._open_scope()
        try:
            attach(scope)
        except BaseException:
            close_scope(scope)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # found from this thread's mark, which app code cannot change (the context variable
        # it can: the reset below undoes whatever it set); sandboxes the app entered inside
        # this one and left open end with it
        ident = _get_ident()
        ticket = _thread_tickets.get(ident)
        innermost = scope = _scopes.get(hash(ticket)) if ticket is not None else None
        while scope is not None and (scope.owner is not self or scope.token is None):
            scope = scope.parent
        if scope is None or scope.token is None or scope.thread != ident:
            raise RuntimeError(
                "Sandbox exited out of order: leave nested sandboxes innermost first, "
                "in the thread or task that entered them"
            )
        # Leave the context first: whatever happens next runs as host code.
        detach(scope)
        close_scope(scope)
        if innermost is not scope:
            raise RuntimeError(
                "Sandbox exited out of order: sandboxes entered inside it were still open; "
                "they were ended with it (leave nested sandboxes innermost first)"
            )

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` in a scope of its own and end the scope.

        Like ``with sandbox: function()``, but the caller's context is restored by C code
        even when the deadline's asynchronous error lands while the scope is being left.
        """
        scope = self._open_scope()
        try:
            return call_in_scope(scope, function, *args, **kwargs)
        finally:
            close_scope(scope)

    def exec(self, source: str | bytes, globals: dict[str, Any] | None = None, *,
             filename: str = "<sandboxed>") -> dict[str, Any]:
        """Run untrusted ``source`` in restricted mode (RestrictedPython, guarded attribute,
        item, write and import access) inside this sandbox; returns its globals, printed
        output under ``"__printed__"``. Rejected code raises ``RestrictedCodeError``."""
        from .restricted import compile_restricted, run_code

        code = compile_restricted(source, filename)  # reject before any scope
        scope = active_scope()
        if scope is not None and self._layer in scope.layers:
            return run_code(code, globals)
        return self.call(run_code, code, globals)

    # -- scopes for servers (the WSGI middleware) ------------------------------------------

    def open_scope(self) -> Scope:
        """Start a request scope (deadline running) without entering it; ``attach`` it
        around each call into the app, ``close_scope`` it once at the end. For host code (a
        server): inside a sandbox it is refused, as a scope object leads to the request's
        own (nest with ``with Sandbox(...)`` or ``Sandbox.call`` there)."""
        if active_scope() is not None:
            raise SandboxStateRefused(
                "Sandbox.open_scope()", "scope objects are the host's: inside a sandbox, "
                "nest another with 'with Sandbox(policy)' or Sandbox(policy).call(...)")
        return self._open_scope()

    def _open_scope(self) -> Scope:
        if not _installed or sys.meta_path[0] is not imports.GATE or (
            builtins.__import__ is not imports.gated_import
        ):
            install()
        if self.policy.restricted_modules and not self._restricted_finder:
            from .restricted import install_finder

            install_finder()  # compiles the restricted modules when they are imported
            self._restricted_finder = True
        policy = self.policy
        if _LATE_PENDING:
            modules = sys.modules
            for name in _LATE_PENDING:
                if name in modules:  # the host imported one since
                    _apply_late_patches()
                    break
        if not _open_scopes and not _thread_tickets and not _HOST_IMPORTS.unchanged():
            _HOST_IMPORTS.host_moment()  # no sandbox is open, no thread marked: the host's
        scope = Scope(self._layer, active_scope(), self)
        if policy.filesystem != "readonly":
            self._attach_memory(scope)
        seconds = policy.deadline
        if seconds is not None:
            inherited = scope.deadline  # the enclosing sandbox's, if any
            if inherited is None or not inherited.active or inherited.remaining() > seconds:
                on_hard = self._on_hard if scope.parent is None else _partial(
                    _HARD_DEADLINE, self, self._made_by_app(scope))
                scope.deadline = start_deadline(seconds, policy.hard_deadline_grace, scope,
                                                on_hard)
        if scope.parent is not None:
            _adopt(scope.parent, scope)
        events = _modules.get("asyncio.events")
        if events is not None:
            scope.extras[_LOOPS] = registrations.event_loop_state(events)
        _open_scopes.add(scope)  # _count, inline
        return scope

    def _attach_memory(self, scope: Scope) -> None:
        if not _memory_patches:
            _install_memory_routers()
        memory = memoryfs.scope_memory(scope.layers)
        keep = scope.extras["keep_memory"] = bool(self.keep_memory_filesystem)
        if memory is not None and keep:
            if self._kept_memory is None:
                self._kept_memory = memory
            memory = self._kept_memory
        scope.memory = memory

    def _made_by_app(self, scope: Scope) -> Scope | None:
        """For a nested ``scope``: the scope to run this sandbox's callbacks in, the
        enclosing one when this ``Sandbox`` was not made by host code (app code made it, or
        built it some other way), else None (host code)."""
        made = _HOST_MADE.get(id(self))
        return None if made is not None and made() is self else scope.parent

    def _hard_deadline(self, made_in: Scope | None, deadline: Deadline) -> None:
        """Called on the deadline timer's thread. A ``Sandbox`` app code made has its
        callback looked up and run in the app's sandbox (on a thread of its own, never the
        timer's), as every callback the app registers."""
        if made_in is not None:
            registrations.sandboxed(_call_hard_deadline, made_in)(self, deadline.thread or 0)
        else:
            _call_hard_deadline(self, deadline.thread or 0)

    @property
    def violations(self) -> list[Violation]:
        """Every distinct violation seen by this sandbox's entries, with counts."""
        return self._report.violations

    @property
    def report(self) -> Report:
        return self._report

    def __repr__(self) -> str:
        return f"Sandbox({self.policy!r})"


#: The class's own method (an attribute of the instance, which app code may set, is not
#: what the timer calls).
_HARD_DEADLINE = Sandbox._hard_deadline
#: id -> a weak reference of each Sandbox host code made (by id: a subclass's __hash__ and
#: __eq__ are app code).
_HOST_MADE: dict[int, weakref.ref[Sandbox]] = {}


def _call_hard_deadline(sandbox: Sandbox, thread: int) -> None:
    callback = sandbox.on_hard_deadline
    if callback is not None:
        callback(sandbox, thread)


def call_in_scope(scope: Scope, function: Callable[..., Any], *args: Any,
                  **kwargs: Any) -> Any:
    """Run ``function`` inside ``scope`` (its deadline aimed at this thread).

    The scope lives in a ``contextvars.Context`` of its own, entered with ``Context.run``:
    however the call ends, an asynchronous deadline error included, C code restores the
    caller's context, which a ``with`` statement cannot promise.
    """
    if scope.closed:
        raise RuntimeError("this sandbox scope has already ended")
    context = scope.extras.get("context")
    first = context is None
    if first:
        context = scope.extras["context"] = contextvars.copy_context()
    deadline = _own_deadline(scope)
    ident = _get_ident()
    mark = _thread_tickets.get(ident)
    try:
        return context.run(_first_call if first else _attached_call, scope, deadline,
                           function, args, kwargs)
    finally:
        if _thread_tickets.get(ident) is not mark:  # an error cut _attached_call short
            restore_mark(mark)
        # again, from host code, unless the call's own detach completed (it clears
        # ``attached`` under the deadline's lock, after which nothing is injected)
        if deadline is not None and deadline.attached:
            deadline.detach()


def _first_call(scope: Scope, deadline: Deadline | None, function: Callable[..., Any],
                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """:func:`_attached_call` in the scope's new context, which it first makes the scope's."""
    _ACTIVE.set(scope.ticket)
    return _attached_call(scope, deadline, function, args, kwargs)


def _attached_call(scope: Scope, deadline: Deadline | None, function: Callable[..., Any],
                   args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ident = scope.thread = _get_ident()
    previous = _thread_tickets.get(ident)
    _thread_tickets[ident] = scope.ticket  # mark_thread, inline: once per call
    try:
        if deadline is not None:
            deadline.attach()
        try:
            return function(*args, **kwargs)
        finally:
            if deadline is not None:
                deadline.detach()
    finally:
        if previous is None:  # restore_mark, inline
            _thread_tickets.pop(ident, None)
        else:
            _thread_tickets[ident] = previous


def _own_deadline(scope: Scope) -> Deadline | None:
    deadline = scope.deadline
    return deadline if deadline is not None and deadline.owner is scope else None


def attach(scope: Scope) -> None:
    """Make ``scope`` the active sandbox of the current context (and aim its deadline at the
    current thread). Raises ``DeadlineExceededError`` if the deadline has already passed."""
    if scope.closed:
        raise RuntimeError("this sandbox scope has already ended")
    ticket = scope.ticket
    scope.token = _ACTIVE.set(ticket)
    ident = scope.thread = _get_ident()
    scope.previous_mark = _thread_tickets.get(ident)
    _thread_tickets[ident] = ticket  # mark_thread, inline
    deadline = scope.deadline
    if deadline is not None and deadline.owner is scope:  # _own_deadline, inline
        try:
            deadline.attach()
        except BaseException:
            detach(scope)
            raise


def detach(scope: Scope) -> None:
    """Leave ``scope`` in the current context; its deadline no longer fires into this
    thread (a pending one is withdrawn)."""
    token = scope.token
    if token is not None:
        try:
            _ACTIVE.reset(token)
        except ValueError:
            raise RuntimeError(
                "a sandbox scope must be left in the context (thread or task) that entered it"
            ) from None
        scope.token = None
        previous = scope.previous_mark
        if previous is None:  # restore_mark, inline
            _thread_tickets.pop(_get_ident(), None)
        else:
            _thread_tickets[_get_ident()] = previous
        scope.previous_mark = None
    deadline = scope.deadline
    if deadline is not None and deadline.owner is scope:  # _own_deadline, inline
        deadline.detach()


def _adopt(parent: Scope, scope: Scope) -> None:
    """``scope`` opened inside ``parent``: it ends when ``parent`` does, if not before."""
    children = parent.children
    if children is None:
        children = parent.children = set()
    children.add(scope)


def close_scope(scope: Scope) -> None:
    """End a request scope exactly once: end the scopes opened inside it and left open (a
    sandbox the app entered and never left: its deadline must not fire into host code
    later), join its threads within what is left of the deadline, then cancel the
    deadline."""
    if scope.closed:
        return
    scope.closed = True
    if scope.children:
        for child in list(scope.children):
            close_scope(child)
    parent = scope.parent
    if parent is not None and parent.children:
        parent.children.discard(scope)
    deadline = _own_deadline(scope)
    try:
        if scope.threads is not None and _joins_threads(scope):  # wait for its threads
            if deadline is not None:
                deadline.detach()  # no asynchronous error while this thread waits
            outlived = join_scope_threads(scope, scope.policy.hard_deadline_grace)
            for tracked in outlived:
                logger.warning(
                    "thread %r (ident %s) outlived its request; it stays sandboxed",
                    tracked.name, tracked.ident,
                )
    finally:
        if deadline is not None:
            deadline.cancel()
            recycle(deadline)  # this thread's next deadline reuses the record
        if scope.memory is not None and not scope.extras.get("keep_memory"):
            scope.memory.discard()  # the request's files are gone with it
        put_back_thread_state(scope, _get_ident())  # its import locks, signal mask
        if "left_objects" in scope.extras:  # sys.stdout = the app's object, left there
            registrations.wrap_left_objects(scope)
        events = _modules.get("asyncio.events")
        if events is not None:  # the thread's event loops as they were (registrations.py)
            registrations.restore_event_loop_state(events, scope.extras.pop(_LOOPS, None))
        # what holds the app's objects (the context of Sandbox.call, with the values of its
        # context variables; the request's environ) is dropped with the thread marked as
        # running the scope: the finalizers of those objects run sandboxed, not as host code
        extras = scope.extras
        held = [extras.pop("context", None), extras.pop("cgi_environ", None),
                extras.pop(APP_OBJECTS, None)]
        if held[0] is not None or held[1] is not None or held[2] is not None:
            run_marked(scope.ticket, held.clear)
        scope.release_ticket()
        if not _HOST_IMPORTS.unchanged():  # while still open: no host look in between
            _HOST_IMPORTS.sandbox_ended()  # what it added to the import lists is the app's
        _open_scopes.discard(scope)  # _count, inline


def _joins_threads(scope: Scope) -> bool:
    """Whether any layer waits for the request's threads (nesting narrows: one does)."""
    return any(layer.policy.join_threads for layer in scope.layers)


def run_in_scope_of(registered: Scope, function: Callable[..., Any], *args: Any,
                    **kwargs: Any) -> Any:
    """Run ``function`` (a callback the app registered in ``registered``) in a new scope
    under the same policies, inside whatever scope is active now (nesting narrows), with the
    innermost policy's deadline when a timer can still be started (not at interpreter exit).
    """
    current = active_scope()
    scope = Scope(registered.layers[-1], current, registered.owner)
    if current is not None:
        _adopt(current, scope)
    scope.layers = (*(current.layers if current else ()), *registered.layers)
    scope.known_imports = scope.layers[0].imports_any if len(scope.layers) == 1 else None
    memory = memoryfs.scope_memory(scope.layers)
    owner = registered.owner
    kept = owner._kept_memory if type(owner) is Sandbox and current is None else None
    if memory is not None and kept is not None:  # the Sandbox's lasting files (/tmp of the
        memory = kept  # python3 preset): an exit handler removing its scratch folder finds it
        scope.extras["keep_memory"] = True
    scope.memory = memory
    policy = registered.policy
    if policy.deadline is not None:
        try:
            scope.deadline = start_deadline(policy.deadline, policy.hard_deadline_grace, scope,
                                            lambda deadline: None)
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            scope.deadline = None
    _count(scope, True)
    try:  # host code called it: an error it gets is a stand-in made in the scope
        return call_in_scope(scope, contained, function, *args, **kwargs)
    finally:
        close_scope(scope)


registrations._runner = run_in_scope_of
threads._close_scope = close_scope


class SandboxView:
    """What code inside a sandbox learns of it: the policy (immutable) and a copy of the
    violations so far. Not the ``Sandbox`` itself, whose ``__exit__``, ``report`` and scopes
    would let the app leave its scope or erase other requests' records. Equal to the
    ``Sandbox`` it shows (``current_sandbox() == sandbox``)."""

    __slots__ = ("policy", "_key", "_violations")

    def __init__(self, sandbox: Sandbox) -> None:
        # copies: the policy the scope decides with, and the report, stay the host's
        self.policy = sandbox.policy.replace()
        self._key = id(sandbox)
        self._violations = tuple(v.to_dict() for v in sandbox.report.snapshot())

    @property
    def violations(self) -> list[Violation]:
        """Copies of the violations recorded before this view was made."""
        return [Violation(**v) for v in self._violations]  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SandboxView):
            return self._key == other._key
        return isinstance(other, Sandbox) and id(other) == self._key

    def __hash__(self) -> int:
        return self._key

    def __repr__(self) -> str:
        return f"<view of Sandbox({self.policy!r})>"


def current_sandbox() -> SandboxView | None:
    """A read-only view of the innermost active ``Sandbox`` in this context, or ``None``."""
    scope = active_scope()
    owner = scope.owner if scope is not None else None
    return SandboxView(owner) if isinstance(owner, Sandbox) else None
