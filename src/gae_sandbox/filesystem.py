"""The filesystem view: the app root, the policy's readable folders and the interpreter's
library folders, read-only.

Paths are resolved the way the kernel will resolve them (relative to the working directory,
``..`` and symlinks followed) before they are compared by whole path components, so neither a
string-prefix sibling (``/app/root2``), nor ``..``, nor a symlink leaves the readable set.

Reads are judged and opened in one step where the kernel has ``openat2`` (Linux 5.6+): beneath
a descriptor of the readable folder, so that a symlink swapped between a check and the open
cannot lead outside (:func:`open_for_reading`; :func:`open_mode` says which way is in use).
"""

from __future__ import annotations

import errno
import mimetypes
import os
import pathlib
import sys
import sysconfig
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from .context import SPEEDUPS, Layer, Scope, host_call, passthrough
from .errors import FileReadRefused, FileWriteRefused, SandboxViolation, SystemCallRefused
from .imports import loading_files
from .paths import is_inside, realpath, walk

#: os.open flags that change the filesystem.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
if hasattr(os, "O_TMPFILE"):  # its own bit: O_TMPFILE includes O_DIRECTORY, which only reads
    WRITE_FLAGS |= os.O_TMPFILE & ~os.O_DIRECTORY

_READ_RULE = "path is outside the readable folders (the app root, the interpreter's library)"
_WRITE_RULE = ("the filesystem is read-only (filesystem='memory' lets writes succeed in a "
               "private in-memory filesystem)")
_HIDDEN_RULES = {
    "skip_files": "the file matches skip_files, so the app does not see it",
    "unreadable_paths": "static files are served, not readable by the app (app.yaml "
                        "application_readable: true allows it)",
}


#: System files every request may read, as on the runtime: mimetypes' tables
#: (``mimetypes.knownfiles``, so that ``mimetypes`` inside a request knows the system's types),
#: resolved once when this module is imported; regular files only, matched exactly.
SYSTEM_FILES: frozenset[str] = frozenset(
    path for path in (realpath(str.__add__(name, "")) for name in mimetypes.knownfiles
                      if isinstance(name, str))
    if path is not None and os.path.isfile(path)
)


class ScopedDirEntry:
    """An ``os.DirEntry`` of a relative ``os.scandir`` in a request with its own working
    directory: the directory was opened by its absolute path, and ``path`` is spelt as the app
    spelt it (``templates/a.html``, not ``/srv/app/templates/a.html``), as the kernel's
    own working directory would have given it. Everything else is the real entry's."""

    __slots__ = ("_entry", "_path")

    def __init__(self, entry: os.DirEntry[Any], path: str | bytes) -> None:
        object.__setattr__(self, "_entry", entry)
        object.__setattr__(self, "_path", path)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"DirEntry attribute {name!r} is read-only")

    @property
    def name(self) -> Any:
        return self._entry.name

    @property
    def path(self) -> Any:
        return self._path

    def inode(self) -> int:
        return self._entry.inode()

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._entry.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._entry.is_file(follow_symlinks=follow_symlinks)

    def is_symlink(self) -> bool:
        return self._entry.is_symlink()

    def is_junction(self) -> bool:
        return False  # POSIX has none (os.DirEntry.is_junction, Python 3.12+)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return self._entry.stat(follow_symlinks=follow_symlinks)

    def __fspath__(self) -> Any:
        return self._path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


#: Path objects whose value cannot change between the check and the use.
_STABLE_PATH_TYPES = frozenset({pathlib.PurePosixPath, pathlib.PosixPath, os.DirEntry})


def stable_path(path: Any) -> str | bytes | None:
    """``path`` as the exact ``str`` or ``bytes`` the kernel will see, or ``None``.

    A ``str`` subclass can override the methods a check uses, and a custom ``__fspath__``
    can answer differently at each call; so the check and the call both use this one value,
    read from the object's own data, and unknown path objects are not accepted.
    """
    if isinstance(path, str):
        return path if type(path) is str else str.__add__(path, "")
    if isinstance(path, bytes):
        return path if type(path) is bytes else bytes.__add__(path, b"")
    if type(path) in _STABLE_PATH_TYPES:
        return os.fspath(path)
    if type(path) is ScopedDirEntry:
        return stable_path(os.fspath(path))  # an exact copy of what it holds
    return None


def in_scope_cwd(scope: Scope, value: Any) -> Any:
    """``value`` (a :func:`stable_path` value) made absolute against the request's working
    directory (``Scope.cwd``, emulation.py), as the kernel would against the process's;
    unchanged when absolute, empty, not a path, or when the request uses the process's."""
    cwd = scope.cwd
    if cwd is None:
        return value
    if type(value) is str:
        if not value or value[0] == "/":
            return value
        used: Any = f"{cwd}/{value}"
    elif type(value) is bytes and value and value[0] != 47:  # b"/"
        used = os.fsencode(cwd) + b"/" + value
    else:
        return value
    _SPELT.set((used, value, *_SPELT.get()[:2]))  # rename has two paths
    return used


