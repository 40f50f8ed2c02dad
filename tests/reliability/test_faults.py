"""Faults end to end: a real waitress server in this process, a socket client, one app
per fault behind SandboxMiddleware.

tests/test_middleware.py checks each case against a fake server; here the server's own
handling (its start_response, its write errors on a closed socket, its close() call) is in
the loop. After every fault the server still answers, the app root and a watched folder are
unchanged, and what the logs and the client see is clear.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from waitress import server as waitress_server

import gae_sandbox.sandbox as sandbox_module
from gae_sandbox import Policy, SandboxMiddleware, policy_from_app_yaml
from gae_sandbox.appyaml import AppYamlError
from gae_sandbox.context import active_scope
from gae_sandbox.errors import DeadlineExceededError, FileWriteRefused, HardDeadlineExceeded
from loopback import http_get

GENERIC_500 = b"500 Internal Server Error\n"


class State:
    """What the apps did, for the test to check (set from the server's threads)."""

    def __init__(self, app_root: Path, watched: Path) -> None:
        self.app_root = app_root
        self.watched = watched
        self.events: dict[str, threading.Event] = {}
        self.values: dict[str, Any] = {}
        self.attempted_writes = 0
        self.refused_writes = 0
        self.stop = threading.Event()  # ends the thread that never ends, at teardown
        self.hard_deadlines: list[int] = []

    def event(self, name: str) -> threading.Event:
        return self.events.setdefault(name, threading.Event())

    def try_to_write(self) -> None:
        """Every fault also tries to write into the app root and the watched folder."""
        for folder in (self.app_root, self.watched):
            self.attempted_writes += 1
            try:
                with open(folder / "fault-wrote.txt", "w") as f:
                    f.write("never")
            except FileWriteRefused:
                self.refused_writes += 1


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def build_apps(state: State) -> dict[str, Callable[..., Any]]:
    def ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def raise_in_call(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        state.try_to_write()
        raise RuntimeError("fault: the app raised in __call__")

    def raise_in_iteration(environ: dict[str, Any],
                           start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            state.try_to_write()
            if environ["QUERY_STRING"] == "after":
                yield b"partial "
            raise RuntimeError("fault: the app raised while iterating")

        return body()

    class FailingClose:
        def __iter__(self) -> Iterator[bytes]:
            yield b"whole body"

        def close(self) -> None:
            state.values["close-scope"] = active_scope()
            state.try_to_write()
            raise RuntimeError("fault: the app raised in close()")

    def raise_in_close(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return FailingClose()

    def start_twice(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        state.try_to_write()
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"twice"]

    class SlowBody:
        """Yields a chunk every 20 ms, at most 500: the client leaves long before."""

        def __init__(self) -> None:
            self.sent = 0

        def __iter__(self) -> Iterator[bytes]:
            for _ in range(500):
                self.sent += 1
                state.values["slow-sent"] = self.sent
                time.sleep(0.02)
                yield b"x" * 4096

        def close(self) -> None:
            state.values["slow-close-scope"] = active_scope()
            state.try_to_write()
            state.event("slow-closed").set()

    def slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> SlowBody:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return SlowBody()

    def until_stopped(end: float) -> None:
        while not state.stop.is_set() and time.monotonic() < end:
            try:
                time.sleep(0.01)  # raises itself once the deadline has passed
            except (DeadlineExceededError, HardDeadlineExceeded):
                state.values["forever-swallowed"] = state.values.get("forever-swallowed", 0) + 1
            if state.values.get("request-answered") and "forever-late-write" not in \
                    state.values:
                try:  # after its request ended the thread is still sandboxed
                    open(state.app_root / "late.txt", "w").close()
                    state.values["forever-late-write"] = "written"
                except FileWriteRefused as refusal:
                    state.values["forever-late-write"] = str(refusal)

    def forever() -> None:
        end = time.monotonic() + 20  # bounded; state.stop ends it sooner
        while time.monotonic() < end:
            try:  # around a call: the error the join raises in the thread may land anywhere
                until_stopped(end)
                return
            except (DeadlineExceededError, HardDeadlineExceeded):  # it really never ends
                state.values["forever-swallowed"] = state.values.get("forever-swallowed", 0) + 1

    def thread_forever(environ: dict[str, Any],
                       start_response: Callable[..., Any]) -> list[bytes]:
        thread = threading.Thread(target=forever, name="never-ends")
        state.values["forever-thread"] = thread
        thread.start()
        state.try_to_write()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"answered"]

    def swallow_deadline(environ: dict[str, Any],
                         start_response: Callable[..., Any]) -> list[bytes]:
        state.try_to_write()
        swallowed = 0
        for _ in range(50):  # bounded: about 5 s
            try:
                spin(0.1)  # the try is around a call, see the README's interpreter note
            except DeadlineExceededError:
                swallowed += 1
                state.values["swallowed"] = swallowed
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"survived"]

    return {"/ok": ok, "/raise-call": raise_in_call, "/raise-iter": raise_in_iteration,
            "/raise-close": raise_in_close, "/start-twice": start_twice, "/slow": slow,
            "/thread-forever": thread_forever, "/swallow": swallow_deadline}


class Server:
    """waitress on 127.0.0.1 (a free port), its loop in a thread this fixture stops."""

    def __init__(self, application: Callable[..., Any]) -> None:
        self.server = waitress_server.create_server(
            application, host="127.0.0.1", port=0, threads=4,
            channel_request_lookahead=4,  # sees a client that closed while it is served
        )
        self.port: int = self.server.effective_port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="waitress-loop", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.server.asyncore.loop(timeout=0.05, map=self.server._map, count=1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.server.task_dispatcher.shutdown(timeout=10)
        for channel in list(self.server._map.values()):
            channel.close()


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, State]]:
    base = tmp_path_factory.mktemp("faults")
    app_root = base / "app"
    app_root.mkdir()
    (app_root / "data.txt").write_text("app data\n")
    watched = base / "watched"
    watched.mkdir()
    (watched / "host.txt").write_text("host file\n")
    state = State(app_root, watched)
    apps = build_apps(state)
    long_policy = Policy.python27(app_root=app_root, deadline=None)
    short_policy = Policy.python27(app_root=app_root, deadline=0.4, hard_deadline_grace=0.4)
    with_deadline = {"/thread-forever", "/swallow"}
    wrapped = {
        path: SandboxMiddleware(app, short_policy if path in with_deadline else long_policy,
                                on_hard_deadline=lambda sandbox, ident:
                                state.hard_deadlines.append(ident))
        for path, app in apps.items()
    }

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return wrapped[environ["PATH_INFO"]](environ, start_response)

    server = Server(application)
    try:
        yield server, state
    finally:
        state.stop.set()
        thread = state.values.get("forever-thread")
        if thread is not None:
            thread.join(10)
        server.close()


@pytest.fixture
def fault(served: tuple[Server, State],
          caplog: pytest.LogCaptureFixture) -> Iterator[tuple[Server, State]]:
    """Checks after each fault: the server answers, nothing was written, no scope is left."""
    server, state = served
    caplog.set_level(logging.WARNING, logger="gae_sandbox")
    before = (snapshot(state.app_root), snapshot(state.watched))
    scopes = sandbox_module.active_scope_count()
    state.attempted_writes = state.refused_writes = 0
    yield server, state
    assert get(server.port, "/ok") == (200, b"ok")
    assert (snapshot(state.app_root), snapshot(state.watched)) == before
    assert state.refused_writes == state.attempted_writes, "a write attempt was not refused"
    deadline = time.monotonic() + 10
    while sandbox_module.active_scope_count() != scopes and time.monotonic() < deadline:
        time.sleep(0.01)  # the server may still be closing the response
    assert sandbox_module.active_scope_count() == scopes, "a request scope was left open"


def get(port: int, path: str, timeout: float = 20.0) -> tuple[int, bytes]:
    return http_get(port, path, timeout)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def wait_for_log(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    """Whether ``message`` is logged within 10 s (a server thread may log it after the
    client has its response)."""
    deadline = time.monotonic() + 10
    while message not in logged(caplog) and time.monotonic() < deadline:
        time.sleep(0.01)
    return message in logged(caplog)


def test_app_raises_in_call(fault: tuple[Server, State],
                            caplog: pytest.LogCaptureFixture) -> None:
    server, _ = fault
    assert get(server.port, "/raise-call") == (500, GENERIC_500)
    assert "request GET /raise-call failed: fault: the app raised in __call__" in logged(caplog)


def test_app_raises_while_iterating_before_the_body(fault: tuple[Server, State],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    server, _ = fault
    assert get(server.port, "/raise-iter") == (500, GENERIC_500)
    assert "request GET /raise-iter failed: fault: the app raised while iterating" in \
        logged(caplog)


def test_app_raises_after_body_bytes_went_out(fault: tuple[Server, State],
                                              caplog: pytest.LogCaptureFixture) -> None:
    """PEP 3333: the status is on the wire, so the error goes to the server, which cuts the
    response short; the client can tell it is incomplete."""
    server, _ = fault
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        connection.request("GET", "/raise-iter?after")
        response = connection.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert cut.value.partial == b"partial "
    finally:
        connection.close()
    messages = logged(caplog)
    assert "request GET /raise-iter failed: fault: the app raised while iterating" in messages


def test_app_raises_in_close(fault: tuple[Server, State],
                             caplog: pytest.LogCaptureFixture) -> None:
    server, state = fault
    assert get(server.port, "/raise-close") == (200, b"whole body")
    assert state.values["close-scope"] is not None, "close() ran outside the sandbox"
    # waitress calls close() after the response is sent
    assert wait_for_log(caplog, "the app's close() failed: fault: the app raised in close()")


def test_start_response_called_twice(fault: tuple[Server, State],
                                     caplog: pytest.LogCaptureFixture) -> None:
    server, _ = fault
    assert get(server.port, "/start-twice") == (500, GENERIC_500)
    assert "start_response called a second time without providing exc_info" in logged(caplog)


def test_client_disconnects_mid_body(fault: tuple[Server, State]) -> None:
    server, state = fault
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = client.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 OK")
    assert state.event("slow-closed").wait(15), "close() was not called after the disconnect"
    assert state.values["slow-close-scope"] is not None, "close() ran outside the sandbox"
    assert state.values["slow-sent"] < 500, "the body ran to its end: the disconnect was missed"


def test_a_thread_that_never_ends(fault: tuple[Server, State],
                                  caplog: pytest.LogCaptureFixture) -> None:
    server, state = fault
    assert get(server.port, "/thread-forever") == (200, b"answered")
    state.values["request-answered"] = True
    thread = state.values["forever-thread"]
    assert thread.is_alive()  # it outlived the request, as the test wanted
    assert state.values.get("forever-swallowed", 0) >= 1, "the join did not end it at the deadline"
    assert wait_for_log(caplog, "outlived its request; it stays sandboxed")
    deadline = time.monotonic() + 10
    while "forever-late-write" not in state.values and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "gae_sandbox refused file write" in state.values["forever-late-write"]
    assert not (state.app_root / "late.txt").exists()
    state.stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_a_swallowed_deadline_is_followed_by_the_hard_deadline(
        fault: tuple[Server, State], caplog: pytest.LogCaptureFixture) -> None:
    server, state = fault
    state.hard_deadlines.clear()
    assert get(server.port, "/swallow") == (500, GENERIC_500)
    assert state.values["swallowed"] >= 1
    assert len(state.hard_deadlines) == 1, "the host was not told once"
    messages = logged(caplog)
    assert ("request GET /swallow failed: HardDeadlineExceeded: the request carried on 0.4 s "
            "past its deadline (Policy.hard_deadline_grace)") in messages
    assert "past its deadline and still running" in messages


BROKEN_APP_YAMLS = {
    "bad YAML": ("runtime: python27\nhandlers:\n- url: /\n  script: [main.app\n",
                 "app.yaml:5", "invalid YAML"),
    "threadsafe not a boolean": ("runtime: python27\nthreadsafe: maybe\nhandlers:\n"
                                 "- url: /.*\n  script: main.app\n",
                                 "app.yaml:2", "threadsafe must be true or false"),
    "handlers not a list": ("runtime: python27\nhandlers: main.app\n", "app.yaml:2",
                            "handlers must be a list"),
}


@pytest.mark.parametrize("text, where, what", BROKEN_APP_YAMLS.values(),
                         ids=list(BROKEN_APP_YAMLS))
def test_a_broken_app_yaml_while_serving(fault: tuple[Server, State], tmp_path: Path,
                                         text: str, where: str, what: str) -> None:
    """Loading a second app with a broken app.yaml fails at load, clearly, and the running
    server does not notice."""
    server, state = fault
    app_dir = tmp_path / "second"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(text)
    with pytest.raises(AppYamlError) as error:
        policy_from_app_yaml(app_dir / "app.yaml")
    assert where in str(error.value) and what in str(error.value)
    assert str(app_dir) in str(error.value)


@pytest.mark.parametrize("field, value, error", [
    ("deadline", -1, ValueError),
    ("allowed_hosts", "example.com:443", TypeError),
    ("mode", "enforcing", ValueError),
])
def test_a_malformed_policy_while_serving(fault: tuple[Server, State], field: str,
                                          value: object, error: type[Exception]) -> None:
    server, state = fault
    with pytest.raises(error) as raised:
        SandboxMiddleware(lambda e, s: [], Policy.python27(app_root=state.app_root,
                                                          **{field: value}))
    assert f"Policy.{field}" in str(raised.value)


def test_no_fault_left_a_thread_or_file(served: tuple[Server, State]) -> None:
    """After the whole module: only the server's own threads are left."""
    _, state = served
    assert not os.path.exists(state.app_root / "fault-wrote.txt")
    assert not os.path.exists(state.watched / "fault-wrote.txt")
    stray = [t.name for t in threading.enumerate() if t.name == "never-ends" and t.is_alive()]
    assert stray == []
