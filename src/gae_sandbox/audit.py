"""The audit-hook backstop (PEP 578), installed once and never removed.

It sees audited operations however they are reached: functions captured before install
(``from os import remove``), private modules (``posix``, ``_socket``, ``_io``), ``ctypes`` and
``mmap`` held by the host. Host code pays one ContextVar read per event. The decision "is this
the sandboxed request?" comes from the ContextVar, never from anything app code can reach.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from . import patches
from .allowlist import check_descriptor, check_descriptor_control
from .context import _ACTIVE, Scope, active_scope, check_not_held, host_call
from .filesystem import (
    _opened_path,
    adopted_by_open,
    check_open,
    check_read,
    check_write,
    handed_to_io_open,
)
from .imports import (
    HOST_IMPORTS,
    check_extension_file,
    extension_filename,
    is_stdlib_code,
    loading_files,
    trusted_import_context,
)
from .memoryfs import SQLITE_CONNECTING, SQLITE_JUDGED
from .network import check_connect, check_lookup, check_server, on_socket_new
from .patches import (
    JUDGED_SPAWN,
    _refuse_process,
    _refuse_system,
    describe_command,
    take_judged_spawn,
)
from .paths import realpath
from .runtime import STDLIB_MODULE_NAMES
from .threads import is_carried

Handler = Callable[[Scope, tuple[Any, ...]], None]

_IMPORT_MACHINERY = "<frozen importlib._bootstrap_external>"


def _caller_is_import_machinery() -> bool:
    """Whether the audited call comes from importlib's own code (writing bytecode caches)."""
    frame: Any = sys._getframe(3)  # handler <- dispatch <- hook <- caller
    return frame is not None and frame.f_code.co_filename == _IMPORT_MACHINERY


def _on_open(scope: Scope, args: tuple[Any, ...]) -> None:
    path, mode, flags = args
    if handed_to_io_open(scope, path):  # the usual case: open() handing its descriptor
        return  # as check_open would answer, without the judging around it
    writes = isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    if writes and _caller_is_import_machinery():
        # importlib caching bytecode: refused as every write is, but not the app's doing
        raise PermissionError(30, "gae_sandbox: no bytecode cache inside the sandbox")
    if type(path) is str and path in loading_files(scope)[0]:
        return  # the file of a module the import gate judged and is loading: not again
    scope.judge(check_open, scope, path, mode, flags)
    if type(path) is int and not adopted_by_open(scope, path):
        # a file object made on the number directly (_io.FileIO(fd)): one an object of the
        # request holds is refused; another is that file object's from now on, which may
        # close it unseen, so the number alone is no longer the request's
        scope.judge(check_not_held, scope, path, "_io.FileIO()")
        scope.opened_fds.discard(path)


def _on_listdir(scope: Scope, args: tuple[Any, ...]) -> None:
    path = args[0]
    if path is None:
        path = "."
    if type(path) is str and (path in loading_files(scope)[1] or path in HOST_IMPORTS.paths
                              or path == ""):
        # the import system listing where the host's finders look for modules (a folder
        # the app put on sys.path is judged as any other)
        return
    _on_path_read(scope, (path,))


def _on_path_read(scope: Scope, args: tuple[Any, ...]) -> None:
    """A read of what ``args[0]`` names: a file or folder the request may read, or its own
    descriptor (listings; ``os.getxattr``/``listxattr``, also raised by ``posix``'s own,
    which nothing else wraps)."""
    path = args[0] if args else None
    if isinstance(path, int):
        if path not in scope.opened_fds:  # a descriptor the host holds
            scope.judge(check_read, f"<fd {path}>")
        return
    scope.judge(check_read, path)


def _writes(operation: str) -> Handler:
    def on_write(scope: Scope, args: tuple[Any, ...]) -> None:
        scope.judge(check_write, args[0] if args else "", operation)

    return on_write


def _on_rename(scope: Scope, args: tuple[Any, ...]) -> None:
    scope.judge(check_write, f"{args[0]!s} -> {args[1]!s}", "rename")