#: The last paths :func:`in_scope_cwd` made absolute in this context, each followed by the
#: path as the app spelt it: messages, reports and ``OSError.filename`` name a path the way
#: the app wrote it. (Compared by identity: the tuple keeps the objects alive.)
_SPELT: ContextVar[tuple[Any, ...]] = ContextVar("gae_sandbox.spelt", default=())


def as_spelt(path: Any) -> Any:
    """``path`` as the app wrote it, if the sandbox made it absolute (:func:`in_scope_cwd`)."""
    spelling = _SPELT.get()
    for index in range(0, len(spelling), 2):
        if spelling[index] is path:
            return spelling[index + 1]
    return path


def filename_of(path: Any) -> str | bytes | None:
    """What ``OSError.filename`` says for ``path``, as Python's own errors do."""
    if isinstance(path, int):
        return None
    return as_spelt(stable_path(path))


def resolve(path: Any) -> str | None:
    """The absolute, symlink-free form of ``path``; ``None`` if it cannot be resolved."""
    value = stable_path(path)
    if value is None:
        return None
    walked = resolve_walk(value)
    return None if walked is None else walked[0]


#: Absolute path (the exact ``str`` or ``bytes`` value) -> ``(resolved, direct, st_dev,
#: st_ino, st_mode, st_ctime_ns)``: where a walk found it leads, and the identity of the file
#: there. Never trusted alone: :func:`resolve_walk` uses an entry only when the one ``stat``
#: (``lstat`` for a ``direct`` entry) it makes of the path now names that very file.
_RESOLVED: dict[str | bytes, tuple[str, bool, int, int, int, int]] = {}
#: Entries kept at most; the cache is emptied when full (an app naming endless paths).
RESOLVED_CACHE_SIZE = 4096


def resolve_walk(value: str | bytes) -> tuple[str, os.stat_result | None, bool] | None:
    """:func:`paths.walk` of a :func:`stable_path` value: the resolved path and the
    ``lstat`` of its target, for ``os.stat`` to answer from the very file it checked.

    An absolute path walked before costs one ``stat`` instead of an ``lstat`` per
    component: the cached resolution (:data:`_RESOLVED`) is used only when the file the
    path names now has the identity (device, inode, mode, ctime) of the file the walk found,
    and that ``stat`` is the answer returned. A symlink flipped to another file, a file
    replaced, renamed over or changed (ctime) fails the check and the path is walked again.
    Whichever route leads to that same file, its metadata is the same and the policy allowed
    it by the resolved path; ctime keeps a freed inode number that a new file reuses from
    passing for the old one."""
    known = _RESOLVED.get(value)
    if known is not None:
        resolved, direct, dev, ino, mode, ctime = known
        try:
            # direct: no symlink was on the way, so the last component must still be no
            # symlink (lstat); then lstat and stat say the same
            now = _lstat(value) if direct else _stat(value)
        except (OSError, ValueError):
            now = None
        if (now is not None and now.st_ino == ino and now.st_dev == dev
                and now.st_mode == mode and now.st_ctime_ns == ctime):
            return resolved, now, direct
        _RESOLVED.pop(value, None)
    try:
        walked = walk(value if type(value) is str else os.fsdecode(value))
    except (TypeError, ValueError, OSError):
        return None
    absolute = value[:1] == "/" if type(value) is str else value[:1] == b"/"
    if absolute and walked is not None and walked[1] is not None:
        _remember(value, walked[0], walked[1], walked[2])
    return walked


def _remember(value: str | bytes, resolved: str, final: os.stat_result, direct: bool) -> None:
    """Cache ``value -> resolved`` when the resolved path, opened with no symlink allowed on
    it, is the file the walk saw: the walk's ``lstat`` calls are separate, and a folder on
    the way swapped for a symlink in between would pair the path with another file."""
    if openat2 is None or type(resolved) is not str:
        return  # no kernel check of the pairing: always walk
    try:
        encoded = resolved.encode(_FS_ENCODING, _FS_ERRORS)
    except UnicodeError:
        return
    fd = openat2(AT_FDCWD, encoded, _O_PATH | _O_CLOEXEC | _O_NOFOLLOW, _EXACT)
    if fd < 0:
        return
    try:
        held = _fstat(fd)
    except OSError:
        return
    finally:
        _close(fd)
    identity = (final.st_dev, final.st_ino, final.st_mode, final.st_ctime_ns)
    if (held.st_dev, held.st_ino, held.st_mode, held.st_ctime_ns) != identity:
        return
    if len(_RESOLVED) >= RESOLVED_CACHE_SIZE:
        _RESOLVED.clear()
    _RESOLVED[value] = (resolved, direct, *identity)


