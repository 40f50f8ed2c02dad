"""Threads a request starts: they carry its sandbox, the scope end waits for them (within the
deadline), they stay restricted if they outlive it, and the host's own threads are never
affected.

Every refusal is checked on disk (no file appears) and in the sandbox's violation report.
"""

from __future__ import annotations

import _thread
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    DeadlineExceededError,
    FileWriteRefused,
    Policy,
    Sandbox,
    SandboxViolation,
    ThreadRefused,
    current_sandbox,
    start_background_thread,
)

Starter = Callable[[Callable[[], None]], None]


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.monotonic()


def via_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="request-thread").start()


def via_daemon_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="request-daemon", daemon=True).start()


def via_start_new_thread(target: Callable[[], None]) -> None:
    _thread.start_new_thread(target, ())


def via_executor_no_wait(target: Callable[[], None]) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    executor.submit(target)
    executor.shutdown(wait=False)  # the request does not wait; the scope end must


STARTERS: dict[str, Starter] = {
    "threading.Thread": via_thread,
    "threading.Thread(daemon=True)": via_daemon_thread,
    "_thread.start_new_thread": via_start_new_thread,
    "ThreadPoolExecutor.submit": via_executor_no_wait,
}


def write_attempt(path: Path, outcome: dict[str, Any]) -> None:
    """Try to write ``path``; record what happened and in which sandbox."""
    outcome["sandbox"] = current_sandbox()
    try:
        with open(path, "w") as file:
            file.write("written by a thread\n")
        outcome["result"] = "wrote"
    except FileWriteRefused as error:
        outcome["result"] = error


def write_violations(box: Sandbox, path: Path) -> list[Any]:
    return [v for v in box.violations if v.kind == "file_write" and str(path) in v.target]


# --- threads carry the request's sandbox ----------------------------------------------------


def test_control_the_thread_writes_outside_a_sandbox(tmp_path: Path) -> None:
    target = tmp_path / "control.txt"
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=write_attempt, args=(target, outcome))
    thread.start()
    thread.join(5)
    assert outcome == {"sandbox": None, "result": "wrote"}
    assert target.read_text() == "written by a thread\n"


@pytest.mark.parametrize("starter", list(STARTERS))
def test_thread_runs_in_the_request_sandbox(starter: str, policy: Policy,
                                            app_root: Path) -> None:
    target = app_root / "from-thread.txt"
    outcome: dict[str, Any] = {}
    box = Sandbox(policy)
    with box:
        STARTERS[starter](lambda: write_attempt(target, outcome))
    # the scope end joined the thread: its outcome is there
    assert outcome.get("sandbox") == box
    assert isinstance(outcome.get("result"), FileWriteRefused), outcome
    assert not target.exists()
    violations = write_violations(box, target)
    assert len(violations) == 1 and violations[0].enforced


def test_executor_future_sees_the_refusal(policy: Policy, app_root: Path) -> None:
    target = app_root / "from-executor.txt"
    box = Sandbox(policy)
    with box:
        with ThreadPoolExecutor(max_workers=2) as executor:
            futures = [executor.submit(target.write_text, "x") for _ in range(3)]
            errors = [future.exception(timeout=5) for future in futures]
    assert all(isinstance(error, FileWriteRefused) for error in errors), errors
    assert not target.exists()
    assert write_violations(box, target)


# --- the scope end waits for them -----------------------------------------------------------


@pytest.mark.parametrize("starter", list(STARTERS))
def test_scope_end_joins_threads(starter: str, policy: Policy) -> None:
    finished: list[float] = []

    def slow() -> None:
        time.sleep(0.2)
        finished.append(time.monotonic())

    start = time.monotonic()
    with Sandbox(policy):  # no deadline
        STARTERS[starter](slow)
    exited = time.monotonic()
    assert len(finished) == 1, "the with exited before the thread finished"
    assert finished[0] <= exited
    assert exited - start >= 0.15


def test_start_new_thread_is_joined_though_enumerate_misses_it(policy: Policy) -> None:
    finished = threading.Event()
    release = threading.Event()

    def slow() -> None:
        release.wait(2)
        time.sleep(0.1)
        finished.set()

    with Sandbox(policy):
        ident = _thread.start_new_thread(slow, ())
        assert ident not in {t.ident for t in threading.enumerate()}
        release.set()
    assert finished.is_set()


