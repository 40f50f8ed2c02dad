"""Loopback helpers shared by the test modules (importable because pytest puts this folder,
the conftest's, on ``sys.path``)."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The command line, as a user runs it (``python -m gae_sandbox`` is ``gae-sandbox``).
CLI = [sys.executable, "-m", "gae_sandbox"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def backlog_listener() -> Iterator[socket.socket]:
    """A non-blocking TCP listener on 127.0.0.1: connections wait in its backlog, so
    :func:`accepted_any` can tell afterwards whether anything reached it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def accepted_any(server: socket.socket) -> bool:
    """Whether a connection reached ``server`` (the process that would make it has exited by
    now: a connection it made is already in the backlog)."""
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


def http_get(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """``GET path`` from 127.0.0.1:port: the status and the whole body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Server:
    """``gae-sandbox serve`` in its own process; its URL is read from its first line."""

    def __init__(self, app: Path, *extra: str, log: Path) -> None:
        self.log = log
        self.output = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([*CLI, "serve", str(app), "--port", "0", *extra],
                                        stdout=self.output, stderr=subprocess.STDOUT)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", text)
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"server exited:\n{text}")
            time.sleep(0.1)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, bytes,
                                                                                dict[str, str]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, bytes]:
        status, body, _ = self.request("GET", path)
        return status, body

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.output.close()
        return self.log.read_text(errors="replace")
