"""The C functions of ``os``/``posix``, ``sys``, ``signal``, ``gc``, ``socket``, ``time`` (and
the other modules of ``_HOLDERS``) that sandboxed code may call: an allow-list, as the
runtime's own per-module override policies were (allowed names, replaced names, everything
else a stub that raises).

Each such function is either listed here as allowed, replaced by another layer (patches,
emulation, registrations, threads: they judge it themselves, and are no longer the C function
when this layer is installed), allowed only on the request's own descriptors, or refused
inside a sandbox. A function a newer CPython adds is refused until it is listed. Host code
calls the original through one ContextVar read; the listed functions are not wrapped at all.
"""

from __future__ import annotations

import _imp
import _locale
import _socket
import _thread
import _tracemalloc
import atexit
import faulthandler
import gc
import locale  # noqa: F401 - its re-exports of _locale are patched too
import operator
import os
import signal
import socket
import sys
import threading
import time
import tracemalloc  # noqa: F401 - its re-exports of _tracemalloc are patched too
import types
from _thread import get_ident as _get_ident
from collections.abc import Callable
from typing import Any

from .context import Layer, Scope, active_scope, check_not_held, exact_fd, passthrough
from .errors import SandboxViolation, SystemCallRefused
from .network import SOCKET_INITS

Patch = tuple[Any, str, Any, Any]