def test_threads_started_by_threads_are_joined(policy: Policy) -> None:
    finished: list[str] = []

    def grandchild() -> None:
        time.sleep(0.2)
        finished.append("grandchild")

    def child() -> None:
        threading.Thread(target=grandchild, daemon=True).start()
        finished.append("child")

    with Sandbox(policy):
        threading.Thread(target=child).start()
    assert sorted(finished) == ["child", "grandchild"]


@pytest.mark.parametrize("starter", ["threading.Thread", "threading.Thread(daemon=True)",
                                     "_thread.start_new_thread"])
def test_thread_that_never_ends_gets_the_deadline(starter: str, policy: Policy) -> None:
    ended = threading.Event()
    outcome: dict[str, Any] = {}

    def forever() -> None:
        try:
            spin(10)  # bounded, so a broken deadline cannot hang the test run
            outcome["how"] = "ran to the end"
        except DeadlineExceededError:
            outcome["how"] = "deadline"
            raise
        finally:
            ended.set()

    box = Sandbox(policy.replace(deadline=0.3, hard_deadline_grace=0.3))
    start = time.monotonic()
    with box:
        STARTERS[starter](forever)
    elapsed = time.monotonic() - start
    assert ended.wait(15)
    assert outcome == {"how": "deadline"}
    assert 0.25 <= elapsed <= 0.3 + 0.3 + 1.2, elapsed


def test_thread_that_outlives_its_request_stays_restricted(
        policy: Policy, app_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gae_sandbox")
    target = app_root / "late.txt"
    attempts: list[tuple[str, float]] = []
    done = threading.Event()

    def stubborn() -> None:
        try:
            spin(10)
        except DeadlineExceededError:
            attempts.append(("deadline", time.monotonic()))
        end = time.monotonic() + 0.6  # carries on, well past the scope end
        while time.monotonic() < end:
            try:
                with open(target, "w") as file:
                    file.write("late\n")
                attempts.append(("wrote", time.monotonic()))
            except FileWriteRefused:
                attempts.append(("refused", time.monotonic()))
            except DeadlineExceededError:
                attempts.append(("deadline again", time.monotonic()))
            spin(0.02)
        done.set()

    box = Sandbox(policy.replace(deadline=0.3, hard_deadline_grace=0.2))
    start = time.monotonic()
    with box:
        thread = threading.Thread(target=stubborn, name="stubborn")
        thread.start()
    exited = time.monotonic()
    assert done.wait(10)
    thread.join(5)
    assert 0.45 <= exited - start <= 0.5 + 1.5, exited - start
    kinds = [kind for kind, _ in attempts]
    assert kinds[0] == "deadline"
    assert "wrote" not in kinds and "deadline again" not in kinds
    assert any(kind == "refused" and when > exited for kind, when in attempts), \
        "no write attempt after the request ended"
    assert not target.exists()
    assert write_violations(box, target)
    assert any("outlived its request" in r.getMessage() for r in caplog.records)


# --- allow_threads=False --------------------------------------------------------------------


def refused_start_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target).start()


def refused_start_new_thread(target: Callable[[], None]) -> None:
    _thread.start_new_thread(target, ())


def refused_executor(target: Callable[[], None]) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        executor.submit(target)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize("start", [refused_start_thread, refused_start_new_thread,
                                   refused_executor],
                         ids=["threading.Thread", "_thread.start_new_thread",
                              "ThreadPoolExecutor"])
def test_threads_refused_when_not_allowed(start: Starter, policy: Policy) -> None:
    ran = threading.Event()
    box = Sandbox(policy.replace(allow_threads=False))
    with box:
        with pytest.raises(ThreadRefused) as info:
            start(ran.set)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, SandboxViolation)
    assert "allow_threads" in str(info.value)
    assert not ran.wait(0.2), "the refused thread's target ran"
    assert [(v.kind, v.setting, v.enforced) for v in box.violations] == [
        ("thread", "allow_threads", True)]


def test_threads_allowed_by_default_control(policy: Policy) -> None:
    assert policy.allow_threads is True
    ran = threading.Event()
    with Sandbox(policy):
        refused_start_thread(ran.set)
    assert ran.is_set()


