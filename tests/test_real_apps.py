"""Real libraries and real app.yaml files: ``requests`` against a loopback origin, callbacks
libraries register at import time, python3 app.yaml files served unmodified, and the whole
Policy from flags and policy files.

Every network test talks only to its own origin on 127.0.0.1, which counts the requests it
answered (a refused request leaves the count unchanged) and stops with the test.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gae_sandbox import (
    NetworkRefused,
    Policy,
    PolicyConfigError,
    Sandbox,
    SandboxMiddleware,
    build_policy,
    read_policy_file,
)
from gae_sandbox.loaders import add_policy_arguments, field_specs, flag_settings
from loopback import CLI, Server

requests = pytest.importorskip("requests")


class Origin:
    """A loopback HTTP server that answers ``remote body`` and counts what it answered."""

    def __init__(self) -> None:
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                origin.answered += 1
                body = b"remote body"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.answered = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


def run_child(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


# --- requests -------------------------------------------------------------------------------


def test_requests_imported_fresh_inside_a_sandbox_fetches_an_allowed_host(
        origin: Origin, app_root: Path) -> None:
    """In a fresh interpreter, so that requests, urllib3 and certifi are first imported inside
    the sandbox (certifi registers an exit handler then); twice, as two requests would."""
    result = run_child(f"""
        from gae_sandbox import Policy, Sandbox
        policy = Policy.python27(app_root={str(app_root)!r},
                                 allowed_hosts=("127.0.0.1:{origin.port}",))
        for _ in range(2):
            with Sandbox(policy):
                import requests
                print(requests.get({origin.url!r}, timeout=10).text)
                print(type(requests.exceptions.ConnectionError).__name__)
        """, app_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["remote", "body", "type", "remote", "body", "type"]
    assert origin.answered == 2
    assert "Traceback" not in result.stderr


def test_requests_to_a_host_not_allowed_reaches_nothing(origin: Origin, app_root: Path) -> None:
    policy = Policy.python27(app_root=app_root, deadline=None)
    with Sandbox(policy):
        with pytest.raises(requests.exceptions.ConnectionError) as caught:
            requests.get(origin.url, timeout=10)
    assert isinstance(caught.value.__context__, NetworkRefused) or "refused" in str(caught.value)
    assert origin.answered == 0
    assert requests.get(origin.url, timeout=10).text == "remote body"  # control
    assert origin.answered == 1


def test_requests_through_the_middleware(origin: Origin, app_root: Path) -> None:
    def app(environ: dict, start_response: object) -> list[bytes]:
        body = requests.get(origin.url, timeout=10).content
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [body]

    policy = Policy.python27(app_root=app_root, allowed_hosts=(f"127.0.0.1:{origin.port}",))
    wrapped = SandboxMiddleware(app, policy)
    statuses: list[str] = []
    body = b"".join(wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/"},
                            lambda status, headers, exc_info=None: statuses.append(status)))
    assert (statuses, body, origin.answered) == (["200 OK"], b"remote body", 1)


def test_a_failed_import_leaves_no_half_built_package(app_on_path: Path,
                                                      policy: Policy) -> None:
    """A package whose ``__init__`` imports a submodule and then a refused module: the next
    import fails the same way, not on a half-built package."""
    package = app_on_path / "halfpkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import part\nimport mmap\n")
    (package / "part.py").write_text("VALUE = 1\n")
    for _ in range(2):
        with Sandbox(policy):
            with pytest.raises(ImportError, match="mmap"):
                import halfpkg  # noqa: F401
        assert "halfpkg" not in sys.modules
        assert "halfpkg.part" not in sys.modules


def test_ssl_only_with_its_library(app_root: Path) -> None:
    with Sandbox(Policy.python27(app_root=app_root)):
        with pytest.raises(ImportError, match=r"libraries: - name: ssl"):
            import ssl  # noqa: F401
    with Sandbox(Policy.python27(app_root=app_root, allowed_c_extensions=("ssl",))):
        import ssl

        assert ssl.SSLContext
    with Sandbox(Policy.python27(app_root=app_root)):
        import select

        assert select.select


# --- callbacks registered at import time run later, sandboxed --------------------------------


def test_exit_handler_registered_in_a_sandbox_runs_sandboxed_at_exit(tmp_path: Path,
                                                                    app_root: Path) -> None:
    target = tmp_path / "written-at-exit"
    registering = f"""
        import atexit
        def later():
            from gae_sandbox import current_sandbox
            print("sandboxed at exit:", current_sandbox() is not None, flush=True)
            open({str(target)!r}, "w").close()
        """
    sandboxed = run_child(registering + f"""
        from gae_sandbox import Policy, Sandbox
        with Sandbox(Policy.python27(app_root={str(app_root)!r})):
            atexit.register(later)
        """, app_root)
    assert "sandboxed at exit: True" in sandboxed.stdout
    assert "FileWriteRefused" in sandboxed.stderr
    assert not target.exists()
    control = run_child(registering + "atexit.register(later)\n", app_root)
    assert "sandboxed at exit: False" in control.stdout
    assert target.exists()


def test_logging_handler_added_in_a_sandbox_emits_sandboxed(policy: Policy,
                                                             tmp_path: Path) -> None:
    target = tmp_path / "log-written"
    seen: list[bool] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            from gae_sandbox import current_sandbox

            seen.append(current_sandbox() is not None)
            try:
                target.write_text(record.getMessage())
            except PermissionError:
                pass

    logger = logging.getLogger("gae_test_registered")
    handler = Handler()
    sandbox = Sandbox(policy)
    with sandbox:
        logger.addHandler(handler)
    try:
        logger.error("host line")  # host code, after the request
        assert seen == [True] and not target.exists()
        assert [v.kind for v in sandbox.violations] == ["file_write"]
        logger.removeHandler(handler)  # the host removes it by the object the app added
        assert logger.handlers == []
        logger.addHandler(handler)  # control: added by the host, it writes
        logger.error("host line")
        assert seen == [True, False] and target.read_text() == "host line"
    finally:
        logger.removeHandler(handler)


def test_hooks_and_finalizers_run_sandboxed(policy: Policy) -> None:
    import gc
    import weakref

    from gae_sandbox import current_sandbox

    calls: list[tuple[str, bool]] = []

    def hook(*args: object) -> None:
        calls.append(("excepthook", current_sandbox() is not None))

    class Kept:
        pass

    kept = Kept()
    saved = sys.excepthook
    try:
        with Sandbox(policy):
            sys.excepthook = hook
            weakref.finalize(kept, lambda: calls.append(("finalize",
                                                         current_sandbox() is not None)))
        sys.excepthook(RuntimeError, RuntimeError("x"), None)
        del kept
        gc.collect()
    finally:
        sys.excepthook = saved
    assert calls == [("excepthook", True), ("finalize", True)]


@pytest.mark.parametrize("held", ["deadline timer", "report", "root descriptors"])
def test_finalizer_the_collector_runs_inside_the_sandboxs_own_lock_completes(
        tmp_path: Path, held: str) -> None:
    """The collector runs finalizers at any allocation, including one made while this library
    holds a lock of its own; the finalizer opens a scope, which takes the same locks again.
    (Seen as a CI run that never ended.) Run in a child: a deadlock would hang it."""
    (tmp_path / "page.html").write_text("<p>")
    result = run_child(f"""
        import faulthandler, gc, weakref
        faulthandler.dump_traceback_later(30, exit=True)
        from gae_sandbox import Policy, Sandbox
        from gae_sandbox.deadline import TIMER
        from gae_sandbox.filesystem import root_descriptors

        class Node:
            pass

        ran = []

        def later():  # opens a scope, reads an app file, has a write refused (recorded)
            with open("page.html") as page:
                ran.append(page.read())
            try:
                open("written.txt", "w")
            except PermissionError:
                ran.append("refused")

        sandbox = Sandbox(Policy.python27(app_root={str(tmp_path)!r}))
        with sandbox:
            node = Node()
            node.cycle = node
            weakref.finalize(node, later)
            del node
        lock = {{"deadline timer": TIMER._lock, "report": sandbox.report._lock,
                 "root descriptors": root_descriptors._lock}}[{held!r}]
        with lock:
            gc.collect()
        print(*ran, len(sandbox.violations))
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["<p>", "refused", "1"]
    assert not (tmp_path / "written.txt").exists()


