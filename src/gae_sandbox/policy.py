"""The policy: an immutable description of what sandboxed code may do.

Validated when built, so a typo fails at start-up with a message that names the field and the
accepted values, not at the first request. Plain data: building one installs nothing, and the
loaders (app.yaml, policy files, command-line flags: ``loaders.py``) import this module, never
the other way round.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .paths import realpath
from .runtime import PYTHON27_BLOCKED_MODULES

Mode = Literal["enforce", "report"]
Filesystem = Literal["readonly", "memory", "tmp"]

MODES: tuple[str, ...] = ("enforce", "report")
OsConfinement = Literal["required", "best_effort"]
OS_CONFINEMENTS: tuple[str, ...] = ("required", "best_effort")
FILESYSTEMS: tuple[str, ...] = ("readonly", "memory", "tmp")
#: The python3 runtime's request deadline with automatic scaling (10 minutes).
PYTHON3_DEADLINE = 600.0
#: System folders of the python3 runtime's image that apps read (its filesystem is readable
#: but for /tmp): the programs and libraries under ``/usr`` (``shutil.which``, the OS release
#: file, the time zone database, shared data) and the public CA certificates (a bundle read
#: by path when ``certifi`` is absent). Not ``/etc`` as a whole (its secrets are the host's
#: here), ``/proc`` (the host process's environment) or ``/dev``. The python3 preset reads
#: those of them this machine has.
PYTHON3_SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/ssl/certs",
                          "/usr/share/ca-certificates", "/usr/share/zoneinfo")
#: The python27 runtime's request deadline.
PYTHON27_DEADLINE = 60.0
_stat = os.stat  # captured before any sandbox patches it: validating a path is not the app's


@dataclass(frozen=True)
class HostRule:
    """One parsed ``allowed_hosts`` entry: a host pattern and a port (``None`` = any)."""

    host: str
    port: int | None

    def matches(self, host: str, port: int | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        return fnmatch.fnmatchcase(host.lower().rstrip("."), self.host)


@dataclass(frozen=True)
class Policy:
    """What a sandboxed request may do. Build with :meth:`python27`, change with :meth:`replace`.

    Module patterns (``allowed_modules``, ``blocked_modules``, ``allowed_c_extensions``) are
    module names that also cover their submodules (``"numpy"`` covers ``numpy.linalg``), or
    shell-style globs on the full name (``"_codecs_*"``).
    """

    app_root: str
    #: Extra folders the app may read (never write).
    readable_paths: tuple[str, ...] = ()
    #: Regular expressions on paths relative to ``app_root`` (app.yaml ``skip_files``): such
    #: files are neither readable nor importable.
    skip_files: tuple[str, ...] = ()
    #: Files and folders under ``app_root`` the app may not read (app.yaml static handlers
    #: without ``application_readable``).
    unreadable_paths: tuple[str, ...] = ()
    #: Environment variables the app sees in ``os.environ`` during its requests only.
    env_variables: tuple[tuple[str, str], ...] = ()
    #: Third-party modules (outside the standard library and the app) the app may import.
    allowed_modules: tuple[str, ...] = ("*",)
    #: Modules refused to every importer, the standard library included.
    blocked_modules: tuple[str, ...] = PYTHON27_BLOCKED_MODULES
    #: C extensions beyond the runtime's list: the runtime's app.yaml ``libraries:``.
    allowed_c_extensions: tuple[str, ...] = ()
    #: ``"host:port"`` patterns the app may connect to; ``"host:*"`` for any port; empty = none.
    allowed_hosts: tuple[str, ...] = ()
    #: ``"readonly"`` (python27), ``"memory"``: writes succeed in an in-memory filesystem
    #: private to the request, laid over the readable folders; ``"tmp"`` (python3): writes
    #: succeed only beneath the temporary folder (``/tmp``), in memory kept per ``Sandbox``
    #: (the runtime's instance); elsewhere they are refused. Nothing reaches the disk.
    filesystem: Filesystem = "readonly"
    #: Seconds a request may run; ``None`` for no deadline.
    deadline: float | None = None
    #: ``"enforce"`` refuses; ``"report"`` lets everything through and records it.
    mode: Mode = "enforce"
    #: Seconds after the deadline before ``HardDeadlineExceeded`` and the host's callback.
    hard_deadline_grace: float = 2.0
    #: Whether sandboxed code may start threads (they are joined when the request ends).
    allow_threads: bool = True
    #: Whether ``start_background_thread`` may start threads that outlive the request.
    allow_background_threads: bool = False
    #: Whether the request waits for the threads it started (within its deadline, then
    #: ``DeadlineExceededError`` in them), as on the python27 runtime; ``False`` (python3): they
    #: run on after the request, still sandboxed (a module-level ``ThreadPoolExecutor``'s
    #: workers, a monitoring client's background thread).
    join_threads: bool = True
    #: Whether sandboxed code may start and signal processes (``subprocess``, ``os.system``,
    #: ``fork``, ``exec*``, ``kill``): the python3 runtime allows it, python27 did not.
    allow_processes: bool = False
    #: App modules compiled with RestrictedPython (restricted mode) when imported in a sandbox.
    restricted_modules: tuple[str, ...] = ()
    #: What ``confine_process`` does when the kernel lacks a layer (Landlock, its TCP rules,
    #: seccomp): ``"required"`` raises ``ConfinementUnavailable``, ``"best_effort"`` warns.
    os_confinement: OsConfinement = "required"
    #: The working directory of a request: ``"app_root"`` (the runtime: ``os.getcwd()`` is the
    #: app's folder and relative paths resolve there) or ``"host"`` (the process's own). Either
    #: way it is per request: ``os.chdir`` in a sandbox moves only that request's (and its
    #: threads'), never the process's.
    working_directory: Literal["app_root", "host"] = "app_root"
    #: Whether a request served through ``SandboxMiddleware`` sees its CGI variables
    #: (``REQUEST_METHOD``, ``PATH_INFO``, ``HTTP_HOST``, ``SERVER_SOFTWARE``, ``USER_EMAIL``
    #: ...) in ``os.environ``, as on the python27 runtime; the python3 runtime did not.
    request_environ: bool = True

    _host_rules: tuple[HostRule, ...] = field(
        init=False, repr=False, compare=False, default=()
    )
    _cache: dict[Any, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        set_ = object.__setattr__
        set_(self, "app_root", _folder("app_root", self.app_root))
        set_(self, "readable_paths", tuple(
            _folder("readable_paths", p) for p in _strings("readable_paths", self.readable_paths)
        ))
        set_(self, "skip_files", _regexes("skip_files", self.skip_files))
        set_(self, "unreadable_paths", tuple(
            _inside_root(self.app_root, p) for p in _strings("unreadable_paths",
                                                             self.unreadable_paths)
        ))
        set_(self, "env_variables", _environment(self.env_variables))
        for name in ("allowed_modules", "blocked_modules", "allowed_c_extensions",
                     "restricted_modules"):
            patterns = _strings(name, getattr(self, name))
            for pattern in patterns:
                _check_module_pattern(name, pattern)
            set_(self, name, patterns)
        hosts = _strings("allowed_hosts", self.allowed_hosts)
        set_(self, "allowed_hosts", hosts)
        set_(self, "_host_rules", tuple(parse_host_rule(h) for h in hosts))
        if self.filesystem not in FILESYSTEMS:
            raise ValueError(
                f"Policy.filesystem must be one of {', '.join(map(repr, FILESYSTEMS))}, "
                f"got {self.filesystem!r}"
            )
        if self.mode not in MODES:
            raise ValueError(
                f"Policy.mode must be one of {', '.join(map(repr, MODES))}, got {self.mode!r}"
            )
        set_(self, "deadline", _deadline("deadline", self.deadline))
        grace = _deadline("hard_deadline_grace", self.hard_deadline_grace)
        if grace is None:
            raise TypeError("Policy.hard_deadline_grace must be a positive number of seconds")
        set_(self, "hard_deadline_grace", grace)
        if self.os_confinement not in OS_CONFINEMENTS:
            raise ValueError(
                f"Policy.os_confinement must be one of {', '.join(map(repr, OS_CONFINEMENTS))}, "
                f"got {self.os_confinement!r}"
            )
        if self.working_directory not in ("app_root", "host"):
            raise ValueError("Policy.working_directory must be 'app_root' or 'host', "
                             f"got {self.working_directory!r}")
        for name in ("allow_threads", "allow_background_threads", "join_threads",
                     "allow_processes", "request_environ"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"Policy.{name} must be True or False, got {getattr(self, name)!r}"
                )

    @classmethod
    def python27(cls, app_root: str | os.PathLike[str], **changes: Any) -> Policy:
        """The App Engine python27 runtime: read-only files, no sockets, no processes, no
        C extensions beyond the runtime's list, a 60-second request deadline."""
        base: dict[str, Any] = {
            "blocked_modules": PYTHON27_BLOCKED_MODULES,
            "deadline": PYTHON27_DEADLINE,
        }
        base.update(changes)
        return cls(app_root=app_root, **base)  # type: ignore[arg-type]

    @classmethod
    def python3(cls, app_root: str | os.PathLike[str], **changes: Any) -> Policy:
        """App Engine's second-generation Python 3 runtime (python37 ... python314), as a
        portability profile: any module and C extension, outbound connections anywhere,
        processes and threads; the filesystem read-only except ``/tmp``, which is an
        in-memory folder per ``Sandbox``, with the image's system folders readable too
        (:data:`PYTHON3_SYSTEM_FOLDERS`); a 10-minute request deadline. Not a security
        boundary: C extensions and processes reach past every in-process check."""
        base: dict[str, Any] = {
            "blocked_modules": (),
            "allowed_c_extensions": ("*",),
            "allowed_hosts": ("*:*",),
            "filesystem": "tmp",
            "allow_processes": True,
            "allow_background_threads": True,
            "join_threads": False,
            "deadline": PYTHON3_DEADLINE,
            "request_environ": False,
            "readable_paths": tuple(folder for folder in PYTHON3_SYSTEM_FOLDERS
                                    if os.path.isdir(folder)),
        }
        base.update(changes)
        return cls(app_root=app_root, **base)  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Policy:
        """A copy with ``changes`` applied, validated like a new policy."""
        names = {f.name for f in dataclasses.fields(self) if f.init}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(
                f"Policy has no field {', '.join(unknown)}; fields are {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)

    @property
    def host_rules(self) -> tuple[HostRule, ...]:
        return self._host_rules

    @property
    def skip_pattern(self) -> re.Pattern[str] | None:
        """``skip_files`` as one compiled expression (``None`` when empty)."""
        if not self.skip_files:
            return None
        pattern = self._cache.get("skip_pattern")
        if pattern is None:
            pattern = re.compile("|".join(f"(?:{p})" for p in self.skip_files))
            self._cache["skip_pattern"] = pattern
        return pattern

    def hidden_by(self, resolved: str) -> str | None:
        """The setting that hides a resolved path under ``app_root`` from the app
        (``"skip_files"`` or ``"unreadable_paths"``), or ``None``."""
        root = self.app_root
        if not resolved.startswith(root + "/"):
            return None
        for hidden in self.unreadable_paths:
            if resolved == hidden or resolved.startswith(hidden + "/"):
                return "unreadable_paths"
        return "skip_files" if self.skipped(resolved) else None

    def skipped(self, resolved: str) -> bool:
        """Whether ``skip_files`` hides a resolved path under ``app_root`` (the SDK never
        deployed it: not to the app, not as a static file)."""
        root = self.app_root
        pattern = self.skip_pattern
        if pattern is None or not resolved.startswith(root + "/"):
            return False
        relative = resolved[len(root) + 1:]
        # a skipped folder hides what is inside it
        end = relative.find("/")
        while end != -1:
            if pattern.match(relative[:end]) is not None:
                return True
            end = relative.find("/", end + 1)
        return pattern.match(relative) is not None


def module_matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``name`` is covered by one of the module ``patterns``."""
    for pattern in patterns:
        if pattern == "*" or name == pattern or name.startswith(pattern + "."):
            return True
        if _is_glob(pattern) and fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def parse_host_rule(entry: str) -> HostRule:
    """Parse ``"host:port"``, ``"host:*"``, ``"[v6]:port"``; a clear ValueError otherwise."""
    text = entry.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(
            f"Policy.allowed_hosts entry {entry!r} must be 'host:port' or 'host:*' "
            "(for example 'api.example.com:443' or '127.0.0.1:*')"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"Policy.allowed_hosts entry {entry!r} has an empty host")
    elif ":" in host:
        raise ValueError(
            f"Policy.allowed_hosts entry {entry!r}: write IPv6 addresses in brackets, "
            "like '[::1]:8080'"
        )
    if port_text == "*":
        port = None
    else:
        digits = port_text.isascii() and port_text.isdigit()  # int() refuses '²'
        if not digits or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"Policy.allowed_hosts entry {entry!r}: port must be 1-65535 or '*'"
            )
        port = int(port_text)
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"Policy.allowed_hosts entry {entry!r}: {host!r} is not a host name")
    return HostRule(host.lower().rstrip("."), port)


def _regexes(name: str, value: Any) -> tuple[str, ...]:
    patterns = _strings(name, value)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"Policy.{name} entry {pattern!r} is not a regular expression: "
                             f"{error}") from None
    return patterns


def _inside_root(root: str, path: str) -> str:
    resolved = realpath(os.path.join(root, path)) or os.path.join(root, path)
    if resolved != root and not resolved.startswith(root + "/"):
        raise ValueError(f"Policy.unreadable_paths entry {path!r} is not inside app_root {root}")
    return resolved


def _environment(value: Any) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise TypeError("Policy.env_variables must be a mapping of names to strings, "
                        f"got {type(value).__name__}")
    pairs = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"Policy.env_variables entry {item!r} must be a (name, value) pair")
        key, text = item
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"Policy.env_variables name {key!r} must be a non-empty string "
                             "without '=' or NUL")
        if not isinstance(text, str) or "\0" in text:
            raise TypeError(f"Policy.env_variables[{key!r}] must be a string, got {text!r}")
        pairs.append((key, text))
    return tuple(sorted(dict(pairs).items()))


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, frozenset, set)):
        raise TypeError(
            f"Policy.{name} must be a tuple of strings, got {type(value).__name__} {value!r}"
        )
    items = tuple(value)
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(
                f"Policy.{name} must hold strings, got {type(item).__name__} {item!r}"
            )
    return tuple(os.fspath(item) for item in items)


def _folder(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"Policy.{name} must be a folder path (str or os.PathLike), "
            f"got {type(value).__name__} {value!r}"
        )
    text = os.fspath(value)
    if not isinstance(text, str) or not text or "\0" in text:
        raise ValueError(f"Policy.{name} must be a non-empty folder path, got {value!r}")
    path = realpath(os.path.abspath(text))
    try:
        is_folder = path is not None and stat.S_ISDIR(_stat(path).st_mode)
    except (OSError, ValueError):
        is_folder = False
    if path is None or not is_folder:
        raise ValueError(f"Policy.{name}: {text!r} is not an existing folder")
    if path == os.path.dirname(path):
        raise ValueError(f"Policy.{name}: the filesystem root {text!r} cannot be a sandbox folder")
    return path


def _check_module_pattern(name: str, pattern: str) -> None:
    text = pattern.replace("*", "x").replace("?", "x").replace("[", "").replace("]", "")
    if not pattern or not all(part.isidentifier() for part in text.split(".")):
        raise ValueError(
            f"Policy.{name} entry {pattern!r} is not a module name or pattern "
            "(like 'json', 'numpy' or '_codecs_*')"
        )


def _deadline(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"Policy.{name} must be seconds (a positive number) or None, got {value!r}"
        )
    try:
        finite = math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite or value <= 0:
        raise ValueError(
            f"Policy.{name} must be a positive, finite number of seconds or None, got {value!r}"
        )
    return float(value)
