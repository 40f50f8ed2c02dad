"""``tempfile`` inside a sandbox: only ``TemporaryFile`` (in memory), as on the runtime.

``tempfile.tempdir`` is pointed at a private folder for each test, so "nothing was created in
``tempfile.gettempdir()``" is an exact listing comparison that other processes writing to the
system temp folder cannot disturb.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    FileWriteRefused,
    Policy,
    Sandbox,
    SandboxViolation,
    TempfileRefused,
)


@pytest.fixture
def tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``tempfile.gettempdir()`` for this test (restored afterwards)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    assert tempfile.gettempdir() == str(folder)
    return folder


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _has_fileno(f: Any) -> bool:
    try:
        f.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return True


# --- TemporaryFile: in memory ---------------------------------------------------------------


def test_temporary_file_binary_works_in_memory(policy: Policy, tempdir: Path) -> None:
    with Sandbox(policy) as sandbox:
        f = tempfile.TemporaryFile()
        f.write(b"hello \x00 bytes")
        f.seek(0)
        data = f.read()
        f.seek(6)
        tail = f.read()
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
        f.close()
        with pytest.raises(ValueError):
            f.read()
    assert data == b"hello \x00 bytes"
    assert tail == b"\x00 bytes"
    assert listing(tempdir) == []
    assert sandbox.violations == []


def test_temporary_file_as_context_manager(policy: Policy, tempdir: Path) -> None:
    with Sandbox(policy):
        with tempfile.TemporaryFile("w+b") as f:
            f.write(b"x" * 100_000)
            f.seek(0, io.SEEK_END)
            size = f.tell()
            f.seek(0)
            first = f.read(3)
            on_disk = _has_fileno(f)
        closed = f.closed
    assert (size, first, on_disk, closed) == (100_000, b"xxx", False, True)
    assert listing(tempdir) == []


@pytest.mark.parametrize("encoding, expected", [("utf-8", "h\u00e9llo".encode()),
                                                ("latin-1", b"h\xe9llo")])
def test_temporary_file_text_mode(
    policy: Policy, tempdir: Path, encoding: str, expected: bytes
) -> None:
    with Sandbox(policy) as sandbox:
        with tempfile.TemporaryFile("w+", encoding=encoding) as f:
            f.write("h\u00e9llo")
            f.seek(0)
            text = f.read()
            f.seek(0)
            raw = f.buffer.read()
            on_disk = _has_fileno(f)
    assert text == "h\u00e9llo"
    assert raw == expected  # the encoding was honoured
    assert on_disk is False
    assert listing(tempdir) == []
    assert sandbox.violations == []


def test_temporary_file_ignores_dir_and_creates_nothing(
    policy: Policy, app_root: Path, tempdir: Path
) -> None:
    before = listing(app_root)
    with Sandbox(policy):
        with tempfile.TemporaryFile(dir=app_root, prefix="x", suffix=".tmp") as f:
            f.write(b"data")
            f.seek(0)
            data = f.read()
    assert data == b"data"
    assert listing(app_root) == before
    assert listing(tempdir) == []


def test_temporary_file_rejects_an_invalid_mode(policy: Policy) -> None:
    with Sandbox(policy):
        with pytest.raises(ValueError):
            tempfile.TemporaryFile("q")


def test_spooled_temporary_file_rollover_stays_in_memory(policy: Policy, tempdir: Path) -> None:
    with Sandbox(policy) as sandbox:
        with tempfile.SpooledTemporaryFile(max_size=16) as f:
            f.write(b"small")
            rolled_early = f._rolled
            f.write(b"y" * 1000)  # past max_size: rolls over to TemporaryFile()
            rolled = f._rolled
            f.seek(0)
            data = f.read()
            on_disk = _has_fileno(f)  # fileno() would roll over too
    assert rolled_early is False
    assert rolled is True
    assert data == b"small" + b"y" * 1000
    assert on_disk is False
    assert listing(tempdir) == []
    assert sandbox.violations == []


def test_spooled_temporary_file_text_mode_rollover(policy: Policy, tempdir: Path) -> None:
    with Sandbox(policy):
        with tempfile.SpooledTemporaryFile(max_size=4, mode="w+", encoding="utf-8") as f:
            f.write("\u00e9t\u00e9 " * 10)
            f.rollover()
            f.seek(0)
            text = f.read()
            on_disk = _has_fileno(f)
    assert text == "\u00e9t\u00e9 " * 10
    assert on_disk is False
    assert listing(tempdir) == []


# --- the rest of tempfile: refused ----------------------------------------------------------


def _named_temporary_file(**kwargs: Any) -> Any:
    return tempfile.NamedTemporaryFile(**kwargs)


REFUSED: dict[str, Callable[..., Any]] = {
    "mkstemp": lambda **kw: tempfile.mkstemp(**kw),
    "mkdtemp": lambda **kw: tempfile.mkdtemp(**kw),
    "NamedTemporaryFile": _named_temporary_file,
    "NamedTemporaryFile-delete=False": lambda **kw: tempfile.NamedTemporaryFile(
        delete=False, **kw),
    "TemporaryDirectory": lambda **kw: tempfile.TemporaryDirectory(**kw),
    "mktemp": lambda **kw: tempfile.mktemp(**kw),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_tempfile_functions_are_refused(
    policy: Policy, tempdir: Path, name: str
) -> None:
    with Sandbox(policy) as sandbox:
        with pytest.raises(TempfileRefused) as caught:
            REFUSED[name]()
    refusal = caught.value
    assert isinstance(refusal, NotImplementedError)
    assert isinstance(refusal, SandboxViolation)
    assert refusal.kind == "tempfile"
    assert name.split("-")[0] in str(refusal)
    assert "TemporaryFile" in refusal.rule
    assert listing(tempdir) == []
    assert [v.kind for v in sandbox.violations] == ["tempfile"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_an_explicit_dir_creates_nothing_there(
    policy: Policy, app_root: Path, tempdir: Path, name: str
) -> None:
    before = listing(app_root)
    with Sandbox(policy):
        with pytest.raises(TempfileRefused):
            REFUSED[name](dir=str(app_root), prefix="made-", suffix=".tmp")
    assert listing(app_root) == before
    assert listing(tempdir) == []


def _use(name: str, made: Any, tempdir: Path) -> None:
    """Check what ``REFUSED[name]`` made outside a sandbox, then clean it up."""
    if name == "mkstemp":
        fd, path = made
        assert os.path.dirname(path) == str(tempdir)
        assert os.write(fd, b"x") == 1
        assert listing(tempdir) == [os.path.basename(path)]
        os.close(fd)
    elif name == "mkdtemp":
        assert os.path.isdir(made) and os.path.dirname(made) == str(tempdir)
    elif name.startswith("NamedTemporaryFile"):
        with made as f:
            f.write(b"x")
            f.flush()
            assert isinstance(f.fileno(), int)
            assert listing(tempdir) == [os.path.basename(f.name)]
    elif name == "TemporaryDirectory":
        with made as folder:
            assert listing(tempdir) == [os.path.basename(folder)]
        assert listing(tempdir) == []
    else:  # mktemp only returns a name
        assert os.path.dirname(made) == str(tempdir)
        assert not os.path.exists(made)


@pytest.mark.parametrize("after_a_sandbox", [False, True], ids=["never-entered", "after-exit"])
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_tempfile_functions_work_outside_a_sandbox(
    policy: Policy, tempdir: Path, name: str, after_a_sandbox: bool
) -> None:
    if after_a_sandbox:
        with Sandbox(policy):
            with pytest.raises(TempfileRefused):
                REFUSED[name]()
    made = REFUSED[name]()
    _use(name, made, tempdir)


@pytest.mark.parametrize("after_a_sandbox", [False, True], ids=["never-entered", "after-exit"])
def test_temporary_file_outside_a_sandbox_is_a_real_file(
    policy: Policy, tempdir: Path, after_a_sandbox: bool
) -> None:
    if after_a_sandbox:
        with Sandbox(policy):
            with tempfile.TemporaryFile() as inside:
                assert not _has_fileno(inside)
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        f.write(b"on disk")
        f.flush()
        assert isinstance(fd, int)
        assert os.fstat(fd).st_size == len(b"on disk")
    with tempfile.SpooledTemporaryFile(max_size=4) as spooled:
        spooled.write(b"past max_size")
        assert isinstance(spooled.fileno(), int)


# --- report mode and captured references ----------------------------------------------------


def test_report_mode_lets_mkstemp_through_and_records_it_once(
    policy: Policy, tempdir: Path
) -> None:
    with Sandbox(policy.replace(mode="report")) as sandbox:
        line = sys._getframe().f_lineno + 1
        fd, path = tempfile.mkstemp()
    os.close(fd)
    assert listing(tempdir) == [os.path.basename(path)]
    [violation] = sandbox.violations
    assert violation.kind == "tempfile"
    assert "mkstemp" in violation.target
    assert violation.location == f"{__file__}:{line}"
    assert violation.enforced is False


def test_a_captured_mkstemp_is_still_refused(policy: Policy, tempdir: Path) -> None:
    """A reference taken before the sandbox patched ``tempfile`` skips the patch; the audit
    backstop (the ``tempfile.mkstemp`` and ``open`` events) still refuses it."""
    original = tempfile.mkstemp.__wrapped__ if hasattr(tempfile.mkstemp, "__wrapped__") else (
        tempfile.mkstemp)
    with Sandbox(policy):
        with pytest.raises((TempfileRefused, FileWriteRefused)):
            original()
    assert listing(tempdir) == []


def test_temporary_file_in_the_memory_presets_has_a_descriptor(tmp_path: Path) -> None:
    """Under the python3 (and memory) preset ``TemporaryFile`` is a file of the in-memory
    filesystem, with a ``fileno`` as on the runtime; nothing reaches the disk."""
    with Sandbox(Policy.python3(app_root=tmp_path)):
        file = tempfile.TemporaryFile()
        file.write(b"abc")
        file.seek(0)
        assert file.read() == b"abc"
        assert isinstance(file.fileno(), int)
        name = file.name
        file.close()
    assert not os.path.exists(name)
