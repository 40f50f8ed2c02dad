"""Static portability scan: what in an app tree would the App Engine runtime refuse?

The scan reads the app's files and parses them with :mod:`ast`; it never imports or executes
them, so it is safe on untrusted trees and finds problems in code paths a test run never
reaches. It judges the app for one runtime, its *profile* (:data:`PROFILES`): app.yaml's
``runtime:`` picks it (``python27`` without an app.yaml), a ``preset`` overrides it. For
python27 it judges imports by the same rules as the runtime's import gate (``imports.py``)
and flags calls the sandbox refuses at run time (writes, processes, sockets, signals, ...);
for the python3 runtimes only writes outside ``/tmp`` (the one folder they can write), with
the written path followed through the module's assignments where it can be known statically.
Test files are left out unless asked for; findings in vendored third-party folders are marked
with their package so reports can group them. Used by the ``check`` command.
"""

from __future__ import annotations

import ast
import csv
import fnmatch
import functools
import importlib.util
import io
import os
import posixpath
import re
import stat
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

from .appyaml import DEFAULT_SKIP_FILES, LIBRARIES, AppYamlError, load_app_yaml
from .policy import module_matches
from .runtime import (
    LIBRARY_MODULES,
    PYTHON27_BLOCKED_MODULES,
    RUNTIME_C_MODULES,
    STDLIB_C_MODULES,
)

#: Every kind of finding, in the order summaries list them.
KINDS: tuple[str, ...] = (
    "syntax", "unreadable", "app_yaml", "c_extension", "import", "file_write", "possible_write",
    "tempfile", "process", "network", "system",
)

#: Folders that are tooling, not the app: never deployed in practice, never scanned.
SKIPPED_FOLDERS: frozenset[str] = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".nox"}
)

#: Test files: never run in production, left out unless ``include_tests`` (shell patterns on
#: the file name; any folder on the path named in TEST_FOLDERS).
TEST_FILE_PATTERNS: tuple[str, ...] = ("test_*.py", "*_test.py", "tests.py", "conftest.py")
TEST_FOLDERS: frozenset[str] = frozenset({"test", "tests"})

#: Folder names that conventionally hold vendored third-party code (``pip install -t lib``,
#: ``google.appengine.ext.vendor.add("lib")``): each entry inside one is a package, unless the
#: folder is itself a Python package (``numpy/lib/__init__.py``). A folder holding
#: ``*.dist-info`` or ``*.egg-info`` metadata is a vendor folder whatever its name.
VENDOR_FOLDERS: frozenset[str] = frozenset({
    "lib", "libs", "vendor", "vendored", "third_party", "thirdparty", "third-party",
    "site-packages", "dist-packages",
})
_METADATA_ENDINGS = (".dist-info", ".egg-info")
_MAX_METADATA_BYTES = 4 * 1024 * 1024

#: Third-party C libraries the runtime offered through app.yaml ``libraries:``: the library
#: name and the top-level modules (or globs) it provides, as the app.yaml reader maps them.
C_LIBRARIES: dict[str, tuple[str, ...]] = {
    name: LIBRARIES[name]
    for name in ("numpy", "lxml", "PIL", "pycrypto", "ssl", "MySQLdb", "matplotlib", "cv",
                 "grpcio")
    if LIBRARIES.get(name)
}

#: Source files larger than this are reported, not parsed (generated or hostile input).
MAX_SOURCE_BYTES = 8 * 1024 * 1024

_EXTENSION_ENDINGS = (".so", ".pyd")

_READONLY_FIX = ("keep data in the Datastore, Cloud Storage or memcache; use "
                 "io.BytesIO() or tempfile.TemporaryFile() for scratch data")
_PROCESS_FIX = "do the work in Python in the request, or hand it to a task queue or a service"
_NETWORK_FIX = "make HTTP(S) requests through URL Fetch: urllib.request or requests"
_SIGNAL_FIX = "remove it; the runtime raises DeadlineExceededError at the request deadline"
_ENVIRON_FIX = "set the variable in app.yaml env_variables:"
_TEMPFILE_FIX = "use tempfile.TemporaryFile() or io.BytesIO(), both in memory"
_CHDIR_FIX = ("build paths from the app's folder instead: "
              "os.path.join(os.path.dirname(__file__), ...)")
_READONLY_RULE = "files are read-only on the runtime"
_LOG_FIX = ("log without a file: the runtime keeps what the logging module writes to the "
            "default handler (or a logging.StreamHandler) with each request")
_UNKNOWN_MODE_FIX = ("make sure it opens for reading on the runtime; " + _READONLY_FIX)
_TMP_FIX = ("write under tempfile.gettempdir() (/tmp: in memory, lost when the instance "
            "stops), or keep data in Cloud Storage or a database")
_TMP_UNKNOWN_PATH_FIX = ("make sure the path is beneath /tmp: build it from "
                         "tempfile.gettempdir()")
_TMP_UNKNOWN_MODE_FIX = ("make sure it opens for reading, or that the path is beneath /tmp "
                         "(build it from tempfile.gettempdir())")
_TMP_LOG_FIX = ("log without a file: the runtime sends what the logging module writes to "
                "stderr (the default handler, or a logging.StreamHandler) to Cloud Logging; "
                "or put the file under tempfile.gettempdir()")

#: Suggestions for modules the runtime does not offer at all.
_BLOCKED_FIXES: dict[str, str] = {
    "ctypes": "no setting enables it: replace the native call with pure Python",
    "_ctypes": "no setting enables it: replace the native call with pure Python",
    "multiprocessing": "use threads, joined at the end of the request, or task queues",
    "sqlite3": "store data in the Datastore or Cloud SQL",
    "_sqlite3": "store data in the Datastore or Cloud SQL",
    "mmap": "read the file into memory instead",
}
_BLOCKED_FIX = "no setting enables it: remove the import or guard it with try/except ImportError"

#: Wrappers to suggest for standard-library C modules imported directly.
_C_WRAPPERS: dict[str, str] = {
    "posix": "os", "nt": "os", "_socket": "socket",
    "_signal": "signal", "_posixsubprocess": "subprocess",
}

_OPENERS: dict[str, int] = {  # callee -> position of the mode argument
    "open": 1, "builtins.open": 1, "io.open": 1, "codecs.open": 1, "gzip.open": 1,
    "gzip.GzipFile": 1, "bz2.open": 1, "bz2.BZ2File": 1, "lzma.open": 1, "lzma.LZMAFile": 1,
    "tarfile.open": 1, "zipfile.ZipFile": 1, "pathlib.Path.open": 1,
    "pathlib.PosixPath.open": 1, "pathlib.WindowsPath.open": 1,
}
#: Keywords naming the file of an opener (its first argument).
_FILE_KEYWORDS = ("file", "filename", "name")
#: Calls building a file-like object in memory: an opener given one writes nothing to disk.
_IN_MEMORY_FILES = frozenset({"io.BytesIO", "io.StringIO"})
_PATH_CLASSES = frozenset({"pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath"})
_PATH_MAKERS = _PATH_CLASSES | {f"{c}.{m}" for c in _PATH_CLASSES for m in ("cwd", "home")}
_OS_WRITES = frozenset({
    "remove", "unlink", "rename", "renames", "replace", "mkdir", "makedirs", "rmdir",
    "removedirs", "chmod", "lchmod", "fchmod", "chown", "lchown", "fchown", "utime", "symlink",
    "link", "truncate", "ftruncate", "mkfifo", "mknod", "chflags", "lchflags", "setxattr",
    "removexattr",
})
_OS_WRITE_FLAGS = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"})
_OS_WRITE_BITS = sum({getattr(os, flag, 0) for flag in _OS_WRITE_FLAGS})  # distinct bits
_SHUTIL_WRITES = frozenset({"move", "rmtree", "make_archive", "unpack_archive", "chown"})
_OS_PROCESS = frozenset({"system", "popen", "fork", "forkpty", "kill", "killpg", "startfile"})
_OS_PROCESS_PREFIXES = ("exec", "spawn", "posix_spawn")
_SOCKET_CALLS = frozenset({"socket", "create_connection", "create_server", "socketpair",
                           "fromfd", "SocketType"})
_SIGNAL_CALLS = frozenset({"signal", "alarm", "setitimer", "pthread_sigmask", "siginterrupt",
                           "set_wakeup_fd", "pause", "sigwait", "sigwaitinfo", "sigtimedwait"})
