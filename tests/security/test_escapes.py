"""Escape attempts, run as app code in both modes, each judged by its real effect.

Every case is one source string. It runs three ways:

* ``plain``: as ordinary Python outside any sandbox, the control; it must produce the effect,
  so a case that could never have done harm cannot pass by accident;
* ``enforce``: ``exec(compile(src, "<app>", "exec"), globals)`` inside ``with Sandbox(policy)``
  (ordinary Python under the core's checks, as a whole app runs);
* ``restricted``: ``Sandbox(policy).exec(src, globals)`` (RestrictedPython plus the core).

The effect is checked on the host, never from the refusal: a file on disk under ``tmp_path``,
a connection the test's own loopback ``listener`` accepted, a marker file a ``/bin/sh``
command creates, or host state (``json.dumps``, ``builtins.open``/``__import__``,
``sys.meta_path``/``path_hooks``/``path_importer_cache``/``modules``, trace and profile
functions, ``sys.excepthook``, ``warnings.showwarning``, a signal handler or timer, the
``atexit`` list, ``copyreg`` and ``codecs`` registrations, the sandbox's own audit handlers)
compared after the request. Deferred code (a fork handler, a finalizer, ``__del__``, a logging
handler) is made to run by host code after the request, as the host would, and judged by the
file it writes; a C loop by how long the request ran past its deadline. Host state is
restored after every run, whatever the code did.
"""

from __future__ import annotations

import _thread
import atexit
import builtins
import codecs
import copyreg
import gc
import importlib.machinery
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import Policy, Sandbox, audit, patches
from gae_sandbox import context as sandbox_context
from gae_sandbox.errors import DeadlineExceededError, HardDeadlineExceeded
from gae_sandbox.imports import gated_import, original_import
from gae_sandbox.sandbox import install

pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")

# -- the cases ---------------------------------------------------------------------------------

#: Globals every case gets: ``target`` (a path in an empty folder), ``cmd`` (a shell command
#: that creates ``marker``), ``port`` (the listener), ``fd`` (a socket descriptor the host made,
#: for ``socket.socket(fileno=...)``), ``logfd`` (a host log file's descriptor, written by a
#: captured ``posix.write``), ``DeadlineExceededError``, ``outdir`` (the folder of ``target``),
#: ``source_file`` (an app file), ``fork_exec_args`` (``_posixsubprocess.fork_exec``'s
#: arguments for ``cmd`` on this interpreter), ``sqlite_extension`` (the ``_sqlite3`` file),
#: ``armed`` (a fork handler's switch: a fork handler cannot be removed, only disarmed).


