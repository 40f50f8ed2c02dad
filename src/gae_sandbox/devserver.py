"""The development server: an ``app.yaml`` app served the way the runtime served it.

Requests are routed by ``handlers`` in order; static handlers are served by the server itself
(host code, like the runtime's static file servers); script handlers import the WSGI app named
``package.module.app`` on first use, inside the request's sandbox, and run every request in a
sandbox scope through :class:`SandboxMiddleware`.
"""

from __future__ import annotations

import hashlib
import html
import http.cookies
import importlib
import logging
import mimetypes
import os
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import Any

from .appyaml import AppConfig, Handler, is_within, parse_wsgi_reference
from .middleware import SandboxMiddleware
from .policy import Policy
from .report import Violation
from .sandbox import Sandbox

logger = logging.getLogger("gae_sandbox.devserver")

StartResponse = Callable[..., Any]

#: What python27 apps test (``SERVER_SOFTWARE.startswith("Development")``) to tell the SDK's
#: development server from production (``Google App Engine/x.y``).
SERVER_SOFTWARE = "Development/2.0"
#: The module the python27 runtime imported before an app's scripts, from the app's folder.
APPENGINE_CONFIG = "appengine_config"


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
        #: One id per server process (a gunicorn worker makes its own app): an instance.
        self.instance_id = os.urandom(16).hex()
        config_file = os.path.realpath(os.path.join(config.app_root, f"{APPENGINE_CONFIG}.py"))
        # one that skip_files leaves out was never deployed: the runtime had none
        self._appengine_config = config.preset == "python27" and os.path.isfile(
            config_file) and self.policy.hidden_by(config_file) is None
        if config.app_root not in sys.path:
            sys.path.insert(0, config.app_root)
        for folder in reversed(config.module_paths):  # the entrypoint's --chdir/--pythonpath
            if folder not in sys.path:
                sys.path.insert(0, folder)

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
        path = request_path(environ)
        if path == LOGIN_PATH:
            return _login_page(environ, start_response)
        user = _signed_in_user(environ)
        _set_user(environ, user)
        host = str(environ.get("HTTP_HOST") or "")
        if host and environ.get("SERVER_NAME") in (None, "", "waitress.invalid"):
            environ["SERVER_NAME"] = _host_name(host)  # the host the client used
        if self.config.preset == "python27":  # what the SDK's server told python27 apps
            application = str(self.config.extra.get("application") or "app")
            environ.setdefault("APPLICATION_ID", f"dev~{application}")
            environ.setdefault("CURRENT_VERSION_ID",
                               f"{self.config.extra.get('version') or '1'}.1")
            environ.setdefault("CURRENT_MODULE_ID", self.config.service)
            environ.setdefault("DEFAULT_VERSION_HOSTNAME", host or (
                f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"))
            environ.setdefault("INSTANCE_ID", self.instance_id)
            environ.setdefault("REQUEST_LOG_ID", os.urandom(16).hex())
            environ.setdefault("HTTPS", "on" if environ.get("wsgi.url_scheme") == "https"
                               else "off")
        for handler in self.config.handlers:
            match = handler.pattern.fullmatch(path)
            if match is None:
                continue
            if handler.login != "optional":
                refused = _login_refusal(handler, user, environ, start_response)
                if refused is not None:
                    return refused
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
        if self.config.preset == "python27":
            # the app's copy only: SandboxMiddleware has read the server's own (gunicorn's
            # name there decides how a stuck worker is replaced)
            environ["SERVER_SOFTWARE"] = SERVER_SOFTWARE
        else:  # the python3 runtime's per-instance variables, unless the process sets them
            os.environ.setdefault("PORT", str(environ.get("SERVER_PORT") or "8080"))
            os.environ.setdefault("GAE_INSTANCE", self.instance_id)
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
            config = self._import_appengine_config()
            module = importlib.import_module(module_name)  # app code: sandboxed
            app = getattr(module, name, None)
            if factory and callable(app):
                app = app(*args, **kwargs)  # gunicorn's module:create_app(...)
            if not callable(app):
                raise LookupError(f"app.yaml script {script!r}: {module_name} has no WSGI "
                                  f"callable {name!r}")
            add_middleware = getattr(config, "webapp_add_wsgi_middleware", None)
            if callable(add_middleware):  # as the python27 runtime wrapped each script
                app = add_middleware(app)
            with self._load_lock:
                self._apps.setdefault(script, app)
        return app

    def _import_appengine_config(self) -> Any:
        """python27: the app's ``appengine_config.py``, imported before its scripts (in the
        request's sandbox) as the runtime did: apps use it to put a vendored ``lib/`` on
        ``sys.path`` and to wrap their WSGI apps (``webapp_add_wsgi_middleware``)."""
        if not self._appengine_config:
            return None
        try:
            return importlib.import_module(APPENGINE_CONFIG)  # app code: sandboxed
        except ImportError as error:
            missing = error.name or ""
            if missing not in ("google", "google.appengine") and not missing.startswith(
                    "google.appengine."):
                raise
            raise ImportError(
                f"{APPENGINE_CONFIG}.py: {error}: gae_sandbox does not provide the App Engine "
                "SDK's google.appengine package (so not google.appengine.ext.vendor either). "
                "Put the vendored folder on sys.path yourself in appengine_config.py instead "
                "of vendor.add('lib'): import os, sys; sys.path.insert(0, os.path.join("
                "os.path.dirname(os.path.abspath(__file__)), 'lib')) (README: the development "
                "server, appengine_config.py)", name=missing) from error

    # -- static files (served by the server, not the app) ----------------------------------

    def _static(self, handler: Handler, match: Any, environ: dict[str, Any],
                start_response: StartResponse) -> Any:
        try:
            return self._serve_static(handler, match, environ, start_response)
        except ValueError:  # a NUL in the path: no such file
            return _plain(start_response, "404 Not Found", b"Not found\n")

    def _serve_static(self, handler: Handler, match: Any, environ: dict[str, Any],
                      start_response: StartResponse) -> Any:
        root = os.path.realpath(self.config.app_root)  # as the targets: through any symlink
        if handler.static_dir is not None:
            base = os.path.realpath(os.path.join(root, handler.static_dir))
            relative = match.group(1) if match.groups() else ""
            target = os.path.realpath(os.path.join(base, relative))
            allowed = target != base and is_within(base, target)
        else:
            assert handler.static_files is not None
            try:
                relative = match.expand(handler.static_files)
            except (re.error, IndexError) as error:
                logger.error("static_files %r: %s", handler.static_files, error)
                return _plain(start_response, "500 Internal Server Error",
                              b"500 Internal Server Error\n")
            target = os.path.realpath(os.path.join(root, relative))
            allowed = target != root and is_within(root, target) and (
                handler.upload is None or _matches(handler.upload, os.path.relpath(target, root))
            )
        # skip_files hides static files too: the SDK never uploaded them
        if not allowed or self.policy.skipped(target) or not os.path.isfile(target):
            return _plain(start_response, "404 Not Found", b"Not found\n")
        mime = handler.mime_type or mimetypes.guess_type(target)[0]
        # the process-wide table the app can add to: an exact str copy, no method of its own
        mime = str.__str__(mime) if isinstance(mime, str) else "application/octet-stream"
        info = os.stat(target)
        etag = f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
        headers = [("Content-Type", mime), ("Content-Length", str(info.st_size)),
                   ("ETag", etag), ("Last-Modified", formatdate(info.st_mtime, usegmt=True))]
        if handler.expiration is not None:  # as App Engine's front end serves static files
            headers += [("Cache-Control", f"public, max-age={handler.expiration}"),
                        ("Expires", formatdate(time.time() + handler.expiration, usegmt=True))]
        own = {name.lower() for name, _ in handler.http_headers}  # app.yaml's win
        headers = [(name, value) for name, value in headers if name.lower() not in own]
        headers += handler.http_headers
        if _etag_matches(environ.get("HTTP_IF_NONE_MATCH"), etag):
            start_response("304 Not Modified",
                           [(name, value) for name, value in headers
                            if name.lower() not in ("content-type", "content-length")])
            return [b""]
        start_response("200 OK", headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            return [b""]
        file = open(target, "rb")  # noqa: SIM115 - closed by the server through the wrapper
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(file, 65536)
        return _FileIterator(file)


def request_path(environ: dict[str, Any]) -> str:
    """The URL path as text: a WSGI server hands ``PATH_INFO`` over as the request's bytes
    decoded as latin-1 (PEP 3333), so ``/caf%C3%A9`` arrives as ``/cafÃ©``; handlers'
    ``url:`` patterns and file names are UTF-8 text. Bytes that are not UTF-8 stay as given."""
    path = environ.get("PATH_INFO", "")
    if not isinstance(path, str) or not path:
        return "/"
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return path


def _etag_matches(header: Any, etag: str) -> bool:
    """``If-None-Match``: ``*`` or a list of tags, weak ones (``W/"..."``) included."""
    if not isinstance(header, str):
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


# --- sign-in, as the runtime's development server emulated it ---------------------------------

LOGIN_PATH = "/_ah/login"
LOGIN_COOKIE = "dev_appserver_login"
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,190}")


def _signed_in_user(environ: dict[str, Any]) -> tuple[str, bool] | None:
    """(email, is_admin) from the sign-in cookie, or None; a malformed cookie is no user."""
    cookies = http.cookies.SimpleCookie()
    try:
        cookies.load(str(environ.get("HTTP_COOKIE", "")))
    except http.cookies.CookieError:
        return None
    morsel = cookies.get(LOGIN_COOKIE)
    if morsel is None:
        return None
    email, _, admin = morsel.value.partition(":")
    if not _EMAIL.fullmatch(email) or admin not in ("True", "False"):
        return None
    return email, admin == "True"


def _user_id(email: str) -> str:
    """A stable numeric id per address, 21 digits like the runtime's."""
    digest = hashlib.md5(email.lower().encode(), usedforsecurity=False).digest()
    return "1" + "".join(f"{byte:02d}" for byte in digest)[:20]


def _set_user(environ: dict[str, Any], user: tuple[str, bool] | None) -> None:
    """The variables the Users API reads: python27's CGI ones and the python3 runtime's
    ``X-Appengine-User-*`` headers. The client's own such headers are dropped first, as
    App Engine's front end drops them: only the sign-in cookie names a user."""
    for key in [k for k in environ if k.startswith(("HTTP_X_APPENGINE_USER_",
                                                    "HTTP_X_APPENGINE_AUTH_DOMAIN"))]:
        del environ[key]
    email, admin = user or ("", False)
    fields = {"EMAIL": email, "ID": _user_id(email) if email else "",
              "NICKNAME": email.partition("@")[0], "IS_ADMIN": "1" if admin else "0"}
    environ.update({f"USER_{key}": value for key, value in fields.items()},
                   USER_ORGANIZATION="", AUTH_DOMAIN="gmail.com")
    if user is not None:  # the same, as the python3 runtime's front end sends them
        environ.update({f"HTTP_X_APPENGINE_USER_{key}": value for key, value in fields.items()},
                       HTTP_X_APPENGINE_AUTH_DOMAIN="gmail.com")


def _login_refusal(handler: Handler, user: tuple[str, bool] | None,
                   environ: dict[str, Any], start_response: StartResponse) -> Any:
    """The answer to a request a ``login:`` handler does not let through, or None."""
    if user is not None and (handler.login == "required" or user[1]):
        return None
    if user is not None:  # signed in, not an admin
        return _plain(start_response, "401 Unauthorized",
                      f"Current logged in user {user[0]} is not authorized to view this "
                      "page.\n".encode())
    if handler.auth_fail_action == "unauthorized":
        return _plain(start_response, "401 Unauthorized", b"Login required to view page.\n")
    here = urllib.parse.quote(request_path(environ))
    if environ.get("QUERY_STRING"):
        here += "?" + str(environ["QUERY_STRING"])
    location = f"{LOGIN_PATH}?continue={urllib.parse.quote(here, safe='')}"
    start_response("302 Found", [("Location", location), ("Content-Length", "0")])
    return [b""]


def _same_site(target: str) -> str:
    """``continue=``, kept only as a path on this server (no open redirect, no header
    injection)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return urllib.parse.quote(target, safe="/?&=%#:@!$'()*+,;~-._")  # ASCII, no CR/LF


def _login_page(environ: dict[str, Any], start_response: StartResponse) -> Any:
    """``/_ah/login``: a form to sign in as any address (an admin or not), and sign-out."""
    query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")))
    target = _same_site(query.get("continue", ["/"])[0])
    action = query.get("action", [""])[0].lower()
    if action in ("login", "logout"):
        email = query.get("email", [""])[0].strip()
        cookie = http.cookies.SimpleCookie()
        if action == "login":
            if not _EMAIL.fullmatch(email):
                return _plain(start_response, "400 Bad Request",
                              b"Sign in with an email address like test@example.com\n")
            admin = query.get("admin", [""])[0] in ("True", "true", "on", "1")
            cookie[LOGIN_COOKIE] = f"{email}:{admin}"
        else:
            cookie[LOGIN_COOKIE] = ""
            cookie[LOGIN_COOKIE]["max-age"] = 0
        cookie[LOGIN_COOKIE]["path"] = "/"
        start_response("302 Found", [("Location", target), ("Content-Length", "0"),
                                     ("Set-Cookie", cookie[LOGIN_COOKIE].OutputString())])
        return [b""]
    user = _signed_in_user(environ)
    page = _LOGIN_FORM.format(continue_=html.escape(target, quote=True),
                              user=html.escape(user[0]) if user else "nobody")
    body = page.encode()
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]


_LOGIN_FORM = """<!doctype html>
<title>Sign in (gae-sandbox development server)</title>
<p>Signed in: {user}. This server emulates App Engine's sign-in: any address works.</p>
<form action="/_ah/login" method="get">
<input type="hidden" name="continue" value="{continue_}">
<label>Email <input name="email" value="test@example.com"></label>
<label><input type="checkbox" name="admin" value="True"> Sign in as administrator</label>
<button name="action" value="Login">Sign in</button>
<button name="action" value="Logout">Sign out</button>
</form>
"""


def _host_name(host: str) -> str:
    """``HTTP_HOST`` without its port (``[::1]:8080`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


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
        path = request_path(self.environ) + (f"?{query}" if query else "")
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
