"""Path resolution for sandbox decisions, built on the unpatched ``posix`` functions.

``os.path.realpath`` calls ``os.lstat``, which the sandbox patches; the checks must not judge
themselves. Resolution follows what the kernel will do: relative to the working directory,
``..`` after a symlink applies to the symlink's target, loops are unresolvable.
"""

from __future__ import annotations

import os
import stat

_lstat = os.lstat
_readlink = os.readlink
_getcwd = os.getcwd
_MAX_LINKS = 40


def realpath(path: str) -> str | None:
    """The absolute, symlink-free form of ``path``, or ``None`` (symlink loop, bad input)."""
    if not path or "\0" in path:
        return None
    if not path.startswith("/"):
        try:
            path = _getcwd() + "/" + path
        except OSError:
            return None
    pending = [part for part in reversed(path.split("/")) if part]
    resolved = ""  # "" is the root
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            resolved = resolved.rpartition("/")[0]
            continue
        candidate = f"{resolved}/{part}"
        try:
            mode = _lstat(candidate).st_mode
        except (OSError, ValueError):
            resolved = candidate  # does not exist (yet): the rest resolves lexically
            continue
        if not stat.S_ISLNK(mode):
            resolved = candidate
            continue
        links += 1
        if links > _MAX_LINKS:
            return None
        try:
            target = _readlink(candidate)
        except OSError:
            return None
        if target.startswith("/"):
            resolved = ""
        pending.extend(part for part in reversed(target.split("/")) if part)
    return resolved or "/"


def is_inside(path: str, roots: tuple[str, ...]) -> bool:
    """Whether the resolved ``path`` is one of ``roots`` or below one (whole components:
    ``/app/root2`` is not inside ``/app/root``)."""
    for root in roots:
        if path == root or path.startswith(root + "/"):
            return True
    return False
