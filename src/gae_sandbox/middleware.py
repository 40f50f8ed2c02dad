"""WSGI middleware: every request of the wrapped app runs in its own sandbox scope.

PEP 3333: app code also runs while the server iterates the response and in ``close()``, so
the scope stays open until ``close()`` and is entered around each of those calls (the server's
own code between them runs unsandboxed). The scope is closed exactly once, whatever happens.
An error from the app, a refusal in enforce mode or a deadline becomes a 500 with a short
generic body (the traceback goes to the ``gae_sandbox`` logger, never to the client); once
the headers are on the wire the error is re-raised to the server instead, as PEP 3333 says.
"""

from __future__ import annotations

import logging
import operator
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from .context import Scope, host_call, quietly, stand_in, type_name
from .errors import AppFailedError, DeadlineExceededError, HardDeadlineExceeded
from .policy import Policy
from .sandbox import APP_OBJECTS, Sandbox, call_in_scope, close_scope

logger = logging.getLogger("gae_sandbox")

ERROR_STATUS = "500 Internal Server Error"
ERROR_BODY = b"500 Internal Server Error\n"

#: Exceptions from app code that become a 500 (others, like KeyboardInterrupt, propagate).
_APP_ERRORS = (Exception, DeadlineExceededError, HardDeadlineExceeded, SystemExit)

StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
HardDeadlineHandler = Callable[[Sandbox, int], None]


class SandboxMiddleware:
    """Wrap a WSGI ``app`` so each request runs in a sandbox under ``policy``.

    ``threadsafe=False`` serves one request at a time (app.yaml ``threadsafe: false``).
    ``sandbox`` shares an existing :class:`Sandbox` (and its violation report).
    ``on_hard_deadline(sandbox, thread_ident)`` is called when a request carries on past its
    deadline and grace period; with ``recycle_worker=True`` a gunicorn worker is also asked
    to exit gracefully (SIGTERM to itself), and gunicorn starts a fresh one.
    """

    def __init__(self, app: WSGIApp, policy: Policy, *, threadsafe: bool = True,
                 on_hard_deadline: HardDeadlineHandler | None = None,
                 recycle_worker: bool = True, sandbox: Sandbox | None = None) -> None:
        if not callable(app):
            raise TypeError(f"SandboxMiddleware(app, ...) needs a WSGI callable, got {app!r}")
        self.app = app
        self.policy = policy
        self.on_hard_deadline = on_hard_deadline
        self.recycle_worker = recycle_worker
        if sandbox is None:
            sandbox = Sandbox(policy, on_hard_deadline=self._hard_deadline)
        elif sandbox.policy is not policy:
            raise ValueError("SandboxMiddleware(sandbox=...) must use the same policy")
        elif sandbox.on_hard_deadline is None:
            sandbox.on_hard_deadline = self._hard_deadline
        self.sandbox = sandbox
        self._serial = None if threadsafe else threading.Lock()
        self._server_software = ""

    @property
    def violations(self) -> list[Any]:
        return self.sandbox.violations

    def __call__(self, environ: dict[str, Any],
                 start_response: StartResponse) -> Iterable[bytes]:
        self._server_software = str(environ.get("SERVER_SOFTWARE", ""))
        if self._serial is not None:
            self._serial.acquire()
        try:
            scope = self.sandbox.open_scope()
        except BaseException:
            if self._serial is not None:
                self._serial.release()
            raise
        # The app gets its own copy of the environ dict: the server reads its own later (an
        # access log formats REQUEST_METHOD and PATH_INFO), and a value the app put there
        # would be app code running in the server's formatting. (No local name holds the
        # copy: the request lets go of it in the scope.)
        request = _Request(self, scope, dict(environ), start_response)
        # what a failure's log line names, read now from the server's own dict
        request.logged = (_plain(environ.get("REQUEST_METHOD")), _plain(environ.get("PATH_INFO")))
        request.wrap_streams()
        if self.sandbox.policy.request_environ:  # read if the app reads os.environ
            scope.extras["cgi_environ"] = request.environ
        return request.run()

    def _hard_deadline(self, sandbox: Sandbox, thread_ident: int) -> None:
        if self.on_hard_deadline is not None:
            self.on_hard_deadline(sandbox, thread_ident)
        if self.recycle_worker and self._server_software.startswith("gunicorn"):
            logger.critical("gae_sandbox: asking gunicorn worker %s to exit (hard deadline)",
                            os.getpid())
            os.kill(os.getpid(), signal.SIGTERM)