#: Allowed as they are: pure computations, reads of the process's own settings, calls the
#: audit hook judges (files, processes, the environment, lookups), and those another layer
#: replaces on some interpreters.
ALLOWED: dict[str, frozenset[str]] = {
    "posix": frozenset("""
        WCOREDUMP WEXITSTATUS WIFCONTINUED WIFEXITED WIFSIGNALED WIFSTOPPED WSTOPSIG WTERMSIG
        _path_normpath _path_splitroot_ex access chdir chmod chown lchown confstr cpu_count
        process_cpu_count ctermid device_encoding fspath fstat fstatvfs fpathconf get_blocking
        get_inheritable get_terminal_size getcwd getcwdb getegid geteuid getgid getgrouplist
        getgroups getloadavg getlogin getpgid getpgrp getpid getppid getpriority getresgid
        getresuid getsid getuid getrandom urandom isatty listdir lstat stat link mkdir remove
        rename replace rmdir symlink unlink truncate utime getxattr listxattr setxattr
        removexattr major minor makedev open readlink scandir sched_get_priority_max
        sched_get_priority_min sched_getaffinity sched_getparam sched_getscheduler
        sched_rr_get_interval sched_yield strerror sysconf pathconf statvfs times uname
        waitstatus_to_exitcode execv execve fork forkpty kill killpg posix_spawn posix_spawnp
        system putenv unsetenv write writev pwrite pwritev sendfile fsync fdatasync
        posix_fallocate posix_fadvise lockf copy_file_range splice dup2 pipe pipe2 close
        closerange mkfifo mknod umask memfd_create setsid nice register_at_fork ttyname
        tcgetpgrp fchdir
        """.split()),
    "sys": frozenset("""
        audit addaudithook breakpointhook call_tracing displayhook exc_info exception
        excepthook exit get_asyncgen_hooks set_asyncgen_hooks
        get_coroutine_origin_tracking_depth set_coroutine_origin_tracking_depth
        get_int_max_str_digits getallocatedblocks getdefaultencoding getdlopenflags
        getfilesystemencodeerrors getfilesystemencoding getprofile getrecursionlimit
        getrefcount getsizeof getswitchinterval gettrace getunicodeinternedsize intern
        is_finalizing setprofile settrace unraisablehook _getframe _getframemodulename
        _current_frames _current_exceptions is_stack_trampoline_active _is_gil_enabled
        _is_interned _debugmallocstats __breakpointhook__ __displayhook__ __excepthook__
        __unraisablehook__ _get_cpu_count_config
        """.split()),
    "_signal": frozenset("""
        default_int_handler getsignal getitimer sigpending strsignal valid_signals
        pthread_sigmask siginterrupt signal alarm setitimer set_wakeup_fd pause sigwait
        sigwaitinfo sigtimedwait pthread_kill
        """.split()),
    "gc": frozenset("""
        collect get_count get_debug get_freeze_count get_stats get_threshold is_finalized
        is_tracked isenabled get_objects get_referents get_referrers
        """.split()),
    "_socket": frozenset("""
        getaddrinfo gethostbyname gethostbyname_ex gethostbyaddr getnameinfo gethostname
        getservbyname getservbyport getprotobyname getdefaulttimeout htonl htons ntohl ntohs
        inet_aton inet_ntoa inet_pton inet_ntop if_nameindex if_nametoindex if_indextoname
        CMSG_LEN CMSG_SPACE socketpair sethostname
        """.split()),
    "_thread": frozenset("""
        allocate_lock allocate exit_thread exit get_ident get_native_id _count _set_sentinel
        _excepthook daemon_threads_allowed _get_main_thread_ident _is_main_interpreter
        _make_thread_handle _shutdown start_new_thread start_new start_joinable_thread
        """.split()),
    "faulthandler": frozenset({"is_enabled"}),
    "_tracemalloc": frozenset("""
        is_tracing _get_traces _get_object_traceback get_traceback_limit
        get_tracemalloc_memory get_traced_memory
        """.split()),
    "_locale": frozenset("""
        localeconv strcoll strxfrm nl_langinfo gettext dgettext dcgettext getencoding
        _get_locale_encoding
        """.split()),
    "atexit": frozenset({"_ncallbacks", "register", "unregister"}),
    # not clock_settime(_ns): the machine's clock (with CAP_SYS_TIME); tzset reads the
    # process's own TZ (a request's os.environ is its own), so it changes nothing
    "time": frozenset("""
        asctime clock_getres clock_gettime clock_gettime_ns ctime get_clock_info gmtime
        localtime mktime monotonic monotonic_ns perf_counter perf_counter_ns process_time
        process_time_ns pthread_getcpuclockid sleep strftime strptime thread_time
        thread_time_ns time time_ns tzset
        """.split()),
    # the import system's own (the import gate judges what it loads; imports.py counts the
    # import lock a request takes and releases it when the request's thread leaves); not
    # _override_frozen_modules_for_tests, _override_multi_interp_extensions_check: the
    # whole process's import settings
    "_imp": frozenset("""
        extension_suffixes find_frozen get_frozen_object init_frozen is_builtin is_frozen
        is_frozen_package exec_builtin exec_dynamic lock_held source_hash _frozen_module_names
        acquire_lock release_lock create_builtin create_dynamic _fix_co_filename
        """.split()),
}

#: Allowed on the request's own descriptors only (and reading standard input): another
#: descriptor is the host's, or another request's socket.
OWN_DESCRIPTORS: dict[str, frozenset[str]] = {
    "posix": frozenset("""
        dup lseek read readv pread preadv set_blocking set_inheritable fchmod fchown
        ftruncate
        """.split()),
    "_socket": frozenset({"dup", "close"}),
}

#: Allowed when the policy allows processes (``allow_processes``): waiting for children.
#: Otherwise a request could collect the host's own child processes.
PROCESS_FUNCTIONS: dict[str, frozenset[str]] = {
    "posix": frozenset({"wait", "wait3", "wait4", "waitid", "waitpid", "pidfd_open"}),
}

#: Allowed in a process the request forked (the policy allows processes), which is the
#: request's own: ending it, and its exit callbacks (``multiprocessing``'s fork start clears
#: and runs them in the child on 3.12+). In the host's process they would end the host or
#: run or drop the host's exit callbacks.
CHILD_EXITS: dict[str, frozenset[str]] = {"posix": frozenset({"_exit", "abort"}),
                                          "atexit": frozenset({"_clear", "_run_exitfuncs"})}

