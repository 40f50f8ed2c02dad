"""Weakness 5 of the security review: the host consuming app objects.

What an app hands the server (its status, headers, body chunks, its exception, its response
iterable) must not run app code in host code later: the middleware turns each into exact
``str``/``bytes``/``int`` inside the request's scope. Each attempt is an object whose method
writes a file when the host calls it; the control hands the same object to a plain WSGI
server loop (no middleware) and the file appears.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import Policy, Sandbox, SandboxMiddleware


def _writer(target: Path) -> Callable[[], None]:
    def write() -> None:
        with open(target, "w") as file:
            file.write("app code ran in host code")

    return write


def _apps(target: Path) -> dict[str, Callable[..., Iterable[bytes]]]:
    write = _writer(target)

    class Status(str):
        def __str__(self) -> str:
            write()
            return str.__str__(self)

        def split(self, *args: Any) -> Any:
            write()
            return str.split(self, *args)

        def encode(self, *args: Any) -> bytes:
            write()
            return str.encode(self, *args)

    class Chunk(bytes):
        def __len__(self) -> int:
            write()
            return bytes.__len__(self)

        def __bytes__(self) -> bytes:
            write()
            return b"x"

    class Body(list):
        def __len__(self) -> int:
            write()
            return list.__len__(self)

    class Failure(Exception):
        def __str__(self) -> str:
            write()
            return "app failure"

    def status_subclass(environ: dict, start_response: Any) -> Iterable[bytes]:
        start_response(Status("200 OK"), [(Status("X-App"), Status("1"))])
        return [b"ok"]

    def chunk_subclass(environ: dict, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [Chunk(b"ok")]

    def sized_body(environ: dict, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Body([b"ok"])

    def generator_chunks(environ: dict, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        yield Chunk(b"ok")

    def failing(environ: dict, start_response: Any) -> Iterable[bytes]:
        raise Failure()

    class Sneaky:
        """Not a str, but says it is: ``isinstance`` reads ``__class__``, app code."""

        @property  # type: ignore[misc]
        def __class__(self) -> type:
            write()
            return str

        def __str__(self) -> str:
            write()
            return "GET"

    def environ_values_replaced(environ: dict, start_response: Any) -> Iterable[bytes]:
        environ["REQUEST_METHOD"] = environ["PATH_INFO"] = Sneaky()
        raise ValueError("app failure")  # the middleware logs the method and path

    class Named(type):
        @property
        def __name__(cls) -> str:  # type: ignore[override]
            write()
            return "Failure"

    class Unprintable(Exception, metaclass=Named):
        def __str__(self) -> str:
            return ""  # no text: the log falls back to the class name

    def class_name_property(environ: dict, start_response: Any) -> Iterable[bytes]:
        raise Unprintable()

    class Key(str):  # the environ key the log looks up, with the app's __eq__
        def __eq__(self, other: object) -> bool:
            write()
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    def environ_key_replaced(environ: dict, start_response: Any) -> Iterable[bytes]:
        environ[Key("REQUEST_METHOD")] = environ.pop("REQUEST_METHOD")
        raise ValueError("app failure")  # the middleware logs the method and path

    class Size:
        def __index__(self) -> int:
            write()
            return 1

    def input_call_with_app_arguments(environ: dict,
                                      start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        call = vars(stream).get("_call") if hasattr(stream, "__dict__") else None
        for name in ("read", "__init__", "seek"):
            try:  # the stand-in's caller, with arguments the server's C code would convert
                call(name, Size()) if call is not None else getattr(stream, name)(Size())
            except Exception:
                pass
        start_response("200 OK", [])
        return [b"ok"]

    def failing_after_the_body(environ: dict, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise Failure()  # the server gets an error once the body started

    return {"status_subclass": status_subclass, "chunk_subclass": chunk_subclass,
            "sized_body": sized_body, "generator_chunks": generator_chunks,
            "failing": failing, "environ_values_replaced": environ_values_replaced,
            "class_name_property": class_name_property,
            "environ_key_replaced": environ_key_replaced,
            "input_call_with_app_arguments": input_call_with_app_arguments,
            "failing_after_the_body": failing_after_the_body}


CASES = ["status_subclass", "chunk_subclass", "sized_body", "generator_chunks", "failing",
         "environ_values_replaced", "class_name_property", "environ_key_replaced",
         "input_call_with_app_arguments", "failing_after_the_body"]


def serve_once(app: Callable[..., Iterable[bytes]]) -> None:
    """What a WSGI server does with a response, in host code: format the status and headers,
    measure and send each chunk, log an error."""
    sent: list[str] = []

    def start_response(status: Any, headers: list[Any], exc_info: Any = None) -> Any:
        sent.append(str(status))
        sent.extend(f"{str(name)}: {str(value)}" for name, value in headers)
        status.split(" ", 1)
        status.encode("latin-1")
        return lambda data: None

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO(b"body")}
    try:
        try:
            result = app(environ, start_response)
        except Exception as error:  # the server logs it, with the class name
            sent.append(f"{type(error).__name__}: {error}")
            return
        if hasattr(result, "__len__"):
            len(result)
        try:
            for chunk in result:
                len(chunk)
                bytes(chunk)
        except Exception as error:
            sent.append(f"{type(error).__name__}: {error}")
        getattr(result, "close", lambda: None)()
    finally:  # the access log
        sent.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")


@pytest.mark.parametrize("case", CASES)
def test_plain_server_runs_app_code_in_host_code(case: str, tmp_path: Path) -> None:
    target = tmp_path / "written"
    serve_once(_apps(target)[case])
    assert target.exists()


@pytest.mark.parametrize("case", CASES)
def test_middleware_hands_the_server_exact_values(case: str, tmp_path: Path,
                                                  app_root: Path) -> None:
    target = tmp_path / "written"
    policy = Policy.python27(app_root=app_root, deadline=None)
    serve_once(SandboxMiddleware(_apps(target)[case], policy))
    assert not target.exists()


def test_a_record_factory_set_in_a_sandbox_keeps_its_plain_fields(tmp_path: Path) -> None:
    """What a sandboxed ``setLogRecordFactory`` factory adds reaches host records as plain
    values (a request id), while the record host handlers format is the host's own: the
    app's message object and its ``str`` subclass never reach host formatting. Control: the
    same factory set by host code hands the host its objects."""
    import logging

    from gae_sandbox import Sandbox

    formatted: list[str] = []
    calls: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            formatted.append(self.format(record))

    class Message:
        def __str__(self) -> str:
            calls.append("app __str__")
            return "app message"

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = logging.LogRecord(*args, **kwargs)
        record.msg = Message()
        record.request_id = "r1"
        record.level_name_object = type("Name", (str,), {})("x")
        return record

    logger = logging.getLogger("gae_sandbox_test_boundary_factory")
    logger.propagate = False
    handler = Collect()
    handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
    logger.addHandler(handler)
    previous = logging.getLogRecordFactory()
    try:
        logging.setLogRecordFactory(factory)  # control: set by host code
        logger.warning("host line")
        assert formatted == ["r1 app message"] and calls == ["app __str__"]
        del formatted[:], calls[:]
        # (looked up inside: the patched function, even if an earlier test uninstalled it)
        Sandbox(Policy.python27(app_root=str(tmp_path), deadline=None)).call(
            lambda: logging.setLogRecordFactory(factory))
        logger.warning("host line")
        assert formatted == ["r1 host line"] and calls == []
        record = logging.getLogRecordFactory()("n", logging.INFO, "f", 1, "m", (), None)
        assert type(record) is logging.LogRecord and "level_name_object" not in vars(record)
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(handler)


# --- the server's own objects in environ, and what the app leaves behind -------------------------


class _ServerInput:
    """A server's request body stream, which the server itself calls again later (gunicorn
    drains the rest of a body before the connection's next request)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def read(self, size: int = -1) -> bytes:
        data, self.body = (self.body, b"") if size < 0 else (self.body[:size],
                                                             self.body[size:])
        return data


