"""The optional C accelerator (``gae_sandbox._speedups``) and the pure-Python code agree.

Both kinds of wrapper are built here whatever ``GAE_SANDBOX_PURE_PYTHON`` says (CI runs the
whole suite once with the accelerator and once without it); the C kind is skipped only where
the extension was not built. Set ``GAE_SANDBOX_REQUIRE_SPEEDUPS=1`` (CI does) to make a
missing build a failure instead.

What the C ``Guard`` reveals: no attribute, repr or pickle of it reaches the original (or the
Python wrapper, whose closure holds the original). ``gc.get_referents`` does reach both: the
collector must traverse what the object holds to collect cycles through it, so it is not
hidden; inside a sandbox ``gc.get_referents`` is refused by the audit layer (tested below),
as it is for the pure-Python wrappers' closures.
"""

from __future__ import annotations

import copy
import gc
import inspect
import io
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import types
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import Policy, Sandbox, patches
from gae_sandbox.context import _ACTIVE
from gae_sandbox.errors import FileReadRefused, NetworkRefused, SandboxViolation, SystemCallRefused

try:
    from gae_sandbox import _speedups  # type: ignore[attr-defined]
except ImportError:
    _speedups = None

needs_c = pytest.mark.skipif(_speedups is None, reason="gae_sandbox._speedups is not built")
KINDS = [pytest.param("python", id="python"), pytest.param("c", id="c", marks=needs_c)]


def build(kind: str, factory: Callable[..., Any], *args: Any) -> Any:
    """``factory(*args)`` (a patches.py wrapper maker) as the ``kind`` of wrapper."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(patches, "SPEEDUPS", _speedups if kind == "c" else None)
        return factory(*args)


def is_guard(wrapper: Any) -> bool:
    return _speedups is not None and isinstance(wrapper, _speedups.Guard)


@pytest.mark.skipif(os.environ.get("GAE_SANDBOX_REQUIRE_SPEEDUPS") != "1",
                    reason="the accelerator is optional (CI sets GAE_SANDBOX_REQUIRE_SPEEDUPS=1)")
def test_accelerator_is_built_where_required() -> None:
    """CI's machines have a compiler: there a failed build (a warning only) is a failure."""
    assert _speedups is not None, "gae_sandbox._speedups did not build or does not import"


# --- both implementations agree ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_what_was_asked(kind: str) -> None:
    stat = build(kind, patches._path_reader, os.stat)
    assert is_guard(stat) == (kind == "c")
    assert (stat.__name__, stat.__qualname__, stat.__module__, stat.__doc__) == (
        os.stat.__name__, os.stat.__qualname__, os.stat.__module__, os.stat.__doc__)
    parameters = inspect.signature(stat).parameters  # the Python wrapper's, both ways
    assert list(parameters) == ["path", "dir_fd", "follow_symlinks"]
    assert parameters["follow_symlinks"].default is True


@pytest.mark.parametrize("kind", KINDS)
def test_stat_host_call_is_the_original_and_sandboxed_call_is_checked(
        kind: str, policy: Policy, app_root: Path, outside: Path) -> None:
    stat = build(kind, patches._path_reader, os.stat)
    secret = outside / "secret.txt"
    assert stat(secret) == os.stat(secret)  # host code: the original's answer
    assert stat(str(secret), follow_symlinks=False) == os.lstat(secret)  # keywords pass on
    with pytest.raises(FileNotFoundError):
        stat(outside / "missing")  # and the original's errors
    with Sandbox(policy):
        assert stat(app_root / "data.txt").st_size == len("app data\n")
        with pytest.raises(FileReadRefused):
            stat(secret)


@pytest.mark.parametrize("kind", KINDS)
def test_fd_write_host_call_writes_and_sandboxed_call_is_refused(
        kind: str, policy: Policy, tmp_path: Path) -> None:
    write = build(kind, patches._fd_writer, os.write, "os.write")
    log = tmp_path / "host.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert write(fd, b"host ") == 5
        with Sandbox(policy), pytest.raises(SystemCallRefused):
            write(fd, b"app")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"host "