_TEMPFILE_ALLOWED = frozenset({"TemporaryFile", "SpooledTemporaryFile"})
#: Logging handlers that open a file for writing when built.
_LOG_FILE_HANDLERS = frozenset({
    "logging.FileHandler", "logging.handlers.RotatingFileHandler",
    "logging.handlers.TimedRotatingFileHandler", "logging.handlers.WatchedFileHandler",
    "logging.handlers.BaseRotatingHandler",
})
#: Process-wide state the runtime refuses to change: callee -> (rule, fix).
_SYSTEM_CALLS: dict[str, tuple[str, str]] = {
    "os.putenv": ("the process environment is shared with the host", _ENVIRON_FIX),
    "os.unsetenv": ("the process environment is shared with the host", _ENVIRON_FIX),
    "os.chdir": ("the working folder is process-wide; the runtime runs the app in its own "
                 "folder and refuses chdir", _CHDIR_FIX),
    "os.fchdir": ("the working folder is process-wide; the runtime runs the app in its own "
                  "folder and refuses chdir", _CHDIR_FIX),
    "os.umask": ("the file mode mask is process-wide", "remove it: the runtime's files are "
                 "read-only, so there is nothing to mask"),
}
#: Methods that write whatever their receiver is (pathlib paths, in practice).
_PATH_WRITE_METHODS = frozenset({"write_text", "write_bytes", "touch", "mkdir", "rmdir",
                                 "unlink", "symlink_to", "hardlink_to", "link_to", "chmod",
                                 "lchmod"})
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_MODE_LIKE = re.compile(r"[rwxabtU+]{1,4}")


@dataclass(frozen=True)
class _Profile:
    """What one runtime refuses, as the scan reports it.

    ``kinds`` are the kinds of findings its refusals make: the scan reports only those.
    ``writable`` are the folders beneath which it lets the app write: none means every write
    is refused, whatever its path; otherwise a write is judged on its path, and reported
    when the path is outside them or not known statically. The texts are the rules and
    fixes of write findings.
    """

    name: str
    kinds: frozenset[str]
    writable: tuple[str, ...]
    read_only: str  # the rule of a write the runtime refuses
    fix: str
    log_fix: str  # the fix of a log file the runtime refuses
    unknown_mode: str  # what a mode (or flags) not known statically means
    unknown_mode_fix: str
    unknown_path: str = ""  # the rule of a write whose path is not known statically
    unknown_path_fix: str = ""


#: The runtimes a scan judges an app for: app.yaml ``runtime:`` picks one (python27 without
#: an app.yaml; python3 for ``python3``, ``python37`` ... ``python314``), a preset overrides.
_PROFILES: dict[str, _Profile] = {
    "python27": _Profile(
        "python27", frozenset(KINDS), (), _READONLY_RULE, _READONLY_FIX, _LOG_FIX,
        "writes are refused at run time", _UNKNOWN_MODE_FIX),
    # Any module and C extension, processes, sockets, tempfile, signals: only writes outside
    # /tmp are refused (Policy.python3, filesystem="tmp"; memoryfs.TMP_FOLDERS).
    "python3": _Profile(
        "python3", frozenset({"syntax", "unreadable", "app_yaml", "file_write",
                              "possible_write"}),
        ("/tmp",), "the python3 runtime's filesystem is read-only except /tmp", _TMP_FIX,
        _TMP_LOG_FIX, "writes outside /tmp are refused at run time", _TMP_UNKNOWN_MODE_FIX,
        "write; allowed only beneath /tmp on the python3 runtime", _TMP_UNKNOWN_PATH_FIX),
}
PROFILES: tuple[str, ...] = tuple(_PROFILES)


@dataclass(frozen=True)
class Finding:
    """One thing the runtime would refuse: where, what, why, and what would fix it.

    ``file`` is relative to the app folder (``/``-separated, undecodable bytes escaped);
    ``library`` names the app.yaml ``libraries:`` entry that would allow it, if any;
    ``vendored`` names the third-party package the file belongs to when it sits in a vendored
    folder (``lib/requests/...`` -> ``"requests"``), ``None`` for the app's own code.
    """

    kind: str
    file: str
    line: int
    target: str
    rule: str
    fix: str
    library: str | None = None
    vendored: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.file}:{self.line}: {self.kind}: {self.target} \u2014 {self.rule} "
                f"({self.fix})")


@dataclass(frozen=True)
class ScanResult:
    """What a scan found, and what it left out.

    ``app`` is the app folder (real path); ``app_yaml`` the app.yaml whose settings the scan
    used, if any (``None`` without one, or when it is broken);
    ``skipped_tests`` the test files not scanned (relative paths), empty with
    ``include_tests``; ``profile`` the runtime the app was judged for (:data:`PROFILES`) and
    ``profile_reason`` what chose it (``"app.yaml runtime: python312"``).
    """

    app: str
    findings: list[Finding]
    skipped_tests: list[str]
    app_yaml: str | None = None
    profile: str = "python27"
    profile_reason: str = "no app.yaml; the default"


def scan(app_dir: str | os.PathLike[str], *, enabled_libraries: Iterable[str] | None = None,
         include_tests: bool = False, preset: str | None = None) -> list[Finding]:
    """Scan the app folder (or app.yaml) and return its findings sorted by file and line.

    See :func:`scan_app`, which also says what was left out.
    """
    return scan_app(app_dir, enabled_libraries=enabled_libraries,
                    include_tests=include_tests, preset=preset).findings


def scan_app(app: str | os.PathLike[str], *, enabled_libraries: Iterable[str] | None = None,
             include_tests: bool = False, preset: str | None = None) -> ScanResult:
    """Scan an app: its folder, or its app.yaml file (any name, as ``serve`` takes it).

    The app is judged for one runtime, its profile (:data:`PROFILES`): ``preset`` when given
    (as ``--preset`` gives it), else app.yaml's ``runtime:`` (``python3``, ``python37`` ...
    pick python3), else python27. ``enabled_libraries`` are app.yaml ``libraries:`` names
    already enabled; ``None`` reads them from the app.yaml. Test files
    (:data:`TEST_FILE_PATTERNS`, :data:`TEST_FOLDERS`) are left out unless
    ``include_tests``. Given a folder, a broken app.yaml in it is a finding; given an
    app.yaml file, its folder is scanned with its ``skip_files`` and a broken one raises
    :class:`AppYamlError`. Raises ``ValueError`` for an unknown ``preset`` and
    ``NotADirectoryError`` when ``app`` is neither an existing folder nor a file; problems
    inside the tree are findings, never exceptions.
    """
    if preset is not None and preset not in _PROFILES:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PROFILES)}")
    location = os.fspath(app)
    findings: list[Finding] = []
    app_yaml: str | None = None
    if os.path.isfile(location):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys are not portability problems
            loaded = load_app_yaml(location)
        root = os.path.realpath(loaded.app_root)
        app_yaml = os.path.join(root, os.path.basename(loaded.path))
        config = _AppYaml(tuple(name for name, _version in loaded.libraries),
                          loaded.skip_files, loaded.path, loaded.runtime, loaded.preset)
    else:
        root = os.path.realpath(location)
        if not os.path.isdir(root):
            raise NotADirectoryError(f"{location!r} is not an existing folder")
        config = _read_app_yaml(root, findings)
        app_yaml = config.path
    profile, reason = _choose_profile(preset, config)
    enabled = set(config.libraries if enabled_libraries is None else enabled_libraries)
    skip = _skipper(DEFAULT_SKIP_FILES + config.skip_files)
    listed: dict[str, list[str]] = {}
    files = list(_walk(root, skip, findings, listed))
    skipped_tests = [] if include_tests else [rel for _, rel in files if is_test_file(rel)]
    skipped = set(skipped_tests)
    own = _own_top_modules(root)
    vendoring = _Vendoring(root, listed)
    for path, rel in files:
        if rel in skipped:
            continue
        if rel.endswith(_EXTENSION_ENDINGS):
            found = [_extension_finding(rel, enabled)]
        else:
            found = _scan_source(path, rel, own, enabled, profile)
        package = vendoring.package_of(rel)
        if package is not None:
            found = [replace(f, vendored=package) for f in found]
        findings.extend(found)
    # the profile's filter: only what its runtime refuses
    unique = {(f.file, f.line, f.kind, f.target): f for f in findings if f.kind in profile.kinds}
    ordered = sorted(unique.values(), key=lambda f: (f.file, f.line, f.kind, f.target))
    return ScanResult(root, ordered, [_display(rel) for rel in skipped_tests], app_yaml,
                      profile.name, reason)


