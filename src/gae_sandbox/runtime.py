"""What the emulated App Engine python27 runtime allowed, in Python 3 names.

Facts about the runtime (from its documentation and its SDK): its C-module allow-list is mapped
to its Python 3 names (cPickle -> _pickle, thread -> _thread, _sha -> _sha1, ...); modules new
in Python 3 that only carry the interpreter's own machinery are added; everything that reaches
the OS (ctypes, mmap, _socket, _posixsubprocess, fcntl, ...) stays out.
"""

from __future__ import annotations

import os
import sys
import sysconfig

#: C modules (built-in or shared libraries) that app code may import directly.
RUNTIME_C_MODULES: frozenset[str] = frozenset(
    {
        # The python27 list, in Python 3 names.
        "array", "_ast", "binascii", "_bisect", "_bz2", "cmath", "_codecs", "_codecs_cn",
        "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw",
        "_collections", "_crypt", "_pickle", "_io", "_csv", "_datetime", "_elementtree",
        "errno", "builtins", "_functools", "gc", "_hashlib", "_heapq", "_imp", "itertools",
        "_json", "_locale", "_lsprof", "__main__", "marshal", "math", "_md5",
        "_multibytecodec", "_operator", "pyexpat", "_random", "_sha1", "_sha256", "_sha512",
        "_sre", "_struct", "_symtable", "sys", "_thread", "time", "unicodedata", "_warnings",
        "_weakref", "zipimport", "zlib",
        # New in Python 3: the interpreter's own pure machinery, no OS access.
        "_abc", "_blake2", "_sha2", "_sha3", "_contextvars", "_decimal", "_lzma", "_opcode",
        "_queue", "_stat", "_statistics", "_string", "_tokenize", "_typing", "_zoneinfo",
        "_uuid", "_asyncio", "atexit", "_tracemalloc",
        # select: the SDK allowed it from 1.9.81 (with _socket), and urllib3 needs it.
        "select",
    }
)

#: Standard-library modules the runtime offered only when app.yaml asked for their library
#: (``libraries: - name: ssl``), module -> library: refused to every importer otherwise, even
#: when the host has imported them, so ``import ssl`` fails as it did there and libraries such
#: as urllib3 take their fallback.
LIBRARY_MODULES: dict[str, str] = {"ssl": "ssl", "_ssl": "ssl"}

#: Modules the runtime removed or replaced by an empty stub: refused for every importer,
#: the standard library included, as on the runtime.
PYTHON27_BLOCKED_MODULES: tuple[str, ...] = (
    "ctypes",
    "_ctypes",
    "multiprocessing",
    "_multiprocessing",
    "_posixshmem",
    "sqlite3",
    "_sqlite3",
    "mmap",
    "pty",
    "tty",
    "termios",
    "fcntl",
    "resource",
    "_xxsubinterpreters",
    "_interpreters",
    "_testcapi",
    "_testinternalcapi",
)

#: Names of every standard-library module, top level (3.10+ has the list built in).
STDLIB_MODULE_NAMES: frozenset[str] = frozenset(sys.stdlib_module_names)


def _base_paths() -> dict[str, str]:
    """sysconfig paths of the base interpreter (a virtualenv points its own elsewhere)."""
    base = sys.base_prefix
    return sysconfig.get_paths(vars={
        "base": base, "platbase": base, "installed_base": base, "installed_platbase": base,
    })


def _dynload_names() -> set[str]:
    folders = {os.path.join(_base_paths()["platstdlib"], "lib-dynload")}
    folders.update(p for p in sys.path if os.path.basename(p) == "lib-dynload")
    names: set[str] = set()
    for folder in folders:
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        names.update(e.split(".", 1)[0] for e in entries if e.endswith((".so", ".pyd")))
    return names


#: Standard-library modules written in C: judged by name, as the build decides whether each
#: is built in or a shared library.
STDLIB_C_MODULES: frozenset[str] = frozenset(set(sys.builtin_module_names) | _dynload_names())


def stdlib_folders() -> tuple[str, ...]:
    """The standard library's own folders (site-packages excluded)."""
    base = _base_paths()
    folders = [base["stdlib"], base["platstdlib"], sysconfig.get_path("stdlib"),
               sysconfig.get_path("platstdlib")]
    folders += [p for p in sys.path if os.path.basename(p) == "lib-dynload"]
    seen: dict[str, None] = {}
    for folder in folders:
        if folder:
            seen.setdefault(os.path.realpath(folder), None)
    return tuple(seen)


def interpreter_library_folders() -> tuple[str, ...]:
    """The interpreter's own library folders: readable by the app, like on the runtime.

    Site-packages are included: pure-Python packages installed beside the app are its
    libraries (the runtime's ``libraries:`` and vendored ``lib/`` folders).
    """
    folders: list[str] = []
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_path(key)
        if path:
            folders.append(path)
    base = _base_paths()
    folders += [base["stdlib"], base["platstdlib"]]
    folders += [p for p in sys.path if os.path.basename(p) == "lib-dynload"]
    try:
        import site

        folders += site.getsitepackages()
        if site.ENABLE_USER_SITE:
            folders.append(site.getusersitepackages())
    except (AttributeError, ImportError):  # virtualenv's old site.py lacks these
        pass
    # gettext's default catalogues (sys.base_prefix/share/locale)
    folders += [os.path.join(prefix, "share", "locale") for prefix in (sys.base_prefix,
                                                                        sys.prefix)]
    tzpath = sysconfig.get_config_var("TZPATH") or ""
    folders += [p for p in tzpath.split(os.pathsep) if p]
    # the standard library's zip archive on sys.path (python311.zip), which the import
    # system and importlib.metadata look at whether it exists or not
    stdlib_zip = f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    folders += [p for p in sys.path if os.path.basename(p) == stdlib_zip]
    seen: dict[str, None] = {}
    for folder in folders:
        seen.setdefault(os.path.realpath(folder), None)
    return tuple(seen)