@pytest.mark.parametrize("kind", KINDS)
def test_method_wrapper_binds_like_a_function(kind: str, policy: Policy) -> None:
    """``socket.socket.listen`` is replaced on the class: the wrapper must bind ``self``."""

    class Socket(socket.socket):
        listen = build(kind, patches._listen, socket.socket.listen)

    assert Socket.listen is vars(Socket)["listen"]  # unbound from the class, as a function
    with Socket() as host:
        host.bind(("127.0.0.1", 0))
        host.listen(1)  # bound: self is passed
        bound = host.listen
        assert bound.__self__ is host
        with socket.create_connection(host.getsockname(), timeout=5):
            pass  # it listens
    with Socket() as app_socket:
        with Sandbox(policy), pytest.raises(NetworkRefused):
            app_socket.listen(1)
        assert app_socket.getsockname()[1] == 0  # a listen would have bound it to a port


@pytest.mark.parametrize("kind", KINDS)
def test_report_mode_records_and_lets_through(kind: str, policy: Policy, tmp_path: Path) -> None:
    write = build(kind, patches._fd_writer, os.write, "os.write")
    log = tmp_path / "host.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with Sandbox(policy.replace(mode="report")) as sandbox:
            write(fd, b"reported")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"reported"
    [violation] = sandbox.violations
    assert "os.write" in violation.target


def test_patch_table_uses_the_active_kind() -> None:
    """Every function patches.py installs is a C Guard with the accelerator, and a Python
    function without it (the installed ``os.stat`` may be another layer's router on top)."""
    functions = [replacement for _owner, _attribute, _original, replacement
                 in patches.build_patches()
                 if is_guard(replacement) or isinstance(replacement, types.FunctionType)]
    assert len(functions) > 20
    accelerated = patches.SPEEDUPS is not None
    assert [f for f in functions if is_guard(f) != accelerated] == []
    assert (patches.accelerator() == "C") == accelerated


# --- the C Guard does not reveal the original -------------------------------------------------


@pytest.fixture
def guard() -> Iterator[Any]:
    if _speedups is None:
        pytest.skip("gae_sandbox._speedups is not built")
    original = os.write
    yield build("c", patches._fd_writer, original, "os.write")


def _reachable_by_attributes(start: Any, depth: int = 3) -> list[Any]:
    """Every object reachable from ``start`` through attributes ``dir`` lists, and the
    values of mappings and sequences among them."""
    seen: dict[int, Any] = {}
    layer = [start]
    for _ in range(depth):
        found = []
        for obj in layer:
            values = []
            for name in dir(obj):
                try:
                    values.append(getattr(obj, name))
                except Exception:  # noqa: BLE001 - unreadable attributes reveal nothing
                    continue
            if isinstance(obj, dict):
                values += list(obj.values())
            for value in values:
                if id(value) not in seen and not isinstance(value, (str, type)):
                    seen[id(value)] = value
                    found.append(value)
        layer = found
    return list(seen.values())


def test_guard_attributes_do_not_reach_the_original(guard: Any) -> None:
    for name in ("__wrapped__", "__closure__", "__code__", "__func__", "__self__",
                 "__globals__", "original", "checked"):
        assert not hasattr(guard, name), name
    reachable = _reachable_by_attributes(guard)
    assert not any(value is os.write for value in reachable)
    # nor the Python wrapper, whose closure holds the original
    assert not any(getattr(value, "__closure__", None) for value in reachable
                   if callable(value) and getattr(value, "__name__", "") == "write")
    assert "<gae_sandbox guard of write at" in repr(guard)


def test_guard_pickles_and_copies_by_name_only(guard: Any) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert guard.__reduce_ex__(protocol) == "write"  # a name, looked up in __module__
    assert copy.copy(guard) is guard
    assert copy.deepcopy(guard) is guard


def test_gc_get_referents_is_refused_inside_a_sandbox(guard: Any, policy: Policy) -> None:
    assert os.write in gc.get_referents(guard)  # host code: the collector's view, on purpose
    with Sandbox(policy), pytest.raises(SandboxViolation):
        gc.get_referents(guard)