class _Request:
    """One request: the scope, what the server was told, and the app's response."""

    def __init__(self, middleware: SandboxMiddleware, scope: Scope,
                 environ: dict[str, Any], start_response: StartResponse) -> None:
        self.middleware = middleware
        self.scope = scope
        self.environ = environ
        self.server_start_response = start_response
        self.server_write: Callable[[bytes], Any] | None = None
        self.headers_started = False  # start_response called
        self.body_started = False  # bytes handed to the server: headers are on the wire
        self.closed = False
        self.iterable: Any = None
        self.iterator: Iterator[bytes] | None = None
        self.error_body: list[bytes] | None = None
        self.logged: tuple[str | None, str | None] = (None, None)

    def wrap_streams(self) -> None:
        """The server's own objects in environ (``wsgi.input``, ``wsgi.errors``) reach the
        app through stand-ins: what it reads comes back as exact ``bytes``, what it writes
        goes as exact ``str``, and an attribute it sets lands on the stand-in, never on the
        server's object (which the server calls again later, in its own code).
        ``wsgi.file_wrapper`` is this library's: the file is read in the scope, as the
        body's other chunks are."""
        environ = self.environ
        assert environ is not None
        stream = environ.get("wsgi.input")
        if stream is not None:
            environ["wsgi.input"] = _InputStream(_server_caller(self, stream, _INPUT_CALLS))
        errors = environ.get("wsgi.errors")
        if errors is not None:
            environ["wsgi.errors"] = _ErrorStream(_server_caller(self, errors, _ERRORS_CALLS))
        if "wsgi.file_wrapper" in environ:
            environ["wsgi.file_wrapper"] = FileWrapper

    # -- calls the app makes into the server (run unsandboxed) -----------------------------

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], Any]:
        # the app's objects become exact str here, in the scope: the server formats them
        # later in host code, where a subclass's __str__ or __iter__ would run unsandboxed
        status = _exact_str(status, "status")
        headers = [(name, value) if type(name) is str and type(value) is str else
                   (_exact_str(name, "header name"), _exact_str(value, "header value"))
                   for name, value in headers]
        if exc_info is not None:  # the server gets a stand-in for the app's error
            error = tuple.__getitem__(exc_info, 1) if isinstance(exc_info, tuple) else None
            exc_info = _host_info(quietly(stand_in, error)) if (
                isinstance(error, BaseException)) else None
        self.server_write = self.to_server(self.server_start_response, status, headers,
                                           exc_info) if exc_info is not None else \
            self.to_server(self.server_start_response, status, headers)
        self.headers_started = True
        return self.write

    def write(self, data: bytes) -> Any:
        data = _exact_bytes(data)
        if data:
            self.body_started = True
        assert self.server_write is not None, "write() called before start_response()"
        return self.to_server(self.server_write, data)

    def to_server(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call the server (host code) from the app's call: no deadline error may land in
        the server's own code, so the deadline is detached meanwhile; attached again after,
        it raises in the app if it passed."""
        deadline = self.scope.deadline
        if deadline is None or not deadline.attached or deadline.thread != threading.get_ident():
            return host_call(function, *args)
        deadline.detach()
        try:
            return host_call(function, *args)
        finally:
            deadline.attach()  # raises if it passed while the server worked, undelivered

    # -- the request -----------------------------------------------------------------------

    def run(self) -> Iterable[bytes]:
        try:
            result, failure = call_in_scope(self.scope, self._in_scope, self._call_app)
        except _APP_ERRORS as error:  # raised outside the app's code (a deadline's error)
            result, failure = None, self._library_failure(error)
        except BaseException:
            self.close()
            raise
        if failure is not None:
            return self.fail(failure, closing=True)
        kind, chunks = result
        if kind == "list":
            # Nothing of the app's runs while a list is sent: end the scope now (its threads
            # are joined before the response goes out, as on the runtime).
            self.close()
            return chunks
        if kind == "sized":
            return _SizedResponse(self)
        return _Response(self)

    def _in_scope(self, function: Callable[..., Any]) -> tuple[Any, _Failure | None]:
        """In the scope: ``function()`` and ``(result, None)``, or ``(None, failure)``. An app
        error is read here, in the scope (its text, its traceback, the stand-in the server
        may get), and released here: host code never holds the app's exception, whose
        frames hold the app's objects."""
        try:
            return function(), None
        except StopIteration:  # its value is the app's: the server gets a StopIteration
            return None, _STOPPED
        except _APP_ERRORS as error:
            return None, self._failure(error)

    def _failure(self, error: BaseException) -> _Failure:
        """What the host needs of an app error, made in the scope as plain values."""
        kind = type(error)
        traceback_ = _traceback_of(error)
        exc_info = (kind, error, app_frames(traceback_))
        text = quietly(_formatted, exc_info)
        reason = quietly(str, error)
        copy = quietly(stand_in, error)
        if not isinstance(copy, BaseException):
            copy = None
        if type(reason) is not str or not reason:
            reason = type_name(error)
        if issubclass(kind, (DeadlineExceededError, HardDeadlineExceeded)):
            reason = self._deadline_reason(kind) or reason
        # the frames' locals (the app's objects) go now, in the scope: a reference cycle
        # through the error would leave them to a collection in host code
        exc_info = None
        BaseException.with_traceback(error, None)
        quietly(traceback.clear_frames, traceback_)
        return _Failure(copy, text if type(text) is str else "", reason)

    def _library_failure(self, error: BaseException) -> _Failure:
        """A deadline error raised in the library's own code around the app's call."""
        reason = self._deadline_reason(type(error)) or type_name(error)
        return _Failure(None, "", reason)

    def _deadline_reason(self, kind: type) -> str:
        """A deadline error raised asynchronously has only a generic text (it is raised as a
        bare class): say which deadline it was."""
        deadline = self.scope.deadline
        if deadline is not None and issubclass(kind, HardDeadlineExceeded):
            return f"HardDeadlineExceeded: {deadline._hard_message()}"
        if deadline is not None and issubclass(kind, DeadlineExceededError):
            return f"DeadlineExceededError: {deadline._message()}"
        return ""

    def _call_app(self) -> tuple[str, list[bytes] | None]:
        """In the scope, in one call: the app, the type checks of what it returned (app code:
        a metaclass, ``__getattr__``), and a list's copy as exact bytes (the list itself is
        then let go, here: an exact list or tuple has no close() to call)."""
        self.iterable = self.middleware.app(self.environ, self.start_response)
        kind = _response_kind(self.iterable)
        if kind != "list":
            return kind, None
        chunks = _exact_chunks(self.iterable)
        if type(self.iterable) in (list, tuple):
            self.iterable = None
        return kind, chunks

    def next_chunk(self) -> bytes:
        if self.error_body is not None:
            if self.error_body:
                return self.error_body.pop(0)
            raise StopIteration
        try:
            chunk, failure = call_in_scope(self.scope, self._in_scope, self._next_from_app)
        except _APP_ERRORS as error:
            chunk, failure = None, self._library_failure(error)
        if failure is _STOPPED:
            raise StopIteration
        if failure is not None:
            self.error_body = self.fail(failure, closing=False)
            return self.next_chunk()
        if chunk:
            self.body_started = True
        return chunk

    def _next_from_app(self) -> bytes:
        if self.iterator is None:
            self.iterator = iter(self.iterable)
        return _exact_bytes(next(self.iterator))

    def fail(self, failure: _Failure, *, closing: bool) -> list[bytes]:
        """Turn an app error into a 500, or re-raise it when the headers were sent."""
        self.log_failure(failure)
        copy = failure.copy or AppFailedError(failure.reason)  # never the app's own error
        if self.body_started:
            if closing:
                self.close()
            if not isinstance(copy, Exception):  # a deadline's error is a BaseException, which
                copy = AppFailedError(failure.reason)  # servers' error handling lets through
            raise copy from None
        headers = [("Content-Type", "text/plain; charset=utf-8"),
                   ("Content-Length", str(len(ERROR_BODY)))]
        try:
            host_call(self.server_start_response, ERROR_STATUS, headers, _host_info(copy))
        except BaseException:
            if closing:
                self.close()
            raise
        self.headers_started = True
        if closing:
            self.close()
        return [ERROR_BODY]

    def log_failure(self, failure: _Failure) -> None:
        """Log the error with its traceback, both read in the scope (an app exception's
        ``__str__`` is app code), the traceback without this library's frames."""
        # the method and path as the server gave them (a key the app put in its copy of the
        # environ would run its __eq__ in the lookup); the record carries the text only:
        # log handlers never get the app's exception
        method, path = self.logged
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 0, "gae_sandbox: request %s %s failed: %s",
            (method, path, failure.reason), None)
        record.exc_text = failure.text.rstrip("\n") or f"{failure.reason} (not formattable)"
        if logger.isEnabledFor(logging.ERROR):
            logger.handle(record)

    def close(self) -> None:
        """Close the app's iterable (in the sandbox), let go of the app's objects, and end
        the scope, exactly once."""
        if self.closed:
            return
        self.closed = True
        try:
            failure = None
            if self.iterable is not None and not self.scope.closed:
                # even looking close up runs app code (a property)
                _, failure = call_in_scope(self.scope, self._in_scope, self._close_iterable)
            if failure is not None and failure is not _STOPPED:
                # the response is out: log, never break the server
                logger.error("gae_sandbox: the app's close() failed: %s\n%s", failure.reason,
                             failure.text.rstrip("\n"))
        finally:
            try:
                self.release()
            finally:
                try:
                    close_scope(self.scope)
                finally:
                    serial = self.middleware._serial
                    if serial is not None:
                        serial.release()

    def length(self) -> int:
        return len(self.iterable)

    def _close_iterable(self) -> None:
        _close(self.iterable)

    def release(self) -> None:
        """Hand the app's objects (its response, its iterator, its environ) to the scope,
        which lets go of them as it closes, with the thread marked as running it
        (``sandbox.close_scope``): their finalizers run sandboxed, not in the server's code
        whenever it drops this request."""
        held = [self.iterable, self.iterator, self.environ]
        self.iterable = self.iterator = self.environ = None
        if not self.scope.closed:  # (closed: only after a failure to open or run it)
            self.scope.extras[APP_OBJECTS] = held


