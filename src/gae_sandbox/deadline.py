"""Request deadlines: one timer thread for every request (a heap), not a thread per request.

At the soft deadline the timer raises :class:`DeadlineExceededError` in the request's thread
(``PyThreadState_SetAsyncExc``). An asynchronous exception is only seen when the thread runs
Python code, so the blocking calls that would hide it (``time.sleep``, socket operations,
``threading`` waits, ``queue.Queue.get``) are bounded by the time left instead, and raise the
error themselves. If the app catches the error and carries on, a :class:`HardDeadlineExceeded`
follows after ``Policy.hard_deadline_grace`` seconds, again and again until the scope ends,
and the host is told (a callback and the ``gae_sandbox`` logger): a Python thread cannot be
killed, so the host should recycle the worker.
"""

from __future__ import annotations

import _thread
import ctypes
import heapq
import itertools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .context import HOST_ONLY_THREADS, Scope, active_scope, host_call
from .errors import DeadlineExceededError, HardDeadlineExceeded

logger = logging.getLogger("gae_sandbox")

_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


def _host_call(function: Callable[..., Any], *args: Any) -> Any:
    """Call ``function`` as host code (no sandbox), so the audit hook lets this library's own
    ctypes calls through."""
    return host_call(function, *args)

_original_sleep = time.sleep
_monotonic = time.monotonic
_get_ident = threading.get_ident
# Reentrant: a garbage collection inside a critical section may run a finalizer the app
# registered, which opens a scope (and so schedules a deadline) in the same thread.
_RLock = _thread.RLock


def raise_in_thread(ident: int, error: type[BaseException]) -> bool:
    """Schedule ``error`` in thread ``ident``; it is raised at its next Python instruction."""
    return _host_call(_set_async_exc, ident, error) == 1


def _noop() -> None:
    pass


def absorb_pending() -> None:
    """Take delivery, here, of a deadline error scheduled for the current thread but not yet
    raised, so it cannot surface later in host code.

    (Withdrawing it with ``PyThreadState_SetAsyncExc(ident, NULL)`` would be simpler, but on
    CPython 3.11 that leaves the interpreter's pending-work flag set for good, and a trace
    function then never returns.)
    """
    try:
        for _ in range(64):  # each call is a check point where the error is raised
            _noop()
    except (DeadlineExceededError, HardDeadlineExceeded):
        pass


HardDeadlineCallback = Callable[["Deadline"], None]


