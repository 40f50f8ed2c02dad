"""Escape attempts, run as app code in both modes, each judged by its real effect.

Every case is one source string. It runs three ways:

* ``plain``: as ordinary Python outside any sandbox, the control; it must produce the effect,
  so a case that could never have done harm cannot pass by accident;
* ``enforce``: ``exec(compile(src, "<app>", "exec"), globals)`` inside ``with Sandbox(policy)``
  (ordinary Python under the core's checks, as a whole app runs);
* ``restricted``: ``Sandbox(policy).exec(src, globals)`` (RestrictedPython plus the core).

The effect is checked on the host, never from the refusal: a file on disk under ``tmp_path``,
a connection the test's own loopback ``listener`` accepted, a marker file a ``/bin/sh``
command creates, or host state (``json.dumps``, ``builtins.open``, ``sys.meta_path``, the
trace function, a signal handler, the ``atexit`` list) compared after the request. Host state
is restored after every run, whatever the code did.
"""

from __future__ import annotations

import _thread
import atexit
import builtins
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import Policy, Sandbox
from gae_sandbox.errors import DeadlineExceededError, HardDeadlineExceeded

# -- the cases ---------------------------------------------------------------------------------

#: Globals every case gets: ``target`` (a path in an empty folder), ``cmd`` (a shell command
#: that creates ``marker``), ``port`` (the listener), ``fd`` (a socket descriptor the host made,
#: for ``socket.socket(fileno=...)``), ``logfd`` (a host log file's descriptor, written by a
#: captured ``posix.write``), ``DeadlineExceededError``.


@dataclass(frozen=True)
class Case:
    id: str
    effect: str  # a key of EFFECTS
    source: str
    enforce_gap: str | None = None  # an xfail reason for enforce mode
    restricted_gap: str | None = None  # an xfail reason for restricted mode