def is_test_file(rel: str) -> bool:
    """Whether a file (path relative to the app, ``/``-separated) is a test, not app code."""
    *folders, name = rel.split("/")
    return (any(folder in TEST_FOLDERS for folder in folders)
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in TEST_FILE_PATTERNS))


def libraries_needed(findings: Iterable[Finding]) -> list[str]:
    """The app.yaml ``libraries:`` names the findings call for, sorted."""
    return sorted({f.library for f in findings if f.library})


def libraries_yaml(names: Iterable[str]) -> str:
    """A ready-to-paste app.yaml ``libraries:`` block (empty string for no names)."""
    names = list(names)
    if not names:
        return ""
    return "libraries:\n" + "".join(f"- name: {n}\n  version: latest\n" for n in names)


def summary(findings: Iterable[Finding]) -> dict[str, int]:
    """Counts per kind, in :data:`KINDS` order (unknown kinds last)."""
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    order = {kind: i for i, kind in enumerate(KINDS)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


# --- app.yaml -------------------------------------------------------------------------------


@dataclass
class _AppYaml:
    libraries: tuple[str, ...] = ()
    skip_files: tuple[str, ...] = ()
    path: str | None = None
    runtime: str | None = None
    preset: str | None = None
    problem: str = "no app.yaml"  # why there is no runtime


def _choose_profile(preset: str | None, config: _AppYaml) -> tuple[_Profile, str]:
    """The profile to scan with, and what chose it: the preset, app.yaml, the default."""
    said = (f"{os.path.basename(config.path or 'app.yaml')} runtime: {config.runtime}"
            if config.runtime else None)
    if preset is not None:
        over = f", over {said}" if said and config.preset != preset else ""
        return _PROFILES[preset], f"--preset {preset}{over}"
    if said and config.preset in _PROFILES:
        return _PROFILES[config.preset], said
    return _PROFILES["python27"], f"{config.problem}; the default"


def _read_app_yaml(root: str, findings: list[Finding]) -> _AppYaml:
    """The app.yaml keys the scan needs, read as the dev server reads them; a broken
    app.yaml is a finding (the scan goes on with the defaults), never an error."""
    if not any(os.path.isfile(os.path.join(root, n)) for n in ("app.yaml", "app.yml")):
        return _AppYaml()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys are not portability problems
            config = load_app_yaml(root)
    except AppYamlError as error:
        message = str(error)
        match = re.match(r"(.*?app\.ya?ml)(?::(\d+))?: (.*)", message, re.DOTALL)
        name, line, what = (os.path.basename(match[1]), int(match[2] or 1), match[3]) if (
            match) else ("app.yaml", 1, message)
        findings.append(Finding("app_yaml", _display(name), line, _display(name),
                                f"app.yaml is not valid: {what}",
                                "fix app.yaml; the scan used the default skip_files"))
        return _AppYaml(problem="app.yaml not valid")
    return _AppYaml(tuple(name for name, _version in config.libraries), config.skip_files,
                    config.path, config.runtime, config.preset)


# --- the tree -------------------------------------------------------------------------------


def _display(rel: str) -> str:
    """A path safe to print: undecodable bytes of a file name become escapes."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _skipper(patterns: Iterable[str]) -> Callable[[str], bool]:
    """``skip_files`` as a test on relative paths; each pattern compiled on its own, so one
    with inline flags cannot break the others."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error:
            continue
    return lambda rel: any(p.match(rel) for p in compiled)


def _walk(root: str, skip: Callable[[str], bool], findings: list[Finding],
          listed: dict[str, list[str]] | None = None) -> Iterator[tuple[str, str]]:
    """``(path, relative path)`` of each Python source and shared library the app deploys.

    Iterative, in name order. Symlinks are followed only when they point inside the app, and
    only after the real tree, so files are named by their real location; each folder and file
    is taken once (symlink loops end). FIFOs and devices are never opened. ``listed`` receives
    the entry names of every folder listed (relative path -> names).
    """
    top = os.stat(root)
    seen: set[tuple[int, int]] = {(top.st_dev, top.st_ino)}
    pending: list[tuple[str, str]] = [(root, "")]
    linked: list[tuple[str, str, str]] = []  # symlinks inside the app: (target, rel, name)
    while pending or linked:
        candidates: list[tuple[str, str, str]] = []
        if pending:
            folder, rel_folder = pending.pop()
            try:
                with os.scandir(folder) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
                if listed is not None:
                    listed[rel_folder] = [entry.name for entry in entries]
            except OSError as error:
                shown = _display(rel_folder or ".")
                findings.append(Finding(
                    "unreadable", shown, 1, shown,
                    f"the folder cannot be listed ({error.strerror or error.__class__.__name__})",
                    "make it readable, or list it in app.yaml skip_files"))
                continue
            for entry in entries:
                rel = f"{rel_folder}/{entry.name}" if rel_folder else entry.name
                try:
                    if entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if _inside(target, root):
                            linked.append((target, rel, entry.name))
                        continue
                except (OSError, ValueError):
                    continue
                candidates.append((entry.path, rel, entry.name))
        else:
            candidates.append(linked.pop(0))
        folders = []
        for path, rel, name in candidates:
            try:
                info = os.stat(path)
            except (OSError, ValueError):
                continue  # broken link, loop, vanished entry
            key = (info.st_dev, info.st_ino)
            if stat.S_ISDIR(info.st_mode):
                if (name in SKIPPED_FOLDERS or skip(rel) or skip(rel + "/")
                        or key in seen or os.path.exists(os.path.join(path, "pyvenv.cfg"))):
                    continue
                seen.add(key)
                folders.append((path, rel))
            elif (stat.S_ISREG(info.st_mode) and name.endswith((".py", *_EXTENSION_ENDINGS))
                  and not skip(rel) and key not in seen):
                seen.add(key)
                yield path, rel
        pending.extend(reversed(folders))


def _own_top_modules(root: str) -> frozenset[str]:
    """Top-level names the app's own folder provides (they shadow same-named modules)."""
    try:
        names = os.listdir(root)
    except OSError:
        return frozenset()
    return frozenset(
        n.split(".", 1)[0] for n in names
        if n.endswith((".py", *_EXTENSION_ENDINGS)) or os.path.isdir(os.path.join(root, n))
    )


class _Vendoring:
    """Which vendored third-party package a file belongs to, from the folders the walk listed.

    A folder on the file's path that holds ``*.dist-info`` / ``*.egg-info`` metadata claims
    the files its distributions installed (``RECORD``, ``installed-files.txt``) or the
    top-level modules they name: the package is the distribution's name. Otherwise a vendor
    folder on the path (one holding such metadata, or named in :data:`VENDOR_FOLDERS` without
    being a Python package itself) makes the entry inside it the package. Metadata claims
    win over names; the innermost folder wins over outer ones
    (``lib/python2.7/site-packages/requests``). The app folder itself is never a vendor
    folder, but its metadata still claims what it installed (``pip install -t .``).
    """

    def __init__(self, root: str, listed: dict[str, list[str]]) -> None:
        self.root = root
        self.listed = listed
        self._claims: dict[str, tuple[dict[str, str], dict[str, set[str]]]] = {}

    def package_of(self, rel: str) -> str | None:
        parts = rel.split("/")
        entries = range(len(parts) - 1, -1, -1)  # parts[i] is an entry of folder parts[:i]
        for index in entries:
            files, tops = self._claims_of("/".join(parts[:index]))
            claimed = files.get("/".join(parts[index:]))
            if claimed is None:
                owners = tops.get(_module_name(parts[index]), ())
                claimed = next(iter(owners)) if len(owners) == 1 else None
            if claimed is not None:
                return claimed
        for index in entries:
            if index and self._is_vendor_folder("/".join(parts[:index]), parts[index - 1]):
                return _display(_module_name(parts[index]))
        return None

    def _is_vendor_folder(self, folder: str, name: str) -> bool:
        names = self.listed.get(folder, ())
        return any(n.endswith(_METADATA_ENDINGS) for n in names) or (
            name in VENDOR_FOLDERS and "__init__.py" not in names)

    def _claims_of(self, folder: str) -> tuple[dict[str, str], dict[str, set[str]]]:
        """(installed file -> distribution, top-level module -> distributions) of a folder."""
        if folder not in self._claims:
            files: dict[str, str] = {}
            tops: dict[str, set[str]] = {}
            for entry in self.listed.get(folder, ()):
                if entry.endswith(_METADATA_ENDINGS):
                    path = os.path.join(self.root, folder, entry)
                    name, installed, modules = _distribution(path, entry, self.root)
                    for item in installed:
                        files.setdefault(item, name)
                    for module in modules:
                        tops.setdefault(module, set()).add(name)
            self._claims[folder] = (files, tops)
        return self._claims[folder]


def _module_name(entry: str) -> str:
    """The module an entry of a folder on ``sys.path`` provides: ``six.py`` -> ``six``."""
    return entry.split(".", 1)[0]


def _distribution(path: str, entry: str, root: str) -> tuple[str, list[str], set[str]]:
    """A ``*.dist-info`` / ``*.egg-info`` entry: the distribution's name, the files it
    installed (relative to the folder holding the metadata) and its top-level modules."""
    base = entry.rsplit(".", 1)[0]
    name = base.split("-", 1)[0]
    installed: list[str] = []
    modules: set[str] = set()
    if os.path.isdir(path):
        headers = _read_metadata(os.path.join(path, "METADATA"), root) or _read_metadata(
            os.path.join(path, "PKG-INFO"), root)
        record = _read_metadata(os.path.join(path, "RECORD"), root)
        if record is not None:
            try:
                for row in csv.reader(io.StringIO(record)):
                    if row:
                        installed.append(row[0])
            except csv.Error:
                pass  # a damaged RECORD: keep the rows read so far
        listing = _read_metadata(os.path.join(path, "installed-files.txt"), root)
        if listing is not None:  # egg-info: relative to the metadata folder
            installed += [os.path.normpath(f"{entry}/{line.strip()}").replace(os.sep, "/")
                          for line in listing.splitlines() if line.strip()]
        top_level = _read_metadata(os.path.join(path, "top_level.txt"), root)
        if top_level is not None:
            modules.update(line.strip() for line in top_level.splitlines() if line.strip())
    else:
        headers = _read_metadata(path, root)  # an egg-info file is the PKG-INFO itself
    for line in (headers or "").split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "name" and value.strip():
            name = value.strip()[:100]
            break
    installed = [item for item in installed
                 if item and not item.startswith(("../", "/")) and item != ".."]
    for item in installed:
        top = item.split("/", 1)[0]
        if not top.endswith(_METADATA_ENDINGS) and top != "__pycache__":
            modules.add(_module_name(top))
    if not modules:
        modules.add(base.split("-", 1)[0])
    return name, installed, modules


def _read_metadata(path: str, root: str) -> str | None:
    """A small regular file inside the app, as text; ``None`` if it is anything else."""
    try:
        real = os.path.realpath(path)
        info = os.stat(real)
        if (not _inside(real, root) or not stat.S_ISREG(info.st_mode)
                or info.st_size > _MAX_METADATA_BYTES):
            return None
        with open(real, "rb") as file:
            return file.read(_MAX_METADATA_BYTES).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None


@functools.cache
def _bundled_services_installed() -> bool:
    """Whether this Python has a ``google.appengine`` (the SDK's package) to import."""
    try:
        return importlib.util.find_spec("google.appengine") is not None
    except (ImportError, ValueError):
        return False


def _library_of(module: str) -> str | None:
    """The app.yaml library that provides ``module`` (or a package on its path)."""
    for part in module.split("."):
        for library, patterns in C_LIBRARIES.items():
            if module_matches(part, patterns):
                return library
    return None


def _extension_finding(rel: str, enabled: set[str]) -> Finding:
    parts = rel.split("/")
    module = ".".join([*parts[:-1], parts[-1].split(".", 1)[0]])
    library = _library_of(module)
    rule = "C extensions are refused unless enabled in app.yaml libraries:"
    if library is None:
        fix = "replace it with pure Python: the runtime loads only the C extensions it provides"
    elif library in enabled:
        fix = (f"delete the shipped copy: app.yaml libraries: already provides {library}, "
               "built for the runtime")
        library = None
    else:
        fix = (f"add to app.yaml libraries: - name: {library}, and delete the shipped copy "
               "(the runtime provides its own build)")
    return Finding("c_extension", _display(rel), 1, _display(module), rule, fix, library)


# --- one source file ------------------------------------------------------------------------


def _scan_source(path: str, rel: str, own: frozenset[str], enabled: set[str],
                 profile: _Profile) -> list[Finding]:
    shown = _display(rel)

    def unreadable(line: int, why: str, fix: str) -> list[Finding]:
        return [Finding("unreadable", shown, line, shown, why, fix)]

    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
    except OSError as error:
        return unreadable(1, f"the file cannot be read ({error.strerror or error})",
                          "make it readable, or list it in app.yaml skip_files")
    if len(data) > MAX_SOURCE_BYTES:
        return unreadable(1, f"larger than {MAX_SOURCE_BYTES} bytes: not scanned",
                          "split the module, or list it in app.yaml skip_files")
    if b"\0" in data:
        return unreadable(data[:data.index(b"\0")].count(b"\n") + 1,
                          "binary data (NUL bytes), not Python source",
                          "remove the file or rename it away from .py")
    try:
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        except SyntaxError as error:  # an unknown coding, or undecodable first lines
            data.decode("utf-8")
            return [Finding("syntax", shown, error.lineno or 1, shown, str(error.msg),
                            "fix the coding declaration")]
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as error:
        line = data[:getattr(error, "start", 0)].count(b"\n") + 1
        return unreadable(line, f"not valid text in its declared encoding ({error})",
                          "save the file as UTF-8")
    try:
        tree = ast.parse(text, filename=shown)
    except SyntaxError as error:
        return [Finding("syntax", shown, error.lineno or 1, shown,
                        f"does not parse as Python 3: {error.msg}",
                        "fix the syntax; the sandbox runs the app under Python 3")]
    except (ValueError, RecursionError, MemoryError) as error:
        return [Finding("syntax", shown, 1, shown,
                        f"cannot be parsed ({error.__class__.__name__})",
                        "simplify the module: it is too deeply nested to compile")]
    try:
        return _ModuleScan(shown, own, enabled, profile).run(tree)
    except RecursionError:
        return [Finding("syntax", shown, 1, shown, "too deeply nested to analyse",
                        "simplify the module")]


class _Place(NamedTuple):
    """Where a written path is: ``"writable"`` (beneath a folder the profile lets the app
    write), ``"outside"`` (known to be elsewhere: ``shown`` says where) or ``"unknown"``."""

    where: str
    shown: str = ""


#: A path argument of a write: an expression, a place known without one (a default), or
#: ``None`` for an argument the call does not show.
_PathArgument = ast.expr | _Place | None

_WRITABLE = _Place("writable")
_UNKNOWN = _Place("unknown", "path not known statically")
_APP_FILE = _Place("outside", "a path built from __file__ is in the app's folder")
_WORKING_FOLDER = _Place("outside", "the working folder is the app's folder")
_HOME = _Place("outside", "the home folder is outside /tmp")
_RANK = {"writable": 0, "unknown": 1, "outside": 2}
_MAX_PLACE_DEPTH = 40


#: Calls naming a temporary folder (or a file in it): /tmp on the runtime, unless given
#: another ``dir`` (callee -> position of ``dir``).
_TEMP_FOLDER_MAKERS: dict[str, int] = {
    "tempfile.gettempdir": 0, "tempfile.gettempdirb": 0, "tempfile.mkdtemp": 2,
    "tempfile.mkstemp": 2, "tempfile.mktemp": 2, "tempfile.TemporaryDirectory": 2,
    "tempfile.NamedTemporaryFile": 6, "tempfile.TemporaryFile": 6,
    "tempfile.SpooledTemporaryFile": 7,
}
#: Calls joining their arguments into a path.
_PATH_JOINS = frozenset({"os.path.join", "posixpath.join", "pathlib.PurePath",
                         "pathlib.PurePosixPath"}) | _PATH_CLASSES
#: Calls whose result is in the same place as their first argument.
_SAME_PLACE = frozenset({
    "os.path.abspath", "os.path.realpath", "os.path.normpath", "os.path.dirname",
    "os.path.expanduser", "os.path.expandvars", "os.fspath", "os.fsencode", "os.fsdecode",
    "str",
})
_SAME_PLACE_METHODS = frozenset({"resolve", "absolute", "expanduser", "with_name",
                                 "with_suffix", "with_stem", "as_posix", "__fspath__"})
_WORKING_FOLDER_CALLS = frozenset({"os.getcwd", "os.getcwdb"} | {
    f"{c}.cwd" for c in _PATH_CLASSES})
_HOME_CALLS = frozenset(f"{c}.home" for c in _PATH_CLASSES)


def _constant_text(node: ast.AST | None) -> str | None:
    """A str or bytes literal, as text."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        value = node.value
        return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")
    return None


def _string_parts(node: ast.expr) -> list[str | ast.expr]:
    """An f-string or a ``+`` of strings as its pieces: literal text, or expressions."""
    parts: list[str | ast.expr] = []
    pending: list[ast.expr] = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, ast.BinOp) and isinstance(item.op, ast.Add):
            pending += [item.right, item.left]
        elif isinstance(item, ast.JoinedStr):
            pending += reversed(item.values)
        elif isinstance(item, ast.FormattedValue):
            parts.append(item.value)
        else:
            text = _constant_text(item)
            parts.append(item if text is None else text)
    return parts


def _path_parts(node: ast.expr) -> list[ast.expr]:
    """``a / b / c`` as ``[a, b, c]``."""
    parts: list[ast.expr] = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        parts.append(node.right)
        node = node.left
    parts.append(node)
    return parts[::-1]


def _worst(places: Iterable[_Place]) -> _Place:
    """The place that decides a write: outside over unknown over writable."""
    return max(places, key=lambda place: _RANK[place.where], default=_UNKNOWN)


class _Bindings:
    """What each plain name of a module is assigned, per scope (the module, each class and
    function), so a written path can be followed through variables:
    ``path = os.path.join(tempfile.gettempdir(), "x")`` then ``open(path, "w")``.

    A name bound any other way (an argument, a loop, an import, ``+=``) has an unknown value.
    """

    def __init__(self, tree: ast.AST) -> None:
        self.module = id(tree)
        self.values: dict[tuple[int, str], list[ast.expr | None]] = {}
        self.parent: dict[int, int | None] = {self.module: None}
        self.declared_global: set[tuple[int, str]] = set()
        self.scope_of: dict[int, int] = {}  # id of a call or dict -> id of its scope
        self._assigned: set[int] = set()  # ids of Name targets bound with their value
        # (node, its scope, the scope functions defined in it look names up in)
        pending: list[tuple[ast.AST, int, int]] = [(tree, self.module, self.module)]
        while pending:  # iterative: deep trees cannot overflow the stack
            node, scope, outer = pending.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    inner = id(child)
                    self.parent[inner] = outer
                    if not isinstance(child, ast.Lambda):
                        self._bind(scope, child.name, None)
                    arguments = child.args
                    for arg in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                arguments.vararg, arguments.kwarg):
                        if arg is not None:
                            self._bind(inner, arg.arg, None)
                    pending.append((child, inner, inner))
                elif isinstance(child, ast.ClassDef):  # its names are not its methods'
                    inner = id(child)
                    self.parent[inner] = scope
                    self._bind(scope, child.name, None)
                    pending.append((child, inner, outer))
                else:
                    self._record(child, scope)
                    pending.append((child, scope, outer))

    def _bind(self, scope: int, name: str, value: ast.expr | None) -> None:
        self.values.setdefault((scope, name), []).append(value)

    def _bind_target(self, scope: int, target: ast.AST, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._assigned.add(id(target))
            self._bind(scope, target.id, value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            pairs = isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(
                target.elts) and not any(isinstance(e, ast.Starred) for e in value.elts)
            for index, item in enumerate(target.elts):
                if not isinstance(item, ast.Starred):  # fd, path = tempfile.mkstemp()
                    self._bind_target(scope, item, value.elts[index] if pairs  # type: ignore
                                      else value)

    def _record(self, node: ast.AST, scope: int) -> None:
        if isinstance(node, (ast.Call, ast.Dict)):
            self.scope_of[id(node)] = scope
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                self._bind_target(scope, target, node.value)
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            self._bind_target(scope, node.target, node.value)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            self._bind_target(scope, node.optional_vars, node.context_expr)
        elif isinstance(node, ast.Global):
            self.declared_global.update((scope, name) for name in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                self._bind(scope, (alias.asname or alias.name).partition(".")[0], None)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            self._bind(scope, node.name, None)
        elif (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)
              and id(node) not in self._assigned):
            self._bind(scope, node.id, None)  # a loop target, an augmented assignment, ...

    def lookup(self, name: str, scope: int) -> tuple[int, list[ast.expr | None]] | None:
        """The scope that binds ``name`` as seen from ``scope``, and the values it is
        assigned there (``None`` for a value not known); ``None`` when nothing binds it."""
        current: int | None = self.module if (scope, name) in self.declared_global else scope
        while current is not None:
            values = self.values.get((current, name))
            if values is not None:
                return current, values
            current = self.parent.get(current)
        return None


class _ModuleScan:
    """The checks on one parsed module, with its import aliases, for one profile."""

    def __init__(self, file: str, own: frozenset[str], enabled: set[str],
                 profile: _Profile = _PROFILES["python27"]) -> None:
        self.file = file
        self.own = own
        self.enabled = enabled
        self.profile = profile
        self.aliases: dict[str, str] = {}  # local name -> dotted name it stands for
        self.bound: set[str] = set()  # names the module binds itself (shadowing builtins)
        self.guarded: set[int] = set()  # ids of nodes inside try/except ImportError
        self.findings: list[Finding] = []
        self.bindings: _Bindings | None = None  # built when writes are judged by their path
        self._named_places: dict[tuple[int, str], _Place | None] = {}  # None: being judged

    def run(self, tree: ast.AST) -> list[Finding]:
        nodes = list(ast.walk(tree))  # iterative: deep trees cannot overflow the stack
        for node in nodes:
            self._collect(node)
        if self.profile.writable:
            self.bindings = _Bindings(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._check_import(node, alias.name)
            elif isinstance(node, ast.ImportFrom):
                if not node.level and node.module:
                    self._check_import(node, node.module)
            elif isinstance(node, ast.Call):
                self._check_call(node)
            elif isinstance(node, ast.Dict):
                self._check_dict(node)
        # os.environ[...] = ... is fine: on the runtime, as in the sandbox, os.environ is
        # per request; only os.putenv/unsetenv reach the process environment.
        return self.findings

    # -- pass 1: names ---------------------------------------------------------------------

    def _collect(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.aliases.setdefault(alias.asname, alias.name)
                else:
                    top = alias.name.partition(".")[0]
                    self.aliases.setdefault(top, top)
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            for alias in node.names:
                if alias.name != "*":
                    self.aliases.setdefault(alias.asname or alias.name, f"{base}.{alias.name}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.bound.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            self.bound.add(node.id)
        elif isinstance(node, ast.arg):
            self.bound.add(node.arg)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            if any(_catches_import_error(h) for h in node.handlers):
                for statement in node.body:
                    self.guarded.update(id(n) for n in ast.walk(statement))

    def _name(self, node: ast.AST) -> str | None:
        """The dotted name an expression stands for through the module's imports."""
        attributes: list[str] = []
        while isinstance(node, ast.Attribute):
            attributes.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self.aliases.get(node.id)
        if base is None:
            if node.id in self.bound:
                return None
            base = node.id  # a builtin, or an unknown global
        elif base.startswith("."):
            return None  # the app's own module
        return ".".join([base, *reversed(attributes)])

    def _text(self, node: ast.AST) -> str:
        """A short rendering of a receiver expression, for targets."""
        name = self._name(node)
        if name is not None:
            return name
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Call):
            return f"{self._text(node.func)}(...)"
        if isinstance(node, ast.Attribute):
            return f"{self._text(node.value)}.{node.attr}"
        return "(...)"

    def _add(self, node: ast.AST, kind: str, target: str, rule: str, fix: str,
             library: str | None = None) -> None:
        self.findings.append(Finding(kind, self.file, getattr(node, "lineno", 1), target, rule,
                                     fix, library))

    # -- writes, judged by the profile -----------------------------------------------------

    def _write(self, node: ast.AST, target: str, paths: Sequence[_PathArgument], *,
               mode: str | None = None, why: str = "", log: bool = False,
               scope: ast.AST | None = None) -> None:
        """A certain write to ``paths``: always a finding when the runtime writes nowhere;
        otherwise one when a path is outside the writable folders or not known statically
        (none to judge: an fd the app opened, judged where it was opened). ``why`` starts
        the rule (logging handlers), ``scope`` is the node whose scope the paths are in."""
        profile = self.profile
        details = [f"mode {mode!r}"] if mode else []
        rule, fix = profile.read_only, profile.log_fix if log else profile.fix
        if profile.writable:
            place = _worst(self._places(paths, scope or node))
            if not paths or place.where == "writable":
                return
            if place.where == "unknown":
                rule = profile.unknown_path
                fix = profile.log_fix if log else profile.unknown_path_fix
            details.append(place.shown)
        self._add(node, "file_write", target,
                  why + rule + (f" ({'; '.join(details)})" if details else ""), fix)

    def _possible_write(self, node: ast.AST, target: str, what: str,
                        paths: Sequence[_PathArgument]) -> None:
        """A write-or-read whose mode (``what``: "mode", "flags") is not known statically:
        left out when every path is known to be writable."""
        profile = self.profile
        if profile.writable and paths and all(
                p.where == "writable" for p in self._places(paths, node)):
            return
        self._add(node, "possible_write", target,
                  f"{what} not known statically; {profile.unknown_mode}",
                  profile.unknown_mode_fix)

    def _places(self, paths: Sequence[_PathArgument], node: ast.AST) -> list[_Place]:
        bindings = self.bindings
        scope = bindings.scope_of.get(id(node), bindings.module) if bindings else 0
        return [path if isinstance(path, _Place) else
                _UNKNOWN if path is None else self._place(path, scope, 0) for path in paths]

    def _place(self, node: ast.AST, scope: int, depth: int) -> _Place:
        """Where a path expression points, as far as the module alone tells: literals,
        ``os.path.join`` / ``pathlib`` joins, f-strings and ``+``, ``tempfile``'s folders,
        ``__file__``, the working folder, and names assigned in the module."""
        if depth > _MAX_PLACE_DEPTH:
            return _UNKNOWN
        depth += 1
        text = _constant_text(node)
        if text is not None:
            return self._literal(text)
        if isinstance(node, ast.Name):
            return self._named_place(node.id, scope, depth)
        if isinstance(node, ast.JoinedStr) or (
                isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)):
            return self._concatenation(_string_parts(node), scope, depth)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # pathlib's /
            parts = _path_parts(node)
            first = parts[0]
            if (isinstance(first, ast.Call) and self._name(first.func) in _PATH_JOINS
                    and not any(isinstance(a, ast.Starred) for a in first.args)):
                parts[:1] = first.args  # Path("/") / "tmp" / name
            return self._join(parts, scope, depth)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "%s/x" % folder
            template = _constant_text(node.left)
            values = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
            if template is None:
                return _UNKNOWN
            return self._template(template, re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]"),
                                  values[:1], scope, depth)
        if isinstance(node, ast.IfExp):
            return _worst([self._place(node.body, scope, depth),
                           self._place(node.orelse, scope, depth)])
        if isinstance(node, ast.BoolOp):
            return _worst(self._place(value, scope, depth) for value in node.values)
        if isinstance(node, ast.Subscript):  # tempfile.mkstemp()[1]
            inner = self._place(node.value, scope, depth)
            return inner if inner.where == "writable" else _UNKNOWN
        if isinstance(node, ast.Attribute):
            if node.attr in ("parent", "name"):  # Path(__file__).parent, NamedTemporaryFile().name
                inner = self._place(node.value, scope, depth)
                return inner if node.attr == "parent" or inner.where == "writable" else _UNKNOWN
            return _UNKNOWN
        if isinstance(node, ast.Call):
            return self._called_place(node, scope, depth)
        return _UNKNOWN

    def _called_place(self, node: ast.Call, scope: int, depth: int) -> _Place:
        name = self._name(node.func)
        args = node.args
        if any(isinstance(a, ast.Starred) for a in args):
            return _UNKNOWN
        if name in _TEMP_FOLDER_MAKERS:
            folder = _argument(node, _TEMP_FOLDER_MAKERS[name], "dir")
            if folder is None or (isinstance(folder, ast.Constant) and folder.value is None):
                return _WRITABLE  # the temporary folder: /tmp on the runtime
            return self._place(folder, scope, depth)
        if name in _PATH_JOINS:
            return self._join(list(args), scope, depth)
        if name in _SAME_PLACE:
            return self._place(args[0], scope, depth) if args else _UNKNOWN
        if name in _WORKING_FOLDER_CALLS:
            return _WORKING_FOLDER
        if name in _HOME_CALLS:
            return _HOME
        func = node.func
        if name is None and isinstance(func, ast.Attribute):  # a method of a path or string
            if func.attr == "joinpath":
                return self._join([func.value, *args], scope, depth)
            if func.attr in _SAME_PLACE_METHODS:
                return self._place(func.value, scope, depth)
            template = _constant_text(func.value)
            if func.attr == "format" and template is not None:
                return self._template(template, re.compile(r"\{[^{}]*\}"), args[:1], scope,
                                      depth)
        return _UNKNOWN

    def _named_place(self, name: str, scope: int, depth: int) -> _Place:
        """A name's place: the worst of the values it is assigned in the scope binding it."""
        found = self.bindings.lookup(name, scope) if self.bindings else None
        if found is None:
            return _APP_FILE if name == "__file__" else _UNKNOWN
        binder, values = found
        key = (binder, name)
        if key in self._named_places:
            return self._named_places[key] or _UNKNOWN  # None: a cycle (x = x + "/y")
        self._named_places[key] = None
        place = _worst(_UNKNOWN if value is None else self._place(value, binder, depth)
                       for value in values)
        self._named_places[key] = place
        return place

    def _literal(self, text: str) -> _Place:
        """A path known in full: relative ones resolve in the app's folder."""
        if not text or "\0" in text:
            return _UNKNOWN
        if text.startswith("~"):
            return _Place("outside", f"path {text!r} is outside /tmp")
        if not text.startswith("/"):
            return _Place("outside", f"path {text!r} is in the app's folder")
        if self._is_writable(posixpath.normpath(text)):
            return _WRITABLE
        return _Place("outside", f"path {text!r} is outside /tmp")

    def _prefix(self, prefix: str) -> _Place:
        """A path known up to ``prefix``: judged by the folder the prefix names in full."""
        if not prefix.startswith("/"):
            return _Place("outside", f"a path starting {prefix!r} is in the app's folder")
        folder = posixpath.normpath(prefix[:prefix.rfind("/") + 1])
        if folder == "/":
            return _UNKNOWN  # "/" + name, "/t" + ...: any folder
        if self._is_writable(folder):
            return _WRITABLE
        return _Place("outside", f"a path starting {prefix!r} is outside /tmp")

    def _is_writable(self, path: str) -> bool:
        return any(path == folder or path.startswith(folder.rstrip("/") + "/")
                   for folder in self.profile.writable)

    def _join(self, parts: list[ast.expr], scope: int, depth: int) -> _Place:
        """``os.path.join(*parts)``, ``Path(*parts)``, ``a / b``: the last absolute literal
        starts the path over; literals after it are joined; else the first part decides."""
        if not parts:
            return _WORKING_FOLDER  # Path()
        start = 0
        for index in range(len(parts) - 1, -1, -1):
            text = _constant_text(parts[index])
            if text is not None and text.startswith("/"):
                start = index
                break
        texts: list[str] = []
        for part in parts[start:]:
            text = _constant_text(part)
            if text is None:
                break
            texts.append(text)
        if texts:
            joined = posixpath.join(*texts)
            if len(texts) == len(parts) - start:
                return self._literal(joined)
            return self._prefix(joined.rstrip("/") + "/")
        return self._place(parts[start], scope, depth)

    def _concatenation(self, parts: list[str | ast.expr], scope: int, depth: int) -> _Place:
        """An f-string or a ``+`` of strings: a literal start decides, else the first value
        (``f"{tempfile.gettempdir()}/x"``: beneath it only when a ``/`` follows)."""
        parts = [part for part in parts if part != ""]
        prefix = ""
        index = 0
        while index < len(parts) and isinstance(parts[index], str):
            prefix += parts[index]  # type: ignore[operator]
            index += 1
        if index == len(parts):
            return self._literal(prefix)
        if prefix:
            return self._prefix(prefix)
        first = parts[0]
        place = self._place(first, scope, depth)  # type: ignore[arg-type]
        if place.where == "writable" and len(parts) > 1 and not (
                isinstance(parts[1], str) and parts[1].startswith("/")):
            return _UNKNOWN  # gettempdir() + "x" is a sibling of /tmp
        return place

    def _template(self, template: str, field: re.Pattern[str], values: Sequence[ast.expr],
                  scope: int, depth: int) -> _Place:
        """``"/tmp/{}".format(x)``, ``"%s/x" % folder``: the literal start decides, or the
        first value when the template starts with it."""
        match = field.search(template)
        if match is None:
            return self._literal(template)
        if match.start():
            return self._prefix(template[:match.start()])
        if not values:
            return _UNKNOWN
        return self._concatenation([values[0], template[match.end():]], scope, depth)

    # -- imports ---------------------------------------------------------------------------

    def _check_import(self, node: ast.AST, name: str) -> None:
        """The import gate's rules, by name: blocked, stdlib C, third-party C library."""
        if id(node) in self.guarded or not name:
            return
        prefix = ""
        for part in name.split("."):
            prefix = f"{prefix}.{part}" if prefix else part
            if module_matches(prefix, PYTHON27_BLOCKED_MODULES):
                self._add(node, "import", name, "the runtime does not offer this module",
                          _BLOCKED_FIXES.get(prefix, _BLOCKED_FIX))
                return
        top = name.partition(".")[0]
        if top in self.own:
            return
        if (name == "google.appengine" or name.startswith("google.appengine.")) and (
                not _bundled_services_installed()):
            self._add(node, "import", name,
                      "gae_sandbox emulates the runtime's sandbox, not its bundled services "
                      "(google.appengine: ndb, users, memcache, taskqueue...)",
                      "install the SDK's package for them (appengine-python-standard), or use "
                      "the Cloud client libraries (google-cloud-ndb, ...)")
            return
        offered = LIBRARY_MODULES.get(top)
        if offered is not None:  # standard-library modules the runtime offered on request
            if offered not in self.enabled:
                self._add(node, "c_extension", name,
                          f"the runtime offers {top} only when app.yaml asks for it "
                          f"(libraries: - name: {offered})",
                          f"add to app.yaml libraries: - name: {offered}", offered)
            return
        library = _library_of(top)
        if library is not None:
            if library not in self.enabled:
                self._add(node, "c_extension", name,
                          "C extension libraries are refused unless enabled in app.yaml "
                          "libraries:", f"add to app.yaml libraries: - name: {library}",
                          library)
            return
        if top in STDLIB_C_MODULES and top not in RUNTIME_C_MODULES:
            wrapper = _C_WRAPPERS.get(top)
            self._add(node, "c_extension", name,
                      "the runtime offers this standard-library C module to app code only "
                      "through the module that wraps it",
                      f"import {wrapper} instead" if wrapper else
                      "remove it: the runtime has no such module for apps")

    # -- calls -----------------------------------------------------------------------------

    def _check_call(self, node: ast.Call) -> None:
        func = node.func
        name = self._name(func)
        if name is not None and self._check_named(node, name):
            return
        if isinstance(func, ast.Attribute) and not self._from_import(func):
            self._check_method(node, func)

    def _from_import(self, node: ast.AST) -> bool:
        """Whether an attribute chain starts at an imported name (a module, not a value)."""
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and node.id in self.aliases

    def _check_named(self, node: ast.Call, name: str) -> bool:
        """The first rule of :data:`_CALL_RULES` that covers ``name`` judges the call;
        whether one covered it."""
        for rule in _CALL_RULES:
            if rule.covers(name):
                rule.judge(self, node, name)
                return True
        return False

    def _check_method(self, node: ast.Call, func: ast.Attribute) -> None:
        """Methods on values of unknown type: pathlib writes, ``Path(...).open("w")``."""
        target = f"{self._text(func.value)}.{func.attr}"
        if func.attr in _PATH_WRITE_METHODS:
            self._write(node, target, [func.value])
        elif func.attr == "open":
            mode = _argument(node, 0, "mode")
            if self._is_path(func.value):  # a pathlib path: its first argument is the mode
                _judge_mode(self, node, target, mode, _hidden_argument(node, 0), [func.value])
                return
            mode_text = _constant_str(mode) if mode is not None else None
            if mode_text and _MODE_LIKE.fullmatch(mode_text) and _mode_writes(mode_text):
                self._write(node, target, [func.value], mode=mode_text)

    def _is_path(self, node: ast.AST) -> bool:
        """Whether an expression is a pathlib path built in place: ``Path(...)``,
        ``Path.cwd() / "x"``, ``Path(__file__).parent.joinpath("y")``."""
        while True:
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                node = node.left
            elif isinstance(node, ast.Attribute):
                node = node.value
            elif isinstance(node, ast.Call):
                if self._name(node.func) in _PATH_MAKERS:
                    return True
                if not isinstance(node.func, ast.Attribute):
                    return False
                node = node.func.value
            else:
                return False

    def _check_dict(self, node: ast.Dict) -> None:
        """A logging configuration (``dictConfig``, Django's ``LOGGING``) naming a file
        handler: ``{"class": "logging.FileHandler", ...}``."""
        keys = [_constant_str(key) for key in node.keys]
        for key, value in zip(keys, node.values, strict=True):
            handler = _constant_str(value) if key == "class" else None
            if handler in _LOG_FILE_HANDLERS:
                filename = next((v for k, v in zip(keys, node.values, strict=True)
                                 if k == "filename"), None)
                self._write(value, handler, [filename], why="a logging configuration names a "
                            "file handler, which opens its file for writing; ", log=True,
                            scope=node)