def forget_resolutions() -> None:
    """Empty the resolution cache (tests; a host that wants no cached entry)."""
    _RESOLVED.clear()


def describe(path: Any) -> str:
    """A readable name for a path argument in messages and reports."""
    if isinstance(path, int):
        return f"fd {path}"
    value = stable_path(as_spelt(path))
    if value is None:
        return f"<path object of type {type(path).__name__}>"
    return os.fsdecode(value)


def check_read(layer: Layer, path: Any) -> SandboxViolation | None:
    """Refuse reading ``path`` unless it resolves inside the layer's readable folders."""
    if isinstance(path, int):
        return None  # fstat-like calls on a descriptor: its metadata only
    return check_resolved(layer, path, resolve(path))


def check_resolved(layer: Layer, path: Any, resolved: str | None) -> SandboxViolation | None:
    """:func:`check_read` of ``path`` once resolved (``None``: it could not be).

    A resolved path allowed once is remembered by the layer (``Layer.readable``): the answer
    depends only on that exact string and the layer's frozen policy and folders."""
    allowed = layer.readable
    exact = type(resolved) is str
    if exact and resolved in allowed:
        return None
    if resolved is not None and is_inside(resolved, layer.readable_roots):
        policy = layer.policy
        hidden_by = policy.hidden_by(resolved) if (
            policy.unreadable_paths or policy.skip_files) else None
        if hidden_by is None:
            if exact:
                if len(allowed) >= RESOLVED_CACHE_SIZE:
                    allowed.clear()
                allowed.add(resolved)
            return None
        refusal = FileReadRefused(describe(path), _HIDDEN_RULES[hidden_by], hidden_by)
        refusal.filename = filename_of(path)
        return refusal
    if resolved in SYSTEM_FILES:
        return None
    target = describe(path)
    if resolved is not None and resolved != target:
        target = f"{target} (resolves to {resolved})"
    refusal = FileReadRefused(target, _READ_RULE, "readable_paths")
    refusal.filename = filename_of(path)
    return refusal


def _metadata_names() -> tuple[frozenset[str], tuple[str, ...]]:
    """What the interpreter and the standard library look at besides the readable folders:
    the system files ``mimetypes`` probes for (whether they exist or not), and the
    interpreter's installation folders (``sysconfig``'s: include, scripts, data, ...), which
    tracebacks and debuggers resolve to tell library frames from the app's."""
    files = frozenset(path for path in (realpath(name) for name in mimetypes.knownfiles
                                        if isinstance(name, str)) if path is not None)
    base = sys.base_prefix
    folders = {*sysconfig.get_paths().values(), *sysconfig.get_paths(vars={
        "base": base, "platbase": base, "installed_base": base, "installed_platbase": base,
    }).values()}
    resolved = (realpath(folder) for folder in folders if isinstance(folder, str))
    return files, tuple(sorted({folder for folder in resolved if folder}))


_PROBED_FILES, _INSTALLATION_FOLDERS = _metadata_names()


def check_metadata(layer: Layer, path: Any, resolved: str | None) -> SandboxViolation | None:
    """``os.stat``/``os.lstat`` of ``path`` once resolved: :func:`check_resolved`, except for
    what reveals nothing: the folders above a readable folder (resolving a readable path,
    ``os.path.realpath``, looks at each of them), the interpreter's installation folders and
    the files the standard library probes for (:func:`_metadata_names`), and a path with a
    NUL character (the call raises ``ValueError``, as outside)."""
    if type(resolved) is str and resolved in layer.readable:
        return None  # check_resolved's first step, without the call
    refusal = check_resolved(layer, path, resolved)
    if refusal is None:
        return None
    if resolved is None:
        value = path if isinstance(path, str) else os.fsdecode(path)
        return None if "\0" in value else refusal
    if resolved in _PROBED_FILES or resolved in _INSTALLATION_FOLDERS:
        return None
    above = resolved.rstrip("/") + "/"
    for roots in (layer.readable_roots, _INSTALLATION_FOLDERS):
        if any(root.startswith(above) for root in roots):
            return None
    return refusal


def check_write(layer: Layer, path: Any, operation: str) -> SandboxViolation | None:
    """Refuse every write: the runtime's filesystem was read-only. (With
    ``filesystem="memory"`` the routed ``os`` functions never reach here; ``shutil``'s own
    audit events are let through, as its work goes through those routed functions.)"""
    if layer.policy.filesystem != "readonly" and operation.startswith("shutil."):
        return None
    target = describe(path)
    if operation:
        target = f"{target} ({operation})"
    refusal = FileWriteRefused(target, _WRITE_RULE, "filesystem")
    if operation not in ("rename", "link"):  # those two name "source -> destination"
        refusal.filename = filename_of(path)
    return refusal


