"""OS-level confinement (``confine_process``, ``serve --isolation os``).

Confinement cannot be undone, so every confined run is a child process. Each escape is code the
in-process layer cannot stop (it reaches C directly, or runs after that layer was broken); it
runs once confined, where its effect must not happen, and once unconfined, where it must, so
the test can fail. Effects are observed from outside the child: files, a process still alive,
connections a listener of this test accepted, bytes written to the child's stdout.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import ConfinementUnavailable, Policy
from gae_sandbox.confine import landlock_abi, seccomp_available
from loopback import accepted_any, backlog_listener, free_port, http_get

ABI = landlock_abi()
needs_kernel = pytest.mark.skipif(
    ABI < 6 or not seccomp_available(),
    reason=f"needs Landlock ABI >= 6 (TCP rules, scopes) and seccomp; this kernel: ABI {ABI}, "
           f"seccomp {'yes' if seccomp_available() else 'no'}",
)

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from gae_sandbox import Policy, confine_process
    ROOT, OUT, CONFINE = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    ALLOWED = tuple(json.loads(sys.argv[4]))
    MARKER = os.path.join(OUT, "marker")
    policy = Policy.python27(app_root=ROOT, allowed_hosts=ALLOWED)
    {setup}
    if CONFINE:
        confine_process(policy)
    def attempt():
    {body}
    try:
        result = {{"ok": True, "result": repr(attempt())}}
    except BaseException as error:
        result = {{"ok": False, "error": type(error).__name__,
                  "errno": getattr(error, "errno", None), "message": str(error)}}
    sys.stdout.write("\\nRESULT " + json.dumps(result) + "\\n")
    """
)


def run_child(root: Path, out: Path, setup: str, body: str, *, confine: bool,
              allowed: tuple[str, ...] = (), env: dict[str, str] | None = None
              ) -> tuple[dict[str, Any], str]:
    code = CHILD.format(setup=textwrap.indent(textwrap.dedent(setup), ""),
                        body=textwrap.indent(textwrap.dedent(body), "    "))
    completed = subprocess.run(
        [sys.executable, "-c", code, str(root), str(out), "1" if confine else "0",
         json.dumps(list(allowed))],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"child failed (exit {completed.returncode}):\n{completed.stderr}"
    return json.loads(lines[-1][len("RESULT "):]), completed.stdout


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An app root and, beside it (outside everything readable), the escapes' target folder."""
    root = tmp_path / "app"
    root.mkdir()
    (root / "data.txt").write_text("app data\n")
    out = tmp_path / "outside"
    out.mkdir()
    return root, out


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback TCP listener nobody is allowed to reach."""
    with backlog_listener() as server:
        yield server


# -- escapes the in-process layer cannot stop ----------------------------------------------

ESCAPES: dict[str, tuple[str, str]] = {
    "ctypes libc.system": ("", """
        import ctypes
        return ctypes.CDLL(None).system(("touch " + MARKER).encode())
    """),
    "ctypes.memmove + libc open/write": ("", """
        # what code that has broken the in-process layer does next: C calls, no audit events
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        path = MARKER.encode()
        buffer = ctypes.create_string_buffer(len(path) + 1)
        ctypes.memmove(buffer, path, len(path))
        fd = libc.open(buffer, os.O_WRONLY | os.O_CREAT, 0o644)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "libc open")
        return libc.write(fd, b"escaped", 7)
    """),
    "subprocess (_posixsubprocess.fork_exec)": ("", """
        import subprocess
        return subprocess.run(["touch", MARKER]).returncode
    """),
    "os.fork": ("", """
        pid = os.fork()
        if pid == 0:
            open(MARKER, "w").close()
            os._exit(0)
        return os.waitpid(pid, 0)
    """),
}


@needs_kernel
@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_leaves_no_marker(name: str, dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    setup, body = ESCAPES[name]
    result, _ = run_child(root, out, setup, body, confine=False)
    assert (out / "marker").exists(), f"control: {name} did not work unconfined: {result}"
    (out / "marker").unlink()
    result, _ = run_child(root, out, setup, body, confine=True)
    assert not (out / "marker").exists(), f"{name} escaped confinement: {result}"


@needs_kernel
def test_shared_object_outside_the_readable_set_is_not_loaded(
        dirs: tuple[Path, Path], tmp_path: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("needs a C compiler to build the test's shared object")
    root, out = dirs
    source = tmp_path / "evil.c"
    source.write_text(textwrap.dedent("""
        #include <unistd.h>
        __attribute__((constructor)) static void loaded(void) { write(1, "EVIL-LOADED\\n", 12); }
        int evil(void) { return 42; }
    """))
    library = out / "evil.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True,
                   timeout=60)
    body = f"""
        import ctypes
        return ctypes.CDLL({str(library)!r}).evil()
    """
    result, stdout = run_child(root, out, "", body, confine=False)
    assert "EVIL-LOADED" in stdout and result["result"] == "42"
    result, stdout = run_child(root, out, "", body, confine=True)
    assert "EVIL-LOADED" not in stdout
    assert not result["ok"] and result["error"] == "OSError", result


@needs_kernel
def test_host_fd_opened_before_confinement_gets_no_data(dirs: tuple[Path, Path]) -> None:
    """Landlock checks at open(), so a host file opened before confinement stays writable by
    Landlock's rules; RLIMIT_FSIZE=0 stops writes (EFBIG) and seccomp truncation."""
    root, out = dirs
    host_file = out / "host.log"
    setup = f"""
    host = open({str(host_file)!r}, "ab", buffering=0)
    host.write(b"host\\n")
    """
    write = "return os.write(host.fileno(), b'escaped\\n')"
    truncate = "return os.ftruncate(host.fileno(), 0)"
    run_child(root, out, setup, write, confine=False)
    assert host_file.read_bytes() == b"host\nescaped\n"
    run_child(root, out, setup, truncate, confine=False)
    assert host_file.read_bytes() == b""
    result, _ = run_child(root, out, setup, write, confine=True)
    assert host_file.read_bytes() == b"host\n"
    assert result["errno"] == 27, result  # EFBIG
    result, _ = run_child(root, out, setup, truncate, confine=True)
    assert host_file.read_bytes() == b"host\nhost\n"
    assert result["errno"] == 1, result  # EPERM


