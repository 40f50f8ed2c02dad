"""Helpers for the fidelity tests (see ``conftest.py``)."""

from __future__ import annotations

import _locale
import os
import platform
import posix
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def host_state() -> dict[str, Any]:
    """What a request must never change in the process (read as host code)."""
    return {
        "cwd": posix.getcwd(),
        "locale": _locale.setlocale(_locale.LC_ALL),
        "ids": (os.getpid(), os.getppid(), os.getuid(), os.geteuid(), os.getgid(),
                os.getegid(), os.getpgrp(), tuple(os.getgroups())),
        "priority": os.getpriority(os.PRIO_PROCESS, 0),
        "uname": os.uname(),
        "platform": tuple(platform.uname()[:5]),
    }


@contextmanager
def fresh_modules(*prefixes: str) -> Iterator[None]:
    """Forget the modules named ``prefix`` or ``prefix.*`` so the body imports them anew
    (through the finders), then put the host's back (nothing else sees a second copy)."""
    def matches(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    saved = {name: module for name, module in sys.modules.items() if matches(name)}
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        for name in [n for n in sys.modules if matches(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its size and modification time: a write,
    creation or removal changes it."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}
