"""Patched module functions for what the audit hook cannot see or cannot say well.

Each replacement starts with one ContextVar read and calls the original for host code. The
audit hook (``audit.py``) covers the audited operations, also through references captured
before install; the patches cover the rest: ``os.stat`` and friends (no audit event),
fd-level writes, ``tempfile``'s file makers, ``socket.listen``, name lookups, signal handlers
and ``_posixsubprocess.fork_exec`` (spawns a process without an audit event).

With the optional C accelerator (``_speedups.c``; see :data:`SPEEDUPS`) each replacement made
here sits behind a C ``Guard`` that makes the host-code call itself (:func:`_guarded`).
"""

from __future__ import annotations

import io
import operator
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import types
import warnings
from _thread import get_ident as _get_ident
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

from . import context, filesystem
from .context import _ACTIVE, Layer, Scope, active_scope, check_not_held, exact_fd, passthrough
from .deadline import signal_mask
from .errors import (
    FileReadRefused,
    NotAvailableRefused,
    ProcessRefused,
    SandboxViolation,
    SystemCallRefused,
    TempfileRefused,
)
from .filesystem import (
    WRITE_FLAGS,
    ScopedDirEntry,
    check_metadata,
    check_read,
    check_write,
    describe,
    in_scope_cwd,
    open_for_reading,
    resolve,
    resolve_walk,
    stable_path,
)
from .network import check_lookup, check_server, exact_host

Patch = tuple[Any, str, Any, Any]  # (owner, attribute, original, replacement)


# --- the optional C accelerator -------------------------------------------------------------

#: The C accelerator module (loaded by context.py), or ``None``: the pure-Python code (the
#: same checks) is used. Tests swap it here to build either kind of wrapper.
SPEEDUPS = context.SPEEDUPS
_PURE_PYTHON_REASON = context.PURE_PYTHON_REASON


def accelerator() -> str:
    """Which implementation of the host-code fast path is active, for ``--version``."""
    if SPEEDUPS is not None:
        return "C"
    return f"pure Python ({_PURE_PYTHON_REASON})"


# --- checks ---------------------------------------------------------------------------------


def _refuse_system(layer: Layer, what: str, rule: str) -> SandboxViolation:
    return SystemCallRefused(what, rule, None)


def _refuse_process(layer: Layer, what: str) -> SandboxViolation | None:
    if layer.policy.allow_processes:
        return None
    return ProcessRefused(what, "sandboxed code may not start or signal processes",
                          "allow_processes")


def _refuse_tempfile(layer: Layer, what: str) -> SandboxViolation | None:
    if layer.policy.filesystem != "readonly":
        return None  # made in the request's in-memory filesystem (memoryfs.py)
    return TempfileRefused(
        what, "the runtime's tempfile offers only TemporaryFile (in memory)", "filesystem"
    )


def _refuse_signal(layer: Layer, what: str) -> SandboxViolation:
    return NotAvailableRefused(
        what, "signal handlers and timers are process-wide; the runtime removed them", None
    )


#: Scope.extras: thread ident -> that thread's signal mask before the request first changed
#: it (``signal.pthread_sigmask``), put back when the thread leaves the request.
SIGNAL_MASKS = "gae_sandbox.signal_masks"


def _thread_signal_mask(original: Callable[..., Any]) -> Callable[..., Any]:
    """``signal.pthread_sigmask``: the mask is the calling thread's own (``multiprocessing``
    blocks signals around starting a process), so a request may change it; what it was is
    kept and put back when the thread leaves the request (:func:`restore_signal_mask`)."""
    get = active_scope

    def pthread_sigmask(how: Any, mask: Any) -> Any:
        scope = get()
        if scope is None:
            return original(how, mask)
        old = original(how, mask)
        masks = scope.extras.get(SIGNAL_MASKS)
        if masks is None:
            masks = scope.extras[SIGNAL_MASKS] = {}
        masks.setdefault(_get_ident(), frozenset(int(number) for number in old))
        return old

    return _guarded(pthread_sigmask, original)


def restore_signal_mask(scope: Scope, ident: int) -> None:
    """Thread ``ident`` leaves ``scope``: its signal mask as it was before the request."""
    masks = scope.extras.get(SIGNAL_MASKS)
    old = masks.pop(ident, None) if masks else None
    if old is not None and signal_mask is not None:
        signal_mask(signal.SIG_SETMASK, old)


def _fd_write_allowed(scope: Scope, fd: Any) -> bool:
    # stdout and stderr are the app's log, as on the runtime; its own pipes are its own.
    return fd in (1, 2) or fd in scope.opened_fds


def _check_fd_write(layer: Layer, scope: Scope, fd: Any, what: str) -> SandboxViolation | None:
    if _fd_write_allowed(scope, fd):
        return None
    return _refuse_system(
        layer, f"{what} to fd {fd}", "file descriptors the host holds are not the app's to write"
    )


def _check_fd_close(layer: Layer, scope: Scope, fd: Any) -> SandboxViolation | None:
    if fd in scope.opened_fds:
        return check_not_held(layer, scope, fd, "os.close()")
    return _refuse_system(
        layer, f"os.close(fd {fd})", "only file descriptors the request opened may be closed"
    )


# --- replacements ---------------------------------------------------------------------------


def _check_path_object(layer: Layer, path: Any) -> SandboxViolation | None:
    return FileReadRefused(
        describe(path), "only str, bytes and pathlib paths are accepted inside the sandbox "
        "(another path object could name a different file at each call)", None)