CASES: list[Case] = [
    # -- import tricks ---------------------------------------------------------------------
    Case("import_ctypes_libc_system", "process",
         "ctypes = __import__('ctypes')\n"
         "ctypes.CDLL(None).system(cmd.encode())\n"),
    Case("importlib_import_module__socket", "network",
         "import importlib\n"
         "raw = importlib.import_module('_socket')\n"
         "s = raw.socket(raw.AF_INET, raw.SOCK_STREAM)\n"
         "s.settimeout(2)\n"
         "s.connect(('127.0.0.1', port))\n"
         "s.close()\n"),
    Case("sys_modules_posix_system", "process",
         "import sys\n"
         "sys.modules['posix'].system(cmd)\n"),
    Case("bootstrap_gcd_import_posix", "process",
         "import importlib._bootstrap as bootstrap\n"
         "bootstrap._gcd_import('posix').system(cmd)\n"),
    # -- reaching modules without importing them -------------------------------------------
    Case("random__os_system", "process",
         "import random\n"
         "random._os.system(cmd)\n"),
    Case("json_decoder_re_enum_sys_chain", "process",
         "import json\n"
         "json.decoder.re.enum.sys.modules['os'].system(cmd)\n"),
    Case("subclasses_wrap_close_globals_system", "process",
         "wrap = [c for c in ().__class__.__base__.__subclasses__()\n"
         "        if c.__name__ == '_wrap_close'][0]\n"
         "wrap.__init__.__globals__['system'](cmd)\n"),
    Case("gc_get_objects_finds_posix", "process",
         "import gc\n"
         "found = [o for o in gc.get_objects() if isinstance(o, dict)\n"
         "         and o.get('__name__') == 'posix' and 'system' in o]\n"
         "found[0]['system'](cmd)\n"),
    Case("gc_finds_captured_posix_write", "hostlog",
         "import gc\n"
         "writes = [o for o in gc.get_objects() if type(o) is type(len)\n"
         "          and o.__name__ == 'write' and getattr(o.__self__, '__name__', '') == 'posix']\n"
         "for write in writes:\n"
         "    try:\n"
         "        write(logfd, b'evil')\n"
         "        break\n"
         "    except OSError:\n"
         "        pass\n",
         enforce_gap="default mode gap: posix.write raises no audit event, so the original "
                     "function captured by the patch (found with gc) writes to a host fd; "
                     "restricted mode / OS layer covers it"),
    # -- frames ----------------------------------------------------------------------------
    Case("sys_getframe_caller_globals", "process",
         "import sys\n"
         "sys._getframe(1).f_globals['os'].system(cmd)\n"),
    Case("generator_gi_frame_f_back", "process",
         "def walk():\n"
         "    yield gen.gi_frame.f_back.f_back.f_globals\n"
         "gen = walk()\n"
         "host = next(gen)\n"
         "host['os'].system(cmd)\n"),
    Case("traceback_tb_frame_f_back", "process",
         "try:\n"
         "    1 / 0\n"
         "except ZeroDivisionError as error:\n"
         "    host = error.__traceback__.tb_frame.f_back.f_globals\n"
         "host['os'].system(cmd)\n"),
    # -- builtins tampering ----------------------------------------------------------------
    Case("builtins_open_replaced_for_next_request", "builtins_open",
         "def evil(*args, **kwargs):\n"
         "    raise SystemExit('hijacked')\n"
         "__builtins__['open'] = evil\n",
         enforce_gap="default mode gap: the exec'd code's __builtins__ is the host's builtins "
                     "dict, and a dict item write raises no audit event; restricted mode "
                     "covers it"),
    # -- other file APIs -------------------------------------------------------------------
    Case("posix_open_write_flags", "file",
         "import posix\n"
         "fd = posix.open(target, posix.O_WRONLY | posix.O_CREAT, 0o644)\n"
         "posix.write(fd, b'x')\n"
         "posix.close(fd)\n"),
    Case("io_fileio_write", "file",
         "import _io\n"
         "f = _io.FileIO(target, 'w')\n"
         "f.write(b'x')\n"
         "f.close()\n"),
    Case("shutil_copy", "file",
         "import shutil\n"
         "shutil.copy(source_file, target)\n"),
    Case("logging_filehandler", "file",
         "import logging\n"
         "handler = logging.FileHandler(target)\n"
         "handler.close()\n"),
    # -- network ---------------------------------------------------------------------------
    Case("raw__socket_connect", "network",
         "import _socket\n"
         "s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
         "s.settimeout(2)\n"
         "s.connect(('127.0.0.1', port))\n"
         "s.close()\n"),
    Case("socket_adopts_host_fileno", "network",
         "import socket\n"
         "s = socket.socket(fileno=fd)\n"
         "s.settimeout(2)\n"
         "s.connect(('127.0.0.1', port))\n"
         "s.close()\n"),
    Case("urllib_urlopen", "network",
         "import urllib.request\n"
         "urllib.request.urlopen('http://127.0.0.1:%d/' % port, timeout=2)\n"),
    Case("asyncio_open_connection", "network",
         "import asyncio\n"
         "async def main():\n"
         "    reader, writer = await asyncio.open_connection('127.0.0.1', port)\n"
         "    writer.close()\n"
         "loop = asyncio.new_event_loop()  # not asyncio.run: no SIGINT handler to refuse\n"
         "try:\n"
         "    loop.run_until_complete(main())\n"
         "finally:\n"
         "    loop.close()\n"),
    # -- processes -------------------------------------------------------------------------
    Case("subprocess_popen", "process",
         "import subprocess\n"
         "subprocess.Popen(['/bin/sh', '-c', cmd]).wait()\n"),
    Case("os_posix_spawn", "process",
         "import os\n"
         "pid = os.posix_spawn('/bin/sh', ['sh', '-c', cmd], {})\n"
         "os.waitpid(pid, 0)\n"),
    # -- persistence -----------------------------------------------------------------------
    Case("json_dumps_monkeypatched", "json_dumps",
         "import json\n"
         "def evil(obj, *args, **kwargs):\n"
         "    return '\"hijacked\"'\n"
         "json.dumps = evil\n",
         enforce_gap="default mode gap: assigning an attribute of a shared module raises no "
                     "audit event; restricted mode / OS layer (a process per tenant) covers it"),
    Case("atexit_register", "atexit",
         "import atexit\n"
         "def later():\n"
         "    open(target, 'w').close()\n"
         "atexit.register(later)\n"),
    Case("sys_settrace", "settrace",
         "import sys\n"
         "def tracer(frame, event, arg):\n"
         "    return None\n"
         "sys.settrace(tracer)\n"),
    Case("sys_meta_path_importer", "meta_path",
         "import sys\n"
         "class Spy:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        return None\n"
         "sys.meta_path.append(Spy())\n",
         enforce_gap="default mode gap: sys.meta_path is a shared list and a list append "
                     "raises no audit event; restricted mode covers it"),
    # ``gate`` is a host lock the test releases only after the scope has ended: the thread
    # sleeps in it (a C-level wait) through the deadline, the join and the grace, so the one
    # injected deadline error is pending when it wakes and lands inside the try; the write
    # after it happens outside any request.
    Case("thread_outlives_request_writes", "thread_file",
         "import threading\n"
         "result = []\n"
         "def late(tries=5):\n"
         "    try:\n"
         "        if not released:\n"
         "            gate.acquire()\n"
         "        with open(target, 'w') as f:\n"
         "            f.write('x')\n"
         "    except BaseException as error:\n"
         "        result.append(error)\n"
         "        if tries and not isinstance(error, PermissionError):\n"
         "            late(tries - 1)\n"
         "thread = threading.Thread(target=late, daemon=True)\n"
         "thread.start()\n"),
    # -- deadline evasion ------------------------------------------------------------------
    Case("signal_sigalrm_handler", "signal",
         "import signal\n"
         "def handler(signum, frame):\n"
         "    pass\n"
         "signal.signal(signal.SIGALRM, handler)\n"),
    Case("catch_deadline_in_loop", "deadline",
         "import time\n"
         "end = time.monotonic() + 1.0\n"
         "caught = 0\n"
         "while time.monotonic() < end:\n"
         "    try:\n"
         "        time.sleep(0.02)\n"
         "    except DeadlineExceededError:\n"
         "        caught += 1\n"
         "done = True\n"),
]