@dataclass(frozen=True)
class Case:
    id: str
    effect: str  # a key of EFFECTS
    source: str
    enforce_gap: str | None = None  # an xfail reason for enforce mode
    restricted_gap: str | None = None  # an xfail reason for restricted mode
    #: The route exists with the pure-Python wrappers only: with the C accelerator the control
    #: is skipped (this is why) and enforce mode must stop it, gap or not.
    pure_python_route: str | None = None


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
         "found = [o for o in gc.get_objects() if type(o) is dict\n"
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
         "        pass\n"),
    Case("gc_get_referents_reaches_the_captured_original", "hostlog",
         "import gc\n"
         "import os\n"
         "layer, found = [os.write], []\n"
         "followed = (tuple, type(os.write))\n"
         "for _ in range(8):  # wrappers of wrappers: closure tuples, cells, functions\n"
         "    layer = [o for o in gc.get_referents(*layer)\n"
         "             if type(o) in followed\n"
         "             or type(o).__name__ in ('cell', 'builtin_function_or_method',\n"
         "                                     'function', 'Guard')]  # Guard: C accelerator\n"
         "    found += [o for o in layer if type(o) is type(len) and o.__name__ == 'write'\n"
         "              and getattr(o.__self__, '__name__', '') == 'posix']\n"
         "    if found:\n"
         "        break\n"
         "for write in found:\n"
         "    try:\n"
         "        write(logfd, b'evil')\n"
         "        break\n"
         "    except OSError:\n"
         "        pass\n"),
    Case("closure_reaches_the_captured_original", "hostlog",
         "import os\n"
         "todo, found = [os.write], None\n"
         "for _ in range(50):\n"
         "    if not todo or found is not None:\n"
         "        break\n"
         "    function = todo.pop()\n"
         "    for cell in getattr(function, '__closure__', None) or ():\n"
         "        value = cell.cell_contents\n"
         "        if type(value) is type(len) and value.__name__ == 'write':\n"
         "            found = value\n"
         "        elif callable(value):\n"
         "            todo.append(value)\n"
         "if found is not None:\n"
         "    found(logfd, b'evil')\n",
         enforce_gap="default mode gap: a patched function is Python code whose closure holds "
                     "the original C function, and reading __closure__ raises no audit event; "
                     "restricted mode / OS layer covers it",
         pure_python_route="with the C accelerator os.write is a C Guard: it has no "
                           "__closure__ (nor any attribute) that reaches the original"),
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
    # the standard library's own exit method, bound to the app's class under a library
    # module's name: trusted by name, it would run the class's methods as host code at exit
    Case("atexit_forged_stdlib_exit_method", "atexit",
         "import atexit, weakref\n"
         "class Forged:\n"
         "    _registry = {1: 1}\n"
         "    @classmethod\n"
         "    def _select_for_exit(cls):\n"
         "        open(target, 'w').close()\n"
         "        return []\n"
         "Forged._exitfunc = classmethod(vars(weakref.finalize)['_exitfunc'].__func__)\n"
         "Forged.__module__ = 'weakref'\n"
         "Forged.__name__ = Forged.__qualname__ = '_Forged'\n"
         "weakref._Forged = Forged\n"
         "atexit.register(Forged._exitfunc)\n"),
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
    Case("thread_started_by_threadings_captured_start", "file",
         "import _thread\n"
         "import threading\n"
         "finished = _thread.allocate_lock()\n"
         "finished.acquire()\n"
         "def work():\n"
         "    try:\n"
         "        open(target, 'w').close()\n"
         "    finally:\n"
         "        finished.release()\n"
         "starter = getattr(threading, '_start_new_thread', None)\n"
         "if starter is not None:\n"
         "    starter(work, ())\n"
         "else:\n"
         "    threading._start_joinable_thread(work)\n"
         "finished.acquire(True, 5)\n"),
    Case("thread_bootstrap_inner_overridden", "file",
         "import threading\n"
         "class Sneaky(threading.Thread):\n"
         "    def _bootstrap_inner(self):\n"
         "        try:\n"
         "            open(target, 'w').close()\n"
         "        except OSError:\n"
         "            pass\n"
         "        threading.Thread._bootstrap_inner(self)\n"
         "sneaky = Sneaky(target=lambda: None)\n"
         "sneaky.start()\n"
         "sneaky.join(5)\n"),
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
    # -- more import-system tricks ---------------------------------------------------------
    Case("imp_create_builtin_posix", "process",
         "import _imp\n"
         "import importlib.machinery as machinery\n"
         "fresh = _imp.create_builtin(machinery.ModuleSpec('posix', None))\n"
         "fresh.system(cmd)\n"),
    Case("spec_from_file_location_blocked_pty", "process",
         "import os\n"
         "import importlib.util as util\n"
         "path = os.path.join(os.path.dirname(os.__file__), 'pty.py')\n"
         "spec = util.spec_from_file_location('mypty', path)\n"
         "pty = util.module_from_spec(spec)\n"
         "spec.loader.exec_module(pty)\n"
         "pid, _ = pty.fork()\n"
         "if pid == 0:\n"
         "    try:\n"
         "        os.execv('/bin/sh', ['sh', '-c', cmd])\n"
         "    finally:\n"
         "        os._exit(1)\n"
         "os.waitpid(pid, 0)\n"),
    Case("source_file_loader_fresh_signal", "signal",
         "import signal\n"
         "from importlib.machinery import SourceFileLoader\n"
         "from importlib.util import module_from_spec, spec_from_loader\n"
         "loader = SourceFileLoader('signal', signal.__file__)\n"
         "fresh = module_from_spec(spec_from_loader('signal', loader))\n"
         "loader.exec_module(fresh)\n"
         "fresh.signal(fresh.SIGALRM, lambda signum, frame: None)\n"),
    Case("importlib_reload_signal", "signal",
         "import importlib\n"
         "import signal\n"
         "importlib.reload(signal)\n"
         "signal.signal(signal.SIGALRM, lambda signum, frame: None)\n"),
    Case("forged_importer_globals__socket", "network",
         "raw = __import__('_socket', {'__name__': 'socket', '__package__': ''})\n"
         "s = raw.socket(raw.AF_INET, raw.SOCK_STREAM)\n"
         "s.settimeout(2)\n"
         "s.connect(('127.0.0.1', port))\n"
         "s.close()\n"),
    Case("bootstrap__load_blocked_pty_from_file", "process",
         "import os\n"
         "import importlib._bootstrap as bootstrap\n"
         "import importlib.util as util\n"
         "path = os.path.join(os.path.dirname(os.__file__), 'pty.py')\n"
         "pty = bootstrap._load(util.spec_from_file_location('pty', path))\n"
         "pid, _ = pty.fork()\n"
         "if pid == 0:\n"
         "    try:\n"
         "        os.execv('/bin/sh', ['sh', '-c', cmd])\n"
         "    finally:\n"
         "        os._exit(1)\n"
         "os.waitpid(pid, 0)\n"),
    Case("sys_path_hooks_insert", "path_hooks",
         "import sys\n"
         "def hook(path):\n"
         "    raise ImportError\n"
         "sys.path_hooks.insert(0, hook)\n",
         enforce_gap="default mode gap: sys.path_hooks is a shared list and a list insert "
                     "raises no audit event; restricted mode / OS layer covers it"),
    Case("sys_path_importer_cache_poisoned", "importer_cache",
         "import sys\n"
         "class Spy:\n"
         "    def find_spec(self, name, target=None):\n"
         "        return None\n"
         "sys.path_importer_cache[next(iter(sys.path_importer_cache))] = Spy()\n",
         enforce_gap="default mode gap: sys.path_importer_cache is a shared dict and an item "
                     "write raises no audit event; restricted mode / OS layer covers it"),
    Case("sys_modules_json_replaced", "sys_modules",
         "import sys\n"
         "class Fake:\n"
         "    pass\n"
         "sys.modules['json'] = Fake()\n",
         enforce_gap="default mode gap: sys.modules is a shared dict and an item write "
                     "raises no audit event; restricted mode / OS layer covers it"),
    Case("compile_forged_stdlib_filename_atexit", "atexit",
         "import atexit\n"
         "import json\n"
         "def later():\n"
         "    open(target, 'w').close()\n"
         "tramp = {}\n"
         "exec(compile('def call(f, *a):\\n    return f(*a)\\n', json.__file__, 'exec'), tramp)\n"
         "tramp['call'](atexit.register, later)\n"),
    Case("compile_forged_subprocess_filename_fork_exec", "process",
         "import os\n"
         "import subprocess\n"
         "import sys\n"
         "tramp = {}\n"
         "exec(compile('def call(f, a):\\n    return f(*a)\\n', subprocess.__file__, 'exec'),\n"
         "     tramp)\n"
         "pid = tramp['call'](sys.modules['_posixsubprocess'].fork_exec, fork_exec_args)\n"
         "os.waitpid(pid, 0)\n"),
    # -- more reach-through ----------------------------------------------------------------
    Case("stdlib_function_globals_os", "process",
         "import logging\n"
         "logging.basicConfig.__globals__['os'].system(cmd)\n"),
    Case("subclasses_popen", "process",
         "popen = [c for c in ().__class__.__base__.__subclasses__()\n"
         "         if c.__name__ == 'Popen'][0]\n"
         "popen(['/bin/sh', '-c', cmd]).wait()\n"),
    Case("gc_get_referrers_builtins_import", "process",
         "import gc\n"
         "found = [r for r in gc.get_referrers(len) if isinstance(r, dict) and 'open' in r]\n"
         "found[0]['__import__']('os').system(cmd)\n"),
    Case("posix_write_via_sys_modules", "hostlog",
         "import sys\n"
         "sys.modules['posix'].write(logfd, b'evil')\n"),
    # -- more frames -----------------------------------------------------------------------
    Case("inspect_currentframe_f_back", "process",
         "import inspect\n"
         "inspect.currentframe().f_back.f_globals['os'].system(cmd)\n"),
    Case("coroutine_cr_frame_f_back", "process",
         "async def walk():\n"
         "    return coro.cr_frame.f_back.f_back.f_globals\n"
         "coro = walk()\n"
         "try:\n"
         "    coro.send(None)\n"
         "except StopIteration as stop:\n"
         "    host = stop.value\n"
         "host['os'].system(cmd)\n"),
    Case("sys_current_frames_f_back", "process",
         "import sys\n"
         "import threading\n"
         "frame = sys._current_frames()[threading.get_ident()]\n"
         "frame.f_back.f_globals['os'].system(cmd)\n"),
    # -- more builtins tampering -----------------------------------------------------------
    Case("builtins_import_replaced", "builtins_import",
         "real = __builtins__['__import__']\n"
         "def spy(*args, **kwargs):\n"
         "    return real(*args, **kwargs)\n"
         "__builtins__['__import__'] = spy\n",
         enforce_gap="default mode gap: a write into the host's builtins dict raises no audit "
                     "event; restricted mode covers it"),
    # -- more file APIs --------------------------------------------------------------------
    Case("os_open_o_creat", "file",
         "import os\n"
         "os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))\n"),
    Case("pathlib_write_text", "file",
         "import pathlib\n"
         "pathlib.Path(target).write_text('x')\n"),
    Case("os_symlink", "file",
         "import os\n"
         "os.symlink(source_file, target)\n"),
    Case("os_link", "file",
         "import os\n"
         "os.link(source_file, target)\n"),
    Case("sqlite3_connect_file", "file",
         "import sqlite3\n"
         "sqlite3.connect(target).execute('create table t (x)')\n"),
    Case("extension_file_loader__sqlite3_by_path", "file",
         "from importlib.machinery import ExtensionFileLoader\n"
         "from importlib.util import module_from_spec, spec_from_loader\n"
         "loader = ExtensionFileLoader('_sqlite3', sqlite_extension)\n"
         "raw = module_from_spec(spec_from_loader('_sqlite3', loader))\n"
         "loader.exec_module(raw)\n"
         "raw.connect(target).execute('create table t (x)')\n"),
    Case("zipfile_extractall", "file",
         "import io\n"
         "import zipfile\n"
         "buffer = io.BytesIO()\n"
         "with zipfile.ZipFile(buffer, 'w') as archive:\n"
         "    archive.writestr('written.txt', 'x')\n"
         "zipfile.ZipFile(buffer).extractall(outdir)\n"),
    Case("tarfile_extractall", "file",
         "import io\n"
         "import tarfile\n"
         "buffer = io.BytesIO()\n"
         "with tarfile.open(fileobj=buffer, mode='w') as archive:\n"
         "    info = tarfile.TarInfo('written.txt')\n"
         "    info.size = 1\n"
         "    archive.addfile(info, io.BytesIO(b'x'))\n"
         "buffer.seek(0)\n"
         "with tarfile.open(fileobj=buffer) as archive:\n"
         "    archive.extractall(outdir, filter='data')\n"),
    Case("shelve_open_file", "file",
         "import shelve\n"
         "with shelve.open(target) as db:\n"
         "    db['x'] = 1\n"),
    Case("os_write_host_logfd", "hostlog",
         "import os\n"
         "os.write(logfd, b'evil')\n"),
    Case("os_fdopen_host_logfd", "hostlog",
         "import os\n"
         "with os.fdopen(logfd, 'wb', closefd=False) as f:\n"
         "    f.write(b'evil')\n"),
    # -- more network APIs -----------------------------------------------------------------
    Case("http_client_connection", "network",
         "import http.client\n"
         "http.client.HTTPConnection('127.0.0.1', port, timeout=2).connect()\n"),
    Case("socket_create_connection", "network",
         "import socket\n"
         "socket.create_connection(('127.0.0.1', port), timeout=2).close()\n"),
    Case("ssl_context_wrap_socket_connect", "network",
         "import socket\n"
         "import ssl\n"
         "context = ssl.create_default_context()\n"
         "s = context.wrap_socket(socket.socket(), server_hostname='localhost',\n"
         "                        do_handshake_on_connect=False)\n"
         "s.settimeout(2)\n"
         "s.connect(('127.0.0.1', port))\n"),
    Case("smtplib_smtp", "network",
         "import smtplib\n"
         "smtplib.SMTP('127.0.0.1', port, timeout=2)\n"),
    Case("ftplib_ftp_connect", "network",
         "import ftplib\n"
         "ftplib.FTP().connect('127.0.0.1', port, timeout=2)\n"),
    # -- more processes --------------------------------------------------------------------
    Case("posixsubprocess_fork_exec_direct", "process",
         "import os\n"
         "import sys\n"
         "pid = sys.modules['_posixsubprocess'].fork_exec(*fork_exec_args)\n"
         "os.waitpid(pid, 0)\n"),
    Case("pty_fork", "process",
         "import os\n"
         "import pty\n"
         "pid, _ = pty.fork()\n"
         "if pid == 0:\n"
         "    try:\n"
         "        os.execv('/bin/sh', ['sh', '-c', cmd])\n"
         "    finally:\n"
         "        os._exit(1)\n"
         "os.waitpid(pid, 0)\n"),
    Case("multiprocessing_process", "process",
         "import multiprocessing\n"
         "import os\n"
         "child = multiprocessing.get_context('fork').Process(target=os.system, args=(cmd,))\n"
         "child.start()\n"
         "child.join(10)\n"),
    Case("os_popen", "process",
         "import os\n"
         "os.popen(cmd).close()\n"),
    Case("subprocess_run_shell", "process",
         "import subprocess\n"
         "subprocess.run(cmd, shell=True, timeout=10)\n"),
    Case("os_fork_execv_in_thread", "process",
         "import os\n"
         "import threading\n"
         "result = []\n"
         "def child():\n"
         "    try:\n"
         "        pid = os.fork()\n"
         "    except Exception as error:\n"
         "        result.append(error)\n"
         "        return\n"
         "    if pid == 0:\n"
         "        try:\n"
         "            os.execv('/bin/sh', ['sh', '-c', cmd])\n"
         "        finally:\n"
         "            os._exit(1)\n"
         "    os.waitpid(pid, 0)\n"
         "thread = threading.Thread(target=child)\n"
         "thread.start()\n"
         "thread.join(10)\n"),
    Case("ctypes_via_sys_modules", "process",
         "import sys\n"
         "sys.modules['ctypes'].CDLL(None).system(cmd.encode())\n"),
    Case("ctypes_cdll_loadlibrary_via_sys_modules", "process",
         "import sys\n"
         "sys.modules['ctypes'].cdll.LoadLibrary('libc.so.6').system(cmd.encode())\n"),
    Case("_ctypes_cfuncptr_direct", "process",
         "import sys\n"
         "raw = sys.modules['_ctypes']\n"
         "class Int(raw._SimpleCData):\n"
         "    _type_ = 'i'\n"
         "class Function(raw.CFuncPtr):\n"
         "    _flags_ = raw.FUNCFLAG_CDECL\n"
         "    _restype_ = Int\n"
         "class Libc:\n"
         "    _handle = raw.dlopen('libc.so.6')\n"
         "Function(('system', Libc()))(cmd.encode())\n"),
    # -- more persistence ------------------------------------------------------------------
    Case("os_register_at_fork", "at_fork",
         "import os\n"
         "def later():\n"
         "    if armed:\n"
         "        open(target, 'w').close()\n"
         "os.register_at_fork(before=later)\n"),
    Case("threading_settrace", "thread_trace",
         "import threading\n"
         "def tracer(frame, event, arg):\n"
         "    return None\n"
         "threading.settrace(tracer)\n"),
    Case("sys_setprofile", "profile",
         "import sys\n"
         "def profiler(frame, event, arg):\n"
         "    return None\n"
         "sys.setprofile(profiler)\n"),
    Case("sys_excepthook_replaced", "excepthook",
         "import sys\n"
         "def hook(*args, make=open):\n"
         "    make(target, 'w').close()\n"
         "sys.excepthook = hook\n"),
    Case("threading_excepthook_replaced", "thread_excepthook",
         "import threading\n"
         "def hook(args, make=open):\n"
         "    make(target, 'w').close()\n"
         "threading.excepthook = hook\n"),
    Case("copyreg_pickle_registered", "copyreg",
         "import copyreg\n"
         "def reduce(value, make=open):\n"
         "    make(target, 'w').close()\n"
         "    return (complex, (0, 0))\n"
         "copyreg.pickle(complex, reduce)\n"),
    Case("copyreg_dispatch_table_item", "copyreg",
         "import copyreg\n"
         "def reduce(value, make=open):\n"
         "    make(target, 'w').close()\n"
         "    return (complex, (0, 0))\n"
         "copyreg.dispatch_table[complex] = reduce\n",
         enforce_gap="default mode gap: copyreg's registry is a shared dict and an item "
                     "write raises no audit event; restricted mode / OS layer covers it"),
    Case("codecs_register_search", "codecs",
         "import codecs\n"
         "def search(name, make=open):\n"
         "    if name == 'gae_evil':\n"
         "        make(target, 'w').close()\n"
         "        return codecs.lookup('utf-8')\n"
         "    return None\n"
         "codecs.register(search)\n"),
    Case("_codecs_register_reach_through", "codecs",
         "import _codecs\n"
         "def search(name, make=open):\n"
         "    if name == 'gae_evil':\n"
         "        make(target, 'w').close()\n"
         "        return _codecs.lookup('utf-8')\n"
         "    return None\n"
         "_codecs.register(search)\n"),
    Case("warnings_showwarning_replaced", "showwarning",
         "import warnings\n"
         "def show(*args, **kwargs):\n"
         "    pass\n"
         "warnings.showwarning = show\n",
         enforce_gap="default mode gap: assigning an attribute of a shared module raises no "
                     "audit event; restricted mode / OS layer covers it"),
    Case("weakref_finalize_runs_in_host", "finalizer",
         "import weakref\n"
         "class Holder:\n"
         "    pass\n"
         "keep = Holder()\n"
         "def later():\n"
         "    open(target, 'w').close()\n"
         "weakref.finalize(keep, later)\n"),
    Case("del_of_object_kept_in_shared_module", "finalizer",
         "import json\n"
         "class Bomb:\n"
         "    def __del__(self):\n"
         "        open(target, 'w').close()\n"
         "json.keep = Bomb()\n",
         enforce_gap="default mode gap: __del__ runs in whatever code drops the last "
                     "reference (host code, outside the scope); restricted mode / OS layer "
                     "covers it"),
    Case("logging_handler_runs_in_host", "logging_handler",
         "import logging\n"
         "class Handler(logging.Handler):\n"
         "    def emit(self, record, make=logging.FileHandler):\n"
         "        make(target).close()\n"
         "logging.getLogger('gae_escape').addHandler(Handler())\n"),
    Case("generator_resumed_by_host_after_scope", "generator_resumed",
         "import logging\n"
         "def steps(make=logging.FileHandler):\n"
         "    yield 'first'\n"
         "    make(target).close()\n"
         "    yield 'second'\n"
         "resumable = steps()\n"
         "next(resumable)\n",
         enforce_gap="default mode gap: a generator the host resumes after the request runs "
                     "in host code, outside the scope; restricted mode / OS layer covers it"),
    Case("sandbox_scope_cleared_via_package_attribute", "file",
         "import gae_sandbox\n"
         "gae_sandbox.context._ACTIVE.set(None)\n"
         "open(target, 'w').close()\n"),
    Case("sandbox_audit_table_via_package_attribute", "file",
         "import gae_sandbox\n"
         "table = vars(gae_sandbox.audit)\n"
         "table['audit_hook'] = None\n"
         "table['HANDLERS'] = {}\n"
         "gae_sandbox.context.active_scope = lambda: None\n"
         "open(target, 'w').close()\n"),
    Case("sandbox_exit_called_by_app", "file",
         "import gae_sandbox\n"
         "sandbox = gae_sandbox.current_sandbox()\n"
         "if sandbox is not None:\n"
         "    exit_ = getattr(sandbox, '__exit__', None)\n"
         "    if exit_ is not None:\n"
         "        exit_(None, None, None)\n"
         "open(target, 'w').close()\n"),

    Case("contextvars_empty_context_escapes_scope", "file",
         "import contextvars\n"
         "import logging\n"
         "contextvars.Context().run(logging.FileHandler, target)\n"),
    # -- more deadline evasion -------------------------------------------------------------
    Case("signal_setitimer", "itimer",
         "import signal\n"
         "signal.setitimer(signal.ITIMER_REAL, 100)\n"),
    Case("signal__signal_reach_through", "signal",
         "import signal\n"
         "signal._signal.signal(signal.SIGALRM, lambda signum, frame: None)\n"),
    Case("c_loop_past_deadline", "past_deadline",
         "total = sum(range(60000000))\n",
         enforce_gap="OS layer: a C loop never returns to the interpreter, so nothing "
                     "in-process interrupts it before it ends",
         restricted_gap="OS layer: a C loop never returns to the interpreter, so nothing "
                        "in-process interrupts it before it ends"),
]