# --- rules on calls to known names ----------------------------------------------------------

#: How a rule judges a call it covers: (the module's scan, the call, the callee's dotted name).
_Judge = Callable[[_ModuleScan, ast.Call, str], None]


@dataclass(frozen=True)
class _CallRule:
    """Calls whose dotted name ``covers`` accepts are judged by ``judge``."""

    covers: Callable[[str], bool]
    judge: _Judge


def _named(*names: str) -> Callable[[str], bool]:
    return frozenset(names).__contains__


def _member(module: str, test: Callable[[str], bool]) -> Callable[[str], bool]:
    """Names ``module.attribute`` whose attribute passes ``test``."""
    def covers(name: str) -> bool:
        owner, _, attribute = name.rpartition(".")
        return owner == module and test(attribute)
    return covers


class _Written(NamedTuple):
    """An argument naming a path a call writes: its position, its keyword, and the path
    written when the call leaves it out (``None``: not known)."""

    position: int
    keyword: str
    default: _Place | None = None


_PATH_ARGUMENT = (_Written(0, "path"),)
_SOURCE_AND_TARGET = (_Written(0, "src"), _Written(1, "dst"))
#: The paths each ``os`` / ``shutil`` write changes (the python3 profile judges them); one
#: not listed writes its first argument, ``shutil.copy*`` their ``dst``. Calls on file
#: descriptors write none: the fd is judged where it was opened.
_WRITTEN_PATHS: dict[str, tuple[_Written, ...]] = {
    "os.makedirs": (_Written(0, "name"),), "os.removedirs": (_Written(0, "name"),),
    "os.rename": _SOURCE_AND_TARGET, "os.replace": _SOURCE_AND_TARGET,
    "os.renames": (_Written(0, "old"), _Written(1, "new")),
    "os.symlink": (_Written(1, "dst"),), "os.link": (_Written(1, "dst"),),
    "os.fchmod": (), "os.fchown": (), "os.ftruncate": (),
    "shutil.move": _SOURCE_AND_TARGET, "shutil.make_archive": (_Written(0, "base_name"),),
    "shutil.unpack_archive": (_Written(1, "extract_dir", _WORKING_FOLDER),),
}