assert 24 <= len(CASES) <= 30, len(CASES)
assert len({case.id for case in CASES}) == len(CASES)


# -- the environment of one run and the effects -------------------------------------------------


@dataclass
class Env:
    outdir: Path
    marker: Path
    hostlog: Path
    listener: Any
    namespace: dict[str, Any]
    saved: dict[str, Any]


def _file_written(env: Env) -> bool:
    return any(env.outdir.iterdir())


def _thread_file_written(env: Env) -> bool:
    env.namespace["released"] = True  # the scope has ended: let the thread go on
    env.namespace["gate"].release()
    thread = env.namespace.get("thread")
    if isinstance(thread, threading.Thread):
        thread.join(5)
    return any(env.outdir.iterdir())


def _process_ran(env: Env) -> bool:
    return env.marker.exists()


def _connected(env: Env) -> bool:
    return env.listener.settle() > 0


def _hostlog_written(env: Env) -> bool:
    return env.hostlog.stat().st_size > 0


def _deadline_evaded(env: Env) -> bool:
    return env.namespace.get("done") is True


def _json_changed(env: Env) -> bool:
    return json.dumps is not env.saved["json.dumps"]


def _open_changed(env: Env) -> bool:
    return builtins.open is not env.saved["builtins.open"]


def _foreign_finders(env: Env) -> list[Any]:
    """Finders added since the run began, other than the sandbox's own (it installs its
    restricted-mode finder on first use)."""
    return [finder for finder in sys.meta_path if finder not in env.saved["meta_path"]
            and not type(finder).__module__.startswith("gae_sandbox")]


def _meta_path_changed(env: Env) -> bool:
    return bool(_foreign_finders(env))


def _trace_changed(env: Env) -> bool:
    return sys.gettrace() is not env.saved["trace"]


def _signal_changed(env: Env) -> bool:
    return signal.getsignal(signal.SIGALRM) is not env.saved["sigalrm"]


def _atexit_grew(env: Env) -> bool:
    return atexit._ncallbacks() > env.saved["atexit"]


EFFECTS: dict[str, Callable[[Env], bool]] = {
    "file": _file_written,
    "thread_file": _thread_file_written,
    "process": _process_ran,
    "network": _connected,
    "hostlog": _hostlog_written,
    "deadline": _deadline_evaded,
    "json_dumps": _json_changed,
    "builtins_open": _open_changed,
    "meta_path": _meta_path_changed,
    "settrace": _trace_changed,
    "signal": _signal_changed,
    "atexit": _atexit_grew,
}


def _restore(env: Env) -> None:
    """Undo whatever the code changed in the host, in every mode."""
    saved = env.saved
    sys.settrace(saved["trace"])
    json.dumps = saved["json.dumps"]
    builtins.open = saved["builtins.open"]
    for finder in _foreign_finders(env):
        sys.meta_path.remove(finder)
    signal.signal(signal.SIGALRM, saved["sigalrm"])
    later = env.namespace.get("later")
    if callable(later):
        atexit.unregister(later)
    thread = env.namespace.get("thread")
    if isinstance(thread, threading.Thread):
        thread.join(5)