def _check_dir_fd(layer: Layer, what: str) -> SandboxViolation | None:
    return FileReadRefused(what, "paths relative to a directory descriptor (dir_fd) are not "
                           "checked by the sandbox", None)


def _respell(error: OSError, spelt: Any, used: Any) -> None:
    """A path made absolute against the request's working directory: the error names it as
    the app spelt it (``OSError.filename``), as the process's own working directory would."""
    if used is not spelt and error.filename is used:
        error.filename = spelt


def _judged_path(scope: Scope, args: tuple[Any, ...], kwargs: dict[str, Any],
                 argument: int, what: str) -> tuple[tuple[Any, ...], dict[str, Any], Any, Any]:
    """Judge the path argument once and pass the same, stable value on to the call (a
    relative one made absolute against the request's working directory). Also returns the
    value as the app spelt it and as used, for :func:`_respell`."""
    if len(args) > argument:
        path = args[argument]
    elif "path" in kwargs:
        path = kwargs["path"]
    else:
        return args, kwargs, None, None
    if path is None:
        if what != "os.listxattr":
            return args, kwargs, None, None  # the call raises TypeError, as outside
        path = "."  # the working directory's
    if isinstance(path, int):
        return args, kwargs, None, None  # an fd: metadata of something already open
    value = stable_path(path)
    if value is None:
        scope.judge(_check_path_object, path)
        return args, kwargs, None, None
    spelt = value
    if kwargs.get("dir_fd") is not None:
        if not os.fsdecode(value).startswith("/"):
            scope.judge(_check_dir_fd, f"{what}({os.fsdecode(value)!r}, dir_fd=...)")
    else:
        value = in_scope_cwd(scope, value)
    try:
        scope.judge(check_read, value)
    except OSError as error:
        _respell(error, spelt, value)
        raise
    if len(args) > argument:
        args = (*args[:argument], value, *args[argument + 1:])
    else:
        kwargs = {**kwargs, "path": value}
    return args, kwargs, spelt, value