def _written_paths(name: str) -> tuple[_Written, ...]:
    owner, _, attribute = name.rpartition(".")
    if name in _WRITTEN_PATHS:
        return _WRITTEN_PATHS[name]
    if owner == "shutil" and attribute.startswith("copy"):
        return (_Written(1, "dst"),)
    return (_Written(0, "self"),) if owner in _PATH_CLASSES else _PATH_ARGUMENT


def _path_arguments(node: ast.Call, written: Iterable[_Written]) -> list[_PathArgument]:
    """The expressions (or defaults) a call passes for the paths it writes."""
    paths: list[_PathArgument] = []
    for item in written:
        value = _argument(node, item.position, item.keyword)
        if value is None and item.default is not None and not _hidden_argument(
                node, item.position):
            paths.append(item.default)
        else:
            paths.append(value)
    return paths


def _writes_files(name: str) -> bool:
    owner, _, attribute = name.rpartition(".")
    return ((owner == "os" and attribute in _OS_WRITES)
            or (owner == "shutil" and (attribute in _SHUTIL_WRITES or (
                attribute.startswith("copy") and attribute != "copyfileobj")))
            or (owner in _PATH_CLASSES and attribute in _PATH_WRITE_METHODS))


def _starts_processes(name: str) -> bool:
    owner, _, attribute = name.rpartition(".")
    return owner == "subprocess" or owner.startswith("subprocess.") or (
        owner == "os" and (attribute in _OS_PROCESS
                           or attribute.startswith(_OS_PROCESS_PREFIXES)))