def _on_link(scope: Scope, args: tuple[Any, ...]) -> None:
    scope.judge(check_write, f"{args[1]!s} -> {args[0]!s}", "link")


def _processes(what: Callable[[tuple[Any, ...]], str], *, after_popen: bool = False,
               popen: bool = False) -> Handler:
    def on_process(scope: Scope, args: tuple[Any, ...]) -> None:
        if after_popen and take_judged_spawn():
            return  # the spawn of a subprocess.Popen whose own event was judged just now
        scope.judge(_refuse_process, what(args))
        if popen:
            JUDGED_SPAWN.set(True)  # let through: its one spawn is not judged again

    return on_process


def _system(what: Callable[[tuple[Any, ...]], str], rule: str) -> Handler:
    def on_system(scope: Scope, args: tuple[Any, ...]) -> None:
        scope.judge(_refuse_system, what(args), rule)

    return on_system


def _on_descriptor_call(event: str) -> Handler:
    """``fcntl``'s locks, flags and ``ioctl`` name a descriptor (the event carries it as the
    C call's int): the request's own only, as for the ``os`` functions on descriptors. (An
    in-memory file's are answered before the C call: ``memoryfs``.)"""
    what = f"{event}()"
    if event in ("fcntl.fcntl", "fcntl.ioctl"):  # and the command: an allow-list
        def control(scope: Scope, args: tuple[Any, ...]) -> None:
            scope.judge(check_descriptor_control, scope, event, args)

        return control

    def handler(scope: Scope, args: tuple[Any, ...]) -> None:
        scope.judge(check_descriptor, scope, args[0] if args else None, what)

    return handler


def _on_thread_start(event: str) -> Handler:
    """A thread started inside a scope must run the function the patched starters give it
    (``threads._carried``: it carries the scope and marks the thread): one started through
    an unpatched ``start_new_thread`` (a second ``_thread`` module made with
    ``_imp.create_builtin``) would run with no sandbox."""

    def handler(scope: Scope, args: tuple[Any, ...]) -> None:
        if not (args and is_carried(args[0])):
            scope.judge(_refuse_system, f"{event}() outside threading's patched starters",
                        "a thread a request starts must carry its sandbox")

    return handler


def _on_tracer(event: str) -> Handler:
    """``sys.settrace``/``setprofile`` from app code: the tracer would outlive the request
    on this thread. Debuggers (``pdb``, standard-library code) may still set one."""

    def on_tracer(scope: Scope, args: tuple[Any, ...]) -> None:
        # whoever calls it (bdb/pdb included: their tracer dispatches to the app's methods),
        # the tracer would stay on the thread after the request
        scope.judge(_refuse_system, f"{event}()",
                    "a trace or profile function stays on the thread after the request")

    return on_tracer


_COROUTINE_CODE = types.coroutine.__code__
_CLAIM_RULE = ("code made in a request may not claim a standard-library or sandbox file name "
               "(the sandbox trusts code by its file)")


def _claimed_trusted_file(filename: Any) -> str | None:
    """``filename`` if it names code the sandbox trusts (the standard library, ``<frozen
    ...>`` machinery, this library), else None."""
    if isinstance(filename, bytes):
        filename = os.fsdecode(filename)
    if isinstance(filename, str) and is_stdlib_code(filename):
        return filename
    return None


def _read_file(filename: str) -> bytes:
    with open(filename, "rb") as file:  # noqa: PTH123
        return file.read()


def _is_file_source(source: Any, filename: str) -> bool:
    """Whether ``source`` is the file's own text (the import system compiling it), or one
    line of it (CPython 3.11's traceback printer parses the line it shows, to place its
    carets, under the frame's file name)."""
    if filename.startswith("<") or not isinstance(source, (str, bytes, bytearray, memoryview)):
        return False
    try:
        text = host_call(_read_file, filename)
    except OSError:
        return False
    given = source.encode("utf-8") if isinstance(source, str) else bytes(source)
    if given == text:
        return True
    if (realpath(filename) or filename).startswith(_LIBRARY_PREFIX):
        return False  # this library's own files: the whole file only
    line = given.strip()
    return bool(line) and b"\n" not in line and line in text


