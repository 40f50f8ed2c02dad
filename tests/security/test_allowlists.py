"""Weakness 2 (deny-lists that fail open) and 3 (descriptors owned by number) of the review.

The C functions of os/posix, sys, signal, gc and socket are an allow-list: what is not
listed acts on the whole process and is refused inside a sandbox. Calls that would end,
signal or reconfigure the host run in a child interpreter of their own; each has a plain
control that shows the effect there. Descriptors are the request's by the open file itself:
the host's, another request's, or a number the request closed and the host reused are not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gae_sandbox import Policy, Sandbox, SystemCallRefused
from gae_sandbox.sandbox import call_in_scope, close_scope

#: name -> (code run as the app, what the control prints or its exit status)
PROCESS_WIDE = {
    "os_exit": ("import os\nos._exit(7)\n", 7),
    "os_abort": ("import os\nos.abort()\n", -signal.SIGABRT),
    "raise_signal": ("import signal\nsignal.raise_signal(signal.SIGTERM)\n", -signal.SIGTERM),
    "setswitchinterval": ("import sys\nsys.setswitchinterval(5.0)\n",
                          "import sys\nprint(sys.getswitchinterval())\n"),
    "setrecursionlimit": ("import sys\nsys.setrecursionlimit(60)\n",
                          "import sys\nprint(sys.getrecursionlimit())\n"),
    "setdefaulttimeout": ("import socket\nsocket.setdefaulttimeout(0.001)\n",
                          "import socket\nprint(socket.getdefaulttimeout())\n"),
    "gc_disable": ("import gc\ngc.disable()\n", "import gc\nprint(gc.isenabled())\n"),
    "gc_threshold": ("import gc\ngc.set_threshold(1)\n", "import gc\nprint(gc.get_threshold())\n"),
}


def _child(app_code: str, probe: str, sandboxed: bool, root: Path) -> tuple[int, str]:
    body = textwrap.indent(app_code, "    ")
    enter = ("from gae_sandbox import Policy, Sandbox\n"
             f"with Sandbox(Policy.python27(app_root={str(root)!r})):\n") if sandboxed else (
        "if True:\n")
    script = (enter + "    try:\n" + textwrap.indent(body, "    ") +
              "    except Exception as error:\n        print('refused', type(error).__name__)\n"
              + probe + "print('survived')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    return result.returncode, result.stdout


@pytest.mark.parametrize("case", sorted(PROCESS_WIDE))
def test_process_wide_calls(case: str, app_root: Path) -> None:
    code, effect = PROCESS_WIDE[case]
    probe = effect if isinstance(effect, str) else ""
    plain_status, plain_out = _child(code, probe, False, app_root)
    status, out = _child(code, probe, True, app_root)
    if isinstance(effect, int):
        assert plain_status == effect  # control: it ended or signalled the process
    else:
        assert plain_status == 0
    assert status == 0 and "refused SystemCallRefused" in out and "survived" in out
    if isinstance(effect, str):  # control: the setting changed; sandboxed: it did not
        assert out.splitlines()[1] != plain_out.splitlines()[0], (out, plain_out)


def test_host_descriptor_is_not_the_apps(policy: Policy, tmp_path: Path) -> None:
    """dup, lseek, read of a descriptor the host holds: refused (control: they work)."""
    host_file = tmp_path / "host.log"
    host_file.write_bytes(b"host data")
    fd = os.open(host_file, os.O_RDWR)
    try:
        with Sandbox(policy):
            for call in (lambda: os.dup(fd), lambda: os.lseek(fd, 0, os.SEEK_END),
                         lambda: os.read(fd, 4), lambda: os.set_blocking(fd, False)):
                with pytest.raises(SystemCallRefused, match="request's own descriptors"):
                    call()
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # nothing moved
        assert os.read(fd, 4) == b"host"  # control: the host may
        os.close(os.dup(fd))
    finally:
        os.close(fd)


def test_host_listening_socket_cannot_be_adopted(policy: Policy) -> None:
    """socket.fromfd / socket.socket(fileno=) on the server's listening socket (stealing
    other users' connections): refused; control: the host can."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        fd = server.fileno()
        with Sandbox(policy):
            with pytest.raises(SystemCallRefused):
                socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
            with pytest.raises(SystemCallRefused):
                socket.socket(fileno=fd)
        copy = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
        assert copy.getsockname() == server.getsockname()
        copy.close()
    finally:
        server.close()