def _report(kind: str, rule: str, fix: str) -> _Judge:
    """Every call is a finding."""
    def judge(scan: _ModuleScan, node: ast.Call, name: str) -> None:
        scan._add(node, kind, name, rule, fix)
    return judge


def _judge_import(scan: _ModuleScan, node: ast.Call, name: str) -> None:
    module = _constant_str(node.args[0]) if node.args else None
    if module and not module.startswith("."):
        scan._check_import(node, module)


def _judge_opener(scan: _ModuleScan, node: ast.Call, name: str) -> None:
    if _keyword(node, "fileobj") is not None or (
            node.args and isinstance(node.args[0], ast.Call)
            and scan._name(node.args[0].func) in _IN_MEMORY_FILES):
        return  # reads or writes a file object the app built, not a file on disk
    position = _OPENERS[name]
    path = next((value for value in (_argument(node, 0, keyword) for keyword in _FILE_KEYWORDS)
                 if value is not None), None)
    _judge_mode(scan, node, name, _argument(node, position, "mode"),
                _hidden_argument(node, position), [path])


def _judge_mode(scan: _ModuleScan, node: ast.Call, name: str, mode: ast.expr | None,
                hidden: bool, paths: Sequence[_PathArgument]) -> None:
    """A mode argument: a literal that writes, or one not known before run time."""
    if mode is None and not hidden:
        return  # the default mode reads
    modes = _literal_strings(mode) if mode is not None else None
    if modes is None:
        scan._possible_write(node, name, "mode", paths)
        return
    writing = sorted(m for m in modes if _mode_writes(m))
    if writing:
        scan._write(node, name, paths, mode=writing[0])