_UNSET: Any = object()


def _size(value: Any) -> Any:
    """A read size the app gave, as what the server gets: an exact int or None."""
    return value if value is None or type(value) is int else int.__index__(
        operator.index(value))


def _server_call(stream: Any, name: str, *args: Any) -> Any:
    return getattr(stream, name)(*args)


def _text(value: Any) -> str:
    return _exact_str(value, "wsgi.errors text")


#: The methods of the server's streams the stand-ins call, each with what its arguments are
#: made into first (in the scope): the most it takes, and the conversion of each.
_INPUT_CALLS: dict[str, tuple[int, Callable[[Any], Any]]] = {
    "read": (1, _size), "readline": (1, _size), "readlines": (1, _size)}
_ERRORS_CALLS: dict[str, tuple[int, Callable[[Any], Any]]] = {
    "write": (1, _text), "flush": (0, _size)}


def _server_caller(request: _Request, stream: Any,
                   calls: dict[str, tuple[int, Callable[[Any], Any]]]) -> Callable[..., Any]:
    """A function that calls a method of the server's ``stream`` as host code: only one of
    ``calls``, with its arguments made exact values in the scope first (app code reaches
    this function as the stand-in's attribute, and would otherwise choose the method and
    hand the server's C code objects whose methods then run as host code). The stand-ins
    below hold only this (the stream is in its closure: no attribute of theirs leads to it;
    introspection does, as to all of the library's objects in the default mode)."""

    def call(name: Any, *args: Any) -> Any:
        known = calls.get(name) if type(name) is str else None
        if known is None or len(args) > known[0]:
            raise TypeError(f"the server's stream is called only for {', '.join(calls)}")
        convert = known[1]
        return request.to_server(_server_call, stream, name, *[convert(a) for a in args])

    return call