def _replacing_read(target: Path) -> Callable[..., Iterable[bytes]]:
    write = _writer(target)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        first = stream.read(2)
        stream.read = lambda *args: write() or b""  # the app's method on the server's object
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [first]

    return app


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "middleware"])
def test_the_apps_attribute_on_wsgi_input_never_reaches_the_servers_object(
        wrapped: bool, policy: Policy, tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    app = _replacing_read(target)
    served = SandboxMiddleware(app, policy) if wrapped else app
    stream = _ServerInput(b"ok, and the rest")
    body = b"".join(served({"REQUEST_METHOD": "POST", "PATH_INFO": "/", "wsgi.input": stream,
                            "wsgi.errors": io.StringIO()}, lambda *args: None))
    assert body == b"ok"
    stream.read()  # the server drains the body, in its own code
    assert target.exists() is not wrapped  # plain: the app's method ran in the server's code


def test_wsgi_file_wrapper_reads_the_apps_file_in_the_scope(policy: Policy,
                                                           tmp_path: Path) -> None:
    """The file object given to ``wsgi.file_wrapper`` is the app's: the library's wrapper
    reads it while iterating the response in the scope, never in the server's code."""
    target = tmp_path / "written.txt"
    write = _writer(target)

    class Reader(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            write()  # refused in the sandbox: the file never appears
            return io.BytesIO.read(self, size)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](Reader(b"file body"), 4)

    served = SandboxMiddleware(app, policy.replace(mode="report"))
    response = served({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.file_wrapper": object},
                      lambda *args: None)
    assert b"".join(response) == b"file body"
    response.close()  # type: ignore[attr-defined]
    # report mode lets the write through and records it: it was judged, so it ran sandboxed
    assert any("written.txt" in str(v) for v in served.violations)


def test_context_variables_of_sandbox_call_are_let_go_of_in_the_sandbox(
        policy: Policy, tmp_path: Path) -> None:
    """``Sandbox.call`` runs the function in a context of its own, which holds the values of
    the context variables the app set; when the scope ends that context is dropped with the
    thread marked as running it, so a value's finalizer is sandboxed. The control drops such
    a context in plain host code and the file appears."""
    import contextvars
    import gc

    target = tmp_path / "written.txt"
    write = _writer(target)

    class Thing:
        def __del__(self) -> None:
            try:
                write()
            except OSError:
                pass

    variable: contextvars.ContextVar[Any] = contextvars.ContextVar("app_variable")
    control = contextvars.copy_context()
    control.run(variable.set, Thing())
    del control
    gc.collect()
    assert target.exists()  # the control: plain code finalizes it, the file is written
    target.unlink()

    def app() -> None:  # (returning the token would hand the host the context)
        variable.set(Thing())

    Sandbox(policy).call(app)
    gc.collect()
    assert not target.exists()


#: The app reaches the host's event loop (set on the request's thread before the request)
#: and leaves a function of its own where the host's asyncio calls it later.
_HOST_LOOP_ATTEMPTS = {
    "task_factory": "asyncio.get_event_loop().set_task_factory("
                    "lambda loop, coro, **kw: (write(), asyncio.Task(coro, loop=loop))[1])",
    "exception_handler": "asyncio.get_event_loop().set_exception_handler("
                         "lambda loop, context: write())",
    "callback_in_an_empty_context": "asyncio.get_event_loop().call_soon(write, "
                                    "context=contextvars.Context())",
    "callback": "asyncio.get_event_loop().call_soon(write)",
}
_HOST_LOOP_SCRIPT = """
import asyncio, contextvars, sys
from gae_sandbox import Policy, Sandbox
target, root, how, sandboxed = sys.argv[1:5]
def write():
    with open(target, "w") as file:
        file.write("app code ran in host code")
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
try:
    if sandboxed == "1":
        with Sandbox(Policy.python27(app_root=root)):
            exec(ATTEMPT, {"asyncio": asyncio, "contextvars": contextvars, "write": write})
    else:
        exec(ATTEMPT, {"asyncio": asyncio, "contextvars": contextvars, "write": write})
except Exception as error:
    print("refused", type(error).__name__)
async def host_work():
    asyncio.get_running_loop().call_exception_handler({"message": "host"})
    await asyncio.sleep(0)
loop.run_until_complete(host_work())
assert asyncio.get_event_loop() is loop  # the host's loop is set again after the request
"""


@pytest.mark.parametrize("how", sorted(_HOST_LOOP_ATTEMPTS))
def test_the_hosts_event_loop_is_not_the_requests(how: str, tmp_path: Path,
                                                  app_root: Path) -> None:
    """A request thread has no event loop of the host's: asyncio.get_event_loop() does not
    hand it the loop the host set on the thread, whose task factory, exception handler and
    callbacks the host's asyncio calls as host code. The control runs the same attempt
    without the sandbox and the file appears."""
    import subprocess
    import sys

    script = _HOST_LOOP_SCRIPT.replace("ATTEMPT", repr(_HOST_LOOP_ATTEMPTS[how]))
    for sandboxed in ("0", "1"):
        target = tmp_path / f"written-{sandboxed}"
        result = subprocess.run([sys.executable, "-c", script, str(target), str(app_root), how,
                                 sandboxed], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stderr
        assert target.exists() == (sandboxed == "0"), (sandboxed, result.stdout)