def _judge_os_open(scan: _ModuleScan, node: ast.Call, name: str) -> None:
    paths = [_argument(node, 0, "path")]
    flags = _argument(node, 1, "flags")
    if flags is None:
        if _hidden_argument(node, 1):
            scan._possible_write(node, name, "flags", paths)
        return
    known, pending = True, [flags]
    while pending:  # os.O_* names and integers joined by | (or +), either way of an if
        item = pending.pop()
        if isinstance(item, ast.BinOp) and isinstance(item.op, (ast.BitOr, ast.Add)):
            pending += [item.left, item.right]
        elif isinstance(item, ast.IfExp):
            pending += [item.body, item.orelse]
        elif isinstance(item, (ast.Attribute, ast.Name)):
            flag = item.attr if isinstance(item, ast.Attribute) else item.id
            if flag in _OS_WRITE_FLAGS:
                scan._write(node, name, paths)
                return
            known = known and flag.startswith("O_")
        elif isinstance(item, ast.Constant) and type(item.value) is int:
            if item.value & _OS_WRITE_BITS:
                scan._write(node, name, paths)
                return
        else:  # a call, a variable, ...: not known, but a write flag inside still writes
            known = False
            pending.extend(ast.iter_child_nodes(item))
    if not known:
        scan._possible_write(node, name, "flags", paths)