_LIBRARY_PREFIX = os.path.dirname(realpath(__file__) or __file__) + os.sep


def _on_compile(scope: Scope, args: tuple[Any, ...]) -> None:
    """``compile`` (also ``exec``/``eval`` of a string) under a trusted file name: the
    code would pass the checks that trust standard-library code (``atexit.register``,
    private C modules, ``subprocess``'s own spawn). The import system compiling the file's
    own source is let through."""
    claimed = _claimed_trusted_file(args[1])
    if claimed is not None and not _is_file_source(args[0], claimed):
        scope.judge(_refuse_system, f"compile(..., {claimed!r})", _CLAIM_RULE)


def _on_code_new(scope: Scope, args: tuple[Any, ...]) -> None:
    """``types.CodeType(...)`` and ``code.replace(...)`` with a trusted file name, unless
    ``types.coroutine`` makes it (it replaces the flags of a code object and keeps its file
    name; other standard-library callers, such as ``modulefinder``, rename files)."""
    claimed = _claimed_trusted_file(args[1])
    if claimed is not None and sys._getframe(2).f_code is not _COROUTINE_CODE:
        scope.judge(_refuse_system, f"code object for {claimed!r}", _CLAIM_RULE)


def _on_sqlite_connect(scope: Scope, args: tuple[Any, ...]) -> None:
    """SQLite opens (and creates) its database file in C, past the ``open`` event: only an
    in-memory database is let through (reached when a policy unblocks ``sqlite3``, or
    through an already loaded ``_sqlite3``)."""
    database = args[0] if args else None
    if not scope.extras.get(SQLITE_CONNECTING):
        scope.judge(_refuse_system, f"sqlite3.Connection({database!r}) made directly",
                    "inside a sandbox a SQLite connection is made with sqlite3.connect, "
                    "which judges its file and refuses ATTACH of files")
        return
    judged = scope.extras.get(SQLITE_JUDGED)
    if judged is not None and (database == judged if type(database) is str else
                               type(database) is bytes and database == os.fsencode(judged)):
        return  # memoryfs's connect decided this very name (3.10's event gives it as bytes)
    if database not in (":memory:", "", b":memory:", b""):
        scope.judge(_refuse_system, f"sqlite3.connect({database!r})",
                    "SQLite opens its database file in C, past the sandbox's file checks")


_MMAP_RULE = ("a shared writable map writes its file outside Python's checks; anonymous maps "
              "and maps of files the request may read with access=ACCESS_READ or ACCESS_COPY "
              "are allowed")
_ACCESS_READ, _ACCESS_COPY = 1, 3  # mmap's ACCESS_READ and ACCESS_COPY (fixed since 2.x)


def _on_mmap(scope: Scope, args: tuple[Any, ...]) -> None:
    """``mmap.mmap(fileno, length, ..., access)``: anonymous memory (``fileno`` -1), or a
    read-only or copy-on-write map of a file the request may read (``numpy.load`` with
    ``mmap_mode="r"``; judged by where the descriptor's file is); a shared writable map of a
    file is refused (``access`` is the event's: CPython refuses it with ``prot``/``flags``)."""
    fd = args[0] if args else None
    access = args[2] if len(args) > 2 else None
    if type(fd) is not int:
        pass
    elif fd == -1:
        return
    elif scope.memory is not None and scope.memory.owns_fd(fd):
        scope.judge(_refuse_system, f"mmap.mmap(fd {fd})", "an in-memory file is not on disk "
                    "to be mapped (read it, or map anonymous memory)")
        return
    elif type(access) is int and access in (_ACCESS_READ, _ACCESS_COPY):
        if fd in scope.opened_fds:
            return
        opened = _opened_path(fd)  # a file open() gave it: one it may read, judged so
        if opened is not None:
            scope.judge(check_read, opened)
            return
    scope.judge(_refuse_system, f"mmap.mmap(fd {fd!r}, access {access!r})", _MMAP_RULE)


