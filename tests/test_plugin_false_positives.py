"""What real test suites run under the pytest plugin showed as false positives or changed
behaviour, each fixed by mechanism (issue 11) and checked here in-process:

- the import gate leaves tracebacks exactly as an unsandboxed import would (flask tells "the
  module is missing" from "it failed inside" by ``tb_next``), in host code after a sandbox
  and inside one, while imports of cached modules inside a sandbox are still judged;
- ``signal.signal`` refused raises the ``ValueError`` the standard library falls back on;
- ``tempfile`` functions taken before install behave as the patched ones, and report mode
  gives the real ``TemporaryFile``;
- the interpreter's own reads are not violations: the folders above a readable folder
  (``os.path.realpath``), the standard library's zip on ``sys.path``, its installation
  folders, the files ``mimetypes`` probes for, a path with a NUL character.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import FileReadRefused, ImportRefused, NotAvailableRefused, Policy, Sandbox
from gae_sandbox.runtime import interpreter_library_folders


@pytest.fixture
def app_root(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    return root


@pytest.fixture(params=["enforce", "report"])
def policy(request: pytest.FixtureRequest, app_root: Path) -> Policy:
    return Policy.python27(app_root=str(app_root), mode=request.param)


@pytest.fixture
def on_path(app_root: Path) -> Iterator[Path]:
    """The app root on ``sys.path``, with a module that fails inside with an ImportError."""
    (app_root / "fails_inside.py").write_text("import a_module_nobody_has_123\n")
    sys.path.insert(0, str(app_root))
    try:
        yield app_root
    finally:
        sys.path.remove(str(app_root))
        sys.modules.pop("fails_inside", None)


def _is_missing(name: str) -> bool | None:
    """flask.cli's check: ``True`` if the module itself is missing (the traceback stops at
    the importer), ``False`` if the import failed inside it, ``None`` if it imported."""
    try:
        __import__(name)
    except ImportError:
        return sys.exc_info()[2].tb_next is None  # type: ignore[union-attr]
    return None


def _statement_is_missing() -> bool:
    try:
        import a_module_nobody_has_456  # type: ignore[import-not-found] # noqa: F401
    except ImportError:
        return sys.exc_info()[2].tb_next is None  # type: ignore[union-attr]
    raise AssertionError("imported")


# --- the import gate's tracebacks -----------------------------------------------------------


def test_import_tracebacks_are_those_of_plain_python(policy: Policy, on_path: Path) -> None:
    plain = (_is_missing("a_module_nobody_has_789"), _is_missing("fails_inside"),
             _statement_is_missing())
    assert plain == (True, False, True)
    with Sandbox(policy):
        inside = (_is_missing("a_module_nobody_has_789"), _is_missing("fails_inside"),
                  _statement_is_missing())
    after = (_is_missing("a_module_nobody_has_789"), _is_missing("fails_inside"),
             _statement_is_missing())
    assert inside == plain
    assert after == plain
    assert __import__ is importlib.__import__ or type(__import__).__name__ == (
        "builtin_function_or_method")  # never a Python function in the way


def test_flask_tells_a_missing_app_module_from_a_broken_one(policy: Policy,
                                                            on_path: Path) -> None:
    cli = pytest.importorskip("flask.cli")
    info = cli.ScriptInfo()

    def messages() -> list[str]:
        found = []
        for name in ("a_module_nobody_has_789", "fails_inside"):
            with pytest.raises(cli.NoAppException) as caught:
                cli.locate_app(name, None)
            found.append(str(caught.value).splitlines()[0])
        return found

    plain = messages()
    assert plain[0] == "Could not import 'a_module_nobody_has_789'."
    assert plain[1].startswith("While importing 'fails_inside', an ImportError was raised")
    with Sandbox(policy):
        assert messages() == plain
    assert info is not None


def test_cached_modules_are_still_judged_inside(app_root: Path) -> None:
    import ctypes  # noqa: F401 - the host has it
    import mmap  # noqa: F401

    with Sandbox(Policy.python27(app_root=str(app_root))):
        with pytest.raises(ImportRefused, match="ctypes"):
            import ctypes  # noqa: F401, F811
        with pytest.raises(ImportRefused, match="mmap"):
            __import__("mmap")
        with pytest.raises(ImportRefused, match="ctypes"):
            importlib.import_module("ctypes.util")
        with pytest.raises(ImportRefused, match="ctypes"):
            from ctypes import util  # noqa: F401
        import json  # allowed, cached: judged once, then the fast path

        assert json.dumps(1) == "1"
    report = Sandbox(Policy.python27(app_root=str(app_root), mode="report"))
    with report:
        for _ in range(3):
            import mmap  # noqa: F401, F811
    [violation] = report.violations
    assert (violation.kind, violation.target, violation.count) == ("import", "mmap", 3)


def test_a_missing_attribute_of_a_module_says_what_it_says_outside(policy: Policy) -> None:
    import math

    with pytest.raises(AttributeError) as outside:
        math.no_such_thing  # noqa: B018
    with Sandbox(policy):
        with pytest.raises(AttributeError) as inside:
            math.no_such_thing  # noqa: B018
        assert not hasattr(math, "no_such_thing")
    assert str(inside.value) == str(outside.value)


# --- signal ---------------------------------------------------------------------------------


def test_a_refused_signal_handler_is_the_value_error_signal_raises(app_root: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with Sandbox(Policy.python27(app_root=str(app_root))):
        with pytest.raises(ValueError) as caught:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    assert isinstance(caught.value, NotAvailableRefused)
    assert isinstance(caught.value, NotImplementedError)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_asyncio_run_in_a_sandbox(policy: Policy) -> None:
    """``asyncio.run`` sets a SIGINT handler and falls back when ``signal.signal`` raises
    ``ValueError``, as off the main thread."""
    import asyncio

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    before = signal.getsignal(signal.SIGINT)
    with Sandbox(policy):
        assert asyncio.run(answer()) == 42
    assert signal.getsignal(signal.SIGINT) is before


# --- tempfile -------------------------------------------------------------------------------


def _child(source: str, app_root: Path) -> str:
    """Run ``source`` in a fresh interpreter (nothing installed yet), return its stdout."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(source), str(app_root)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_tempfile_functions_taken_before_install_behave_as_the_patched_ones(
        app_root: Path) -> None:
    output = _child("""
        import sys
        from tempfile import TemporaryFile, mkdtemp  # before anything is installed
        import tempfile
        from gae_sandbox import Policy, Sandbox, TempfileRefused

        root = sys.argv[1]
        with Sandbox(Policy.python27(app_root=root)) as box:
            handle = TemporaryFile()
            handle.write(b"x"); handle.seek(0)
            print("enforce", type(handle).__name__, handle.read())
            try:
                mkdtemp()
            except TempfileRefused as refused:
                print("refused", refused.target)
        print("enforce records", [(v.kind, v.target) for v in box.violations])
        with Sandbox(Policy.python27(app_root=root, mode="report")) as box:
            handle = TemporaryFile()
            print("report", handle.fileno() > 2, tempfile.TemporaryFile().fileno() > 2)
            handle.close()
        print("report records", [(v.kind, v.target) for v in box.violations])
        print("host", TemporaryFile().fileno() > 2)
    """, app_root)
    assert output.splitlines() == [
        "enforce _MemoryTemporaryFile b'x'",
        "refused tempfile.mkdtemp()",
        "enforce records [('tempfile', 'tempfile.mkdtemp()')]",
        "report True True",  # report mode changes nothing but the record
        "report records []",  # and the runtime had TemporaryFile: nothing to record
        "host True",
    ]