# --- background threads ---------------------------------------------------------------------


def test_background_thread_refused_by_default(policy: Policy) -> None:
    assert policy.allow_background_threads is False
    ran = threading.Event()
    box = Sandbox(policy)
    with box:
        with pytest.raises(ThreadRefused) as info:
            start_background_thread(ran.set)
    assert "allow_background_threads" in str(info.value)
    assert not ran.wait(0.2)
    assert [(v.kind, v.setting) for v in box.violations] == [
        ("thread", "allow_background_threads")]


def test_background_thread_outside_a_sandbox_is_an_error() -> None:
    ran = threading.Event()
    with pytest.raises(RuntimeError):
        start_background_thread(ran.set)
    assert not ran.wait(0.1)


def test_background_thread_outlives_the_request(policy: Policy, app_root: Path) -> None:
    target = app_root / "from-background.txt"
    release = threading.Event()
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def background() -> None:
        try:
            time.sleep(0.6)  # past the request's deadline: it has none
            outcome["slept"] = True
        except DeadlineExceededError:
            outcome["slept"] = "deadline"
        release.wait(5)
        write_attempt(target, outcome)
        done.set()

    box = Sandbox(policy.replace(deadline=0.3, allow_background_threads=True))
    start = time.monotonic()
    with box:
        thread = start_background_thread(background)
        try:
            time.sleep(10)
        except DeadlineExceededError:
            pass  # the request ends at its deadline
    exited = time.monotonic()
    try:
        assert exited - start < 0.6 - 0.05, "the scope end waited for the background thread"
        assert thread.is_alive() and not done.is_set()
    finally:
        release.set()
        thread.join(5)
    assert done.is_set()
    assert outcome["slept"] is True
    assert outcome["sandbox"] == box
    assert isinstance(outcome["result"], FileWriteRefused), outcome
    assert not target.exists()
    assert write_violations(box, target)


# --- the host's threads ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["threading.Thread", "_thread.start_new_thread"])
def test_host_threads_are_not_sandboxed_while_a_request_runs(how: str, policy: Policy,
                                                             tmp_path: Path) -> None:
    inside = threading.Event()
    release = threading.Event()

    def request() -> None:
        with Sandbox(policy):
            inside.set()
            release.wait(5)

    requester = threading.Thread(target=request, name="request")
    requester.start()
    try:
        assert inside.wait(5)
        host_file = tmp_path / "host.txt"
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def host_work() -> None:
            write_attempt(host_file, outcome)
            done.set()

        if how == "threading.Thread":
            threading.Thread(target=host_work, name="host-work").start()
        else:
            _thread.start_new_thread(host_work, ())
        assert done.wait(5)
    finally:
        release.set()
        requester.join(5)
    assert outcome == {"sandbox": None, "result": "wrote"}
    assert host_file.read_text() == "written by a thread\n"


def test_request_does_not_wait_for_host_threads(policy: Policy) -> None:
    inside = threading.Event()
    release = threading.Event()
    gate = threading.Event()

    def request() -> None:
        with Sandbox(policy):
            inside.set()
            release.wait(5)

    requester = threading.Thread(target=request, name="request")
    requester.start()
    host = threading.Thread(target=gate.wait, args=(5,), name="host-waiter")
    try:
        assert inside.wait(5)
        host.start()  # started by the host while the request runs
        release.set()
        requester.join(2)
        assert not requester.is_alive(), "the request waited for a host thread"
        assert host.is_alive()
    finally:
        release.set()
        gate.set()
        requester.join(5)
        host.join(5)


# --- threading.settrace and friends (escape suite, issue 5) ----------------------------------


@pytest.mark.parametrize("name", [n for n in ("settrace", "setprofile", "settrace_all_threads",
                                              "setprofile_all_threads")
                                  if hasattr(threading, n)])