#: Whether this process is a child a request forked (set in the child by the fork hook).
_FORKED_BY_REQUEST = [False]


def _after_fork_in_child() -> None:
    if active_scope() is not None:
        _FORKED_BY_REQUEST[0] = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _child_exit(original: Callable[..., Any], module: str, name: str) -> Callable[..., Any]:
    """``os._exit``/``os.abort``: refused in the host's process, the original in a child the
    request forked (``multiprocessing``'s fork start method ends its workers this way)."""
    refused = _refused(original, module, name)

    def child_exit(*args: Any, **kwargs: Any) -> Any:
        if _FORKED_BY_REQUEST[0]:
            return original(*args, **kwargs)
        return refused(*args, **kwargs)

    return _guarded(child_exit, original)


def _loaded(name: str) -> tuple[Any, ...]:
    module = sys.modules.get(name)
    return (module,) if module is not None else ()


#: Where the functions of each C module are reached by name (``os`` re-exports ``posix``,
#: ``socket`` re-exports ``_socket``, ``signal`` wraps ``_signal``).
_HOLDERS: dict[str, tuple[Any, ...]] = {
    "posix": (sys.modules[os.name], os),
    "sys": (sys,),
    "_signal": (sys.modules.get("_signal", signal), signal),
    "gc": (gc,),
    "_socket": (_socket, socket),
    "_thread": (_thread, threading),
    "faulthandler": (faulthandler,),
    "_tracemalloc": (_tracemalloc, *_loaded("tracemalloc")),
    "_locale": (_locale, *_loaded("locale")),
    "atexit": (atexit,),
    "time": (time,),
    "_imp": (_imp, *_loaded("imp")),
}

_UNLISTED_RULE = ("not on the list of {module} functions sandboxed code may call "
                  "(gae_sandbox.allowlist.ALLOWED): it acts on the whole process, or a newer "
                  "Python added it")
_DESCRIPTOR_RULE = ("only the request's own descriptors (those it opened itself) may be used "
                    "this way; the others are the host's or another request's")


def _refuse_unlisted(layer: Layer, what: str, module: str) -> SandboxViolation:
    return SystemCallRefused(what, _UNLISTED_RULE.format(module=module), None)


def _exact_int(value: Any) -> Any:
    """An ``int`` argument as the exact ``int`` C would read (``__index__`` run now, once);
    anything else as it is, for the C function's own TypeError."""
    if type(value) is int:
        return value
    try:
        return int.__index__(operator.index(value))
    except TypeError:
        return value


#: What may be done to standard input, which is not the request's: read it (as ``input()``
#: does). Its flags (``set_blocking``), offset and ``fcntl``/``ioctl`` are the host's, and
#: the open file is shared with the process that started the host.
_STDIN_READS = frozenset({"posix.read()", "posix.readv()"})


def check_descriptor(layer: Layer, scope: Scope, fd: Any,
                     what: str) -> SandboxViolation | None:
    if type(fd) is int and (fd in scope.opened_fds  # (context.exact_fd's)
                            or (fd == 0 and what in _STDIN_READS)):
        return None
    return SystemCallRefused(f"{what} on fd {fd!r}", _DESCRIPTOR_RULE, None)


def _constants(module: Any, names: str) -> frozenset[int]:
    return frozenset(getattr(module, name) for name in names.split() if hasattr(module, name))


def _fcntl_commands() -> tuple[frozenset[int], frozenset[int], int, int]:
    try:
        import fcntl
        import termios
    except ImportError:  # not POSIX
        return frozenset(), frozenset(), -1, 0
    commands = _constants(fcntl, """
        F_GETFD F_SETFD F_GETFL F_SETFL F_GETLK F_SETLK F_SETLKW F_OFD_GETLK F_OFD_SETLK
        F_OFD_SETLKW F_GETPIPE_SZ F_GET_SEALS F_ADD_SEALS""")
    requests = _constants(termios, "FIONREAD FIONBIO FIOCLEX FIONCLEX")
    return commands, requests, getattr(fcntl, "F_SETFL", -1), getattr(os, "O_ASYNC", 0)