def check_open(layer: Layer, scope: Scope, path: Any, mode: Any,
               flags: Any) -> SandboxViolation | None:
    """The ``open`` audit event: writes refused, reads limited to the readable folders, and
    file descriptors only those the request opened itself (``open(fd)`` can close it)."""
    if isinstance(path, int):
        if handed_to_io_open(scope, path):
            return None
        if path in scope.opened_fds:
            return None
        return SystemCallRefused(
            f"open(fd {path})", "only file descriptors the request opened are its own", None
        )
    writes = isinstance(flags, int) and bool(flags & WRITE_FLAGS)
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        writes = True
    if writes:
        if is_devnull(path) and layer.policy.filesystem != "readonly":
            return None  # where writes land in memory, /dev/null is the real, empty device
        how = f"open mode {mode!r}" if isinstance(mode, str) else f"os.open flags {flags:#o}"
        return check_write(layer, path, how)
    return check_read(layer, path)


def is_devnull(path: Any) -> bool:
    """Whether ``path`` is spelt ``/dev/null`` (``os.devnull``) exactly, as ``str`` or
    ``bytes`` (no resolution: a link to it is a link)."""
    return (type(path) is str and path == "/dev/null") or (
        type(path) is bytes and path == b"/dev/null")


_OPENER_RULE = ("the descriptor an open() opener returns must be one the request opened "
                "itself (os.open of a file it may read): another is the host's or another "
                "request's")


def checked_opener(scope: Scope, opener: Any,
                   owns: Callable[[int], bool] | None = None) -> Callable[[Any, int], Any]:
    """``opener`` (an ``open(..., opener=)`` argument) whose answer is judged: ``FileIO``
    adopts the descriptor it returns, which the path's own check never saw. Allowed: a
    descriptor the request opened itself (``Scope.opened_fds``, known by the open file, not
    the number; ``owns``: the request's in-memory filesystem's). Refused: any other (an
    ``int`` subclass or ``bool`` too, which ``FileIO`` reads as a number); the refusal is
    raised from the opener, so ``FileIO`` neither adopts nor closes the descriptor. A
    negative number and, outside memory mode, anything not an ``int`` go on to ``FileIO``'s
    own error."""

    def judged_opener(path: Any, flags: int) -> Any:
        fd = opener(path, flags)
        if type(fd) is int and (fd < 0 and owns is None or fd in scope.opened_fds
                                or (owns is not None and owns(fd))):
            return fd
        if isinstance(fd, int) or owns is not None:
            scope.judge(_refuse_opened, fd, path)
        return fd

    return judged_opener


def _refuse_opened(layer: Layer, fd: Any, path: Any) -> SandboxViolation:
    number = int.__index__(fd) if isinstance(fd, int) else f"<{type(fd).__name__}>"
    return SystemCallRefused(f"open({describe(path)!r}, opener=...) returning fd {number}",
                             _OPENER_RULE, None)


# --- race-free opens for reading ------------------------------------------------------------

RESOLVE_NO_MAGICLINKS = 0x02  # no /proc/self/fd/N-style links
RESOLVE_NO_SYMLINKS = 0x04  # no symlink anywhere on the path
RESOLVE_BENEATH = 0x08  # never leave the directory: no "..", absolute path or symlink out of it
RESOLVE_IN_ROOT = 0x10  # (treat the directory as "/": not used, it changes what a path names)
AT_FDCWD = -100
#: ``openat2`` is 437 in the unified system call table both architectures use.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
_ROOT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC if hasattr(os, "O_PATH") else 0