class _InputStream:
    """``wsgi.input`` as the app sees it (``_Request.wrap_streams``). No ``__slots__``:
    what the app sets on it stays on it."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def _read(self, name: str, size: Any) -> Any:
        return self._call(name) if size is _UNSET else self._call(name, size)

    def read(self, size: Any = _UNSET) -> bytes:
        return _exact_bytes(self._read("read", size))

    def readline(self, size: Any = _UNSET) -> bytes:
        return _exact_bytes(self._read("readline", size))

    def readlines(self, hint: Any = _UNSET) -> list[bytes]:
        lines = self._read("readlines", hint)
        return [_exact_bytes(line) for line in list.__iter__(lines)] if type(
            lines) is list else [_exact_bytes(line) for line in lines]

    def __iter__(self) -> _InputStream:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _ErrorStream:
    """``wsgi.errors`` as the app sees it (``_Request.wrap_streams``)."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call

    def write(self, text: Any) -> Any:
        return self._call("write", text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._call("flush")


class FileWrapper:
    """``wsgi.file_wrapper`` (PEP 3333) inside the sandbox: an iterable of ``filelike``'s
    blocks, read in the request's scope, and its ``close``."""

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        while True:
            block = self.filelike.read(self.block_size)
            if not block:
                return
            yield block

    def close(self) -> None:
        _close(self.filelike)


class _Failure:
    """An app error as host code may use it: a stand-in made in the scope (or None), the
    traceback's text and the reason, exact ``str``."""

    __slots__ = ("copy", "text", "reason")

    def __init__(self, copy: BaseException | None, text: str, reason: str) -> None:
        self.copy = copy
        self.text = text
        self.reason = reason


#: The app's iterator ended (its StopIteration, and any value it carries, stay in the scope).
_STOPPED = _Failure(None, "", "")


_PACKAGE_PREFIX = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _close(closeable: Any) -> None:
    """PEP 3333's close: called if the object has one (looking it up runs app code)."""
    close = getattr(closeable, "close", None)
    if close is not None:
        close()


def _formatted(exc_info: tuple[Any, Any, Any]) -> str:
    return "".join(traceback.format_exception(*exc_info))


def _traceback_of(error: BaseException) -> TracebackType | None:
    """The error's traceback, read from the slot (an app class may make it a property)."""
    return BaseException.__traceback__.__get__(error)  # type: ignore[attr-defined]


def _host_info(error: BaseException) -> tuple[type[BaseException], BaseException, None]:
    """``exc_info`` for the server: a stand-in (``context.stand_in``), its class, no
    traceback (whose frames hold the app's objects)."""
    return type(error), error, None


def _exact_str(value: Any, what: str) -> str:
    """An app's ``str`` (or subclass) as an exact ``str``; PEP 3333 allows nothing else."""
    if not isinstance(value, str):
        raise TypeError(f"WSGI {what} must be a str, got {type_name(value)}")
    return str.__str__(value)


def _exact_bytes(value: Any) -> bytes:
    """An app's body chunk (``bytes`` or a subclass) as exact ``bytes``."""
    if type(value) is bytes:
        return value
    if not isinstance(value, bytes):
        raise TypeError(f"WSGI body chunks must be bytes, got {type_name(value)}")
    return bytes.__getitem__(value, slice(None))  # a copy without calling app methods


def _exact_chunks(iterable: Any) -> list[bytes]:
    return [chunk if type(chunk) is bytes else _exact_bytes(chunk) for chunk in iterable]


def _response_kind(iterable: Any) -> str:
    if isinstance(iterable, (list, tuple)):
        return "list"
    return "sized" if hasattr(iterable, "__len__") else "iterator"


def _plain(value: Any) -> str | None:
    """An environ value (the app may have replaced it) as an exact ``str``, or None; never
    ``isinstance``, which reads the object's ``__class__`` (a property is app code)."""
    return str.__str__(value) if issubclass(type(value), str) else None


def app_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback without this library's own frames (the gate, the patches, the scope):
    the log shows the app's code and the library code it called, as an unsandboxed run
    would. The error keeps its own traceback; this is a copy for the log."""
    kept: list[TracebackType] = []
    while tb is not None:
        # an exact str: a code object's file name may be a str subclass the app made
        if not str.startswith(str.__str__(tb.tb_frame.f_code.co_filename), _PACKAGE_PREFIX):
            kept.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for entry in reversed(kept):
        rebuilt = TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return rebuilt


class _Response:
    """The iterable handed to the server."""

    def __init__(self, request: _Request) -> None:
        self._request = request

    def __iter__(self) -> _Response:
        return self

    def __next__(self) -> bytes:
        return self._request.next_chunk()

    def close(self) -> None:
        self._request.close()

    def __del__(self) -> None:  # a server that never calls close() must not leak the scope
        try:
            if not self._request.closed:
                self._request.close()
        except Exception:
            pass


class _SizedResponse(_Response):
    def __len__(self) -> int:  # the app's own __len__ is app code: run it sandboxed
        request = self._request
        if request.closed:  # never the app's __len__ outside its scope
            raise TypeError("the response was closed; its length is no longer known")
        length, failure = call_in_scope(request.scope, request._in_scope, request.length)
        if failure is not None:  # the app's error stays in its scope; the server gets this
            raise TypeError(f"the app's response has no length: {failure.reason}")
        return int.__index__(length)