class Deadline:
    """One request's deadline, aimed at the thread that runs the request.

    The timer injects only while the scope is attached to that thread (between the server's
    calls into a WSGI app it is not), and never after :meth:`cancel`.
    """

    __slots__ = ("started", "when", "grace", "owner", "on_hard", "lock", "thread", "attached",
                 "active", "soft_fired", "delivered", "hard_fired", "told_host", "raised_at",
                 "pending",
                 "queued_at", "__weakref__")

    def __init__(self, seconds: float, grace: float, owner: Any,
                 on_hard: HardDeadlineCallback | None) -> None:
        self.lock = _RLock()
        #: The time of this record's entry in the timer's heap, None if it has none (read
        #: and written under the timer's lock).
        self.queued_at: float | None = None
        self._begin(seconds, grace, owner, on_hard)

    def _begin(self, seconds: float, grace: float, owner: Any,
               on_hard: HardDeadlineCallback | None) -> None:
        self.started = _monotonic()
        self.when = self.started + seconds
        self.grace = grace
        self.owner = owner
        self.on_hard = on_hard
        self.thread: int | None = None
        self.attached = False
        self.active = True
        self.soft_fired = False  # the soft deadline passed (the timer or a bounded call saw it)
        self.delivered = False  # DeadlineExceededError injected into or raised in the request
        self.hard_fired = False
        self.told_host = False
        self.raised_at: float | None = None  # when a bounded call last raised the error
        self.pending = False  # an injected exception may not have been raised yet

    def restart(self, seconds: float, grace: float, owner: Any,
                on_hard: HardDeadlineCallback | None) -> None:
        """Use a cancelled record (:func:`recycle`) for a new deadline: every field anew,
        under its lock, so the timer sees either the old, cancelled state or the new one."""
        with self.lock:
            self._begin(seconds, grace, owner, on_hard)

    # -- the request thread ----------------------------------------------------------------

    def attach(self) -> None:
        with self.lock:
            self.thread = _get_ident()
            self.attached = True
            # (the timer may have passed it while the server held the thread: not delivered)
            due = self.active and not self.delivered and _monotonic() >= self.when
        if due:  # the deadline passed while the server held the thread
            raise self.error_from_call()

    def detach(self) -> None:
        """Called by the request thread: no deadline error reaches it after this returns."""
        with self.lock:
            self.attached = False
            pending, self.pending = self.pending, False
        if pending and self.thread == _get_ident():
            absorb_pending()

    def cancel(self) -> None:
        """End the deadline: nothing fires into the thread after this returns."""
        with self.lock:
            self.active = False
            self.attached = False
            pending, self.pending = self.pending, False
            # the timer's heap keeps a cancelled deadline a while: let it hold nothing else
            self.owner = None
            self.on_hard = None
        if pending and self.thread == _get_ident():
            absorb_pending()

    def remaining(self) -> float:
        """Seconds until the next event: the soft deadline, or the hard one after it."""
        limit = self.when + self.grace if self.soft_fired else self.when
        return limit - _monotonic()

    def error_from_call(self) -> BaseException:
        """The error a bounded blocking call raises itself when time is up."""
        if _get_ident() != self.thread:
            return DeadlineExceededError(self._message())  # a thread the request started
        tell = False
        with self.lock:
            pending, self.pending = self.pending, False
        if pending:
            absorb_pending()  # raise it here, not at a random later point
        with self.lock:
            self.raised_at = _monotonic()
            if self.soft_fired and self.raised_at >= self.when + self.grace:
                self.hard_fired = True
                tell, self.told_host = not self.told_host, True
                on_hard = self.on_hard
                error: BaseException = HardDeadlineExceeded(self._hard_message())
            else:
                self.soft_fired = True
                self.delivered = True
                error = DeadlineExceededError(self._message())
        if tell:
            _host_call(self._tell_host, on_hard)
        return error

    def _message(self) -> str:
        return (f"the request ran past its deadline of {self.when - self.started:g} s "
                "(Policy.deadline)")

    def _hard_message(self) -> str:
        return (f"the request carried on {self.grace:g} s past its deadline "
                "(Policy.hard_deadline_grace); the worker should be recycled")

    # -- the timer thread ------------------------------------------------------------------

    def fire(self, now: float) -> float | None:
        """Called by the timer at ``when`` (soft) and after; returns the next time or None."""
        hard = False
        with self.lock:
            if not self.active:
                return None
            if not self.soft_fired:
                if now < self.when:
                    return self.when
                if self.attached and self.thread is not None:
                    raise_in_thread(self.thread, DeadlineExceededError)
                    self.pending = True
                    self.delivered = True
                self.soft_fired = True
                return self.when + self.grace
            if now < self.when + self.grace:
                return self.when + self.grace
            recently = self.raised_at is not None and now - self.raised_at < self.grace
            if self.attached and self.thread is not None and not recently:
                # (a bounded call that just raised the error itself is not interrupted again)
                raise_in_thread(self.thread, HardDeadlineExceeded)
                self.pending = True
            hard = not self.told_host
            self.hard_fired = True
            self.told_host = True
            on_hard = self.on_hard  # cancel() may clear it once the lock is released
        if hard:
            self._tell_host(on_hard)
        return now + max(self.grace, 0.25)

    def _tell_host(self, on_hard: HardDeadlineCallback | None) -> None:
        logger.critical(
            "request in thread %s is %.1f s past its deadline and still running; a Python "
            "thread cannot be killed: recycle this worker process", self.thread,
            _monotonic() - self.when,
        )
        if on_hard is not None:
            try:
                on_hard(self)
            except Exception:
                logger.exception("gae_sandbox: the hard-deadline callback failed")


#: The C ``pthread_sigmask``, captured before any sandbox patches it (None: no such call).
signal_mask: Any = getattr(sys.modules.get("_signal"), "pthread_sigmask", None)


