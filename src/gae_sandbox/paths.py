"""Path resolution for sandbox decisions, built on the unpatched ``posix`` functions.

``os.path.realpath`` calls ``os.lstat``, which the sandbox patches; the checks must not judge
themselves. Resolution follows what the kernel will do: relative to the working directory,
``..`` after a symlink applies to the symlink's target, loops are unresolvable.

It costs one ``lstat`` per component. Nothing is trusted from an earlier walk without checking
it: a cached answer goes stale when the host (or another process) swaps a folder for a
symlink. :func:`realpath_of_file` keeps folders' real paths, each used again only while one
``stat`` of the folder finds the same folder. What the walk does give for
free is the ``lstat`` of the final target, which ``os.stat`` inside the sandbox returns instead
of asking the kernel again: the answer is then about the very file that was checked.
"""

from __future__ import annotations

import os

_lstat = os.lstat
_stat = os.stat
_readlink = os.readlink
_getcwd = os.getcwd
_MAX_LINKS = 40
_S_IFMT = 0o170000
_S_IFLNK = 0o120000


def realpath(path: str) -> str | None:
    """The absolute, symlink-free form of ``path``, or ``None`` (symlink loop, bad input)."""
    walked = walk(path)
    return None if walked is None else walked[0]


#: A folder as spelt -> its real path and the (device, inode, change time) of that folder.
_folders: dict[str, tuple[str, tuple[int, int, int]]] = {}


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_dev, info.st_ino, info.st_ctime_ns


def realpath_of_file(path: str) -> str | None:
    """:func:`realpath`, with the real path of the file's folder remembered and used again
    only while ``stat`` of the folder as spelt finds that same folder (its device, inode and
    change time: a replacement or a rename changes one) and the file itself is not a
    symlink: two system calls instead of one ``lstat`` per component. For the files of the
    modules an import loads, many per folder."""
    if type(path) is not str:
        return realpath(path)
    folder, _, name = path.rpartition("/")
    if not folder or not name or name in (".", "..") or path[0] != "/":
        return realpath(path)
    try:
        known = _folders.get(folder)
        if known is not None:
            real, identity = known
            if _identity(_stat(folder)) != identity:
                del _folders[folder]
                return realpath(path)
        else:
            real_folder = realpath(folder)
            if real_folder is None:
                return realpath(path)
            real = real_folder
            identity = _identity(_stat(real))
            if _identity(_stat(folder)) != identity:  # changed while it was walked
                return realpath(path)
            if len(_folders) >= 4096:
                _folders.clear()
            _folders[folder] = real, identity
        final = _lstat(path)
    except (OSError, ValueError):
        return realpath(path)
    if final.st_mode & _S_IFMT == _S_IFLNK:
        return realpath(path)
    return f"{real}/{name}" if real != "/" else f"/{name}"


def walk(path: str) -> tuple[str, os.stat_result | None, bool] | None:
    """``(realpath, final, direct)``, or ``None`` (symlink loop, bad input).

    ``final`` is the ``lstat`` of the resolved path when every component existed, none was
    ``..`` and the last one named an existing non-symlink: then it is what ``stat(path)``
    sees. It is ``None`` otherwise (a missing component, ``..``, a trailing ``/`` or ``.``:
    the kernel may answer ENOENT or ENOTDIR where the lexical walk goes on). ``direct`` is
    whether no symlink was followed, so that ``final`` is also what ``lstat(path)`` sees.
    """
    if not path or "\0" in path:
        return None
    if path[0] != "/":
        try:
            path = _getcwd() + "/" + path
        except OSError:
            return None
    pending = path.split("/")
    pending.reverse()
    resolved = ""  # "" is the root
    final = None
    exact = True  # no missing component and no "..": the kernel walks the same way
    links = 0
    lstat = _lstat
    while pending:
        part = pending.pop()
        if not part or part == ".":
            final = None  # "name/" and "name/." may not be what lstat(name) says
            continue
        if part == "..":
            resolved = resolved.rpartition("/")[0]
            final = None
            exact = False  # the kernel refuses ".." after a file; the walk does not check
            continue
        candidate = resolved + "/" + part
        try:
            final = lstat(candidate)
        except (OSError, ValueError):
            resolved = candidate  # does not exist (yet): the rest resolves lexically
            final = None
            exact = False
            continue
        if final.st_mode & _S_IFMT != _S_IFLNK:
            resolved = candidate
            continue
        final = None
        links += 1
        if links > _MAX_LINKS:
            return None
        try:
            target = _readlink(candidate)
        except OSError:
            return None
        if target.startswith("/"):
            resolved = ""
        parts = target.split("/")
        parts.reverse()
        pending.extend(parts)
    return resolved or "/", final if exact else None, links == 0


def is_inside(path: str, roots: tuple[str, ...]) -> bool:
    """Whether the resolved ``path`` is one of ``roots`` or below one (whole components:
    ``/app/root2`` is not inside ``/app/root``)."""
    for root in roots:
        if path == root or path.startswith(root + "/"):
            return True
    return False
