"""The example apps, served by ``gae-sandbox serve`` as a real process on 127.0.0.1.

Each example serves its pages; its one portability problem is refused in enforce mode,
recorded (and let through) in report mode, and found by ``gae-sandbox check``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopback import CLI, Server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def copy_example(tmp_path: Path) -> Iterator[callable]:
    """A fresh copy of an example, so a write that got through would be seen, not kept."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(EXAMPLES / name, target,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "media",
                                                      "entries.log"))
        return target

    yield copy


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_guestbook(copy_example, tmp_path: Path) -> None:
    app = copy_example("guestbook")
    before = _files(app)
    server = Server(app, log=tmp_path / "serve.log")
    try:
        status, body = server.get("/")
        assert status == 200 and b"The gae_sandbox guestbook" in body  # env_variables
        status, body = server.get("/static/style.css")
        assert status == 200 and b"blockquote" in body  # served by the server itself
        assert server.get("/static/../main.py")[0] == 404
        status, _, _ = server.request("POST", "/sign", "content=hello")
        assert status == 500  # the local file write is refused
        assert b"hello" in server.get("/")[1]  # in-memory state kept; the server goes on
        assert server.get("/nope")[0] == 404
    finally:
        output = server.stop()
    assert _files(app) == before  # nothing written next to the app
    assert "FileWriteRefused" in output and "entries.log" in output
    assert re.search(r'"GET /static/style.css" 200', output)  # one log line per request
    assert "gae-sandbox: stopped" in output


def test_flask_app(copy_example, tmp_path: Path) -> None:
    app = copy_example("flask_app")
    server = Server(app, log=tmp_path / "serve.log")
    try:
        status, body = server.get("/")
        assert status == 200 and b"<h1>Tasks</h1>" in body
        status, body = server.get("/api/tasks")
        assert status == 200 and json.loads(body)["tasks"][0]["done"] is True
        assert server.get("/export")[0] == 500  # NamedTemporaryFile refused
        status, body = server.get("/export-fixed")
        assert status == 200 and body.startswith(b"title,done")
    finally:
        output = server.stop()
    assert "TempfileRefused" in output


def test_django_app(copy_example, tmp_path: Path) -> None:
    app = copy_example("django_app")
    server = Server(app, log=tmp_path / "serve.log")
    try:
        status, body = server.get("/")
        assert status == 200 and b"<h1>Books</h1>" in body
        status, body = server.get("/api/time")
        assert status == 200 and "now" in json.loads(body)
        assert server.get("/report")[0] == 500  # writing under MEDIA_ROOT refused
    finally:
        output = server.stop()
    assert not (app / "mysite" / "media").exists()
    assert "FileWriteRefused" in output


def test_report_mode_lists_the_problem_and_lets_it_through(copy_example,
                                                          tmp_path: Path) -> None:
    app = copy_example("guestbook")
    report = tmp_path / "report.json"
    server = Server(app, "--mode", "report", "--report", str(report),
                    log=tmp_path / "serve.log")
    try:
        assert server.request("POST", "/sign", "content=one")[0] == 303
        assert server.request("POST", "/sign", "content=two")[0] == 303
    finally:
        output = server.stop()
    assert (app / "entries.log").read_text() == "one\ntwo\n"  # report mode lets it through
    document = json.loads(report.read_text())
    writes = [v for v in document["violations"] if v["kind"] == "file_write"]
    assert len(writes) == 1 and writes[0]["count"] == 2
    assert writes[0]["location"].endswith("main.py:59")
    assert "entries.log" in writes[0]["target"]
    assert document["summary"]["file_write"] == 2
    assert "file_write: 2" in output  # the text summary at exit


