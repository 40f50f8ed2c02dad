"""Port of the SDK's ``request_state_test.py``: a request's threads are registered with it,
get its deadline error, and are waited for when it ends; each request has its own state."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from gae_sandbox import DeadlineExceededError, Policy, Sandbox, current_sandbox
from gae_sandbox import sandbox as sandbox_module
from gae_sandbox.context import active_scope


def test_request_state_start_and_end_thread(policy: Policy) -> None:
    """A thread the request starts is registered with it (it runs in the request's scope)
    while it runs, and is gone when it has ended."""
    seen: dict[str, Any] = {}
    release = threading.Event()

    def work() -> None:
        seen["scope"] = active_scope()
        release.wait(5)

    with Sandbox(policy) as box:
        scope = active_scope()
        thread = threading.Thread(target=work)
        thread.start()
        time.sleep(0.05)
        running = [t.ident for t in scope.threads.running()]
        release.set()
        thread.join(5)
        after = [t.ident for t in scope.threads.running()]
    assert seen["scope"] is scope and scope.owner is box
    assert running == [thread.ident] and after == []


def test_request_state_inject_exception(policy: Policy) -> None:
    """The deadline raises DeadlineExceededError in the request's thread and in the threads
    it started that are still running."""
    raised: list[str] = []

    def looping() -> None:
        try:
            while True:
                time.sleep(0.02)
        except DeadlineExceededError:
            raised.append("thread")

    try:
        with Sandbox(policy.replace(deadline=0.3, hard_deadline_grace=0.5)):
            thread = threading.Thread(target=looping)
            thread.start()
            time.sleep(5)
    except DeadlineExceededError:
        raised.append("request")
    thread.join(5)
    assert not thread.is_alive()
    assert sorted(raised) == ["request", "thread"]


def test_request_state_end_request(policy: Policy) -> None:
    """Leaving the request waits for the threads it started."""
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        finished.set()

    with Sandbox(policy):
        threading.Thread(target=slow).start()
    assert finished.is_set()


def test_request_state_start_request_function(policy: Policy) -> None:
    """Starting a request creates exactly one state for it, found from its threads too."""
    box = Sandbox(policy)
    scopes = []
    with box:
        scopes.append(active_scope())
        thread = threading.Thread(target=lambda: scopes.append(active_scope()))
        thread.start()
        thread.join(5)
    assert scopes[0] is scopes[1] and scopes[0].owner is box and scopes[0].parent is None


def test_request_state_end_request_function(policy: Policy) -> None:
    """Ending the request removes its state: nothing is active and the sandbox counts none."""
    with Sandbox(policy):
        assert sandbox_module.active_scope_count() >= 1
    assert current_sandbox() is None and active_scope() is None
    assert sandbox_module.active_scope_count() == 0


def test_request_state_get_request_states(policy: Policy, app_root: Path) -> None:
    """Three concurrent requests have three states: each sees its own environment and
    working directory, whatever the others do."""
    (app_root / "pkg" / "sub").mkdir()
    folders = [str(app_root), str(app_root / "pkg"), str(app_root / "pkg" / "sub")]
    box = Sandbox(policy)
    barrier = threading.Barrier(3, timeout=5)
    results: dict[int, tuple[Any, ...]] = {}

    def request(index: int) -> None:
        with box:
            os.environ["FIDELITY_REQUEST"] = str(index)
            os.chdir(folders[index])
            barrier.wait()
            time.sleep(0.05)
            results[index] = (os.environ["FIDELITY_REQUEST"], os.getcwd(), id(active_scope()))

    threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert [results[i][:2] for i in range(3)] == [(str(i), folders[i]) for i in range(3)]
    assert len({results[i][2] for i in range(3)}) == 3
    assert "FIDELITY_REQUEST" not in os.environ