assert len(CASES) >= 60, len(CASES)
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
    # equality: a fresh copy of signal.py rebinds the host module's Handlers enum
    return signal.getsignal(signal.SIGALRM) != env.saved["sigalrm"]


def _exit_handler_ran_in_host(env: Env) -> bool:
    """Run the exit handlers as the interpreter would at exit, in a forked child (so the
    host's own handlers do not run here), then look for the file the code's handler writes."""
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # a refused handler prints its error
            atexit._run_exitfuncs()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return any(env.outdir.iterdir())


def _path_hooks_changed(env: Env) -> bool:
    return sys.path_hooks != env.saved["path_hooks"]


def _importer_cache_changed(env: Env) -> bool:
    cache = sys.path_importer_cache
    return any(cache.get(key, _GONE) is not value
               for key, value in env.saved["importer_cache"].items())


def _sys_modules_changed(env: Env) -> bool:
    return sys.modules.get("json") is not json


def _import_changed(env: Env) -> bool:
    return builtins.__import__ not in (original_import, gated_import)


def _fork_handler_ran(env: Env) -> bool:
    pid = os.fork()  # the parent runs the "before" handlers; the child leaves at once
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return any(env.outdir.iterdir())


def _thread_trace_changed(env: Env) -> bool:
    return threading._trace_hook is not env.saved["thread_trace"]  # type: ignore[attr-defined]