@pytest.fixture
def env(tmp_path: Path, app_root: Path, listener: Any) -> Iterator[Env]:
    outdir = tmp_path / "out"
    outdir.mkdir()
    marker = tmp_path / "marker"
    hostlog = tmp_path / "host.log"
    logfd = os.open(hostlog, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    host_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    namespace: dict[str, Any] = {
        "__name__": "app",
        "target": str(outdir / "written.txt"),
        "source_file": str(app_root / "data.txt"),
        "cmd": f"touch '{marker}'",
        "port": listener.port,
        "fd": host_socket.detach(),  # the app's socket object owns it if it adopts it
        "logfd": logfd,
        "DeadlineExceededError": DeadlineExceededError,
        "gate": _thread.allocate_lock(),
        "released": False,
    }
    namespace["gate"].acquire()
    saved = {
        "trace": sys.gettrace(),
        "json.dumps": json.dumps,
        "builtins.open": builtins.open,
        "meta_path": list(sys.meta_path),
        "sigalrm": signal.getsignal(signal.SIGALRM),
        "atexit": atexit._ncallbacks(),
    }
    environment = Env(outdir, marker, hostlog, listener, namespace, saved)
    try:
        yield environment
    finally:
        _restore(environment)
        thread = namespace.get("thread")
        assert not (isinstance(thread, threading.Thread) and thread.is_alive()), "thread left"
        os.close(logfd)
        adopted = namespace.get("s")
        if isinstance(adopted, socket.socket):
            adopted.close()
        else:  # nobody adopted the descriptor: close it here (still ours, nothing reused it)
            try:
                socket.socket(fileno=namespace["fd"]).close()
            except OSError:
                pass


STOPS = (Exception, DeadlineExceededError, HardDeadlineExceeded)


def _policy_for(case: Case, policy: Policy) -> Policy:
    if case.effect == "deadline":
        return policy.replace(deadline=0.1, hard_deadline_grace=0.2)
    if case.effect == "thread_file":  # joined until 0.1 + 0.1 s, then it outlives the scope
        return policy.replace(deadline=0.1, hard_deadline_grace=0.1)
    return policy


def _run(case: Case, mode: str, env: Env, policy: Policy) -> BaseException | None:
    """Run the case's source in ``mode``; the error it ended with, if any."""
    namespace = env.namespace
    try:
        try:
            if mode == "plain":
                exec(compile(case.source, "<app>", "exec"), namespace)  # noqa: S102
            elif mode == "enforce":
                with Sandbox(_policy_for(case, policy)):
                    exec(compile(case.source, "<app>", "exec"), namespace)  # noqa: S102
            else:
                Sandbox(_policy_for(case, policy)).exec(case.source, namespace,
                                                        filename="<app>")
        except STOPS as error:
            return error
        return None
    finally:
        # Judge persistence-type effects before the host state is put back.
        env.saved["effect"] = EFFECTS[case.effect](env)
        _restore(env)


# -- the tests -----------------------------------------------------------------------------------


def _params(mode: str) -> list[Any]:
    params = []
    for case in CASES:
        reason = case.enforce_gap if mode == "enforce" else case.restricted_gap
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_control_plain_python_has_the_effect(case: Case, env: Env, policy: Policy) -> None:
    error = _run(case, "plain", env, policy)
    assert env.saved["effect"], f"the control did not produce the effect (error: {error!r})"


@pytest.mark.parametrize("case", _params("enforce"))
def test_enforce_mode_stops_it(case: Case, env: Env, policy: Policy) -> None:
    error = _run(case, "enforce", env, policy)
    REFUSALS[case.id, "enforce"] = error
    assert not env.saved["effect"], f"{case.id} escaped in enforce mode (error: {error!r})"
    if case.effect == "thread_file":  # it did outlive the request and try, and was refused
        result = env.namespace["result"]
        assert any(isinstance(e, PermissionError) for e in result), result


@pytest.mark.parametrize("case", _params("restricted"))
def test_restricted_mode_stops_it(case: Case, env: Env, policy: Policy) -> None:
    error = _run(case, "restricted", env, policy)
    assert not env.saved["effect"], f"{case.id} escaped in restricted mode (error: {error!r})"
    REFUSALS[case.id, "restricted"] = error


REFUSALS: dict[tuple[str, str], BaseException | None] = {}  # what stopped each case, for -rA
