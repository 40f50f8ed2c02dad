"""The filesystem view: the app root, the policy's readable folders and the interpreter's
library folders, read-only.

Paths are resolved the way the kernel will resolve them (relative to the working directory,
``..`` and symlinks followed) before they are compared by whole path components, so neither a
string-prefix sibling (``/app/root2``), nor ``..``, nor a symlink leaves the readable set.
"""

from __future__ import annotations

import mimetypes
import os
import pathlib
from contextvars import ContextVar
from typing import Any

from .context import Layer, Scope
from .errors import FileReadRefused, FileWriteRefused, SandboxViolation, SystemCallRefused
from .paths import is_inside, realpath, walk

#: os.open flags that change the filesystem.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
if hasattr(os, "O_TMPFILE"):
    WRITE_FLAGS |= os.O_TMPFILE

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
    try:
        return realpath(value if type(value) is str else os.fsdecode(value))
    except (TypeError, ValueError, OSError):
        return None


def resolve_walk(value: str | bytes) -> tuple[str, os.stat_result | None, bool] | None:
    """:func:`paths.walk` of a :func:`stable_path` value: the resolved path and the
    ``lstat`` of its target, for ``os.stat`` to answer from the very file it checked."""
    try:
        return walk(value if type(value) is str else os.fsdecode(value))
    except (TypeError, ValueError, OSError):
        return None


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
    """:func:`check_read` of ``path`` once resolved (``None``: it could not be)."""
    if resolved is not None and is_inside(resolved, layer.readable_roots):
        policy = layer.policy
        if not (policy.unreadable_paths or policy.skip_files):
            return None  # the two settings Policy.hidden_by looks at
        hidden_by = policy.hidden_by(resolved)
        if hidden_by is None:
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
        if path in scope.opened_fds:
            return None
        return SystemCallRefused(
            f"open(fd {path})", "only file descriptors the request opened are its own", None
        )
    writes = isinstance(flags, int) and bool(flags & WRITE_FLAGS)
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        writes = True
    if writes:
        how = f"open mode {mode!r}" if isinstance(mode, str) else f"os.open flags {flags:#o}"
        return check_write(layer, path, how)
    return check_read(layer, path)