#: ``fcntl.fcntl`` commands and ``fcntl.ioctl`` requests a request may use on its own
#: descriptors: locks, flags, sizes. Not on the list (refused): the signal-driven ones
#: (``F_SETOWN`` with ``F_SETSIG`` and ``O_ASYNC`` make the kernel signal any process of the
#: user's), leases and notifications, descriptor duplication, terminal and device control.
FCNTL_COMMANDS, IOCTL_REQUESTS, _F_SETFL, _O_ASYNC = _fcntl_commands()
_FCNTL_RULE = ("only locks, descriptor flags (without O_ASYNC) and sizes may be used; the "
               "other fcntl commands and ioctl requests reach past the request (signals to "
               "other processes, leases, devices)")


def check_descriptor_control(layer: Layer, scope: Scope, event: str,
                             args: tuple[Any, ...]) -> SandboxViolation | None:
    """The ``fcntl.fcntl``/``fcntl.ioctl`` audit events (fd, command, argument): the
    request's own descriptor, and a command of :data:`FCNTL_COMMANDS` /
    :data:`IOCTL_REQUESTS`."""
    fd = args[0] if args else None
    refused = check_descriptor(layer, scope, fd, f"{event}()")
    if refused is not None:
        return refused
    command = args[1] if len(args) > 1 else None
    argument = args[2] if len(args) > 2 else None
    listed = FCNTL_COMMANDS if event == "fcntl.fcntl" else IOCTL_REQUESTS
    if type(command) is int and command in listed and not (
            event == "fcntl.fcntl" and command == _F_SETFL
            and (type(argument) is not int or argument & _O_ASYNC)):
        return None
    return SystemCallRefused(f"{event}() command {command!r} on fd {fd!r}", _FCNTL_RULE, None)


