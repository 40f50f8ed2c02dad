"""App Engine ``app.yaml``: the runtime's own description of an app, read into a policy.

Parsed with PyYAML's safe loader, YAML 1.1 as the SDK did (``threadsafe: yes`` is a boolean).
Every error names the file and the line; unknown keys warn; nothing an ``app.yaml`` says can
crash the loader or widen the sandbox beyond what the keys mean.
"""

from __future__ import annotations

import os
import re
import reprlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from .policy import Policy

#: The SDK's default ``skip_files`` (used when app.yaml has none).
DEFAULT_SKIP_FILES: tuple[str, ...] = (
    r"^(.*/)?app\.ya?ml$",
    r"^(.*/)?#.*#$",
    r"^(.*/)?.*~$",
    r"^(.*/)?.*\.py[co]$",
    r"^(.*/)?.*/RCS/.*$",
    r"^(.*/)?\..*$",
)

#: app.yaml ``libraries:`` -> (C extension modules it enables). Pure-Python libraries enable
#: nothing beyond what the policy's ``allowed_modules`` already allows.
LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "lxml": ("lxml",),
    "PIL": ("PIL", "_imaging*"),
    "pycrypto": ("Crypto",),
    "ssl": ("ssl", "_ssl"),
    "MySQLdb": ("_mysql", "MySQLdb"),
    "matplotlib": ("matplotlib",),
    "yaml": ("_yaml", "yaml"),
    "grpcio": ("grpc",),
    "cv": ("cv", "cv2"),
    "markupsafe": ("markupsafe",),
    "django": (),
    "jinja2": ("markupsafe",),
    "webapp2": (),
    "webob": ("webob",),
    "protorpc": (),
    "pytz": (),
    "setuptools": (),
    "six": (),
    "endpoints": (),
    "futures": (),
    "enum": (),
    "flask": ("markupsafe",),
    "werkzeug": (),
    "click": (),
    "itsdangerous": (),
}

TOP_LEVEL_KEYS = {
    "application", "version", "runtime", "api_version", "threadsafe", "handlers",
    "libraries", "skip_files", "env_variables", "builtins", "includes", "inbound_services",
    "default_expiration", "error_handlers", "instance_class", "automatic_scaling",
    "basic_scaling", "manual_scaling", "service", "module", "derived_file_type",
    "admin_console", "pagespeed", "beta_settings", "resources", "health_check", "network",
    "entrypoint", "vm", "runtime_config", "readiness_check", "liveness_check",
    "vpc_access_connector",
}
HANDLER_KEYS = {
    "url", "script", "static_dir", "static_files", "upload", "application_readable", "login",
    "secure", "mime_type", "expiration", "http_headers", "auth_fail_action",
    "require_matching_file", "position", "redirect_http_response_code",
}
SUPPORTED_RUNTIMES = ("python27", "python3", "python37", "python38", "python39", "python310",
                      "python311", "python312", "python313", "python314")
