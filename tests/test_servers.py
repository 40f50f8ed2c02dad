"""End to end: real servers (waitress threaded, gunicorn gthread) in their own processes,
serving an app wrapped by SandboxMiddleware, under concurrent load from 16 client threads.

Every response is checked, the server keeps serving afterwards, and the server process
itself was never restricted: its own (unsandboxed) route can still write a file.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loopback import free_port, http_get

APP = textwrap.dedent(
    """
    import logging, os, threading, time
    from gae_sandbox import Policy, SandboxMiddleware

    logging.basicConfig(level=logging.INFO)  # the host decides where gae_sandbox logs go

    APP_ROOT = os.path.dirname(os.path.abspath(__file__))
    HOST_DIR = os.environ["E2E_HOST_DIR"]

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/ok":
            body = b"ok"
        elif path == "/read":
            with open(os.path.join(APP_ROOT, "data.txt"), "rb") as f:
                body = f.read()
        elif path == "/write":
            with open(os.path.join(APP_ROOT, "written-by-app.txt"), "w") as f:
                f.write("should never exist")
            body = b"wrote"
        elif path == "/deadline":
            time.sleep(30)
            body = b"slept"
        elif path == "/threads":
            results = []
            def work(n):
                time.sleep(0.02)
                results.append(n)
            for n in range(3):
                threading.Thread(target=work, args=(n,), daemon=True).start()
            def respond():
                # the scope joins the threads before the response is finished
                yield b"threads:"
                time.sleep(0.1)
                yield str(len(results)).encode()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return respond()
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    policy = Policy.python27(app_root=APP_ROOT, deadline=0.5, hard_deadline_grace=0.5)
    sandboxed = SandboxMiddleware(app, policy)

    def application(environ, start_response):
        # The host's own route, outside the middleware: the server process writes a file.
        if environ["PATH_INFO"] == "/host/write":
            name = os.path.join(HOST_DIR, "host-%d-%d.txt" % (os.getpid(), time.time_ns()))
            with open(name, "w") as f:
                f.write("host")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"host wrote"]
        return sandboxed(environ, start_response)
    """
)

EXPECTED = {
    "/ok": (200, b"ok"),
    "/read": (200, b"app data\n"),
    "/write": (500, b"500 Internal Server Error\n"),
    "/deadline": (500, b"500 Internal Server Error\n"),
    "/threads": (200, b"threads:3"),
}


def _get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    return http_get(port, path, timeout)


def _wait_until_serving(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early:\n{log.read_text()}")
        try:
            if _get(port, "/ok", timeout=2)[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"server did not start:\n{log.read_text()}")


@pytest.fixture
def e2e_app(tmp_path: Path) -> tuple[Path, Path]:
    app_dir = tmp_path / "e2e"
    app_dir.mkdir()
    (app_dir / "e2e_app.py").write_text(APP)
    (app_dir / "data.txt").write_text("app data\n")
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    return app_dir, host_dir


def _command(server: str, port: int, app_dir: Path) -> list[str]:
    if server == "waitress":
        return [sys.executable, "-m", "waitress", "--host=127.0.0.1", f"--port={port}",
                "--threads=8", "e2e_app:application"]
    return [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "2",
            "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", "e2e_app:application"]


@pytest.mark.parametrize("server", ["waitress", "gunicorn"])
def test_real_server_under_concurrent_load(server: str, e2e_app: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    app_dir, host_dir = e2e_app
    port = free_port()
    log = tmp_path / f"{server}.log"
    env = dict(os.environ, E2E_HOST_DIR=str(host_dir), PYTHONPATH=str(app_dir))
    with open(log, "wb") as log_file:
        process = subprocess.Popen(_command(server, port, app_dir), cwd=app_dir, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(port, process, log)
        rng = random.Random(1234)
        paths = [rng.choice(list(EXPECTED)) for _ in range(208)]

        with ThreadPoolExecutor(max_workers=16) as clients:
            results = list(clients.map(lambda p: (p, *_get(port, p)), paths))

        assert len(results) == 208
        for path, status, body in results:
            assert (status, body) == EXPECTED[path], (path, status, body)
        assert {p for p, _, _ in results} == set(EXPECTED)  # every kind was exercised
        assert not (app_dir / "written-by-app.txt").exists()

        # The server keeps serving, and its own code is not restricted.
        assert _get(port, "/ok") == (200, b"ok")
        assert _get(port, "/host/write") == (200, b"host wrote")
        assert len(list(host_dir.iterdir())) == 1
        assert process.poll() is None
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    output = log.read_text(errors="replace")
    assert "FileWriteRefused" in output  # the refusal was logged with its traceback
    assert "written-by-app.txt" in output


def test_the_console_scripts_folder_is_not_on_the_apps_path(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Run as the gae-sandbox console script, Python puts its folder (the environment's bin,
    where pip also puts script copies such as bottle.py) first on sys.path; the command
    drops it before it loads the app. Another first entry stays."""
    from gae_sandbox.cli import _drop_script_folder

    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "bottle.py").write_text("SCRIPT_COPY = True\n")
    monkeypatch.setattr(sys, "argv", [str(bin_folder / "gae-sandbox"), "serve", "app"])
    monkeypatch.setattr(sys, "path", [str(bin_folder), "/elsewhere"])
    _drop_script_folder()
    assert sys.path == ["/elsewhere"]
    monkeypatch.setattr(sys, "path", [str(tmp_path), "/elsewhere"])
    _drop_script_folder()
    assert sys.path == [str(tmp_path), "/elsewhere"]