def _on_connect(scope: Scope, args: tuple[Any, ...]) -> None:
    scope.judge(check_connect, scope, args[1])


def _on_sendmsg(scope: Scope, args: tuple[Any, ...]) -> None:
    if args[1] is not None:
        scope.judge(check_connect, scope, args[1])


def _on_bind(scope: Scope, args: tuple[Any, ...]) -> None:
    scope.judge(check_server, f"bind to {args[1]!r}")


def _on_getaddrinfo(scope: Scope, args: tuple[Any, ...]) -> None:
    scope.judge(check_lookup, scope, args[0], args[1])


def _on_host_lookup(scope: Scope, args: tuple[Any, ...]) -> None:
    host = args[0]
    if isinstance(host, tuple):  # getnameinfo((host, port), flags)
        scope.judge(check_lookup, scope, host[0], host[1] if len(host) > 1 else None)
    else:
        scope.judge(check_lookup, scope, host, None)


def _on_import(scope: Scope, args: tuple[Any, ...]) -> None:
    name, filename = args[0], args[1]
    if extension_filename(filename):
        if name in scope.reported_imports:  # report mode: the import gate recorded it
            return
        scope.judge(check_extension_file, name, filename, trusted_import_context())


def _on_tempfile(scope: Scope, args: tuple[Any, ...], name: str = "") -> None:
    from .patches import _refuse_tempfile  # filesystem="memory" makes them in memory

    scope.judge(_refuse_tempfile, f"tempfile.{name}()")


def _command(args: tuple[Any, ...]) -> str:
    return describe_command(args[0])


def _exec_command(args: tuple[Any, ...]) -> str:
    path, argv = args[0], args[1] if len(args) > 1 else ()
    try:
        return f"{path!s} {describe_command(argv)}".strip()
    except TypeError:
        return str(path)


_NATIVE_RULE = "native code can bypass every check of the sandbox"

