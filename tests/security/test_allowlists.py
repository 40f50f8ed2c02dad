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
from typing import Any

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


# --- objects that hold a descriptor; more functions on the lists ---------------------------


def _host_reuses_after(app_step: Any, sandboxed: bool, policy: Policy) -> tuple[bytes, str]:
    """The app makes a socket and runs ``app_step(sock)``; the host then accepts a user's
    connection (which gets the lowest free number) and the app sends on its socket. What the
    user's client received, and what the app step raised."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=5)
    client.settimeout(0.5)
    refused = ""
    conn = None
    try:
        def app() -> Any:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                app_step(sock)
            except SystemCallRefused as error:
                return sock, type(error).__name__
            return sock, ""

        if sandboxed:
            sandbox = Sandbox(policy)
            scope = sandbox.open_scope()
            try:
                sock, refused = call_in_scope(scope, app)
                conn, _ = listener.accept()  # the host's connection to a user
                try:
                    call_in_scope(scope, sock.send, b"INJECTED")
                except OSError:
                    pass
                call_in_scope(scope, sock.close)
            finally:
                close_scope(scope)
        else:
            sock, refused = app()
            conn, _ = listener.accept()
            try:
                sock.send(b"INJECTED")
            except OSError:
                pass
        try:
            received = client.recv(100)
        except TimeoutError:
            received = b""
        return received, refused
    finally:
        for item in (conn, client, listener):
            if item is not None:
                item.close()


def _fileio(fd: int) -> Any:
    import _io

    return _io.FileIO(fd, "rb")


#: Ways to close a socket's number behind the socket object's back, and whether the sandbox
#: refuses the step itself (else the old socket lets go of the number: its send fails).
CLOSED_BEHIND_THE_SOCKET: dict[str, tuple[Any, str]] = {
    "os.close": (lambda sock: os.close(sock.fileno()), "SystemCallRefused"),
    "a second socket": (lambda sock: socket.socket(fileno=sock.fileno()).close(), ""),
    "open(fd)": (lambda sock: open(sock.fileno(), "rb", buffering=0).close(),  # noqa: SIM115
                 "SystemCallRefused"),
    "os.fdopen": (lambda sock: os.fdopen(sock.fileno(), "rb").close(), "SystemCallRefused"),
    "_io.FileIO": (lambda sock: _fileio(sock.fileno()).close(), "SystemCallRefused"),
}


@pytest.mark.parametrize("case", sorted(CLOSED_BEHIND_THE_SOCKET))
def test_a_socket_closed_behind_its_back_cannot_write_into_a_host_connection(
        policy: Policy, case: str) -> None:
    """A number closed behind the socket object that holds it (by number, or by a second
    object adopting it) leaves the object holding it; once the host reuses the number for a
    user's connection the object's ``send`` (no audit event) would write into it. Closing
    or adopting a number an object of the request holds is refused, and a second socket
    taking it over (``ssl``'s way) makes the first let go (control: without the sandbox the
    user receives the app's bytes)."""
    step, refusal = CLOSED_BEHIND_THE_SOCKET[case]
    plain, _ = _host_reuses_after(step, False, policy)
    assert plain == b"INJECTED"
    received, refused = _host_reuses_after(step, True, policy)
    assert refused == refusal and received == b""


def test_a_file_object_holds_its_number_even_with_closefd_false(policy: Policy) -> None:
    """``open(fd, closefd=False)`` keeps using the number: closing it by number is refused
    while the file object is open, allowed once it is closed."""
    with Sandbox(policy):
        reader, writer = os.pipe()
        file = open(writer, "wb", buffering=0, closefd=False)  # noqa: SIM115
        with pytest.raises(SystemCallRefused, match="held by a FileIO"):
            os.close(writer)
        file.close()
        os.close(writer)
        os.close(reader)


def test_detach_gives_the_number_back_to_the_request(policy: Policy) -> None:
    with Sandbox(policy):
        sock = socket.socket()
        fd = sock.detach()
        again = socket.socket(fileno=fd)  # the request's own number, adopted again
        again.close()


def _close_through_open(loop: Any) -> None:
    open(loop.fileno(), "rb", buffering=0).close()  # noqa: SIM115


def _close_a_copy_through_fileio(loop: Any) -> None:
    copy = os.dup(loop.fileno())  # the same anonymous inode, held by no object
    loop.close()
    _fileio(copy).close()


@pytest.mark.parametrize("close", [_close_through_open, _close_a_copy_through_fileio])
def test_an_event_loop_closed_unseen_is_not_the_requests(policy: Policy, close: Any) -> None:
    """Event loops share one anonymous inode, so the open file cannot tell them apart: the
    request's epoll (or a copy of its number) closed through a file object, unseen by the
    sandbox, then the host's selector with the same number: the adoption of the epoll's
    number is refused, and ``epoll.fromfd`` of a number a file object took is refused; the
    host's selector keeps working (control: without the sandbox the app closes it)."""
    import select
    import selectors

    def attempt(sandboxed: bool) -> tuple[str, bool]:
        made: dict[str, Any] = {}
        host: dict[str, Any] = {}

        def close_unseen() -> None:
            loop = made["loop"] = select.epoll()
            made["number"] = loop.fileno()
            close(loop)

        def adopt() -> str:
            try:
                stolen = select.epoll.fromfd(made["number"])
            except SystemCallRefused:
                return "refused"
            stolen.close()  # the host's selector, closed by the app
            return "adopted"

        reader, writer = os.pipe()
        try:
            if sandboxed:
                scope = Sandbox(policy).open_scope()
                try:
                    try:
                        call_in_scope(scope, close_unseen)
                    except SystemCallRefused:
                        outcome = "refused"
                        host["selector"] = selectors.EpollSelector()
                    else:
                        host["selector"] = selectors.EpollSelector()  # the same number
                        assert host["selector"].fileno() == made["number"]
                        outcome = call_in_scope(scope, adopt)
                finally:
                    close_scope(scope)
            else:
                close_unseen()
                host["selector"] = selectors.EpollSelector()
                outcome = adopt()
            try:
                host["selector"].register(reader, selectors.EVENT_READ)
                works = True
            except OSError:
                works = False
            host["selector"].close()
            return outcome, works
        finally:
            os.close(reader)
            os.close(writer)

    assert attempt(False) == ("adopted", False)
    assert attempt(True) == ("refused", True)


def test_extended_attributes_outside_the_readable_folders(policy: Policy, app_root: Path,
                                                          outside: Path) -> None:
    """``posix.getxattr``/``listxattr`` (not the patched ``os`` ones): judged by their audit
    event as reads (control: they read the outside file's attribute)."""
    secret = outside / "secret.txt"
    try:
        os.setxattr(secret, "user.secret", b"XATTR")
        os.setxattr(app_root / "data.txt", "user.note", b"ok")
    except OSError as error:  # a filesystem without user attributes
        pytest.skip(f"no user xattrs here: {error}")
    posix = sys.modules[os.name]
    assert posix.getxattr(str(secret), "user.secret") == b"XATTR"
    with Sandbox(policy):
        assert posix.getxattr(str(app_root / "data.txt"), "user.note") == b"ok"
        for call in (lambda: posix.getxattr(str(secret), "user.secret"),
                     lambda: posix.listxattr(str(secret)),
                     lambda: os.getxattr(secret, "user.secret")):
            with pytest.raises(PermissionError, match="outside the readable folders"):
                call()


def test_the_clock_is_not_the_requests(policy: Policy) -> None:
    """``time.clock_settime`` is not on the list of ``time`` functions: it never reaches the
    kernel. (Control: the kernel answers this call itself, refusing the monotonic clock.)"""
    import time

    with pytest.raises(OSError) as kernel:
        time.clock_settime(time.CLOCK_MONOTONIC, 0.0)
    assert not isinstance(kernel.value, SystemCallRefused)
    with Sandbox(policy):
        for call in (lambda: time.clock_settime(time.CLOCK_MONOTONIC, 0.0),
                     lambda: time.clock_settime_ns(time.CLOCK_MONOTONIC, 0)):
            with pytest.raises(SystemCallRefused, match="list of time functions"):
                call()
        assert time.time() > 0 and time.strftime("%Y")


_IMPORT_LOCK_PROBE = """
import threading
done = []
worker = threading.Thread(target=lambda: (__import__("xmlrpc.client"), done.append(1)),
                          daemon=True)
worker.start()
worker.join(5)
print("host import done" if done else "host import hung")
"""


IMPORT_LOCK_HOLDERS = {
    "import_lock": "import _imp\n_imp.acquire_lock()\n_imp.acquire_lock()\nimport json, csv\n",
    "module_lock": ("import importlib._bootstrap as bootstrap\n"
                    "kept = bootstrap._get_module_lock('xmlrpc.client')\nkept.acquire()\n"),
    # a thread of the request's, in a sandbox of its own that the request's end closes
    "nested_in_a_thread": (
        "import _imp, threading, time\nfrom gae_sandbox import Policy, Sandbox\n"
        "taken = threading.Event()\n"
        "def worker():\n"
        "    Sandbox(Policy.python27(app_root='.', deadline=None)).__enter__()\n"
        "    _imp.acquire_lock()\n    taken.set()\n    time.sleep(0.5)\n"
        "threading.Thread(target=worker).start()\ntaken.wait(5)\n"),
}


@pytest.mark.parametrize("case", sorted(IMPORT_LOCK_HOLDERS))
def test_import_locks_a_request_keeps_are_released_when_it_ends(app_root: Path,
                                                                case: str) -> None:
    """The interpreter's import lock (``_imp.acquire_lock``) or a module's lock taken and
    never released hangs every later fresh import of that module by the host's threads
    (control); the sandbox releases what a thread of the request still holds as it leaves
    the request (or as the thread ends), and imports inside the request still work."""
    code = IMPORT_LOCK_HOLDERS[case]
    _, plain_out = _child(code, _IMPORT_LOCK_PROBE, False, app_root)
    assert "host import hung" in plain_out
    status, out = _child(code, _IMPORT_LOCK_PROBE, True, app_root)
    assert status == 0 and "host import done" in out, out


_FORK_SCRIPT = """
import os, sys
from gae_sandbox import Policy, Sandbox
me = os.getpid()
with Sandbox(Policy.python3(app_root=sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    print("child status", os.waitstatus_to_exitcode(status))
    try:
        os._exit(9)
    except Exception as error:
        print("parent refused", type(error).__name__)
print("end of the host's code in", "the parent" if os.getpid() == me else "THE CHILD")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_child_the_request_forked_may_end_itself(app_root: Path) -> None:
    """Where the policy allows processes, a child the request forks is the request's: its
    ``os._exit`` ends it (before, refused, the error unwound into the host's code in the
    child). In the host's process ``os._exit`` is still refused."""
    result = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, str(app_root)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.splitlines() == [
        "child status 3", "parent refused SystemCallRefused",
        "end of the host's code in the parent"], (result.stdout, result.stderr)


def test_gc_disable_switches_only_the_requests_view(app_root: Path) -> None:
    """``gc.disable()`` (``timeit`` calls it) is answered in the request (``isenabled``
    says False there) and the process's collector keeps running (control: unsandboxed, the
    process's collector is off)."""
    code = "import gc\ngc.disable()\nprint('in the request', gc.isenabled())\n"
    probe = "import gc\nprint('after', gc.isenabled())\n"
    _, plain_out = _child(code, probe, False, app_root)
    assert "after False" in plain_out
    status, out = _child(code, probe, True, app_root)
    assert status == 0 and "in the request False" in out and "after True" in out, out