# --- what the interpreter reads -------------------------------------------------------------


def _recorded(policy: Policy, operation: Callable[[], Any]) -> list[tuple[str, str]]:
    sandbox = Sandbox(policy)
    with sandbox:
        try:
            operation()
        except (OSError, ValueError):
            pass
    return [(v.kind, v.target) for v in sandbox.violations]


def test_resolving_a_readable_path_reads_nothing_it_may_not(policy: Policy,
                                                            app_root: Path) -> None:
    (app_root / "main.py").write_text("")
    assert _recorded(policy, lambda: os.path.realpath(app_root / "main.py")) == []
    assert _recorded(policy, lambda: os.path.realpath(os.__file__)) == []
    assert _recorded(policy, lambda: [os.path.isdir(p) for p in Path(app_root).parents]) == []
    with Sandbox(policy):
        assert os.path.realpath(str(app_root / "main.py")) == str(
            (app_root / "main.py").resolve())
    # a folder beside the readable ones still is not
    outside = app_root.parent / "elsewhere"
    outside.mkdir()
    assert _recorded(policy, lambda: os.stat(outside)) == [("file_read", str(outside))]


def test_the_standard_library_zip_and_installation_folders(policy: Policy) -> None:
    archive = f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    zips = [p for p in sys.path if os.path.basename(p) == archive]
    if not zips:
        pytest.skip(f"no {archive} on sys.path")
    assert os.path.realpath(zips[0]) in interpreter_library_folders()
    expected = os.path.exists(zips[0])
    with Sandbox(policy):
        assert os.path.exists(zips[0]) is expected
        if not expected:
            with pytest.raises(FileNotFoundError):
                os.stat(zips[0])
    import sysconfig

    folders = [p for p in sysconfig.get_paths().values() if os.path.isdir(p)]
    assert _recorded(policy, lambda: [os.path.realpath(p) for p in folders]) == []


def test_probes_that_reveal_nothing(policy: Policy) -> None:
    import mimetypes

    assert _recorded(policy, lambda: [os.path.isfile(p) for p in mimetypes.knownfiles]) == []
    assert _recorded(policy, lambda: os.path.isfile("/no/such\0file")) == []
    with Sandbox(policy):
        with pytest.raises(ValueError, match="null"):
            os.stat("/etc\0passwd")
    if policy.mode == "enforce":
        with Sandbox(policy):
            with pytest.raises(FileReadRefused):
                os.stat("/etc/passwd")