def _judge_file_write(scan: _ModuleScan, node: ast.Call, name: str) -> None:
    scan._write(node, name, _path_arguments(node, _written_paths(name)))


def _judge_log_handler(scan: _ModuleScan, node: ast.Call, name: str) -> None:
    scan._write(node, name, [_argument(node, 0, "filename")],
                why="logging file handlers open their file for writing; ", log=True)


def _judge_basic_config(scan: _ModuleScan, node: ast.Call, name: str) -> None:
    filename = _keyword(node, "filename")
    if filename is not None and not (isinstance(filename, ast.Constant)
                                     and filename.value is None):
        scan._write(node, name, [filename], why="logging.basicConfig(filename=...) opens its "
                    "log file for writing; ", log=True)


def _judge_system(scan: _ModuleScan, node: ast.Call, name: str) -> None:
    rule, fix = _SYSTEM_CALLS[name]
    scan._add(node, "system", name, rule, fix)


#: The rules on calls to known dotted names, first match wins (a match with nothing to
#: report still ends the search: ``open("x")`` is not a method call to check further).
#: Writes are judged by the scan's profile (every one refused, or by path); the profile's
#: ``kinds`` leave out what its runtime allows (python3: imports, tempfile, processes,
#: sockets, signals, process-wide state).
_CALL_RULES: tuple[_CallRule, ...] = (
    _CallRule(_named("__import__", "builtins.__import__", "importlib.import_module",
                     "importlib.__import__"), _judge_import),
    _CallRule(_named(*_OPENERS), _judge_opener),
    _CallRule(_named("os.open"), _judge_os_open),
    _CallRule(_writes_files, _judge_file_write),
    _CallRule(_named(*_LOG_FILE_HANDLERS), _judge_log_handler),
    _CallRule(_named("logging.basicConfig"), _judge_basic_config),
    _CallRule(_member("tempfile", lambda a: a not in _TEMPFILE_ALLOWED),
              _report("tempfile", "the runtime's tempfile offers only TemporaryFile (in memory)",
                      _TEMPFILE_FIX)),
    _CallRule(_starts_processes, _report(
        "process", "the runtime cannot start, replace or signal processes", _PROCESS_FIX)),
    _CallRule(_member("socket", _SOCKET_CALLS.__contains__),
              _report("network", "the runtime offers no raw sockets", _NETWORK_FIX)),
    _CallRule(_member("signal", _SIGNAL_CALLS.__contains__),
              _report("system", "signal handlers and timers are process-wide; the runtime "
                      "removed them", _SIGNAL_FIX)),
    _CallRule(_named(*_SYSTEM_CALLS), _judge_system),
)


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for item in node.keywords:
        if item.arg == keyword:
            return item.value
    if len(node.args) > position and not any(
            isinstance(a, ast.Starred) for a in node.args[:position + 1]):
        return node.args[position]
    return None


def _keyword(node: ast.Call, keyword: str) -> ast.expr | None:
    for item in node.keywords:
        if item.arg == keyword:
            return item.value
    return None


def _hidden_argument(node: ast.Call, position: int) -> bool:
    """Whether ``*args`` or ``**kwargs`` could pass the argument at ``position``."""
    return any(isinstance(a, ast.Starred) for a in node.args[:position + 1]) or any(
        item.arg is None for item in node.keywords)


def _constant_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _literal_strings(node: ast.AST) -> set[str] | None:
    """The values a mode expression can take when every one is a literal
    (``"wb" if append else "ab"``); ``None`` when one is not known before run time."""
    if isinstance(node, ast.IfExp):
        body, orelse = _literal_strings(node.body), _literal_strings(node.orelse)
        return None if body is None or orelse is None else body | orelse
    if isinstance(node, ast.Constant) and node.value is None:
        return {"r"}  # the default
    text = _constant_str(node)
    return None if text is None else {text}


def _mode_writes(mode: str) -> bool:
    """Whether an open mode writes (tarfile's ``"r:xz"``: the compression is not a mode)."""
    return any(c in re.split(r"[:|]", mode, maxsplit=1)[0] for c in "wax+")


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    """Whether an ``except`` clause would catch a refused import (so the app copes)."""
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for item in types:
        name = item.attr if isinstance(item, ast.Attribute) else getattr(item, "id", None)
        if name in _IMPORT_ERRORS:
            return True
    return False