_fstat = os.fstat
_stat = os.stat
_lstat = os.lstat
_close = os.close
_readlink = os.readlink
_process_cwd = os.getcwd
_posix_open = os.open
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _load_openat2() -> Callable[[int, bytes, int, int], int] | None:
    """``openat2(dirfd, path, flags, resolve)``: the new descriptor, or ``-errno``. ``None``
    where the platform or the kernel lacks the call (not Linux, another architecture, Linux
    before 5.6, or a seccomp filter answering ``ENOSYS``/``EPERM``).

    With the C accelerator the call is ``_speedups.openat2``; else a ctypes call. ctypes is
    refused to app code, not to the library (imported here, by host code). A foreign call
    raises no audit event; ``ctypes.get_errno`` does, and the sandbox refuses it
    inside a request, so the error number is read outside the request's scope. The call
    releases the GIL, as ``os.open`` does."""
    number = _SYS_OPENAT2.get(os.uname().machine) if sys.platform.startswith("linux") else None
    if number is None or not _ROOT_FLAGS:
        return None
    accelerated = getattr(SPEEDUPS, "openat2", None)  # the same call in C, no ctypes
    if accelerated is not None:
        probe = accelerated(AT_FDCWD, b"/", os.O_PATH | os.O_CLOEXEC, RESOLVE_NO_MAGICLINKS)
        if probe < 0:
            return None
        _close(probe)
        return accelerated  # type: ignore[no-any-return]
    try:
        import ctypes

        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (ImportError, OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                    ("resolve", ctypes.c_uint64)]

    call_number = ctypes.c_long(number)
    size = ctypes.c_size_t(ctypes.sizeof(OpenHow))
    byref = ctypes.byref
    get_errno = ctypes.get_errno
    hows: dict[int, Any] = {}  # (flags, resolve) -> its open_how; read-only once made

    def openat2(dirfd: int, path: bytes, flags: int, resolve: int) -> int:
        key = flags << 8 | resolve
        how = hows.get(key)
        if how is None:
            how = byref(OpenHow(flags, 0, resolve))  # keeps its structure alive
            if len(hows) < 256:
                hows[key] = how
        fd: int = syscall(call_number, dirfd, path, how, size)
        if fd >= 0:
            return fd
        return -host_call(get_errno)  # an audit event a request may not raise

    probe = openat2(AT_FDCWD, b"/", os.O_PATH | os.O_CLOEXEC, RESOLVE_NO_MAGICLINKS)
    if probe < 0:
        return None
    _close(probe)
    return openat2


#: The wrapper, or ``None`` where the kernel check is not available.
openat2 = _load_openat2()


