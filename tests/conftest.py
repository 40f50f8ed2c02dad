"""Shared fixtures: a small app on disk, a folder outside it, and a loopback listener that
counts the connections it accepted (a refused connection must leave it at zero)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gae_sandbox import Policy


@pytest.fixture(autouse=True)
def no_scope_left_behind() -> Iterator[None]:
    """Every test must leave the main thread unsandboxed, whatever it did."""
    yield
    from gae_sandbox.context import active_scope

    assert active_scope() is None, "the test left a sandbox scope active"


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    """An app folder with a module, a package, a data file and a subfolder."""
    root = tmp_path / "app"
    (root / "pkg").mkdir(parents=True)
    (root / "static").mkdir()
    (root / "data.txt").write_text("app data\n")
    (root / "static" / "style.css").write_text("body {}\n")
    (root / "pkg" / "__init__.py").write_text("NAME = 'pkg'\n")
    (root / "pkg" / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the app (a string-prefix sibling of it: ``app`` vs ``app2``)."""
    folder = tmp_path / "app2"
    folder.mkdir()
    (folder / "secret.txt").write_text("host secret\n")
    return folder


@pytest.fixture
def policy(app_root: Path) -> Policy:
    return Policy.python27(app_root=app_root, deadline=None)


@pytest.fixture
def app_on_path(app_root: Path) -> Iterator[Path]:
    """Put the app folder on sys.path (as the dev server does) and forget its modules after."""
    sys.path.insert(0, str(app_root))
    before = set(sys.modules)
    yield app_root
    sys.path.remove(str(app_root))
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        if str(app_root) in str(getattr(module, "__file__", "") or ""):
            del sys.modules[name]


class Listener:
    """A TCP listener on 127.0.0.1 that accepts in a thread and counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded: stops by itself
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def settle(self) -> int:
        """Give a connection in flight time to be accepted, then return the count."""
        time.sleep(0.2)
        return self.accepted

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()