#: The second-generation runtimes: ``Policy.python3``, handlers optional, ``script: auto``.
_PYTHON3_RUNTIME = re.compile(r"python3\d*")
#: What the python3 runtime serves without an ``entrypoint:``: gunicorn on ``main:app``.
DEFAULT_WSGI_APP = "main:app"


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` for any value the loader builds, bounded in time and length.

    ``reprlib`` picks its method by the exact type name, so a subclass (the loader's
    ``_LineList``/``_LineDict``) would fall back to the built-in ``repr`` of the whole value:
    here the built-in base class picks the method. Integers too long to print (a 1 MB
    ``0b...`` scalar) are shown by size, bytes are cut before they are rendered.
    """

    def repr1(self, x: Any, level: int) -> str:
        for cls in type(x).__mro__:
            if cls.__module__ in ("builtins", "collections", "array"):
                method = getattr(self, f"repr_{cls.__name__}", None)
                if method is not None:
                    return str(method(x, level))
        return self.repr_instance(x, level)

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4 * self.maxlong:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_bytes(self, x: bytes, level: int) -> str:
        shown = repr(bytes(x[:self.maxstring]))
        return shown if len(x) <= self.maxstring else f"{shown[:-1]}...{shown[-1]}"


_SHOW = _BoundedRepr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 4, 4, 60, 60
_SHOW_LIMIT = 160  # characters: what any value contributes to a message, at most


def _show(value: Any) -> str:
    """A short, bounded repr for messages (an alias bomb must not become the message)."""
    try:
        text = _SHOW.repr(value)
    except Exception:  # noqa: BLE001 - a value that cannot be shown must not hide the error
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= _SHOW_LIMIT else text[:_SHOW_LIMIT - 3] + "..."


#: ``expiration:`` and ``default_expiration:``: numbers with a unit (d, h, m, s; a bare
#: number is seconds), separated by spaces: ``"4d 5h"``, ``"30m"``, ``"1d 12h 30m 10s"``.
_EXPIRATION = re.compile(r"\s*(?:\d+[dhms]?\s+)*\d+[dhms]?\s*", re.IGNORECASE)
_EXPIRATION_PART = re.compile(r"(\d+)([dhms]?)", re.IGNORECASE)
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}


def parse_expiration(value: Any, fail: Callable[..., AppYamlError], line: int,
                     key: str) -> int:
    """Seconds from an ``expiration:`` value such as ``"4d 5h"``."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _EXPIRATION.fullmatch(text):
        raise fail(f"{key} must be a time like \"4d 5h\" or \"30m\" (units d, h, m, s), got "
                   f"{_show(value)}", line)
    return sum(int(number) * _SECONDS[unit.lower()]
               for number, unit in _EXPIRATION_PART.findall(text))


class AppYamlError(ValueError):
    """A broken app.yaml: the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class Handler:
    """One ``handlers:`` entry: a URL regex routed to a WSGI script or to static files."""

    url: str
    script: str | None = None
    static_dir: str | None = None
    static_files: str | None = None
    upload: str | None = None
    application_readable: bool = False
    mime_type: str | None = None
    http_headers: tuple[tuple[str, str], ...] = ()
    line: int = 0
    #: ``optional``, ``required`` (a signed-in user) or ``admin``; the development server
    #: emulates the runtime's sign-in (``/_ah/login``), answering ``auth_fail_action``
    #: (``redirect`` to the sign-in page, or ``unauthorized``: 401) to anyone else.
    login: str = "optional"
    auth_fail_action: str = "redirect"
    #: static handlers: how long browsers and proxies may keep the file, in seconds
    #: (``expiration:``, else the app's ``default_expiration:``; None: neither is set).
    expiration: int | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        if self.static_dir is not None:
            return re.compile(re.escape(self.url.rstrip("/")) + r"/(.*)")
        return re.compile(self.url)


@dataclass(frozen=True)
class AppConfig:
    """What an app.yaml says, validated."""

    path: str
    app_root: str
    runtime: str
    api_version: str | None
    threadsafe: bool
    handlers: tuple[Handler, ...]
    libraries: tuple[tuple[str, str], ...]
    skip_files: tuple[str, ...]
    env_variables: tuple[tuple[str, str], ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: python3 runtimes: the ``entrypoint:`` command, and the WSGI app it (or the runtime's
    #: default, ``main:app``) serves, as ``module:attribute``.
    entrypoint: str | None = None
    wsgi_app: str | None = None
    #: Folders the entrypoint's server puts first on ``sys.path`` (gunicorn's ``--chdir``
    #: and ``--pythonpath``, uwsgi's ``--chdir``/``--pythonpath``), absolute, in the app.
    module_paths: tuple[str, ...] = ()

    @property
    def preset(self) -> str:
        """``"python3"`` for the second-generation runtimes, else ``"python27"``."""
        return "python3" if _PYTHON3_RUNTIME.fullmatch(self.runtime) else "python27"

    def settings(self) -> dict[str, Any]:
        """The Policy fields this app.yaml sets (the preset supplies the rest)."""
        if self.preset == "python3":
            environment = dict(self.python3_environment())
            environment.update(self.env_variables)
            return {
                "skip_files": self.skip_files,
                "unreadable_paths": self.unreadable_paths(),
                "env_variables": tuple(environment.items()),
            }
        c_extensions: list[str] = []
        for name, _version in self.libraries:
            c_extensions.extend(LIBRARIES.get(name, (name,)))
        return {
            "allowed_c_extensions": tuple(dict.fromkeys(c_extensions)),
            "skip_files": self.skip_files,
            "unreadable_paths": self.unreadable_paths(),
            "env_variables": self.env_variables,
        }

    @property
    def service(self) -> str:
        """``service:`` (``module:`` before it was renamed), else ``default``."""
        return str(self.extra.get("service") or self.extra.get("module") or "default")

    def python3_environment(self) -> tuple[tuple[str, str], ...]:
        """The variables the python3 runtime sets for every app (``GAE_ENV`` and friends),
        but not those the process environment sets already (``GOOGLE_CLOUD_PROJECT`` named
        for the client libraries, say). The development server adds ``PORT`` and
        ``GAE_INSTANCE``, which are its own."""
        project = str(self.extra.get("application") or "local")
        variables = (("GAE_ENV", "standard"), ("GAE_RUNTIME", self.runtime),
                     ("GAE_SERVICE", self.service), ("GAE_VERSION", "dev"),
                     ("GAE_APPLICATION", f"dev~{project}"), ("GOOGLE_CLOUD_PROJECT", project))
        return tuple((name, value) for name, value in variables if name not in os.environ)

    def policy(self, **changes: Any) -> Policy:
        """The policy for this app: ``Policy.python27`` or, for ``runtime: python3X``,
        ``Policy.python3``, with what app.yaml sets (``changes`` override any field)."""
        settings = self.settings()
        settings.update(changes)
        preset = Policy.python3 if self.preset == "python3" else Policy.python27
        try:
            return preset(app_root=self.app_root, **settings)
        except ValueError as error:  # what app.yaml said (a bad override is a TypeError)
            raise AppYamlError(f"{self.path}: {error}") from None

    def unreadable_paths(self) -> tuple[str, ...]:
        """Static files and folders the app may not read (no ``application_readable``)."""
        paths: list[str] = []
        for handler in self.handlers:
            if handler.application_readable:
                continue
            if handler.static_dir is not None:
                paths.append(handler.static_dir)
            elif handler.static_files is not None:
                paths.extend(_static_files_matching(self.app_root, handler))
        return tuple(dict.fromkeys(paths))

    def scripts(self) -> list[str]:
        return [h.script for h in self.handlers if h.script]


def _static_files_matching(app_root: str, handler: Handler) -> list[str]:
    """Files under the app root that a ``static_files`` handler's ``upload`` regex covers."""
    if not handler.upload:
        return []
    try:
        upload = re.compile(handler.upload)
    except re.error:
        return []
    found: list[str] = []
    root = os.path.realpath(app_root)
    for folder, dirs, files in os.walk(app_root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, app_root)
            if not is_within(root, os.path.realpath(path)):
                continue  # a link out of the app: outside the readable set anyway
            if upload.fullmatch(relative) or upload.match(relative):
                found.append(relative)
    return found


# --- loading --------------------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping and sequence.

    Anchors (``&name``) and aliases (``*name``) are refused where they are met, before any
    node is built, as App Engine's own app.yaml parser refused them: an app.yaml never needs
    them, and nested aliases ("billion laughs") would make a 1 KB file a billion values.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.events.AliasEvent):
            what = f"alias *{event.anchor[:40]}"  # anchor names are letters, digits, - and _
        elif getattr(event, "anchor", None) is not None:
            what = f"anchor &{event.anchor[:40]}"
        else:
            return super().compose_node(parent, index)
        raise yaml.composer.ComposerError(
            None, None, f"{what}: anchors and aliases are not supported in app.yaml (App "
            "Engine refuses them too); write the value out", event.start_mark)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        """A scalar Python refuses to convert (``2001-13-45``, ``!!float x``) is a YAML
        error at its line, not a ``ValueError`` out of the loader."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {str(error)[:200]}", node.start_mark
            ) from None


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping = _LineDict()
    mapping.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_show(key)} (first on line "
                f"{mapping.key_lines[key]})", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> list[Any]:
    items = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    items.line = node.start_mark.line + 1
    return items


class _LineDict(dict):  # type: ignore[type-arg]
    line = 0

    def __init__(self) -> None:
        super().__init__()
        self.key_lines: dict[Any, int] = {}


class _LineList(list):  # type: ignore[type-arg]
    line = 0


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)

_MAX_NUMBER_CHARACTERS = 100  # a port, a version, a count: never longer


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int:
    """YAML 1.1 integers, refused past a plain length: Python refuses to convert (or takes
    quadratic time on) integers of thousands of digits, and no app.yaml value is one."""
    if len(node.value) > _MAX_NUMBER_CHARACTERS:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of {len(node.value)} characters is not an app.yaml value",
            node.start_mark)
    return int(loader.construct_yaml_int(node))


_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_MAX_SIZE = 1 << 20  # an app.yaml is small; a huge one is a mistake, not a config


def load_app_yaml(path: str | os.PathLike[str]) -> AppConfig:
    """Read and validate ``path`` (an ``app.yaml`` file, or a folder holding one)."""
    location = os.fspath(path)
    if not isinstance(location, str) or "\0" in location:
        raise AppYamlError(f"{location!r}: not a usable path")
    if os.path.isdir(location):
        for name in ("app.yaml", "app.yml"):
            candidate = os.path.join(location, name)
            if os.path.isfile(candidate):
                location = candidate
                break
        else:
            raise AppYamlError(f"{location}: no app.yaml in this folder")
    return _parse(location, _read_yaml(location, "app.yaml"))


def _read_yaml(location: str, what: str) -> Any:
    """The document of one YAML file (app.yaml or a file it includes), bounded in size."""
    try:
        with open(location, "rb") as file:
            raw = file.read(_MAX_SIZE + 1)
    except OSError as error:
        raise AppYamlError(f"{location}: cannot read {what}: {error.strerror or error}") from None
    if len(raw) > _MAX_SIZE:
        raise AppYamlError(f"{location}: larger than {_MAX_SIZE} bytes; not an {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise AppYamlError(f"{location}: not UTF-8 text ({error.reason} at byte "
                           f"{error.start})") from None
    try:
        document = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a safe loader subclass
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise AppYamlError(f"{location}{line}: invalid YAML: {error.problem or error}") from None
    except (yaml.YAMLError, RecursionError) as error:
        raise AppYamlError(f"{location}: invalid YAML: {str(error)[:300]}") from None
    except (ValueError, OverflowError) as error:  # a value filled in after its node was built
        raise AppYamlError(f"{location}: invalid YAML: cannot read a value: "
                           f"{str(error)[:200]}") from None
    return document


def _failure(location: str) -> Callable[..., AppYamlError]:
    """``fail(message, line=0)``: the error naming ``location`` (and the line, when known)."""

    def fail(message: str, line: int = 0) -> AppYamlError:
        return AppYamlError(f"{location}{f':{line}' if line else ''}: {message}")

    return fail


def _parse(location: str, document: Any) -> AppConfig:
    fail = _failure(location)

    if not isinstance(document, dict):
        raise fail("app.yaml must be a mapping of keys (runtime:, handlers:, ...)")
    lines: dict[Any, int] = getattr(document, "key_lines", {})

    for key in document:
        if key not in TOP_LEVEL_KEYS:
            warnings.warn(f"{location}:{lines.get(key, 0)}: unknown app.yaml key {_show(key)} "
                          "ignored", stacklevel=3)

    runtime = document.get("runtime")
    if runtime not in SUPPORTED_RUNTIMES:
        raise fail(f"runtime: {_show(runtime)} is not supported; gae_sandbox emulates python27 "
                   "and the python3 runtimes (python3, python37 ... python314); for another "
                   "language, or to pick the rules yourself, serve the app with a policy "
                   "file or flags instead (gae-sandbox serve --help)", lines.get("runtime", 0))
    python3 = bool(_PYTHON3_RUNTIME.fullmatch(runtime))
    api_version = document.get("api_version")
    if api_version is not None and not isinstance(api_version, (str, int, float)):
        raise fail("api_version must be a plain value like 1", lines.get("api_version", 0))
    threadsafe = document.get("threadsafe", False)
    if not isinstance(threadsafe, bool):
        raise fail(f"threadsafe must be true or false, got {_show(threadsafe)}",
                   lines.get("threadsafe", 0))

    app_root = os.path.dirname(os.path.abspath(location))
    default_expiration = None
    if document.get("default_expiration") is not None:
        default_expiration = parse_expiration(document["default_expiration"], fail,
                                              lines.get("default_expiration", 0),
                                              "default_expiration")
    handlers: tuple[Handler, ...] = ()
    if document.get("handlers") is not None or not document.get("includes"):
        handlers = _handlers(document.get("handlers"), lines.get("handlers", 0), app_root,
                             location, fail, python3, default_expiration)
    entrypoint, wsgi_app, module_paths = None, None, ()
    if python3:
        entrypoint = document.get("entrypoint")
        if entrypoint is not None and (not isinstance(entrypoint, str) or not entrypoint.strip()):
            raise fail(f"entrypoint must be a command line, got {_show(entrypoint)}",
                       lines.get("entrypoint", 0))
        wsgi_app = (wsgi_app_of_entrypoint(entrypoint, fail, lines.get("entrypoint", 0))
                    if entrypoint else DEFAULT_WSGI_APP)
        if entrypoint:
            module_paths = entrypoint_module_paths(entrypoint, app_root, fail,
                                                   lines.get("entrypoint", 0))
        try:
            parse_wsgi_reference(wsgi_app)
        except ValueError as error:
            raise fail(f"entrypoint names no WSGI app it can serve: {error}",
                       lines.get("entrypoint", 0)) from None
    elif "entrypoint" in document:
        raise fail("entrypoint: is for the python3 runtimes; python27 apps name their WSGI "
                   "apps in handlers' script:", lines.get("entrypoint", 0))
    libraries = _libraries(document.get("libraries"), lines.get("libraries", 0), location, fail)
    skip_files = _skip_files(document.get("skip_files"), lines.get("skip_files", 0), fail,
                             () if python3 else DEFAULT_SKIP_FILES)
    env_variables = _env_variables(document.get("env_variables"),
                                   lines.get("env_variables", 0), fail)
    included = _Included(main=os.path.realpath(location), default_expiration=default_expiration)
    _include_all(document, location, app_root, python3, included, fail, depth=0)
    if included.files:
        handlers = (*included.head, *handlers, *included.tail)
        skip_files = tuple(dict.fromkeys((*skip_files, *included.skip_files)))
        environment = dict(env_variables)
        environment.update(included.env_variables)  # as the SDK merges: the include wins
        env_variables = tuple(environment.items())
        if not handlers and not python3:
            raise fail("no handlers: neither app.yaml nor the files it includes route a URL "
                       "(runtime python27 needs a list of url: ... entries)",
                       lines.get("includes", 0))
    extra = {k: v for k, v in document.items() if k not in {
        "runtime", "api_version", "threadsafe", "handlers", "libraries", "skip_files",
        "env_variables", "entrypoint"}}
    return AppConfig(
        path=os.path.abspath(location), app_root=app_root, runtime=runtime,
        api_version=None if api_version is None else str(api_version), threadsafe=threadsafe,
        handlers=handlers, libraries=libraries, skip_files=skip_files,
        env_variables=env_variables, extra=extra, entrypoint=entrypoint, wsgi_app=wsgi_app,
        module_paths=module_paths,
    )


#: gunicorn and uwsgi options that take a value (skipped when looking for the app).
_OPTIONS_WITH_VALUES = frozenset({
    "-b", "--bind", "-w", "--workers", "-k", "--worker-class", "--threads", "-t", "--timeout",
    "-c", "--config", "--chdir", "--log-level", "--access-logfile", "--error-logfile",
    "--max-requests", "--graceful-timeout", "--keep-alive", "-e", "--env", "--pythonpath",
    "--http-socket", "--http", "--socket", "--processes", "--module", "--wsgi-file",
    "--callable", "--master-fifo", "--home", "-H", "--venv", "--worker-connections",
    "--limit-request-line", "--backlog", "-p", "--pid", "--name", "-n",
})


def wsgi_app_of_entrypoint(command: str, fail: Any, line: int) -> str:
    """The ``module:attribute`` an ``entrypoint:`` serves: ``gunicorn [opts] main:app``,
    ``uwsgi --wsgi-file main.py --callable app`` / ``--module main:app``, ``python main.py``
    (its module's ``app``, the runtime's default name)."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError as error:
        raise fail(f"entrypoint {_show(command)} is not a command line: {error}", line) from None
    while words and ("=" in words[0] and not words[0].startswith("-")):
        words = words[1:]  # VAR=value prefixes
    if words and words[0] in ("exec", "env"):
        words = words[1:]
    program = os.path.basename(words[0]) if words else ""
    rest = words[1:]
    if program.startswith("python"):
        if rest[:1] == ["-m"]:
            rest = rest[1:]
            if rest and rest[0] in ("gunicorn", "uwsgi", *_ASGI_SERVERS):
                program, rest = rest[0], rest[1:]
        else:
            script = next((w for w in rest if w.endswith(".py")), None)
            if script is not None:
                return f"{_module_of_file(script)}:app"
    if program in _ASGI_SERVERS:
        raise fail(_asgi_refusal(command, f"{program} serves ASGI apps"), line)
    if program == "uwsgi":
        options = _options(rest)
        module = options.get("--module") or options.get("-w")
        if module:
            return module if ":" in module else f"{module}:application"
        wsgi_file = options.get("--wsgi-file")
        if wsgi_file:
            return f"{_module_of_file(wsgi_file)}:{options.get('--callable', 'application')}"
    if program == "gunicorn":
        worker = _worker_class(rest)
        if worker is not None and _ASGI_WORKER.search(worker):
            raise fail(_asgi_refusal(command, f"its worker class {worker} serves ASGI apps"),
                       line)
        positional = [w for w in _positionals(rest)]
        if positional:
            target = positional[-1]
            return target if ":" in target else f"{target}:application"
    raise fail(f"entrypoint {_show(command)}: cannot tell which WSGI app it serves; "
               "gae_sandbox reads 'gunicorn [options] module:app', 'uwsgi --wsgi-file FILE.py "
               "--callable app' or 'python FILE.py' (for another server, name the app with "
               "serve --wsgi-app module:app)", line)


def entrypoint_module_paths(command: str, app_root: str, fail: Any,
                            line: int) -> tuple[str, ...]:
    """The folders an entrypoint's gunicorn or uwsgi puts first on ``sys.path``: ``--chdir
    DIR`` (the server changes into it and imports from it) and ``--pythonpath A,B``, relative
    to the app's folder; one outside the app is an error (it was not deployed)."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        return ()  # wsgi_app_of_entrypoint said so already
    found: list[str] = []
    root = os.path.realpath(app_root)
    for index, word in enumerate(words):
        name, equals, value = word.partition("=")
        if name not in ("--chdir", "--pythonpath"):
            continue
        if not equals:
            value = words[index + 1] if index + 1 < len(words) else ""
        for part in value.split(",") if name == "--pythonpath" else [value]:
            if not part:
                continue
            folder = os.path.realpath(os.path.join(root, part))
            if folder != root and not folder.startswith(root + os.sep):
                raise fail(f"entrypoint {_show(command)}: {name} {part!r} is outside the app's "
                           "folder, which is all that is deployed", line)
            if name == "--chdir":
                found.insert(0, folder)
            else:
                found.append(folder)
    return tuple(dict.fromkeys(found))


#: Servers and gunicorn worker classes that call ``app(scope, receive, send)`` (ASGI).
_ASGI_SERVERS = ("uvicorn", "hypercorn", "daphne", "granian")
_ASGI_WORKER = re.compile(r"uvicorn|asgi|hypercorn", re.IGNORECASE)


def _worker_class(words: list[str]) -> str | None:
    """gunicorn's ``-k CLASS``, ``-kCLASS``, ``--worker-class CLASS`` or ``--worker-class=CLASS``
    (the last one given wins, as in gunicorn)."""
    found = None
    for index, word in enumerate(words):
        name, equals, value = word.partition("=")
        if name in ("-k", "--worker-class"):
            found = value if equals else (words[index + 1] if index + 1 < len(words) else None)
        elif word.startswith("-k") and not word.startswith("--"):
            found = word[2:]
    return found


def _asgi_refusal(command: str, why: str) -> str:
    """Why an ASGI entrypoint is refused, and what to write instead."""
    return (f"entrypoint {_show(command)}: {why}; the gae_sandbox development server runs "
            "WSGI apps only (it calls app(environ, start_response)). Change entrypoint: to a "
            "WSGI server and app, e.g. 'gunicorn -b :$PORT main:app' with gunicorn's default "
            "worker; an ASGI app (FastAPI, Starlette) can be served as WSGI by wrapping it, "
            "e.g. 'from a2wsgi import ASGIMiddleware; wsgi_app = ASGIMiddleware(app)' and "
            "'gunicorn -b :$PORT main:wsgi_app'")


def parse_wsgi_reference(reference: str) -> tuple[str, str, tuple[Any, ...], dict[str, Any]]:
    """``module:name``, ``module:factory(literal, key=literal)`` (gunicorn's syntax) or a
    python27 ``package.module.app``, as (module, name, args, kwargs) with the arguments
    read as literals, never run; ``ValueError`` says what is wrong."""
    import ast

    if ":" in reference:
        module, _, expression_text = reference.partition(":")
    else:
        module, _, expression_text = reference.rpartition(".")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"{reference!r}: {module!r} is not a module name")
    try:
        expression = ast.parse(expression_text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"{reference!r}: {expression_text!r} is neither a name nor a call "
                         "like create_app()") from None
    if isinstance(expression, ast.Name):
        return module, expression.id, (), {}
    if not isinstance(expression, ast.Call) or not isinstance(expression.func, ast.Name):
        raise ValueError(f"{reference!r}: {expression_text!r} is neither a name nor a call of "
                         "one, like create_app('production')")
    try:
        args = tuple(ast.literal_eval(arg) for arg in expression.args)
        kwargs = {keyword.arg: ast.literal_eval(keyword.value)
                  for keyword in expression.keywords if keyword.arg is not None}
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        raise ValueError(f"{reference!r}: the arguments of {expression.func.id} must be "
                         "literals (strings, numbers, lists...)") from None
    if len(kwargs) != len(expression.keywords):
        raise ValueError(f"{reference!r}: **arguments are not literals")
    return module, expression.func.id, args, kwargs


def _module_of_file(path: str) -> str:
    return path[:-3].replace("/", ".").lstrip(".") if path.endswith(".py") else path


def _options(words: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for index, word in enumerate(words):
        if word.startswith("-"):
            name, equals, value = word.partition("=")
            if equals:
                options[name] = value
            elif index + 1 < len(words):
                options[name] = words[index + 1]
    return options


def _positionals(words: list[str]) -> list[str]:
    found, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = "=" not in word and word in _OPTIONS_WITH_VALUES
        else:
            found.append(word)
    return found


#: What a file named in ``includes:`` may hold (the SDK's AppInclude); the rest is ignored.
INCLUDE_KEYS = {"handlers", "env_variables", "skip_files", "includes", "builtins",
                "admin_console", "manual_scaling", "vm", "vm_settings", "beta_settings"}
_MAX_INCLUDES = 64  # files, all levels together: includes are a handful, not a graph


@dataclass
class _Included:
    """What the ``includes:`` files add, in the order the SDK merges them: their handlers
    before app.yaml's (``position: tail`` ones after), their ``skip_files`` added, their
    ``env_variables`` over app.yaml's."""

    main: str = ""  # app.yaml's own real path: an include naming it adds nothing
    files: list[str] = field(default_factory=list)
    head: list[Handler] = field(default_factory=list)
    tail: list[Handler] = field(default_factory=list)
    skip_files: list[str] = field(default_factory=list)
    env_variables: dict[str, str] = field(default_factory=dict)
    default_expiration: int | None = None  # app.yaml's, for the included static handlers


def _include_all(document: dict[Any, Any], location: str, app_root: str, python3: bool,
                 included: _Included, fail: Any, depth: int) -> None:
    """Read the files ``document``'s ``includes:`` names (and theirs), once each."""
    lines: dict[Any, int] = getattr(document, "key_lines", {})
    value = document.get("includes")
    line = lines.get("includes", 0)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(item, str) and item
                                              for item in value):
        raise fail("includes must be a list of paths to YAML files (or folders holding an "
                   "include.yaml), relative to the app folder", line)
    for name in value:
        path = _include_path(name, location, app_root, fail, line)
        if path in included.files or path == included.main:
            continue  # read already: the SDK reads each file once
        if len(included.files) >= _MAX_INCLUDES or depth >= 16:
            raise fail(f"includes: more than {_MAX_INCLUDES} files or 16 levels; is {name!r} "
                       "part of a loop?", line)
        included.files.append(path)
        _merge_include(path, app_root, python3, included, depth)


def _include_path(name: str, location: str, app_root: str, fail: Any, line: int) -> str:
    """Where the SDK looks: beside the including file, then in the app folder; a folder means
    its ``include.yaml``. Never outside the app folder."""
    if "\0" in name or os.path.isabs(name):
        raise fail(f"includes entry {name!r} must be a path relative to the app folder", line)
    root = os.path.realpath(app_root)
    for base in (os.path.dirname(os.path.abspath(location)), app_root):
        candidate = os.path.realpath(os.path.join(base, name))
        if candidate != root and not candidate.startswith(root + os.sep):
            raise fail(f"includes entry {name!r} leaves the app folder", line)
        if os.path.isdir(candidate):
            candidate = os.path.join(candidate, "include.yaml")
        if os.path.isfile(candidate):
            return candidate
    raise fail(f"includes entry {name!r}: no such file (looked beside "
               f"{os.path.basename(location)} and in the app folder; a folder needs an "
               "include.yaml)", line)


def _merge_include(path: str, app_root: str, python3: bool, included: _Included,
                   depth: int) -> None:
    fail = _failure(path)

    document = _read_yaml(path, "included file")
    if document is None:
        return  # an empty include adds nothing
    if not isinstance(document, dict):
        raise fail("an included file must be a mapping of keys (handlers:, ...)")
    lines: dict[Any, int] = getattr(document, "key_lines", {})
    for key in document:
        if key not in INCLUDE_KEYS:
            warnings.warn(f"{path}:{lines.get(key, 0)}: key {_show(key)} is not one an "
                          "included file may set; ignored", stacklevel=4)
    if document.get("handlers") is not None:
        handlers = _handlers(document["handlers"], lines.get("handlers", 0), app_root, path,
                             fail, python3, included.default_expiration)
        raw = document["handlers"]
        for handler, entry in zip(handlers, raw, strict=True):
            position = entry.get("position", "head")
            if position not in ("head", "tail"):
                raise fail(f"handler position must be head or tail, got {_show(position)}",
                           handler.line)
            (included.head if position == "head" else included.tail).append(handler)
    if document.get("skip_files") is not None:
        included.skip_files.extend(_skip_files(document["skip_files"],
                                               lines.get("skip_files", 0), fail, ()))
    included.env_variables.update(_env_variables(document.get("env_variables"),
                                                 lines.get("env_variables", 0), fail))
    _include_all(document, path, app_root, python3, included, fail, depth + 1)


def _line(value: Any, default: int) -> int:
    return getattr(value, "line", 0) or default


def _handlers(value: Any, line: int, app_root: str, location: str,
              fail: Any, python3: bool = False,
              default_expiration: int | None = None) -> tuple[Handler, ...]:
    if value is None:
        if python3:
            return ()  # every request goes to the app
        raise fail("handlers: is required for runtime python27 (a list of url: ... entries)",
                   line)
    if not isinstance(value, list):
        raise fail("handlers must be a list of mappings", line)
    handlers = []
    for entry in value:
        entry_line = _line(entry, line)
        if not isinstance(entry, dict):
            raise fail("each handler must be a mapping with url: and script: or static_*:",
                       entry_line)
        key_lines = getattr(entry, "key_lines", {})
        for key in entry:
            if key not in HANDLER_KEYS:
                warnings.warn(f"{location}:{key_lines.get(key, entry_line)}: unknown handler "
                              f"key {_show(key)} ignored", stacklevel=4)
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            raise fail("handler needs url: (a regular expression)", entry_line)
        try:
            re.compile(url)
        except re.error as error:
            raise fail(f"handler url {url!r} is not a regular expression: {error}",
                       key_lines.get("url", entry_line)) from None
        kinds = [k for k in ("script", "static_dir", "static_files") if k in entry]
        if len(kinds) != 1:
            raise fail(f"handler for {url!r} needs exactly one of script:, static_dir:, "
                       f"static_files: (got {', '.join(kinds) or 'none'})", entry_line)
        strings = {}
        for key in ("script", "static_dir", "static_files", "upload", "mime_type"):
            item = entry.get(key)
            if item is not None and (not isinstance(item, str) or not item):
                raise fail(f"handler {key} must be a non-empty string, got {_show(item)}",
                           key_lines.get(key, entry_line))
            strings[key] = item
        script = strings["script"]
        if script is not None and python3:
            if script != "auto":
                raise fail(f"script {script!r}: the python3 runtimes take only 'script: auto' "
                           "(the app itself comes from entrypoint:, by default main:app)",
                           key_lines.get("script", entry_line))
        elif script == "auto":
            raise fail("script: auto is for the python3 runtimes; with runtime python27 a "
                       "script names a WSGI app as package.module.app",
                       key_lines.get("script", entry_line))
        elif script is not None:
            module, _, attribute = script.rpartition(".")
            if script.endswith(".py") or not module or not attribute or not all(
                part.isidentifier() for part in script.split(".")
            ):
                raise fail(f"script {script!r} must name a WSGI app as package.module.app "
                           "(python27 scripts are WSGI references, not .py files)",
                           key_lines.get("script", entry_line))
        for key in ("static_dir", "static_files"):
            if strings[key] is not None:
                _check_inside(app_root, strings[key], key, key_lines.get(key, entry_line), fail)
        if strings["static_files"] is not None and strings["upload"] is not None:
            try:
                re.compile(strings["upload"])
            except re.error as error:
                raise fail(f"upload {strings['upload']!r} is not a regular expression: {error}",
                           key_lines.get("upload", entry_line)) from None
        readable = entry.get("application_readable", False)
        if not isinstance(readable, bool):
            raise fail("application_readable must be true or false",
                       key_lines.get("application_readable", entry_line))
        login = entry.get("login", "optional")
        if login not in ("optional", "required", "admin"):
            raise fail(f"handler login must be optional, required or admin, got {_show(login)}",
                       key_lines.get("login", entry_line))
        auth_fail_action = entry.get("auth_fail_action", "redirect")
        if auth_fail_action not in ("redirect", "unauthorized"):
            raise fail("handler auth_fail_action must be redirect or unauthorized, got "
                       f"{_show(auth_fail_action)}", key_lines.get("auth_fail_action", entry_line))
        headers = entry.get("http_headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) for k, v in headers.items()
        ):
            raise fail("http_headers must map header names to values",
                       key_lines.get("http_headers", entry_line))
        expiration = default_expiration
        if "expiration" in entry:
            expiration = parse_expiration(entry["expiration"], fail,
                                          key_lines.get("expiration", entry_line), "expiration")
        if script is not None:
            expiration = None  # (the app sets its own headers)
        handlers.append(Handler(
            expiration=expiration,
            url=url, script=script, static_dir=strings["static_dir"],
            static_files=strings["static_files"], upload=strings["upload"],
            application_readable=readable, mime_type=strings["mime_type"],
            http_headers=tuple((k, str(v)) for k, v in headers.items()), line=entry_line,
            login=login, auth_fail_action=auth_fail_action,
        ))
    return tuple(handlers)


def _check_inside(app_root: str, relative: str, key: str, line: int, fail: Any) -> None:
    if "\0" in relative or os.path.isabs(relative):
        raise fail(f"{key} {relative!r} must be a path relative to the app folder", line)
    # static_files may hold \1-style group references; judge the fixed part
    fixed = re.split(r"\\\d", relative)[0]
    resolved = os.path.realpath(os.path.join(app_root, fixed))
    if not is_within(os.path.realpath(app_root), resolved):
        raise fail(f"{key} {relative!r} leaves the app folder (it resolves to {resolved}); "
                   "name a file or folder inside it", line)


def is_within(root: str, path: str) -> bool:
    """Whether ``path`` is ``root`` or beneath it, by whole components. Both must be resolved
    the same way (``os.path.realpath``): an app folder reached through a symlink (macOS's
    ``/tmp``, a release link) is then compared with what its files resolve to."""
    try:
        return os.path.commonpath((root, path)) == root
    except ValueError:  # one relative, one absolute (or different drives)
        return False


def _libraries(value: Any, line: int, location: str, fail: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise fail("libraries must be a list of name:/version: entries", line)
    result = []
    for entry in value:
        entry_line = _line(entry, line)
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise fail("each library needs name: (and version:)", entry_line)
        name = entry["name"]
        version = entry.get("version", "latest")
        if not isinstance(version, (str, int, float)):
            raise fail(f"library {name!r} version must be a string like \"1.2\" or latest",
                       entry_line)
        if name not in LIBRARIES:
            warnings.warn(f"{location}:{entry_line}: library {name!r} is not one the runtime "
                          f"offered; its C extensions ({name}.*) are allowed anyway",
                          stacklevel=4)
        result.append((name, str(version)))
    return tuple(result)


def _skip_files(value: Any, line: int, fail: Any,
                default: tuple[str, ...] = DEFAULT_SKIP_FILES) -> tuple[str, ...]:
    if value is None:
        return default
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise fail("skip_files must be a regular expression or a list of them", line)
    for item in items:
        try:
            re.compile(item)
        except re.error as error:
            raise fail(f"skip_files entry {item!r} is not a regular expression: {error}",
                       line) from None
    return tuple(items)


def _env_variables(value: Any, line: int, fail: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise fail("env_variables must map names to values", line)
    pairs = []
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise fail(f"env_variables name {_show(key)} is not a valid variable name", line)
        if not isinstance(item, (str, int, float)):  # bool is an int
            raise fail(f"env_variables {key} must be a string, got {_show(item)}", line)
        text = str(item)  # as the SDK's validator: `DEBUG: true` is "True", `N: 1.50` "1.5"
        if "\0" in text:
            raise fail(f"env_variables {key} contains a NUL byte", line)
        pairs.append((key, text))
    return tuple(pairs)