def test_thread_trace_hooks_refused_to_app_code(policy: Policy, name: str) -> None:
    """The hook would run in every thread the host starts after the request (no audit
    event: ``threading`` stores it, or calls ``sys.settrace`` from the standard library)."""
    import sys

    def tracer(frame: Any, event: str, arg: Any) -> None:
        return None

    before = (threading._trace_hook, threading._profile_hook,  # type: ignore[attr-defined]
              sys.gettrace(), sys.getprofile())
    with Sandbox(policy):
        with pytest.raises(SandboxViolation, match=f"threading.{name}"):
            getattr(threading, name)(tracer)
    after = (threading._trace_hook, threading._profile_hook,  # type: ignore[attr-defined]
             sys.gettrace(), sys.getprofile())
    assert after == before
    # control: the host may set one
    getattr(threading, name)(tracer)
    try:
        hook = "_profile_hook" if "profile" in name else "_trace_hook"
        assert getattr(threading, hook) is tracer
    finally:
        getattr(threading, name)(None)
        sys.settrace(before[2])
        sys.setprofile(before[3])


def test_python3_requests_do_not_wait_for_their_threads(app_root: Path) -> None:
    """``join_threads=False`` (the python3 preset): a thread the request started (a
    module-level pool's worker) runs on after the request ends, still sandboxed; with the
    python27 preset the request waits for it (the control)."""
    release = threading.Event()
    outcome: list[str] = []
    target = app_root / "written.txt"  # the app's own folder: read-only in every preset

    def worker() -> None:
        release.wait(60)  # bounded
        try:
            with open(target, "w") as file:  # refused: the thread is sandboxed
                file.write("x")
            outcome.append("wrote")
        except OSError as error:
            outcome.append(type(error).__name__)

    policy = Policy.python3(app_root=app_root)
    assert policy.join_threads is False
    with Sandbox(policy):
        thread = threading.Thread(target=worker)
        thread.start()
    assert thread.is_alive()  # the request ended without waiting
    release.set()
    thread.join(60)
    assert outcome == ["FileWriteRefused"] and not target.exists()

    joined = threading.Event()
    with Sandbox(Policy.python27(app_root=app_root, deadline=None)):
        threading.Thread(target=lambda: (time.sleep(0.1), joined.set())).start()
    assert joined.is_set()  # the control: python27 waits for the thread


def test_an_uncaught_error_in_a_request_thread_is_printed_without_a_refusal(
        app_root: Path) -> None:
    """CPython 3.11's traceback printer parses the line it shows (to place its carets)
    under the frame's file name, a standard-library one for threading's own frames: that
    line of the file is not code claiming the file, and is not refused. (In a child: the
    interpreter's own printer, not pytest's thread-exception hook.)"""
    script = textwrap.dedent("""
        import sys, threading
        from gae_sandbox import Policy, Sandbox
        sandbox = Sandbox(Policy.python27(app_root=sys.argv[1], deadline=None, mode="report"))

        def fails():
            raise ValueError("raised in a request thread")

        with sandbox:
            thread = threading.Thread(target=fails)
            thread.start()
            thread.join(60)
        print([str(v) for v in sandbox.violations if "compile" in str(v)])
    """)
    result = subprocess.run([sys.executable, "-c", script, str(app_root)],
                            capture_output=True, text=True, timeout=120)
    assert "raised in a request thread" in result.stderr
    assert result.stdout.strip() == "[]", result.stdout


_COVERAGE_LIKE = textwrap.dedent("""
    import doctest, sys, threading
    from concurrent.futures import ThreadPoolExecutor
    from gae_sandbox import Policy, Sandbox, SandboxViolation

    seen = []

    def real_tracer(frame, event, arg):
        seen.append(frame.f_code.co_name)
        return None

    def installation_hook(frame, event, arg):
        # as a coverage tool's: on a new thread's first event, put the real tracer in place
        sys.settrace(None)
        sys.settrace(real_tracer)
        return None

    threading.settrace(installation_hook)  # host code, before any request

    def work(x):
        '''
        >>> 6 * 7
        42
        '''
        return x * 2

    out = []
    with Sandbox(Policy(app_root={root!r})):
        thread = threading.Thread(target=out.append, args=(1,))
        thread.start()
        thread.join()
        with ThreadPoolExecutor(2) as pool:
            out.extend(pool.map(work, [1, 2]))
        runner = doctest.DocTestRunner()
        for test in doctest.DocTestFinder().find(work, "work", globs={{}}):
            runner.run(test)  # puts back the tracer it found: allowed, changes nothing
        try:
            sys.settrace(real_tracer)  # a tracer of the app's own choosing
        except SandboxViolation:
            out.append("refused")
    print(out, runner.failures, runner.tries, "work" in seen, sys.gettrace())
""")


