"""Port of the SDK's ``stubs_test.py``: the ``os`` stubs (not-implemented, ids, uname,
listdir, access, open), the C-only locale, the platform string, the path-checking wrapper,
and ``FakeFileTest``: what the app may read, what it may never write, skip_files, static
files, mimetypes' system tables. See ``conftest.py`` for what is not ported and why."""

from __future__ import annotations

import _locale
import errno
import io
import locale
import logging
import mimetypes
import os
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sdk_helpers import tree

from gae_sandbox import (
    FileReadRefused,
    FileWriteRefused,
    FunctionNotImplementedRefused,
    LocaleRefused,
    Policy,
    Sandbox,
    policy_from_app_yaml,
)

DATA = "app data\n"


def in_sandbox(policy: Policy, function: Callable[..., Any], *args: Any) -> Any:
    with Sandbox(policy):
        return function(*args)


def raised(policy: Policy, function: Callable[..., Any], *args: Any) -> BaseException:
    """The error ``function(*args)`` raises inside a sandbox (it must raise)."""
    with Sandbox(policy):
        try:
            function(*args)
        except BaseException as error:  # noqa: B036 - inspected by the test
            return error
    raise AssertionError(f"{function!r}{args!r} did not raise")


# --- StubsTest ------------------------------------------------------------------------------


def test_stubs_os_error_not_implemented(policy: Policy) -> None:
    """The runtime's stubs raise OSError(ENOSYS) without a file name: setuid and friends
    never reach the process (its ids are checked by the autouse fixture too)."""
    before = (os.getuid(), os.getgid(), os.getgroups(), os.getpriority(os.PRIO_PROCESS, 0))
    for call in (lambda: os.setuid(65534), lambda: os.setgid(65534),
                 lambda: os.setgroups([]), lambda: os.nice(5),
                 lambda: os.setpriority(os.PRIO_PROCESS, 0, 10)):
        error = raised(policy, call)
        assert isinstance(error, OSError) and isinstance(error, FunctionNotImplementedRefused)
        assert (error.errno, error.filename) == (errno.ENOSYS, None)
    assert (os.getuid(), os.getgid(), os.getgroups(),
            os.getpriority(os.PRIO_PROCESS, 0)) == before