@needs_kernel
@pytest.mark.parametrize("how", ["_socket", "socket(fileno=...)"])
def test_connect_to_a_port_not_allowed(how: str, dirs: tuple[Path, Path],
                                       listener: socket.socket) -> None:
    root, out = dirs
    port = listener.getsockname()[1]
    with socket.socket() as allowed_server:
        allowed_server.bind(("127.0.0.1", 0))
        allowed_server.listen(8)
        allowed_server.setblocking(False)
        allowed = (f"127.0.0.1:{allowed_server.getsockname()[1]}",)
        make = ("s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)" if how == "_socket"
                else "s = socket.socket(fileno=_socket.socket().detach())")
        body = f"""
            import _socket, socket
            {make}
            s.settimeout(10)
            return s.connect(("127.0.0.1", PORT))
        """
        for target, server in ((port, listener), (allowed_server.getsockname()[1],
                                                  allowed_server)):
            code = body.replace("PORT", str(target))
            run_child(root, out, "", code, confine=False, allowed=allowed)
            assert accepted_any(server), "control: the unconfined connection did not arrive"
            result, _ = run_child(root, out, "", code, confine=True, allowed=allowed)
            if server is listener:
                assert not accepted_any(server), f"a confined child reached port {port}"
                assert result["errno"] == 13, result  # EACCES from Landlock
            else:  # the port the policy names stays reachable
                assert accepted_any(server) and result["ok"], result