def test_app_code_never_runs_on_the_deadline_timer(policy: Policy) -> None:
    """A logging handler the app adds is reached by the timer's own hard-deadline log line:
    it runs, sandboxed, on a thread of its own, so a handler that blocks cannot stop the one
    timer every request's deadline depends on."""
    import time

    from gae_sandbox import current_sandbox
    from gae_sandbox.deadline import TIMER
    from gae_sandbox.errors import DeadlineExceededError, HardDeadlineExceeded

    seen: list[tuple[int, bool]] = []
    arrived = threading.Event()

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "still running" in record.getMessage():  # the timer's line
                seen.append((threading.get_ident(), current_sandbox() is not None))
                arrived.set()

    host_logger = logging.getLogger("gae_sandbox")
    before = list(host_logger.handlers)
    short = policy.replace(deadline=0.05, hard_deadline_grace=0.05)

    def spin(seconds: float) -> None:  # pure Python: only the timer can interrupt it
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    try:
        with pytest.raises(HardDeadlineExceeded):
            with Sandbox(short):
                host_logger.addHandler(Recorder())
                for _ in range(3):  # an app that catches the deadline and carries on
                    try:
                        spin(5)
                    except DeadlineExceededError:
                        pass
    finally:
        host_logger.handlers[:] = before
    assert arrived.wait(10)
    timer = TIMER._thread
    assert timer is not None
    assert seen and all(ident != timer.ident and sandboxed for ident, sandboxed in seen)