def _guarded(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """``patches._guarded``: behind the C accelerator's Guard, host code calls ``original``
    with no Python frame (every wrapper here only calls it when no sandbox is active)."""
    from .patches import _guarded as guarded

    return guarded(wrapper, original)


def _refused(original: Callable[..., Any], module: str, name: str) -> Callable[..., Any]:
    what = f"{module.lstrip('_')}.{name}()"

    def refused(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            scope.judge(_refuse_unlisted, what, module.lstrip("_"))
            return passthrough(original, *args, **kwargs)
        return original(*args, **kwargs)

    return _guarded(refused, original)


def _own_descriptor(original: Callable[..., Any], module: str,
                    name: str) -> Callable[..., Any]:
    what = f"{module.lstrip('_')}.{name}()"

    def on_descriptor(fd: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            exact = exact_fd(fd)  # judged and used: the same int (None: refused)
            scope.judge(check_descriptor, scope, exact, what)
            if name == "close":
                scope.judge(check_not_held, scope, exact, what)
            if exact is not None:
                fd = exact
            result = passthrough(original, fd, *args, **kwargs)
            if name == "dup" and type(result) is int:
                scope.opened_fds.add(result)  # the copy is the request's own
            elif name == "close" and type(fd) is int:
                scope.opened_fds.discard(fd)
            return result
        return original(fd, *args, **kwargs)

    return _guarded(on_descriptor, original)


def _process(original: Callable[..., Any], what: str) -> Callable[..., Any]:
    from .patches import _refuse_process

    def process(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            pid = args[0] if args else kwargs.get("pid")
            if type(pid) is int and pid in scope.extras.get("children", ()):
                return original(*args, **kwargs)  # a process the request started
            scope.judge(_refuse_process, what)
            return passthrough(original, *args, **kwargs)
        return original(*args, **kwargs)

    return _guarded(process, original)


def build_patches() -> list[Patch]:
    """Every C function of the listed modules that is still the C function now (after the
    other layers installed their replacements) and is not allowed as it is."""
    patches: list[Patch] = []
    for module, holders in _HOLDERS.items():
        allowed = ALLOWED[module]
        own = OWN_DESCRIPTORS.get(module, frozenset())
        source = holders[0]
        for name, original in sorted(vars(source).items()):
            if not isinstance(original, types.BuiltinFunctionType) or name in allowed:
                continue
            if name in own:
                replacement = _own_descriptor(original, module, name)
            elif name in PROCESS_FUNCTIONS.get(module, ()):
                replacement = _process(original, f"{module.lstrip('_')}.{name}()")
            elif name in CHILD_EXITS.get(module, ()):
                replacement = _child_exit(original, module, name)
            else:
                replacement = _refused(original, module, name)
            for holder in holders:
                if getattr(holder, name, None) is original:
                    patches.append((holder, name, original, replacement))
    patches.extend(_socket_adoption())
    patches.extend(_descriptor_adoption())
    return patches


def _socket_adoption() -> list[Patch]:
    """``socket.socket(fileno=fd)`` adopts a descriptor: only the request's own. A socket the
    request makes is its own (``dup``, ``close`` and ``fromfd`` of it are allowed). The C
    initializer underneath (``_socket.socket.__init__``, an immutable type's, reachable
    through the class's ``__mro__``) adopts any descriptor too: its ``socket.__new__`` audit
    event is refused unless it comes from this ``__init__`` for this very socket
    (``network.SOCKET_INITS``)."""
    original = socket.socket.__init__

    def __init__(self: socket.socket, family: Any = -1, type: Any = -1,  # noqa: A002
                 proto: Any = -1, fileno: Any = None) -> None:
        scope = active_scope()
        if scope is None:
            original(self, family, type, proto, fileno)
            return
        previous = None
        if fileno is not None:
            exact = exact_fd(fileno)  # judged and used: the same int (None: refused)
            scope.judge(check_descriptor, scope, exact, "socket.socket(fileno=...)")
            if exact is not None:
                fileno = exact
                previous = scope.opened_fds.holder(exact)
                if previous is not None and not isinstance(previous, _socket.socket):
                    scope.judge(check_not_held, scope, exact, "socket.socket(fileno=...)")
        # the other arguments as exact ints too, read now: no app code may run (an
        # __index__ the C parser would call) while the initializer is expected below
        family, type, proto = (_exact_int(family), _exact_int(type),  # noqa: A001
                               _exact_int(proto))
        thread = _get_ident()
        SOCKET_INITS[thread] = self  # the C initializer's audit event expects this socket
        try:
            original(self, family, type, proto, fileno)
        finally:
            SOCKET_INITS.pop(thread, None)
        if previous is not None and previous is not self:
            # (ssl.SSLSocket's way: the new socket takes the number over, the old one then
            # detaches): the old socket lets go of it now, so that it can never act on the
            # number once the new one has closed it and the host reuses it
            _socket_detach(previous)
        if scope is not None:
            try:  # the request's own while this socket holds it
                scope.opened_fds.add(_socket_fileno(self), self, _socket_fileno)
            except OSError:
                pass

    __init__.__doc__ = original.__doc__
    detach = socket.socket.detach

    def socket_detach(self: socket.socket) -> Any:
        """``detach()`` gives the descriptor up without closing it: it is the request's by
        its number again (``os.close``, ``socket(fileno=)``)."""
        fd = detach(self)
        scope = active_scope()
        if scope is not None:
            scope.opened_fds.let_go(fd, self)
        return fd

    pair = _socket.socketpair

    def socketpair(*args: Any, **kwargs: Any) -> Any:
        """The two sockets are the request's own: ``socket.socketpair`` adopts their
        descriptors next (asyncio's event loop makes one)."""
        made = pair(*args, **kwargs)
        scope = active_scope()
        if scope is not None:
            for sock in made:
                try:
                    scope.opened_fds.add(sock.fileno())
                except OSError:
                    pass
        return made

    return [(socket.socket, "__init__", original, _guarded(__init__, original)),
            (socket.socket, "detach", detach, _guarded(socket_detach, detach)),
            (_socket, "socketpair", pair, _guarded(socketpair, pair))]


_socket_fileno = _socket.socket.fileno
_socket_detach = _socket.socket.detach

#: The event-loop types whose ``fromfd`` adopts a descriptor given as a number.
_POLLER_TYPES = ("epoll", "kqueue", "devpoll")


def _descriptor_adoption() -> list[Patch]:
    """``select.epoll.fromfd(fd)`` (and ``kqueue``/``devpoll`` where they exist) adopts any
    descriptor, with no audit event: the host's event loop (the server's) could be changed
    and closed by the request. Inside a sandbox it adopts only the request's own
    descriptors (``Scope.opened_fds``, known by the open file), as ``socket.fromfd`` and
    ``socket.socket(fileno=)`` do; an event loop the request makes (``select.epoll()``) is its
    own, and one it closes (``close()``, ``with``) is no longer. These types are mutable, so
    the replacements sit on the C types themselves: a subclass, or the type reached through
    an instance (``type(loop)``), gets them too. (``socket.fromfd`` goes through
    ``_socket.dup``, ``os.fdopen`` and ``open(fd)`` through the ``open`` audit event and
    ``mmap`` is refused: those are covered elsewhere.)"""
    import select

    patches: list[Patch] = []
    for name in _POLLER_TYPES:
        kind = getattr(select, name, None)
        if not isinstance(kind, type) or "fromfd" not in vars(kind):
            continue
        raw = vars(kind)["fromfd"]
        what = f"select.{name}.fromfd()"
        try:  # a type a Python build made immutable keeps its fromfd: not adopted then
            type.__setattr__(kind, "fromfd", raw)
        except TypeError:
            continue
        patches.append((kind, "fromfd", raw, classmethod(_adopting(raw, what))))
        patches.append((kind, "__init__", vars(kind).get("__init__", object.__init__),
                        _poller_made(name, vars(kind)["fileno"])))
        close = vars(kind).get("close")
        if close is not None:
            patches.append((kind, "close", close, _poller_closed(close)))
    return patches


def _adopting(raw: Any, what: str) -> Callable[..., Any]:
    """``fromfd`` (``raw``, the class method's descriptor): the request's own descriptors
    only."""
    from .patches import _guarded

    def fromfd(cls: Any, fd: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            scope.judge(_check_adopted, scope, fd, what)
            return passthrough(raw, cls, fd, *args, **kwargs)
        return raw(cls, fd, *args, **kwargs)

    return _guarded(fromfd, raw)


def _check_adopted(layer: Layer, scope: Scope, fd: Any, what: str) -> SandboxViolation | None:
    if type(fd) is int and fd in scope.opened_fds:
        return None
    return SystemCallRefused(f"{what} of fd {fd!r}", _DESCRIPTOR_RULE, None)


def _poller_made(name: str, fileno: Any) -> Callable[..., None]:
    """``__init__`` of an event loop: one made in a request is the request's own while the
    object holds it (``fileno``: the type's C method). (A plain function: the type's
    ``__init__`` slot calls it, with ``self``, for every new object.)"""
    get = active_scope

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        scope = get()
        if scope is not None:
            try:
                scope.opened_fds.add(fileno(self), self, fileno)
            except (OSError, ValueError):
                pass

    __init__.__qualname__ = f"{name}.__init__"
    return __init__


def _poller_closed(close: Any) -> Callable[..., Any]:
    """``close`` of an event loop: a descriptor the request closed is no longer its own
    (event loops share one anonymous inode, so its number alone would still match)."""
    get = active_scope

    def closed(self: Any) -> Any:
        scope = get()
        if scope is None:
            return close(self)
        try:
            fd = self.fileno()
        except (OSError, ValueError):
            fd = None
        result = close(self)
        if fd is not None:
            scope.opened_fds.discard(fd)
        return result

    return _guarded(closed, close)
