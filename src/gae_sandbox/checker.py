"""Static portability scan: what in an app tree would the python27 sandbox refuse?

The scan reads the app's files and parses them with :mod:`ast`; it never imports or executes
them, so it is safe on untrusted trees and finds problems in code paths a test run never
reaches. It judges imports by the same rules as the runtime's import gate (``imports.py``)
and flags calls the sandbox refuses at run time (writes, processes, sockets, signals, ...).
Reused by the ``check`` command, the dev server and the pytest plugin.
"""

from __future__ import annotations

import ast
import io
import os
import re
import stat
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .appyaml import DEFAULT_SKIP_FILES, LIBRARIES, AppYamlError, load_app_yaml
from .policy import module_matches
from .runtime import PYTHON27_BLOCKED_MODULES, RUNTIME_C_MODULES, STDLIB_C_MODULES

#: Every kind of finding, in the order summaries list them.
KINDS: tuple[str, ...] = (
    "syntax", "unreadable", "app_yaml", "c_extension", "import", "file_write", "tempfile",
    "process", "network", "system",
)

#: Folders that are tooling, not the app: never deployed in practice, never scanned.
SKIPPED_FOLDERS: frozenset[str] = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".nox"}
)

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
    "tarfile.open": 1, "zipfile.ZipFile": 1,
}
_OS_WRITES = frozenset({
    "remove", "unlink", "rename", "renames", "replace", "mkdir", "makedirs", "rmdir",
    "removedirs", "chmod", "lchmod", "fchmod", "chown", "lchown", "fchown", "utime", "symlink",
    "link", "truncate", "ftruncate", "mkfifo", "mknod", "chflags", "lchflags", "setxattr",
    "removexattr",
})
_OS_WRITE_FLAGS = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"})
_SHUTIL_WRITES = frozenset({"move", "rmtree", "make_archive", "unpack_archive", "chown"})
_OS_PROCESS = frozenset({"system", "popen", "fork", "forkpty", "kill", "killpg", "startfile"})
_OS_PROCESS_PREFIXES = ("exec", "spawn", "posix_spawn")
_SOCKET_CALLS = frozenset({"socket", "create_connection", "create_server", "socketpair",
                           "fromfd", "SocketType"})
_SIGNAL_CALLS = frozenset({"signal", "alarm", "setitimer", "pthread_sigmask", "siginterrupt",
                           "set_wakeup_fd", "pause", "sigwait", "sigwaitinfo", "sigtimedwait"})
_TEMPFILE_ALLOWED = frozenset({"TemporaryFile", "SpooledTemporaryFile"})
#: Methods that write whatever their receiver is (pathlib paths, in practice).
_PATH_WRITE_METHODS = frozenset({"write_text", "write_bytes", "touch", "mkdir", "rmdir",
                                 "unlink", "symlink_to", "hardlink_to", "link_to", "chmod",
                                 "lchmod"})
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_MODE_LIKE = re.compile(r"[rwxabtU+]{1,4}")


@dataclass(frozen=True)
class Finding:
    """One thing the runtime would refuse: where, what, why, and what would fix it.

    ``file`` is relative to the app folder (``/``-separated, undecodable bytes escaped);
    ``library`` names the app.yaml ``libraries:`` entry that would allow it, if any.
    """

    kind: str
    file: str
    line: int
    target: str
    rule: str
    fix: str
    library: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.file}:{self.line}: {self.kind}: {self.target} \u2014 {self.rule} "
                f"({self.fix})")


def scan(app_dir: str | os.PathLike[str], *,
         enabled_libraries: Iterable[str] | None = None) -> list[Finding]:
    """Scan the app folder and return its findings sorted by file and line.

    ``enabled_libraries`` are app.yaml ``libraries:`` names already enabled; ``None`` reads
    them from the app's ``app.yaml``. Raises ``NotADirectoryError`` when ``app_dir`` is not an
    existing folder; problems inside the tree are findings, never exceptions.
    """
    root = os.path.realpath(os.fspath(app_dir))
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{os.fspath(app_dir)!r} is not an existing folder")
    findings: list[Finding] = []
    config = _read_app_yaml(root, findings)
    enabled = set(config.libraries if enabled_libraries is None else enabled_libraries)
    skip = _skipper(DEFAULT_SKIP_FILES + config.skip_files)
    files = list(_walk(root, skip, findings))
    own = _own_top_modules(root)
    for path, rel in files:
        if rel.endswith(_EXTENSION_ENDINGS):
            findings.append(_extension_finding(rel, enabled))
        else:
            findings.extend(_scan_source(path, rel, own, enabled))
    unique = {(f.file, f.line, f.kind, f.target): f for f in findings}
    return sorted(unique.values(), key=lambda f: (f.file, f.line, f.kind, f.target))


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
        return _AppYaml()
    return _AppYaml(tuple(name for name, _version in config.libraries), config.skip_files)


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


