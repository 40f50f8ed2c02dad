"""Threads started by a request: they carry its sandbox, and the request waits for them.

Before Python 3.14 a new thread starts with an empty context, which would be an unsandboxed
thread; so every thread start inside a sandbox copies the starter's context into the new
thread. Threads are tracked by the scope itself, not through ``threading.enumerate()``
(``_thread.start_new_thread`` threads are not listed there), and joined when the scope ends
within what is left of the deadline; one still running then gets ``DeadlineExceededError``.
A daemon flag does not skip the join. A thread that outlives its request keeps the
request's sandbox: it stays restricted.
"""

from __future__ import annotations

import _thread
import contextvars
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

from .context import _ACTIVE, Layer, Scope, active_scope, host_call, run_marked, type_name
from .deadline import raise_in_thread
from .errors import DeadlineExceededError, SandboxViolation, ThreadRefused
from .imports import HELD_IMPORT_LOCKS, HOST_IMPORTS, release_import_locks
from .patches import SIGNAL_MASKS, restore_signal_mask

_allocate_lock = _thread.allocate_lock
_get_ident = _thread.get_ident


class TrackedThread:
    """One thread a request started: its ident and a lock held while it runs."""

    __slots__ = ("ident", "name", "running")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ident: int | None = None
        self.running = _allocate_lock()
        self.running.acquire()

    def finished(self) -> None:
        if self.running.locked():
            self.running.release()

    def wait(self, timeout: float | None) -> bool:
        """Whether the thread finished within ``timeout`` seconds (None: wait for ever)."""
        if self.running.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            self.running.release()
            return True
        return False

    @property
    def alive(self) -> bool:
        return self.running.locked()


class ThreadRegistry:
    """The threads of one scope, in start order."""

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._threads: list[TrackedThread] = []

    def add(self, tracked: TrackedThread) -> None:
        with self._lock:
            self._threads.append(tracked)

    def running(self) -> list[TrackedThread]:
        with self._lock:
            self._threads = [t for t in self._threads if t.alive]
            return list(self._threads)


def _check_thread(layer: Layer, what: str) -> SandboxViolation | None:
    if layer.policy.allow_threads:
        return None
    return ThreadRefused(what, "this policy does not let the request start threads",
                         "allow_threads")


def _track(scope: Scope, name: str) -> TrackedThread:
    scope.judge(_check_thread, f"start of thread {name!r}")
    if scope.threads is None:
        scope.threads = ThreadRegistry()
    tracked = TrackedThread(name)
    scope.threads.add(tracked)
    return tracked


def _carried(tracked: TrackedThread, scope: Scope, context: contextvars.Context,
             function: Callable[..., Any], args: tuple[Any, ...] = (),
             kwargs: dict[str, Any] | None = None) -> Callable[..., Any]:
    """``function(*args, **kwargs)`` run in the starter's context on a thread marked with
    the starter's scope (whatever the app did to that context), marking the thread finished
    at the end.

    The thread machinery releases what it was handed (this function, its arguments) only
    after the call, when the thread is no longer marked: an app object's ``__del__`` would
    run there as host code. So everything of the app's (the function, its arguments, the
    context with the app's variables, the result) is held only in ``work`` and released
    while the thread is still marked; ``run`` itself takes no arguments and returns None."""
    ticket = scope.ticket
    work = [context, function, args, kwargs or {}]

    def run() -> None:
        ident = tracked.ident = _get_ident()
        awaiting = ((ident, "settrace"), (ident, "setprofile"))
        _AWAITING_HOST_HOOK.update(awaiting)
        try:
            run_marked(ticket, _run_work, work)
        finally:
            _AWAITING_HOST_HOOK.difference_update(awaiting)
            _close_left_on_thread(scope, ident)
            put_back_thread_state(scope, ident, ending=True)
            tracked.finished()

    return run


def put_back_thread_state(scope: Scope, ident: int, ending: bool = False) -> None:
    """What thread ``ident`` (the calling thread) changed of its own in ``scope`` and must
    not keep once it leaves it (``ending``: the thread ends, leaving every scope): the import
    locks it still holds, its signal mask."""
    if HELD_IMPORT_LOCKS:
        release_import_locks(ident, None if ending else scope)
    if SIGNAL_MASKS in scope.extras:
        restore_signal_mask(scope, ident)