def _path_reader(original: Callable[..., Any], argument: int = 0) -> Callable[..., Any]:
    """``os.stat``-like functions: allowed on readable paths only.

    ``os.stat`` and ``os.lstat`` are the hot ones: they get their real signatures, so host
    code pays one call and one ContextVar read (no ``*args`` packing), and inside a sandbox
    they answer from the check's own walk when it ended on the file itself (one ``lstat``
    fewer, and the answer is about the very file that was checked)."""
    what = f"os.{getattr(original, '__name__', 'call')}"
    get = active_scope  # a closure cell, not a default argument the caller could override

    def read_path(*args: Any, **kwargs: Any) -> Any:
        scope = get()
        if scope is None:
            return original(*args, **kwargs)
        args, kwargs, spelt, used = _judged_path(scope, args, kwargs, argument, what)
        try:
            return original(*args, **kwargs)
        except OSError as error:
            _respell(error, spelt, used)
            raise

    def checked_stat(scope: Scope, path: Any, lstat: bool) -> Any:
        value = None if isinstance(path, int) else stable_path(path)
        if value is None:  # an fd, None or an unknown path object: the general way
            return read_path(path)
        used = in_scope_cwd(scope, value)
        try:
            walked = resolve_walk(used)
            scope.judge(check_metadata, used, None if walked is None else walked[0])
            if walked is not None and walked[1] is not None and (walked[2] or not lstat):
                return walked[1]
            return original(used)
        except OSError as error:
            _respell(error, value, used)
            raise

    if what == "os.stat":
        def stat(path: Any, *, dir_fd: Any = None, follow_symlinks: Any = True) -> Any:
            if dir_fd is None and follow_symlinks is True:
                scope = get()
                if scope is None:
                    return original(path)
                return checked_stat(scope, path, False)
            return read_path(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

        return _stat_guarded(stat, original, follow=True)
    if what == "os.lstat":
        def lstat(path: Any, *, dir_fd: Any = None) -> Any:
            if dir_fd is None:
                scope = get()
                if scope is None:
                    return original(path)
                return checked_stat(scope, path, True)
            return read_path(path, dir_fd=dir_fd)

        return _stat_guarded(lstat, original, follow=False)
    return _guarded(read_path, original)


def _hidden_names(scope: Scope, folder: Any) -> Callable[[str], bool] | None:
    """A predicate for entries of ``folder`` the app must not see (skip_files, static
    files), or ``None`` when nothing in that folder can be hidden."""
    if isinstance(folder, int):
        return None
    value = stable_path(folder if folder is not None else ".")
    if value is None:
        return None
    resolved = resolve(in_scope_cwd(scope, value))
    if resolved is None:
        return None
    policies = [layer.policy for layer in scope.layers
                if (layer.policy.skip_files or layer.policy.unreadable_paths)
                and (resolved + "/").startswith(layer.policy.app_root + "/")]
    if not policies:
        return None

    def hidden(name: str) -> bool:
        path = f"{resolved}/{os.fsdecode(name)}"
        return any(policy.hidden_by(path) for policy in policies)

    return hidden


def _listdir(original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.listdir`` that leaves out what the app does not see (it was never deployed)."""

    def listdir(path: Any = None) -> list[Any]:
        scope = active_scope()
        if scope is None:
            return original(path) if path is not None else original()  # type: ignore[no-any-return]
        spelt, used = _listed_folder(scope, path)
        try:
            names = original(used)
        except OSError as error:
            _respell(error, spelt, used)
            raise
        hidden = _hidden_names(scope, used)
        return names if hidden is None else [n for n in names if not hidden(n)]

    return _guarded(listdir, original)


def _listed_folder(scope: Scope, path: Any) -> tuple[Any, Any]:
    """``os.listdir``/``os.scandir``'s folder as the app spelt it (``None`` is ``"."``) and
    as listed: made absolute against the request's working directory."""
    spelt = stable_path(path if path is not None else ".")
    if spelt is None:  # an fd, or a path object the audit hook refuses
        return path, path
    return spelt, in_scope_cwd(scope, spelt)


class _FilteredScandir:
    """``os.scandir``'s iterator without the entries the app does not see, and with paths
    spelt as the app spelt the folder (``spelt``) when it was listed by another name."""

    def __init__(self, iterator: Any, hidden: Callable[[str], bool] | None,
                 spelt: str | bytes | None = None) -> None:
        self._iterator = iterator
        self._hidden = hidden
        self._prefix = spelt
        if spelt is not None and spelt[-1:] not in ("/", b"/"):
            self._prefix = spelt + ("/" if isinstance(spelt, str) else b"/")

    def __iter__(self) -> _FilteredScandir:
        return self

    def __next__(self) -> Any:
        while True:
            entry = next(self._iterator)
            if self._hidden is None or not self._hidden(entry.name):
                if self._prefix is None:
                    return entry
                return ScopedDirEntry(entry, self._prefix + entry.name)

    def close(self) -> None:
        self._iterator.close()

    def __enter__(self) -> _FilteredScandir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _scandir(original: Callable[..., Any]) -> Callable[..., Any]:
    def scandir(path: Any = None) -> Any:
        scope = active_scope()
        if scope is None:
            return original(path) if path is not None else original()
        spelt, used = _listed_folder(scope, path)
        try:
            iterator = original(used)
        except OSError as error:
            _respell(error, spelt, used)
            raise
        hidden = _hidden_names(scope, used)
        relocated = used is not spelt and isinstance(spelt, (str, bytes))
        if hidden is None and not relocated:
            return iterator
        return _FilteredScandir(iterator, hidden, spelt if relocated else None)

    return _guarded(scandir, original)


#: A descriptor parameter of a replaced function: its position and its keyword name.
FdParameter = tuple[int, str]


def _fd_writer(original: Callable[..., Any], what: str, target: FdParameter = (0, "fd"),
               sources: tuple[FdParameter, ...] = (),
               replaces: bool = False) -> Callable[..., Any]:
    """Functions that write to the descriptor ``target``, reading from those in ``sources``
    (``sendfile``, ``splice``: the request's own or standard input only); ``replaces``: the
    target is replaced (``dup2``), so it must be the request's own, not even standard
    output. Each descriptor is found by position or keyword, taken once as an exact ``int``
    (``context.exact_fd``), judged, and that ``int`` is what the original gets."""
    parameters = (target, *sources)

    def write_fd(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            values = list(args)
            for index, (position, keyword) in enumerate(parameters):
                if len(values) > position:
                    fd = exact_fd(values[position])
                    if fd is not None:
                        values[position] = fd
                elif keyword in kwargs:
                    fd = exact_fd(kwargs[keyword])
                    if fd is not None:
                        kwargs[keyword] = fd
                else:
                    continue
                if index:
                    scope.judge(_check_fd_read, scope, fd, what)
                elif replaces:
                    scope.judge(_check_fd_own, scope, fd, what)
                else:
                    scope.judge(_check_fd_write, scope, fd, what)
            result = original(*values, **kwargs)
            if replaces and type(result) is int:
                scope.opened_fds.refresh(result)  # now a copy of the request's source
            return result
        return original(*args, **kwargs)

    return _guarded(write_fd, original)


def _check_fd_own(layer: Layer, scope: Scope, fd: Any, what: str) -> SandboxViolation | None:
    if fd in scope.opened_fds:
        return None
    return _refuse_system(layer, f"{what} onto fd {fd}",
                          "only the request's own descriptors may be replaced")


def _check_fd_read(layer: Layer, scope: Scope, fd: Any, what: str) -> SandboxViolation | None:
    if fd == 0 or fd in scope.opened_fds:
        return None
    return _refuse_system(layer, f"{what} from fd {fd}",
                          "file descriptors the host holds are not the app's to read")


def _fd_maker(original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.pipe``, ``os.dup``: the new descriptors belong to the request."""

    def make_fds(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        scope = active_scope()
        if scope is not None:
            if isinstance(result, tuple):
                scope.opened_fds.update(fd for fd in result if isinstance(fd, int))
            elif isinstance(result, int):
                scope.opened_fds.add(result)
        return result

    return _guarded(make_fds, original)


def _refused_call(original: Callable[..., Any], check: Callable[..., Any],
                  what: str, *extra: Any) -> Callable[..., Any]:
    """A function sandboxed code may not call at all (reported and let through in report
    mode)."""

    def refused(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            scope.judge(check, what, *extra)
            return passthrough(original, *args, **kwargs)
        return original(*args, **kwargs)

    return _guarded(refused, original)


def _named(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """``wrapper`` named as ``original``, module included: tools that recognise a function by
    its name and module (pyfakefs's ``Patcher`` fakes ``builtins.open`` so) take it for the
    original."""
    for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(wrapper, attribute, getattr(original, attribute))
        except (AttributeError, TypeError):
            pass
    return wrapper


def _guarded(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """``_named(wrapper, original)`` for a ``wrapper`` that, when no sandbox is active, only
    calls ``original`` with its own arguments. With the C accelerator it is put behind a
    ``Guard`` that makes that call itself: host code pays one ContextVar read and no Python
    frame, and code in a sandbox gets ``wrapper`` (which reads the ContextVar again and
    checks). The Guard exposes neither ``original`` nor ``wrapper`` (whose closure holds it).
    """
    wrapper = _named(wrapper, original)
    if SPEEDUPS is None:
        return wrapper
    return _named(SPEEDUPS.Guard(original, wrapper, _ACTIVE), original)


def _open_guarded(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`_guarded` for ``open``: the C ``OpenGuard`` also makes the usual sandboxed read
    with no Python frame (``openat2`` beneath the readable folder the path is spelt under,
    where the scope's ``open_roots`` say that is the whole rule: see
    ``filesystem.open_roots``); everything else calls ``wrapper``."""
    wrapper = _named(wrapper, original)
    open_guard = getattr(SPEEDUPS, "OpenGuard", None)
    if open_guard is None:
        return _guarded(wrapper, original)
    return _named(open_guard(original, wrapper, _ACTIVE, vars(filesystem)), original)


def _stat_guarded(wrapper: Callable[..., Any], original: Callable[..., Any], *,
                  follow: bool) -> Callable[..., Any]:
    """:func:`_guarded` for ``os.stat`` (``follow``) and ``os.lstat``: the C ``StatGuard``
    also answers, with no Python frame, a sandboxed call on an absolute path the checked
    stat walked and allowed before, after the one stat that shows the path still names the
    file it resolved to (``filesystem.resolve_walk``'s check, made in C)."""
    wrapper = _named(wrapper, original)
    stat_guard = getattr(SPEEDUPS, "StatGuard", None)
    if stat_guard is None:
        return _guarded(wrapper, original)
    return _named(stat_guard(original, wrapper, _ACTIVE, filesystem._RESOLVED,
                             filesystem._lstat, filesystem._stat, follow), original)


def _plain_read(flags: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``os.open(path, flags[, mode])`` that only reads, with arguments ``os.open`` accepts."""
    if type(flags) is not int or flags & WRITE_FLAGS or len(args) > 1:
        return False
    mode = args[0] if args else kwargs.get("mode", 0)
    return type(mode) is int and all(key in ("mode", "dir_fd") for key in kwargs)


def _os_open(original: Callable[..., Any]) -> Callable[..., Any]:
    def open_fd(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        scope = active_scope()
        if scope is None:
            return original(path, flags, *args, **kwargs)
        spelt = path
        if path is not None and not isinstance(path, int):
            value = stable_path(path)
            if value is None:
                scope.judge(_check_path_object, path)
            else:
                spelt = path = value
                if kwargs.get("dir_fd") is None:
                    path = in_scope_cwd(scope, value)
                    if _plain_read(flags, args, kwargs):
                        try:  # race-free: checked by the kernel as it opens
                            fd = open_for_reading(scope, path, flags)
                        except OSError as error:
                            _respell(error, spelt, path)
                            raise
                        if fd is not None:
                            scope.opened_fds.add(fd)
                            return fd
                elif not os.fsdecode(value).startswith("/"):
                    scope.judge(_check_dir_fd, f"os.open({os.fsdecode(value)!r}, dir_fd=...)")
        try:
            fd = original(path, flags, *args, **kwargs)  # judged by the 'open' audit event
        except OSError as error:
            _respell(error, spelt, path)
            raise
        scope.opened_fds.add(fd)
        return fd

    return _guarded(open_fd, original)


def _os_close(original: Callable[..., Any]) -> Callable[..., Any]:
    def close_fd(fd: Any) -> None:
        scope = active_scope()
        if scope is not None:
            scope.judge(_check_fd_close, scope, fd)
            scope.opened_fds.discard(fd)
        return original(fd)

    return _guarded(close_fd, original)


def _os_closerange(original: Callable[..., Any]) -> Callable[..., Any]:
    def closerange(low: int, high: int) -> None:
        scope = active_scope()
        if scope is not None:
            scope.judge(_refuse_system, f"os.closerange({low}, {high})",
                        "closing file descriptors the host holds")
        return original(low, high)

    return _guarded(closerange, original)


class _MemoryTemporaryFile(io.BytesIO):
    """The runtime's ``TemporaryFile``: a buffer in memory, gone when closed."""

    name = "<in-memory TemporaryFile>"
    mode = "w+b"


def _temporary_file(original: Callable[..., Any]) -> Callable[..., Any]:
    def TemporaryFile(mode: str = "w+b", buffering: int = -1, encoding: str | None = None,
                      newline: str | None = None, suffix: str | None = None,
                      prefix: str | None = None, dir: Any = None, *,
                      errors: str | None = None) -> Any:
        scope = active_scope()
        if scope is None:
            return original(mode, buffering, encoding, newline, suffix, prefix, dir,
                            errors=errors)
        if all(not layer.enforce and layer.policy.filesystem == "readonly"
               for layer in scope.layers):
            # report mode changes nothing but the record, and there is nothing to record:
            # the runtime had TemporaryFile too (in memory); the test gets the real one
            return passthrough(original, mode, buffering, encoding, newline, suffix, prefix,
                               dir, errors=errors)
        if not isinstance(mode, str) or any(c not in "rwxab+t" for c in mode):
            raise ValueError(f"invalid mode: {mode!r}")
        if scope.memory is not None:  # a file of the in-memory filesystem: it has a fileno
            return tempfile.NamedTemporaryFile(mode, buffering, encoding, newline, suffix,
                                               prefix, dir, errors=errors)
        buffer = _MemoryTemporaryFile()
        if "b" in mode:
            return buffer
        return io.TextIOWrapper(buffer, encoding=encoding or "utf-8", errors=errors,
                                newline=newline, write_through=True)

    return _guarded(TemporaryFile, original)


def _host_copy(original: Any) -> Any:
    """A copy of the Python function ``original`` that keeps its code when
    :func:`_trampoline` gives the original a new one: what the replacement calls for host
    code."""
    if type(original) is not types.FunctionType:
        return original
    copy = types.FunctionType(original.__code__, original.__globals__, original.__name__,
                              original.__defaults__, original.__closure__)
    copy.__kwdefaults__ = original.__kwdefaults__
    for attribute in ("__qualname__", "__doc__", "__module__"):
        setattr(copy, attribute, getattr(original, attribute))
    return copy


_TARGET = "<gae_sandbox trampoline target>"


def _trampoline(original: Any, target: Callable[..., Any]) -> Any:
    """Code for the function ``original`` that calls ``target`` with the same arguments, or
    ``None``. Installed as ``original.__code__``, it makes references taken before install
    (``from tempfile import TemporaryFile`` at import time) behave as the patched function;
    the function object keeps its defaults, signature and identity."""
    if type(original) is not types.FunctionType:
        return None
    code = original.__code__
    if code.co_freevars or code.co_flags & (0x20 | 0x80 | 0x100 | 0x200):  # generators
        return None
    names = code.co_varnames
    positional = code.co_argcount
    keywords = names[positional:positional + code.co_kwonlyargcount]
    rest = positional + code.co_kwonlyargcount
    star = names[rest] if code.co_flags & 0x04 else None  # CO_VARARGS
    starstar = names[rest + (star is not None)] if code.co_flags & 0x08 else None  # VARKEYWORDS
    parameters = list(names[:positional])
    if code.co_posonlyargcount:
        parameters.insert(code.co_posonlyargcount, "/")
    arguments = list(names[:positional])
    if star is not None:
        parameters.append(f"*{star}")
        arguments.append(f"*{star}")
    elif keywords:
        parameters.append("*")
    parameters += keywords
    arguments += [f"{name}={name}" for name in keywords]
    if starstar is not None:
        parameters.append(f"**{starstar}")
        arguments.append(f"**{starstar}")
    source = (f"def {code.co_name}({', '.join(parameters)}):\n"
              f"    return {_TARGET!r}({', '.join(arguments)})\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "'str' object is not callable": it is replaced
        module = compile(source, f"<gae_sandbox: {original.__module__}.{code.co_name}>",
                         "exec")
    [made] = [c for c in module.co_consts if isinstance(c, types.CodeType)]
    consts = tuple(target if type(c) is str and c == _TARGET else c for c in made.co_consts)
    return made.replace(co_consts=consts)


def _temporary_directory(original: type) -> type:
    class TemporaryDirectory(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            scope = active_scope()
            if scope is not None:
                scope.judge(_refuse_tempfile, "tempfile.TemporaryDirectory()")
                token_args = (args, kwargs)
                passthrough(original.__init__, self, *token_args[0], **token_args[1])
                return
            original.__init__(self, *args, **kwargs)

    TemporaryDirectory.__module__ = original.__module__
    TemporaryDirectory.__qualname__ = original.__qualname__
    TemporaryDirectory.__doc__ = original.__doc__
    return TemporaryDirectory


def _listen(original: Callable[..., Any]) -> Callable[..., Any]:
    def listen(self: Any, *args: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            scope.judge(check_server, "listen on a socket")
        return original(self, *args)

    return _guarded(listen, original)


def _getaddrinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return original(host, port, *args, **kwargs)
        scope.judge(check_lookup, scope, host, port)  # the audit event would say the same
        results = passthrough(original, host, port, *args, **kwargs)
        name = exact_host(host)  # as the lookup read it, not what a subclass says
        if name is not None:
            name = name.lower().rstrip(".")
            for *_, sockaddr in results:
                scope.resolved_hosts.setdefault(str(sockaddr[0]), set()).add(name)
        return results

    return _guarded(getaddrinfo, original)


#: Set by the audit hook when it let a ``subprocess.Popen`` through (allowed, or recorded in
#: report mode): the one spawn that Popen then makes is not judged a second time. Any other
#: spawn (``Popen._posix_spawn`` or ``fork_exec`` called directly) is judged itself.
JUDGED_SPAWN: ContextVar[bool] = ContextVar("gae_sandbox.judged_spawn", default=False)


def take_judged_spawn() -> bool:
    """Whether a judged Popen is spawning now (and use that judgement up)."""
    if JUDGED_SPAWN.get():
        JUDGED_SPAWN.set(False)
        return True
    return False


def note_child(scope: Scope, pid: Any) -> None:
    """A process the request started: it may wait for it (``os.waitpid(pid)``)."""
    if type(pid) is int and pid > 0:
        scope.extras.setdefault("children", set()).add(pid)


def _spawn(original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.posix_spawn``/``posix_spawnp`` (judged by their audit event): the process they
    start is the request's child, which it may wait for."""

    def spawn(*args: Any, **kwargs: Any) -> Any:
        pid = original(*args, **kwargs)
        scope = active_scope()
        if scope is not None:
            note_child(scope, pid)
        return pid

    return _guarded(spawn, original)


def _fork_exec(original: Callable[..., Any]) -> Callable[..., Any]:
    def fork_exec(args: Any, *rest: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return original(args, *rest, **kwargs)
        if take_judged_spawn():
            pid = original(args, *rest, **kwargs)
        else:
            scope.judge(_refuse_process, f"_posixsubprocess.fork_exec({describe_command(args)})")
            pid = passthrough(original, args, *rest, **kwargs)
        note_child(scope, pid)
        return pid

    return _guarded(fork_exec, original)


def describe_command(args: Any) -> str:
    try:
        if isinstance(args, (str, bytes, os.PathLike)):
            return describe(args)
        return " ".join(describe(a) for a in args)
    except TypeError:
        return repr(args)


_UNSET = object()  # a variable the request deleted
_ABSENT = object()  # not in the request's overlay
_putenv, _unsetenv = os.putenv, os.unsetenv  # the C functions (a request's own calls: above)
_FS_ENCODING = sys.getfilesystemencoding()


def _env_bytes(text: str) -> bytes:
    """``os.environ``'s own encoding of a name or value (checked ``str`` values only)."""
    return text.encode(_FS_ENCODING, "surrogateescape")


def _env_overlay(scope: Scope) -> dict[bytes, Any]:
    """The request's changes to the environment, keyed as the process environment's storage
    is (encoded ``bytes``; ``_UNSET`` for a deleted variable): ``Policy.env_variables`` and,
    under ``SandboxMiddleware``, the request's CGI variables, then whatever the request sets.
    Made on the request's first use of ``os.environ`` (``Scope.extras["env"]``)."""
    overlay = scope.extras.get("env")
    if overlay is None:
        overlay = {}
        for layer in scope.layers:
            for name, value in layer.policy.env_variables:
                overlay[_env_bytes(name)] = _env_bytes(value)
        environ = scope.extras.get("cgi_environ")  # the request's (SandboxMiddleware)
        if environ is not None:
            for name, value in cgi_variables(environ).items():
                try:
                    overlay[_env_bytes(name)] = _env_bytes(value)
                except UnicodeError:
                    continue
        overlay = scope.extras.setdefault("env", overlay)
    return overlay  # type: ignore[no-any-return]


def _env_exact(value: Any, what: str) -> bytes:
    """A name or value given to ``os.putenv``, as ``putenv`` encodes it: exact ``bytes``."""
    encoded = os.fsencode(value)
    if not isinstance(encoded, bytes):
        raise TypeError(f"expected str or bytes for the environment variable's {what}")
    encoded = bytes.__getitem__(encoded, slice(None))
    if b"\0" in encoded:
        raise ValueError("embedded null byte")
    if what == "name" and (not encoded or b"=" in encoded):
        raise ValueError("illegal environment variable name")
    return encoded


def _env_put(original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.putenv``: the process environment is the host's; inside a sandbox the variable
    goes into the request's view of it (what ``os.environ`` reads there), as
    ``os.environ[name] = value`` does (libraries call it at import: numpy)."""

    def putenv(name: Any, value: Any, /) -> None:
        scope = active_scope()
        if scope is None:
            return original(name, value)  # type: ignore[no-any-return]
        _env_overlay(scope)[_env_exact(name, "name")] = _env_exact(value, "value")
        return None

    return _guarded(putenv, original)


def _env_unset(original: Callable[..., Any]) -> Callable[..., Any]:
    """``os.unsetenv``: inside a sandbox, the variable leaves the request's view only."""

    def unsetenv(name: Any, /) -> None:
        scope = active_scope()
        if scope is None:
            return original(name)  # type: ignore[no-any-return]
        _env_overlay(scope)[_env_exact(name, "name")] = _UNSET
        return None

    return _guarded(unsetenv, original)


def environ_patches(environ: Any, environb: Any, posix: Any) -> list[Patch]:
    """``os.environ``, ``os.environb`` and ``posix.environ`` as the runtime had them: per
    request.

    The three share one dict, the process environment's storage (``os.environ._data``), and
    nothing about it is audited: an item written into it is the host's ``os.environ``
    (``HTTP_PROXY``, ``REQUESTS_CA_BUNDLE``, ...). So a request never gets that dict. Host
    code gets what it always got (``os.environ``'s methods read and write the dict directly,
    with no extra call). Inside a sandbox each of them is a view: the process environment
    with the request's overlay (:func:`_env_overlay`) laid over it; a change, through
    ``os.environ``, ``os.environb``, their ``_data`` or ``posix.environ``, goes into the
    overlay and lasts for the request (and its threads); so does ``os.putenv``'s.

    The dict is held in these functions' closures only: the objects handed out keep no
    reference to it in their attributes."""
    host: dict[bytes, bytes] = environ._data
    get = active_scope

    class EnvironData(MutableMapping):  # type: ignore[type-arg]
        """The storage ``os.environ._data`` is (bytes names and values): the process's for
        host code, the request's view inside a sandbox (``posix.environ`` is this too)."""

        __slots__ = ()

        def __getitem__(self, key: Any) -> Any:
            scope = get()
            if scope is None:
                return host[key]
            value = _env_overlay(scope).get(key, _ABSENT)
            if value is _UNSET:
                raise KeyError(key)
            return host[key] if value is _ABSENT else value

        def __setitem__(self, key: Any, value: Any) -> None:
            scope = get()
            if scope is None:
                host[key] = value
                return
            if type(key) is not bytes or type(value) is not bytes:
                raise TypeError("the environment's storage holds bytes names and values, "
                                f"not {type(key).__name__}: {type(value).__name__}")
            _env_overlay(scope)[key] = value

        def __delitem__(self, key: Any) -> None:
            scope = get()
            if scope is None:
                del host[key]
                return
            self[key]  # KeyError if absent  # noqa: B018
            _env_overlay(scope)[key] = _UNSET

        def __iter__(self) -> Any:
            scope = get()
            if scope is None:
                return iter(host)
            return iter(_env_keys(host, _env_overlay(scope)))

        def __len__(self) -> int:
            scope = get()
            if scope is None:
                return len(host)
            return len(_env_keys(host, _env_overlay(scope)))

        def __repr__(self) -> str:
            return repr(dict(self))

        def copy(self) -> dict[bytes, bytes]:
            return dict(self)

    data = EnvironData()

    class ScopedEnviron(type(environ)):  # type: ignore[misc]
        """``os.environ`` (or ``os.environb``) per request: see :func:`environ_patches`."""

        def __init__(self, original: Any) -> None:  # noqa: D107 - no _data attribute
            self.encodekey = original.encodekey
            self.decodekey = original.decodekey
            self.encodevalue = original.encodevalue
            self.decodevalue = original.decodevalue

        @property
        def _data(self) -> Any:
            return host if get() is None else data

        def __getitem__(self, key: Any) -> Any:
            scope = get()
            encoded = self.encodekey(key)
            if scope is None:
                value = host.get(encoded, _ABSENT)
            else:
                value = _env_overlay(scope).get(encoded, _ABSENT)
                if value is _ABSENT:
                    value = host.get(encoded, _ABSENT)
            if value is _ABSENT or value is _UNSET:
                raise KeyError(key)
            return self.decodevalue(value)

        def __setitem__(self, key: Any, value: Any) -> None:
            encoded, encoded_value = self.encodekey(key), self.encodevalue(value)
            scope = get()
            if scope is None:
                _putenv(encoded, encoded_value)
                host[encoded] = encoded_value
            else:
                _env_overlay(scope)[encoded] = encoded_value

        def __delitem__(self, key: Any) -> None:
            encoded = self.encodekey(key)
            scope = get()
            if scope is None:
                _unsetenv(encoded)
                try:
                    del host[encoded]
                except KeyError:
                    raise KeyError(key) from None
                return
            self[key]  # KeyError if absent  # noqa: B018
            _env_overlay(scope)[encoded] = _UNSET

        def __iter__(self) -> Any:
            scope = get()
            keys = list(host) if scope is None else _env_keys(host, _env_overlay(scope))
            decode = self.decodekey
            return iter([decode(key) for key in keys])

        def __len__(self) -> int:
            scope = get()
            if scope is None:
                return len(host)
            return len(_env_keys(host, _env_overlay(scope)))

        def copy(self) -> dict[Any, Any]:
            return dict(self)

    ScopedEnviron.__module__ = type(environ).__module__
    ScopedEnviron.__qualname__ = ScopedEnviron.__name__ = type(environ).__name__
    patches: list[Patch] = [(os, "environ", environ, ScopedEnviron(environ))]
    if environb is not None and environb._data is host:
        patches.append((os, "environb", environb, ScopedEnviron(environb)))
    if posix is not None and getattr(posix, "environ", None) is host:
        patches.append((posix, "environ", host, data))
    return patches


def _env_keys(host: dict[bytes, bytes], overlay: dict[bytes, Any]) -> list[bytes]:
    """The names a request sees: the process's less those it deleted, then its own."""
    if not overlay:
        return list(host)
    keys = [key for key in host if overlay.get(key) is not _UNSET]
    keys += [key for key, value in overlay.items() if value is not _UNSET and key not in host]
    return keys


_CGI_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def cgi_variables(environ: dict[str, Any]) -> dict[str, str]:
    """The request's CGI variables (upper-case names with exact ``str`` values, no NUL) that
    the python27 runtime put in ``os.environ``: not ``wsgi.*`` nor the server's objects.
    Read when the request first uses ``os.environ``, not on every request."""
    return {name: value for name, value in environ.items()
            if type(name) is str and type(value) is str and _CGI_NAME.fullmatch(name)
            and "\0" not in value}


# --- the patch table ------------------------------------------------------------------------


def build_patches() -> list[Patch]:
    """Every (owner, attribute, original, replacement) this layer installs."""
    patches: list[Patch] = []

    def add(owner: Any, attribute: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, attribute, None)
        if original is not None:
            patches.append((owner, attribute, original, make(original)))

    def add_in_place(owner: Any, attribute: str, make: Callable[[Any], Any]) -> None:
        """``add``, and references to the original taken before install run the replacement
        too (its code becomes a call of it; the replacement calls a copy for host code)."""
        original = getattr(owner, attribute, None)
        if original is not None:
            replacement = make(_host_copy(original))
            patches.append((owner, attribute, original, replacement))
            trampoline = _trampoline(original, replacement)
            if trampoline is not None:
                patches.append((original, "__code__", original.__code__, trampoline))

    for name in ("stat", "lstat", "readlink", "statvfs", "pathconf", "getxattr", "listxattr"):
        add(os, name, _path_reader)  # os.access answers instead (emulation.py)
    for name in ("write", "pwrite", "writev", "pwritev", "posix_fallocate",
                 "posix_fadvise", "fsync", "fdatasync", "lockf"):
        add(os, name, lambda original, name=name: _fd_writer(original, f"os.{name}"))
    add(os, "sendfile", lambda original: _fd_writer(original, "os.sendfile", (0, "out_fd"),
                                                    ((1, "in_fd"),)))
    add(os, "dup2", lambda original: _fd_writer(original, "os.dup2", (1, "fd2"), ((0, "fd"),),
                                                replaces=True))
    for name in ("copy_file_range", "splice"):
        add(os, name, lambda original, name=name: _fd_writer(original, f"os.{name}",
                                                             (1, "dst"), ((0, "src"),)))
    for name in ("pipe", "pipe2"):  # dup: allowlist.py (the request's own descriptors only)
        add(os, name, _fd_maker)
    add(os, "open", _os_open)
    for name in ("posix_spawn", "posix_spawnp"):
        add(os, name, _spawn)
    add(os, "close", _os_close)
    add(os, "closerange", _os_closerange)
    for name in ("mkfifo", "mknod"):
        add(os, name, lambda original, name=name: _path_writer(original, name))
    add(os, "umask", _umask)
    for name, rule in (
        ("memfd_create", "anonymous files are not part of the runtime"),
        ("setsid", "the process session is the host's"),
    ):
        add(os, name, lambda original, name=name, rule=rule: _refused_call(
            original, _refuse_system, f"os.{name}()", rule))

    patches += environ_patches(os.environ, getattr(os, "environb", None),
                               sys.modules.get(os.name))
    add(os, "putenv", _env_put)
    add(os, "unsetenv", _env_unset)
    add(os, "listdir", _listdir)
    add(os, "scandir", _scandir)
    add_in_place(tempfile, "TemporaryFile", _temporary_file)
    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "mktemp"):
        add_in_place(tempfile, name, lambda original, name=name: _refused_call(
            original, _refuse_tempfile, f"tempfile.{name}()"))
    add(tempfile, "TemporaryDirectory", _temporary_directory)

    add(socket.socket, "listen", _listen)
    add(socket, "getaddrinfo", _getaddrinfo)

    for name in ("signal", "alarm", "setitimer", "siginterrupt",
                 "set_wakeup_fd", "pause", "sigwait", "sigwaitinfo", "sigtimedwait"):
        add(signal, name, lambda original, name=name: _refused_call(
            original, _refuse_signal, f"signal.{name}()"))
    add(signal, "pthread_sigmask", _thread_signal_mask)

    posixsubprocess = sys.modules.get("_posixsubprocess")
    if posixsubprocess is None:
        try:
            import _posixsubprocess as posixsubprocess  # type: ignore[no-redef]
        except ImportError:  # not POSIX
            posixsubprocess = None
    if posixsubprocess is not None:
        add(posixsubprocess, "fork_exec", _fork_exec)
    if getattr(subprocess, "_fork_exec", None) is not None:
        add(subprocess, "_fork_exec", _fork_exec)
    # os's C module holds the same functions, reached as sys.modules["posix"] or by a fresh
    # copy of os.py: the same replacements there for fd writes and closes, file makers and
    # process-wide calls (path readers stay: memoryfs maps folders with posix's own)
    posix = sys.modules.get(os.name)
    kept = ("stat", "lstat", "access", "readlink", "statvfs", "pathconf", "getxattr",
            "listxattr", "listdir", "scandir")
    if posix is not None:
        patches += [(posix, attribute, original, replacement)
                    for owner, attribute, original, replacement in list(patches)
                    if owner is os and getattr(posix, attribute, None) is original
                    and attribute not in kept]
    return patches


_UMASK = "gae_sandbox.umask"  # Scope.extras: the request's file mode mask


def _process_umask() -> int:
    """The process's mask, read without setting it (``/proc/self/status``; else 0o022)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _umask(original: Callable[[int], int]) -> Callable[[int], int]:
    """``os.umask``: the mask is process-wide (the host's files too), so a request sets its
    own, answered back to it (``shelve``/``dbm.dumb`` read the mask with
    ``umask(0); umask(previous)``); the process's stays as it is."""

    def umask(mask: Any) -> int:
        scope = active_scope()
        if scope is None:
            return original(mask)
        value = operator.index(mask)  # an exact int (TypeError as os.umask's)
        previous = scope.extras.get(_UMASK)
        if previous is None:
            previous = context.host_call(_process_umask)
        scope.extras[_UMASK] = value & 0o777
        return int(previous)

    return _guarded(umask, original)


def _path_writer(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    """Unaudited functions that create files (``os.mkfifo``, ``os.mknod``)."""

    def write_path(path: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is not None:
            value = stable_path(path)
            if value is not None and kwargs.get("dir_fd") is None:
                path = in_scope_cwd(scope, value)
            scope.judge(check_write, path, f"os.{name}")
            return passthrough(original, path, *args, **kwargs)
        return original(path, *args, **kwargs)

    return _guarded(write_path, original)


#: (owner, attribute) pairs whose attribute was inherited, not the owner's own, before patching.
_inherited: set[tuple[int, str]] = set()


#: A patch's replacement that removes the attribute while installed, or its original when
#: the attribute was not there before.
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "<absent>"})()


def apply(patches: list[Patch]) -> None:
    for owner, attribute, _original, replacement in patches:
        if replacement is ABSENT:
            if attribute in vars(owner):
                delattr(owner, attribute)
            continue
        if isinstance(owner, type) and attribute not in vars(owner):
            _inherited.add((id(owner), attribute))
        setattr(owner, attribute, replacement)


def restore(patches: list[Patch]) -> None:
    for owner, attribute, original, replacement in reversed(patches):
        if replacement is ABSENT:
            if attribute not in vars(owner):
                setattr(owner, attribute, original)
            continue
        if original is ABSENT:
            if vars(owner).get(attribute) is replacement:
                delattr(owner, attribute)
            continue
        # a class's own entry, as set: a class method reads back as a new bound method
        current = (vars(owner).get(attribute) if isinstance(owner, type)
                   else getattr(owner, attribute, None))
        if current is replacement:
            if (id(owner), attribute) in _inherited:
                delattr(owner, attribute)
                _inherited.discard((id(owner), attribute))
            else:
                setattr(owner, attribute, original)