def test_threads_and_doctests_run_under_a_host_tracer_like_a_coverage_tool(
        app_root: Path) -> None:
    """A coverage tool sets a hook for new threads; a thread the request starts puts it on
    itself (threading's start-up), and its first call installs the tool's real tracer:
    both are the host's. The app's own tracer is still refused, and none outlives the
    request (the main thread's tracer is None after it)."""
    result = subprocess.run([sys.executable, "-c", _COVERAGE_LIKE.format(root=str(app_root))],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "[1, 2, 4, 'refused'] 0 1 True None", result.stdout
    assert "Exception" not in result.stderr, result.stderr


_HOST_HOOK_ATTEMPTS = textwrap.dedent("""
    import sys, threading
    from gae_sandbox import Policy, Sandbox, SandboxViolation

    root, target, sandboxed = sys.argv[1], sys.argv[2], sys.argv[3] == "sandboxed"

    def host_hook(frame, event, arg):
        # reads the frame it is given, as a coverage tool's hook does
        frame.f_code
        frame.f_globals.get("__file__", "").endswith(".py")
        return None

    threading.settrace(host_hook)  # host code, before any request

    def write(*args):
        with open(target, "a") as file:
            file.write("app code ran as host code\\n")
        return None

    class FakeFrame:
        @property
        def f_code(self):
            return write()

    class Spelling(str):  # the app's module file name, read by the host's hook
        def endswith(self, *args):
            write()
            return False

    class OwnRun(threading.Thread):
        def run(self):  # the thread's first frame is the app's, its globals the app's
            seen.append("own run")

    seen = []

    def attempts():
        hook = sys.gettrace()  # what threading's start-up put on this thread
        seen.append(hook is not None)
        tries = [lambda: hook(FakeFrame(), "call", None)]
        if type(hook) is not type(host_hook):
            tries.append(lambda: type(hook)(write)(sys._getframe(0), "call", None))
            for name in getattr(type(hook), "__slots__", ()):
                tries.append(lambda name=name: (object.__setattr__(hook, name, write),
                                                hook(sys._getframe(0), "call", None)))
        for attempt in tries:
            try:
                attempt()
            except Exception as error:
                seen.append(type(error).__name__)

    def on_request_thread():
        try:
            sys.settrace(threading._trace_hook)  # the host's hook on the request's thread
        except SandboxViolation:
            seen.append("refused")
        seen.append(sys.gettrace() is None)

    def app():
        globals()["__file__"] = Spelling("app.py")
        thread = OwnRun()
        thread.start()
        thread.join()
        thread = threading.Thread(target=attempts)  # last: it may break the hook it reaches
        thread.start()
        thread.join()

    if sandboxed:
        with Sandbox(Policy(app_root=root)):
            app()
            on_request_thread()
    else:
        app()
    print(seen)
""")


@pytest.mark.parametrize("sandboxed", [False, True], ids=["plain", "sandboxed"])
def test_the_hosts_hook_for_new_threads_runs_no_app_code_as_host_code(
        sandboxed: bool, app_root: Path, tmp_path: Path) -> None:
    """A thread a request starts takes the host's hook for new threads (a coverage tool's);
    the app reaches what was put on the thread (``sys.gettrace()``) and calls it with a frame
    of its own making, makes another of its kind around its own function, or sets its
    attribute: none runs app code as host code. The request's own thread cannot take the
    host's hook, and the hook never reads an app frame (a thread whose ``run`` the app
    wrote: its globals are the app's). Control: in plain Python the host's hook reads the
    app's fake frame, whose property writes the file, and the app's globals."""
    target = tmp_path / "escaped.txt"
    result = subprocess.run(
        [sys.executable, "-c", _HOST_HOOK_ATTEMPTS, str(app_root), str(target),
         "sandboxed" if sandboxed else "plain"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    seen = result.stdout.strip()
    assert seen.startswith("['own run', True"), seen  # the thread had the host's hook on it
    if sandboxed:
        assert not target.exists(), target.read_text()
        assert seen.endswith("'refused', True]"), seen
    else:
        assert target.read_text().count("app code ran as host code\n") >= 2