class RootDescriptors:
    """``O_PATH`` descriptors of readable folders, opened once per process and shared.

    They are the library's: a request's ``os.close``, ``os.dup``, ``open(fd)`` or ``os.read``
    of one is refused, as for every descriptor the request did not open itself, and an
    ``O_PATH`` descriptor reads nothing anyway. Each scope checks a descriptor once, before its
    first use (:meth:`current`): that it still is the folder it was opened for (``fstat``) and
    that the folder's path still names it (``stat``). A folder the host replaced (renamed
    away, deleted and made again) gets a new descriptor from the next request on; the old one
    is left open, as another thread may be opening beneath it at this moment.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, int, int]] = {}  # folder -> (fd, st_dev, st_ino)
        self._lock = threading.RLock()  # re-entered by a finalizer the collector runs

    def current(self, folder: str) -> int:
        """The descriptor of ``folder`` (an absolute, symlink-free path), checked now; -1 when
        the folder cannot be opened (missing, not a folder, a symlink on its path)."""
        if openat2 is None:
            return -1
        with self._lock:
            known = self._known.get(folder)
            if known is not None:
                fd, dev, ino = known
                try:
                    held, named = _fstat(fd), _stat(folder)
                except (OSError, ValueError):
                    pass  # closed under the library, or the folder is gone: open it again
                else:
                    if (held.st_dev, held.st_ino) == (dev, ino) == (named.st_dev,
                                                                    named.st_ino):
                        return fd
            try:
                encoded = folder.encode(_FS_ENCODING, _FS_ERRORS)
            except UnicodeError:
                return -1
            # no symlink on the way: the descriptor is of the folder the path spells
            fd = openat2(AT_FDCWD, encoded, _ROOT_FLAGS,
                         RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
            if fd < 0:
                return -1
            held = _fstat(fd)
            self._known[folder] = (fd, held.st_dev, held.st_ino)
            return fd

    def descriptors(self) -> dict[str, int]:
        """Folder -> descriptor, as opened now (tests)."""
        return {folder: known[0] for folder, known in self._known.items()}


root_descriptors = RootDescriptors()


#: Whether sandboxed reads are opened race-free (:func:`open_for_reading`): the kernel has
#: ``openat2`` (Linux 5.6+). False elsewhere, and from the first ``ENOSYS`` on (a seccomp
#: filter installed later); reads are then judged and opened in two steps (:func:`open_mode`).
RACE_FREE_OPENS: bool = openat2 is not None


def open_mode() -> str:
    """How sandboxed reads are opened: ``"openat2"`` (race-free: the kernel resolves the path
    beneath a readable folder in the call that opens it) or ``"check-then-open"`` (the path is
    resolved and judged, then opened by name: a symlink swapped in between is followed)."""
    return "openat2" if RACE_FREE_OPENS and openat2 is not None else "check-then-open"


def _flag(name: str) -> int:
    return int(getattr(os, name, 0))


#: What a read's flags may hold besides the access mode: the flags ``open(2)`` knows, less
#: the creating ones (``WRITE_FLAGS``, judged as writes). ``open(2)`` ignores unknown bits
#: where ``openat2`` refuses them, so they are dropped first.
_READ_FLAGS = 0
for _name in ("O_NONBLOCK", "O_NDELAY", "O_SYNC", "O_DSYNC", "O_RSYNC", "O_ASYNC", "O_DIRECT",
              "O_LARGEFILE", "O_DIRECTORY", "O_NOFOLLOW", "O_NOATIME", "O_CLOEXEC", "O_PATH",
              "O_NOCTTY", "O_EXCL"):
    _READ_FLAGS |= _flag(_name)
#: ``O_PATH`` keeps only these (``open(2)`` drops the others, ``openat2`` refuses them).
_PATH_FLAGS = _flag("O_PATH") | _flag("O_DIRECTORY") | _flag("O_NOFOLLOW") | _flag("O_CLOEXEC")
_O_PATH, _O_NOFOLLOW, _O_CLOEXEC = _flag("O_PATH"), _flag("O_NOFOLLOW"), _flag("O_CLOEXEC")
_BENEATH = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
_BENEATH_DIRECT = _BENEATH | RESOLVE_NO_SYMLINKS
_EXACT = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_SCOPE_ROOTS = "gae_sandbox.root_descriptors"  # Scope.extras: the descriptors it checked
_CHANGED_RULE = ("the path changed while the sandbox opened it (a symlink on it was swapped), "
                 "so where it leads could not be confirmed inside the readable folders")
_TRIES = 3
_ELOOP, _ENOSYS = errno.ELOOP, errno.ENOSYS


def open_for_reading(scope: Scope, path: str | bytes, flags: int) -> int | None:
    """Open ``path`` (a :func:`stable_path` value, made absolute by :func:`in_scope_cwd`) for
    reading, judged and opened in one step: the new descriptor, the caller's to own. ``None``
    where reads are not opened this way (no ``openat2``, the memory filesystem, an empty path
    or one with a NUL, the file of a module being imported: the caller's usual way gives the
    usual answer). Raises the refusal, or the ``OSError`` of the open with ``filename`` set to
    ``path``.

    **The fast way.** A path spelt under a readable folder is opened with
    ``openat2(folder_fd, rest, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)``, relative to a
    descriptor of that folder (:class:`RootDescriptors`): the kernel follows ``..`` and
    symlinks as it always does, but fails (``EXDEV``) rather than leave the folder, in the
    very call that opens, so a symlink swapped by the host or another thread cannot lead the
    open outside. No ``lstat`` walk in Python.

    **Hidden files.** ``skip_files`` and ``unreadable_paths`` hide files *inside* the app
    root, so staying beneath it is not enough: the decision needs where the opened file
    really is. The path is opened with ``RESOLVE_NO_SYMLINKS`` as well: when that succeeds no
    symlink was crossed, and the real path is the spelt one (``.``, ``..`` and ``//``
    removed; the folder's descriptor was checked against its path when the request first
    used it). Where a symlink is on the way the kernel refuses (``ELOOP``), and the path is
    opened again without that flag and its real path read back from the descriptor itself
    (``/proc/self/fd/N``), which no later swap changes. Either way what is judged
    (:func:`check_resolved`) is the path of the file that was opened, so a symlink inside the
    app root to a ``skip_files`` folder is refused like the folder itself. (Reading the real
    path back every time would cost a ``readlink`` per open; a lexical answer alone would be
    wrong once a symlink is crossed.) The same real path answers enclosing sandboxes (nested
    layers), whose folders may be others. A policy that hides nothing, alone, needs no real
    path: beneath the folder is the whole rule.

    **Everything else** (a path spelt outside every readable folder, ``..`` above it, an
    absolute symlink, a loop, an error): the path is resolved in Python
    (:func:`~gae_sandbox.paths.walk`) and judged, then the resolved path, which has no symlink
    left, is opened with ``RESOLVE_NO_SYMLINKS``: if a symlink appeared on it since, the
    kernel refuses and it is resolved again (three tries, then refused). So the app sees the
    answer it always saw: the file, its ``OSError`` (``FileNotFoundError``, ...), or
    ``FileReadRefused`` (``PermissionError``, ``EACCES``) naming where the path resolves and
    the setting that allows it. The kernel's ``EXDEV`` and ``ELOOP`` never reach it.
    """
    if not RACE_FREE_OPENS or openat2 is None or scope.memory is not None:
        return None
    text = path if type(path) is str else os.fsdecode(path)
    if not text or "\0" in text:
        return None
    if text[0] != "/":  # the process's working directory (working_directory="host")
        try:
            text = f"{_process_cwd()}/{text}"
        except OSError:
            return None
    flags = (flags & _READ_FLAGS) | _O_CLOEXEC
    if flags & _O_PATH:
        flags &= _PATH_FLAGS
    for root in scope.layers[-1].readable_roots:
        if text.startswith(root):
            length = len(root)
            if len(text) == length or text[length] == "/" or length == 1:
                fd = _open_beneath(scope, root, text[length + (length > 1):] or ".", text,
                                   path, flags)
                if fd >= 0:
                    return fd
                if fd == -2:
                    return None  # no openat2 after all
                break
    if _loading(scope, path):
        return None  # the file of a module the import gate judged: the audit hook lets it be
    return _open_resolved(scope, path, text, flags)


def _open_beneath(scope: Scope, root: str, rest: str, text: str, path: Any,
                  flags: int) -> int:
    """:func:`open_for_reading` beneath ``root``: the descriptor; -1 when the kernel would not
    open it there (the resolving way answers); -2 when the kernel has no ``openat2``."""
    checked = scope.extras.get(_SCOPE_ROOTS)
    if checked is None:
        checked = scope.extras[_SCOPE_ROOTS] = {}
    root_fd = checked.get(root)
    if root_fd is None:
        root_fd = checked[root] = root_descriptors.current(root)
    if root_fd < 0:
        return -1
    try:
        encoded = rest.encode(_FS_ENCODING, _FS_ERRORS)
    except UnicodeError:
        return -1
    call: Any = openat2
    layers = scope.layers
    if len(layers) == 1:
        policy = layers[0].policy
        if not (policy.skip_files or policy.unreadable_paths):
            fd = call(root_fd, encoded, flags, _BENEATH)
            return fd if fd >= 0 else _unopened(fd)
    fd = call(root_fd, encoded, flags, _BENEATH_DIRECT)
    if fd >= 0:
        real: str | None = text if _plain(rest) else os.path.normpath(text)
    elif fd == -_ELOOP and not flags & _O_NOFOLLOW:  # a symlink on the way
        fd = call(root_fd, encoded, flags, _BENEATH)
        if fd < 0:
            return _unopened(fd)
        real = _opened_path(fd)
        if real is None:
            _close(fd)
            return -1
    else:
        return _unopened(fd)
    try:
        for layer in layers:
            refusal = check_resolved(layer, path, real)
            # (the import system reads the files of a module the import gate judged, its
            # bytecode cache too, which skip_files may hide: as the audit hook lets it)
            if refusal is not None and not _loading(scope, path):
                scope.refuse(layer, refusal)  # raises, or records (report mode)
    except BaseException:
        _close(fd)
        raise
    return fd


def _loading(scope: Scope, path: Any) -> bool:
    """Whether ``path`` is the file of a module being imported (``imports.loading_files``)."""
    return type(path) is str and path in loading_files(scope)[0]


def _plain(rest: str) -> bool:
    """Whether ``rest`` has no empty, ``.`` or ``..`` component (nor a final ``/``)."""
    return "//" not in rest and "/." not in rest and rest[0] != "." and rest[-1] != "/"


def _opened_path(fd: int) -> str | None:
    """Where the file open on ``fd`` is, as the kernel names it; ``None`` if unknown (no
    ``/proc``, or deleted since)."""
    try:
        real = _readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    if real[:1] != "/" or real.endswith(" (deleted)"):
        return None
    return real


def _unopened(result: int) -> int:
    """The kernel did not open beneath the folder (``-errno``): -2 for no ``openat2``, else -1
    (escapes, loops and plain errors alike: :func:`_open_resolved` answers them as the checked
    way always did, the refusal or the error)."""
    global RACE_FREE_OPENS
    if result == -_ENOSYS:
        RACE_FREE_OPENS = False
        return -2
    return -1


def _open_resolved(scope: Scope, path: Any, text: str, flags: int) -> int:
    """Resolve and judge ``text``, then open exactly the resolved path."""
    global RACE_FREE_OPENS
    call: Any = openat2
    for _ in range(_TRIES):
        head, _, name = text.rpartition("/")
        if flags & _O_NOFOLLOW and name not in ("", ".", ".."):
            folder = realpath(head or "/")  # the last component is opened as it is
            resolved = None if folder is None else f"{folder.rstrip('/')}/{name}"
        else:
            resolved = realpath(text)
        if scope.judge(check_resolved, path, resolved) or resolved is None:
            return passthrough(_posix_open, path, flags)  # let through by report mode
        fd = call(AT_FDCWD, resolved.encode(_FS_ENCODING, _FS_ERRORS), flags, _EXACT)
        if fd >= 0:
            return fd
        if fd == -_ENOSYS:
            RACE_FREE_OPENS = False
            return passthrough(_posix_open, path, flags)  # judged just now, as before
        if fd != -_ELOOP or flags & _O_NOFOLLOW:
            raise OSError(-fd, os.strerror(-fd), path)
    scope.judge(_refuse_changed, path)
    return passthrough(_posix_open, path, flags)  # report mode


def _refuse_changed(layer: Layer, path: Any) -> SandboxViolation:
    refusal = FileReadRefused(describe(path), _CHANGED_RULE, "readable_paths")
    refusal.filename = filename_of(path)
    return refusal


_READ_MODES = frozenset({"r", "rt", "tr", "rb", "br"})
#: Scope.extras tables, thread ident -> the descriptor this library is handing to a file
#: object in that thread (the ``open`` audit event for exactly that number is its own):
#: :func:`open_file` to ``io.open`` (let through), the ``open()`` wrapper (emulation.py) to
#: the file object it then records as the number's holder (judged, not taken away).
_HANDING = "gae_sandbox.handing"
ADOPTING = "gae_sandbox.adopting"
_get_ident = threading.get_ident

Handing = tuple[dict[int, int], int, "int | None"]


def hand_over(scope: Scope, table: str, fd: int) -> Handing:
    """Mark ``fd`` as handed to a file object in this thread (``table``: ``_HANDING`` or
    :data:`ADOPTING`) until :func:`hand_back`; the mark it replaces is kept (a finalizer the
    collector runs meanwhile may open a file too)."""
    handing = scope.extras.get(table)
    if handing is None:
        handing = scope.extras.setdefault(table, {})
    thread = _get_ident()
    outer = handing.get(thread)
    handing[thread] = fd
    return handing, thread, outer


def hand_back(handed: Handing) -> None:
    handing, thread, outer = handed
    if outer is None:
        handing.pop(thread, None)
    else:
        handing[thread] = outer


def _handing_now(scope: Scope, table: str, path: Any) -> bool:
    handing = scope.extras.get(table)
    return handing is not None and type(path) is int and handing.get(_get_ident()) == path


def handed_to_io_open(scope: Scope, path: Any) -> bool:
    """Whether ``path`` is the descriptor :func:`open_file` is handing to ``io.open`` in this
    thread, for ``scope``: its ``open`` audit event is let through."""
    return _handing_now(scope, _HANDING, path)


def adopted_by_open(scope: Scope, fd: int) -> bool:
    """Whether ``fd``'s ``open`` event comes from the ``open()`` wrapper in this thread."""
    return _handing_now(scope, ADOPTING, fd)