def _handlers() -> dict[str, Handler]:
    return {
        "open": _on_open,
        "os.listdir": _on_listdir,
        "os.scandir": _on_listdir,
        "os.remove": _writes("remove"),
        "os.rmdir": _writes("rmdir"),
        "os.mkdir": _writes("mkdir"),
        "os.rename": _on_rename,
        "os.link": _on_link,
        "os.symlink": _on_link,
        "os.truncate": _writes("truncate"),
        "os.chmod": _writes("chmod"),
        "os.chown": _writes("chown"),
        "os.utime": _writes("utime"),
        "os.chflags": _writes("chflags"),
        "os.lchflags": _writes("chflags"),
        "os.getxattr": _on_path_read,
        "os.listxattr": _on_path_read,
        "os.setxattr": _writes("setxattr"),
        "os.removexattr": _writes("removexattr"),
        "shutil.rmtree": _writes("shutil.rmtree"),
        "shutil.make_archive": lambda scope, args: scope.judge(
            check_write, args[0], "shutil.make_archive"),
        "shutil.unpack_archive": lambda scope, args: scope.judge(
            check_write, args[1] if len(args) > 1 and args[1] else args[0],
            "shutil.unpack_archive"),
        "tempfile.mkstemp": lambda scope, args: _on_tempfile(scope, args, "mkstemp"),
        "tempfile.mkdtemp": lambda scope, args: _on_tempfile(scope, args, "mkdtemp"),
        "os.chdir": _system(lambda a: f"os.chdir({a[0]!s})",
                            "the working directory is process-wide (the app runs in its root)"),
        "os.putenv": _system(lambda a: f"os.environ[{a[0]!r}] = ...",
                             "the process environment is shared with the host"),
        "os.unsetenv": _system(lambda a: f"del os.environ[{a[0]!r}]",
                               "the process environment is shared with the host"),
        "os.system": _processes(lambda a: f"os.system({describe_command(a[0])!r})"),
        "subprocess.Popen": _processes(lambda a: f"subprocess.Popen({describe_command(a[1])!r})",
                                       popen=True),
        "os.exec": _processes(lambda a: f"os.exec*({_exec_command(a)!r})"),
        "os.posix_spawn": _processes(lambda a: f"os.posix_spawn({_exec_command(a)!r})",
                                     after_popen=True),
        "os.spawn": _processes(lambda a: f"os.spawn*({_exec_command(a[1:])!r})"),
        "os.fork": _processes(lambda a: "os.fork()", after_popen=True),
        "os.forkpty": _processes(lambda a: "os.forkpty()"),
        "os.kill": _processes(lambda a: f"os.kill(pid {a[0]}, signal {a[1]})"),
        "os.killpg": _processes(lambda a: f"os.killpg(group {a[0]}, signal {a[1]})"),
        "signal.pthread_kill": _processes(lambda a: f"signal.pthread_kill(signal {a[1]})"),
        "webbrowser.open": _processes(lambda a: f"webbrowser.open({a[0]!r})"),
        "socket.connect": _on_connect,
        "socket.sendto": _on_connect,
        "socket.sendmsg": _on_sendmsg,
        "socket.bind": _on_bind,
        "socket.__new__": on_socket_new,
        "socket.getaddrinfo": _on_getaddrinfo,
        "socket.gethostbyname": _on_host_lookup,
        "socket.gethostbyaddr": _on_host_lookup,
        "socket.getnameinfo": _on_host_lookup,
        "socket.sethostname": _system(lambda a: "socket.sethostname()",
                                      "the host name is the host's"),
        "mmap.__new__": _on_mmap,
        "resource.setrlimit": _system(lambda a: "resource.setrlimit()", "limits are process-wide"),
        "resource.prlimit": _system(lambda a: "resource.prlimit()", "limits are process-wide"),
        "sys.addaudithook": _system(lambda a: "sys.addaudithook()",
                                    "audit hooks are process-wide and outlive the request"),
        "import": _on_import,
        "sqlite3.connect": _on_sqlite_connect,
        "sqlite3.enable_load_extension": _system(lambda a: "sqlite3.enable_load_extension()",
                                                 _NATIVE_RULE),
        "sqlite3.load_extension": _system(lambda a: "sqlite3.load_extension()", _NATIVE_RULE),
        "compile": _on_compile,
        "code.__new__": _on_code_new,
        "_thread.start_new_thread": _on_thread_start("_thread.start_new_thread"),
        "_thread.start_joinable_thread": _on_thread_start("_thread.start_joinable_thread"),
        "fcntl.fcntl": _on_descriptor_call("fcntl.fcntl"),
        "fcntl.ioctl": _on_descriptor_call("fcntl.ioctl"),
        "fcntl.flock": _on_descriptor_call("fcntl.flock"),
        "fcntl.lockf": _on_descriptor_call("fcntl.lockf"),
        "sys.settrace": _on_tracer("sys.settrace"),
        "sys.setprofile": _on_tracer("sys.setprofile"),
    }