@needs_kernel
def test_no_listening_socket(dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    setup = """
    import _socket
    early = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    early.bind(("127.0.0.1", 0))
    """
    bind = """
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s.getsockname()
    """
    listen = "early.listen(); return early.getsockname()"
    for body, refused_errno in ((bind, 13), (listen, 1)):  # Landlock EACCES, seccomp EPERM
        result, _ = run_child(root, out, setup, body, confine=False)
        assert result["ok"], result
        result, _ = run_child(root, out, setup, body, confine=True)
        assert result["errno"] == refused_errno, result


@needs_kernel
def test_no_udp_without_allowed_hosts(dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        body = f"""
            import _socket
            s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
            return s.sendto(b"leak", ("127.0.0.1", {receiver.getsockname()[1]}))
        """
        run_child(root, out, "", body, confine=False)
        assert receiver.recv(16) == b"leak"
        result, _ = run_child(root, out, "", body, confine=True)
        with pytest.raises(BlockingIOError):
            receiver.recv(16)
        assert result["errno"] == 1, result


@needs_kernel
def test_no_signals_to_other_processes_and_no_chmod(dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    target = out / "target"
    target.write_text("x")
    target.chmod(0o600)
    chmod = f"return os.chmod({str(target)!r}, 0o777)"
    run_child(root, out, "", chmod, confine=False)
    assert target.stat().st_mode & 0o777 == 0o777
    target.chmod(0o600)
    result, _ = run_child(root, out, "", chmod, confine=True)
    assert target.stat().st_mode & 0o777 == 0o600, result

    kill = "return os.kill(int(os.environ['VICTIM']), 15)"
    victims = []
    try:
        for confine in (False, True):
            victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            victims.append(victim)
            result, _ = run_child(root, out, "", kill, confine=confine,
                                  env={"VICTIM": str(victim.pid)})
            if confine:
                assert victim.poll() is None and result["errno"] == 1, result
            else:
                assert victim.wait(timeout=30) == -signal.SIGTERM
    finally:
        for victim in victims:
            victim.kill()
            victim.wait(timeout=30)


# -- what still works, and failing closed --------------------------------------------------


@needs_kernel
def test_confined_process_keeps_working(dirs: tuple[Path, Path]) -> None:
    """Reads of the app and the standard library, C-extension imports, threads, signals to
    itself, and the in-process sandbox inside (its refusals keep their types)."""
    root, out = dirs
    body = """
        import decimal, json, threading, signal, _ssl
        from gae_sandbox import Sandbox, FileWriteRefused
        seen = []
        thread = threading.Thread(target=lambda: seen.append(open(os.path.join(ROOT,
                                  "data.txt")).read()))
        thread.start()
        thread.join()
        os.kill(os.getpid(), 0)
        with Sandbox(policy):
            try:
                open(os.path.join(ROOT, "new.txt"), "w")
            except FileWriteRefused:
                refused = "FileWriteRefused"
        with open(os.devnull, "w") as null:
            null.write("discarded")
        return [seen[0], refused, str(decimal.Decimal("1.5") * 2), json.dumps([1])]
    """
    result, _ = run_child(root, out, "", body, confine=True)
    assert result == {"ok": True,
                      "result": repr(["app data\n", "FileWriteRefused", "3.0", "[1]"])}


@needs_kernel
@pytest.mark.skipif(not os.path.isfile("/usr/share/zoneinfo/Europe/Paris"),
                    reason="needs the system time-zone database (/usr/share/zoneinfo)")
def test_a_confined_process_reads_the_time_zone_database(dirs: tuple[Path, Path]) -> None:
    """zoneinfo reads TZPATH (/usr/share/zoneinfo), which the in-process policy allows: a
    confined worker must too (Django with TIME_ZONE set renders local times)."""
    root, out = dirs
    body = """
        import datetime, time, zoneinfo
        paris = zoneinfo.ZoneInfo.no_cache("Europe/Paris")
        with open(os.path.join(zoneinfo.TZPATH[0], "Europe", "Paris"), "rb") as file:
            magic = file.read(4)
        time.localtime()
        return [str(datetime.datetime(2020, 6, 1, tzinfo=paris).utcoffset()), magic]
    """
    result, _ = run_child(root, out, "", body, confine=True)
    assert result == {"ok": True, "result": repr(["2:00:00", b"TZif"])}


def test_refuses_a_process_that_already_has_threads(dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    setup = """
    import threading
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
    try:
        confine_process(policy)
    except RuntimeError as error:
        print("REFUSED", error)
    stop.set()
    """
    _, stdout = run_child(root, out, setup, "return open(MARKER, 'w').close()", confine=False)
    assert "REFUSED confine_process must run while the process has one thread" in stdout
    assert (out / "marker").exists()  # nothing was applied


@pytest.mark.parametrize("mode", ["required", "best_effort"])
def test_missing_kernel_feature_fails_closed_unless_best_effort(
        mode: str, dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    setup = f"""
    import warnings
    import gae_sandbox.confine as confine
    confine.landlock_abi = lambda: 0  # a kernel without Landlock
    policy = policy.replace(os_confinement={mode!r})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            print("APPLIED", confine_process(policy).applied)
        except Exception as error:
            print("ERROR", type(error).__name__, error)
    for warning in caught:
        print("WARNING", warning.message)
    """
    result, stdout = run_child(root, out, setup, "return os.fork() if False else os.getpid()",
                               confine=False)
    if mode == "required":
        assert "ERROR ConfinementUnavailable gae_sandbox refused os confinement without " \
               "Landlock" in stdout
        assert "Policy.os_confinement" in stdout and "APPLIED" not in stdout
    else:
        assert "WARNING gae_sandbox refused os confinement without Landlock" in stdout
        assert "APPLIED ('rlimits', 'no_new_privs', 'seccomp')" in stdout
    assert result["ok"]


def test_policy_field_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Policy.os_confinement must be one of 'required', "
                                         "'best_effort', got 'maybe'"):
        Policy(app_root=str(tmp_path), os_confinement="maybe")  # type: ignore[arg-type]
    assert Policy(app_root=str(tmp_path)).os_confinement == "required"
    assert issubclass(ConfinementUnavailable, RuntimeError)


# -- serve --isolation os ------------------------------------------------------------------

SERVED_APP = textwrap.dedent(
    """
    import os

    WORKER = os.urandom(8).hex()  # one per worker (os.getpid() answers -1 in a request)

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/loop":
            sum(range(10 ** 12))  # C code: nothing in-process interrupts it
        if path == "/escape":
            import ctypes  # let through: the server runs in report mode
            rc = ctypes.CDLL(None).system(("touch " + os.environ["MARKER"]).encode())
            body = "system returned %d" % rc
        else:
            body = "pid %s" % WORKER
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.encode()]
    """
)


def _get(port: int, path: str, timeout: float = 15.0) -> tuple[int, bytes]:
    return http_get(port, path, timeout)


class _Server:
    def __init__(self, tmp_path: Path, isolation: str) -> None:
        app = tmp_path / f"served-{isolation}"
        app.mkdir()
        (app / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
        (app / "main.py").write_text(SERVED_APP)
        self.marker = tmp_path / f"marker-{isolation}"
        self.port = free_port()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gae_sandbox", "serve", str(app), "--port", str(self.port),
             "--isolation", isolation, "--server", "gunicorn", "--workers", "1",
             "--mode", "report", "--deadline", "1", "--timeout", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "MARKER": str(self.marker)},
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, f"server exited:\n{self.log}"
            try:
                if _get(self.port, "/", timeout=2)[0] == 200:
                    return
            except OSError:
                assert time.monotonic() < deadline, f"server did not start:\n{self.log}"
                time.sleep(0.1)

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    @property
    def log(self) -> str:
        return "".join(self.output)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)


@needs_kernel
def test_serve_isolation_os_kills_a_stuck_worker_and_stops_an_escape(tmp_path: Path) -> None:
    server = _Server(tmp_path, "os")
    try:
        status, body = _get(server.port, "/escape")
        assert (status, body) == (200, b"system returned 32512"), server.log  # sh never ran
        assert not server.marker.exists()
        status, body = _get(server.port, "/")
        first_pid = body
        with pytest.raises((http.client.HTTPException, OSError)):
            _get(server.port, "/loop", timeout=30)  # the worker is killed: no response
        status, body = _get(server.port, "/")
        assert status == 200 and body.startswith(b"pid ") and body != first_pid, server.log
        assert "WORKER TIMEOUT" in server.log
        assert server.log.count("confined: rlimits, no_new_privs, landlock-fs") >= 2
    finally:
        server.stop()


@needs_kernel
def test_serve_without_isolation_lets_the_escape_through(tmp_path: Path) -> None:
    """The control of the test above: the same app and request, only --isolation differs."""
    server = _Server(tmp_path, "none")
    try:
        assert _get(server.port, "/escape") == (200, b"system returned 0"), server.log
        assert server.marker.exists()
    finally:
        server.stop()


def test_serve_isolation_os_needs_gunicorn(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                       "handlers:\n- url: /.*\n  script: main.app\n")
    completed = subprocess.run(
        [sys.executable, "-m", "gae_sandbox", "serve", str(tmp_path), "--isolation", "os",
         "--server", "waitress"], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "--isolation os runs gunicorn worker processes" in completed.stderr


@needs_kernel
def test_denied_system_calls_answer_eperm(dirs: tuple[Path, Path]) -> None:
    """Calls with no use in a worker answer EPERM (clone3 ENOSYS, so glibc falls back to
    clone); unconfined, the same calls get past the filter (other errors, or success)."""
    root, out = dirs
    body = """
        import ctypes, platform
        from gae_sandbox.confine import _ARCHES
        numbers = _ARCHES[platform.machine()][2]
        libc = ctypes.CDLL(None, use_errno=True)
        answers = {}
        for name in ("memfd_create", "unshare", "ptrace", "io_uring_setup", "bpf",
                     "personality", "mount", "keyctl", "perf_event_open", "userfaultfd",
                     "clone3", "setns", "process_vm_writev"):
            ctypes.set_errno(0)
            result = libc.syscall(numbers[name], 0, 0, 0, 0, 0)
            answers[name] = 0 if result >= 0 else ctypes.get_errno()
        return answers
    """
    result, _ = run_child(root, out, "", body, confine=True)
    answers = ast.literal_eval(result["result"])
    assert answers.pop("clone3") == 38  # ENOSYS
    assert set(answers.values()) == {1}, answers  # EPERM
    result, _ = run_child(root, out, "", body, confine=False)
    control = ast.literal_eval(result["result"])
    assert control["memfd_create"] != 1 and control["personality"] == 0, control


@needs_kernel
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the x32 ABI exists on x86_64 only")
def test_a_call_through_another_abi_kills_the_process(dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    code = ("import ctypes, tempfile; from gae_sandbox import Policy, confine_process; "
            f"confine_process(Policy(app_root={str(root)!r})); "
            "ctypes.CDLL(None).syscall(0x40000000 | 39); print('survived')")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60)
    assert completed.returncode == -signal.SIGSYS and "survived" not in completed.stdout


@needs_kernel
def test_threads_false_refuses_new_threads(dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    setup = "import threading\nconfine_process(policy, threads=False)"
    body = "threading.Thread(target=print).start()"
    result, _ = run_child(root, out, setup, body, confine=False)
    assert not result["ok"] and "can't start new thread" in result["message"], result


@needs_kernel
def test_rlimits_bound_memory_and_open_files(dirs: tuple[Path, Path]) -> None:
    root, out = dirs
    setup = "import resource\nconfine_process(policy, address_space_mb=512, open_files=64)"
    body = """
        limits = resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            bytearray(1024 ** 3)
        except MemoryError:
            return limits, "MemoryError"
    """
    result, _ = run_child(root, out, setup, body, confine=False)
    assert result["result"] == repr((((512 << 20, 512 << 20), (64, 64)), "MemoryError"))


# -- the allow-list ------------------------------------------------------------------------


def test_allow_list_names_known_calls_and_no_refused_one() -> None:
    """Every listed call has a number on some architecture the filter knows (a typo would
    silently allow nothing), and nothing the filter must refuse is on the list."""
    from gae_sandbox.confine import _AARCH64, _CHECKED, _X86_64, allowed_system_calls

    listed = allowed_system_calls(no_file_data=False)
    assert len(set(listed)) == len(listed)
    assert [name for name in (*listed, *_CHECKED) if name not in _X86_64 | _AARCH64] == []
    refused = {"execve", "execveat", "fork", "vfork", "ptrace", "listen", "shmget", "shmat",
               "semget", "msgget", "chmod", "fchmod", "fchown", "setxattr", "utime", "utimes",
               "futimesat", "memfd_create", "mount", "unshare", "setns", "bpf", "io_uring_setup",
               "keyctl", "setrlimit", "tkill", "pidfd_send_signal", "pidfd_getfd",
               "process_vm_writev", "personality"}
    assert refused & set(listed) == set() and refused & set(_CHECKED) == set()
    assert "openat2" in listed and "statx" in listed  # filesystem.py's race-free reads
    assert not {"truncate", "ftruncate", "fallocate"} & set(allowed_system_calls())


@needs_kernel
def test_calls_off_the_allow_list_answer_eperm(dirs: tuple[Path, Path]) -> None:
    """SysV IPC, ioctl requests not listed, calls on another process: refused before the
    kernel looks at their arguments. Unconfined, the same calls reach the kernel, which
    answers something else (their arguments are invalid on purpose: no lasting effect)."""
    root, out = dirs
    body = """
        import ctypes, platform, random
        from gae_sandbox.confine import _ARCHES
        numbers = _ARCHES[platform.machine()][2]
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(os.path.join(ROOT, "data.txt"), os.O_RDONLY)
        key = random.randrange(1 << 24, 1 << 30)
        calls = {
            "shmget": (numbers["shmget"], 0, 0, 0),  # IPC_PRIVATE, size 0: EINVAL
            "shmat": (numbers["shmat"], -1, 0, 0),
            "shmctl": (numbers["shmctl"], -1, 2, 0),  # IPC_STAT
            "semget": (numbers["semget"], 0, -1, 0),  # nsems -1: EINVAL
            "msgget": (numbers["msgget"], key, 0),  # no IPC_CREAT: ENOENT
            "ioctl FS_IOC_SETFLAGS": (numbers["ioctl"], fd, 0x40086602, 0),  # NULL: EFAULT
            "ioctl FS_IOC_SETVERSION": (numbers["ioctl"], fd, 0x40087602, 0),
            "ioctl FS_IOC_GETFLAGS": (numbers["ioctl"], fd, 0x80086601, 0),
            "ioctl TIOCSTI": (numbers["ioctl"], fd, 0x5412, 0),
            "prlimit64 of the parent": (numbers["prlimit64"], os.getppid(), 0, 1, 0),
            "sched_setaffinity of the parent": (numbers["sched_setaffinity"], os.getppid(), 0, 0),
            "ioprio_set of the parent": (numbers["ioprio_set"], 1, os.getppid(), -1),
            "setpriority of a process group": (numbers["setpriority"], 1, 2**31 - 1, 0),
            "utime of a path": (numbers["utimensat"], -100, ROOT.encode(), 1, 0),  # bad times
            "memfd_create": (numbers["memfd_create"], 0, 0),  # NULL name: EFAULT
        }
        answers = {}
        for name, (number, *args) in calls.items():
            ctypes.set_errno(0)
            result = libc.syscall(number, *args)
            answers[name] = 0 if result >= 0 else ctypes.get_errno()
        return answers
    """
    result, _ = run_child(root, out, "", body, confine=True)
    answers = ast.literal_eval(result["result"])
    assert set(answers.values()) == {1}, answers  # EPERM
    result, _ = run_child(root, out, "", body, confine=False)
    control = ast.literal_eval(result["result"])
    assert 1 not in control.values() and 0 not in control.values(), control


@needs_kernel
def test_what_stays_allowed_works(dirs: tuple[Path, Path]) -> None:
    """openat2 (filesystem.py's race-free reads), the listed ioctl requests (non-blocking
    sockets, close-on-exec, isatty), priorities and affinity of the process itself, and
    reading another process's limits."""
    root, out = dirs
    body = """
        import ctypes, socket, resource
        libc = ctypes.CDLL(None, use_errno=True)
        how = (ctypes.c_uint64 * 3)(os.O_RDONLY | os.O_CLOEXEC, 0, 0x04)  # RESOLVE_NO_SYMLINKS
        fd = libc.syscall(437, -100, os.path.join(ROOT, "data.txt").encode(), how, 24)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "openat2")
        data = os.read(fd, 100)
        s = socket.socket()
        s.setblocking(False)
        os.set_inheritable(fd, True)
        os.setpriority(os.PRIO_PROCESS, 0, 2)
        os.setpriority(os.PRIO_PROCESS, os.getpid(), 3)
        os.sched_setaffinity(0, os.sched_getaffinity(0))
        return (data, os.isatty(fd), s.getblocking(), os.get_inheritable(fd),
                os.getpriority(os.PRIO_PROCESS, 0), resource.prlimit(os.getppid(),
                resource.RLIMIT_NOFILE) == resource.getrlimit(resource.RLIMIT_NOFILE) or "read")
    """
    result, _ = run_child(root, out, "", body, confine=True)
    assert result["ok"], result
    data, tty, blocking, inheritable, nice, _ = ast.literal_eval(result["result"])
    assert (data, tty, blocking, inheritable, nice) == (b"app data\n", False, False, True, 3)


@pytest.mark.parametrize("bad", [-1, True, "3"])
def test_heartbeat_fd_is_validated(bad: Any, tmp_path: Path) -> None:
    """Checked before anything is applied (so this runs in the test process itself)."""
    from gae_sandbox import confine_process

    with pytest.raises(ValueError, match="heartbeat_fd must be a descriptor"):
        confine_process(Policy(app_root=str(tmp_path)), heartbeat_fd=bad)


@needs_kernel
def test_futimens_only_on_the_heartbeat_descriptor(dirs: tuple[Path, Path]) -> None:
    """gunicorn's heartbeat sets the times of its (unlinked) temporary file through its
    descriptor; no other descriptor, and no path, gets new times."""
    root, out = dirs
    files = {name: out / name for name in ("heartbeat", "other", "by-path")}
    for path in files.values():
        path.write_text("x")
    body = f"""
        answers = {{}}
        for name, target in (("heartbeat", heartbeat), ("other", other),
                             ("by-path", {str(files["by-path"])!r})):
            try:
                os.utime(target, (1000000, 1000000))
                answers[name] = "changed"
            except OSError as error:
                answers[name] = error.errno
        return answers
    """
    setup = f"""
    heartbeat = os.open({str(files["heartbeat"])!r}, os.O_RDONLY)
    other = os.open({str(files["other"])!r}, os.O_RDONLY)
    if CONFINE:
        confine_process(policy, heartbeat_fd=heartbeat)
    """
    before = {name: path.stat().st_mtime for name, path in files.items()}
    result, _ = run_child(root, out, setup.replace("CONFINE", "False"), body, confine=False)
    assert all(path.stat().st_mtime == 1000000 for path in files.values()), result
    for name, path in files.items():
        os.utime(path, (before[name], before[name]))
    result, _ = run_child(root, out, setup.replace("CONFINE", "True"), body, confine=False)
    assert ast.literal_eval(result["result"]) == {"heartbeat": "changed", "other": 1,
                                                  "by-path": 1}, result
    assert files["heartbeat"].stat().st_mtime == 1000000
    assert [files[name].stat().st_mtime for name in ("other", "by-path")] == [
        before["other"], before["by-path"]]


@needs_kernel
def test_a_per_request_child_cannot_renice_its_worker(dirs: tuple[Path, Path]) -> None:
    """The worker's filter (fork=True) names the worker's own pid; a child it forks inherits
    that filter, so confine_child's filter is what keeps the child off its worker. The
    control: the same child without confine_child reaches it."""
    root, out = dirs
    setup = """
    from gae_sandbox.confine import confine_child, prepare_child
    confine_process(policy, fork=True)
    prepare_child()
    def renice_worker(confine):
        child = os.fork()
        if child == 0:
            if confine:
                confine_child()
            try:
                os.setpriority(os.PRIO_PROCESS, os.getppid(), 9)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(child, 0)
        return os.getpriority(os.PRIO_PROCESS, 0)
    """
    start = os.getpriority(os.PRIO_PROCESS, 0)
    if start >= 9:
        pytest.skip(f"the test already runs at nice {start}: no room to show a change")
    result, _ = run_child(root, out, setup, "return renice_worker(False)", confine=False)
    assert result["result"] == "9", f"control: a child without confine_child: {result}"
    result, _ = run_child(root, out, setup, "return renice_worker(True)", confine=False)
    assert result["result"] == str(start), result


# -- servers under the allow-list ----------------------------------------------------------

PID_APP = textwrap.dedent(
    """
    import os

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("pid %d" % os.getpid()).encode()]
    """
)

GUNICORN_CONFIG = textwrap.dedent(
    """
    import os
    from gae_sandbox import Policy, confine_process

    def post_fork(server, worker):
        if os.environ["HEARTBEAT"] == "gunicorn's":
            heartbeat = worker.tmp.fileno()
        else:  # the control: a descriptor gunicorn does not touch
            heartbeat = os.open(os.devnull, os.O_RDONLY)
        # max_file_size=None: the log is a regular file here (RLIMIT_FSIZE=0 would drop it)
        confine_process(Policy(app_root=os.environ["APP_ROOT"]), heartbeat_fd=heartbeat,
                        max_file_size=None)
        server.log.info("worker %s confined", os.getpid())
    """
)


def _wait_for(predicate: Any, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until ``predicate()``; the deadline only guards against a hang."""
    deadline = time.monotonic() + 60
    while not predicate():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def _answers(port: int) -> bool:
    try:
        return _get(port, "/", timeout=5)[0] == 200
    except OSError:
        return False


@needs_kernel
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
@pytest.mark.parametrize("heartbeat", ["gunicorn's", "another"])
def test_gunicorn_worker_keeps_its_heartbeat(worker_class: str, heartbeat: str,
                                             tmp_path: Path) -> None:
    """A gunicorn worker confined in post_fork serves with the allow-list in force; its
    heartbeat (futimens of WorkerTmp) works on the descriptor named, and only there: named
    wrongly (the control), the heartbeat is refused and the worker dies."""
    pytest.importorskip("gunicorn")
    root = tmp_path / "app"
    root.mkdir()
    (root / "pidapp.py").write_text(PID_APP)
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(GUNICORN_CONFIG)
    log = tmp_path / "gunicorn.log"
    port = free_port()
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(config), "-k", worker_class, "-w", "1",
             "-t", "30", "-b", f"127.0.0.1:{port}", "--chdir", str(root), "pidapp:app"],
            stdout=output, stderr=subprocess.STDOUT,
            env={**os.environ, "HEARTBEAT": heartbeat, "APP_ROOT": str(root)})
    try:
        if heartbeat == "gunicorn's":
            _wait_for(lambda: _answers(port), "the worker did not answer", process, log)
            first, second = _get(port, "/")[1], _get(port, "/")[1]
            assert first == second and first.startswith(b"pid "), log.read_text()
            assert "Exception in worker process" not in log.read_text()
            assert "confined" in log.read_text()
        else:
            _wait_for(lambda: "PermissionError" in log.read_text(errors="replace"),
                      "the heartbeat on another descriptor was not refused", process, log)
            assert "tmp.notify()" in log.read_text()  # gunicorn's heartbeat
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
