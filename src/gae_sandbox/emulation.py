"""What the runtime answered instead of the real process: the working directory, the locale,
process ids and ``uname``, ``os.access``, stubs for process-wide calls.

The python27 runtime ran each app in a process of its own, so it could answer these from fixed
values or stubs. Here the process is the host's: each replacement reads the active scope (one
ContextVar read for host code) and answers the request from the scope, never from or to the
process. The working directory, the locale, the ids and the priority of the process stay the
host's, whatever a request does.

- **Working directory** (``Policy.working_directory``): ``Scope.cwd``, the app root by default.
  ``os.getcwd`` answers it, ``os.chdir`` moves it (to a folder the request may read), and
  relative paths are made absolute against it before they are judged and used (``open``, the
  ``os`` path functions, ``pathlib``, ``os.path.abspath``/``realpath`` through ``os.getcwd``).
  Errors and file objects keep the path as the app spelt it.
- **Locale**: ``''``, ``None``, ``'C'`` and ``'POSIX'`` answer ``'C'``; any other locale is
  refused (``locale.Error``). The process's locale is never set.
- **Ids, uname**: ``os.getpid()`` and the other ids answer -1 (the real ones where a
  ``kill`` would go through), ``os.uname()`` a fixed tuple.
- **Stubs**: ``setuid``, ``setgid``, ``setgroups``, ``nice``, ``setpriority``, ``chroot``, ...
  raise ``OSError(ENOSYS)``; report mode records them and does not carry them out.
- ``os.access`` answers ``False`` for a path the request may not read and for ``W_OK`` and
  ``X_OK``, without raising; ``tempfile.gettempdir()`` is refused in read-only mode.
- **The garbage collector**: ``gc.disable``/``enable`` switch the request's view
  (``gc.isenabled``), never the process's collector.
"""

from __future__ import annotations

import builtins
import errno
import io
import locale
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from .context import Layer, Scope, active_scope, check_not_held, exact_fd
from .errors import (
    FunctionNotImplementedRefused,
    LocaleRefused,
    SandboxViolation,
    SystemCallRefused,
)
from .filesystem import (
    ADOPTING,
    check_read,
    check_resolved,
    checked_opener,
    hand_back,
    hand_over,
    in_scope_cwd,
    open_file,
    stable_path,
)
from .patches import (
    Patch,
    _check_path_object,
    _guarded,
    _open_guarded,
    _refuse_tempfile,
    _refused_call,
    _respell,
)
from .paths import realpath

#: ``os``'s C module (``posix``), which holds the same functions.
posix_module: Any = sys.modules.get(os.name)

# --- the working directory ------------------------------------------------------------------


def _getcwd(original: Callable[[], Any], encode: bool) -> Callable[[], Any]:
    get = active_scope

    def getcwd() -> Any:
        scope = get()
        if scope is None or scope.cwd is None:
            return original()
        return os.fsencode(scope.cwd) if encode else scope.cwd

    return _guarded(getcwd, original)


_CHDIR_FD_RULE = ("a request changes its working directory by path only (a descriptor's "
                  "folder is not checked)")


