"""Where a ``Policy`` comes from without writing Python: presets, app.yaml, a policy file,
``[tool.gae-sandbox]`` in ``pyproject.toml``, and command-line flags.

Precedence, highest first: **flag > policy file > app.yaml > preset**. The preset is
``--preset``, else the policy file's ``preset`` key, else app.yaml's ``runtime:`` (python27 or
a python3 runtime), else ``python27``. The policy file is ``--policy FILE``, else the
``[tool.gae-sandbox]`` table of the app folder's ``pyproject.toml``. Its keys are the
``Policy`` field names; a list in the file replaces the lower level's list, a repeated flag
adds to it (``--clear FIELD`` empties it first, ``--unblock-module NAME`` removes one entry
of ``blocked_modules``). Relative paths in a file are relative to the file's folder.

Every ``Policy`` field has a flag: the flags are made from the dataclass's own fields, so a
new field cannot be forgotten.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from .appyaml import AppConfig, AppYamlError, load_app_yaml
from .policy import Policy

PRESETS: dict[str, Callable[..., Policy]] = {"python27": Policy.python27,
                                             "python3": Policy.python3}

PRECEDENCE = ("Precedence: a flag > the policy file (--policy FILE, else [tool.gae-sandbox] in "
              "the app's pyproject.toml) > app.yaml > the preset (--preset, else app.yaml's "
              "runtime, else python27). A repeated flag adds to the list below it; --clear "
              "FIELD empties it first.")

#: Friendlier flags for list fields (one value each, repeatable); others are --field-name.
LIST_FLAGS: dict[str, str] = {
    "allowed_hosts": "--allow-host",
    "readable_paths": "--readable-path",
    "skip_files": "--skip-files",
    "unreadable_paths": "--unreadable-path",
    "allowed_modules": "--allow-module",
    "blocked_modules": "--block-module",
    "allowed_c_extensions": "--allow-c-extension",
    "restricted_modules": "--restricted-module",
}
#: Fields whose values are paths (made absolute against the file's folder or the cwd).
PATH_FIELDS = frozenset({"readable_paths", "app_root"})
#: Fields the command line sets another way (the app argument).
_POSITIONAL = frozenset({"app_root"})


class PolicyConfigError(ValueError):
    """A bad policy file, key or flag value: the message names the file or flag, the key and
    the accepted values."""


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """How one Policy field is written in a file and on the command line."""

    name: str
    kind: str  # "list", "env", "bool", "seconds", "choice"
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        if self.kind == "list":
            return LIST_FLAGS.get(self.name, "--" + self.name.replace("_", "-"))
        if self.kind == "env":
            return "--env"
        return "--" + self.name.replace("_", "-")

    def accepted(self) -> str:
        return {
            "list": "a list of strings",
            "env": "a table of NAME = \"value\" strings",
            "bool": "true or false",
            "seconds": "a positive number of seconds, or \"none\"",
            "str": "a string",
        }.get(self.kind) or "one of " + ", ".join(repr(c) for c in self.choices)


def field_specs() -> dict[str, FieldSpec]:
    """One spec per ``Policy`` init field, from its type annotation."""
    hints = typing.get_type_hints(Policy)
    specs: dict[str, FieldSpec] = {}
    for item in dataclasses.fields(Policy):
        if not item.init:
            continue
        hint = hints[item.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if item.name == "env_variables":
            spec = FieldSpec(item.name, "env")
        elif origin is tuple:
            spec = FieldSpec(item.name, "list")
        elif hint is bool:
            spec = FieldSpec(item.name, "bool")
        elif origin is typing.Literal:
            spec = FieldSpec(item.name, "choice", tuple(str(a) for a in args))
        elif hint is float or set(args) == {float, type(None)}:
            spec = FieldSpec(item.name, "seconds")
        elif hint is str or item.name == "app_root":
            spec = FieldSpec(item.name, "str")
        else:
            raise TypeError(f"Policy.{item.name}: no loader for type {hint!r}")
        specs[item.name] = spec
    return specs


# --- policy files -------------------------------------------------------------------------


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10
        import tomli as tomllib
    return tomllib


def read_policy_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The Policy settings of a TOML policy file (keys are the field names; ``preset`` picks
    the preset). A ``pyproject.toml`` is read from its ``[tool.gae-sandbox]`` table."""
    location = os.fspath(path)
    try:
        with open(location, "rb") as file:
            document = _toml().load(file)
    except OSError as error:
        raise PolicyConfigError(f"{location}: cannot read the policy file: "
                                f"{error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:  # tomllib.TOMLDecodeError is one
        raise PolicyConfigError(f"{location}: not a TOML file: {error}") from None
    if os.path.basename(location) == "pyproject.toml":
        document = document.get("tool", {}).get("gae-sandbox", {})
        if not isinstance(document, dict):
            raise PolicyConfigError(f"{location}: [tool.gae-sandbox] must be a table")
    return _settings_from_document(location, document)


def find_pyproject_settings(app_root: str) -> tuple[str, dict[str, Any]] | None:
    """``(path, settings)`` of ``[tool.gae-sandbox]`` in the app folder's pyproject.toml."""
    path = os.path.join(app_root, "pyproject.toml")
    if not os.path.isfile(path):
        return None
    settings = read_policy_file(path)
    return (path, settings) if settings else None


def _settings_from_document(location: str, document: dict[str, Any]) -> dict[str, Any]:
    specs = field_specs()
    folder = os.path.dirname(os.path.abspath(location))
    settings: dict[str, Any] = {}
    for key, value in document.items():
        if key == "preset":
            if value not in PRESETS:
                raise PolicyConfigError(f"{location}: key preset: {value!r} is not a preset; "
                                        f"accepted: {', '.join(map(repr, PRESETS))}")
            settings["preset"] = value
            continue
        spec = specs.get(key)
        if spec is None:
            raise PolicyConfigError(
                f"{location}: unknown key {key!r}; the keys are the Policy fields: "
                f"{', '.join(sorted(specs))}, and preset")
        settings[key] = _value_from_file(location, spec, value, folder)
    return settings


def _value_from_file(location: str, spec: FieldSpec, value: Any, folder: str) -> Any:
    def bad() -> PolicyConfigError:
        return PolicyConfigError(f"{location}: key {spec.name}: {value!r} is not valid; "
                                 f"accepted: {spec.accepted()}")

    if spec.kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad()
        if spec.name in PATH_FIELDS:
            return tuple(os.path.join(folder, os.path.expanduser(v)) for v in value)
        return tuple(value)
    if spec.kind == "env":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad()
        return tuple(value.items())
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
        return value
    if spec.kind == "seconds":
        if value == "none" or value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return value
    if spec.kind == "choice":
        if value not in spec.choices:
            raise bad()
        return value
    if not isinstance(value, str):
        raise bad()
    return os.path.join(folder, value) if spec.name in PATH_FIELDS else value


# --- command-line flags -------------------------------------------------------------------


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """Every Policy field as a flag, plus ``--policy FILE``, ``--preset`` and ``--clear``."""
    group = parser.add_argument_group("policy", PRECEDENCE)
    group.add_argument("--policy", metavar="FILE", dest="policy_file",
                       help="a TOML policy file whose keys are the Policy fields")
    group.add_argument("--preset", choices=tuple(PRESETS), default=None,
                       help="the base policy (default: app.yaml's runtime, else python27)")
    group.add_argument("--clear", action="append", default=[], metavar="FIELD",
                       help="empty a list field before the flags add to it")
    group.add_argument("--unblock-module", action="append", default=[], metavar="NAME",
                       help="remove NAME from blocked_modules (e.g. sqlite3)")
    for spec in field_specs().values():
        if spec.name in _POSITIONAL:
            continue
        dest = f"policy__{spec.name}"
        help_text = f"Policy.{spec.name}"
        if spec.kind == "list":
            group.add_argument(spec.flag, action="append", dest=dest, default=None,
                               metavar="VALUE", help=f"{help_text} (repeatable)")
        elif spec.kind == "env":
            group.add_argument(spec.flag, action="append", dest=dest, default=None,
                               metavar="NAME=VALUE", help=f"{help_text} (repeatable)")
        elif spec.kind == "bool":
            group.add_argument(spec.flag, action=argparse.BooleanOptionalAction, dest=dest,
                               default=None, help=help_text)
        elif spec.kind == "seconds":
            group.add_argument(spec.flag, dest=dest, default=None, metavar="SECONDS",
                               help=f"{help_text} (a number, or none)")
        elif spec.kind == "choice":
            group.add_argument(spec.flag, dest=dest, default=None, choices=spec.choices,
                               help=help_text)
        else:
            group.add_argument(spec.flag, dest=dest, default=None, help=help_text)


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the flags in ``args`` set, validated: ``{field: value}`` for scalars and
    ``{field: ("add", values)}`` for lists."""
    specs = field_specs()
    settings: dict[str, Any] = {}
    for spec in specs.values():
        value = getattr(args, f"policy__{spec.name}", None)
        if value is None:
            continue
        if spec.kind == "list":
            if spec.name in PATH_FIELDS:
                value = [os.path.abspath(os.path.expanduser(v)) for v in value]
            settings[spec.name] = ("add", tuple(value))
        elif spec.kind == "env":
            pairs = []
            for item in value:
                name, equals, text = item.partition("=")
                if not equals or not name:
                    raise PolicyConfigError(f"--env {item!r}: write NAME=VALUE")
                pairs.append((name, text))
            settings[spec.name] = ("add", tuple(pairs))
        elif spec.kind == "seconds":
            if value.strip().lower() in ("none", "0"):
                settings[spec.name] = None
            else:
                try:
                    settings[spec.name] = float(value)
                except ValueError:
                    raise PolicyConfigError(f"{spec.flag} {value!r}: accepted: "
                                            f"{spec.accepted()}") from None
        else:
            settings[spec.name] = value
    for name in getattr(args, "clear", None) or ():
        if name not in specs or specs[name].kind not in ("list", "env"):
            lists = sorted(n for n, s in specs.items() if s.kind in ("list", "env"))
            raise PolicyConfigError(f"--clear {name!r}: not a list field; accepted: "
                                    f"{', '.join(lists)}")
        kind, values = settings.get(name, ("add", ()))
        settings[name] = ("clear", values)
    unblock = tuple(getattr(args, "unblock_module", None) or ())
    if unblock:
        settings["_unblock"] = unblock
    return settings


# --- putting it together ------------------------------------------------------------------


@dataclasses.dataclass
class LoadedPolicy:
    """The policy, and what it was built from (for messages and the dev server)."""

    policy: Policy
    app_config: AppConfig | None
    policy_file: str | None
    preset: str
    #: The fields the policy file set.
    file_keys: frozenset[str] = frozenset()


def build_policy(app: str | os.PathLike[str], *, policy_file: str | None = None,
                 flags: dict[str, Any] | None = None, preset: str | None = None,
                 require_app_yaml: bool = False) -> LoadedPolicy:
    """The policy for the app at ``app`` (its folder, or its app.yaml), by the precedence
    flag > policy file > app.yaml > preset. Raises ``PolicyConfigError`` or ``AppYamlError``
    with the source, the key and the accepted values."""
    location = os.path.abspath(os.fspath(app))
    config: AppConfig | None = None
    has_yaml = location.endswith((".yaml", ".yml")) or any(
        os.path.isfile(os.path.join(location, n)) for n in ("app.yaml", "app.yml"))
    if has_yaml or require_app_yaml:
        config = load_app_yaml(location)
        app_root = config.app_root
    else:
        if not os.path.isdir(location):
            raise PolicyConfigError(f"{app}: not a folder, and not an app.yaml")
        app_root = location

    file_settings: dict[str, Any] = {}
    source = None
    if policy_file is not None:
        file_settings, source = read_policy_file(policy_file), os.path.abspath(policy_file)
    else:
        found = find_pyproject_settings(app_root)
        if found is not None:
            source, file_settings = found
    file_settings = dict(file_settings)
    chosen = preset or file_settings.pop("preset", None) or (
        config.preset if config is not None else "python27")
    file_settings.pop("preset", None)

    settings: dict[str, Any] = dict(config.settings()) if config is not None else {}
    origin = dict.fromkeys(settings, config.path if config is not None else "app.yaml")
    settings.update(file_settings)
    origin.update(dict.fromkeys(file_settings, source))
    app_root = settings.pop("app_root", app_root)
    base = _build(PRESETS[chosen], app_root, settings, origin)

    changes: dict[str, Any] = {}
    for name, value in (flags or {}).items():
        if name == "_unblock":
            continue
        if isinstance(value, tuple) and len(value) == 2 and value[0] in ("add", "clear"):
            how, values = value
            current = () if how == "clear" else getattr(base, name)
            changes[name] = (*current, *values)
        else:
            changes[name] = value
        origin[name] = "flag"
    unblock = (flags or {}).get("_unblock", ())
    if unblock:
        blocked = changes.get("blocked_modules", base.blocked_modules)
        changes["blocked_modules"] = tuple(m for m in blocked if m not in unblock)
        origin["blocked_modules"] = "flag"
    policy = _replace(base, changes, origin) if changes else base
    return LoadedPolicy(policy, config, source, chosen, frozenset(file_settings))


def _build(preset: Callable[..., Policy], app_root: str, settings: dict[str, Any],
           origin: dict[str, Any]) -> Policy:
    try:
        return preset(app_root=app_root, **settings)
    except (TypeError, ValueError) as error:
        raise _attributed(error, origin) from None


def _replace(base: Policy, changes: dict[str, Any], origin: dict[str, Any]) -> Policy:
    try:
        return base.replace(**changes)
    except (TypeError, ValueError) as error:
        raise _attributed(error, origin) from None


def _attributed(error: Exception, origin: dict[str, Any]) -> PolicyConfigError:
    """The Policy's own message, prefixed with where the bad value came from."""
    message = str(error)
    specs = field_specs()
    for name, where in origin.items():
        if f"Policy.{name}" in message or f"Policy.{name} " in message:
            if where == "flag":
                return PolicyConfigError(f"{specs[name].flag}: {message}")
            if where:
                return PolicyConfigError(f"{where}: key {name}: {message}")
    return PolicyConfigError(message)


def policy_from_app_yaml(path: str | os.PathLike[str], **changes: Any) -> Policy:
    """The policy an App Engine ``app.yaml`` describes (its folder or the file), with
    ``changes`` applied: ``Policy.python27`` or, for ``runtime: python3X``, ``Policy.python3``.
    """
    return load_app_yaml(path).policy(**changes)


__all__ = ["AppYamlError", "LoadedPolicy", "PolicyConfigError", "PRECEDENCE",
           "add_policy_arguments", "build_policy", "field_specs", "flag_settings",
           "policy_from_app_yaml", "read_policy_file"]