class DeadlineTimer:
    """The one timer thread: a heap of (time, sequence, deadline)."""

    def __init__(self) -> None:
        self._lock = _RLock()
        self._wakeup = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Deadline]] = []
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        """A forked child (a gunicorn worker) has no timer thread and none of the parent's
        requests; its lock may have been held by another thread at the fork."""
        for _, _, deadline in self._heap:
            deadline.queued_at = None
        _spares.clear()
        self._lock = _RLock()
        self._wakeup = threading.Condition(self._lock)
        self._heap = []
        self._thread = None

    def schedule(self, deadline: Deadline, when: float) -> None:
        """Have the timer call ``deadline.fire`` at ``when`` or before. A record already in
        the heap at that time or earlier (a recycled one) needs nothing: the timer meets
        that entry first and queues the record again for its time then. The timer is woken
        only when the new entry is earlier than every other, its next wake-up.

        The usual case takes no lock (the worker threads would all queue on this one): the
        timer sets ``queued_at`` to None when it pops the entry, before it calls ``fire``, and
        the record was restarted before this read, so either ``fire`` sees the new deadline
        (and queues it again) or this read sees None (and queues it here)."""
        queued = deadline.queued_at
        if queued is not None and queued <= when:
            return
        with self._lock:
            if self._thread is None:
                self._start()
            queued = deadline.queued_at
            if queued is not None and queued <= when:
                return
            heapq.heappush(self._heap, (when, next(self._sequence), deadline))
            deadline.queued_at = when
            if self._heap[0][2] is deadline:
                self._wakeup.notify()
            if len(self._heap) > 4096:
                self._compact()

    def _compact(self) -> None:
        """Drop the entries of cancelled records (they would only be popped and ignored)."""
        kept = []
        for item in self._heap:
            deadline = item[2]
            if deadline.active:
                kept.append(item)
            elif deadline.queued_at == item[0]:
                deadline.queued_at = None
        heapq.heapify(kept)
        self._heap = kept

    def _start(self) -> None:
        # Started in an empty context: the timer must never run inside a sandbox.
        self._compact()
        thread = threading.Thread(target=self._run, name="gae_sandbox-deadline", daemon=True)
        # nor with a signal mask a request set on this thread (a new thread inherits it)
        blocked = signal_mask(signal.SIG_SETMASK, ()) if signal_mask else None
        try:
            _host_call(thread.start)
        finally:
            if blocked is not None:
                signal_mask(signal.SIG_SETMASK, blocked)
        self._thread = thread

    def _run(self) -> None:
        HOST_ONLY_THREADS.add(_get_ident())
        while True:
            with self._lock:
                while True:
                    now = _monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        when, _, deadline = heapq.heappop(self._heap)
                        if deadline.queued_at == when:
                            deadline.queued_at = None
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._wakeup.wait(timeout)
            try:
                next_time = deadline.fire(_monotonic())
            except Exception:  # never let the one timer die
                logger.exception("gae_sandbox: deadline timer error")
                next_time = None
            if next_time is not None:
                with self._lock:
                    queued = deadline.queued_at  # (a recycled record may be queued again)
                    if queued is None or next_time < queued:
                        heapq.heappush(self._heap, (next_time, next(self._sequence), deadline))
                        deadline.queued_at = next_time


TIMER = DeadlineTimer()


#: Thread ident -> the record of that thread's last deadline, cancelled, for its next one.
_spares: dict[int, Deadline] = {}


def start_deadline(seconds: float, grace: float, owner: Any,
                   on_hard: HardDeadlineCallback | None) -> Deadline:
    """A running deadline: this thread's spare record (:func:`recycle`) if it has one, which
    is usually still in the timer's heap, so that no heap entry is added; else a new one."""
    deadline = _spares.pop(_get_ident(), None)  # one atomic step: a finalizer may be here too
    if deadline is None:
        deadline = Deadline(seconds, grace, owner, on_hard)
    else:
        deadline.restart(seconds, grace, owner, on_hard)
    TIMER.schedule(deadline, deadline.when)
    return deadline


def recycle(deadline: Deadline) -> None:
    """Keep a cancelled record for this thread's next deadline (``close_scope``, once the
    scope that owned it has ended). Whoever still holds it (a thread the request started, a
    nested scope) reads it through :func:`_deadline_of`, which honours a record only for the
    scope that owns it now and the scopes inside that one."""
    if deadline.active or deadline.pending or deadline.thread not in (None, _get_ident()):
        return
    if len(_spares) >= 4096:  # threads that ended left theirs
        _spares.clear()
    _spares[_get_ident()] = deadline


# --- bounded blocking calls -----------------------------------------------------------------


