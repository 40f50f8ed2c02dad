"""Request deadlines: ``DeadlineExceededError`` at ``Policy.deadline`` wherever the request is
(pure Python, or blocked in a sleep, a ``threading`` wait, a queue, a join or a socket), then
``HardDeadlineExceeded`` and the host's callback if the app carries on, and never a stray
timer exception after the scope ended.

Timing bounds are generous on purpose (a noisy machine): each assert says "about the
deadline", not "exactly".
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import select
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    DeadlineExceededError,
    HardDeadlineExceeded,
    Policy,
    Sandbox,
    current_sandbox,
)
from gae_sandbox.context import active_scope
from gae_sandbox.sandbox import close_scope, detach

DEADLINE = 0.3
TIMER_NAME = "gae_sandbox-deadline"


def spin(seconds: float) -> None:
    """Busy Python code for ``seconds`` (a call in the loop body, so an asynchronous exception
    is raised where a ``try`` around the call sees it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.monotonic()


def timed(function: Callable[[], Any], sandbox: Sandbox) -> tuple[BaseException | None, float]:
    """Run ``function`` in ``sandbox``; the exception that ended it and the seconds taken."""
    start = time.monotonic()
    try:
        with sandbox:
            function()
    except BaseException as error:  # noqa: BLE001 - the test inspects it
        return error, time.monotonic() - start
    return None, time.monotonic() - start


def assert_deadline_at(error: BaseException | None, elapsed: float, seconds: float) -> None:
    assert isinstance(error, DeadlineExceededError), repr(error)
    assert not isinstance(error, HardDeadlineExceeded)
    assert seconds - 0.05 <= elapsed <= seconds + 1.2, elapsed


@pytest.fixture
def short(policy: Policy) -> Policy:
    return policy.replace(deadline=DEADLINE, hard_deadline_grace=5.0)


# --- where the request is when the deadline passes --------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A loopback listener that never accepts: a connection completes in the backlog and its
    ``recv`` blocks for ever (the ``listener`` fixture closes connections at once)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    yield server
    server.close()


def blocking_case(name: str, stack: ExitStack, server: socket.socket) -> Callable[[], object]:
    """Set up (outside the sandbox) one way of blocking; return the call that blocks."""
    if name == "time.sleep":
        return lambda: time.sleep(10)
    if name == "pure Python loop":
        return lambda: spin(10)
    if name == "Event.wait":
        return lambda: threading.Event().wait()
    if name == "Queue.get":
        return lambda: queue.Queue().get()
    if name == "Condition.wait":
        condition = threading.Condition()

        def wait() -> None:
            with condition:
                condition.wait()

        return wait
    if name == "Thread.join":
        release = threading.Event()
        sleeper = threading.Thread(target=release.wait, args=(20,), name="host-sleeper")
        sleeper.start()  # a host thread: its own wait is not bounded by the request
        stack.callback(sleeper.join, 10)
        stack.callback(release.set)
        return sleeper.join
    if name == "socketpair recv":
        a, b = socket.socketpair()
        stack.callback(a.close)
        stack.callback(b.close)
        return lambda: a.recv(1)
    if name in ("select.select", "select.poll", "select.epoll", "SelectSelector",
                "DefaultSelector", "asyncio.sleep"):
        return waiting_case(name, stack)
    if name == "loopback recv":
        port = server.getsockname()[1]

        def recv() -> None:
            conn = socket.create_connection(("127.0.0.1", port))
            stack.callback(conn.close)
            conn.recv(1)

        return recv
    raise AssertionError(name)


def waiting_case(name: str, stack: ExitStack) -> Callable[[], object]:
    """Waits on a descriptor that never becomes ready, with no timeout or a long one (the
    timer's exception cannot reach a thread blocked in C: the wait itself is bounded)."""
    a, b = socket.socketpair()
    stack.callback(a.close)
    stack.callback(b.close)
    if name == "select.select":
        return lambda: select.select([a], [], [])
    if name == "select.poll":
        poller = select.poll()
        poller.register(a, select.POLLIN)
        return lambda: poller.poll(10_000)
    if name == "select.epoll":
        epoll = select.epoll()
        stack.callback(epoll.close)
        epoll.register(a, select.EPOLLIN)
        return lambda: epoll.poll(timeout=-1)
    if name == "asyncio.sleep":
        # (asyncio.run on the main thread would also set a SIGINT handler: refused, recorded)
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        return lambda: loop.run_until_complete(asyncio.sleep(10))
    selector = (selectors.SelectSelector if name == "SelectSelector"
                else selectors.DefaultSelector)()
    stack.callback(selector.close)
    selector.register(a, selectors.EVENT_READ)
    return selector.select


BLOCKING = ["time.sleep", "pure Python loop", "Event.wait", "Queue.get", "Condition.wait",
            "Thread.join", "socketpair recv", "loopback recv", "select.select", "select.poll",
            "select.epoll", "SelectSelector", "DefaultSelector", "asyncio.sleep"]


@pytest.mark.parametrize("name", BLOCKING)
def test_deadline_interrupts(name: str, short: Policy, silent_server: socket.socket) -> None:
    box = Sandbox(short.replace(allowed_hosts=("127.0.0.1:*",)))
    with ExitStack() as stack:
        call = blocking_case(name, stack, silent_server)
        error, elapsed = timed(call, box)
    assert_deadline_at(error, elapsed, DEADLINE)
    assert current_sandbox() is None
    assert box.violations == []


def test_lock_acquire_control_outside_sandbox_blocks() -> None:
    """Control for the test below: the lock really is held for a while."""
    lock = threading.Lock()
    lock.acquire()
    releaser = threading.Timer(0.3, lock.release)
    releaser.start()
    start = time.monotonic()
    assert lock.acquire(timeout=5)
    lock.release()
    assert time.monotonic() - start >= 0.25
    releaser.join(5)


@pytest.mark.xfail(strict=True, reason="known gap (README): "
                   "threading.Lock().acquire() (a C-level wait) is not bounded by the deadline: "
                   "a request blocked on a lock gets no DeadlineExceededError until it is "
                   "released")
def test_deadline_interrupts_lock_acquire(short: Policy) -> None:
    lock = threading.Lock()
    lock.acquire()  # held by the host; released after 1 s so the test always ends
    releaser = threading.Timer(1.0, lock.release)
    releaser.start()
    try:
        error, elapsed = timed(lock.acquire, Sandbox(short))
    finally:
        releaser.join(5)
        if lock.locked():
            lock.release()
    assert_deadline_at(error, elapsed, DEADLINE)
    assert elapsed < 0.8


def test_calls_within_the_deadline_behave_normally(short: Policy) -> None:
    a, b = socket.socketpair()
    try:
        a.settimeout(0.05)
        with Sandbox(short):
            time.sleep(0.05)
            assert threading.Event().wait(0.05) is False
            with pytest.raises(queue.Empty):
                queue.Queue().get(timeout=0.05)
            with pytest.raises(TimeoutError):
                a.recv(1)  # the socket's own shorter timeout, not the deadline
            assert select.select([a], [], [], 0.01) == ([], [], [])
            poller = select.poll()
            poller.register(a, select.POLLIN)
            assert poller.poll(10) == []
            b.sendall(b"x")
            assert select.select([a], [], [], 5) == ([a], [], [])
            assert poller.poll() == [(a.fileno(), select.POLLIN)]
            assert a.recv(1) == b"x"
            loop = asyncio.new_event_loop()
            assert loop.run_until_complete(asyncio.sleep(0.01, "slept")) == "slept"
            loop.close()
        assert a.gettimeout() == 0.05  # the socket's timeout is put back
    finally:
        a.close()
        b.close()


def test_deadline_is_not_an_exception() -> None:
    assert issubclass(DeadlineExceededError, BaseException)
    assert not issubclass(DeadlineExceededError, Exception)
    assert not issubclass(HardDeadlineExceeded, Exception)
    assert not issubclass(HardDeadlineExceeded, DeadlineExceededError)


@pytest.mark.parametrize("how", ["time.sleep", "pure Python loop"])
def test_except_exception_does_not_swallow_the_deadline(how: str, short: Policy) -> None:
    swallowed: list[BaseException] = []

    def app() -> None:
        try:
            if how == "time.sleep":
                time.sleep(10)
            else:
                spin(10)
        except Exception as error:  # the app's catch-all
            swallowed.append(error)

    error, elapsed = timed(app, Sandbox(short))
    assert_deadline_at(error, elapsed, DEADLINE)
    assert swallowed == []


# --- the hard deadline ----------------------------------------------------------------------


def test_hard_deadline_after_grace(policy: Policy, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gae_sandbox")
    calls: list[tuple[Any, int, Any]] = []
    called = threading.Event()
    marker = tmp_path / "recycle-me"

    def on_hard(sandbox: Sandbox, ident: int) -> None:
        # host code: runs unsandboxed (it may write, say, a marker for the process manager)
        calls.append((sandbox, ident, current_sandbox()))
        marker.write_text("recycle")
        called.set()

    box = Sandbox(policy.replace(deadline=DEADLINE, hard_deadline_grace=0.3),
                  on_hard_deadline=on_hard)
    soft: list[float] = []
    start = time.monotonic()
    with pytest.raises(HardDeadlineExceeded):
        with box:
            for _ in range(3):  # an app that catches the deadline and carries on
                try:
                    spin(2)
                except DeadlineExceededError:
                    soft.append(time.monotonic() - start)
    hard = time.monotonic() - start
    assert called.wait(5), "on_hard_deadline was not called"
    assert len(soft) == 1 and DEADLINE - 0.05 <= soft[0] <= DEADLINE + 1.2, soft
    assert 0.55 <= hard <= 0.6 + 1.5, hard
    assert calls == [(box, threading.get_ident(), None)]
    assert marker.read_text() == "recycle"
    critical = [r for r in caplog.records
                if r.name == "gae_sandbox" and r.levelno == logging.CRITICAL]
    assert len(critical) == 1, [r.getMessage() for r in caplog.records]
    assert "recycle" in critical[0].getMessage()


def test_hard_deadline_repeats_until_the_request_ends(policy: Policy) -> None:
    box = Sandbox(policy.replace(deadline=0.2, hard_deadline_grace=0.2))
    caught: list[str] = []
    with box:
        for _ in range(6):  # catches everything; bounded so it ends even if nothing fires
            try:
                spin(1.5)
            except DeadlineExceededError:
                caught.append("soft")
            except HardDeadlineExceeded:
                caught.append("hard")
                if caught.count("hard") == 2:
                    break
    assert caught == ["soft", "hard", "hard"]
    spin(0.5)  # and nothing more once the scope ended


def test_hard_deadline_told_when_blocked_in_sleep(policy: Policy,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The hard deadline raised by a bounded call (not the timer) tells the host too, even
    though the request ends at once; the callback runs unsandboxed."""
    caplog.set_level(logging.WARNING, logger="gae_sandbox")
    rounds = []
    for _ in range(3):  # the timer and the bounded call race; every round must tell
        calls: list[tuple[int, Any]] = []
        box = Sandbox(policy.replace(deadline=0.1, hard_deadline_grace=0.1),
                      on_hard_deadline=lambda sandbox, ident, calls=calls: calls.append(
                          (ident, current_sandbox())))
        with pytest.raises(HardDeadlineExceeded):
            with box:
                try:
                    time.sleep(10)
                except DeadlineExceededError:
                    pass
                time.sleep(10)
        time.sleep(0.3)  # the timer's next look at the deadline, had it not been cancelled
        rounds.append(calls)
    assert rounds == [[(threading.get_ident(), None)]] * 3
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 3


# --- nothing after the scope ----------------------------------------------------------------


def test_no_timer_exception_after_the_scope(policy: Policy) -> None:
    """Requests that end around their deadline leave nothing behind. They run through
    ``Sandbox.call`` (what the middleware does): with a ``with`` statement the error can land
    as ``__exit__`` starts, a known limit shown by the strict xfail below, and a scope left
    attached that way would interrupt every later test of this process."""
    box = Sandbox(policy.replace(deadline=0.05, hard_deadline_grace=0.03))
    inside = 0
    finished = 0
    leaked: list[tuple[int, str]] = []
    for i in range(50):
        try:
            # ends around the deadline: 0.04 .. 0.06 s
            box.call(spin, 0.04 + 0.02 * (i % 11) / 10)
            finished += 1
        except DeadlineExceededError:
            inside += 1
        except HardDeadlineExceeded:
            leaked.append((i, "hard deadline inside"))
        try:
            assert current_sandbox() is None
            # past the soft and the hard deadline of the request that just ended
            spin(0.03)
            time.sleep(0.01)
            spin(0.03)
        except (DeadlineExceededError, HardDeadlineExceeded) as error:
            leaked.append((i, type(error).__name__))
    try:
        spin(0.3)
    except (DeadlineExceededError, HardDeadlineExceeded) as error:
        leaked.append((-1, type(error).__name__))
    assert leaked == []
    assert inside + finished == 50
    assert inside > 0 and finished > 0  # both sides of the deadline were exercised


@pytest.mark.xfail(strict=True, reason="known limit of the with statement (README advises "
                   "Sandbox.call): "
                   "DeadlineExceededError delivered as Sandbox.__exit__ starts propagates out "
                   "of __exit__ before detach/close_scope: the thread stays sandboxed and gets "
                   "HardDeadlineExceeded in host code later")
def test_deadline_arriving_as_exit_starts(policy: Policy) -> None:
    """The race of the test above, made certain: the thread is held where ``Sandbox.__exit__``
    begins (a subclass whose ``__exit__`` spins before calling it) until the timer's
    exception is delivered there; CPython checks for asynchronous exceptions on entering a
    Python function, so the real ``__exit__`` can receive it at the same point.

    Run in a thread of its own, so that a scope the bug leaves attached cannot affect the
    other tests; that scope's deadline is cancelled from this thread (which the timer never
    aims at) before the worker cleans up."""

    class HeldAtExit(Sandbox):
        def __exit__(self, *exc_info: Any) -> None:
            spin(2)  # the asynchronous exception is raised here, as __exit__ starts
            return super().__exit__(*exc_info)

    box = HeldAtExit(policy.replace(deadline=0.1, hard_deadline_grace=0.1))
    state: dict[str, Any] = {}
    timer_errors = (DeadlineExceededError, HardDeadlineExceeded)

    def spin_until(done: Callable[[], bool]) -> None:
        while True:
            try:
                while not done():
                    spin(0.01)
                return
            except timer_errors as error:
                state.setdefault("leak", type(error).__name__)

    def request() -> None:
        try:
            with box:
                pass
        except DeadlineExceededError:
            pass
        try:
            state["after"] = current_sandbox()
            state["scope"] = active_scope()
        except timer_errors as error:
            state.setdefault("leak", type(error).__name__)
        spin_until(lambda: "cancelled" in state)
        scope = state.get("scope")
        if scope is not None:  # nothing fires any more: end the leaked scope
            close_scope(scope)
            detach(scope)

    worker = threading.Thread(target=request, name="exit-race")
    worker.start()
    try:
        end = time.monotonic() + 10
        while "scope" not in state and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.6)  # past the hard deadline, twice
    finally:
        scope = state.get("scope")
        if scope is not None and scope.deadline is not None:
            scope.deadline.cancel()
        state["cancelled"] = True
        worker.join(10)
    assert not worker.is_alive()
    assert current_sandbox() is None
    assert state["after"] is None, "the thread is still sandboxed after the with"
    assert "leak" not in state, state.get("leak")


def test_sandbox_call_ends_the_scope_whatever_the_deadline_does(policy: Policy) -> None:
    """``Sandbox.call``, the README's advice for tight deadlines: the same requests as
    ``test_no_timer_exception_after_the_scope`` leave nothing behind."""
    box = Sandbox(policy.replace(deadline=0.05, hard_deadline_grace=0.03))
    outcomes = {"finished": 0, "deadline": 0}
    leaked: list[str] = []
    for i in range(12):
        try:
            box.call(spin, 0.04 + 0.02 * (i % 11) / 10)
            outcomes["finished"] += 1
        except DeadlineExceededError:
            outcomes["deadline"] += 1
        try:
            assert current_sandbox() is None
            spin(0.07)
        except (DeadlineExceededError, HardDeadlineExceeded) as error:
            leaked.append(type(error).__name__)
    assert leaked == []
    assert outcomes["deadline"] > 0


# --- no deadline, nested deadlines ----------------------------------------------------------


def test_no_deadline_never_fires(policy: Policy) -> None:
    assert policy.deadline is None
    box = Sandbox(policy)
    with box:
        time.sleep(0.35)
        spin(0.35)
        assert threading.Event().wait(0.1) is False
        with pytest.raises(queue.Empty):
            queue.Queue().get(timeout=0.1)
    spin(0.1)


def test_nested_shorter_inner_deadline_fires_first(policy: Policy) -> None:
    outer = Sandbox(policy.replace(deadline=5.0))
    inner = Sandbox(policy.replace(deadline=DEADLINE))
    start = time.monotonic()
    with outer:
        with pytest.raises(DeadlineExceededError):
            with inner:
                time.sleep(10)
        elapsed = time.monotonic() - start
        assert current_sandbox() == outer
        spin(0.2)  # the outer request carries on, its own deadline far away
        time.sleep(0.1)
    assert DEADLINE - 0.05 <= elapsed <= DEADLINE + 1.2, elapsed


def test_nested_shorter_inner_deadline_pure_python(policy: Policy) -> None:
    outer = Sandbox(policy.replace(deadline=5.0))
    inner = Sandbox(policy.replace(deadline=DEADLINE))
    with outer:
        error, elapsed = timed(lambda: spin(10), inner)
        spin(0.2)
    assert_deadline_at(error, elapsed, DEADLINE)


def test_nested_longer_inner_deadline_keeps_the_outer_one(policy: Policy) -> None:
    outer = Sandbox(policy.replace(deadline=DEADLINE))
    inner = Sandbox(policy.replace(deadline=5.0))
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        with outer:
            with inner:
                time.sleep(1.5)
    assert time.monotonic() - start < 1.2


def test_nested_inner_without_deadline_keeps_the_outer_one(policy: Policy) -> None:
    outer = Sandbox(policy.replace(deadline=DEADLINE))
    inner = Sandbox(policy)  # deadline None
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        with outer:
            with inner:
                time.sleep(10)
    elapsed = time.monotonic() - start
    assert DEADLINE - 0.05 <= elapsed <= DEADLINE + 1.2, elapsed


# --- the timer thread -----------------------------------------------------------------------


def test_one_timer_thread_for_all_requests(policy: Policy) -> None:
    box = Sandbox(policy.replace(deadline=30.0))
    for _ in range(30):
        with box:
            pass
    with box:
        timers = [t for t in threading.enumerate() if t.name == TIMER_NAME]
    assert len(timers) == 1
    assert timers[0].daemon and timers[0].is_alive()
    # and the requests all ended quickly: the timer thread is nobody's request thread
    start = time.monotonic()
    with box:
        pass
    assert time.monotonic() - start < 1.0


TIMER_PROBE = textwrap.dedent("""
    import sys, threading, time
    from gae_sandbox import DeadlineExceededError, HardDeadlineExceeded, Policy, Sandbox

    root, marker = sys.argv[1], sys.argv[2]
    assert not any(t.name == "gae_sandbox-deadline" for t in threading.enumerate())
    called = threading.Event()

    def on_hard(sandbox, ident):
        with open(marker, "w") as f:  # host code, run by the timer thread
            f.write("written by the timer thread")
        called.set()

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.monotonic()

    outer = Policy.python27(app_root=root, deadline=None)
    # made by host code (a Sandbox app code makes runs its callback in the app's sandbox)
    inner = Sandbox(Policy.python27(app_root=root, deadline=0.2, hard_deadline_grace=0.2),
                    on_hard_deadline=on_hard)
    with Sandbox(outer):  # no deadline: it would wait for ever for a thread it tracked
        try:
            # the first deadline of the process: the timer thread starts in here
            with inner:
                try:
                    spin(3)
                except DeadlineExceededError:
                    pass
                spin(3)
        except HardDeadlineExceeded:
            pass
    assert called.wait(5), "no hard-deadline callback"
    print("timers:", sum(t.name == "gae_sandbox-deadline" for t in threading.enumerate()))
""")


def test_timer_thread_started_inside_a_sandbox_is_not_sandboxed(app_root: Path,
                                                                tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    result = subprocess.run([sys.executable, "-c", TIMER_PROBE, str(app_root), str(marker)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "timers: 1" in result.stdout
    assert marker.read_text() == "written by the timer thread"


TRACE_PROBE = textwrap.dedent("""
    import sys, time
    from gae_sandbox import DeadlineExceededError, Policy, Sandbox

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.monotonic()

    try:
        with Sandbox(Policy.python27(app_root=sys.argv[1], deadline=0.05)):
            spin(3)
    except DeadlineExceededError:
        print("deadline", flush=True)

    def traced():
        return 42

    sys.settrace(lambda frame, event, arg: None)  # a debugger, coverage.py's Python tracer
    assert traced() == 42
    sys.settrace(None)
    print("traced", flush=True)
""")


def test_tracing_still_works_after_a_deadline(app_root: Path) -> None:
    try:
        result = subprocess.run([sys.executable, "-c", TRACE_PROBE, str(app_root)],
                                capture_output=True, text=True, timeout=60)  # a hang: stops
    except subprocess.TimeoutExpired as hung:
        output = hung.stdout or b""
        text = output.decode() if isinstance(output, bytes) else output
        assert "deadline" in text  # the request got its error; then tracing hung
        raise AssertionError("the process hung in sys.settrace after a deadline") from None
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["deadline", "traced"]



# --- signal's C module (escape suite, issue 5) -----------------------------------------------


@pytest.mark.parametrize("name", ["signal", "setitimer", "alarm"])
def test_signal_c_module_refused(policy: Policy, name: str) -> None:
    """``signal.py`` wraps ``_signal``: reached as ``signal._signal`` (or by a fresh copy or a
    reload of ``signal.py``, whose functions call ``_signal``'s), it is refused as well."""
    import signal

    from gae_sandbox import NotAvailableRefused

    c_signal: Any = signal._signal  # type: ignore[attr-defined]
    arguments = {
        "signal": (signal.SIGALRM, lambda signum, frame: None),
        "setitimer": (signal.ITIMER_REAL, 100),
        "alarm": (100,),
    }[name]
    state = (signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL),
             signal.pthread_sigmask(signal.SIG_BLOCK, []))
    with Sandbox(policy):
        with pytest.raises(NotAvailableRefused, match=f"signal.{name}"):
            getattr(c_signal, name)(*arguments)
    assert (signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL),
            signal.pthread_sigmask(signal.SIG_BLOCK, [])) == state
    # control: the host may set a handler through _signal
    previous = c_signal.signal(signal.SIGALRM, int(signal.SIG_IGN))  # exact ints only
    try:
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_IGN
    finally:
        c_signal.signal(signal.SIGALRM, int(signal.SIG_DFL) if previous is None else previous)


@pytest.mark.parametrize("module", ["signal", "_signal"])
def test_a_requests_signal_mask_is_put_back_when_it_ends(policy: Policy, module: str) -> None:
    """The signal mask is the calling thread's (``multiprocessing`` blocks signals around a
    start): a request may change it, and the thread's mask is put back as it ends, in the
    request's thread and in one it started. Control: unsandboxed, the change stays."""
    import signal

    mask = (signal._signal if module == "_signal" else signal).pthread_sigmask  # type: ignore[attr-defined]
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.SIGUSR2 not in before
    seen: list[Any] = []

    def block() -> None:
        mask(signal.SIG_BLOCK, [signal.SIGUSR2])
        seen.append(signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def in_a_thread() -> None:
        worker = threading.Thread(target=lambda: (block(), seen.append(
            signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, []))))
        worker.start()
        worker.join()

    with Sandbox(policy):
        block()
        in_a_thread()
    assert seen == [True, True, True]
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    block()  # control: the host's own change stays
    try:
        assert signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


# --- one record per worker thread -----------------------------------------------------------


def test_a_thread_reuses_its_deadline_record_and_the_timer_keeps_one_entry(
        short: Policy) -> None:
    """Requests one after another in a thread reuse one record, and add no entry to the
    timer's heap while the record is queued at or before their time."""
    from gae_sandbox.deadline import TIMER

    long = short.replace(deadline=60.0)
    records = set()

    def entries(record: Any) -> int:
        with TIMER._lock:
            return sum(1 for _, _, queued in TIMER._heap if queued is record)

    counts = []
    for _ in range(20):
        with Sandbox(long):
            scope = active_scope()
            assert scope is not None
            records.add(scope.deadline)
        counts.append(entries(scope.deadline))
    assert len(records) == 1
    (record,) = records
    assert not record.active
    # an entry comes and goes only as the timer meets it (an earlier test's, here): never
    # one more per request
    assert counts[-1] <= counts[0] and max(counts) <= counts[0], counts


@pytest.mark.parametrize("order", ["long-then-short", "short-then-long"])
def test_a_reused_record_fires_at_its_new_time_only(short: Policy, order: str) -> None:
    """The record's entry from the previous request (60 s away, or about to come due) never
    decides the next request's deadline: a short one after a long one fires at its own
    time, and a long one after a short one is not cut at the short one's time."""
    long = short.replace(deadline=60.0)
    quick = short.replace(deadline=0.15)
    if order == "long-then-short":
        with Sandbox(long):
            pass
        error, elapsed = timed(lambda: spin(10), Sandbox(quick))
        assert_deadline_at(error, elapsed, 0.15)
    else:
        with Sandbox(quick):
            pass
        error, _ = timed(lambda: spin(0.6), Sandbox(long))  # past the short one's time
        assert error is None


def test_a_reused_record_no_longer_bounds_the_scopes_that_held_it(short: Policy) -> None:
    """A nested scope (or a thread it started) holding the record of a request that ended
    sees no deadline once the record serves the next request of the thread."""
    from gae_sandbox.deadline import _deadline_of

    outer = Sandbox(short.replace(deadline=60.0))
    inner = Sandbox(short.replace(deadline=None))
    with outer:
        with inner:
            nested = active_scope()
            assert nested is not None and _deadline_of(nested) is nested.deadline
    with outer:
        current = active_scope()
        assert current is not None and current.deadline is nested.deadline  # the same record
        assert _deadline_of(current) is current.deadline
        assert _deadline_of(nested) is None


def test_the_timers_error_says_what_happened(short: Policy) -> None:
    """The timer raises the class in the thread: the instance still has a message."""
    error, _ = timed(lambda: spin(10), Sandbox(short))
    assert isinstance(error, DeadlineExceededError)
    assert "past its deadline" in str(error)
    assert "hard_deadline_grace" in str(HardDeadlineExceeded())


_TIMER_MASK = """
import signal, sys, threading
from gae_sandbox import Policy, Sandbox

def blocked(thread):
    with open(f"/proc/self/task/{thread.native_id}/status") as status:
        line = next(line for line in status if line.startswith("SigBlk:"))
    return bool(int(line.split()[1], 16) & (1 << (signal.SIGUSR2 - 1)))

def started():
    control = threading.Thread(target=threading.Event().wait, args=(2,), daemon=True)
    control.start()
    return control

before = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
control = started()  # a plain thread inherits the mask (the control)
signal.pthread_sigmask(signal.SIG_SETMASK, before)
with Sandbox(Policy.python27(app_root=sys.argv[1], deadline=None)):
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    with Sandbox(Policy.python27(app_root=sys.argv[1], deadline=30)):
        pass  # starts the deadline timer's thread
timer = next(t for t in threading.enumerate() if t.name == "gae_sandbox-deadline")
print("control", blocked(control), "timer", blocked(timer))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="Linux /proc")
def test_the_timer_thread_never_inherits_a_requests_signal_mask(app_root: Path) -> None:
    """The deadline timer's thread, started by the first request with a deadline, starts
    with no signal blocked, whatever mask that request set on its thread (the library's
    long-lived thread would keep it for the process's life)."""
    result = subprocess.run([sys.executable, "-c", _TIMER_MASK, str(app_root)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.split() == ["control", "True", "timer", "False"], result.stderr