#: Events of the interpreter and the standard library that sandboxed code may raise with no
#: decision of their own: they change nothing outside the request, or what they lead to is
#: judged by a lower-level event or patch (a connect, an open, a listing). Every other event
#: of theirs is judged by HANDLERS or refused: the list fails closed, so an event a new
#: CPython adds is refused until it is listed here.
ALLOWED_EVENTS: frozenset[str] = frozenset({
    "builtins.id", "builtins.input", "builtins.input/result", "builtins.breakpoint",
    "exec", "function.__new__", "object.__getattr__", "object.__setattr__",
    "object.__delattr__", "array.__new__", "marshal.dumps", "marshal.load", "marshal.loads",
    "pickle.find_class", "time.sleep", "sys._getframe", "sys._getframemodulename",
    "sys.excepthook", "sys.unraisablehook", "sys.set_asyncgen_hook_finalizer",
    "sys.set_asyncgen_hook_firstiter", "cpython._PySys_ClearAuditHooks",
    "cpython.run_command", "cpython.run_file", "cpython.run_interactivehook",
    "cpython.run_module", "cpython.run_startup", "cpython.run_stdin",
    "glob.glob", "glob.glob/2", "os.walk", "os.fwalk", "pathlib.Path.glob",
    "pathlib.Path.rglob", "pathlib.Path.walk", "os.lockf",
    "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move",
    "shutil.chown", "sqlite3.connect/handle",
    "socket.gethostname", "socket.getservbyname", "socket.getservbyport",
    "urllib.Request", "http.client.connect", "http.client.send", "ftplib.connect",
    "ftplib.sendcmd", "imaplib.open", "imaplib.send", "nntplib.connect", "nntplib.putline",
    "poplib.connect", "poplib.putline", "smtplib.connect", "smtplib.send",
    "telnetlib.Telnet.open", "telnetlib.Telnet.write", "pdb.Pdb",
})
#: The first part of the events the interpreter and the standard library raise; an event
#: with another prefix is a third-party library's own, which the sandbox has no rule for.
_INTERPRETER_PREFIXES = frozenset(STDLIB_MODULE_NAMES | {
    "cpython", "builtins", "object", "function", "code", "exec", "compile", "open", "import",
    "setopencodehook",
})
_UNLISTED_RULE = ("an interpreter or standard-library operation not on the sandbox's list of "
                  "audit events it allows or judges (gae_sandbox.audit.ALLOWED_EVENTS, "
                  "HANDLERS): refused until it is listed")


def _is_interpreter_event(event: str) -> bool:
    end = len(event)
    for separator in "./":
        found = event.find(separator)
        if found != -1:
            end = min(end, found)
    return event[:end] in _INTERPRETER_PREFIXES


#: The events judged, each with its handler: a read-only view. The hook holds its own
#: reference to the table (and to everything else it decides with), captured when it is
#: made, so rebinding or editing this module's names changes nothing it does.
HANDLERS = MappingProxyType(_handlers())
#: The allowed events no handler judges: the C hook returns for them without calling
#: ``audit_hook`` (which would only return; a fresh import raises thousands of them).
PASSED_EVENTS: frozenset[str] = ALLOWED_EVENTS.difference(HANDLERS)


def _make_hook() -> Callable[[str, tuple[Any, ...]], None]:
    handlers = HANDLERS
    allowed = ALLOWED_EVENTS
    current_scope = active_scope
    is_interpreter_event = _is_interpreter_event
    refuse_system = _refuse_system

    def audit_hook(event: str, args: tuple[Any, ...], scope: Scope | None = None) -> None:
        # the C hook hands over the scope it found (the same answer as active_scope())
        if scope is None:
            scope = current_scope()
            if scope is None:
                return
        __tracebackhide__ = True
        handler = handlers.get(event)
        if handler is not None:
            handler(scope, args)
        elif event in allowed:
            return
        elif event.startswith("ctypes."):
            scope.judge(refuse_system, f"{event}()", _NATIVE_RULE)
        elif is_interpreter_event(event):
            scope.judge(refuse_system, f"{event} (audit event)", _UNLISTED_RULE)

    return audit_hook


audit_hook = _make_hook()


_installed = False


def install_audit_hook() -> None:
    """Add the hook once per process (audit hooks cannot be removed).

    With the C accelerator (``patches.SPEEDUPS``) a C hook is added instead, which returns
    at once for host code (no sandbox active: one ContextVar read, no Python call) and for
    :data:`PASSED_EVENTS`, and calls ``audit_hook`` otherwise; the C module adds it only
    once per process."""
    global _installed
    if not _installed:
        speedups = patches.SPEEDUPS  # read now: the same choice as the patches installed
        if speedups is not None:
            speedups.install_audit_hook(audit_hook, _ACTIVE, PASSED_EVENTS)
        else:
            sys.addaudithook(audit_hook)
        _installed = True