def _deadline_of(scope: Scope | None) -> Deadline | None:
    """The running deadline that bounds ``scope``: its own or an enclosing scope's, and only
    while that scope owns it (a record is reused once its scope ends)."""
    if scope is None:
        return None
    deadline = scope.deadline
    if deadline is None or not deadline.active:
        return None
    owner = deadline.owner
    while scope is not None:
        if scope is owner:
            return deadline
        scope = scope.parent
    return None


def bounded_sleep(seconds: float) -> None:
    """``time.sleep`` that ends at the deadline with ``DeadlineExceededError``."""
    scope = active_scope()
    if scope is None:
        return _original_sleep(seconds)
    deadline = _deadline_of(scope)
    if deadline is None:
        return _original_sleep(seconds)
    remaining = deadline.remaining()
    if seconds < remaining:
        return _original_sleep(seconds)
    if remaining > 0:
        _original_sleep(remaining)
    raise deadline.error_from_call()


def _bounded_wait(original: Callable[..., Any],
                  done: Callable[[Any, Any], bool]) -> Callable[..., Any]:
    """A ``wait(timeout)`` method whose timeout is no longer than the time left; when the
    time is up and ``done(self, result)`` is false, it raises the deadline error.
    ``Condition.wait`` covers ``Event.wait``, ``queue.Queue.get``, ``Semaphore.acquire``
    and ``Barrier.wait``; ``Thread.join`` is the other."""

    def wait(self: Any, timeout: float | None = None) -> Any:
        scope = active_scope()
        if scope is None:  # host code (a server's worker pool): one ContextVar read
            return original(self, timeout)
        deadline = _deadline_of(scope)
        if deadline is None:
            return original(self, timeout)
        remaining = deadline.remaining()
        if timeout is not None and timeout < remaining:
            return original(self, timeout)
        result = original(self, max(remaining, 0.0))
        if done(self, result) or deadline.remaining() > 0:
            return result
        raise deadline.error_from_call()

    wait.__name__ = original.__name__
    wait.__doc__ = original.__doc__
    return wait


def _bounded_socket_call(original: Callable[..., Any]) -> Callable[..., Any]:
    """Socket operations: the socket's timeout is lowered to the time left for the call."""

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is None:  # host code (the server's own sockets)
            return original(self, *args, **kwargs)
        deadline = _deadline_of(scope)
        if deadline is None:
            return original(self, *args, **kwargs)
        remaining = deadline.remaining()
        if remaining <= 0:
            raise deadline.error_from_call()
        previous = self.gettimeout()
        if previous is not None and previous <= remaining:
            return original(self, *args, **kwargs)
        self.settimeout(remaining)
        try:
            return original(self, *args, **kwargs)
        except (TimeoutError, BlockingIOError):
            if deadline.remaining() <= 0:
                raise deadline.error_from_call() from None
            raise
        finally:
            try:
                self.settimeout(previous)
            except OSError:  # closed meanwhile
                pass

    call.__name__ = getattr(original, "__name__", "call")
    call.__doc__ = original.__doc__
    return call