def _profile_changed(env: Env) -> bool:
    return sys.getprofile() is not env.saved["profile"]


def _excepthook_ran_in_host(env: Env) -> bool:
    """Report an uncaught error as the interpreter would, with whatever hook is set now."""
    try:
        raise RuntimeError("a host error")
    except RuntimeError:
        try:
            sys.excepthook(*sys.exc_info())
        except Exception:  # noqa: S110 - a refused hook raises into the host
            pass
    return any(env.outdir.iterdir())


def _thread_excepthook_ran_in_host(env: Env) -> bool:
    """A host thread's uncaught error, reported through ``threading.excepthook``."""
    thread = threading.Thread(target=lambda: 1 / 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thread.start()
        thread.join()
    return any(env.outdir.iterdir())


def _copyreg_ran_in_host(env: Env) -> bool:
    """Pickle a complex number in host code: a reducer the code registered would run."""
    import pickle

    try:
        pickle.dumps(complex(1, 2))
    except Exception:  # noqa: S110 - a refused reducer raises into the host's pickling
        pass
    return any(env.outdir.iterdir())


def _codec_ran_in_host(env: Env) -> bool:
    """Look the code's codec up in host code: its search function would run."""
    try:
        codecs.lookup("gae_evil")
    except Exception:  # noqa: S110 - a refused search function raises into the host
        pass
    return any(env.outdir.iterdir())


def _showwarning_changed(env: Env) -> bool:
    return warnings.showwarning is not env.saved["showwarning"]


def _finalizer_ran_in_host(env: Env) -> bool:
    """Drop what the code left alive (in its globals or a shared module), as host code
    would later, then look for the file its finalizer writes."""
    vars(json).pop("keep", None)
    env.namespace.pop("keep", None)
    gc.collect()
    return any(env.outdir.iterdir())


def _logging_handler_ran_in_host(env: Env) -> bool:
    """Log to the logger the code may have given a handler, as host code would later."""
    try:
        logging.getLogger("gae_escape").error("a host log line")
    except Exception:  # noqa: S110 - a refused handler raises into the host's log call
        pass
    return any(env.outdir.iterdir())


def _generator_resumed_in_host(env: Env) -> bool:
    """Resume the generator the code left, as host code iterating a returned value would."""
    generator = env.namespace.get("resumable")
    if generator is not None:
        try:
            next(generator)
        except Exception:  # noqa: S110 - a refused generator raises into the host's loop
            pass
    return any(env.outdir.iterdir())


def _itimer_set(env: Env) -> bool:
    return signal.getitimer(signal.ITIMER_REAL)[0] > 0


def _ran_past_deadline(env: Env) -> bool:
    """The request ran well past its deadline (0.1 s): at least six times as long."""
    return time.monotonic() - env.saved["started"] >= 0.6


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
    "atexit": _exit_handler_ran_in_host,
    "path_hooks": _path_hooks_changed,
    "importer_cache": _importer_cache_changed,
    "sys_modules": _sys_modules_changed,
    "builtins_import": _import_changed,
    "at_fork": _fork_handler_ran,
    "thread_trace": _thread_trace_changed,
    "profile": _profile_changed,
    "excepthook": _excepthook_ran_in_host,
    "thread_excepthook": _thread_excepthook_ran_in_host,
    "copyreg": _copyreg_ran_in_host,
    "codecs": _codec_ran_in_host,
    "showwarning": _showwarning_changed,
    "finalizer": _finalizer_ran_in_host,
    "logging_handler": _logging_handler_ran_in_host,
    "generator_resumed": _generator_resumed_in_host,
    "itimer": _itimer_set,
    "past_deadline": _ran_past_deadline,
}