def open_roots(scope: Scope) -> tuple[str, ...]:
    """The readable folders of ``scope`` beneath which a read is allowed with no other
    check: those of its one layer, when that layer hides nothing inside them (no
    ``skip_files``, no ``unreadable_paths``) and reads go to the real files (no in-memory
    filesystem); else ``()``. The C ``OpenGuard`` opens beneath these alone, race-free, as
    :func:`open_for_reading` does."""
    layers = scope.layers
    if len(layers) != 1 or scope.memory is not None:
        return ()
    policy = layers[0].policy
    if policy.skip_files or policy.unreadable_paths:
        return ()
    return tuple(str.__str__(root) for root in layers[0].readable_roots)


def open_file(scope: Scope, value: str | bytes, mode: Any, buffering: Any, encoding: Any,
              errors: Any, newline: Any, io_open: Callable[..., Any]) -> Any:
    """``builtins.open``/``io.open`` of ``value`` for reading: opened by
    :func:`open_for_reading` and handed to ``io_open`` as a descriptor, which makes the file
    object ``io_open(value, ...)`` would have made, named ``value``. ``None`` where it is
    opened the usual way: other modes, and arguments ``io_open`` refuses (its error then comes
    from where it always came, and no descriptor is made for a file object that fails).

    The descriptor is registered as the request's own while ``io_open`` takes it: the
    ``open`` audit event of ``FileIO(fd)`` judges it like any other."""
    if type(mode) is not str or mode not in _READ_MODES or type(buffering) is not int:
        return None
    if "b" in mode:
        if encoding is not None or errors is not None or newline is not None:
            return None
    elif buffering == 0 or not ((encoding is None or type(encoding) is str)
                                and (errors is None or type(errors) is str)
                                and (newline is None or type(newline) is str)):
        return None
    if scope.open_roots is None:
        scope.open_roots = open_roots(scope)
    used = in_scope_cwd(scope, value)
    try:
        fd = open_for_reading(scope, used, os.O_RDONLY)
    except OSError as error:
        if error.filename is used:
            error.filename = value
        raise
    if fd is None:
        return None
    # The descriptor is not the request's (its os.close is refused) while io_open takes
    # it; check_open lets this thread's ``open`` event for exactly this number through.
    handed = hand_over(scope, _HANDING, fd)
    try:
        # The file object owns the descriptor from here on and closes it if it fails, except
        # where FileIO refuses it before taking it: a folder (or an asynchronous exception in
        # the audit hook, which leaves it open rather than risk closing a number another
        # thread has been given since).
        file = io_open(fd, mode, buffering, encoding, errors, newline, True, None)
    except IsADirectoryError as error:
        if type(error.filename) is int:
            _close(fd)
            error.filename = value
        raise
    finally:
        hand_back(handed)
    # text -> buffered -> FileIO, named as io.open(value) names it
    raw = file if buffering == 0 else file.raw if "b" in mode else file.buffer.raw
    raw.name = value
    return file