@pytest.mark.parametrize("name, expected", [
    ("guestbook", {("file_write", "main.py", 59)}),
    ("flask_app", {("tempfile", "main.py", 36)}),
    ("django_app", {("file_write", "mysite/views.py", 23), ("file_write", "mysite/views.py", 25)}),
])
def test_check_finds_each_examples_problem(name: str, expected: set[tuple[str, str, int]]
                                           ) -> None:
    result = subprocess.run([*CLI, "check", str(EXAMPLES / name), "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    findings = json.loads(result.stdout)["findings"]
    assert {(f["kind"], f["file"], f["line"]) for f in findings} == expected


def test_gunicorn_serving(copy_example, tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    app = copy_example("guestbook")
    server = Server(app, "--server", "gunicorn", "--workers", "2",
                    log=tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 30
        while True:  # the workers boot after the URL is printed
            try:
                status, body = server.get("/")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert status == 200 and b"guestbook" in body
        assert server.request("POST", "/sign", "content=x")[0] == 500
    finally:
        output = server.stop()
    assert not (app / "entries.log").exists()
    assert "FileWriteRefused" in output


def test_serve_usage_errors(tmp_path: Path) -> None:
    missing = subprocess.run([*CLI, "serve", str(tmp_path / "nope")], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "no app.yaml" in missing.stderr.lower() or (
        "cannot read" in missing.stderr)
    (tmp_path / "app.yaml").write_text("runtime: python27\nhandlers: [\n")
    broken = subprocess.run([*CLI, "serve", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
    assert broken.returncode == 2
    assert "app.yaml:" in broken.stderr and "invalid YAML" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_run_script(tmp_path: Path) -> None:
    script = tmp_path / "tool.py"
    script.write_text(
        "import sys\n"
        "print('args', sys.argv[1:])\n"
        "open('out.txt', 'w')\n"
    )
    # the script's own options, even ones that are prefixes of run's (--n, --mode)
    result = subprocess.run([*CLI, "run", str(script), "a", "--n", "3", "--mode", "b"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "args ['a', '--n', '3', '--mode', 'b']" in result.stdout
    assert "FileWriteRefused" in result.stderr
    assert not (tmp_path / "out.txt").exists()

    report = tmp_path / "r.json"
    result = subprocess.run([*CLI, "run", "--mode", "report", "--report", str(report),
                             str(script)], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.txt").exists()
    violations = json.loads(report.read_text())["violations"]
    assert [(v["kind"], v["location"]) for v in violations] == [
        ("file_write", f"{script}:3")]


def test_run_script_with_an_in_memory_filesystem(tmp_path: Path) -> None:
    script = tmp_path / "tool.py"
    script.write_text(
        "with open('out.txt', 'w') as f:\n"
        "    f.write('kept in memory')\n"
        "print(open('out.txt').read())\n"
    )
    result = subprocess.run([*CLI, "run", "--filesystem", "memory", str(script)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "kept in memory" in result.stdout
    assert not (tmp_path / "out.txt").exists()


def test_help_on_every_command() -> None:
    for command in ([], ["serve"], ["check"], ["run"]):
        result = subprocess.run([*CLI, *command, "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and "usage:" in result.stdout
    script = Path(sys.executable).parent / "gae-sandbox"  # the console script
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "serve" in result.stdout


def test_serve_runs_appengine_config_and_sets_the_sdk_servers_variables(tmp_path: Path
                                                                          ) -> None:
    """A python27 app vendoring lib/ through appengine_config.py, as the runtime ran it, and
    seeing what the SDK's dev_appserver set (not waitress's placeholder SERVER_NAME)."""
    app = tmp_path / "configured"
    (app / "lib" / "vendpkg").mkdir(parents=True)
    (app / "lib" / "vendpkg" / "__init__.py").write_text("VALUE = 'vendored'\n")
    (app / "app.yaml").write_text("runtime: python27\nhandlers:\n- url: /.*\n"
                                  "  script: main.app\n")
    (app / "appengine_config.py").write_text(
        "import os, sys\n"
        "sys.path.insert(0, os.path.join(os.path.dirname(__file__), 'lib'))\n")
    (app / "main.py").write_text(
        "import os, vendpkg\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    names = ('SERVER_SOFTWARE', 'SERVER_NAME', 'HTTPS', 'CURRENT_MODULE_ID')\n"
        "    return [' '.join([vendpkg.VALUE] + [os.environ[n] for n in names]).encode()]\n")
    server = Server(app, log=tmp_path / "serve.log")
    try:
        status, body = server.get("/")
    finally:
        server.stop()
    assert (status, body) == (200, b"vendored Development/2.0 127.0.0.1 off default")


def test_serve_refuses_an_asgi_entrypoint_before_serving(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(
        "runtime: python312\nentrypoint: gunicorn -b :$PORT -k uvicorn.workers.UvicornWorker "
        "main:app\n")
    result = subprocess.run([*CLI, "serve", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "app.yaml:2: entrypoint" in result.stderr
    assert "uvicorn.workers.UvicornWorker serves ASGI apps" in result.stderr
    assert "runs WSGI apps only" in result.stderr
