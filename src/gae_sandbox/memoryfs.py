"""``filesystem="memory"``: a private in-memory filesystem per request (pyfakefs).

Writes succeed into a pyfakefs ``FakeFilesystem`` that lies over the app's read-only folders;
nothing reaches the disk. It is per context, not pyfakefs's process-wide ``Patcher``: the
``os``/``open`` functions are replaced once (on the first memory-mode scope) by routers that
read the active scope, so two concurrent requests each see their own files and the host, in
the same threads, keeps the real disk.

The readable folders (the app root, the interpreter's library, ``readable_paths``) are mapped
lazily with ``add_real_directory``: pyfakefs reads a real file or folder only when the app
first touches it, and it does so through the read-only layer's own checks (the router hands
pyfakefs's own calls to the real functions), so ``skip_files`` and static files stay hidden
and nothing outside the readable set is ever mapped. Imports keep reading the real disk:
modules the app writes are not importable (the runtime could not write them at all).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import pathlib
import posix
import secrets
import stat
import tempfile
import threading
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any

from .context import Layer, Scope, active_scope, host_call
from .errors import FileWriteRefused, SandboxViolation, SystemCallRefused
from .filesystem import (
    SYSTEM_FILES,
    WRITE_FLAGS,
    check_read,
    checked_opener,
    describe,
    is_devnull,
    stable_path,
)
from .patches import _hidden_names, _named
from .paths import is_inside

#: An in-memory file's descriptor is the number of a real ``O_PATH`` descriptor of
#: ``/dev/null`` the filesystem holds while the file is open (a "placeholder"): no other file
#: of the process has that number, so C code or a child process handed ``fileno()`` (Pillow,
#: ``subprocess`` ``stdout=``) gets ``EBADF`` from the kernel, never another file the host has
#: open, and no data goes anywhere unseen.
_PLACEHOLDER_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_CLOEXEC
_close_placeholder = posix.close  # the C function: captured before any layer replaces it

#: ``os`` functions whose first argument is a path (or ``None``/``"."`` for the cwd).
PATH_FUNCTIONS = (
    "stat", "lstat", "access", "listdir", "scandir", "mkdir", "remove", "unlink", "rmdir",
    "rename", "replace", "chmod", "utime", "truncate", "readlink", "symlink", "link",
    "getxattr", "listxattr", "setxattr", "removexattr",
)
#: ``os`` functions whose first argument is a file descriptor.
FD_FUNCTIONS = ("read", "write", "close", "fstat", "lseek", "ftruncate", "fsync", "fdatasync")


class MemoryFilesystem:
    """One scope's (or one ``Sandbox``'s) in-memory filesystem, built on first use."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.roots = roots
        self._lock = threading.RLock()
        self._owner: int | None = None  # the thread inside pyfakefs right now
        self._fake: Any = None
        #: the descriptors of the open in-memory files (placeholders: see _PLACEHOLDER_FLAGS)
        self._placeholders: set[int] = set()
        #: path -> (name, keeping connection): the SQLite databases of these files
        self.databases: dict[str, tuple[str, Any]] = {}

    # -- lifetime ------------------------------------------------------------------------

    def _build(self) -> Any:
        from pyfakefs.fake_file import StandardStreamWrapper
        from pyfakefs.fake_filesystem import FakeFilesystem  # imported by build_patches
        from pyfakefs.fake_open import FakeFileOpen
        from pyfakefs.fake_os import FakeOsModule

        placeholders = self._placeholders
        # (pyfakefs 6 names it add_open_file, 5 _add_open_file)
        adder = "add_open_file" if hasattr(FakeFilesystem, "add_open_file") else (
            "_add_open_file")
        add = getattr(FakeFilesystem, adder)

        def add_open_file(fs: Any, file_obj: Any, new_fd: int = -1) -> int:
            """Numbers each open file by a placeholder descriptor of its own (the standard
            streams keep pyfakefs's 0, 1 and 2, which no router takes for a file of its)."""
            if new_fd < 0 and not isinstance(file_obj, StandardStreamWrapper):
                new_fd = host_call(posix.open, os.devnull, _PLACEHOLDER_FLAGS)
                placeholders.add(new_fd)
            return int(add(fs, file_obj, new_fd))

        def close_open_file(fs: Any, file_des: int) -> None:
            FakeFilesystem.close_open_file(fs, file_des)
            if file_des in placeholders:
                placeholders.discard(file_des)
                _close_placeholder(file_des)

        placed = type("PlacedFilesystem", (FakeFilesystem,),
                      {adder: add_open_file, "close_open_file": close_open_file})
        fs = host_call(placed)  # it reads the umask (set and reset)
        fs.shuffle_listdir_results = False
        fs.cwd = os.getcwd()
        mapped: list[str] = []
        for root in sorted(set(self.roots), key=len):
            if any(is_inside(root, (outer,)) for outer in mapped) or not os.path.isdir(root):
                continue
            fs.add_real_directory(root, read_only=False, lazy_read=True)
            mapped.append(root)
        for system_file in SYSTEM_FILES:  # mimetypes' tables, readable as in read-only mode
            if not fs.exists(system_file):
                fs.add_real_file(system_file, read_only=True)
        for folder in (tempfile.gettempdir(), "/tmp"):
            if not fs.exists(folder):
                fs.create_dir(folder)
        self._fake = (fs, FakeOsModule(fs), FakeFileOpen(fs))
        return self._fake

    def discard(self) -> None:
        """Drop every file (the scope ended); a later use starts an empty filesystem."""
        with self._lock:
            self._fake = None
            databases, self.databases = self.databases, {}
            placeholders = list(self._placeholders)
            self._placeholders.clear()
        for fd in placeholders:  # files left open: their numbers go back to the process
            _close_placeholder(fd)
        for _name, keeper in databases.values():
            keeper.close()

    # -- calls ---------------------------------------------------------------------------

    def inside(self) -> bool:
        """Whether this thread is inside pyfakefs (its own reads go to the real disk)."""
        return self._owner == threading.get_ident()

    def run(self, scope: Scope, call: Callable[[Any, Any, Any], Any], path: Any = None) -> Any:
        """Run ``call(fs, fake_os, fake_open)`` under the lock, pyfakefs's own calls marked."""
        with self._lock:
            self._owner = threading.get_ident()
            try:
                fake = self._fake or self._build()
                # the request's working directory (emulation.py); one filesystem may serve
                # several requests (keep_memory_filesystem), each with its own
                cwd = scope.cwd or posix.getcwd()
                if fake[0].cwd != cwd:
                    fake[0].cwd = cwd
                try:
                    return call(*fake)
                except FileNotFoundError:
                    if path is None or not _refuse_unmapped(scope, fake[0], path, self.roots):
                        raise
                return call(*fake)  # mapped now: once more
            finally:
                self._owner = None

    def as_app_code(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` (the app's, called back by pyfakefs: an ``open`` opener) with its own
        calls routed to memory again."""

        def call(*args: Any, **kwargs: Any) -> Any:
            owner, self._owner = self._owner, None
            try:
                return function(*args, **kwargs)
            finally:
                self._owner = owner

        return call

    def owns_fd(self, fd: Any) -> bool:
        return type(fd) is int and fd in self._placeholders


def _unmapped_link_above(fs: Any, absolute: str) -> tuple[str, Any] | None:
    """The outermost folder above ``absolute`` that is a symlink on the real disk and not in
    memory yet, with its ``lstat``: mapped first, the path then leads where the disk's does."""
    prefix = ""
    for part in absolute.split("/")[1:-1]:
        prefix = f"{prefix}/{part}"
        try:
            info = posix.lstat(prefix)
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode) and not fs.islink(prefix):
            return prefix, info
    return None


def _refuse_unmapped(scope: Scope, fs: Any, path: Any, roots: tuple[str, ...] = ()) -> bool:
    """A path missing from memory that exists on the real disk: refuse it as the read-only
    mode does when it is not readable (outside the readable folders, or hidden by
    skip_files), rather than call it missing; map it when it is (a symlink outside the
    readable folders into them, as ``/etc/localtime`` into the time zones): True. Never
    beneath the mapped folders (or the python3 preset's /tmp), where the memory's answer
    stands (a file the request removed stays removed)."""
    try:
        absolute = fs.resolve_path(os.fsdecode(path))  # symlinks made in memory followed
        info = posix.lstat(absolute)
    except (TypeError, ValueError, OSError):
        return False
    scope.judge(check_read, absolute)
    private = TMP_FOLDERS if any(layer.policy.filesystem == "tmp" for layer in scope.layers) \
        else ()  # the python3 preset's /tmp: all of it in memory
    if not roots or is_inside(absolute, (*roots, *private)):
        return False
    linked = _unmapped_link_above(fs, absolute)
    if linked is not None:  # a folder symlink on the way (/bin -> usr/bin): that link first
        absolute, info = linked
    try:
        if stat.S_ISLNK(info.st_mode):
            fs.add_real_symlink(absolute)
        elif stat.S_ISREG(info.st_mode):
            fs.add_real_file(absolute, read_only=True)
        elif stat.S_ISDIR(info.st_mode):
            fs.add_real_directory(absolute, read_only=True, lazy_read=True)
        else:
            return False
    except OSError:  # (pyfakefs: already there, or it cannot map it)
        return False
    return True


def scope_memory(layers: tuple[Layer, ...]) -> MemoryFilesystem | None:
    """A fresh memory filesystem when every layer asks for one (nesting only narrows: a
    read-only layer anywhere keeps the filesystem read-only)."""
    if all(layer.policy.filesystem != "readonly" for layer in layers):
        return MemoryFilesystem(layers[-1].readable_roots)
    return None


#: ``filesystem="tmp"`` (the python3 runtime): the folders writes may go to, in memory.
TMP_FOLDERS: tuple[str, ...] = tuple(dict.fromkeys(
    os.path.realpath(folder) for folder in (tempfile.gettempdir(), "/tmp")))
_TMP_RULE = ("the python3 runtime's filesystem is read-only except /tmp (filesystem='memory' "
             "lets every write succeed in memory)")
#: ``os`` functions that change the filesystem, and which of their arguments are paths.
_WRITE_ARGUMENTS: dict[str, tuple[int, ...]] = {
    "mkdir": (0,), "remove": (0,), "unlink": (0,), "rmdir": (0,), "rename": (0, 1),
    "replace": (0, 1), "chmod": (0,), "utime": (0,), "truncate": (0,), "symlink": (1,),
    "link": (1,), "setxattr": (0,), "removexattr": (0,),
}


def _check_tmp_write(scope: Scope, fs: Any, paths: tuple[Any, ...], what: str,
                     dir_fd: Any = None) -> None:
    """``filesystem="tmp"``: a write beneath ``/tmp`` goes to memory, any other is refused
    (judged on the path as the in-memory filesystem resolves it, links made there followed;
    a relative path given with ``dir_fd``, as ``shutil.rmtree`` does, from that folder)."""
    if all(layer.policy.filesystem != "tmp" for layer in scope.layers):
        return
    for path in paths:
        if type(path) is int:
            continue
        try:
            text = os.fsdecode(path)
            if type(dir_fd) is int and not text.startswith("/"):
                folder = fs.get_open_file(dir_fd).file_path  # an in-memory descriptor only
                text = f"{os.fsdecode(folder).rstrip('/')}/{text}"
            resolved = fs.resolve_path(text)
        except (TypeError, ValueError, OSError):
            resolved = None
        scope.judge(_refuse_outside_tmp, resolved, f"{describe(path)} ({what})")


def _refuse_outside_tmp(layer: Layer, resolved: str | None,
                        target: str) -> SandboxViolation | None:
    """Beneath /tmp and not the app's own files (an app folder under /tmp stays read-only).
    A ``readable_paths`` folder under /tmp (the pytest plugin's ``tmp_path``) is /tmp: the
    writes go to memory over it."""
    policy = layer.policy
    if policy.filesystem != "tmp":
        return None
    if resolved is not None and is_inside(resolved, TMP_FOLDERS):
        if not is_inside(resolved, (policy.app_root,)):
            return None
        return FileWriteRefused(target, "the python3 runtime's filesystem is read-only "
                                "except /tmp, and the app's own files are read-only also when "
                                "its folder is under /tmp", "filesystem")
    return FileWriteRefused(target, _TMP_RULE, "filesystem")


# --- routers: installed once, on the first memory-mode scope ---------------------------------


def _memory_of(scope: Scope | None) -> MemoryFilesystem | None:
    if scope is None:
        return None
    memory = scope.memory
    if memory is None or memory.inside():
        return None
    return memory


#: Metadata calls pyfakefs makes while it maps a readable folder: answered by the real
#: functions, so that a symlink to outside the readable set becomes a dangling link in memory
#: instead of failing the whole folder. Listings stay judged (hidden files are left out), and
#: contents are read with ``open``, which the audit hook judges.
_MAPPING_CALLS = frozenset({"stat", "lstat", "readlink", "access"})


def _path_router(name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    real = getattr(posix, name, inner) if name in _MAPPING_CALLS else inner

    def routed(*args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        memory = scope.memory if scope is not None else None
        if memory is None:
            return inner(*args, **kwargs)
        if memory.inside():
            return real(*args, **kwargs)
        if args and type(args[0]) is int and name in ("stat", "listdir", "scandir", "chmod",
                                                      "utime", "truncate") \
                and not memory.owns_fd(args[0]):
            return inner(*args, **kwargs)  # a real descriptor the app holds (fstat-like)
        path = args[0] if args else kwargs.get("path")
        if name in ("listdir", "scandir") and path is None:
            args = (".",) if name == "scandir" else (os.getcwd(),)
        positions = _WRITE_ARGUMENTS.get(name, ())

        def call(fs: Any, fake_os: Any, fake_open: Any) -> Any:
            if positions:
                _check_tmp_write(scope, fs, tuple(args[i] for i in positions if i < len(args)),
                                 f"os.{name}", kwargs.get("dir_fd"))
            return getattr(fake_os, name)(*args, **kwargs)

        result = memory.run(scope, call, path)
        if name in ("listdir", "scandir"):
            result = _filter_listing(scope, name, args[0] if args else ".", result)
        return result

    return _named(routed, inner)


def _filter_listing(scope: Scope, name: str, folder: Any, result: Any) -> Any:
    if isinstance(folder, int):
        return result
    hidden = _hidden_names(scope, folder)
    if hidden is None:
        return result
    if name == "listdir":
        return [entry for entry in result if not hidden(os.fsdecode(entry))]
    return iter([entry for entry in result if not hidden(os.fsdecode(entry.name))])


def _fd_router(name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    def routed(fd: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        memory = _memory_of(scope)
        if memory is None or not memory.owns_fd(fd):
            return inner(fd, *args, **kwargs)
        if name == "lseek":
            return memory.run(scope, lambda fs, fake_os, fake_open: _lseek(fs, fd, *args))
        return memory.run(scope, lambda fs, fake_os, fake_open: getattr(fake_os, name)(
            fd, *args, **kwargs))

    return _named(routed, inner)


def _lseek(fs: Any, fd: int, position: int, whence: int) -> int:
    """pyfakefs's ``lseek`` returns nothing; ``os.lseek`` returns the new offset."""
    handle = fs.get_open_file(fd)
    handle.seek(position, whence)
    return int(handle.tell())


def _statvfs_router(inner: Callable[..., Any]) -> Callable[..., Any]:
    """``os.statvfs`` / ``os.fstatvfs`` (so ``shutil.disk_usage``) of an in-memory file: the
    in-memory filesystem's own figures (pyfakefs has no ``statvfs``)."""

    def statvfs(path: Any) -> Any:
        scope = active_scope()
        memory = _memory_of(scope)
        if memory is None or (type(path) is int and not memory.owns_fd(path)):
            return inner(path)
        if type(path) is not int:
            value = stable_path(path)  # one exact value: stat'ed and judged alike
            if value is None:
                return inner(path)
            path = value

        def call(fs: Any, fake_os: Any, fake_open: Any) -> Any:
            if type(path) is int:
                fake_os.fstat(path)
                where = fs.get_open_file(path).file_path
            else:
                fake_os.stat(path)  # a missing path fails as os.stat does
                where = fs.resolve_path(os.fsdecode(path))
                if not is_inside(where, TMP_FOLDERS):  # outside /tmp: the read rule's
                    scope.judge(check_read, where)
            total, _, free = fs.get_disk_usage(where)
            block = 4096
            return os.statvfs_result((block, block, total // block, free // block,
                                      free // block, 1 << 20, 1 << 20, 1 << 20, 0, 255))

        return memory.run(scope, call, path)

    return _named(statvfs, inner)


def _open_router(inner: Callable[..., Any]) -> Callable[..., Any]:
    """``builtins.open`` / ``io.open``."""

    def open(file: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A001
        scope = active_scope()
        memory = _memory_of(scope)
        if memory is None or (type(file) is int and not memory.owns_fd(file)) or (
                is_devnull(file)):  # the real device: a real descriptor (subprocess.DEVNULL)
            return inner(file, *args, **kwargs)
        if len(args) > 6 and "opener" not in kwargs:  # open(file, mode, buffering, encoding,
            kwargs = {**kwargs, "opener": args[6]}  # errors, newline, closefd, opener)
            args = args[:6]
        if kwargs.get("opener") is not None:
            # the app's, run as app code; what it returns must be the request's own
            kwargs["opener"] = checked_opener(scope, memory.as_app_code(kwargs["opener"]),
                                              memory.owns_fd)
        mode = args[0] if args else kwargs.get("mode", "r")

        def call(fs: Any, fake_os: Any, fake_open: Any) -> Any:
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                _check_tmp_write(scope, fs, (file,), f"open mode {mode!r}")
            _flush_open_files(fs)
            return _loaded(fake_open(file, *args, **kwargs))

        return memory.run(scope, call, file)

    return _named(open, inner)


def _os_open_router(inner: Callable[..., Any]) -> Callable[..., Any]:
    def open_fd(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        scope = active_scope()
        memory = _memory_of(scope)
        if memory is None or (is_devnull(path) and dir_fd is None):
            return inner(path, flags, mode, dir_fd=dir_fd)

        def call(fs: Any, fake_os: Any, fake_open: Any) -> Any:
            if isinstance(flags, int) and flags & WRITE_FLAGS:
                _check_tmp_write(scope, fs, (path,), f"os.open flags {flags:#o}", dir_fd)
            _flush_open_files(fs)
            return fake_os.open(path, flags, mode, dir_fd=dir_fd)

        return memory.run(scope, call, path)

    return _named(open_fd, inner)


def _loaded(file: Any) -> Any:
    """Read a mapped real file's content now, while pyfakefs's own reads are marked as such
    (later, from the file object's methods, they would not be)."""
    contents = getattr(file, "file_object", None)
    if contents is not None and hasattr(contents, "contents_read"):
        contents.byte_contents  # noqa: B018 - the property loads the content
    return file


def _flush_open_files(fs: Any) -> None:
    """Flush every file object still open for writing, before a file is opened.

    pyfakefs's filesystem keeps each open file object in its descriptor table, so one the
    app never closes is never collected, and what it wrote stays in its buffer: after
    ``open(path, 'w').write(data)`` (CPython closes that file at once, by reference
    counting) a later ``open(path)`` read an empty file. Written data is now in the file
    when anything opens it."""
    for entry in list(getattr(fs, "open_files", None) or ()):
        for wrapper in list(entry or ()):
            try:
                if not wrapper.closed and wrapper.writable():
                    wrapper.flush()
            except Exception:  # noqa: BLE001, S112 - a broken wrapper: its own error later
                continue


def _sendfile_router(inner: Callable[..., Any]) -> Callable[..., Any]:
    def sendfile(out_fd: Any, in_fd: Any, *args: Any, **kwargs: Any) -> Any:
        memory = _memory_of(active_scope())
        if memory is not None and (memory.owns_fd(out_fd) or memory.owns_fd(in_fd)):
            # shutil then falls back to read/write copying, which is routed
            raise OSError(errno.EINVAL, "sendfile() between in-memory files")
        return inner(out_fd, in_fd, *args, **kwargs)

    return _named(sendfile, inner)


def _named_temporary_file(inner: Callable[..., Any]) -> Callable[..., Any]:
    def NamedTemporaryFile(mode: str = "w+b", buffering: int = -1,  # noqa: N802
                           encoding: str | None = None, newline: str | None = None,
                           suffix: str | None = None, prefix: str | None = None,
                           dir: str | None = None, delete: bool = True,  # noqa: A002
                           **kwargs: Any) -> Any:
        if _memory_of(active_scope()) is None:
            return inner(mode, buffering, encoding, newline, suffix, prefix, dir, delete,
                         **kwargs)
        fd, name = tempfile.mkstemp(suffix, prefix, dir, isinstance(suffix, bytes))
        try:
            file = builtins.open(fd, mode, buffering=buffering, encoding=encoding,
                                 newline=newline)
        except BaseException:
            os.unlink(name)
            os.close(fd)
            raise
        return _NamedMemoryFile(file, name, delete)

    return _named(NamedTemporaryFile, inner)


class _NamedMemoryFile:
    """What ``NamedTemporaryFile`` returns, for a file in memory (tempfile's own wrapper
    deletes with an ``os.unlink`` it captured at import, which would reach the disk)."""

    def __init__(self, file: Any, name: str, delete: bool) -> None:
        self.file = file
        self.name = name
        self.delete = delete

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.__dict__["file"], attribute)

    def __enter__(self) -> _NamedMemoryFile:
        self.file.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Any:
        return iter(self.file)

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            if self.delete:
                self.delete = False
                try:
                    os.unlink(self.name)
                except FileNotFoundError:
                    pass


def build_patches() -> list[tuple[Any, str, Any, Any]]:
    """The routers, each wrapping what is installed now (the read-only layer's wrappers;
    ``tempfile``'s makers pass that layer's check in memory mode, see ``_refuse_tempfile``)."""
    import pyfakefs.fake_filesystem  # noqa: F401 - as host code: it imports ctypes
    import pyfakefs.fake_open  # noqa: F401
    import pyfakefs.fake_os  # noqa: F401

    tempfile.gettempdir()  # found (and cached) on the real disk, as host code

    patches: list[tuple[Any, str, Any, Any]] = []

    def add(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        current = getattr(owner, name, None)
        if current is not None:
            patches.append((owner, name, current, make(current)))

    for name in PATH_FUNCTIONS:
        add(os, name, lambda inner, name=name: _path_router(name, inner))
    for name in FD_FUNCTIONS:
        add(os, name, lambda inner, name=name: _fd_router(name, inner))
    add(os, "open", _os_open_router)
    add(os, "sendfile", _sendfile_router)
    add(os, "statvfs", _statvfs_router)
    add(os, "fstatvfs", _statvfs_router)
    add(builtins, "open", _open_router)
    add(io, "open", _open_router)
    accessor = getattr(pathlib, "_NormalAccessor", None)  # 3.10 captured os functions here
    if accessor is not None:
        for name in PATH_FUNCTIONS:
            if name in vars(accessor):
                add(accessor, name, lambda inner, name=name: _path_router(name, inner))
        if "open" in vars(accessor):
            add(accessor, "open", _open_router)
    add(tempfile, "NamedTemporaryFile", _named_temporary_file)
    try:
        import fcntl
    except ImportError:  # not on this platform
        return patches
    for name in ("flock", "lockf", "fcntl", "ioctl"):
        add(fcntl, name, lambda inner, name=name: _fcntl_router(name, inner))
    return patches


# --- SQLite: its C code opens files by name, past every Python-level check ---------------

#: Scope.extras: the exact database name a judged ``sqlite3.connect`` passes on (the audit
#: layer lets that one through).
SQLITE_JUDGED = "gae_sandbox.sqlite_judged"
#: Scope.extras: set while the patched ``sqlite3.connect`` makes a connection (the audit
#: layer refuses one made any other way, which would not refuse ATTACH).
SQLITE_CONNECTING = "gae_sandbox.sqlite_connecting"
_ATTACH_RULE = ("SQLite opens an attached database (ATTACH, VACUUM INTO) in C, past the "
                "sandbox's file checks: only in-memory ones may be attached")


def sqlite_patches(module: Any) -> list[tuple[Any, str, Any, Any]]:
    """``sqlite3.connect`` (in ``sqlite3`` and ``sqlite3.dbapi2``), where a policy lets
    ``sqlite3`` load (the python3 preset): see :func:`_sqlite_connect`."""
    found: list[tuple[Any, str, Any, Any]] = []
    replacements: dict[int, Any] = {}
    for owner in (module, getattr(module, "dbapi2", None)):
        original = vars(owner).get("connect") if owner is not None else None
        if original is not None:
            replacement = replacements.setdefault(id(original), _sqlite_connect(original))
            found.append((owner, "connect", original, replacement))
    return found


def _sqlite_connect(inner: Callable[..., Any]) -> Callable[..., Any]:
    """A database file path, inside a sandbox: one where the request may write (``/tmp``
    under the python3 preset, anywhere in the memory preset) is a private in-memory database
    of the request's, shared by its connections to that path as long as its in-memory files
    live (a readable real file of that name is copied in first); any other readable file is opened
    read-only, as on the runtime's read-only disk; others are refused as reads are. A URI of
    an in-memory database (``mode=memory``, ``file::memory:``) is let through; other URIs and
    forms keep the audit layer's rule (``:memory:`` only)."""

    def connect(database: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active_scope()
        if scope is None:
            return inner(database, *args, **kwargs)
        uri = bool(args[6] if len(args) > 6 else kwargs.get("uri", False))  # read once
        if len(args) > 6:
            args = (*args[:6], uri, *args[7:])
        else:
            kwargs["uri"] = uri
        if uri:
            parts = _in_memory_uri(database)
            if parts is not None:  # the request's own name (shared caches are the process's)
                database = _private_memory_uri(scope, *parts)
                return _connecting(scope, inner, database, database, *args, **kwargs)
            return _connecting(scope, inner, database, None, *args, **kwargs)
        try:
            name = os.fsdecode(os.fspath(database))
        except TypeError:
            return _connecting(scope, inner, database, None, *args, **kwargs)
        if name in (":memory:", "") or "\0" in name:
            return _connecting(scope, inner, name, None, *args, **kwargs)
        absolute = os.path.normpath(os.path.join(scope.cwd or posix.getcwd(), name))
        if scope.memory is not None and _writable_database(scope, absolute):
            target = _memory_database(scope, inner, absolute)
        else:
            scope.judge(check_read, absolute)
            target = f"file:{urllib.parse.quote(absolute)}?mode=ro"
        if len(args) > 6:
            args = (*args[:6], True, *args[7:])
        else:
            kwargs["uri"] = True
        return _judged_connect(scope, inner, target, *args, **kwargs)

    return _named(connect, inner)


#: The URI parameters an in-memory database may carry (any other could name a file or a
#: virtual filesystem).
_MEMORY_URI_KEYS = frozenset({"mode", "cache"})


def _in_memory_uri(database: Any) -> tuple[str, str] | None:
    """An SQLite URI that opens no file, as its name and query: ``file::memory:?cache=shared``
    or any name with ``mode=memory`` (Django's test databases), with no other parameter and
    nothing percent-encoded (SQLite decodes names and values); else None."""
    if type(database) is not str or not database.startswith("file:") or (
            "%" in database or "#" in database):
        return None
    name, _, query = database[5:].partition("?")
    pairs = [part.partition("=") for part in query.split("&")] if query else []
    keys = [key for key, _, _ in pairs]
    if len(set(keys)) != len(keys) or not set(keys) <= _MEMORY_URI_KEYS:
        return None
    mode = dict((key, value) for key, _, value in pairs).get("mode")
    if mode == "memory" or (mode is None and name == ":memory:"):
        return name, query
    return None


#: Sandbox (by id, held weakly) -> the prefix of its in-memory SQLite databases' names.
_MEMORY_DATABASE_PREFIXES: dict[int, tuple[Any, str]] = {}


def _private_memory_uri(scope: Scope, name: str, query: str) -> str:
    """An in-memory URI renamed into the ``Sandbox``'s own namespace: a shared-cache
    in-memory database is shared by every connection of the process with its name (the
    host's, another app's), so the request's names get a random prefix of its ``Sandbox``'s
    (its requests share them, as an instance's would)."""
    owner = scope.owner
    known = _MEMORY_DATABASE_PREFIXES.get(id(owner))
    if known is None or known[0]() is not owner:
        if len(_MEMORY_DATABASE_PREFIXES) > 1024:
            for key, (reference, _) in list(_MEMORY_DATABASE_PREFIXES.items()):
                if reference() is None:
                    del _MEMORY_DATABASE_PREFIXES[key]
        known = (weakref.ref(owner), f"gae-sandbox-{secrets.token_hex(8)}-")
        _MEMORY_DATABASE_PREFIXES[id(owner)] = known
    if name == ":memory:":
        name = "memory"
        query = f"{query}&mode=memory" if query else "mode=memory"
    return f"file:{known[1]}{name}?{query}"


def _judged_connect(scope: Scope, inner: Callable[..., Any], target: str, *args: Any,
                    **kwargs: Any) -> Any:
    return _connecting(scope, inner, target, target, *args, **kwargs)


def _connecting(scope: Scope, inner: Callable[..., Any], database: Any, judged: str | None,
                *args: Any, **kwargs: Any) -> Any:
    """``inner(database, ...)`` marked as this library's connect (``judged``: the name it
    decided, let through as it is), then made to refuse ATTACH of a file."""
    extras = scope.extras
    extras[SQLITE_CONNECTING] = True
    if judged is not None:
        extras[SQLITE_JUDGED] = judged
    try:
        connection = inner(database, *args, **kwargs)
    finally:
        extras.pop(SQLITE_JUDGED, None)
        extras.pop(SQLITE_CONNECTING, None)
    import sqlite3

    if isinstance(connection, sqlite3.Connection):  # (a factory's subclass too)
        sqlite3.Connection.set_authorizer(connection, _refusing_attach(scope))
    return connection


def _refusing_attach(made_in: Scope) -> Callable[..., int]:
    """An authorizer: ``ATTACH`` (and ``VACUUM INTO``, which attaches its target) of a
    database file is refused; of an in-memory one allowed. SQL opens those files in C, past
    every file check. The app can replace it with ``set_authorizer`` (README: known gaps)."""
    import sqlite3

    attach, deny, allow = sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DENY, sqlite3.SQLITE_OK

    def authorize(action: int, name: Any, *_: Any) -> int:
        if action != attach or name in ("", ":memory:"):
            return allow
        scope = active_scope() or made_in  # host code using the connection: judged alike
        try:
            scope.judge(_refuse_attach, f"sqlite3 ATTACH {name!r}")
        except SandboxViolation:  # SQLite then says "not authorized"
            return deny
        return allow  # report mode: recorded and let through

    return authorize


def _refuse_attach(layer: Layer, what: str) -> SandboxViolation:
    return SystemCallRefused(what, _ATTACH_RULE, None)


def _writable_database(scope: Scope, absolute: str) -> bool:
    for layer in scope.layers:
        policy = layer.policy
        if policy.filesystem == "readonly" or (policy.filesystem == "tmp" and (
                not is_inside(absolute, TMP_FOLDERS)
                or is_inside(absolute, (policy.app_root,)))):
            return False
    return True


def _memory_database(scope: Scope, inner: Callable[..., Any], absolute: str) -> str:
    """The request's in-memory database for ``absolute``: a shared-cache one, kept alive by
    a connection of the library's own as long as the request's in-memory files (the
    request, or the ``Sandbox`` that keeps them), so each ``connect`` to the path sees what
    the others wrote."""
    memory = scope.memory
    assert memory is not None
    with memory._lock:  # one database per path, whichever thread connects first
        known = memory.databases.get(absolute)
        if known is None:
            known = memory.databases[absolute] = _new_database(scope, inner, absolute)
    return str(known[0])


def _new_database(scope: Scope, inner: Callable[..., Any], absolute: str) -> tuple[str, Any]:
    import secrets

    target = f"file:gae-sandbox-{secrets.token_hex(8)}?mode=memory&cache=shared"
    keeper = _judged_connect(scope, inner, target, uri=True)
    if os.path.isfile(absolute) and check_read(scope.layers[-1], absolute) is None:
        source = _judged_connect(scope, inner, f"file:{urllib.parse.quote(absolute)}?mode=ro",
                                 uri=True)
        try:
            source.backup(keeper)  # the real file's tables, to start from
        finally:
            source.close()
    return target, keeper


def _fcntl_router(name: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    """``fcntl``'s calls on an in-memory file (a lock file ``filelock`` makes in /tmp):
    answered here, since the kernel has no such descriptor. The file is the request's
    alone, so a lock is always granted; flags read as read-write; ``ioctl`` is a terminal's.
    Any other descriptor goes on to the real call, which the audit layer judges."""

    def call(fd: Any, *args: Any, **kwargs: Any) -> Any:
        memory = _memory_of(active_scope())
        if memory is None:
            return inner(fd, *args, **kwargs)
        number = fd if type(fd) is int else fd.fileno() if hasattr(fd, "fileno") else fd
        if type(number) is not int or not memory.owns_fd(number):
            return inner(number, *args, **kwargs)
        if name in ("flock", "lockf"):
            return None
        if name == "ioctl":
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        import fcntl

        command = args[0] if args else kwargs.get("cmd")
        argument = args[1] if len(args) > 1 else kwargs.get("arg", 0)
        if command == fcntl.F_GETFL:
            return os.O_RDWR
        if command in (fcntl.F_GETFD, fcntl.F_SETFD, fcntl.F_SETFL):
            return 0
        if command in (fcntl.F_GETLK, fcntl.F_SETLK, fcntl.F_SETLKW):
            return argument  # the lock structure as given: granted, no other holder
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    return _named(call, inner)


def apply(patches: list[tuple[Any, str, Any, Any]]) -> None:
    for owner, name, _current, replacement in patches:
        if isinstance(owner, type):  # 3.10's pathlib accessor: plain functions, not methods
            replacement = staticmethod(replacement)
        setattr(owner, name, replacement)


def restore(patches: list[tuple[Any, str, Any, Any]]) -> None:
    for owner, name, current, replacement in reversed(patches):
        installed = vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name,
                                                                                   None)
        if getattr(installed, "__func__", installed) is replacement:
            setattr(owner, name, current)