def _bounded_poll(original: Callable[..., Any], timeout_at: int, unit: float,
                  infinite: Callable[[float], bool]) -> Callable[..., Any]:
    """``select.select`` and the ``poll`` methods of ``select.poll``/``select.epoll`` (what
    ``selectors`` and ``asyncio``'s event loops wait in): the timeout, argument
    ``timeout_at`` counted in ``unit`` seconds, is lowered to the time left; when the time
    is up and nothing was ready, the call raises the deadline error, as ``time.sleep`` does.
    (The timer's exception cannot reach a thread blocked in C.) The timeout is read once as
    a plain number and that number is the one passed on."""

    def call(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return original(*args, **kwargs)
        deadline = _deadline_of(scope)
        if deadline is None:
            return original(*args, **kwargs)
        positional = len(args) > timeout_at
        timeout = args[timeout_at] if positional else kwargs.get("timeout")
        if timeout is not None:
            try:
                timeout = float(timeout)
            except (TypeError, ValueError):
                return original(*args, **kwargs)  # the call's own error
            if timeout != timeout:  # NaN: the call's own error
                return original(*args, **kwargs)
        remaining = deadline.remaining()
        if timeout is not None and not infinite(timeout) and timeout * unit < remaining:
            bound = timeout
        else:
            bound = max(remaining, 0.0) / unit
        if unit != 1.0:  # milliseconds: a whole number, rounded up
            bound = int(-(-bound // 1))
        if positional:
            args = args[:timeout_at] + (bound,) + args[timeout_at + 1:]
        elif len(args) == timeout_at and "timeout" not in kwargs:
            args += (bound,)  # (``select.select`` takes no keywords)
        else:
            kwargs["timeout"] = bound
        result = original(*args, **kwargs)
        ready = any(result) if type(result) is tuple else bool(result)  # select's 3 lists
        if ready or deadline.remaining() > 0:
            return result
        raise deadline.error_from_call()

    return call


def _negative(timeout: float) -> bool:
    return timeout < 0


def _poll_patches() -> list[tuple[Any, str, Any, Callable[..., Any], bool]]:
    """(owner, name, original, bounded call, is a static attribute) for the waits of
    ``select``."""
    import select
    import selectors

    bounded_select = _bounded_poll(select.select, 3, 1.0, lambda timeout: False)
    found = [(select, "select", select.select, bounded_select, False)]
    if vars(selectors.SelectSelector).get("_select") is select.select:
        # the class took the function itself at import (as a static attribute)
        found.append((selectors.SelectSelector, "_select", select.select, bounded_select, True))
    kinds = [(getattr(select, "epoll", None), 1.0)]
    if hasattr(select, "poll"):
        kinds.append((type(select.poll()), 0.001))
    for kind, unit in kinds:
        if isinstance(kind, type) and "poll" in vars(kind):
            original = vars(kind)["poll"]
            found.append((kind, "poll", original, _bounded_poll(original, 1, unit, _negative),
                          False))
    return found


_SOCKET_CALLS = ("connect", "connect_ex", "accept", "recv", "recv_into", "recvfrom",
                 "recvfrom_into", "recvmsg", "send", "sendall", "sendto", "sendmsg")


def build_patches() -> list[tuple[Any, str, Any, Any]]:
    """The bounded calls, each behind a C ``Guard`` where the accelerator is built: a
    server's own socket calls and ``Condition.wait`` (several per request) run no Python
    frame of this library."""
    from .patches import _guarded

    def bounded(owner: Any, name: str, original: Any, replacement: Any) -> None:
        patches.append((owner, name, original, _guarded(replacement, original)))

    patches: list[tuple[Any, str, Any, Any]] = []
    bounded(time, "sleep", _original_sleep, bounded_sleep)
    bounded(threading.Condition, "wait", threading.Condition.wait,
            _bounded_wait(threading.Condition.wait, lambda cond, notified: bool(notified)))
    bounded(threading.Thread, "join", threading.Thread.join,
            _bounded_wait(threading.Thread.join, lambda thread, _: not thread.is_alive()))
    for name in _SOCKET_CALLS:
        original = getattr(socket.socket, name, None)
        if original is not None:
            bounded(socket.socket, name, original, _bounded_socket_call(original))
    for owner, name, original, replacement, static in _poll_patches():
        guarded = _guarded(replacement, original)
        patches.append((owner, name, original, staticmethod(guarded) if static else guarded))
    patches.extend(_c_signal_patches())
    return patches


#: ``signal`` functions that set handlers and timers (the patches layer refuses them on
#: ``signal`` itself).
SIGNAL_FUNCTIONS = ("signal", "alarm", "setitimer", "siginterrupt",
                    "set_wakeup_fd", "pause", "sigwait", "sigwaitinfo", "sigtimedwait")


def _c_signal_patches() -> list[tuple[Any, str, Any, Any]]:
    """The same refusals on ``_signal``, the C module ``signal.py`` wraps: reached as
    ``signal._signal``, or by a fresh copy or a reload of ``signal.py`` (its functions call
    ``_signal``'s), a handler or timer would cancel or outlive the request."""
    from .patches import _refuse_signal, _refused_call, _thread_signal_mask

    c_signal = sys.modules.get("_signal")
    if c_signal is None:
        return []
    found = []
    mask = getattr(c_signal, "pthread_sigmask", None)
    if mask is not None:  # the thread's own: changed, and put back as the request ends
        found.append((c_signal, "pthread_sigmask", mask, _thread_signal_mask(mask)))
    for name in SIGNAL_FUNCTIONS:
        original = getattr(c_signal, name, None)
        if original is not None:
            found.append((c_signal, name, original,
                          _refused_call(original, _refuse_signal, f"signal.{name}()")))
    return found