def _chdir(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``os.chdir``: move the request's working directory, never the process's. The folder
    must exist and be one the request may read (in memory mode, one of its in-memory
    filesystem); a descriptor (``fchdir``'s way) is refused."""
    get = active_scope

    def chdir(path: Any) -> None:
        scope = get()
        if scope is None or path is None:
            return original(path)  # (None: TypeError, as outside)
        if isinstance(path, int):
            _refuse_always(scope, SystemCallRefused(f"os.chdir(fd {path})", _CHDIR_FD_RULE,
                                                    None))
        value = stable_path(path)
        if value is None:
            scope.judge(_check_path_object, path)
            value = stable_path(os.fspath(path))  # report mode: let through, emulated
            if value is None:
                raise TypeError(f"chdir: path should be string, bytes or os.PathLike, "
                                f"not {type(path).__name__}")
        used = in_scope_cwd(scope, value)
        try:
            info = os.stat(used)  # the installed os.stat: judged, or the memory filesystem
        except OSError as error:
            _respell(error, value, used)
            raise
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        folder = _resolved_folder(scope, os.fsdecode(used))
        if scope.memory is None:
            # the folder stored is the one judged: a link swapped after the stat above must
            # not leave the request's working directory outside what it may read
            scope.judge(check_resolved, folder, folder)
        scope.cwd = folder
        return None

    return _guarded(chdir, original)


def _fchdir(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    get = active_scope

    def fchdir(fd: Any) -> None:
        scope = get()
        if scope is None:
            return original(fd)
        _refuse_always(scope, SystemCallRefused(f"os.fchdir({fd!r})", _CHDIR_FD_RULE, None))
        return None

    return _guarded(fchdir, original)


def _held_by_file(scope: Scope, fd: int, handle: Any) -> None:
    """``open(fd)`` (``os.fdopen``): the file object now holds the request's descriptor (and
    closes it, unseen, when it is closed or collected, unless ``closefd=False``): the number
    is the request's while the object holds it (context.OwnedFds)."""
    raw = handle
    if type(raw) is io.TextIOWrapper:
        raw = raw.buffer
    if type(raw) in (io.BufferedReader, io.BufferedWriter, io.BufferedRandom):
        raw = raw.raw
    if type(raw) is io.FileIO and fd in scope.opened_fds:
        scope.opened_fds.add(fd, raw, _fileio_fileno, closes=bool(raw.closefd))


_fileio_fileno = io.FileIO.fileno


def _resolved_folder(scope: Scope, folder: str) -> str:
    """``folder`` (absolute, or relative to the process's working directory) as ``getcwd``
    answers it: absolute, symlinks resolved, in the filesystem the request sees."""
    memory = scope.memory
    if memory is not None:
        return str(memory.run(scope, lambda fs, fake_os, fake_open: fs.resolve_path(folder)))
    return realpath(folder) or os.path.normpath(folder)


def _open(original: Callable[..., Any]) -> Callable[..., Any]:
    """``builtins.open``/``io.open`` (and the references ``tokenize`` and ``tarfile`` keep): a
    relative path opens the file in the request's working directory; the file object and
    errors keep the name the app gave. A file opened for reading is opened race-free
    (``filesystem.open_file``: the kernel checks and opens in one call); the ``open`` audit
    event judges what else is opened."""
    get = active_scope

    def open(file: Any, mode: str = "r", buffering: int = -1,  # noqa: A001
             encoding: str | None = None, errors: str | None = None,
             newline: str | None = None, closefd: bool = True, opener: Any = None) -> Any:
        scope = get()
        if scope is None:
            return original(file, mode, buffering, encoding, errors, newline, closefd, opener)
        if isinstance(file, int):  # judged by the open audit event
            fd = exact_fd(file)
            if fd is None:
                return original(file, mode, buffering, encoding, errors, newline, closefd,
                                opener)
            scope.judge(check_not_held, scope, fd, "open()")
            handed = hand_over(scope, ADOPTING, fd)
            try:
                handle = original(fd, mode, buffering, encoding, errors, newline, closefd,
                                  opener)
            finally:
                hand_back(handed)
            _held_by_file(scope, fd, handle)
            return handle
        if opener is not None:  # FileIO adopts whatever it returns: judged (filesystem.py)
            opener = checked_opener(scope, opener)
        if closefd is True and opener is None and scope.memory is None:
            value = file if type(file) is str else stable_path(file)
            if value is not None:
                handle = open_file(scope, value, mode, buffering, encoding, errors, newline,
                                   original)
                if handle is not None:
                    return handle
        if scope.cwd is None:
            return original(file, mode, buffering, encoding, errors, newline, closefd, opener)
        value = stable_path(file)
        used = value if value is None else in_scope_cwd(scope, value)
        if used is value:
            return original(file, mode, buffering, encoding, errors, newline, closefd, opener)
        try:
            handle = original(used, mode, buffering, encoding, errors, newline, closefd,
                              opener)
        except OSError as error:
            _respell(error, file, used)
            raise
        raw = getattr(handle, "buffer", handle)  # text -> buffered -> raw FileIO
        raw = getattr(raw, "raw", raw)
        try:
            raw.name = file  # as the process's own working directory would have named it
        except (AttributeError, TypeError):
            pass
        return handle

    return _open_guarded(open, original)


#: ``os`` functions that change the filesystem, and which of their arguments are paths: made
#: absolute against the request's working directory (read-only mode refuses them anyway,
#: naming the file; report mode lets them through, where the app would have made them).
_WRITE_PATHS: dict[str, tuple[int, ...]] = {
    "mkdir": (0,), "rmdir": (0,), "remove": (0,), "unlink": (0,), "rename": (0, 1),
    "replace": (0, 1), "link": (0, 1), "symlink": (1,), "chmod": (0,), "lchmod": (0,),
    "chown": (0,), "lchown": (0,), "chflags": (0,), "lchflags": (0,), "utime": (0,),
    "truncate": (0,), "setxattr": (0,), "removexattr": (0,),
}
_WRITE_KEYWORDS = {0: ("path", "src"), 1: ("dst",)}


def _relative_writer(original: Callable[..., Any], positions: tuple[int, ...],
                     name: str) -> Callable[..., Any]:
    get = active_scope

    def write(*args: Any, **kwargs: Any) -> Any:
        scope = get()
        if scope is None or scope.cwd is None:
            return original(*args, **kwargs)
        changed = list(args)
        spelling: dict[int, tuple[Any, Any]] = {}
        for position in positions:
            keywords = _WRITE_KEYWORDS[position]
            if position < len(changed):
                value = stable_path(changed[position])
            else:
                key = next((k for k in keywords if k in kwargs), None)
                value = stable_path(kwargs[key]) if key is not None else None
            if value is None or _relative_to_fd(kwargs, position, name):
                continue
            used = in_scope_cwd(scope, value)
            spelling[position] = (value, used)
            if position < len(changed):
                changed[position] = used
            else:
                kwargs = {**kwargs, key: used}
        try:
            return original(*changed, **kwargs)
        except OSError as error:
            for spelt, used in spelling.values():
                _respell(error, spelt, used)
                if getattr(error, "filename2", None) is used:
                    error.filename2 = spelt
            raise

    return _guarded(write, original)


def _relative_to_fd(kwargs: dict[str, Any], position: int, name: str) -> bool:
    if name in ("rename", "replace", "link", "symlink"):
        key = "src_dir_fd" if position == 0 and name != "symlink" else "dst_dir_fd"
        return kwargs.get(key) is not None or (name == "symlink" and
                                               kwargs.get("dir_fd") is not None)
    return kwargs.get("dir_fd") is not None


class _Forward:
    """Stands in for a reference to an ``os`` function a module captured when it was
    imported: calls the one installed now (read checks, the request's working directory).
    Not a descriptor, so a class attribute is not bound as a method."""

    __slots__ = ("owner", "name")

    def __init__(self, owner: Any, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.owner, self.name)(*args, **kwargs)


def _captured_patches() -> list[Patch]:
    """References to ``os`` functions taken at import time: Python 3.10's pathlib
    (``_NormalAccessor``) and 3.13's ``glob._StringGlobber`` (``Path.glob``)."""
    import glob
    import pathlib

    patches: list[Patch] = []
    accessor = getattr(pathlib, "_NormalAccessor", None)
    if accessor is not None:
        for name, current in list(vars(accessor).items()):
            if current is getattr(os, name, None):
                patches.append((accessor, name, current, _Forward(os, name)))
            elif name == "open" and current is io.open:
                patches.append((accessor, name, current, _Forward(io, "open")))
    globber = getattr(glob, "_StringGlobber", None)
    if globber is not None:
        for name in ("lstat", "scandir"):
            current = vars(globber).get(name)
            if getattr(current, "__func__", None) is getattr(os, name):
                patches.append((globber, name, current, _Forward(os, name)))
    return patches


# --- os.access --------------------------------------------------------------------------------


def _access(original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.access``: ``False`` for a path the request may not read, for ``W_OK`` (the
    filesystem is read-only) and for ``X_OK`` unless the policy runs processes, never an
    error; answered by every enforcing layer (report mode answers as the host would)."""
    get = active_scope

    def access(path: Any, mode: Any, *, dir_fd: Any = None, effective_ids: bool = False,
               follow_symlinks: bool = True) -> bool:
        scope = get()
        if scope is None or path is None or isinstance(path, int) or not isinstance(mode, int):
            # host code, or arguments the call refuses itself (TypeError) before any access
            return original(path, mode, dir_fd=dir_fd, effective_ids=effective_ids,
                            follow_symlinks=follow_symlinks)
        enforcing = [layer for layer in scope.layers if layer.enforce]
        value = stable_path(path)
        if value is None:
            if enforcing:
                return False  # a path object the sandbox does not accept
            return original(path, mode, dir_fd=dir_fd, effective_ids=effective_ids,
                            follow_symlinks=follow_symlinks)
        if dir_fd is None:
            value = in_scope_cwd(scope, value)
        elif enforcing and not os.fsdecode(value).startswith("/"):
            return False  # relative to a descriptor: not checked by the sandbox
        bits = int.__index__(mode)
        if enforcing and (bits & os.W_OK or any(
                check_read(layer, value) is not None
                or bits & os.X_OK and not layer.policy.allow_processes
                for layer in enforcing)):
            return False
        return original(value, bits, dir_fd=dir_fd, effective_ids=effective_ids,
                        follow_symlinks=follow_symlinks)

    return _guarded(access, original)


# --- locale -----------------------------------------------------------------------------------

_C_LOCALES = ("", "C", "POSIX")
_LOCALE_RULE = ("the locale is process-wide (the host's too); the runtime offered only the C "
                "locale ('', None, 'C' and 'POSIX' select it)")
_CATEGORIES = {getattr(locale, name): name for name in (
    "LC_CTYPE", "LC_COLLATE", "LC_TIME", "LC_MONETARY", "LC_NUMERIC", "LC_MESSAGES", "LC_ALL")
    if hasattr(locale, name)}


def _refuse_locale(layer: Layer, what: str) -> SandboxViolation:
    return LocaleRefused(what, _LOCALE_RULE, None)


def _setlocale(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_locale.setlocale`` (which ``locale.setlocale``, ``getlocale`` and ``resetlocale``
    call): the request's locale is C, and the process's is never set."""
    get = active_scope

    def setlocale(category: Any, locale: Any = None) -> Any:
        scope = get()
        if scope is None:
            return original(category, locale)
        original(category)  # a query: checks the category (TypeError, locale.Error), no change
        if locale is not None and not isinstance(locale, str):
            raise TypeError("setlocale() argument 2 must be str or None, not "
                            f"{type(locale).__name__}")
        name = None if locale is None else str.__add__(locale, "")
        if name is None or name in _C_LOCALES:
            return "C"
        what = f"locale.setlocale({_CATEGORIES.get(category, category)}, {name!r})"
        scope.judge(_refuse_locale, what)
        return "C"  # report mode: recorded; the request's locale stays C

    return _guarded(setlocale, original)


# --- ids, uname, stubs ------------------------------------------------------------------------

#: The ids the runtime answered -1 for.
FAKE_IDS = ("getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getpgrp")

#: ``os.uname()`` in a request. The runtime answered ``('Linux', '', '', '', '')``; empty
#: fields broke libraries that parse them, so these are plausible, fixed values, with the real
#: machine (code picks binaries and wheels by it). The host's own name is not the app's.
FAKE_UNAME = os.uname_result(("Linux", "localhost", "4.4.0", "#1 SMP",
                              str.__add__(os.uname().machine, "")))


#: Scope.extras: the request turned the collector off (``gc.disable``) and not back on.
GC_DISABLED = "gae_sandbox.gc_disabled"


def _gc_switch(original: Callable[[], Any], on: bool | None) -> Callable[[], Any]:
    """``gc.disable``/``gc.enable`` (``on``) and ``gc.isenabled`` (``None``): the collector is
    the whole process's, so a request switches only its own view of it (``timeit`` turns it
    off around its loop and back on); the host's collector keeps running."""
    get = active_scope

    def switch() -> Any:
        scope = get()
        if scope is None:
            return original()
        if on is None:
            return original() and not scope.extras.get(GC_DISABLED, False)
        if on:
            scope.extras.pop(GC_DISABLED, None)
        else:
            scope.extras[GC_DISABLED] = True
        return None

    return _guarded(switch, original)


def _minus_one(original: Callable[[], Any]) -> Callable[[], Any]:
    """-1 for a request, as on the runtime, where signalling a process is refused; the real
    id where a ``kill`` would go through (``allow_processes``, the python3 preset, or report
    mode): there ``os.kill(os.getpid(), ...)`` must not become ``os.kill(-1, ...)``, which
    signals every process the user may signal."""
    get = active_scope

    def fake_id() -> Any:
        scope = get()
        if scope is None or not any(layer.enforce and not layer.policy.allow_processes
                                    for layer in scope.layers):
            return original()
        return -1

    return _guarded(fake_id, original)


def _uname(original: Callable[[], Any]) -> Callable[[], Any]:
    get = active_scope

    def uname() -> Any:
        return original() if get() is None else FAKE_UNAME

    return _guarded(uname, original)


def _platform_uname(original: Callable[[], Any]) -> Callable[[], Any]:
    """``platform.uname()`` caches its first answer for the process: the host's is cached
    when the sandbox is installed, and a request gets its own, never cached."""
    import platform

    get = active_scope

    def uname() -> Any:
        if get() is None:
            return original()
        result = platform.uname_result(*FAKE_UNAME)
        try:
            vars(result)["processor"] = ""  # asking for it would run `uname -p`
        except TypeError:
            pass
        return result

    return _guarded(uname, original)


#: Process-wide calls the runtime replaced by stubs raising ``OSError(ENOSYS)``: who the
#: process runs as, its group and session, priority, CPUs, root and namespaces are the host's.
STUBS: dict[str, str] = {
    **{name: "the process's user and groups are the host's" for name in (
        "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid",
        "setresgid", "setgroups", "initgroups")},
    **{name: "the process group is the host's" for name in ("setpgid", "setpgrp")},
    **{name: "the process priority and scheduling are the host's" for name in (
        "nice", "setpriority", "sched_setaffinity", "sched_setparam", "sched_setscheduler")},
    "chroot": "the process's root folder is the host's",
    "unshare": "the process's namespaces are the host's",
    "setns": "the process's namespaces are the host's",
}


def _refuse_stub(layer: Layer, what: str, rule: str) -> SandboxViolation:
    return FunctionNotImplementedRefused(what, rule, None)


def _stub(original: Callable[..., Any], name: str, rule: str) -> Callable[..., Any]:
    get = active_scope

    def stub(*args: Any, **kwargs: Any) -> Any:
        scope = get()
        if scope is None:
            return original(*args, **kwargs)
        scope.judge(_refuse_stub, f"os.{name}()", rule)
        # report mode: recorded, and not carried out (it would change the host's process)
        return original(0) if name == "nice" else None  # nice(0) only reads the niceness

    return _guarded(stub, original)


def _refuse_always(scope: Scope, refusal: SandboxViolation) -> None:
    """Record ``refusal`` and raise it in report mode too (what it refuses cannot be let
    through without changing the host's process)."""
    scope.judge(lambda layer: refusal)
    raise refusal


# --- the patch table --------------------------------------------------------------------------


def build_patches() -> list[Patch]:
    """Every (owner, attribute, original, replacement) this module installs."""
    import _io
    import platform

    patches: list[Patch] = []

    def add(owner: Any, attribute: str, make: Callable[[Any], Any]) -> Any:
        original = getattr(owner, attribute, None)
        if original is None:
            return None
        replacement = make(original)
        patches.append((owner, attribute, original, replacement))
        return replacement

    add(os, "getcwd", lambda original: _getcwd(original, False))
    add(os, "getcwdb", lambda original: _getcwd(original, True))
    add(os, "chdir", _chdir)
    add(os, "fchdir", _fchdir)
    opened = add(builtins, "open", _open)
    for owner, attribute in ((io, "open"), (_io, "open"), (sys.modules.get("tokenize"),
                                                           "_builtin_open"),
                             (sys.modules.get("tarfile"), "bltn_open")):
        if owner is not None and getattr(owner, attribute, None) is builtins.open:
            patches.append((owner, attribute, builtins.open, opened))
    for name, positions in _WRITE_PATHS.items():
        add(os, name, lambda original, name=name, positions=positions: _relative_writer(
            original, positions, name))
    patches += _captured_patches()
    add(os, "access", _access)

    import gc

    add(gc, "disable", lambda original: _gc_switch(original, False))
    add(gc, "enable", lambda original: _gc_switch(original, True))
    add(gc, "isenabled", lambda original: _gc_switch(original, None))

    add(locale, "_setlocale", _setlocale)
    locale_module = sys.modules.get("_locale")
    if locale_module is not None:
        add(locale_module, "setlocale", _setlocale)

    process_wide = [add(os, name, _minus_one) for name in FAKE_IDS]
    process_wide.append(add(os, "uname", _uname))
    process_wide += [add(os, name, lambda original, name=name, rule=rule: _stub(
        original, name, rule)) for name, rule in STUBS.items()]
    platform.uname()  # cached now, as host code, with the host's values
    add(platform, "uname", _platform_uname)

    for name in ("gettempdir", "gettempdirb"):  # the runtime's tempfile had neither
        add(tempfile, name, lambda original, name=name: _refused_call(
            original, _refuse_tempfile, f"tempfile.{name}()"))

    # sys.modules["posix"] holds the same functions: the same answers there
    if posix_module is not None:
        for owner, attribute, original, replacement in list(patches):
            if (owner is os and replacement in process_wide
                    and getattr(posix_module, attribute, None) is original):
                patches.append((posix_module, attribute, original, replacement))
    return patches