def test_stubs_return_minus_one(policy: Policy) -> None:
    names = ("getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "getpgrp")
    host_values = {name: getattr(os, name)() for name in names}
    seen_by_host: dict[str, int] = {}
    inside = threading.Event()
    done = threading.Event()

    def host_thread() -> None:
        inside.wait(5)
        seen_by_host.update({name: getattr(os, name)() for name in names})
        done.set()

    thread = threading.Thread(target=host_thread)
    thread.start()
    with Sandbox(policy):
        answers = {name: getattr(os, name)() for name in names}
        inside.set()
        done.wait(5)  # the host asks while the request runs
    thread.join(5)
    assert answers == dict.fromkeys(names, -1)
    assert seen_by_host == host_values and os.getpid() == host_values["getpid"] > 0


def test_stubs_fake_uname(policy: Policy) -> None:
    """A fixed Linux tuple (the runtime's had empty fields, which broke libraries: README
    "Differences"); the host's own is unchanged and not cached as the app's."""
    import platform

    host = os.uname()
    fake = in_sandbox(policy, os.uname)
    assert fake.sysname == "Linux" and all(fake)
    assert fake.nodename != host.nodename or host.nodename == "localhost"
    assert in_sandbox(policy, platform.uname)[:5] == tuple(fake)
    assert os.uname() == host and platform.uname().node == host.nodename


def test_stubs_fake_listdir_in(policy: Policy, app_root: Path) -> None:
    assert sorted(in_sandbox(policy, os.listdir, app_root)) == ["data.txt", "pkg", "static"]


def test_stubs_fake_listdir_out(policy: Policy, app_root: Path) -> None:
    hiding = policy.replace(skip_files=(r"^data\.txt$",), unreadable_paths=("static",))

    def listings() -> tuple[list[str], list[str], list[str]]:
        with os.scandir(app_root) as entries:
            scanned = sorted(e.name for e in entries)
        return sorted(os.listdir(app_root)), scanned, sorted(p.name for p in app_root.iterdir())

    assert in_sandbox(hiding, listings) == (["pkg"], ["pkg"], ["pkg"])
    assert sorted(os.listdir(app_root)) == ["data.txt", "pkg", "static"]


def test_stubs_fake_access_accessible(policy: Policy, app_root: Path) -> None:
    assert in_sandbox(policy, os.access, app_root / "data.txt", os.R_OK) is True
    assert in_sandbox(policy, os.access, app_root / "pkg", os.F_OK) is True


def test_stubs_fake_access_inaccessible(policy: Policy, outside: Path) -> None:
    """False, not an error, for a file the app may not read (the host can)."""
    secret = outside / "secret.txt"
    assert in_sandbox(policy, os.access, secret, os.R_OK) is False
    assert in_sandbox(policy, os.access, secret, os.F_OK) is False
    assert os.access(secret, os.R_OK) is True  # control


def test_stubs_fake_access_write(policy: Policy, app_root: Path) -> None:
    """W_OK (and X_OK) answer False even where the host may write; nothing is written."""
    before = tree(app_root)
    target = app_root / "data.txt"
    with Sandbox(policy):
        answers = (os.access(target, os.W_OK), os.access(target, os.R_OK | os.W_OK),
                   os.access(app_root, os.W_OK), os.access(target, os.X_OK))
    assert answers == (False, False, False, False)
    assert os.access(target, os.W_OK) and tree(app_root) == before


def test_stubs_fake_open_accessible(policy: Policy, app_root: Path) -> None:
    with Sandbox(policy):
        fd = os.open(app_root / "data.txt", os.O_RDONLY)
        try:
            content = os.read(fd, 100)
        finally:
            os.close(fd)
    assert content == DATA.encode()
    with pytest.raises(OSError):
        os.fstat(fd)  # really closed


def test_stubs_fake_open_inaccessible(policy: Policy, outside: Path, app_root: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    """The error names the file (``filename``); for a static file the message says how to
    make it readable. (The runtime said ENOENT; here it is EACCES: README "Differences".)"""
    secret = str(outside / "secret.txt")
    error = raised(policy, os.open, secret, os.O_RDONLY)
    assert isinstance(error, FileReadRefused) and error.filename == secret
    assert error.errno == errno.EACCES
    static = str(app_root / "static" / "style.css")
    caplog.set_level(logging.WARNING, "gae_sandbox")
    error = raised(policy.replace(unreadable_paths=("static",)), os.open, static, os.O_RDONLY)
    assert isinstance(error, FileReadRefused) and error.filename == static
    assert "application_readable: true" in str(error)
    assert any("application_readable: true" in r.getMessage() for r in caplog.records)


def test_stubs_fake_open_write(policy: Policy, app_root: Path) -> None:
    target = app_root / "data.txt"
    before = tree(app_root)
    for flags in (os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_CREAT):
        error = raised(policy, os.open, str(target), flags)
        assert isinstance(error, FileWriteRefused)
        assert (error.errno, error.filename) == (errno.EROFS, str(target))
    assert tree(app_root) == before and target.read_text() == DATA


def test_stubs_fake_set_locale_allowed(policy: Policy) -> None:
    process = _locale.setlocale(_locale.LC_ALL)
    with Sandbox(policy):
        answers = [locale.setlocale(locale.LC_ALL, value) for value in ("C", None, "", "POSIX")]
        answers.append(locale.setlocale(locale.LC_NUMERIC, ""))
        answers.append(locale.getlocale(locale.LC_NUMERIC))
    assert answers == ["C"] * 5 + [(None, None)]
    assert _locale.setlocale(_locale.LC_ALL) == process


def test_stubs_fake_set_locale_not_allowed(policy: Policy) -> None:
    """Any other locale raises locale.Error, and the process's locale stays (C.UTF-8 is
    installed on any glibc, so outside a sandbox setting it would succeed)."""
    process = _locale.setlocale(_locale.LC_ALL)
    for value in ("AAAA", "C.UTF-8", ("en_US", "UTF-8")):
        error = raised(policy, locale.setlocale, locale.LC_ALL, value)
        assert isinstance(error, locale.Error) and isinstance(error, LocaleRefused)
        assert "only the C locale" in str(error)
    assert _locale.setlocale(_locale.LC_ALL) == process


def test_stubs_fake_get_platform(policy: Policy) -> None:
    """``distutils.util.get_platform()`` (gone in 3.12) is ``sysconfig.get_platform()``: the
    runtime's empty machine made it ``'linux-'``; here it names the real machine."""
    assert in_sandbox(policy, sysconfig.get_platform) == f"linux-{os.uname().machine}"


def test_stubs_restricted_path_function_allowed(policy: Policy, app_root: Path) -> None:
    """A readable path: positional and keyword arguments reach the real function."""
    (app_root / "link").symlink_to("data.txt")
    with Sandbox(policy):
        results = (os.stat(path=app_root / "link", follow_symlinks=False),
                   os.readlink(path=str(app_root / "link")), os.stat(app_root / "link"))
    assert results == (os.lstat(app_root / "link"), "data.txt", os.stat(app_root / "data.txt"))


def test_stubs_static_access_message_restricted_path_function(
        policy: Policy, app_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A static file: refused each time (EACCES, the path as given); the message is logged
    once (the second, identical refusal only counts)."""
    static = policy.replace(unreadable_paths=("static",))
    caplog.set_level(logging.WARNING, "gae_sandbox")
    errors = []
    with Sandbox(static) as box:
        for _ in range(2):
            try:
                os.stat("static/style.css")  # relative to the app folder, as on the runtime
            except FileReadRefused as error:
                errors.append(error)
    assert [(e.errno, e.filename) for e in errors] == [(errno.EACCES, "static/style.css")] * 2
    logged = [r for r in caplog.records if "style.css" in r.getMessage()]
    assert len(logged) == 1 and [v.count for v in box.violations] == [2]


# --- FakeFileTest ---------------------------------------------------------------------------


def _read(path: Any) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_stubs_init_accessible(policy: Policy, app_root: Path) -> None:
    assert in_sandbox(policy, _read, app_root / "data.txt") == _read(app_root / "data.txt")


def test_stubs_init_inaccessible(policy: Policy, outside: Path) -> None:
    secret = str(outside / "secret.txt")
    error = raised(policy, _read, secret)
    assert isinstance(error, OSError) and error.filename == secret


def test_stubs_init_to_write(policy: Policy, app_root: Path) -> None:
    _refused_open(policy, app_root, "w")


def test_stubs_init_to_append(policy: Policy, app_root: Path) -> None:
    _refused_open(policy, app_root, "a")


def test_stubs_init_to_read_plus(policy: Policy, app_root: Path) -> None:
    _refused_open(policy, app_root, "r+")


def _refused_open(policy: Policy, app_root: Path, mode: str) -> None:
    target = app_root / "data.txt"
    before = tree(app_root)
    error = raised(policy, open, str(target), mode)
    assert isinstance(error, FileWriteRefused) and error.errno == errno.EROFS
    assert error.filename == str(target)
    assert tree(app_root) == before and target.read_text() == DATA


def test_stubs_is_accessible_accessible(policy: Policy, app_root: Path) -> None:
    assert in_sandbox(policy, os.path.isfile, app_root / "pkg" / "helpers.py") is True


def test_stubs_is_accessible_not_accessible(policy: Policy, outside: Path,
                                            app_root: Path) -> None:
    """``app2`` beside ``app``: the runtime's string-prefix test let it through (README
    "Differences"); whole path components do not."""
    assert str(outside).startswith(str(app_root))
    error = raised(policy, _read, outside / "secret.txt")
    assert isinstance(error, FileReadRefused) and error.setting == "readable_paths"


def test_stubs_is_accessible_cache(policy: Policy, outside: Path) -> None:
    """A refused path stays refused when asked again (nothing is cached either way: the
    host making it a link into the app later is judged afresh)."""
    secret = outside / "secret.txt"
    with Sandbox(policy) as box:
        for _ in range(2):
            with pytest.raises(FileReadRefused):
                os.stat(secret)
    assert box.violations[0].count == 2


def test_stubs_cache_write_then_read(policy: Policy, app_root: Path) -> None:
    with Sandbox(policy):
        with pytest.raises(FileWriteRefused):
            open(app_root / "data.txt", "a")
        assert _read(app_root / "data.txt") == DATA.encode()


def test_stubs_cache_read_then_write(policy: Policy, app_root: Path) -> None:
    before = tree(app_root)
    with Sandbox(policy):
        assert _read(app_root / "data.txt") == DATA.encode()
        with pytest.raises(FileWriteRefused):
            open(app_root / "data.txt", "w")
    assert tree(app_root) == before


def test_stubs_allowed_write(policy: Policy, app_root: Path) -> None:
    """The SDK's writable temporary folder is ``filesystem="memory"`` here: writing there
    succeeds in memory and reaches no disk; in read-only mode the app root is read, never
    written."""
    folder = Path(tempfile.gettempdir())
    name = f"gae-sandbox-fidelity-{os.getpid()}.txt"
    with Sandbox(policy.replace(filesystem="memory")):
        (folder / name).write_text("in memory")
        written = (folder / name).read_text()
    assert written == "in memory" and not (folder / name).exists()
    before = tree(app_root)
    with Sandbox(policy):
        assert _read(app_root / "data.txt") == DATA.encode()
        with pytest.raises(FileWriteRefused):
            (app_root / "new.txt").write_text("x")
    assert tree(app_root) == before


def test_stubs_is_accessible_accessible_directory(policy: Policy, app_root: Path) -> None:
    assert sorted(in_sandbox(policy, os.listdir, app_root / "pkg")) == [
        "__init__.py", "helpers.py"]


def test_stubs_is_accessible_not_accessible_directory(policy: Policy, outside: Path) -> None:
    assert isinstance(raised(policy, os.listdir, outside), FileReadRefused)


def test_stubs_is_accessible_accessible_in_application_dir(policy: Policy,
                                                           outside: Path) -> None:
    """The SDK's ``application_paths`` are ``readable_paths`` (read, never written)."""
    extra = policy.replace(readable_paths=(str(outside),))
    assert in_sandbox(extra, _read, outside / "secret.txt") == b"host secret\n"


def test_stubs_is_accessible_accessible_directory_in_application_dir(policy: Policy,
                                                                     outside: Path) -> None:
    extra = policy.replace(readable_paths=(str(outside),))
    assert in_sandbox(extra, os.listdir, outside) == ["secret.txt"]


def test_stubs_is_accessible_mimetypes_files(tmp_path: Path) -> None:
    """mimetypes' system tables are readable wherever the app is, so ``mimetypes`` in a
    request knows the types the host's does."""
    existing = [f for f in mimetypes.knownfiles if os.path.isfile(f)]
    if not existing:
        pytest.skip("no mimetypes.knownfiles entry exists on this machine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    policy = Policy.python27(app_root=elsewhere, deadline=None)
    with Sandbox(policy):
        contents = [_read(f) for f in existing]
        table = mimetypes.MimeTypes(filenames=existing).types_map[True]
    assert contents == [_read(f) for f in existing]
    assert table == mimetypes.MimeTypes(filenames=existing).types_map[True]
    assert len(table) > len(mimetypes.MimeTypes().types_map[True])  # the files added types


def test_stubs_is_accessible_skipped(policy: Policy, app_root: Path) -> None:
    (app_root / "allowed").write_text("skipped")
    error = raised(policy.replace(skip_files=("^allowed$",)), _read, app_root / "allowed")
    assert isinstance(error, FileReadRefused) and error.setting == "skip_files"


def test_stubs_is_accessible_skipped_root_appdir(policy: Policy, app_root: Path) -> None:
    """A skip_files expression that matches the empty string does not hide the app root."""
    skipping = policy.replace(skip_files=(r"^(\..*)|$",))
    with Sandbox(skipping):
        names = sorted(os.listdir(app_root))
        content = _read(app_root / "data.txt")
    assert names == ["data.txt", "pkg", "static"] and content == DATA.encode()


def test_stubs_is_accessible_skipped_root_appdir_with_trailing_slash(policy: Policy,
                                                                    app_root: Path) -> None:
    skipping = policy.replace(skip_files=(r"^(\..*)|$",))
    assert sorted(in_sandbox(skipping, os.listdir, f"{app_root}/")) == [
        "data.txt", "pkg", "static"]


def test_stubs_is_accessible_skipped_and_not_accessible(policy: Policy, outside: Path) -> None:
    error = raised(policy.replace(skip_files=(r"^secret\.txt$",)), _read,
                   outside / "secret.txt")
    assert isinstance(error, FileReadRefused) and error.setting == "readable_paths"


def test_stubs_is_accessible_skipped_outside_appdir(policy: Policy, outside: Path) -> None:
    """skip_files applies inside the app root only, not to readable_paths."""
    extra = policy.replace(readable_paths=(str(outside),), skip_files=(r"^secret\.txt$",))
    assert in_sandbox(extra, _read, outside / "secret.txt") == b"host secret\n"


def test_stubs_is_accessible_static(policy: Policy, app_root: Path) -> None:
    (app_root / "allowed").write_text("static")
    error = raised(policy.replace(unreadable_paths=("allowed",)), _read, app_root / "allowed")
    assert isinstance(error, FileReadRefused) and error.setting == "unreadable_paths"


def test_stubs_is_accessible_static_and_not_accessible(policy: Policy, outside: Path,
                                                       app_root: Path) -> None:
    (app_root / "secret.txt").write_text("static")
    static = policy.replace(unreadable_paths=("secret.txt",))
    error = raised(static, _read, outside / "secret.txt")
    assert isinstance(error, FileReadRefused) and error.setting == "readable_paths"


def test_stubs_is_accessible_skipped_and_static_root_appdir(app_root: Path) -> None:
    """The app root itself is readable with app.yaml's default skip_files and a static
    handler."""
    (app_root / "app.yaml").write_text(
        "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n"
        "- url: /static\n  static_dir: static\n- url: /.*\n  script: main.app\n")
    (app_root / "main.py").write_text("app = None\n")
    policy = policy_from_app_yaml(app_root / "app.yaml", deadline=None)
    assert policy.skip_files and policy.unreadable_paths
    with Sandbox(policy):
        names = sorted(os.listdir(app_root))
        is_folder = os.path.isdir(app_root)
    assert names == ["data.txt", "main.py", "pkg"] and is_folder


def test_stubs_is_accessible_none_filename(policy: Policy) -> None:
    """None is a TypeError, as outside a sandbox, not a refusal."""
    for call in (lambda: os.stat(None), lambda: os.lstat(None), lambda: open(None),
                 lambda: io.open(None),  # noqa: UP020 - io.open itself is tested
                 lambda: os.open(None, os.O_RDONLY),
                 lambda: os.access(None, os.R_OK)):
        with pytest.raises(TypeError):
            call()  # outside
        error = raised(policy, call)
        assert type(error) is TypeError