def test_objects_and_hooks_the_app_leaves_in_sys_warnings_logging_run_sandboxed(
        policy: Policy, tmp_path: Path) -> None:
    """``sys.stdout``, ``warnings.showwarning`` and ``logging.lastResort`` set by the app are
    called later by host code (a print, a warning, a log line no handler takes): they run in
    the app's sandbox, where its write is refused. Putting back the host's own value (what
    ``contextlib.redirect_stdout`` does) leaves exactly that value, unwrapped."""
    import contextlib
    import io
    import warnings

    target = tmp_path / "written.txt"

    def write_target(*args: object, **kwargs: object) -> int:
        with open(target, "w") as file:
            file.write("x")
        return 0

    class Out:
        write = staticmethod(write_target)

        def flush(self) -> None:
            pass

    class LastResort(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            write_target()

    write_target()  # control: plain Python writes the file
    assert target.exists()
    target.unlink()

    host_stdout, host_show, host_last = sys.stdout, warnings.showwarning, logging.lastResort
    orphan = logging.getLogger("gae_sandbox.test.orphan")
    orphan.propagate, level = False, orphan.level
    try:
        with Sandbox(policy):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                print("inside")
            assert buffer.getvalue() == "inside\n"
            assert sys.stdout is host_stdout  # put back as it was, not wrapped
            host_stdin = sys.stdin
            sys.stdin = io.StringIO("a\nb\n")  # the request uses its own object as it is
            assert isinstance(sys.stdin, io.StringIO) and list(sys.stdin) == ["a\n", "b\n"]
            sys.stdin = host_stdin
            sys.stdout = Out()
            warnings.showwarning = write_target
            logging.lastResort = LastResort()
        for host_call in (lambda: print("host line"),
                          lambda: warnings.warn("host warning", UserWarning, stacklevel=1),
                          lambda: orphan.error("no handler takes this")):
            with pytest.raises(PermissionError):
                host_call()
    finally:
        sys.stdout, warnings.showwarning, logging.lastResort = host_stdout, host_show, host_last
        orphan.propagate, orphan.level = True, level
    assert not target.exists()


# --- python3 app.yaml files -----------------------------------------------------------------

PYTHON3_MAIN = """\
import os
import tempfile

def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    status, body = "200 OK", b""
    if path == "/tmp":
        with tempfile.NamedTemporaryFile("w+", suffix=".txt") as file:
            file.write("in /tmp")
            file.flush()
            file.seek(0)
            body = file.read().encode()
    elif path == "/write":
        try:
            with open("written.txt", "w") as file:
                file.write("x")
            body = b"wrote"
        except PermissionError as error:
            status, body = "403 Forbidden", str(error).encode()
    elif path == "/env":
        body = (os.environ.get("GAE_ENV", "") + " " + os.environ.get("GAE_RUNTIME", "")).encode()
    else:
        body = ("hello from " + path).encode()
    start_response(status, [("Content-Type", "text/plain")])
    return [body]
"""


@pytest.fixture
def python3_app(tmp_path: Path) -> Path:
    app = tmp_path / "p3"
    (app / "static").mkdir(parents=True)
    (app / "static" / "site.css").write_text("body { color: red }\n")
    (app / "main.py").write_text(PYTHON3_MAIN)
    return app


@pytest.mark.parametrize("app_yaml", [
    pytest.param("runtime: python312\n", id="no-handlers"),
    pytest.param("runtime: python313\nentrypoint: gunicorn -b :$PORT main:app\n"
                 "handlers:\n- url: /static\n  static_dir: static\n- url: /.*\n  script: auto\n",
                 id="static_dir-and-script-auto"),
])
def test_unmodified_python3_app_yaml_is_served(python3_app: Path, tmp_path: Path,
                                               app_yaml: str) -> None:
    (python3_app / "app.yaml").write_text(app_yaml)
    before = sorted(p.name for p in python3_app.iterdir())
    server = Server(python3_app, log=tmp_path / "serve.log")
    try:
        assert server.get("/") == (200, b"hello from /")
        assert server.get("/tmp") == (200, b"in /tmp")
        status, body = server.get("/write")
        assert status == 403 and b"read-only except /tmp" in body
        assert server.get("/env")[1].startswith(b"standard python31")
        if "static_dir" in app_yaml:
            assert server.get("/static/site.css") == (200, b"body { color: red }\n")
    finally:
        output = server.stop()
    assert sorted(p.name for p in python3_app.iterdir() if p.name != "__pycache__") == sorted(
        n for n in before if n != "__pycache__"), output


def test_python3_app_yaml_sets_the_python3_preset(python3_app: Path) -> None:
    (python3_app / "app.yaml").write_text("runtime: python312\n")
    loaded = build_policy(python3_app)
    assert loaded.preset == "python3"
    assert loaded.policy.filesystem == "tmp" and loaded.policy.deadline == 600
    assert loaded.app_config is not None and loaded.app_config.wsgi_app == "main:app"


# --- the whole Policy from flags and files --------------------------------------------------


def parse_flags(*argv: str) -> dict:
    import argparse

    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    return flag_settings(parser.parse_args(list(argv)))


def test_every_policy_field_has_a_flag_and_a_file_key() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_policy_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for name, spec in field_specs().items():
        if name == "app_root":
            continue
        assert spec.flag in flags, name


def test_precedence_flag_over_file_over_app_yaml_over_preset(app_root: Path,
                                                             tmp_path: Path) -> None:
    (app_root / "app.yaml").write_text(
        "runtime: python27\nhandlers:\n- url: /.*\n  script: main.app\n"
        "libraries:\n- name: lxml\n  version: latest\n")
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('deadline = 30\nallowed_hosts = ["api.example.com:443"]\n'
                           'readable_paths = ["."]\nmode = "report"\n')
    loaded = build_policy(app_root, policy_file=str(policy_file),
                          flags=parse_flags("--deadline", "5", "--allow-host", "127.0.0.1:80",
                                            "--unblock-module", "sqlite3"))
    policy = loaded.policy
    assert policy.deadline == 5.0  # flag over the file's 30 and the preset's 60
    assert policy.allowed_hosts == ("api.example.com:443", "127.0.0.1:80")  # flags add
    assert policy.mode == "report"  # the file
    assert policy.readable_paths == (str(tmp_path),)  # relative to the file's folder
    assert "lxml" in policy.allowed_c_extensions  # app.yaml
    assert "sqlite3" not in policy.blocked_modules and "ctypes" in policy.blocked_modules
    cleared = build_policy(app_root, policy_file=str(policy_file),
                           flags=parse_flags("--clear", "allowed_hosts"))
    assert cleared.policy.allowed_hosts == ()


def test_pyproject_table_is_the_policy_file(app_root: Path) -> None:
    (app_root / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.gae-sandbox]\nfilesystem = "memory"\n'
        'env_variables = { STAGE = "test" }\n')
    policy = build_policy(app_root).policy
    assert policy.filesystem == "memory" and policy.env_variables == (("STAGE", "test"),)
    assert read_policy_file(app_root / "pyproject.toml")["filesystem"] == "memory"