def test_guard_is_collected_in_a_cycle() -> None:
    if _speedups is None:
        pytest.skip("gae_sandbox._speedups is not built")

    class Holder:
        pass

    holder = Holder()
    holder.guard = _speedups.Guard(len, len, _ACTIVE)
    holder.guard.holder = holder  # a cycle through the guard's __dict__
    gc.collect()
    count = sum(1 for obj in gc.get_objects() if type(obj) is Holder)
    del holder
    gc.collect()
    assert sum(1 for obj in gc.get_objects() if type(obj) is Holder) == count - 1


def test_guard_takes_weak_references_as_a_function_does() -> None:
    if _speedups is None:
        pytest.skip("gae_sandbox._speedups is not built")
    guard = build("c", patches._fd_writer, os.write, "os.write")
    reference = weakref.ref(guard)
    assert reference() is guard
    del guard
    gc.collect()
    assert reference() is None


def test_guard_checks_its_arguments() -> None:
    if _speedups is None:
        pytest.skip("gae_sandbox._speedups is not built")
    import contextvars

    with pytest.raises(TypeError):
        _speedups.Guard(len, len, "not a ContextVar")
    with pytest.raises(TypeError):
        _speedups.Guard(1, len, _ACTIVE)
    other = contextvars.ContextVar("other", default=None)
    guard = _speedups.Guard(lambda *a, **k: ("host", a, k), lambda *a, **k: ("checked", a, k),
                            other)
    assert guard(1, key=2) == ("host", (1,), {"key": 2})
    token = other.set("scope")
    try:
        assert guard(1, key=2) == ("checked", (1,), {"key": 2})
    finally:
        other.reset(token)


# --- the audit hook ---------------------------------------------------------------------------


def test_installed_audit_hook_ignores_host_events_and_judges_sandboxed_ones(
        policy: Policy) -> None:
    """Whichever hook is installed (C or Python): an event a sandbox refuses is nothing in
    host code."""
    with Sandbox(policy):
        pass  # installs the hook
    sys.audit("os.system", b"true")  # host code: ignored
    with Sandbox(policy), pytest.raises(SandboxViolation):
        sys.audit("os.system", b"true")


