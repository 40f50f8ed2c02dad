"""The audit-hook backstop: references the host captured before any sandbox existed (so no
patch can have replaced them) are still refused inside one, and the effect never happens.

Every capture below happens at import of this module, before any test enters a sandbox.
"""

from __future__ import annotations

import _io
import os
import posix
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from os import system as captured_system
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    FileWriteRefused,
    NetworkRefused,
    Policy,
    ProcessRefused,
    Sandbox,
    SystemCallRefused,
)

try:
    import ctypes
except ImportError:  # pragma: no cover - interpreter built without ctypes
    ctypes = None  # type: ignore[assignment]
try:
    import mmap
except ImportError:  # pragma: no cover
    mmap = None  # type: ignore[assignment]

captured_posix_system = posix.system
captured_posix_open = posix.open
captured_raw_socket = socket._socket.socket  # type: ignore[attr-defined]
captured_raw_listen = socket._socket.socket.listen  # type: ignore[attr-defined]
captured_file_io = _io.FileIO

needs_ctypes = pytest.mark.skipif(ctypes is None, reason="ctypes is not importable")


def _foreign_calls_audited() -> bool:
    """Whether this interpreter raises ``ctypes.call_function`` when a foreign function is
    called (CPython gh-115322 added it; 3.11 raises it only for ``_ctypes.call_function``).
    Probed in a child interpreter: audit hooks cannot be removed."""
    if ctypes is None:
        return False
    probe = (
        "import ctypes, sys\n"
        "seen = []\n"
        "sys.addaudithook(lambda event, args: seen.append(event))\n"
        "ctypes.CDLL(None).getpid()\n"
        "print('ctypes.call_function' in seen)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=30)
    return result.stdout.strip() == "True"


FOREIGN_CALLS_AUDITED = _foreign_calls_audited()
xfail_unaudited_foreign_calls = pytest.mark.xfail(
    not FOREIGN_CALLS_AUDITED, strict=True,
    reason="known gap, the OS layer covers it: calling a ctypes function the host looked "
    "up before the sandbox is not "
    "refused: this interpreter raises no ctypes.call_function audit event for foreign calls "
    "(CPython gh-115322) and nothing else guards them, so host-held libc.system and "
    "ctypes.memmove run",
)
needs_mmap = pytest.mark.skipif(mmap is None, reason="mmap is not importable")

WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def touch_command(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


# --- processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("function", [captured_system, captured_posix_system],
                         ids=["from os import system", "posix.system"])
def test_captured_system_refused(function, policy: Policy, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with Sandbox(policy):
        with pytest.raises(ProcessRefused) as info:
            function(touch_command(marker))
    assert isinstance(info.value, PermissionError)
    assert not marker.exists()


@pytest.mark.parametrize("function", [captured_system, captured_posix_system],
                         ids=["from os import system", "posix.system"])
def test_control_captured_system_outside(function, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    assert function(touch_command(marker)) == 0
    assert marker.exists()


# --- the raw socket type ----------------------------------------------------------------------


def test_raw_socket_creation_refused(policy: Policy) -> None:
    with Sandbox(policy.replace(allowed_hosts=("127.0.0.1:*",))):
        with pytest.raises(NetworkRefused) as caught:
            captured_raw_socket(socket.AF_INET, socket.SOCK_STREAM)
    assert "_socket" in str(caught.value)


def test_raw_socket_connect_refused(policy: Policy, listener) -> None:
    sock = captured_raw_socket(socket.AF_INET, socket.SOCK_STREAM)  # the host made it
    try:
        with Sandbox(policy):
            with pytest.raises(NetworkRefused) as connect_error:
                sock.connect(("127.0.0.1", listener.port))
            with pytest.raises(NetworkRefused):
                sock.connect_ex(("127.0.0.1", listener.port))
    finally:
        sock.close()
    assert f"127.0.0.1:{listener.port}" in str(connect_error.value)
    assert listener.settle() == 0


def test_control_raw_socket_connect_outside(listener) -> None:
    sock = captured_raw_socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", listener.port))
    finally:
        sock.close()
    assert listener.settle() == 1


def test_raw_socket_bind_refused(policy: Policy) -> None:
    sock = captured_raw_socket(socket.AF_INET, socket.SOCK_STREAM)  # the host made it
    try:
        with Sandbox(policy.replace(allowed_hosts=("127.0.0.1:*",))):
            with pytest.raises(NetworkRefused):
                sock.bind(("127.0.0.1", 0))
        bound = sock.getsockname()
    finally:
        sock.close()
    assert bound == ("0.0.0.0", 0)


@pytest.mark.xfail(strict=True, reason="known gap: listen has no audit event and only "
                   "socket.socket.listen is patched: _socket.socket.listen(sock) on an unbound "
                   "socket auto-binds an ephemeral port and listens; the OS layer (seccomp) "
                   "covers it")
def test_raw_socket_listen_refused(policy: Policy) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with Sandbox(policy.replace(allowed_hosts=("127.0.0.1:*",))):
            try:
                captured_raw_listen(sock, 5)
            except NetworkRefused:
                pass
        port = sock.getsockname()[1]
        listening = False
        if port:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.settimeout(1)
            try:
                listening = probe.connect_ex(("127.0.0.1", port)) == 0
            finally:
                probe.close()
    finally:
        sock.close()
    assert port == 0
    assert not listening


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "a", "x", "r+"])
def test_raw_file_io_write_refused(mode: str, policy: Policy, tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    if mode == "r+":
        target.write_bytes(b"host data")
    with Sandbox(policy):
        with pytest.raises(FileWriteRefused) as info:
            handle = captured_file_io(str(target), mode)
            handle.write(b"sandboxed")  # pragma: no cover - only if the open was let through
            handle.close()  # pragma: no cover
    assert isinstance(info.value, PermissionError)
    if mode == "r+":
        assert target.read_bytes() == b"host data"
    else:
        assert not target.exists()


def test_control_raw_file_io_outside(tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    with captured_file_io(str(target), "w") as handle:
        handle.write(b"host")
    assert target.read_bytes() == b"host"


@pytest.mark.parametrize("flags", [WRITE_FLAGS, os.O_RDWR | os.O_CREAT,
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND],
                         ids=["WRONLY|CREAT|TRUNC", "RDWR|CREAT", "WRONLY|CREAT|APPEND"])
def test_posix_open_write_refused(flags: int, policy: Policy, tmp_path: Path) -> None:
    target = tmp_path / "opened.txt"
    with Sandbox(policy):
        with pytest.raises(FileWriteRefused):
            fd = captured_posix_open(str(target), flags, 0o644)
            os.close(fd)  # pragma: no cover - only if the open was let through
    assert not target.exists()


def test_posix_open_truncate_of_existing_file_refused(policy: Policy, tmp_path: Path) -> None:
    target = tmp_path / "existing.txt"
    target.write_text("host data")
    with Sandbox(policy):
        with pytest.raises(FileWriteRefused):
            captured_posix_open(str(target), os.O_WRONLY | os.O_TRUNC)
    assert target.read_text() == "host data"


def test_control_posix_open_outside(tmp_path: Path) -> None:
    target = tmp_path / "opened.txt"
    fd = captured_posix_open(str(target), WRITE_FLAGS, 0o644)
    try:
        assert posix.write(fd, b"host") == 4
    finally:
        posix.close(fd)
    assert target.read_bytes() == b"host"


# --- ctypes -----------------------------------------------------------------------------------


@pytest.fixture
def host_libc() -> Iterator:
    """libc loaded by the host, before the sandbox, with ``system`` already looked up."""
    libc = ctypes.CDLL(None)
    libc.system.argtypes = [ctypes.c_char_p]
    libc.system.restype = ctypes.c_int
    yield libc


@needs_ctypes
def test_ctypes_dlopen_refused(policy: Policy) -> None:
    with Sandbox(policy):
        with pytest.raises(SystemCallRefused) as info:
            ctypes.CDLL(None)
    assert isinstance(info.value, PermissionError)
    assert "ctypes" in str(info.value)


@needs_ctypes
@xfail_unaudited_foreign_calls
def test_ctypes_call_of_host_libc_refused(policy: Policy, tmp_path: Path, host_libc) -> None:
    marker = tmp_path / "marker"
    with Sandbox(policy):
        with pytest.raises(SystemCallRefused) as info:
            host_libc.system(os.fsencode(touch_command(marker)))
    assert "ctypes.call_function" in str(info.value)
    assert not marker.exists()


@needs_ctypes
def test_ctypes_symbol_lookup_in_host_libc_refused(policy: Policy, tmp_path: Path) -> None:
    libc = ctypes.CDLL(None)  # loaded by the host; no function looked up yet
    marker = tmp_path / "marker"
    with Sandbox(policy):
        with pytest.raises(SystemCallRefused):
            libc.system(os.fsencode(touch_command(marker)))
    assert not marker.exists()


@needs_ctypes
@xfail_unaudited_foreign_calls
def test_ctypes_memory_write_refused(policy: Policy) -> None:
    buffer = ctypes.create_string_buffer(b"host", 8)
    source = ctypes.create_string_buffer(b"SANDBOX", 8)
    with Sandbox(policy):
        with pytest.raises(SystemCallRefused):
            ctypes.memmove(buffer, source, 8)
    assert buffer.value == b"host"


@needs_ctypes
def test_control_ctypes_outside(tmp_path: Path, host_libc) -> None:
    marker = tmp_path / "marker"
    assert ctypes.CDLL(None) is not None
    assert host_libc.system(os.fsencode(touch_command(marker))) == 0
    assert marker.exists()


# --- mmap ---------------------------------------------------------------------------------------


@needs_mmap
def test_anonymous_mmap_is_memory_only(policy: Policy) -> None:
    """An anonymous map (the host-loaded ``mmap``) is memory of the process, no file: allowed
    (a map of a file the host opened is refused below)."""
    with Sandbox(policy), mmap.mmap(-1, 4096) as anonymous:
        anonymous[:7] = b"SANDBOX"
        assert anonymous[:7] == b"SANDBOX"


@needs_mmap
def test_mmap_of_host_file_refused(policy: Policy, tmp_path: Path) -> None:
    target = tmp_path / "mapped.bin"
    target.write_bytes(b"\0" * 4096)
    with open(target, "r+b") as handle:  # opened by the host
        with Sandbox(policy):
            with pytest.raises(SystemCallRefused):
                mapped = mmap.mmap(handle.fileno(), 4096)
                mapped[:7] = b"SANDBOX"  # pragma: no cover - only if the map was let through
                mapped.close()  # pragma: no cover
    assert target.read_bytes() == b"\0" * 4096


@needs_mmap
def test_control_mmap_outside() -> None:
    mapped = mmap.mmap(-1, 4096)
    try:
        mapped[:4] = b"host"
        assert mapped[:4] == b"host"
    finally:
        mapped.close()


# --- code that claims a trusted file name (escape suite, issue 5) ----------------------------


def test_compile_under_a_stdlib_file_name_refused(policy: Policy, tmp_path: Path) -> None:
    """The sandbox trusts code by its file (``atexit.register``, private C modules,
    ``subprocess``'s own spawn): app code may not compile code under such a name."""
    import atexit
    import json
    import modulefinder
    import types
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader("json", json.__file__)
    before = atexit._ncallbacks()
    with Sandbox(policy):
        for make in (
            lambda: compile("x = 1", json.__file__, "exec"),
            lambda: exec(compile("x = 1", subprocess.__file__, "exec"), {}),  # noqa: S102
            lambda: compile("x = 1", "<frozen importlib._bootstrap>", "exec"),
            lambda: loader.source_to_code(b"x = 1", json.__file__),
            lambda: (lambda: None).__code__.replace(co_filename=json.__file__),
            lambda: modulefinder.ModuleFinder(replace_paths=[(__file__, json.__file__)])
            .replace_paths_in_code(compile("x = 1", __file__, "exec")),
        ):
            with pytest.raises(SystemCallRefused, match="may not claim"):
                make()
        # allowed: the app's own names, the file's own source, the standard library's own
        # code.replace (types.coroutine)
        compile("x = 1", str(tmp_path / "app.py"), "exec")
        loader.source_to_code(Path(json.__file__).read_bytes(), json.__file__)
        types.coroutine(lambda: None)
    assert atexit._ncallbacks() == before


def test_sqlite_file_database_refused(policy: Policy, tmp_path: Path) -> None:
    """``_sqlite3`` the host loaded (sqlite3 is blocked for the app, but a module loaded by
    the host is reachable): SQLite creates its file in C, with no ``open`` event."""
    sqlite = pytest.importorskip("_sqlite3")
    database = tmp_path / "app.db"
    with Sandbox(policy):
        with pytest.raises(SystemCallRefused, match="sqlite3.connect"):
            sqlite.connect(str(database))
        # nor an in-memory one: made past sqlite3.connect, it would not refuse ATTACH
        with pytest.raises(SystemCallRefused, match="made directly"):
            sqlite.connect(":memory:")
    assert not database.exists()
    sqlite.connect(str(database)).close()  # control: the host may
    assert database.exists()


@pytest.mark.parametrize("how", ["codecs.register", "_codecs.register", "copyreg.pickle"])
def test_registered_functions_run_later_in_the_sandbox(policy: Policy, tmp_path: Path,
                                                        how: str) -> None:
    """A codec search function or a pickling reducer registered by app code is called later
    by host code: it runs in the sandbox that registered it (its write refused, no file),
    and otherwise works (the codec is found, the reducer used)."""
    import _codecs
    import codecs
    import copyreg
    import pickle

    target = tmp_path / "written"

    def search(name: str) -> codecs.CodecInfo | None:
        if not name.startswith("gae_backstop_codec"):
            return None
        try:
            target.write_text("search ran")
        except PermissionError:
            pass
        return codecs.lookup("utf-8")

    def reduce(value: complex) -> Any:
        try:
            target.write_text("reducer ran")
        except PermissionError:
            pass
        return (complex, (0, 0))

    register = {
        "codecs.register": lambda: codecs.register(search),
        "_codecs.register": lambda: _codecs.register(search),
        "copyreg.pickle": lambda: copyreg.pickle(complex, reduce),
    }[how]
    use = {  # a new codec name each time: the interpreter caches what a lookup found
        "codecs.register": lambda phase: codecs.lookup(f"gae_backstop_codec_{phase}").name,
        "_codecs.register": lambda phase: codecs.lookup(f"gae_backstop_codec_{phase}").name,
        "copyreg.pickle": lambda phase: pickle.loads(pickle.dumps(complex(1, 2))),
    }[how]
    table = dict(copyreg.dispatch_table)
    sandbox = Sandbox(policy)
    try:
        with sandbox:
            register()
        assert use("sandboxed") in ("utf-8", 0j)  # called by host code, after the request
        assert not target.exists()
        assert [v.kind for v in sandbox.violations] == ["file_write"]
        codecs.unregister(search)  # the host can still remove what the app registered
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(table)
        # control: registered by the host, the same function writes
        register()
        use("host")
        assert target.exists()
    finally:
        codecs.unregister(search)
        copyreg.dispatch_table.clear()
        copyreg.dispatch_table.update(table)


# --- audit events: an allow-list that fails closed (security review, weakness 2) -------------


def test_unlisted_interpreter_events_are_refused_third_party_events_pass(policy: Policy) -> None:
    """An event of the interpreter or the standard library that the sandbox neither allows
    nor judges is refused (a future CPython event included); a library's own event is not
    the sandbox's business."""
    import gc

    with Sandbox(policy) as sandbox:
        for call in (gc.get_objects, lambda: gc.get_referrers(policy),
                     lambda: gc.get_referents(policy), sys._current_frames,
                     lambda: sys.audit("os.some_future_call", "x"),
                     lambda: sys.audit("cpython.PyInterpreterState_New")):
            with pytest.raises(SystemCallRefused, match="ALLOWED_EVENTS"):
                call()
        sys.audit("mylibrary.event", 1)  # a third-party event
        sys.audit("builtins.id", 1)  # listed as harmless
        id(policy)
    assert len(sandbox.violations) == 6
    assert gc.get_objects() and sys._current_frames()  # control: the host may


def test_current_sandbox_is_a_read_only_view(policy: Policy, app_root: Path) -> None:
    """App code asking for its sandbox gets the policy and a copy of the record: no
    ``__exit__`` to leave its scope, no report to erase other requests' violations."""
    import gae_sandbox

    sandbox = Sandbox(policy)
    with sandbox:
        with pytest.raises(PermissionError):
            open(app_root / "refused.txt", "w")  # noqa: SIM115 - recorded
        view = gae_sandbox.current_sandbox()
        assert view == sandbox and view.policy == policy and view.policy is not policy
        assert not hasattr(view, "__exit__") and not hasattr(view, "report")
        view.violations.clear()
        view.policy = policy.replace(filesystem="memory")  # the view's own attribute only
        with pytest.raises(PermissionError):
            open(app_root / "refused.txt", "w")  # noqa: SIM115 - still read-only
    assert sandbox.policy is policy and not (app_root / "refused.txt").exists()
    assert len(sandbox.violations) == 2  # one per line: the app's clear() erased nothing
    sandbox.report.clear()  # control: the host may
    assert sandbox.violations == []