_GONE = object()
#: Modules whose namespace a case may re-run or change (``importlib.reload``), put back
#: after every run.
_SHARED_MODULES = (os, signal, json, warnings, audit, sandbox_context)


def _restore(env: Env) -> None:
    """Undo whatever the code changed in the host, in every mode."""
    saved = env.saved
    sys.settrace(saved["trace"])
    json.dumps = saved["json.dumps"]
    builtins.open = saved["builtins.open"]
    for finder in _foreign_finders(env):
        sys.meta_path.remove(finder)
    for module, namespace in zip(_SHARED_MODULES, saved["modules"], strict=True):
        current = vars(module)
        for name in [name for name in current if name not in namespace]:
            del current[name]
        current.update(namespace)
    signal.signal(signal.SIGALRM, saved["sigalrm"])
    signal.setitimer(signal.ITIMER_REAL, 0)
    sys.path_hooks[:] = saved["path_hooks"]
    sys.path_importer_cache.update(saved["importer_cache"])
    sys.modules["json"] = json
    if builtins.__import__ not in (original_import, gated_import):
        builtins.__import__ = saved["import"]
    env.namespace["armed"] = False  # a fork handler cannot be removed: disarm it
    threading._trace_hook = saved["thread_trace"]  # type: ignore[attr-defined]
    sys.setprofile(saved["profile"])
    sys.excepthook = saved["excepthook"]
    threading.excepthook = saved["thread_excepthook"]
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(saved["copyreg"])
    search = env.namespace.get("search")
    if callable(search):
        codecs.unregister(search)
    escape_logger = logging.getLogger("gae_escape")
    for handler in list(escape_logger.handlers):
        escape_logger.removeHandler(handler)
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
    errpipe_read, errpipe_write = os.pipe()
    fork_exec_args = _fork_exec_args(["/bin/sh", "-c", f"touch '{marker}'"],
                                     errpipe_read, errpipe_write)
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
        "outdir": str(outdir),
        "fork_exec_args": fork_exec_args,
        "sqlite_extension": _SQLITE_EXTENSION,
        "armed": True,
    }
    namespace["gate"].acquire()
    install()  # the patches are part of the host state saved (and put back) below
    saved = {
        "trace": sys.gettrace(),
        "json.dumps": json.dumps,
        "builtins.open": builtins.open,
        "meta_path": list(sys.meta_path),
        "sigalrm": signal.getsignal(signal.SIGALRM),
        "atexit": atexit._ncallbacks(),
        "modules": [dict(vars(module)) for module in _SHARED_MODULES],
        "path_hooks": list(sys.path_hooks),
        "importer_cache": dict(sys.path_importer_cache),
        "import": builtins.__import__,
        "thread_trace": threading._trace_hook,  # type: ignore[attr-defined]
        "profile": sys.getprofile(),
        "excepthook": sys.excepthook,
        "thread_excepthook": threading.excepthook,
        "copyreg": dict(copyreg.dispatch_table),
        "showwarning": warnings.showwarning,
        "handlers": dict(audit.HANDLERS),
    }
    environment = Env(outdir, marker, hostlog, listener, namespace, saved)
    try:
        yield environment
    finally:
        _restore(environment)
        thread = namespace.get("thread")
        assert not (isinstance(thread, threading.Thread) and thread.is_alive()), "thread left"
        os.close(logfd)
        os.close(errpipe_read)
        os.close(errpipe_write)
        adopted = namespace.get("s")
        if isinstance(adopted, socket.socket):
            adopted.close()
        else:  # nobody adopted the descriptor: close it here (still ours, nothing reused it)
            try:
                socket.socket(fileno=namespace["fd"]).close()
            except OSError:
                pass


