"""The OS layer alone, against app code that has already escaped the in-process layer.

Each case runs in its own child interpreter, which forks a worker that calls
:func:`~gae_sandbox.confine_process` and then runs the escaped code (``ctypes``/libc or
``_socket`` directly: nothing of the in-process layer is in the way). Every case runs twice:
unconfined, the control, where the effect must happen (so the case can fail), and confined,
where it must not. Effects are judged from outside the worker: a file on disk, a connection
this test's own loopback listener accepted, a SysV segment the kernel lists, a file's inode
flags, the nice value of the worker's parent (which reports it after the worker exits).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox.confine import landlock_abi, seccomp_available
from loopback import accepted_any, backlog_listener

ABI = landlock_abi()
SECCOMP = seccomp_available()
needs_seccomp = pytest.mark.skipif(not SECCOMP, reason="needs seccomp filters (x86_64 or "
                                   "aarch64 with CONFIG_SECCOMP_FILTER)")
needs_landlock = pytest.mark.skipif(ABI < 1 or not SECCOMP, reason=f"needs Landlock and "
                                    f"seccomp; this kernel: Landlock ABI {ABI}, seccomp {SECCOMP}")
needs_tcp_rules = pytest.mark.skipif(ABI < 4 or not SECCOMP, reason=f"needs Landlock TCP rules "
                                     f"(ABI >= 4) and seccomp; this kernel: ABI {ABI}, seccomp "
                                     f"{SECCOMP}")

FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, FS_NODUMP_FL = 0x80086601, 0x40086602, 0x00000040
MSG_FASTOPEN = 0x20000000

RUNNER = textwrap.dedent(
    """
    import ctypes, json, os, sys
    from gae_sandbox import Policy, confine_process
    ROOT, WRITABLE, OUT, CONFINE = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    ALLOWED = tuple(json.loads(sys.argv[5]))
    libc = ctypes.CDLL(None, use_errno=True)

    def checked(result, what):
        if result < 0:
            raise OSError(ctypes.get_errno(), what)
        return result

    def attempt():
    {body}

    worker = os.fork()
    if worker == 0:  # the confined worker (or, for the control, the same worker unconfined)
        try:
            if CONFINE:
                confine_process(Policy.python27(app_root=ROOT, allowed_hosts=ALLOWED),
                                writable_paths=[WRITABLE], max_file_size=None)
            result = {{"ok": True, "result": repr(attempt())}}
        except BaseException as error:
            result = {{"ok": False, "error": type(error).__name__,
                      "errno": getattr(error, "errno", None), "message": str(error)}}
        os.write(1, ("RESULT " + json.dumps(result) + "\\n").encode())
        os._exit(0)
    _, status = os.waitpid(worker, 0)
    print("PARENT " + json.dumps({{"status": status, "nice": os.getpriority(os.PRIO_PROCESS, 0)}}))
    """
)


def run(dirs: dict[str, Path], body: str, *, confine: bool, allowed: tuple[str, ...] = ()
        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker's result and its parent's report (the worker's exit status, its own nice
    value)."""
    code = RUNNER.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    completed = subprocess.run(
        [sys.executable, "-c", code, str(dirs["root"]), str(dirs["writable"]),
         str(dirs["out"]), "1" if confine else "0", json.dumps(list(allowed))],
        capture_output=True, text=True, timeout=120,  # a hang guard only
    )
    found = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
             for line in completed.stdout.splitlines() if line.startswith(("RESULT ", "PARENT "))}
    assert "PARENT" in found, \
        f"runner failed (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
    # no RESULT: the worker is gone without reporting (an execve that worked replaced it)
    return found.get("RESULT", {"ok": None}), found["PARENT"]


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """An app root (readable when confined), a writable folder, and a folder outside both."""
    folders = {name: tmp_path / name for name in ("root", "writable", "out")}
    for folder in folders.values():
        folder.mkdir()
    (folders["root"] / "data.txt").write_text("app data\n")
    return folders


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback TCP listener the confined worker is not allowed to reach."""
    with backlog_listener() as server:
        yield server


# -- files -----------------------------------------------------------------------------------


@needs_landlock
def test_libc_write_outside_writable_paths_leaves_no_file(dirs: dict[str, Path]) -> None:
    """libc open/write straight from ctypes: the writable folder takes the file, the folder
    outside it gets nothing."""
    body = """
        written = []
        for folder in (WRITABLE, OUT):
            path = os.path.join(folder, "escaped.txt").encode()
            try:
                fd = checked(libc.open(path, os.O_WRONLY | os.O_CREAT, 0o644), "open")
            except OSError as error:
                written.append(error.errno)
                continue
            written.append(checked(libc.write(fd, b"escaped", 7), "write"))
            libc.close(fd)
        return written
    """
    result, _ = run(dirs, body, confine=False)
    assert (dirs["out"] / "escaped.txt").read_bytes() == b"escaped", result
    (dirs["out"] / "escaped.txt").unlink()
    (dirs["writable"] / "escaped.txt").unlink()
    result, _ = run(dirs, body, confine=True)
    assert not (dirs["out"] / "escaped.txt").exists(), result
    assert (dirs["writable"] / "escaped.txt").read_bytes() == b"escaped"
    assert result["result"] == repr([7, 13]), result  # EACCES from Landlock


@needs_seccomp
def test_no_ioctl_fs_ioc_setflags_on_a_readable_file(dirs: dict[str, Path]) -> None:
    """Landlock lets the app open its own files for reading; an inode-flag ioctl through such
    a descriptor changes the file (its owner may), so seccomp allows only listed requests."""
    target = dirs["root"] / "data.txt"
    with open(target, "rb") as file:
        try:
            before = struct.unpack("i", fcntl.ioctl(file.fileno(), FS_IOC_GETFLAGS,
                                                    struct.pack("i", 0)))[0]
        except OSError as error:
            pytest.skip(f"the test folder's filesystem has no inode flags: {error}")
    body = f"""
        fd = os.open(os.path.join(ROOT, "data.txt"), os.O_RDONLY)
        flags = ctypes.c_int({before | FS_NODUMP_FL})
        return checked(libc.ioctl(fd, {FS_IOC_SETFLAGS}, ctypes.byref(flags)), "ioctl")
    """

    def flags() -> int:
        with open(target, "rb") as file:
            return struct.unpack("i", fcntl.ioctl(file.fileno(), FS_IOC_GETFLAGS,
                                                  struct.pack("i", 0)))[0]

    try:
        result, _ = run(dirs, body, confine=False)
        if not result["ok"]:
            pytest.skip(f"FS_IOC_SETFLAGS does not work here even unconfined: {result}")
        assert flags() & FS_NODUMP_FL, "control: the unconfined ioctl did not set the flag"
        with open(target, "rb") as file:
            fcntl.ioctl(file.fileno(), FS_IOC_SETFLAGS, struct.pack("i", before))
        result, _ = run(dirs, body, confine=True)
        assert flags() == before, result
        assert result["errno"] == 1, result  # EPERM: not on the ioctl allow-list
    finally:
        with open(target, "rb") as file:
            fcntl.ioctl(file.fileno(), FS_IOC_SETFLAGS, struct.pack("i", before))


@needs_seccomp
def test_no_execve(dirs: dict[str, Path]) -> None:
    body = """
        marker = os.path.join(OUT, "marker").encode()
        argv = (ctypes.c_char_p * 4)(b"/bin/sh", b"-c", b"touch " + marker, None)
        return checked(libc.execve(b"/bin/sh", argv, None), "execve")
    """
    run(dirs, body, confine=False)
    assert (dirs["out"] / "marker").exists(), "control: the unconfined execve did not run sh"
    (dirs["out"] / "marker").unlink()
    result, _ = run(dirs, body, confine=True)
    assert not (dirs["out"] / "marker").exists()
    assert result["errno"] == 1, result


# -- network ---------------------------------------------------------------------------------


@pytest.fixture
def allowed_server() -> Iterator[socket.socket]:
    """The one loopback port the policy names: it stays reachable when confined."""
    with backlog_listener() as server:
        yield server


@needs_tcp_rules
def test_raw_socket_connect_to_a_port_not_allowed(dirs: dict[str, Path], listener: socket.socket,
                                                  allowed_server: socket.socket) -> None:
    allowed = (f"127.0.0.1:{allowed_server.getsockname()[1]}",)
    body = """
        import _socket
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.settimeout(10)
        return s.connect(("127.0.0.1", PORT))
    """
    for server, reachable in ((listener, False), (allowed_server, True)):
        code = body.replace("PORT", str(server.getsockname()[1]))
        run(dirs, code, confine=False, allowed=allowed)
        assert accepted_any(server), "control: the unconfined connection did not arrive"
        result, _ = run(dirs, code, confine=True, allowed=allowed)
        assert accepted_any(server) is reachable, result
        if not reachable:
            assert result["errno"] == 13, result  # EACCES from Landlock


@needs_tcp_rules
@pytest.mark.parametrize("call", ["sendto", "sendmsg"])
def test_tcp_fast_open_does_not_bypass_the_connect_rule(
        call: str, dirs: dict[str, Path], listener: socket.socket,
        allowed_server: socket.socket) -> None:
    """``MSG_FASTOPEN`` makes sendto/sendmsg connect an unconnected TCP socket without
    ``connect()``, the call Landlock's TCP rule checks."""
    if not int(Path("/proc/sys/net/ipv4/tcp_fastopen").read_text()) & 1:
        pytest.skip("net.ipv4.tcp_fastopen has client-side Fast Open off: no control possible")
    allowed = (f"127.0.0.1:{allowed_server.getsockname()[1]}",)
    port = listener.getsockname()[1]
    send = (f"s.sendto(b'GET / HTTP/1.0\\r\\n\\r\\n', {MSG_FASTOPEN}, ('127.0.0.1', {port}))"
            if call == "sendto" else
            f"s.sendmsg([b'GET / HTTP/1.0\\r\\n\\r\\n'], [], {MSG_FASTOPEN}, "
            f"('127.0.0.1', {port}))")
    body = f"""
        import _socket
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        return {send}  # blocking: returns once connected (a hang is the runner's timeout)
    """
    result, _ = run(dirs, body, confine=False, allowed=allowed)
    assert accepted_any(listener), f"control: Fast Open did not connect unconfined: {result}"
    result, _ = run(dirs, body, confine=True, allowed=allowed)
    assert not accepted_any(listener), f"a confined worker reached port {port}: {result}"
    assert result["errno"] == 1, result  # EPERM from seccomp