def test_a_closed_number_reused_by_the_host_is_not_the_requests(policy: Policy,
                                                                tmp_path: Path) -> None:
    """The request opens a pipe (its own), closes one end through a file object (no
    os.close), the host opens a file that gets the same number: the request's write to that
    number is refused, and the host's file is untouched."""
    sandbox = Sandbox(policy)
    scope = sandbox.open_scope()
    try:
        read_end, write_end = call_in_scope(scope, os.pipe)
        call_in_scope(scope, lambda: open(write_end, "wb").close())  # noqa: SIM115
        host_file = tmp_path / "host.txt"
        reused = os.open(host_file, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert reused == write_end  # the host got the number back
            with pytest.raises(SystemCallRefused):
                call_in_scope(scope, os.write, reused, b"evil")
        finally:
            os.close(reused)
        call_in_scope(scope, os.close, read_end)
    finally:
        close_scope(scope)
    assert host_file.read_bytes() == b""


def _signal_owner_attempt(victim: int) -> None:
    """The app's own pipe, set to signal ``victim`` with SIGKILL when data arrives."""
    import fcntl

    reader, writer = os.pipe()
    try:
        fcntl.fcntl(reader, fcntl.F_SETOWN, victim)
        fcntl.fcntl(reader, fcntl.F_SETSIG, signal.SIGKILL)
        fcntl.fcntl(reader, fcntl.F_SETFL, fcntl.fcntl(reader, fcntl.F_GETFL) | os.O_ASYNC)
        os.write(writer, b"x")
    finally:
        os.close(reader)
        os.close(writer)


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_SETSIG"), reason="Linux fcntl")
def test_fcntl_signal_ownership_is_refused_on_the_requests_own_pipe(app_root: Path) -> None:
    """F_SETOWN + F_SETSIG + O_ASYNC on a pipe of its own made the kernel kill any process
    of the user's (os.kill is refused): fcntl commands are an allow-list (locks, flags)."""
    policy = Policy.python3(app_root=app_root, allow_processes=False)
    control = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _signal_owner_attempt(control.pid)
        assert control.wait(timeout=30) == -signal.SIGKILL  # the plain control: killed
    finally:
        control.kill()
        control.wait()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Sandbox(policy), pytest.raises(SystemCallRefused, match="fcntl.fcntl"):
            _signal_owner_attempt(victim.pid)
        assert victim.poll() is None  # refused before any signal could be set up
        with Sandbox(policy):  # locks and flags on its own descriptors still work
            import fcntl

            reader, writer = os.pipe()
            flags = fcntl.fcntl(reader, fcntl.F_GETFL)
            fcntl.fcntl(reader, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            assert not os.get_blocking(reader)
            os.close(reader)
            os.close(writer)
    finally:
        victim.kill()
        victim.wait()


def test_standard_input_flags_are_the_hosts(app_root: Path) -> None:
    """fd 0 may be read (input()), not reconfigured: O_NONBLOCK on it is set on the open file
    the host shares with whoever started it."""
    script = textwrap.dedent(f"""
        import os, sys
        from gae_sandbox import Policy, Sandbox
        sandboxed = sys.argv[1] == "1"
        try:
            if sandboxed:
                with Sandbox(Policy.python27(app_root={str(app_root)!r})):
                    os.set_blocking(0, False)
            else:
                os.set_blocking(0, False)
        except Exception as error:
            print("refused", type(error).__name__)
        print("blocking", os.get_blocking(0))
        """)
    outputs = []
    for sandboxed in ("0", "1"):
        reader, writer = os.pipe()
        try:
            result = subprocess.run([sys.executable, "-c", script, sandboxed], stdin=reader,
                                    capture_output=True, text=True, timeout=60, check=False)
        finally:
            os.close(reader)
            os.close(writer)
        outputs.append(result.stdout)
    assert outputs[0] == "blocking False\n"  # the control
    assert outputs[1] == "refused SystemCallRefused\nblocking True\n"
