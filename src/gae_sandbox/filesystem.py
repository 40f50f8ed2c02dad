"""The filesystem view: the app root, the policy's readable folders and the interpreter's
library folders, read-only.

Paths are resolved the way the kernel will resolve them (relative to the working directory,
``..`` and symlinks followed) before they are compared by whole path components, so neither a
string-prefix sibling (``/app/root2``), nor ``..``, nor a symlink leaves the readable set.
"""

from __future__ import annotations

import os
from typing import Any

from .context import Layer
from .errors import FileReadRefused, FileWriteRefused, SandboxViolation
from .paths import is_inside, realpath

#: os.open flags that change the filesystem.
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
if hasattr(os, "O_TMPFILE"):
    WRITE_FLAGS |= os.O_TMPFILE

_READ_RULE = "path is outside the readable folders (the app root, the interpreter's library)"
_WRITE_RULE = "the filesystem is read-only"


def resolve(path: Any) -> str | None:
    """The absolute, symlink-free form of ``path``; ``None`` if it cannot be resolved."""
    try:
        text = os.fsdecode(os.fspath(path))
        return realpath(text)
    except (TypeError, ValueError, OSError):
        return None


def describe(path: Any) -> str:
    """A readable name for a path argument in messages and reports."""
    if isinstance(path, int):
        return f"fd {path}"
    try:
        return os.fsdecode(os.fspath(path))
    except (TypeError, ValueError):
        return repr(path)


def check_read(layer: Layer, path: Any) -> SandboxViolation | None:
    """Refuse reading ``path`` unless it resolves inside the layer's readable folders."""
    if isinstance(path, int):
        return None  # an fd the request already holds; opening it again reads nothing new
    resolved = resolve(path)
    if resolved is not None and is_inside(resolved, layer.readable_roots):
        return None
    target = describe(path)
    if resolved is not None and resolved != target:
        target = f"{target} (resolves to {resolved})"
    return FileReadRefused(target, _READ_RULE, "readable_paths")


def check_write(layer: Layer, path: Any, operation: str) -> SandboxViolation | None:
    """Refuse every write: the runtime's filesystem was read-only."""
    target = describe(path)
    if operation:
        target = f"{target} ({operation})"
    return FileWriteRefused(target, _WRITE_RULE, None)


def check_open(layer: Layer, path: Any, mode: Any, flags: Any) -> SandboxViolation | None:
    """The ``open`` audit event: writes refused, reads limited to the readable folders."""
    writes = isinstance(flags, int) and bool(flags & WRITE_FLAGS)
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        writes = True
    if writes:
        how = f"open mode {mode!r}" if isinstance(mode, str) else f"os.open flags {flags:#o}"
        return check_write(layer, path, how)
    return check_read(layer, path)