# -- processes and IPC -----------------------------------------------------------------------


def _shm_keys() -> set[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[0]) for line in lines if line.strip()}


@needs_seccomp
def test_no_sysv_shared_memory(dirs: dict[str, Path]) -> None:
    """A SysV segment outlives the worker and is reachable by key from any process of the
    user: a channel past every other rule."""
    if not Path("/proc/sysvipc/shm").exists():
        pytest.skip("no /proc/sysvipc/shm to observe segments with")
    key = random.randrange(1 << 24, 1 << 30)
    while key in _shm_keys():
        key += 1
    body = f"""
        return checked(libc.shmget({key}, 4096, 0o1000 | 0o2000 | 0o600), "shmget")
    """  # IPC_CREAT | IPC_EXCL
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        result, _ = run(dirs, body, confine=False)
        assert key in _shm_keys(), f"control: no segment was created unconfined: {result}"
        libc.shmctl(libc.shmget(key, 0, 0), 0, None)  # IPC_RMID
        assert key not in _shm_keys()
        result, _ = run(dirs, body, confine=True)
        assert key not in _shm_keys(), result
        assert result["errno"] == 1, result
    finally:
        segment = libc.shmget(key, 0, 0)
        if segment >= 0:
            libc.shmctl(segment, 0, None)


