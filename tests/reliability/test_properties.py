"""Properties of the path decisions and of policy validation, with hypothesis.

Path decisions are checked against the kernel's own answer: a random tree of folders,
files and symlinks (some pointing out of the app root, some dangling, some in loops) is
built on disk, random paths are made from its names, ``..``, unicode, NUL bytes and
components past PATH_MAX, and ``os.path.realpath`` outside the sandbox is the oracle.
Runs are derandomized and use no example database, so CI sees the same examples each time.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gae_sandbox import Policy, Sandbox
from gae_sandbox.errors import FileReadRefused, SandboxViolation, SystemCallRefused
from gae_sandbox.filesystem import check_read, resolve

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
ALLOWED_ERRORS = (SandboxViolation, OSError, ValueError, TypeError)

NAMES = ["a", "b", "é", "日本", "d d", "f", ".hidden"]
COMPONENTS = st.one_of(
    st.sampled_from([*NAMES, "..", ".", "", "link", "out", "app"]),
    st.just("x" * 300),  # longer than NAME_MAX
    st.just("nul\0byte"),
    st.text(min_size=1, max_size=6).filter(lambda s: "/" not in s),  # NUL, surrogates, ...
)

# one entry of the tree: (kind, parent, name, link target components, absolute target)
ENTRY = st.tuples(
    st.sampled_from(["dir", "file", "link"]),
    st.integers(min_value=0, max_value=20),
    st.sampled_from([*NAMES, "link"]),
    st.lists(st.sampled_from([*NAMES, "..", ".", "out", "app", "link", "secret.txt",
                              "data.txt"]),
             max_size=5),
    st.sampled_from([None, "out", "app", "/", "base"]),
)


def build_tree(base: Path, entries: list[tuple[Any, ...]]) -> list[Path]:
    """``base/app`` (the app root) and ``base/out`` (outside it, with a secret), then the
    entries: folders and files under earlier folders, symlinks to anywhere. Returns every
    path made, the app root first."""
    app, out = base / "app", base / "out"
    app.mkdir()
    out.mkdir()
    (out / "secret.txt").write_text("secret")
    (app / "data.txt").write_text("data")
    folders = [app, out, base]
    made = [app, out / "secret.txt", out, app / "data.txt"]
    for kind, parent, name, target, anchor in entries:
        where = folders[parent % len(folders)] / name
        if os.path.lexists(where):
            continue
        made.append(where)
        if kind == "dir":
            where.mkdir()
            folders.append(where)
        elif kind == "file":
            where.write_text(f"file {where}")
        else:
            relative = "/".join(target) or "."
            root = {None: None, "out": out, "app": app, "/": Path("/"), "base": base}[anchor]
            os.symlink(relative if root is None else f"{root}/{relative}", where)
    return made


PATHS = st.tuples(
    # absolute: one of the made paths; relative (the working directory is the tree's base)
    st.one_of(st.integers(min_value=0, max_value=30),
              st.sampled_from(["app", "out", ".", "app/data.txt", "out/secret.txt"])),
    st.one_of(st.just([]), st.lists(COMPONENTS, max_size=6)),
    st.sampled_from(["str", "bytes", "pathlib"]),
    st.integers(min_value=0, max_value=9).map(lambda n: n == 0),  # past PATH_MAX, rarely
)


def make_path(made: list[Path], spec: tuple[Any, ...]) -> Any:
    """One of the made paths (or a relative start) and more components."""
    start, components, form, very_long = spec
    prefix = start if isinstance(start, str) else str(made[start % len(made)])
    parts = [prefix, *components]
    text = "/".join(parts) or "."
    if very_long:
        text += "/" + "/".join(["y" * 200] * 25)  # > PATH_MAX (4096)
    if form == "bytes":
        return os.fsencode(text) if "\0" not in text else text.encode("utf-8", "surrogateescape")
    if form == "pathlib" and "\0" not in text:
        return Path(text)
    return text


def oracle(path: Any, app: Path) -> tuple[bool, bool] | None:
    """(inside the app root, a regular file) as the kernel sees it outside the sandbox;
    ``None`` when the path cannot be asked about (NUL byte)."""
    try:
        real = os.fsdecode(os.path.realpath(path))
        is_file = os.path.isfile(path)
    except ValueError:
        return None
    root = str(app)
    return (real == root or real.startswith(root + "/")), is_file


@settings(SETTINGS, max_examples=400)
@given(entries=st.lists(ENTRY, max_size=14), specs=st.lists(PATHS, min_size=1, max_size=6))
def test_path_decisions_follow_the_kernel(entries: list[tuple[Any, ...]],
                                          specs: list[tuple[Any, ...]]) -> None:
    base = Path(tempfile.mkdtemp(prefix="gae_sandbox_prop_"))
    cwd = os.getcwd()
    os.chdir(base)  # relative paths start beside the app root (no other thread runs here)
    try:
        made = build_tree(base, entries)
        app = made[0].resolve()
        # relative paths are the kernel's (the process's working directory), not the app's
        sandbox = Sandbox(Policy.python27(app_root=app, deadline=None,
                                          working_directory="host"))
        layer = sandbox._layer
        for spec in specs:
            path = make_path(made, spec)
            decision = check_read(layer, path)  # never raises
            assert decision is None or isinstance(decision, FileReadRefused)
            expected = oracle(path, app)
            opened = sandbox.call(_open_and_read, path)
            stat = sandbox.call(_stat, path)
            lstat = sandbox.call(_stat, path, os.lstat)  # looked up after install()
            if expected is None:
                continue
            inside, is_file = expected
            event(f"{'inside' if inside else 'outside'}, {'file' if is_file else 'other'}")
            if not inside:
                assert not isinstance(opened, bytes), f"read outside the app root: {path!r}"
                real = os.fsdecode(os.path.realpath(path))
                if not str(app).startswith(real.rstrip("/") + "/"):  # a folder above it may
                    assert not isinstance(stat, os.stat_result), f"stat outside: {path!r}"
                if is_file:
                    assert isinstance(opened, FileReadRefused), (path, opened)
                    assert isinstance(stat, FileReadRefused), (path, stat)
                    assert decision is not None
                continue
            if is_file:
                with open(path, "rb") as f:
                    assert opened == f.read(), (path, opened)
                assert decision is None
            # inside, os.stat and os.lstat answer as the kernel does, errors included
            assert_same_answer(path, os.stat, stat)
            assert_same_answer(path, os.lstat, lstat)
    finally:
        os.chdir(cwd)
        shutil.rmtree(base)


def _open_and_read(path: Any) -> bytes | BaseException:
    try:
        with open(path, "rb") as f:
            return f.read()
    except ALLOWED_ERRORS as error:
        return error


def _stat(path: Any, function: Any = None) -> os.stat_result | BaseException:
    try:  # os.stat looked up now: a reference taken before install() is not the checked one
        return (function or os.stat)(path)
    except ALLOWED_ERRORS as error:
        return error


@SETTINGS
@given(value=st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=20),
    st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.builds(object), st.tuples(st.text(max_size=5)),
))
def test_resolve_and_check_read_never_crash(tmp_path_factory: pytest.TempPathFactory,
                                            value: Any) -> None:
    """Any object as a path: an answer or a refusal, never an exception."""
    root = _shared_root(tmp_path_factory)
    layer = Sandbox(Policy.python27(app_root=root, deadline=None))._layer
    result = resolve(value)
    assert result is None or (isinstance(result, str) and result.startswith("/"))
    decision = check_read(layer, value)
    assert decision is None or isinstance(decision, SandboxViolation)


_ROOTS: dict[str, Path] = {}


def _shared_root(factory: pytest.TempPathFactory) -> Path:
    if "root" not in _ROOTS:
        root = factory.mktemp("prop_root")
        (root / "data.txt").write_text("data")
        _ROOTS["root"] = root
    return _ROOTS["root"]


@SETTINGS
@given(fd=st.integers(min_value=0, max_value=1024))
def test_descriptors_the_request_did_not_open_are_refused(
        tmp_path_factory: pytest.TempPathFactory, fd: int) -> None:
    root = _shared_root(tmp_path_factory)
    sandbox = Sandbox(Policy.python27(app_root=root, deadline=None))

    def reopen() -> BaseException | None:
        try:
            open(fd, "rb", closefd=False).close()  # closefd=False: a bug must not close it
        except ALLOWED_ERRORS as error:
            return error
        return None

    refusal = sandbox.call(reopen)
    assert isinstance(refusal, SystemCallRefused), (fd, refusal)
    assert f"open(fd {fd})" in str(refusal)


# --- policy validation ----------------------------------------------------------------------

ANY_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
              st.binary(max_size=8), st.just(math.inf), st.just(10**400)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=4), inner, max_size=2),
                            st.frozensets(st.text(max_size=4), max_size=2)),
    max_leaves=6,
)
FIELDS = ["app_root", "readable_paths", "skip_files", "unreadable_paths", "env_variables",
          "allowed_modules", "blocked_modules", "allowed_c_extensions", "allowed_hosts",
          "filesystem", "deadline", "mode", "hard_deadline_grace", "allow_threads",
          "allow_background_threads"]


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=ANY_VALUE)
def test_policy_validation_names_the_field(tmp_path_factory: pytest.TempPathFactory,
                                           field: str, value: Any) -> None:
    """A random value for any field is accepted, or refused with ValueError or TypeError
    whose message names the field."""
    root = _shared_root(tmp_path_factory)
    try:
        Policy(**{"app_root": root, field: value})
    except (ValueError, TypeError) as error:
        assert f"Policy.{field}" in str(error), (field, value, str(error))


def test_allowed_hosts_port_with_a_superscript_digit_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Policy.allowed_hosts"):
        Policy(app_root=tmp_path, allowed_hosts=("example.com:²",))


TRICKY = ["f", "f/", "f/.", "f/../f", "missing/../f", "lf", "lf/", "ls", "ls/../f", "sub/..",
          "lp", "//f", "./f", "sub/../lf", "ls/.", "lf/../f"]


@pytest.mark.parametrize("relative", TRICKY)
def test_sandboxed_stat_answers_as_the_kernel(tmp_path: Path, relative: str) -> None:
    """os.stat and os.lstat inside answer from the check's walk only where that walk is what
    the kernel does: a trailing slash, ``..`` after a file or a missing folder still fail."""
    app = tmp_path.resolve()
    (app / "f").write_text("f")
    (app / "sub").mkdir()
    os.symlink("f", app / "lf")
    os.symlink("sub/", app / "ls")
    os.symlink("lp", app / "lp")
    sandbox = Sandbox(Policy.python27(app_root=app, deadline=None))
    path = f"{app}/{relative}"
    for function in (os.stat, os.lstat):
        assert_same_answer(path, function, sandbox.call(_stat, path, function))


def assert_same_answer(path: Any, function: Any, seen: Any) -> None:
    """``seen`` (inside the sandbox) is what ``function(path)`` gives the host; a path that
    cannot be resolved (a symlink loop) may be refused instead, even by ``lstat``."""
    kernel = _stat(path, function)
    followed = _stat(path)
    if isinstance(followed, OSError) and followed.errno == errno.ELOOP:
        assert isinstance(seen, (FileReadRefused, OSError)) or seen == kernel, (path, seen)
    elif isinstance(kernel, os.stat_result):
        assert seen == kernel, (function, path, seen)
    else:
        assert type(seen) is type(kernel), (function, path, seen, kernel)
        assert getattr(seen, "errno", None) == getattr(kernel, "errno", None)