def _fork_exec_args(argv: list[str], errpipe_read: int, errpipe_write: int) -> list[Any]:
    """Positional arguments of ``_posixsubprocess.fork_exec`` for this interpreter."""
    args: list[Any] = [
        argv, [os.fsencode(argv[0])], True, (errpipe_write,), None, None,
        -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write, True, False,
    ]
    if sys.version_info >= (3, 11):
        args.append(-1)  # process_group
    args += [None, None, None, -1, None]  # gid, extra_groups, uid, child_umask, preexec_fn
    if sys.version_info >= (3, 11) and hasattr(subprocess, "_USE_VFORK"):
        args.append(True)  # allow_vfork
    return args


_SQLITE_EXTENSION = getattr(importlib.machinery.PathFinder.find_spec("_sqlite3"), "origin", "")

STOPS = (Exception, DeadlineExceededError, HardDeadlineExceeded)


def _policy_for(case: Case, policy: Policy) -> Policy:
    if case.effect in ("deadline", "past_deadline"):
        return policy.replace(deadline=0.1, hard_deadline_grace=0.2)
    if case.effect == "thread_file":  # joined until 0.1 + 0.1 s, then it outlives the scope
        return policy.replace(deadline=0.1, hard_deadline_grace=0.1)
    return policy


def _run(case: Case, mode: str, env: Env, policy: Policy) -> BaseException | None:
    """Run the case's source in ``mode``; the error it ended with, if any."""
    namespace = env.namespace
    env.saved["started"] = time.monotonic()
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


_ACCELERATED = patches.SPEEDUPS is not None


def _params(mode: str) -> list[Any]:
    params = []
    for case in CASES:
        if mode == "plain":
            skip = case.pure_python_route if _ACCELERATED else None
            marks = [pytest.mark.skip(reason=skip)] if skip else []
        else:
            reason = case.enforce_gap if mode == "enforce" else case.restricted_gap
            if _ACCELERATED and case.pure_python_route:
                reason = None  # no route, no gap
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.parametrize("case", _params("plain"))
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