@needs_seccomp
def test_no_setpriority_of_the_parent(dirs: dict[str, Path]) -> None:
    """The worker may renice itself, not its parent (who = its parent's pid)."""
    body = """
        libc.setpriority.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        own = checked(libc.setpriority(0, 0, 3), "setpriority(self)")
        return own, checked(libc.setpriority(0, os.getppid(), 7), "setpriority(parent)")
    """
    start = os.getpriority(os.PRIO_PROCESS, 0)
    if start > 7 - 1:
        pytest.skip(f"the test already runs at nice {start}: no room to show a change")
    result, parent = run(dirs, body, confine=False)
    assert parent["nice"] == 7, f"control: the parent was not reniced: {result}"
    result, parent = run(dirs, body, confine=True)
    assert parent["nice"] == start, result
    assert result["errno"] == 1 and "parent" in result["message"], result  # itself: allowed


LISTENER = textwrap.dedent(
    """
    import _socket, sys
    from gae_sandbox import Policy, confine_process
    if sys.argv[2] == "1":
        confine_process(Policy.python27(app_root=sys.argv[1]))
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        s.listen(8)  # never bound: the kernel picks a port, on every address
    except OSError as error:
        print("REFUSED", error.errno, flush=True)
    else:
        print("LISTENING", s.getsockname()[1], flush=True)
    sys.stdin.read()  # alive (its sockets open) until the test has looked
    """
)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


@needs_tcp_rules
def test_no_listener_without_bind(dirs: dict[str, Path]) -> None:
    """listen() on a socket never bound binds it to an ephemeral port without bind(), the
    call Landlock's TCP rule checks: the worker would serve the network. seccomp refuses
    listen itself."""
    for confine in (False, True):
        process = subprocess.Popen(
            [sys.executable, "-c", LISTENER, str(dirs["root"]), "1" if confine else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None and process.stdin is not None
            line = process.stdout.readline().split()
            listening = _socket_inodes(process.pid) & _listening_inodes()
            if not confine:
                assert line[0] == "LISTENING" and listening, f"control: {line}"
                with socket.create_connection(("127.0.0.1", int(line[1])), timeout=10):
                    pass  # reachable from outside
            else:
                assert line == ["REFUSED", "1"] and not listening, line
            process.stdin.close()
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
