"""The development server: an ``app.yaml`` app served the way the runtime served it.

Requests are routed by ``handlers`` in order; static handlers are served by the server itself
(host code, like the runtime's static file servers); script handlers import the WSGI app named
``package.module.app`` on first use, inside the request's sandbox, and run every request in a
sandbox scope through :class:`SandboxMiddleware`.
"""

from __future__ import annotations

import importlib
import logging
import mimetypes
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .appyaml import AppConfig, Handler, parse_wsgi_reference
from .middleware import SandboxMiddleware
from .policy import Policy
from .report import Violation
from .sandbox import Sandbox

logger = logging.getLogger("gae_sandbox.devserver")

StartResponse = Callable[..., Any]


class DevServerApp:
    """A WSGI app for a whole ``app.yaml``: routing, static files, sandboxed scripts."""

    def __init__(self, config: AppConfig, policy: Policy | None = None) -> None:
        self.config = config
        self.policy = policy or config.policy()
        self.sandbox = Sandbox(self.policy)
        self.scripts = SandboxMiddleware(self._run_script, self.policy,
                                         threadsafe=config.threadsafe, sandbox=self.sandbox)
        self._apps: dict[str, Callable[..., Any]] = {}
        self._load_lock = threading.Lock()
        if config.app_root not in sys.path:
            sys.path.insert(0, config.app_root)

    @property
    def violations(self) -> list[Violation]:
        return self.sandbox.violations

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        started = time.monotonic()
        log = _AccessLog(environ, start_response, started)
        try:
            result = self._dispatch(environ, log.start_response)
        except BaseException:
            log.finish(error=True)
            raise
        return log.wrap(result)

    def _dispatch(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = environ.get("PATH_INFO", "") or "/"
        for handler in self.config.handlers:
            match = handler.pattern.fullmatch(path)
            if match is None:
                continue
            if handler.script is not None:
                environ["gae_sandbox.script"] = self._script_of(handler)
                return self.scripts(environ, start_response)
            return self._static(handler, match, environ, start_response)
        if self.config.wsgi_app is not None:  # python3: what no handler takes goes to the app
            environ["gae_sandbox.script"] = self.config.wsgi_app
            return self.scripts(environ, start_response)
        return _plain(start_response, "404 Not Found", b"Not found\n")

    def _script_of(self, handler: Handler) -> str:
        if handler.script == "auto" and self.config.wsgi_app is not None:
            return self.config.wsgi_app
        assert handler.script is not None
        return handler.script

    # -- scripts (run inside the request's sandbox) ----------------------------------------

    def _run_script(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        script: str = environ.pop("gae_sandbox.script")
        return self._load(script)(environ, start_response)

    def _load(self, script: str) -> Callable[..., Any]:
        """The WSGI app ``package.module.app`` (python27 scripts) or ``module:app`` /
        ``module:factory()`` (python3 entrypoints), imported inside the request's sandbox."""
        app = self._apps.get(script)
        if app is None:
            try:
                module_name, name, args, kwargs = parse_wsgi_reference(script)
            except ValueError as error:
                raise LookupError(f"app.yaml script: {error}") from None
            factory = script.rstrip().endswith(")")
            module = importlib.import_module(module_name)  # app code: sandboxed
            app = getattr(module, name, None)
            if factory and callable(app):
                app = app(*args, **kwargs)  # gunicorn's module:create_app(...)
            if not callable(app):
                raise LookupError(f"app.yaml script {script!r}: {module_name} has no WSGI "
                                  f"callable {name!r}")
            with self._load_lock:
                self._apps.setdefault(script, app)
        return app

    # -- static files (served by the server, not the app) ----------------------------------

    def _static(self, handler: Handler, match: Any, environ: dict[str, Any],
                start_response: StartResponse) -> Any:
        root = self.config.app_root
        if handler.static_dir is not None:
            base = os.path.realpath(os.path.join(root, handler.static_dir))
            relative = match.group(1) if match.groups() else ""
            target = os.path.realpath(os.path.join(base, relative))
            allowed = target.startswith(base + os.sep)
        else:
            assert handler.static_files is not None
            try:
                relative = match.expand(handler.static_files)
            except (re.error, IndexError) as error:
                logger.error("static_files %r: %s", handler.static_files, error)
                return _plain(start_response, "500 Internal Server Error",
                              b"500 Internal Server Error\n")
            target = os.path.realpath(os.path.join(root, relative))
            allowed = target.startswith(root + os.sep) and (
                handler.upload is None or _matches(handler.upload, os.path.relpath(target, root))
            )
        if not allowed or not os.path.isfile(target):
            return _plain(start_response, "404 Not Found", b"Not found\n")
        mime = handler.mime_type or mimetypes.guess_type(target)[0] or "application/octet-stream"
        size = os.path.getsize(target)
        headers = [("Content-Type", mime), ("Content-Length", str(size)),
                   *handler.http_headers]
        start_response("200 OK", headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return [b""]
        file = open(target, "rb")  # noqa: SIM115 - closed by the server through the wrapper
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(file, 65536)
        return _FileIterator(file)


def _matches(pattern: str, text: str) -> bool:
    try:
        return re.fullmatch(pattern, text) is not None
    except re.error:
        return False


def _plain(start_response: StartResponse, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


class _FileIterator:
    def __init__(self, file: Any) -> None:
        self.file = file

    def __iter__(self) -> Any:
        return iter(lambda: self.file.read(65536), b"")

    def close(self) -> None:
        self.file.close()


class _AccessLog:
    """One log line per request: method, path, status, bytes, milliseconds."""

    def __init__(self, environ: dict[str, Any], start_response: StartResponse,
                 started: float) -> None:
        self.environ = environ
        self.server_start_response = start_response
        self.started = started
        self.status = "-"
        self.sent = 0
        self.logged = False

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.status = status.split(" ", 1)[0]
        if exc_info is not None:
            return self.server_start_response(status, headers, exc_info)
        return self.server_start_response(status, headers)

    def wrap(self, result: Iterable[bytes]) -> Any:
        if isinstance(result, list):
            self.sent = sum(len(chunk) for chunk in result)
            self.finish()
            return result
        return _LoggedBody(self, result)

    def finish(self, error: bool = False) -> None:
        if self.logged:
            return
        self.logged = True
        elapsed = (time.monotonic() - self.started) * 1000
        query = self.environ.get("QUERY_STRING")
        path = self.environ.get("PATH_INFO", "") + (f"?{query}" if query else "")
        logger.info('%s "%s %s" %s %dB %.1fms%s', self.environ.get("REMOTE_ADDR", "-"),
                    self.environ.get("REQUEST_METHOD", "-"), path,
                    "500" if error and self.status == "-" else self.status, self.sent,
                    elapsed, " (error)" if error else "")


class _LoggedBody:
    def __init__(self, log: _AccessLog, result: Iterable[bytes]) -> None:
        self.log = log
        self.result = result
        self.iterator: Any = None

    def __iter__(self) -> _LoggedBody:
        return self

    def __next__(self) -> bytes:
        if self.iterator is None:
            self.iterator = iter(self.result)
        chunk = next(self.iterator)
        self.log.sent += len(chunk)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.log.finish()
