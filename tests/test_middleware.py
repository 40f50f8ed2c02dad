"""``SandboxMiddleware``: each request of a WSGI app in its own sandbox scope, PEP 3333 on both
sides (``wsgiref.validate`` wraps the app and the middleware), errors turned into a short 500,
the server's own code left unsandboxed.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest

import gae_sandbox
from gae_sandbox import (
    AppFailedError,
    DeadlineExceededError,
    FileWriteRefused,
    HardDeadlineExceeded,
    Policy,
    Sandbox,
    SandboxMiddleware,
    current_sandbox,
)
from gae_sandbox.context import active_scope
from gae_sandbox.sandbox import active_scope_count

pytestmark = pytest.mark.filterwarnings("error::wsgiref.validate.WSGIWarning")

OK_HEADERS = [("Content-Type", "text/plain")]
SECRET = "secret-detail-7f3a"


def make_environ(**extra: str) -> dict[str, Any]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["QUERY_STRING"] = ""
    environ["SERVER_SOFTWARE"] = "fake-test-server/1.0"  # never gunicorn: no SIGTERM
    environ.update(extra)
    return environ


class FakeServer:
    """Calls the app, records start_response calls, iterates and closes like a server.
    ``between(n)`` runs after the n-th chunk: server code between the app's next() calls."""

    def __init__(self, between: Callable[[int], None] | None = None,
                 on_start: Callable[[str], None] | None = None, closes: int = 1) -> None:
        self.between = between
        self.on_start = on_start
        self.closes = closes
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.written: list[bytes] = []
        self.chunks: list[bytes] = []

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        self.calls.append((status, headers, exc_info))
        if self.on_start is not None:
            self.on_start(status)
        return self.written.append

    def serve(self, app: Callable[..., Iterable[bytes]],
              environ: dict[str, Any] | None = None) -> FakeServer:
        result = app(make_environ() if environ is None else environ, self.start_response)
        try:
            for chunk in result:
                self.chunks.append(chunk)
                if self.between is not None:
                    self.between(len(self.chunks))
        finally:
            for _ in range(self.closes):
                result.close()  # type: ignore[attr-defined]
        return self

    @property
    def status(self) -> str:
        return self.calls[-1][0]

    @property
    def body(self) -> bytes:
        return b"".join(self.written) + b"".join(self.chunks)


def wrap(app: Callable[..., Iterable[bytes]], policy: Policy,
         **options: Any) -> tuple[Callable[..., Iterable[bytes]], SandboxMiddleware]:
    """validator(SandboxMiddleware(validator(app), policy)): PEP 3333 checked both sides."""
    middleware = SandboxMiddleware(validator(app), policy, **options)
    return validator(middleware), middleware


def assert_generic_500(server: FakeServer) -> None:
    assert server.status.startswith("500")
    assert server.calls[-1][2] is not None  # exc_info handed to the server
    body = server.body
    assert body.startswith(b"500")
    assert len(body) < 100
    assert b"Traceback" not in body and SECRET.encode() not in body


# --- good apps ------------------------------------------------------------------------------


def test_app_returning_a_list(policy: Policy) -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(current_sandbox())
        start_response("200 OK", OK_HEADERS)
        return [b"hello ", b"world"]

    wrapped, middleware = wrap(app, policy)
    server = FakeServer().serve(wrapped)
    assert server.status == "200 OK"
    assert server.calls[0][1] == OK_HEADERS
    assert server.body == b"hello world"
    assert seen == [middleware.sandbox]
    assert middleware.violations == []
    assert current_sandbox() is None


def test_app_returning_a_generator_runs_each_step_sandboxed(policy: Policy) -> None:
    seen: list[Any] = []

    def body() -> Iterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            seen.append(current_sandbox())
            yield part

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", OK_HEADERS)
        return body()

    outside: list[Any] = []
    wrapped, middleware = wrap(app, policy)
    server = FakeServer(between=lambda n: outside.append(current_sandbox())).serve(wrapped)
    assert server.status == "200 OK"
    assert server.body == b"one two three"
    assert seen == [middleware.sandbox] * 3
    assert outside == [None] * 3  # the server's own code between chunks