def _run_work(work: list[Any]) -> None:
    """``_carried``'s call, taking the app's objects out of ``work``: this frame, which holds
    them last, ends while the thread is still marked."""
    context, function, args, kwargs = work
    work.clear()
    context.run(reported, function, *args, **kwargs)


def reported(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A thread's whole function, inside its sandbox: an error it lets out is reported here,
    formatted in the sandbox, instead of by the interpreter's thread machinery (the
    unraisable hook, ``threading.excepthook``), which would run the app error's ``__str__``
    as host code once the thread's mark is gone."""
    try:
        function(*args, **kwargs)  # its result is dropped here, in the sandbox
        return None
    except (DeadlineExceededError, SystemExit):
        return None  # the request ended it, or the thread asked to end: not an error
    except BaseException as error:  # noqa: BLE001 - every error ends here
        try:  # "".join makes an exact str whatever the app's objects return
            text = "".join(traceback.format_exception(type(error), error,
                                                      error.__traceback__))
        except BaseException:  # noqa: BLE001 - the app's __str__ may raise anything
            text = f"{type_name(error)} (not formattable)\n"
        host_call(_write_error, f"Exception in a thread started by a sandboxed request:\n{text}")
        return None
    finally:
        # still marked: what the thread added to the import lists is the app's, seen before
        # any sandbox's start can take it for the host's
        HOST_IMPORTS.sandbox_ended()


def _write_error(text: str) -> None:
    stream = sys.stderr
    if stream is not None:
        stream.write(text)


#: The code of the function every thread a request starts runs first (``_carried``'s
#: ``run``): the audit layer refuses a thread start with any other function inside a scope
#: (a fresh ``_thread`` module's unpatched ``start_new_thread``).
_CARRIED_CODE = next(const for const in _carried.__code__.co_consts
                     if isinstance(const, types.CodeType) and const.co_name == "run")


def is_carried(function: Any) -> bool:
    """Whether ``function`` is one ``_carried`` made (judged by its exact type and code)."""
    return type(function) is types.FunctionType and function.__code__ is _CARRIED_CODE


#: sandbox.close_scope (sandbox.py imports this module).
_close_scope: Callable[[Scope], None] | None = None


def _close_left_on_thread(scope: Scope, ident: int) -> None:
    """The thread is ending: a sandbox it entered inside ``scope`` and left open ends now,
    before its deadline can fire into a thread that reuses the ident."""
    children = scope.children
    if children and _close_scope is not None:
        for child in list(children):
            if child.thread == ident:
                _close_scope(child)


#: The starters whose arguments after the function are the function's own (args, kwargs);
#: 3.13's start_joinable_thread takes the thread's handle and daemon flag instead.
_ARGUMENT_STARTS = frozenset({"start_new_thread", "start_new"})


