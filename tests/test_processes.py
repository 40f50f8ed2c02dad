"""Processes: inside a sandbox nothing can start, replace or signal a process.

Every refused command would create a marker file; the marker must be absent afterwards. The
control cases run the same command outside the sandbox and see the marker appear.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gae_sandbox import (
    NotAvailableRefused,
    Policy,
    ProcessRefused,
    Sandbox,
    SandboxViolation,
    SystemCallRefused,
)

SH = "/bin/sh"
ENV_NAME = "GAE_SANDBOX_TEST_PROCESSES_X"


def touch_argv(marker: Path) -> list[str]:
    return [SH, "-c", f"touch {shlex.quote(str(marker))}"]


def touch_command(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def assert_process_refusal(error: BaseException) -> None:
    assert isinstance(error, ProcessRefused)
    assert isinstance(error, PermissionError)
    assert isinstance(error, SandboxViolation)
    assert error.kind == "process"


def reap(pid: int) -> int:
    """Wait for a child the host started; return its exit status."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# --- ways of running "touch marker" -----------------------------------------------------------
# Each returns a list of child pids the host must reap (empty when the call waits itself).


def run_os_system(marker: Path) -> list[int]:
    assert os.system(touch_command(marker)) == 0
    return []


def run_os_popen(marker: Path) -> list[int]:
    pipe = os.popen(touch_command(marker))
    assert pipe.close() is None  # exit status 0
    return []


def run_subprocess_run(marker: Path) -> list[int]:
    subprocess.run(touch_argv(marker), check=True, timeout=10)
    return []


def run_subprocess_popen(marker: Path) -> list[int]:
    with subprocess.Popen(touch_argv(marker)) as process:
        assert process.wait(timeout=10) == 0
    return []


def run_subprocess_call(marker: Path) -> list[int]:
    assert subprocess.call(touch_argv(marker), timeout=10) == 0
    return []


def run_subprocess_check_output(marker: Path) -> list[int]:
    assert subprocess.check_output(touch_argv(marker), timeout=10) == b""
    return []


def run_os_spawnv(marker: Path) -> list[int]:
    # On POSIX os.spawnv is fork() + execv() in Python; P_WAIT reaps the child itself.
    assert os.spawnv(os.P_WAIT, SH, touch_argv(marker)) == 0
    return []


def run_os_posix_spawn(marker: Path) -> list[int]:
    return [os.posix_spawn(SH, touch_argv(marker), dict(os.environ))]


RUNNERS: dict[str, Callable[[Path], list[int]]] = {
    "os.system": run_os_system,
    "os.popen": run_os_popen,
    "subprocess.run": run_subprocess_run,
    "subprocess.Popen": run_subprocess_popen,
    "subprocess.call": run_subprocess_call,
    "subprocess.check_output": run_subprocess_check_output,
    "os.spawnv": run_os_spawnv,
    "os.posix_spawn": run_os_posix_spawn,
}


