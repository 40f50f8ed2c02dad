"""Policy: the python27 preset, immutable copies, and validation that names the bad field."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import pytest

from gae_sandbox import Policy, Sandbox
from gae_sandbox.policy import HostRule
from gae_sandbox.runtime import PYTHON27_BLOCKED_MODULES

MODULE_FIELDS = ("allowed_modules", "blocked_modules", "allowed_c_extensions")
TUPLE_FIELDS = ("readable_paths", "allowed_hosts", *MODULE_FIELDS)


# --- the preset -----------------------------------------------------------------------------


def test_python27_preset(app_root: Path) -> None:
    policy = Policy.python27(app_root=app_root)
    assert policy.deadline == 60.0 and isinstance(policy.deadline, float)
    assert policy.blocked_modules == PYTHON27_BLOCKED_MODULES
    for name in ("ctypes", "_ctypes", "multiprocessing", "mmap", "sqlite3", "fcntl",
                 "resource", "termios", "pty"):
        assert name in policy.blocked_modules
    assert "json" not in policy.blocked_modules and "socket" not in policy.blocked_modules
    assert policy.filesystem == "readonly"
    assert policy.mode == "enforce"
    assert policy.allowed_modules == ("*",)
    assert policy.allowed_c_extensions == ()
    assert policy.allowed_hosts == () and policy.host_rules == ()
    assert policy.readable_paths == ()
    assert policy.app_root == os.path.realpath(app_root)
    assert isinstance(policy.app_root, str)


def test_python27_accepts_changes(app_root: Path) -> None:
    policy = Policy.python27(app_root, deadline=5, mode="report", allowed_hosts=["a.com:443"])
    assert policy.deadline == 5.0 and isinstance(policy.deadline, float)
    assert policy.mode == "report"
    assert policy.allowed_hosts == ("a.com:443",)  # a list is accepted, stored as a tuple
    assert policy.host_rules == (HostRule("a.com", 443),)
    assert policy.blocked_modules == PYTHON27_BLOCKED_MODULES


def test_app_root_is_resolved(tmp_path: Path, app_root: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "link-to-app"
    link.symlink_to(app_root)
    assert Policy.python27(link).app_root == os.path.realpath(app_root)
    assert Policy.python27(str(link)).app_root == os.path.realpath(app_root)
    monkeypatch.chdir(app_root.parent)
    assert Policy.python27("app").app_root == os.path.realpath(app_root)


def test_readable_paths_are_resolved(app_root: Path, outside: Path) -> None:
    policy = Policy.python27(app_root, readable_paths=[outside, str(outside / ".")])
    assert policy.readable_paths == (os.path.realpath(outside),) * 2


# --- copies and immutability ----------------------------------------------------------------


def test_replace_returns_a_changed_copy(app_root: Path) -> None:
    original = Policy.python27(app_root)
    changed = original.replace(deadline=5, allowed_hosts=("api.example.com:443",),
                               mode="report")
    assert changed is not original
    assert (changed.deadline, changed.mode) == (5.0, "report")
    assert changed.host_rules == (HostRule("api.example.com", 443),)
    assert changed.app_root == original.app_root
    assert changed.blocked_modules == original.blocked_modules
    # the original is untouched
    assert (original.deadline, original.mode, original.allowed_hosts) == (60.0, "enforce", ())
    assert original.host_rules == ()
    assert changed != original


def test_replace_without_changes_is_an_equal_copy(app_root: Path) -> None:
    original = Policy.python27(app_root)
    copy = original.replace()
    assert copy == original and copy is not original
    assert hash(copy) == hash(original)


def test_replace_validates_like_a_new_policy(app_root: Path) -> None:
    original = Policy.python27(app_root)
    with pytest.raises(ValueError, match=r"Policy\.deadline"):
        original.replace(deadline=-1)
    with pytest.raises(ValueError, match=r"Policy\.allowed_hosts"):
        original.replace(allowed_hosts=("example.com",))
    assert original.deadline == 60.0 and original.allowed_hosts == ()


@pytest.mark.parametrize("field", ["bogus", "deadlines", "_cache", "_host_rules"])
def test_replace_unknown_field(app_root: Path, field: str) -> None:
    original = Policy.python27(app_root)
    with pytest.raises(TypeError) as info:
        original.replace(**{field: 1})
    message = str(info.value)
    assert f"no field {field}" in message
    for known in ("app_root", "deadline", "allowed_hosts", "mode", "blocked_modules"):
        assert known in message


@pytest.mark.parametrize(("field", "value"), [
    ("deadline", 1.0), ("mode", "report"), ("app_root", "/tmp"), ("allowed_hosts", ()),
    ("blocked_modules", ()), ("_cache", {}),
])
def test_policy_is_immutable(app_root: Path, field: str, value: object) -> None:
    policy = Policy.python27(app_root)
    before = dataclasses.asdict(policy)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(policy, field, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(policy, field)
    assert dataclasses.asdict(policy) == before


# --- app_root -------------------------------------------------------------------------------


def test_missing_app_root() -> None:
    with pytest.raises(TypeError, match="app_root"):
        Policy()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="app_root"):
        Policy.python27()  # type: ignore[call-arg]


def test_nonexistent_app_root(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-app"
    with pytest.raises(ValueError) as info:
        Policy.python27(missing)
    assert "Policy.app_root" in str(info.value)
    assert str(missing) in str(info.value)
    assert "not an existing folder" in str(info.value)


def test_app_root_is_a_file(app_root: Path) -> None:
    with pytest.raises(ValueError, match=r"Policy\.app_root: .*data\.txt.* not an existing folder"):
        Policy.python27(app_root / "data.txt")


@pytest.mark.parametrize("root", ["/", "//", "/.", "/tmp/.."])
def test_app_root_is_the_filesystem_root(root: str) -> None:
    with pytest.raises(ValueError, match=r"Policy\.app_root: the filesystem root"):
        Policy.python27(root)


def test_app_root_symlink_to_the_filesystem_root(tmp_path: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to("/")
    with pytest.raises(ValueError, match=r"Policy\.app_root: the filesystem root"):
        Policy.python27(link)


@pytest.mark.parametrize(("value", "error"), [
    ("", ValueError), ("app\0root", ValueError), (123, TypeError), (None, TypeError),
    (b"/tmp", TypeError), (["/tmp"], TypeError),
])
def test_app_root_bad_values(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"Policy\.app_root"):
        Policy.python27(value)  # type: ignore[arg-type]


# --- readable_paths and other tuples --------------------------------------------------------


@pytest.mark.parametrize("field", TUPLE_FIELDS)
@pytest.mark.parametrize("value", ["json", "api.example.com:443", b"json", 7, None])
def test_tuple_fields_refuse_a_single_value(app_root: Path, field: str, value: object) -> None:
    with pytest.raises(TypeError) as info:
        Policy.python27(app_root, **{field: value})
    assert f"Policy.{field} must be a tuple of strings" in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("field", TUPLE_FIELDS)
def test_tuple_fields_refuse_non_string_items(app_root: Path, field: str) -> None:
    with pytest.raises(TypeError, match=rf"Policy\.{field} must hold strings, got int 443"):
        Policy.python27(app_root, **{field: ("json", 443)})


def test_readable_paths_must_be_existing_folders(app_root: Path, outside: Path) -> None:
    for bad, text in [(outside / "nope", "not an existing folder"),
                      (outside / "secret.txt", "not an existing folder"),
                      ("/", "the filesystem root")]:
        with pytest.raises(ValueError) as info:
            Policy.python27(app_root, readable_paths=(bad,))
        assert "Policy.readable_paths" in str(info.value) and text in str(info.value)


# --- hosts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "hint"), [
    ("example.com", "must be 'host:port' or 'host:*'"),
    (":80", "must be 'host:port' or 'host:*'"),
    ("", "must be 'host:port' or 'host:*'"),
    ("host:99999", "port must be 1-65535 or '*'"),
    ("host:0", "port must be 1-65535 or '*'"),
    ("host:abc", "port must be 1-65535 or '*'"),
    ("host:", "port must be 1-65535 or '*'"),
    ("host:-1", "port must be 1-65535 or '*'"),
    ("::1:80", "write IPv6 addresses in brackets"),
    ("fe80::1:*", "write IPv6 addresses in brackets"),
    ("exa mple.com:80", "is not a host name"),
    ("http://example.com:80", "write IPv6 addresses in brackets"),
    ("example.com/path:80", "is not a host name"),
])
def test_bad_host_patterns(app_root: Path, entry: str, hint: str) -> None:
    with pytest.raises(ValueError) as info:
        Policy.python27(app_root, allowed_hosts=(entry,))
    message = str(info.value)
    assert message.startswith(f"Policy.allowed_hosts entry {entry!r}")
    assert hint in message


@pytest.mark.parametrize(("entry", "rule"), [
    ("api.example.com:443", HostRule("api.example.com", 443)),
    ("*.example.com:*", HostRule("*.example.com", None)),
    ("[::1]:8080", HostRule("::1", 8080)),
    ("127.0.0.1:*", HostRule("127.0.0.1", None)),
    ("API.Example.COM.:65535", HostRule("api.example.com", 65535)),
    (" localhost:1 ", HostRule("localhost", 1)),
])
def test_good_host_patterns(app_root: Path, entry: str, rule: HostRule) -> None:
    policy = Policy.python27(app_root, allowed_hosts=(entry,))
    assert policy.allowed_hosts == (entry,)
    assert policy.host_rules == (rule,)


def test_host_rules_match() -> None:
    exact = HostRule("api.example.com", 443)
    wildcard = HostRule("*.example.com", None)
    assert exact.matches("API.example.com.", 443)
    assert not exact.matches("api.example.com", 80)
    assert not exact.matches("evil.com", 443)
    assert wildcard.matches("a.example.com", 1) and wildcard.matches("b.example.com", 65535)
    assert not wildcard.matches("example.com.evil.net", 443)


def test_empty_bracketed_host_is_refused(app_root: Path) -> None:
    with pytest.raises(ValueError, match=r"Policy\.allowed_hosts"):
        Policy.python27(app_root, allowed_hosts=("[]:80",))


# --- mode, filesystem, deadline, flags ------------------------------------------------------


@pytest.mark.parametrize("mode", ["strict", "", "ENFORCE", "Report", None, 1])
def test_bad_mode(app_root: Path, mode: object) -> None:
    with pytest.raises(ValueError) as info:
        Policy.python27(app_root, mode=mode)
    assert str(info.value) == f"Policy.mode must be one of 'enforce', 'report', got {mode!r}"


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_good_mode(app_root: Path, mode: str) -> None:
    assert Policy.python27(app_root, mode=mode).mode == mode


@pytest.mark.parametrize("filesystem", ["readwrite", "Memory", "", "READONLY", None])
def test_bad_filesystem(app_root: Path, filesystem: object) -> None:
    with pytest.raises(ValueError) as info:
        Policy.python27(app_root, filesystem=filesystem)
    assert str(info.value) == (
        f"Policy.filesystem must be one of 'readonly', 'memory', 'tmp', got {filesystem!r}"
    )


@pytest.mark.parametrize("filesystem", ["readonly", "memory"])
def test_good_filesystem(app_root: Path, filesystem: str) -> None:
    assert Policy.python27(app_root, filesystem=filesystem).filesystem == filesystem


@pytest.mark.parametrize("deadline", [-1, 0, 0.0, -0.5, math.inf, -math.inf, math.nan])
def test_deadline_out_of_range(app_root: Path, deadline: float) -> None:
    with pytest.raises(ValueError) as info:
        Policy.python27(app_root, deadline=deadline)
    message = str(info.value)
    assert message.startswith("Policy.deadline must be a positive, finite number of seconds")
    assert "None" in message and repr(deadline) in message


@pytest.mark.parametrize("deadline", [True, False, "60", b"60", [60], 1j])
def test_deadline_wrong_type(app_root: Path, deadline: object) -> None:
    with pytest.raises(TypeError) as info:
        Policy.python27(app_root, deadline=deadline)
    message = str(info.value)
    assert message.startswith("Policy.deadline must be seconds (a positive number) or None")
    assert repr(deadline) in message


@pytest.mark.parametrize(("deadline", "stored"), [(None, None), (1, 1.0), (0.25, 0.25),
                                                  (3600, 3600.0)])
def test_good_deadline(app_root: Path, deadline: float | None, stored: float | None) -> None:
    assert Policy.python27(app_root, deadline=deadline).deadline == stored


def test_huge_int_deadline_names_the_field(app_root: Path) -> None:
    with pytest.raises((ValueError, TypeError), match=r"Policy\.deadline"):
        Policy.python27(app_root, deadline=10**400)


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_allow_threads_must_be_a_bool(app_root: Path, value: object) -> None:
    with pytest.raises(TypeError, match=rf"Policy\.allow_threads must be True or False, "
                                        rf"got {re.escape(repr(value))}"):
        Policy.python27(app_root, allow_threads=value)


# --- module patterns ------------------------------------------------------------------------


@pytest.mark.parametrize("field", MODULE_FIELDS)
@pytest.mark.parametrize("pattern", ["", "a..b", "x y", ".json", "json.", "1abc", "a-b",
                                     "json/decoder"])
def test_bad_module_patterns(app_root: Path, field: str, pattern: str) -> None:
    with pytest.raises(ValueError) as info:
        Policy.python27(app_root, **{field: ("json", pattern)})
    assert str(info.value) == (
        f"Policy.{field} entry {pattern!r} is not a module name or pattern "
        "(like 'json', 'numpy' or '_codecs_*')"
    )


@pytest.mark.parametrize("field", MODULE_FIELDS)
def test_good_module_patterns(app_root: Path, field: str) -> None:
    patterns = ["json", "numpy.linalg", "_codecs_*", "*", "email.mime.*", "lib?", "x[ab]"]
    policy = Policy.python27(app_root, **{field: patterns})
    assert getattr(policy, field) == tuple(patterns)


# --- Sandbox --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["not a policy", None, {"app_root": "/tmp"}])
def test_sandbox_needs_a_policy(value: object) -> None:
    with pytest.raises(TypeError) as info:
        Sandbox(value)  # type: ignore[arg-type]
    message = str(info.value)
    assert "gae_sandbox.Policy" in message and type(value).__name__ in message
    assert "Policy.python27(app_root=...)" in message
