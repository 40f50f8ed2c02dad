"""Weakness 5 of the security review: the host consuming app objects.

What an app hands the server (its status, headers, body chunks, its exception, its response
iterable) must not run app code in host code later: the middleware turns each into exact
``str``/``bytes``/``int`` inside the request's scope. Each attempt is an object whose method
writes a file when the host calls it; the control hands the same object to a plain WSGI
server loop (no middleware) and the file appears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import Policy, SandboxMiddleware


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

    def failing_after_the_body(environ: dict, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise Failure()  # the server gets an error once the body started

    return {"status_subclass": status_subclass, "chunk_subclass": chunk_subclass,
            "sized_body": sized_body, "generator_chunks": generator_chunks,
            "failing": failing, "environ_values_replaced": environ_values_replaced,
            "class_name_property": class_name_property,
            "failing_after_the_body": failing_after_the_body}


CASES = ["status_subclass", "chunk_subclass", "sized_body", "generator_chunks", "failing",
         "environ_values_replaced", "class_name_property", "failing_after_the_body"]


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

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
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