@pytest.mark.parametrize("name", list(RUNNERS))
def test_process_refused_and_nothing_runs(name: str, policy: Policy, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    children: list[int] = []
    with Sandbox(policy):
        try:
            children += RUNNERS[name](marker)
        except BaseException as error:  # noqa: B036 - inspected below
            caught: BaseException | None = error
        else:
            caught = None
    for pid in children:  # only if the sandbox let a process start (a failure)
        reap(pid)
    assert caught is not None, f"{name} was not refused"
    assert_process_refusal(caught)
    assert not marker.exists()


@pytest.mark.parametrize("name", list(RUNNERS))
def test_control_process_runs_outside_sandbox(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for pid in RUNNERS[name](marker):
        assert reap(pid) == 0
    assert marker.exists()


def test_refused_process_message_names_the_command(policy: Policy, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with Sandbox(policy):
        with pytest.raises(ProcessRefused) as info:
            subprocess.run(touch_argv(marker))
    assert str(marker) in str(info.value)
    assert not marker.exists()


def test_refused_subprocess_leaks_no_file_descriptors(policy: Policy, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    before = set(os.listdir("/proc/self/fd"))
    with Sandbox(policy):
        for _ in range(3):
            with pytest.raises(ProcessRefused):
                subprocess.check_output(touch_argv(marker))
    leaked = set(os.listdir("/proc/self/fd")) - before
    for fd in leaked:  # tidy up what leaked so later tests are unaffected
        try:
            os.close(int(fd))
        except OSError:
            pass
    assert not marker.exists()
    assert leaked == set()


# --- fork ---------------------------------------------------------------------------------------


def test_fork_refused(policy: Policy) -> None:
    forked: list[int] = []
    with Sandbox(policy):
        with pytest.raises(ProcessRefused) as info:
            pid = os.fork()
            if pid == 0:  # only if the sandbox failed: the child must never run pytest
                os._exit(0)
            forked.append(pid)
    for pid in forked:
        reap(pid)
    assert forked == []
    assert_process_refusal(info.value)


def test_control_fork_outside_sandbox(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    pid = os.fork()
    if pid == 0:
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644))
        finally:
            os._exit(0)
    assert reap(pid) == 0
    assert marker.exists()


# --- exec: in a child interpreter, so a failure cannot replace pytest ---------------------------

EXEC_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from gae_sandbox import Policy, ProcessRefused, Sandbox

    app_root, marker, sandboxed = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    argv = ["/bin/sh", "-c", "touch " + marker]
    if not sandboxed:
        os.execv(argv[0], argv)
    with Sandbox(Policy.python27(app_root=app_root, deadline=None)):
        try:
            os.execv(argv[0], argv)
        except ProcessRefused as error:
            print("REFUSED", isinstance(error, PermissionError))
    """
)


def run_exec_script(app_root: Path, marker: Path, sandboxed: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", EXEC_SCRIPT, str(app_root), shlex.quote(str(marker)),
         "1" if sandboxed else "0"],
        capture_output=True, text=True, timeout=30,
    )


def test_execv_refused(app_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = run_exec_script(app_root, marker, sandboxed=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "REFUSED True"
    assert not marker.exists()


def test_control_execv_outside_sandbox(app_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    result = run_exec_script(app_root, marker, sandboxed=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # the interpreter was replaced by sh
    assert marker.exists()


# --- kill ---------------------------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(["sleep", "30"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_kill_refused_and_child_survives(policy: Policy, sleeper: subprocess.Popen) -> None:
    with Sandbox(policy):
        with pytest.raises(ProcessRefused) as info:
            os.kill(sleeper.pid, signal.SIGKILL)
    assert_process_refusal(info.value)
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(timeout=0.2)
    assert sleeper.poll() is None


def test_control_kill_outside_sandbox(sleeper: subprocess.Popen) -> None:
    os.kill(sleeper.pid, signal.SIGKILL)
    assert sleeper.wait(timeout=5) == -signal.SIGKILL


# --- fork_exec: the C function subprocess uses, which has no audit event ------------------------


def fork_exec_args(argv: list[str]) -> tuple[list, int, int]:
    """Positional arguments of ``_posixsubprocess.fork_exec`` for this interpreter, and the
    error pipe (read, write) the caller must close."""
    errpipe_read, errpipe_write = os.pipe()
    args: list = [
        argv, [os.fsencode(argv[0])], True, (errpipe_write,), None, None,
        -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write, True, False,
    ]
    if sys.version_info >= (3, 11):
        args.append(-1)  # process_group
    args += [None, None, None, -1, None]  # gid, extra_groups, uid, child_umask, preexec_fn
    if sys.version_info >= (3, 11) and hasattr(subprocess, "_USE_VFORK"):
        args.append(True)  # allow_vfork (3.10 has _USE_VFORK but not the parameter)
    return args, errpipe_read, errpipe_write


def fork_exec_functions() -> dict[str, Callable[[], Callable]]:
    """Look the function up when called (the installed sandbox patches the attribute)."""
    found: dict[str, Callable[[], Callable]] = {
        "_posixsubprocess.fork_exec": lambda: sys.modules["_posixsubprocess"].fork_exec,
    }
    if getattr(subprocess, "_fork_exec", None) is not None:
        found["subprocess._fork_exec"] = lambda: subprocess._fork_exec
    return found


def call_fork_exec(get_function: Callable[[], Callable], marker: Path,
                   sandbox: Sandbox | None) -> tuple[list[int], BaseException | None]:
    args, errpipe_read, errpipe_write = fork_exec_args(touch_argv(marker))
    pids: list[int] = []
    caught: BaseException | None = None
    try:
        if sandbox is None:
            pids.append(get_function()(*args))
        else:
            with sandbox:
                try:
                    pids.append(get_function()(*args))
                except BaseException as error:  # noqa: B036 - returned to the test
                    caught = error
    finally:
        os.close(errpipe_write)
        os.close(errpipe_read)
    for pid in pids:
        assert reap(pid) == 0
    return pids, caught


@pytest.mark.parametrize("name", list(fork_exec_functions()))
def test_fork_exec_refused(name: str, policy: Policy, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    pids, caught = call_fork_exec(fork_exec_functions()[name], marker, Sandbox(policy))
    assert pids == []
    assert caught is not None
    assert_process_refusal(caught)
    assert not marker.exists()


@pytest.mark.parametrize("name", list(fork_exec_functions()))
def test_control_fork_exec_outside_sandbox(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    pids, caught = call_fork_exec(fork_exec_functions()[name], marker, None)
    assert caught is None
    assert len(pids) == 1
    assert marker.exists()


@pytest.mark.parametrize("name", list(fork_exec_functions()))
def test_fork_exec_original_not_reachable_through_wrapped(name: str, policy: Policy,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    pids, caught = call_fork_exec(
        lambda: fork_exec_functions()[name]().__wrapped__, marker, Sandbox(policy)
    )
    assert pids == []
    assert isinstance(caught, (ProcessRefused, AttributeError))
    assert not marker.exists()


# --- harmless reads, the environment, signals ---------------------------------------------------


def test_harmless_os_reads_work_inside(policy: Policy, app_root: Path) -> None:
    host = (os.environ.get("PATH"), "PATH" in os.environ, os.getenv("HOME"))
    with Sandbox(policy):
        inside = (os.environ.get("PATH"), "PATH" in os.environ, os.getenv("HOME"))
        # as on the runtime: the app's folder and -1 (tests/fidelity)
        ids = (os.getcwd(), os.getpid())
        joined = os.path.join(str(app_root), "pkg", "helpers.py")
        parts = (os.path.basename(joined), os.path.dirname(joined), os.path.splitext(joined)[1])
        checks = (os.path.isfile(os.path.join(str(app_root), "data.txt")),
                  os.path.isdir(os.path.join(str(app_root), "static")),
                  os.path.exists(joined), os.path.normpath(str(app_root) + "/pkg/../data.txt"))
    assert inside == host
    assert ids == (str(app_root), -1)
    assert parts == ("helpers.py", str(app_root / "pkg"), ".py")
    assert checks == (True, True, True, str(app_root / "data.txt"))


def test_environ_change_stays_in_the_request(policy: Policy) -> None:
    """As on the runtime, os.environ is per request: the change is seen by the request only,
    never by the process, the host, or a child process."""
    assert ENV_NAME not in os.environ
    before = dict(os.environ)
    with Sandbox(policy) as box:
        os.environ[ENV_NAME] = "1"
        assert os.environ.get(ENV_NAME) == "1"
        assert os.getenv(ENV_NAME) == "1"
        assert ENV_NAME in dict(os.environ)
    with Sandbox(policy):
        assert ENV_NAME not in os.environ  # the next request starts clean
    assert box.violations == []
    assert ENV_NAME not in os.environ
    assert dict(os.environ) == before
    # the C-level environment a child process inherits is unchanged too
    child = subprocess.run([SH, "-c", f'printf %s "${{{ENV_NAME}-unset}}"'],
                           capture_output=True, text=True, timeout=10, env=None)
    assert child.stdout == "unset"


def test_putenv_stays_in_the_request(policy: Policy) -> None:
    """``os.putenv`` (numpy calls it at import) changes the request's view of the
    environment, as ``os.environ[name] = value`` does there; the process's C-level
    environment, which child processes inherit, is the host's and stays as it was. The C
    function itself, captured before install, is refused (its audit event)."""
    from gae_sandbox.patches import _putenv as captured  # taken before install
    with Sandbox(policy):
        os.putenv(ENV_NAME, "1")
        assert os.environ[ENV_NAME] == "1"
        os.unsetenv(ENV_NAME)
        assert ENV_NAME not in os.environ
        with pytest.raises(ValueError):
            os.putenv("A=B", "1")
        with pytest.raises(SystemCallRefused) as info:
            captured(ENV_NAME, "1")
    assert isinstance(info.value, PermissionError)
    assert ENV_NAME in str(info.value)
    assert ENV_NAME not in os.environ
    child = subprocess.run([SH, "-c", f'printf %s "${{{ENV_NAME}-unset}}"'],
                           capture_output=True, text=True, timeout=10, env=None)
    assert child.stdout == "unset"
    os.putenv(ENV_NAME, "host")  # the control: host code's putenv reaches the process
    try:
        child = subprocess.run([SH, "-c", f'printf %s "${{{ENV_NAME}-unset}}"'],
                               capture_output=True, text=True, timeout=10, env=None)
        assert child.stdout == "host"
    finally:
        os.unsetenv(ENV_NAME)


def test_environ_delete_stays_in_the_request(policy: Policy,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_NAME, "host")
    with Sandbox(policy):
        del os.environ[ENV_NAME]
        assert ENV_NAME not in os.environ
        with pytest.raises(KeyError):
            del os.environ[ENV_NAME]
    assert os.environ[ENV_NAME] == "host"


def _handler(signum: int, frame: object) -> None:  # pragma: no cover - never installed
    pass


def test_signal_handler_refused(policy: Policy) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with Sandbox(policy):
        with pytest.raises(NotAvailableRefused) as info:
            signal.signal(signal.SIGUSR1, _handler)
    assert isinstance(info.value, NotImplementedError)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_signal_alarm_refused(policy: Policy) -> None:
    with Sandbox(policy):
        with pytest.raises(NotAvailableRefused) as info:
            signal.alarm(30)
    assert isinstance(info.value, NotImplementedError)
    assert signal.alarm(0) == 0  # no alarm was set


def test_control_signal_outside_sandbox() -> None:
    before = signal.signal(signal.SIGUSR1, _handler)
    try:
        assert signal.getsignal(signal.SIGUSR1) is _handler
    finally:
        signal.signal(signal.SIGUSR1, before)


_MULTIPROCESSING = """
import multiprocessing, sys
from gae_sandbox import Policy, Sandbox

def main():
    with Sandbox(Policy.python3(app_root=sys.argv[1])):
        for method in ("spawn", "fork"):
            context = multiprocessing.get_context(method)
            with context.Pool(1) as pool:
                print(method, pool.apply(pow, (2, 5)))

if __name__ == "__main__":
    main()
"""


def test_python3_multiprocessing_spawn_and_fork_pools(app_root: Path, tmp_path: Path) -> None:
    """Where the policy runs processes (the python3 preset), ``multiprocessing``'s spawn pool
    (which blocks signals around the start, a thread's own mask) and fork pool (whose workers
    end with ``os._exit``) work."""
    script = tmp_path / "pools.py"
    script.write_text(_MULTIPROCESSING)
    result = subprocess.run([sys.executable, str(script), str(app_root)], capture_output=True,
                            text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.stdout.split() == ["spawn", "32", "fork", "32"], (result.stdout,
                                                                    result.stderr[-2000:])