@pytest.mark.parametrize(("text", "fragments"), [
    ('allowed_host = ["x:1"]\n', ["unknown key 'allowed_host'", "allowed_hosts"]),
    ('filesystem = "rw"\n', ["key filesystem", "'readonly'", "'memory'", "'tmp'"]),
    ('deadline = "soon"\n', ["key deadline", "positive number of seconds"]),
    ('allowed_hosts = ["no-port"]\n', ["key allowed_hosts", "host:port"]),
    ('allow_threads = "yes"\n', ["key allow_threads", "true or false"]),
    ("deadline = \n", ["not a TOML file"]),
])
def test_bad_policy_file_names_file_key_and_accepted_values(app_root: Path, tmp_path: Path,
                                                            text: str,
                                                            fragments: list[str]) -> None:
    policy_file = tmp_path / "bad.toml"
    policy_file.write_text(text)
    with pytest.raises(PolicyConfigError) as caught:
        build_policy(app_root, policy_file=str(policy_file))
    message = str(caught.value)
    assert message.startswith(str(policy_file)) and len(message) < 1000
    for fragment in fragments:
        assert fragment in message


def test_bad_flag_value_names_the_flag(app_root: Path) -> None:
    with pytest.raises(PolicyConfigError, match=r"--allow-host: Policy.allowed_hosts"):
        build_policy(app_root, flags=parse_flags("--allow-host", "nohost"))
    with pytest.raises(PolicyConfigError, match=r"--deadline 'x'"):
        parse_flags("--deadline", "x")