def _function_start(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_thread.start_new_thread(function, args, kwargs)`` and 3.13's
    ``start_joinable_thread(function, handle, daemon)``: the function comes first, the rest
    passes through unchanged."""

    def start_thread(function: Callable[..., Any], *rest: Any, **options: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return original(function, *rest, **options)
        owner = getattr(function, "__self__", None)  # Thread._bootstrap of a Thread
        name = owner.name if isinstance(owner, threading.Thread) else getattr(
            function, "__name__", "thread")
        # an exact str: host code logs the name of a thread that outlives its request
        tracked = _track(scope, str.__str__(name) if isinstance(name, str) else "thread")
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = None
        if original.__name__ in _ARGUMENT_STARTS and rest:  # (function, args[, kwargs])
            if not isinstance(rest[0], tuple):
                raise TypeError("2nd arg must be a tuple")
            if len(rest) > 1 and rest[1] is not None and not isinstance(rest[1], dict):
                raise TypeError("optional 3rd arg must be a dictionary")
            args = tuple(rest[0])  # carried by the thread's own closure, not the machinery
            kwargs = dict(rest[1]) if len(rest) > 1 and rest[1] is not None else None
            rest = ((),)
        try:
            return original(_carried(tracked, scope, contextvars.copy_context(), function,
                                     args, kwargs), *rest, **options)
        except BaseException:
            tracked.finished()
            raise

    start_thread.__name__ = getattr(original, "__name__", "start_thread")
    start_thread.__doc__ = original.__doc__
    return start_thread


def join_scope_threads(scope: Scope, grace: float) -> list[TrackedThread]:
    """Wait for the scope's threads within what is left of its deadline; raise
    ``DeadlineExceededError`` in those still running then and wait ``grace`` more.
    Returns the threads that outlived the request (they stay sandboxed)."""
    registry = scope.threads
    if registry is None:
        return []
    deadline = scope.deadline
    current = _get_ident()
    while True:
        running = [t for t in registry.running() if t.ident != current]
        if not running:
            return []
        timed_out = False
        for tracked in running:
            timeout = None if deadline is None else deadline.when - deadline_clock()
            if not tracked.wait(timeout):
                timed_out = True
                break
        if timed_out:
            break
    stragglers = [t for t in registry.running() if t.ident != current]
    for tracked in stragglers:
        if tracked.ident is not None:
            raise_in_thread(tracked.ident, DeadlineExceededError)
    end = deadline_clock() + grace
    for tracked in stragglers:
        tracked.wait(end - deadline_clock())
    return [t for t in stragglers if t.alive]


deadline_clock = time.monotonic


def start_background_thread(target: Callable[..., Any], *args: Any,
                            **kwargs: Any) -> threading.Thread:
    """Start a thread that may outlive the request (the runtime's background threads).

    Allowed only when ``Policy.allow_background_threads`` is True. The thread keeps the
    request's restrictions but not its deadline, and the request does not wait for it.
    """
    scope = active_scope()
    if scope is None:
        raise RuntimeError("start_background_thread() is for code inside a Sandbox")
    scope.judge(_check_background, getattr(target, "__name__", "thread"))
    background = Scope(scope.layers[-1], scope.parent, scope.owner)
    background.layers = scope.layers
    background.known_imports = scope.known_imports
    background.deadline = None
    ticket = background.ticket
    context = contextvars.copy_context()
    context.run(_ACTIVE.set, ticket)
    thread = threading.Thread(target=run_marked,
                              args=(ticket, context.run, reported, target, *args),
                              kwargs=kwargs,
                              name=f"background-{getattr(target, '__name__', 'thread')}",
                              daemon=True)
    host_call(thread.start)  # untracked: the request does not wait for it
    background.release_ticket()  # it lives as long as the thread
    return thread


def _check_background(layer: Layer, what: str) -> SandboxViolation | None:
    if layer.policy.allow_background_threads:
        return None
    return ThreadRefused(f"background thread {what!r}",
                         "background threads outlive the request", "allow_background_threads")


#: Where a new thread is started: ``_thread``'s functions and the references ``threading``
#: captured of them (``Thread.start`` calls those; app code can too). The whole new thread,
#: an overridden ``Thread._bootstrap_inner`` included, runs in the starter's context.
THREAD_STARTS = (
    (_thread, ("start_new_thread", "start_new", "start_joinable_thread")),
    (threading, ("_start_new_thread", "_start_joinable_thread")),
)


def build_patches() -> list[tuple[Any, str, Any, Any]]:
    patches: list[tuple[Any, str, Any, Any]] = []
    for owner, names in THREAD_STARTS:
        for name in names:
            original = getattr(owner, name, None)
            if original is not None:
                patches.append((owner, name, original, _function_start(original)))
    patches.extend(_hook_patches())
    return patches


#: ``threading`` functions that store a trace or profile function for every thread started
#: later (``*_all_threads``, 3.12+, also set it on every running thread).
THREAD_HOOKS = ("settrace", "setprofile", "settrace_all_threads", "setprofile_all_threads")


def _hook_patches() -> list[tuple[Any, str, Any, Any]]:
    """``threading.settrace`` and friends from sandboxed code: the hook would run in the
    host's threads after the request (``sys.settrace`` raises an audit event; these store the
    hook without one, or call ``sys.settrace`` from the standard library). Host code's calls
    go through, and the hook it sets is noted (:data:`HOST_THREAD_HOOKS`)."""
    from .patches import _guarded, _refuse_system

    HOST_THREAD_HOOKS["settrace"] = getattr(threading, "_trace_hook", None)
    HOST_THREAD_HOOKS["setprofile"] = getattr(threading, "_profile_hook", None)
    found = []
    for name in THREAD_HOOKS:
        original = getattr(threading, name, None)
        if original is not None:
            found.append((threading, name, original, _guarded(
                _hook_setter(original, name.removesuffix("_all_threads"), _refuse_system),
                original)))
    for name, getter in (("settrace", sys.gettrace), ("setprofile", sys.getprofile)):
        original = getattr(sys, name)
        found.append((sys, name, original, _guarded(_tracer_setter(original, getter, name),
                                                    original)))
    return found


#: The trace and profile functions host code set for new threads (``threading.settrace``:
#: a coverage tool's). A thread a request starts may put that very function on itself, as
#: ``threading``'s own start-up does; the module variable the app could change is not read.
HOST_THREAD_HOOKS: dict[str, Any] = {"settrace": None, "setprofile": None}


def _hook_setter(original: Callable[..., Any], kind: str,
                 refuse: Callable[..., Any]) -> Callable[..., Any]:
    def set_hook(function: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            scope.judge(refuse, f"threading.{original.__name__}()",
                        "a trace or profile function for new threads outlives the request")
            return host_call(original, function, *args, **kwargs)  # report mode
        HOST_THREAD_HOOKS[kind] = function
        return original(function, *args, **kwargs)

    return set_hook


def _tracer_setter(original: Callable[..., Any], getter: Callable[[], Any],
                   kind: str) -> Callable[..., Any]:
    """``sys.settrace``/``setprofile`` inside a sandbox: a change is judged by the audit
    hook (refused: the function would outlive the request on this thread). Two calls change
    nothing the host did not choose, and go through: putting back the function already set
    (``doctest`` restores the tracer it saved, ``None`` included), and, once per thread a
    request started, putting on it the host's own hook for new threads (``threading``'s
    start-up of that thread, under a coverage tool). The request's own thread cannot take
    the host's hook: it would run as host code on the app's frames."""

    def set_tracer(function: Any) -> Any:
        if active_scope() is not None:
            if function is getter():
                return None
            if function is not None and function is HOST_THREAD_HOOKS[kind]:
                key = (_get_ident(), kind)
                if key in _AWAITING_HOST_HOOK:
                    _AWAITING_HOST_HOOK.discard(key)
                    return host_call(original, _HOST_HOOK_CALLERS[kind])
        return original(function)

    return set_tracer


class _HostHook:
    """The host's hook for new threads, put on a thread a request started: the interpreter
    calls it in the request's context, and it is host code (a coverage tool's first call
    installs its real tracer with ``sys.settrace``), so each call runs as host code.

    App code can reach this object (``sys.gettrace()``) and call it, make another of its
    class, or set its attribute; so it holds no callable: the hook is looked up where only
    host code sets it, and it runs only for a real frame that is the caller's (the traced
    one), an exact ``str`` event, and a frame of ``threading.Thread.run`` itself, the first
    code a started thread runs (the host's hook reads the frame it is given: an app frame's
    globals and locals are the app's objects). A thread whose ``run`` the app overrode is
    not traced by the host's hook."""

    __slots__ = ("_kind",)

    def __init__(self, kind: str) -> None:
        self._kind = kind

    def __call__(self, frame: Any, event: Any, arg: Any) -> Any:
        kind = self._kind
        if type(kind) is not str or kind not in _HOST_HOOK_KINDS:
            return None
        if type(frame) is not types.FrameType or type(event) is not str or (
                frame is not sys._getframe(1)) or frame.f_code is not _THREAD_RUN_CODE:
            return None
        hook = HOST_THREAD_HOOKS[kind]
        if hook is None:
            return None
        return host_call(hook, frame, event, arg)


_HOST_HOOK_KINDS = ("settrace", "setprofile")
_THREAD_RUN_CODE = threading.Thread.run.__code__
_HOST_HOOK_CALLERS = {kind: _HostHook(kind) for kind in _HOST_HOOK_KINDS}

#: ``(thread ident, kind)`` of the threads a request started that may still put the host's
#: hook for new threads on themselves: once each, as ``threading``'s start-up does before
#: the thread's target runs.
_AWAITING_HOST_HOOK: set[tuple[int, str]] = set()