def _walk(root: str, skip: Callable[[str], bool],
          findings: list[Finding]) -> Iterator[tuple[str, str]]:
    """``(path, relative path)`` of each Python source and shared library the app deploys.

    Iterative, in name order. Symlinks are followed only when they point inside the app, and
    only after the real tree, so files are named by their real location; each folder and file
    is taken once (symlink loops end). FIFOs and devices are never opened.
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


def _scan_source(path: str, rel: str, own: frozenset[str],
                 enabled: set[str]) -> list[Finding]:
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
        return _ModuleScan(shown, own, enabled).run(tree)
    except RecursionError:
        return [Finding("syntax", shown, 1, shown, "too deeply nested to analyse",
                        "simplify the module")]


class _ModuleScan:
    """The checks on one parsed module, with its import aliases."""

    def __init__(self, file: str, own: frozenset[str], enabled: set[str]) -> None:
        self.file = file
        self.own = own
        self.enabled = enabled
        self.aliases: dict[str, str] = {}  # local name -> dotted name it stands for
        self.bound: set[str] = set()  # names the module binds itself (shadowing builtins)
        self.guarded: set[int] = set()  # ids of nodes inside try/except ImportError
        self.findings: list[Finding] = []

    def run(self, tree: ast.AST) -> list[Finding]:
        nodes = list(ast.walk(tree))  # iterative: deep trees cannot overflow the stack
        for node in nodes:
            self._collect(node)
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._check_import(node, alias.name)
            elif isinstance(node, ast.ImportFrom):
                if not node.level and node.module:
                    self._check_import(node, node.module)
            elif isinstance(node, ast.Call):
                self._check_call(node)
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
        """Checks on a call to a known dotted name; whether one matched."""
        if name in ("__import__", "builtins.__import__", "importlib.import_module",
                    "importlib.__import__"):
            module = _constant_str(node.args[0]) if node.args else None
            if module and not module.startswith("."):
                self._check_import(node, module)
            return True
        module, _, attr = name.rpartition(".")
        if name in _OPENERS:
            mode = _argument(node, _OPENERS[name], "mode")
            mode_text = _constant_str(mode) if mode is not None else None
            if mode_text and any(c in mode_text for c in "wax+"):
                self._add(node, "file_write", name,
                          f"files are read-only on the runtime (mode {mode_text!r})",
                          _READONLY_FIX)
        elif module == "os" and attr == "open":
            flags = _argument(node, 1, "flags")
            if flags is not None and any(
                    isinstance(n, (ast.Attribute, ast.Name))
                    and (n.attr if isinstance(n, ast.Attribute) else n.id) in _OS_WRITE_FLAGS
                    for n in ast.walk(flags)):
                self._add(node, "file_write", name, "files are read-only on the runtime",
                          _READONLY_FIX)
        elif module == "os" and attr in _OS_WRITES or (
                module == "shutil" and (attr in _SHUTIL_WRITES or (
                    attr.startswith("copy") and attr != "copyfileobj"))):
            self._add(node, "file_write", name, "files are read-only on the runtime",
                      _READONLY_FIX)
        elif module == "tempfile" and attr not in _TEMPFILE_ALLOWED:
            self._add(node, "tempfile", name,
                      "the runtime's tempfile offers only TemporaryFile (in memory)",
                      _TEMPFILE_FIX)
        elif module == "subprocess" or module.startswith("subprocess.") or (
                module == "os" and (attr in _OS_PROCESS or attr.startswith(
                    _OS_PROCESS_PREFIXES))):
            self._add(node, "process", name,
                      "the runtime cannot start, replace or signal processes", _PROCESS_FIX)
        elif module == "socket" and attr in _SOCKET_CALLS:
            self._add(node, "network", name, "the runtime offers no raw sockets",
                      _NETWORK_FIX)
        elif module == "signal" and attr in _SIGNAL_CALLS:
            self._add(node, "system", name,
                      "signal handlers and timers are process-wide; the runtime removed them",
                      _SIGNAL_FIX)
        elif name in ("os.putenv", "os.unsetenv"):
            self._add(node, "system", name, "the process environment is shared with the host",
                      _ENVIRON_FIX)
        else:
            return False
        return True

    def _check_method(self, node: ast.Call, func: ast.Attribute) -> None:
        """Methods on values of unknown type: pathlib writes, ``Path(...).open("w")``."""
        target = f"{self._text(func.value)}.{func.attr}"
        if func.attr in _PATH_WRITE_METHODS:
            self._add(node, "file_write", target, "files are read-only on the runtime",
                      _READONLY_FIX)
        elif func.attr == "open":
            mode = _argument(node, 0, "mode")
            mode_text = _constant_str(mode) if mode is not None else None
            if mode_text and _MODE_LIKE.fullmatch(mode_text) and any(
                    c in mode_text for c in "wax+"):
                self._add(node, "file_write", target,
                          f"files are read-only on the runtime (mode {mode_text!r})",
                          _READONLY_FIX)


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    for item in node.keywords:
        if item.arg == keyword:
            return item.value
    if len(node.args) > position and not any(
            isinstance(a, ast.Starred) for a in node.args[:position + 1]):
        return node.args[position]
    return None


def _constant_str(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


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