def test_refusal_names_its_flag_and_key(app_root: Path, listener: object) -> None:
    with Sandbox(Policy.python27(app_root=app_root)):
        with pytest.raises(NetworkRefused) as caught:
            import socket

            socket.create_connection(("127.0.0.1", listener.port), timeout=5)  # type: ignore[attr-defined]
    assert "--allow-host HOST:PORT" in str(caught.value)
    assert "policy file key allowed_hosts" in str(caught.value)


NETWORK_APP = """\
import requests

def app(environ, start_response):
    body = requests.get(environ["QUERY_STRING"], timeout=10).content
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""


@pytest.mark.parametrize("how", ["flag", "policy-file"])
def test_serve_reaches_an_allowed_host_from_the_command_line(origin: Origin, tmp_path: Path,
                                                             how: str) -> None:
    app = tmp_path / "netapp"
    app.mkdir()
    (app / "app.yaml").write_text("runtime: python27\nhandlers:\n- url: /.*\n  script: main.app\n")
    (app / "main.py").write_text(NETWORK_APP)
    allow = f"127.0.0.1:{origin.port}"
    if how == "flag":
        extra = ["--allow-host", allow]
    else:
        (tmp_path / "policy.toml").write_text(f'allowed_hosts = ["{allow}"]\n')
        extra = ["--policy", str(tmp_path / "policy.toml")]
    refused = Server(app, log=tmp_path / "refused.log")
    try:
        assert refused.get(f"/?{origin.url}")[0] == 500
    finally:
        refused_log = refused.stop()
    assert origin.answered == 0 and "NetworkRefused" in refused_log
    assert "--allow-host" in refused_log  # the log says how to allow it
    server = Server(app, *extra, log=tmp_path / "serve.log")
    try:
        assert server.get(f"/?{origin.url}") == (200, b"remote body")
    finally:
        server.stop()
    assert origin.answered == 1


def test_serve_usage_error_for_a_bad_policy_file(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.yaml").write_text("runtime: python27\nhandlers:\n- url: /.*\n  script: m.app\n")
    (tmp_path / "bad.toml").write_text("allowed_host = []\n")
    result = subprocess.run([*CLI, "serve", str(app), "--policy", str(tmp_path / "bad.toml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "unknown key 'allowed_host'" in result.stderr and "Traceback" not in result.stderr


def test_run_takes_policy_flags(tmp_path: Path, origin: Origin) -> None:
    script = tmp_path / "fetch.py"
    script.write_text(f"import urllib.request\nprint(urllib.request.urlopen({origin.url!r})"
                      ".read().decode())\n")
    refused = subprocess.run([*CLI, "run", str(script)], capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 1 and origin.answered == 0
    allowed = subprocess.run([*CLI, "run", "--allow-host", f"127.0.0.1:{origin.port}",
                              str(script)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "remote body" and origin.answered == 1


def test_library_refusals_are_recorded_not_warned(app_root: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A refusal installed library code makes and handles itself (urllib3's IPv6 probe binds
    a socket) is logged at debug; the app's own refusal is a warning. Both are recorded."""
    from urllib3.util import connection

    sandbox = Sandbox(Policy.python27(app_root=app_root))
    with caplog.at_level(logging.DEBUG, logger="gae_sandbox"), sandbox:
        assert connection._has_ipv6("::1") is False
        try:
            open(app_root / "mine.txt", "w")  # noqa: SIM115
        except PermissionError:
            pass
    levels = {record.levelname: record.getMessage() for record in caplog.records
              if record.name == "gae_sandbox"}
    assert "bind" in levels["DEBUG"] and "mine.txt" in levels["WARNING"]
    assert {v.kind for v in sandbox.violations} == {"network", "file_write"}
    assert not (app_root / "mine.txt").exists()
    assert connection._has_ipv6("::1") is True  # control: the host may bind


def test_report_mode_says_would_refuse(app_root: Path) -> None:
    sandbox = Sandbox(Policy.python27(app_root=app_root, mode="report"))
    with sandbox:
        with open(app_root / "report.txt", "w") as file:
            file.write("let through")
    (app_root / "report.txt").unlink()
    assert json.dumps([v.message for v in sandbox.violations]).count("would refuse") == 1
    assert os.path.exists(app_root) and sandbox.violations[0].message.startswith(
        "gae_sandbox would refuse file write")