def test_c_audit_hook_calls_python_only_inside_a_scope() -> None:
    """In a fresh process (hooks cannot be removed): the C hook calls the Python hook for
    events raised while the ContextVar holds a scope, never for host code nor for the events
    it was given as needing no decision, and is added once."""
    if _speedups is None:
        pytest.skip("gae_sandbox._speedups is not built")
    script = textwrap.dedent("""
        import contextvars, sys
        from gae_sandbox import _speedups

        seen = []
        def hook(event, args):
            if event.startswith("test."):
                seen.append((event, args))
                if event == "test.refuse":
                    raise PermissionError("refused")

        var = contextvars.ContextVar("scope", default=None)
        passed = frozenset({"test.passed"})
        assert _speedups.install_audit_hook(hook, var, passed) is True
        assert _speedups.install_audit_hook(hook, var) is False  # once per process
        sys.audit("test.host", 1)
        token = var.set("scope")
        sys.audit("test.passed", 4)  # needs no decision: the Python hook is not called
        sys.audit("test.scoped", 2, "x")
        try:
            sys.audit("test.refuse")
        except PermissionError:
            seen.append("refused")
        var.reset(token)
        sys.audit("test.host", 3)
        print(seen)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == ("[('test.scoped', (2, 'x')), ('test.refuse', ()), "
                                     "'refused']")


# --- --version ---------------------------------------------------------------------------------


def _version(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "GAE_SANDBOX_PURE_PYTHON"}
    result = subprocess.run([sys.executable, "-m", "gae_sandbox", "--version"],
                            capture_output=True, text=True, timeout=120, check=True,
                            env={**environ, **env})
    return result.stdout


def test_version_names_the_pure_python_implementation_when_asked() -> None:
    assert "accelerator: pure Python (GAE_SANDBOX_PURE_PYTHON=1)" in _version(
        GAE_SANDBOX_PURE_PYTHON="1").splitlines()


def test_version_names_the_active_implementation() -> None:
    lines = _version().splitlines()
    assert lines[0].startswith("gae-sandbox ")
    if _speedups is not None:
        assert lines[1] == "accelerator: C"
    else:
        assert lines[1].startswith("accelerator: pure Python (gae_sandbox._speedups ")


# --- the spec flag the C import reads on every cached import ----------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_spec_flag_answers_host_code_with_the_specs_own_value(kind: str,
                                                              tmp_path: Path) -> None:
    """``ModuleSpec._initializing`` (C ``Attribute`` or Python property): host code reads the
    spec's own value, set and delete work, and inside a sandbox an import of a cached module
    no layer allowed yet is still judged (refused), while host code beside it imports it."""
    from importlib.machinery import ModuleSpec

    from gae_sandbox import imports

    [(_owner, _name, _original, flag)] = [
        patch for patch in imports.build_patches(_speedups if kind == "c" else None)
        if patch[1] == "_initializing"]
    assert (type(flag) is not property) == (kind == "c")
    spec = ModuleSpec("example", None)
    with pytest.raises(AttributeError):  # set only while the module loads
        flag.__get__(spec, ModuleSpec)
    flag.__set__(spec, True)
    assert flag.__get__(spec, ModuleSpec) is True
    flag.__delete__(spec)
    with pytest.raises(AttributeError):
        flag.__get__(spec, ModuleSpec)

    import _ctypes  # noqa: F401  (cached now: the sandbox must judge it from sys.modules)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(ModuleSpec, "_initializing", flag, raising=False)
        with Sandbox(Policy.python27(app_root=str(tmp_path))), pytest.raises(ImportError):
            import _ctypes  # noqa: F401,F811
        import _ctypes  # noqa: F401,F811  (host code again)


def test_repeated_import_known_to_an_outer_sandbox_is_judged_again_inside_a_narrower_one(
        tmp_path: Path) -> None:
    """The accelerator answers a repeated import of a module the governing sandbox already
    allowed without Python; a nested sandbox that does not allow it still refuses it, and so
    does the outer one once the app has emptied the context variable (the thread's mark
    governs). Control: the outer sandbox imports it before and after."""
    import json  # noqa: F401  (cached)

    outer = Policy.python27(app_root=str(tmp_path))
    inner = outer.replace(blocked_modules=(*outer.blocked_modules, "json"))

    def body() -> list[str]:
        seen = []
        import json  # noqa: F401,F811  (allowed: now known to the outer scope)
        seen.append("outer")
        with Sandbox(inner):
            try:
                import json  # noqa: F401,F811
                seen.append("inner imported json")
            except ImportError:
                seen.append("inner refused")
            token = _ACTIVE.set(None)  # the app empties the variable: the mark governs
            try:
                import json  # noqa: F401,F811
                seen.append("emptied context imported json")
            except ImportError:
                seen.append("emptied context refused")
            finally:
                _ACTIVE.reset(token)
        import json  # noqa: F401,F811
        seen.append("outer again")
        return seen

    assert Sandbox(outer).call(body) == ["outer", "inner refused", "emptied context refused",
                                         "outer again"]


@pytest.mark.parametrize("kind", KINDS)
def test_stat_answered_in_c_is_the_checked_answer(kind: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandboxed ``os.stat``/``os.lstat`` of a str path walked before is answered by the C
    ``StatGuard`` without the Python walk (the Python kind walks each time); a nested
    sandbox that cannot read the file still refuses it. Control: host code stats the hidden
    file."""
    from gae_sandbox import context, filesystem

    if kind == "c" and context.SPEEDUPS is None:
        pytest.skip("the C scope lookup is wired (watch_threads) only where the accelerator "
                    "is active")
    stat = build(kind, patches._path_reader, filesystem._stat)
    lstat = build(kind, patches._path_reader, filesystem._lstat)
    assert isinstance(stat, _speedups.StatGuard) if kind == "c" else not is_guard(stat)
    app = tmp_path / "app"
    (app / "private").mkdir(parents=True)
    data = app / "data.txt"
    data.write_text("x\n")
    key = app / "private" / "key.txt"
    key.write_text("k\n")
    policy = Policy.python27(app_root=str(app), deadline=None)
    narrow = policy.replace(skip_files=(r"^private/.*",))
    assert stat(str(key)).st_size == 2  # host control
    walks: list[Any] = []
    real_walk = patches.resolve_walk
    monkeypatch.setattr(patches, "resolve_walk", lambda value: walks.append(value) or (
        real_walk(value)))

    def body() -> list[Any]:
        first = stat(str(data))  # walked (in Python), cached
        stat(str(key))  # allowed here, cached
        del walks[:]
        answers = [stat(str(data)), lstat(str(data))]
        results: list[Any] = [len(walks), {first.st_ino} == {a.st_ino for a in answers}]
        with Sandbox(narrow):
            try:
                stat(str(key))
                results.append("nested stat read the skipped file")
            except FileReadRefused:
                results.append("nested refused")
        return results

    filesystem.forget_resolutions()
    try:
        walked, same, nested = Sandbox(policy).call(body)
    finally:
        filesystem.forget_resolutions()
    assert same and nested == "nested refused"
    assert walked == (0 if kind == "c" else 2)


@pytest.mark.parametrize("kind", KINDS)
def test_same_items_compares_by_identity_only(kind: str) -> None:
    """The import trust record's change check: by identity, never an item's ``__eq__``
    (app code, in host code); anything but a list counts as a change."""
    from gae_sandbox import imports

    same = _speedups.same_items if kind == "c" else imports._python_same_items
    called: list[str] = []

    class Text(str):
        def __eq__(self, other: object) -> bool:
            called.append("eq")
            return True

        __hash__ = str.__hash__

    entry = "/somewhere"
    seen = [entry, "b"]
    assert same([entry, "b"], seen, [], [])
    assert not same([Text(entry), "b"], seen)
    assert not same([entry], seen)
    assert not same((entry, "b"), seen)
    assert not same([entry, "b"], seen, [1], [])
    assert called == []
    with pytest.raises(TypeError):
        same([entry])


def _open_outcome(opener: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What ``opener(*args, **kwargs)`` gave: the content and name, or the error's class
    and filename (a refusal is a ``PermissionError``)."""
    try:
        with opener(*args, **kwargs) as file:
            raw = file if isinstance(file, io.FileIO) else getattr(file, "raw", None) or (
                file.buffer.raw)
            return ("read", file.read(), raw.name)
    except OSError as error:
        return (type(error).__name__, error.filename)


@pytest.mark.parametrize("kind", KINDS)
def test_open_made_in_c_is_the_checked_answer(kind: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandboxed read is made by the C ``OpenGuard`` with no Python frame where the scope's
    one layer hides nothing (the Python kind goes through ``open_for_reading`` each time),
    with the same answers: the content and the name the app gave, relative paths against
    the request's working directory, the error naming the path, and the refusals of a
    symlink or ``..`` leading out, of a file ``skip_files`` hides, and of a nested sandbox
    that cannot read it. Control: host code reads the files refused inside."""
    from gae_sandbox import context, emulation, filesystem

    if kind == "c" and (context.SPEEDUPS is None or not hasattr(_speedups, "OpenGuard")):
        pytest.skip("the C open is wired where the accelerator is active, on Linux")
    opener = build(kind, emulation._open, io.open)
    assert isinstance(opener, _speedups.OpenGuard) if kind == "c" else not is_guard(opener)
    app, outside = tmp_path / "app", tmp_path / "outside"
    (app / "sub").mkdir(parents=True)
    (app / "private").mkdir()
    outside.mkdir()
    (app / "data.txt").write_text("x\n")
    (app / "private" / "key.txt").write_text("k\n")
    (outside / "secret.txt").write_text("s\n")
    (app / "out").symlink_to(outside / "secret.txt")
    (app / "in").symlink_to("data.txt")  # relative: followed beneath the folder
    policy = Policy.python27(app_root=str(app), deadline=None)
    hiding = policy.replace(skip_files=(r"^private/.*",))
    data, key = str(app / "data.txt"), str(app / "private" / "key.txt")
    escapes = [str(app / "out"), f"{app}/../outside/secret.txt"]
    for path in (*escapes, key):  # host control: each is readable without a sandbox
        assert _open_outcome(opener, path)[0] == "read"
    calls: list[Any] = []
    real = filesystem.open_for_reading
    monkeypatch.setattr(filesystem, "open_for_reading",
                        lambda *args: calls.append(args[1]) or real(*args))

    def body() -> list[Any]:
        _open_outcome(opener, data, "rb")  # the scope's first read: Python, which says so
        del calls[:]
        seen = [_open_outcome(opener, data, "rb"),
                _open_outcome(opener, "data.txt", encoding="utf-8"),
                _open_outcome(opener, str(app / "in"), "r", newline=None),
                len(calls)]
        seen += [_open_outcome(opener, str(app / "sub")),
                 _open_outcome(opener, str(app / "missing.txt"), "rb")]
        seen += [_open_outcome(opener, path) for path in escapes]
        with Sandbox(hiding):
            seen.append(_open_outcome(opener, key))
        return seen

    seen = Sandbox(policy).call(body)
    assert seen == [("read", b"x\n", data), ("read", "x\n", "data.txt"),
                    ("read", "x\n", str(app / "in")), 0 if kind == "c" else 3,
                    ("IsADirectoryError", str(app / "sub")),
                    ("FileNotFoundError", str(app / "missing.txt")),
                    *[("FileReadRefused", path) for path in escapes],
                    ("FileReadRefused", key)]
    assert Sandbox(hiding).call(_open_outcome, opener, key) == ("FileReadRefused", key)


@pytest.mark.parametrize("kind", KINDS)
def test_the_descriptor_open_hands_io_open_is_the_scopes_alone(kind: str,
                                                               tmp_path: Path) -> None:
    """While ``open`` hands its new descriptor to ``io.open``, code of another scope that
    runs meanwhile (here a codec search function a nested sandbox that hides the file
    registered, called by ``io.open`` for the encoding) is judged as always: ``FileIO`` of
    that number is refused to it. Control: without a sandbox the function reads the file
    through the number."""
    import codecs

    from gae_sandbox import context, emulation

    if kind == "c" and (context.SPEEDUPS is None or not hasattr(_speedups, "OpenGuard")):
        pytest.skip("the C open is wired where the accelerator is active, on Linux")
    opener = build(kind, emulation._open, io.open)
    app = tmp_path / "app"
    (app / "hidden").mkdir(parents=True)
    secret = app / "hidden" / "s.txt"
    secret.write_text("the secret\n")
    (app / "public.txt").write_text("public\n")
    outer = Policy.python27(app_root=str(app), deadline=None)
    inner = outer.replace(unreadable_paths=(str(app / "hidden"),))
    free = os.dup(0)  # the number the control's open gets (it opens nothing meanwhile)
    os.close(free)
    read: list[Any] = []
    numbers = [free]  # inside, the sandbox's own folder descriptors may come first

    def search(name: str) -> Any:
        if not name.startswith("gae_sandbox_test_"):
            return None
        for number in numbers:
            try:
                with io.FileIO(number, "r", closefd=False) as stolen:
                    read.append(stolen.read())
            except OSError as error:
                read.append(type(error).__name__)
        return codecs.lookup("utf-8")

    def read_with(encoding: str) -> None:
        with opener(str(secret), encoding=encoding) as file:
            file.read()

    def body() -> None:
        with opener(str(app / "public.txt")) as file:  # the scope's first read: Python
            file.read()
        with Sandbox(inner):
            codecs.register(search)  # runs in the inner sandbox whoever calls it
        read_with(f"gae_sandbox_test_{kind}_sandboxed")

    try:
        codecs.register(search)  # control: host code's own search function
        read_with(f"gae_sandbox_test_{kind}_plain")
        assert read == [b"the secret\n"]
        codecs.unregister(search)
        del read[:]
        numbers[:] = range(free, free + 8)  # refused before any read, the handed one too
        Sandbox(outer).call(body)
    finally:
        codecs.unregister(search)
    assert len(read) == 8 and not any(type(value) is bytes for value in read), read