def test_app_using_write_callable(policy: Policy) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", OK_HEADERS)
        write(b"early ")
        return [b"late"]

    wrapped, _ = wrap(app, policy)
    server = FakeServer().serve(wrapped)
    assert server.status == "200 OK"
    assert server.body == b"early late"


def test_threads_of_a_list_response_are_joined_before_it_is_returned(policy: Policy) -> None:
    finished = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        def work() -> None:
            time.sleep(0.2)
            finished.set()

        threading.Thread(target=work).start()
        start_response("200 OK", OK_HEADERS)
        return [b"ok"]

    middleware = SandboxMiddleware(app, policy)
    result = middleware(make_environ(), lambda status, headers, exc_info=None: None)
    assert finished.is_set()
    assert list(result) == [b"ok"]


# --- errors become a short 500 --------------------------------------------------------------


def test_app_raising_is_a_generic_500(policy: Policy,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gae_sandbox")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise ValueError(SECRET)

    wrapped, _ = wrap(app, policy)
    server = FakeServer().serve(wrapped)
    assert_generic_500(server)
    assert len(server.calls) == 1
    assert isinstance(server.calls[0][2][1], ValueError)
    records = [r for r in caplog.records
               if r.name == "gae_sandbox" and r.levelno >= logging.ERROR]
    assert records, "the error was not logged"
    # the record carries the formatted traceback, not the app's exception object
    assert any(r.exc_text and "ValueError" in r.exc_text and r.exc_info is None
               for r in records)
    assert "Traceback" in caplog.text and SECRET in caplog.text


def test_refused_write_is_a_500_and_nothing_is_written(policy: Policy, app_root: Path) -> None:
    target = app_root / "written-by-app.txt"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with open(target, "w") as file:
            file.write("x")
        start_response("200 OK", OK_HEADERS)
        return [b"wrote"]

    wrapped, middleware = wrap(app, policy)
    server = FakeServer().serve(wrapped)
    assert_generic_500(server)
    assert isinstance(server.calls[-1][2][1], FileWriteRefused)
    assert not target.exists()
    assert [(v.kind, v.enforced) for v in middleware.violations] == [("file_write", True)]


def test_deadline_is_a_500_at_the_deadline(policy: Policy) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        time.sleep(5)
        start_response("200 OK", OK_HEADERS)
        return [b"late"]

    wrapped, _ = wrap(app, policy.replace(deadline=0.3))
    start = time.monotonic()
    server = FakeServer().serve(wrapped)
    elapsed = time.monotonic() - start
    assert_generic_500(server)
    assert isinstance(server.calls[-1][2][1], DeadlineExceededError)
    assert 0.25 <= elapsed <= 1.5, elapsed


@pytest.mark.parametrize("empty_first", [False, True], ids=["at once", "after an empty chunk"])
def test_error_during_iteration_before_body_is_a_500(empty_first: bool,
                                                     policy: Policy) -> None:
    def body() -> Iterator[bytes]:
        if empty_first:
            yield b""
        raise ValueError(SECRET)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", OK_HEADERS)
        return body()

    wrapped, _ = wrap(app, policy)
    server = FakeServer().serve(wrapped)
    assert [call[0] for call in server.calls] == ["200 OK", "500 Internal Server Error"]
    assert_generic_500(server)


class ClosingBody:
    """An app iterable that counts close() calls and may do app work in close()."""

    def __init__(self, parts: list[bytes], fail_after: int | None = None,
                 close_writes: Path | None = None) -> None:
        self.parts = parts
        self.fail_after = fail_after
        self.close_writes = close_writes
        self.closed = 0
        self.close_outcome: Any = None
        self.close_sandbox: Any = "not called"

    def __iter__(self) -> Iterator[bytes]:
        for index, part in enumerate(self.parts):
            if self.fail_after is not None and index == self.fail_after:
                raise ValueError(SECRET)
            yield part

    def close(self) -> None:
        self.closed += 1
        self.close_sandbox = current_sandbox()
        if self.close_writes is not None:
            try:
                self.close_writes.write_text("from close\n")
                self.close_outcome = "wrote"
            except FileWriteRefused as error:
                self.close_outcome = error


def responses(*bodies: ClosingBody) -> Callable[..., ClosingBody]:
    """An app answering successive requests with ``bodies``."""
    queue = list(bodies)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> ClosingBody:
        start_response("200 OK", OK_HEADERS)
        return queue.pop(0)

    return app


def test_error_after_body_bytes_is_re_raised_to_the_server(policy: Policy) -> None:
    iterable = ClosingBody([b"partial", b"more"], fail_after=1)
    follow_up = ClosingBody([b"next"])
    app = responses(iterable, follow_up)

    middleware = SandboxMiddleware(validator(app), policy, threadsafe=False)
    server = FakeServer()
    with pytest.raises(ValueError, match=SECRET):
        server.serve(validator(middleware))
    assert server.chunks == [b"partial"]
    assert [call[0] for call in server.calls] == ["200 OK"]  # no second start_response
    assert iterable.closed == 1
    assert current_sandbox() is None
    # the scope ended and released the serial lock: the next request is served
    assert served_within(middleware, 5) == b"next"


def served_within(middleware: SandboxMiddleware, seconds: float) -> bytes | None:
    """Serve one request in a thread; its body, or None if it did not end in time."""
    result: list[bytes] = []

    def serve() -> None:
        result.append(FakeServer().serve(validator(middleware)).body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


# --- close() --------------------------------------------------------------------------------


@pytest.mark.parametrize("threadsafe", [True, False])
def test_close_runs_sandboxed_and_once(threadsafe: bool, policy: Policy,
                                       app_root: Path) -> None:
    target = app_root / "from-close.txt"
    iterable = ClosingBody([b"a", b"b"], close_writes=target)
    follow_up = ClosingBody([b"again"])
    app = responses(iterable, follow_up)
    middleware = SandboxMiddleware(validator(app), policy, threadsafe=threadsafe)
    server = FakeServer(closes=2).serve(validator(middleware))  # a server closing twice
    assert server.status == "200 OK" and server.body == b"ab"
    assert iterable.closed == 1
    assert iterable.close_sandbox == middleware.sandbox
    assert isinstance(iterable.close_outcome, FileWriteRefused)
    assert not target.exists()
    assert [(v.kind, v.enforced) for v in middleware.violations] == [("file_write", True)]
    # the scope (and, serialised, the lock) was released exactly once: serving goes on
    assert served_within(middleware, 5) == b"again"
    assert follow_up.closed == 1


# --- __len__ --------------------------------------------------------------------------------


class SizedBody(ClosingBody):
    def __init__(self, parts: list[bytes], len_writes: Path | None = None) -> None:
        super().__init__(parts)
        self.len_writes = len_writes
        self.len_sandbox: Any = "not called"
        self.len_outcome: Any = None

    def __len__(self) -> int:
        self.len_sandbox = current_sandbox()
        if self.len_writes is not None:
            try:
                self.len_writes.write_text("from __len__\n")
                self.len_outcome = "wrote"
            except FileWriteRefused as error:
                self.len_outcome = error
        return len(self.parts)


def raw_call(middleware: SandboxMiddleware) -> Any:
    return middleware(make_environ(), lambda status, headers, exc_info=None: None)


def test_len_only_when_the_app_iterable_has_one(policy: Policy) -> None:
    def sized_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> SizedBody:
        start_response("200 OK", OK_HEADERS)
        return SizedBody([b"x", b"y", b"z"])

    def generator_app(environ: dict[str, Any],
                      start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", OK_HEADERS)
        return iter(ClosingBody([b"x"]))

    sized = raw_call(SandboxMiddleware(sized_app, policy))
    try:
        assert hasattr(sized, "__len__") and len(sized) == 3
        assert list(sized) == [b"x", b"y", b"z"]
    finally:
        sized.close()
    unsized = raw_call(SandboxMiddleware(generator_app, policy))
    try:
        assert not hasattr(unsized, "__len__")
        with pytest.raises(TypeError):
            len(unsized)
        assert list(unsized) == [b"x"]
    finally:
        unsized.close()


def test_len_of_the_app_iterable_runs_sandboxed(policy: Policy, app_root: Path) -> None:
    target = app_root / "from-len.txt"
    iterable = SizedBody([b"x"], len_writes=target)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> SizedBody:
        start_response("200 OK", OK_HEADERS)
        return iterable

    middleware = SandboxMiddleware(app, policy)
    result = raw_call(middleware)
    try:
        assert len(result) == 1
    finally:
        result.close()
    assert iterable.len_sandbox == middleware.sandbox
    assert isinstance(iterable.len_outcome, FileWriteRefused)
    assert not target.exists()


# --- the server's code is not sandboxed -----------------------------------------------------


def test_server_code_between_chunks_is_not_sandboxed(policy: Policy, tmp_path: Path) -> None:
    server_log = tmp_path / "server-log"
    server_log.mkdir()

    def between(n: int) -> None:
        (server_log / f"chunk-{n}").write_text("sent\n")

    def on_start(status: str) -> None:  # start_response is called from inside the app
        (server_log / "start").write_text(status)

    def body() -> Iterator[bytes]:
        yield b"1"
        yield b"2"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        write = start_response("200 OK", OK_HEADERS)
        write(b"0")  # the server's write(), called from inside the app
        return body()

    wrapped, middleware = wrap(app, policy)
    server = FakeServer(between=between, on_start=on_start)
    original_write = server.written.append

    def write(data: bytes) -> None:
        (server_log / "write").write_bytes(data)
        original_write(data)

    server.start_response = (  # type: ignore[method-assign]
        lambda status, headers, exc_info=None, _sr=server.start_response: (
            _sr(status, headers, exc_info), write)[1])
    server.serve(wrapped)
    assert server.body == b"012"
    assert sorted(p.name for p in server_log.iterdir()) == [
        "chunk-1", "chunk-2", "start", "write"]
    assert (server_log / "start").read_text() == "200 OK"
    assert middleware.violations == []


# --- concurrency ----------------------------------------------------------------------------


def max_concurrency(policy: Policy, threadsafe: bool) -> int:
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.2)
        with lock:
            state["now"] -= 1
        start_response("200 OK", OK_HEADERS)
        return [b"ok"]

    wrapped, _ = wrap(app, policy, threadsafe=threadsafe)
    barrier = threading.Barrier(2)
    bodies: list[bytes] = []

    def client() -> None:
        barrier.wait(5)
        bodies.append(FakeServer().serve(wrapped).body)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert bodies == [b"ok", b"ok"]
    return state["max"]


def test_threadsafe_false_serialises_requests(policy: Policy) -> None:
    assert max_concurrency(policy, threadsafe=False) == 1


def test_threadsafe_true_runs_requests_together(policy: Policy) -> None:
    assert max_concurrency(policy, threadsafe=True) == 2


# --- hard deadline, report mode -------------------------------------------------------------


def spin_for(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.monotonic()


def test_on_hard_deadline_is_passed_through(policy: Policy) -> None:
    calls: list[tuple[Any, int]] = []
    called = threading.Event()
    idents: list[int] = []

    def on_hard(sandbox: Sandbox, ident: int) -> None:
        calls.append((sandbox, ident))
        called.set()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        idents.append(threading.get_ident())
        for _ in range(3):  # catches the deadline and carries on
            try:
                # the loop in a function of its own: CPython 3.12/3.13 can raise an
                # asynchronous exception at a loop's backward jump outside the try's range
                spin_for(2)
            except DeadlineExceededError:
                pass
        start_response("200 OK", OK_HEADERS)
        return [b"too late"]

    wrapped, middleware = wrap(app, policy.replace(deadline=0.3, hard_deadline_grace=0.3),
                               on_hard_deadline=on_hard, recycle_worker=False)
    start = time.monotonic()
    server = FakeServer().serve(wrapped)
    elapsed = time.monotonic() - start
    assert called.wait(5)
    assert_generic_500(server)
    assert isinstance(server.calls[-1][2][1], HardDeadlineExceeded)
    assert calls == [(middleware.sandbox, idents[0])]
    assert 0.55 <= elapsed <= 0.6 + 1.5, elapsed


def test_report_mode_records_and_succeeds(policy: Policy, app_root: Path) -> None:
    target = app_root / "reported.txt"

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        target.write_text("let through\n")
        start_response("200 OK", OK_HEADERS)
        return [b"fine"]

    wrapped, middleware = wrap(app, policy.replace(mode="report"))
    server = FakeServer().serve(wrapped)
    assert server.status == "200 OK" and server.body == b"fine"
    assert target.read_text() == "let through\n"  # report mode lets it through
    violations = [v for v in middleware.violations if v.kind == "file_write"]
    assert violations and not any(v.enforced for v in violations)
    assert any(str(target) in v.target for v in violations)


def test_500_log_shows_the_app_frames_not_the_sandbox_frames(
        policy: Policy, app_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gae_sandbox")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with open(app_root / "refused.txt", "w") as file:  # the app's own line
            file.write("x")
        return []

    wrapped, _ = wrap(app, policy)
    assert_generic_500(FakeServer().serve(wrapped))
    logged = caplog.text
    # the app's frame is there (its source line only when the app may read the file: the
    # traceback is formatted inside the request's scope)
    assert "FileWriteRefused" in logged and f'File "{__file__}"' in logged
    assert ", in app" in logged
    package = str(Path(gae_sandbox.__file__).parent)
    assert package not in logged.split("Traceback", 1)[1]
    assert not (app_root / "refused.txt").exists()


# --- a list response is one call into the scope ------------------------------------------------


class ClosingList(list):  # type: ignore[type-arg]
    """A list response with a close() of its own: app code, so it runs in the scope."""

    def __init__(self, parts: list[bytes], writes: Path) -> None:
        super().__init__(parts)
        self.writes = writes
        self.closes: list[Any] = []

    def close(self) -> None:
        outcome: Any = "wrote"
        try:
            self.writes.write_text("from close\n")
        except FileWriteRefused as error:
            outcome = error
        self.closes.append((current_sandbox(), outcome))


@pytest.mark.parametrize("kind", [list, tuple, ClosingList])
def test_a_list_response_ends_its_scope_and_closes_it_sandboxed(
        kind: type, policy: Policy, app_root: Path) -> None:
    target = app_root / "from-close.txt"
    body = ClosingList([b"a", b"b"], target) if kind is ClosingList else kind([b"a", b"b"])
    deadlines: list[Any] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        deadlines.append(active_scope().deadline)  # type: ignore[union-attr]
        start_response("200 OK", OK_HEADERS)
        return body

    middleware = SandboxMiddleware(app, policy.replace(deadline=30.0))
    served = middleware(make_environ(), lambda status, headers, exc_info=None: None)
    assert list(served) == [b"a", b"b"]
    assert active_scope_count() == 0
    assert not deadlines[0].active  # cancelled when the response was returned
    if kind is ClosingList:
        assert len(body.closes) == 1
        sandbox, outcome = body.closes[0]
        assert sandbox == middleware.sandbox
        assert isinstance(outcome, FileWriteRefused)
        assert not target.exists()


# --- the request's CGI variables in os.environ (python27) -------------------------------------


def _environ_app(environ: dict, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    names = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "HTTP_HOST", "USER_EMAIL")
    return [repr([os.environ.get(name) for name in names]).encode()]


def _get(app: Any, path: str, **extra: Any) -> bytes:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "a=1",
               "HTTP_HOST": "example.test", "SERVER_NAME": "example.test",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
               **extra}
    result = app(environ, lambda status, headers, exc_info=None: None)
    try:
        return b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()


def test_python27_requests_see_their_cgi_variables_in_os_environ(policy: Policy) -> None:
    """As on the python27 runtime: each request's own variables, never the process's."""
    app = SandboxMiddleware(_environ_app, policy)
    before = dict(os.environ)
    assert _get(app, "/one", USER_EMAIL="a@example.com", NUL_VALUE="x\0y",
                **{"wsgi.errors": io.StringIO()}) == \
        repr(["GET", "/one", "a=1", "example.test", "a@example.com"]).encode()
    assert _get(app, "/two") == repr(["GET", "/two", "a=1", "example.test", None]).encode()
    assert dict(os.environ) == before  # the host's environment is untouched
    assert "PATH_INFO" not in os.environ


def test_python3_and_the_setting_off_leave_os_environ_alone(tmp_path: Path) -> None:
    assert "PATH_INFO" not in os.environ
    for policy in (Policy.python3(app_root=tmp_path),
                   Policy.python27(app_root=tmp_path, request_environ=False)):
        app = SandboxMiddleware(_environ_app, policy)
        host = [os.environ.get(name) for name in ("REQUEST_METHOD", "PATH_INFO",
                                                   "QUERY_STRING", "HTTP_HOST", "USER_EMAIL")]
        assert _get(app, "/x") == repr(host).encode()  # the process's, not the request's


def test_deadline_never_lands_in_the_servers_own_write(policy: Policy) -> None:
    """The app's deadline passes while the server's write() (host code) is busy: the write
    finishes, and the app gets the error once it is back in its own code."""
    steps: list[int] = []

    def server_write(data: bytes) -> None:
        for step in range(30):  # ~0.3 s of the server's own work, past the 0.1 s deadline
            time.sleep(0.01)
            steps.append(step)

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        return server_write

    reached: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        write = start_response("200 OK", OK_HEADERS)
        try:
            write(b"early")
        except DeadlineExceededError:
            reached.append("error after the write")
            raise
        reached.append("no error")
        return [b""]

    wrapped = SandboxMiddleware(app, policy.replace(deadline=0.1, hard_deadline_grace=5))
    # the body started: the error goes to the server, as an Exception (servers let a
    # BaseException such as DeadlineExceededError through, and a gunicorn worker dies of it)
    with pytest.raises(AppFailedError, match="deadline"):
        list(wrapped(make_environ(), start_response))
    assert len(steps) == 30  # the server's write was not cut short
    assert reached == ["error after the write"]


def test_an_app_that_catches_its_deadline_answers_normally(policy: Policy) -> None:
    """The runtime's documented pattern: catch DeadlineExceededError and answer a short
    page. When the timer delivered the error (a pure-Python loop, no bounded call), the
    app's start_response afterwards must not raise it a second time."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        try:
            for _ in range(10**9):  # bounded; the deadline ends it long before
                pass
            body = b"finished"
        except DeadlineExceededError:
            body = b"caught"
        start_response("200 OK", OK_HEADERS)
        return [body]

    seen: list[str] = []
    wrapped = SandboxMiddleware(app, policy.replace(deadline=0.2, hard_deadline_grace=30))
    body = b"".join(wrapped(make_environ(), lambda status, headers, *args: seen.append(status)))
    assert (seen, body) == (["200 OK"], b"caught")


def test_a_deadline_after_the_body_started_reaches_the_server_as_an_exception(
        policy: Policy) -> None:
    """Once the headers are out an app error is re-raised to the server (PEP 3333); a
    DeadlineExceededError is a BaseException, which servers' ``except Exception`` lets
    through (a gunicorn worker dies of it): the server gets an AppFailedError instead."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        start_response("200 OK", OK_HEADERS)
        yield b"first"
        for _ in range(10**9):  # bounded; the deadline ends it long before
            pass
        yield b"never"

    wrapped = SandboxMiddleware(app, policy.replace(deadline=0.2, hard_deadline_grace=30))
    response = wrapped(make_environ(), lambda *args: None)
    chunks = iter(response)
    assert next(chunks) == b"first"
    with pytest.raises(Exception) as raised:
        next(chunks)
    assert type(raised.value) is AppFailedError and "deadline" in str(raised.value)
    response.close()  # type: ignore[attr-defined]
