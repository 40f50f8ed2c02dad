"""The path check and the open are one step (``openat2`` beneath a readable folder).

A read used to be judged by resolving its path in Python and then opened by name, so a
symlink flipped in between could lead the open outside. Here a host thread flips a symlink
inside the app root between an app file and an outside secret (or a ``skip_files`` file) while
a sandboxed thread reads through the link: no read may return the secret, every refusal is
the sandbox's own ``FileReadRefused``, and the same loop without the sandbox does read the
secret (the race is real). All loops are bounded by counts, never by time.

The other tests pin what the kernel check must keep: symlinks into ``skip_files`` folders and
``..`` tricks refused, no Python ``lstat`` walk on the fast way, the file object and errors as
before, the library's folder descriptors out of the app's reach, and the check-then-open
fallback (no ``openat2``) passing the existing file tests.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import os
import py_compile
import stat
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    FileReadRefused,
    Policy,
    Sandbox,
    SandboxViolation,
    SystemCallRefused,
    filesystem,
    paths,
)

DATA = "app data\n"
SECRET = "host secret\n"
HIDDEN = "hidden key\n"
#: Symlink flips the host thread makes (it then stops by itself).
FLIPS = 10_000
#: The reader reads until the flips are done, and never more than this many times.
MAX_READS = 200_000

needs_openat2 = pytest.mark.skipif(
    filesystem.openat2 is None, reason="the kernel or platform has no openat2 (Linux 5.6+): "
    "reads are checked then opened (filesystem.open_mode() == 'check-then-open')")


@pytest.fixture(autouse=True)
def openat2_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts in the mode the kernel offers (a test may switch it off)."""
    monkeypatch.setattr(filesystem, "RACE_FREE_OPENS", filesystem.openat2 is not None)


@pytest.fixture(params=[pytest.param("openat2", marks=needs_openat2), "check-then-open"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of opening: what they refuse and answer is the same (only the race
    differs)."""
    monkeypatch.setattr(filesystem, "RACE_FREE_OPENS", request.param == "openat2")
    assert filesystem.open_mode() == request.param
    return str(request.param)


@pytest.fixture
def hidden_policy(policy: Policy, app_root: Path) -> Policy:
    """The app root with a ``skip_files`` folder ``private/`` holding ``key.txt``."""
    (app_root / "private").mkdir()
    (app_root / "private" / "key.txt").write_text(HIDDEN)
    return policy.replace(skip_files=(r"^private$",))


# --- the race -------------------------------------------------------------------------------


def _read_open(path: Path) -> str:
    with open(path) as file:
        return file.read()


def _read_os_open(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


READERS: dict[str, Callable[[Path], str]] = {
    "open": _read_open,
    "os.open": _read_os_open,
    "Path.read_text": lambda path: path.read_text(),
}


class Flipper(threading.Thread):
    """A host thread (started outside any sandbox) that points ``link`` at each target in
    turn, ``FLIPS`` times, each time atomically (a new link renamed over the old one)."""

    def __init__(self, link: Path, targets: tuple[str, str]) -> None:
        super().__init__(name="symlink-flipper", daemon=True)
        self.link = link
        self.targets = targets

    def run(self) -> None:
        spare = self.link.with_name(self.link.name + ".next")
        for flip in range(FLIPS):
            os.symlink(self.targets[flip % 2], spare)
            os.replace(spare, self.link)


def race(read: Callable[[Path], str], path: Path, link: Path, targets: tuple[str, str],
         sandboxes: tuple[Sandbox, ...], *, missing_ok: bool = False
         ) -> tuple[Counter[str], list[BaseException]]:
    """Read ``path`` (through ``link``) while a host thread flips ``link``: how often each
    content came back, and the refusals. ``missing_ok``: a ``FileNotFoundError`` counts as
    ``"missing"`` (otherwise it fails the test)."""
    seen: Counter[str] = Counter()
    refusals: list[BaseException] = []
    flipper = Flipper(link, targets)
    flipper.start()
    try:
        with ExitStack() as stack:
            for sandbox in sandboxes:
                stack.enter_context(sandbox)
            for _ in range(MAX_READS):
                try:
                    seen[read(path)] += 1
                except FileReadRefused as refusal:
                    seen["refused"] += 1
                    if len(refusals) < 50:
                        refusals.append(refusal)
                except FileNotFoundError:
                    if not missing_ok:
                        raise
                    seen["missing"] += 1
                if not flipper.is_alive():
                    break
    finally:
        flipper.join()
    return seen, refusals


def _file_link(app_root: Path, outside: Path) -> tuple[Path, Path, tuple[str, str]]:
    link = app_root / "current.txt"
    link.symlink_to("data.txt")
    return link, link, ("data.txt", str(outside / "secret.txt"))


def _folder_link(app_root: Path, outside: Path) -> tuple[Path, Path, tuple[str, str]]:
    (app_root / "public").mkdir()
    (app_root / "public" / "item.txt").write_text(DATA)
    (outside / "item.txt").write_text(SECRET)
    link = app_root / "current"
    link.symlink_to("public", target_is_directory=True)
    return link / "item.txt", link, ("public", str(outside))


LINKS = {"file-link": _file_link, "folder-link": _folder_link}


@needs_openat2
@pytest.mark.parametrize(("reader", "kind"), [
    ("open", "file-link"), ("os.open", "file-link"), ("Path.read_text", "file-link"),
    ("open", "folder-link"),
])
def test_a_flipped_symlink_never_leads_a_read_outside(
        policy: Policy, app_root: Path, outside: Path, reader: str, kind: str) -> None:
    path, link, targets = LINKS[kind](app_root, outside)
    seen, refusals = race(READERS[reader], path, link, targets, (Sandbox(policy),))
    assert seen[SECRET] == 0, seen
    assert seen[DATA] > 0 and seen["refused"] > 0, seen  # both states were met
    for refusal in refusals:
        assert isinstance(refusal, PermissionError)
        assert refusal.errno == errno.EACCES
        assert refusal.setting == "readable_paths"
        assert str(outside) in str(refusal)


def test_control_the_same_loop_without_the_sandbox_reads_the_secret(
        app_root: Path, outside: Path) -> None:
    path, link, targets = _file_link(app_root, outside)
    seen, _ = race(_read_open, path, link, targets, ())
    assert seen[SECRET] > 0, seen


@needs_openat2
@pytest.mark.parametrize("reader", ["open", "os.open"])
def test_a_symlink_flipped_into_a_skip_files_folder_never_reads_it(
        hidden_policy: Policy, app_root: Path, reader: str) -> None:
    link = app_root / "current.txt"
    link.symlink_to("data.txt")
    seen, refusals = race(READERS[reader], link, link, ("data.txt", "private/key.txt"),
                          (Sandbox(hidden_policy),))
    assert seen[HIDDEN] == 0, seen
    assert seen[DATA] > 0 and seen["refused"] > 0, seen
    assert {refusal.setting for refusal in refusals} == {"skip_files"}  # type: ignore[attr-defined]


@needs_openat2
def test_nested_sandboxes_judge_the_opened_file_for_every_layer(
        policy: Policy, app_root: Path, outside: Path) -> None:
    """The inner sandbox may read the outside folder, the outer one may not: the flip never
    gets the secret past the outer layer."""
    path, link, targets = _file_link(app_root, outside)
    inner = policy.replace(readable_paths=(str(outside),))
    seen, refusals = race(_read_open, path, link, targets, (Sandbox(policy), Sandbox(inner)))
    assert seen[SECRET] == 0, seen
    assert seen[DATA] > 0 and seen["refused"] > 0, seen


# --- what the kernel check keeps ------------------------------------------------------------


def _hidden_file_link(app_root: Path) -> Path:
    (app_root / "alias.txt").symlink_to("private/key.txt")
    return app_root / "alias.txt"


def _hidden_folder_link(app_root: Path) -> Path:
    (app_root / "keys").symlink_to("private", target_is_directory=True)
    return app_root / "keys" / "key.txt"


def _hidden_absolute_link(app_root: Path) -> Path:
    (app_root / "absolute.txt").symlink_to(app_root / "private" / "key.txt")
    return app_root / "absolute.txt"


def _hidden_chain(app_root: Path) -> Path:
    (app_root / "pkg" / "hop").symlink_to("../keys", target_is_directory=True)
    (app_root / "keys").symlink_to("private", target_is_directory=True)
    return app_root / "pkg" / "hop" / "key.txt"


def _hidden_dotdot(app_root: Path) -> Path:
    return app_root / "pkg" / ".." / "private" / "key.txt"


HIDDEN_PATHS: dict[str, Callable[[Path], Path]] = {
    "file-link": _hidden_file_link,
    "folder-link": _hidden_folder_link,
    "absolute-link": _hidden_absolute_link,
    "chained-links": _hidden_chain,
    "dotdot": _hidden_dotdot,
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("how", sorted(HIDDEN_PATHS))
def test_skip_files_reached_through_a_symlink_is_refused(
        hidden_policy: Policy, app_root: Path, how: str, reader: str, mode: str) -> None:
    path = HIDDEN_PATHS[how](app_root)
    with Sandbox(hidden_policy):
        with pytest.raises(FileReadRefused) as caught:
            READERS[reader](path)
        assert READERS[reader](app_root / "data.txt") == DATA
    assert caught.value.setting == "skip_files"
    assert caught.value.filename == str(path)
    assert READERS[reader](path) == HIDDEN  # control: the path does lead to the file


def test_unreadable_paths_reached_through_a_symlink_is_refused(
        policy: Policy, app_root: Path, mode: str) -> None:
    (app_root / "shown.css").symlink_to("static/style.css")
    static = policy.replace(unreadable_paths=(str(app_root / "static"),))
    with Sandbox(static):
        with pytest.raises(FileReadRefused) as caught:
            _read_open(app_root / "shown.css")
    assert caught.value.setting == "unreadable_paths"


def test_a_symlink_to_a_file_that_is_not_hidden_is_followed(
        hidden_policy: Policy, app_root: Path, mode: str) -> None:
    (app_root / "alias.txt").symlink_to("data.txt")
    (app_root / "absolute.txt").symlink_to(app_root / "data.txt")
    with Sandbox(hidden_policy) as sandbox:
        texts = [READERS[reader](app_root / name) for reader in sorted(READERS)
                 for name in ("alias.txt", "absolute.txt", "pkg/../data.txt")]
    assert texts == [DATA] * len(texts)
    assert sandbox.violations == []


DOTDOT: dict[str, Callable[[Path, Path], Any]] = {
    "up-and-out": lambda root, outside: root / "pkg" / ".." / ".." / "app2" / "secret.txt",
    "out-from-the-root": lambda root, outside: root / ".." / "app2" / "secret.txt",
    "bytes": lambda root, outside: os.fsencode(root) + b"/pkg/../../app2/secret.txt",
    "relative": lambda root, outside: "../app2/secret.txt",
    "doubled-slashes": lambda root, outside: f"{root}//pkg//..//..//app2/secret.txt",
}


@pytest.mark.parametrize("reader", ["open", "os.open"])
@pytest.mark.parametrize("how", sorted(DOTDOT))
def test_dotdot_tricks_are_refused(
        policy: Policy, app_root: Path, outside: Path, how: str, reader: str, mode: str) -> None:
    path = DOTDOT[how](app_root, outside)
    read = READERS[reader]
    with Sandbox(policy):
        with pytest.raises(FileReadRefused) as caught:
            read(path)
    assert caught.value.setting == "readable_paths"
    assert f"resolves to {outside / 'secret.txt'}" in str(caught.value)
    assert caught.value.filename == (str(path) if isinstance(path, Path) else path)


def test_dotdot_that_comes_back_inside_is_read(policy: Policy, app_root: Path, mode: str) -> None:
    with Sandbox(policy) as sandbox:
        texts = [_read_open(app_root / ".." / "app" / "data.txt"),
                 _read_os_open(app_root / "pkg" / ".." / "data.txt"),
                 _read_open(app_root / "static" / ".." / "data.txt")]
    assert texts == [DATA] * 3
    assert sandbox.violations == []


@needs_openat2
@pytest.mark.parametrize("hides", [False, True], ids=["no-skip-files", "skip-files"])
def test_the_fast_way_walks_no_path_in_python(
        policy: Policy, app_root: Path, hides: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads beneath a readable folder are judged by the kernel: no per-component lstat."""
    used = policy.replace(skip_files=(r"^private$",)) if hides else policy

    def no_walk(*args: Any) -> Any:
        raise AssertionError("the path was walked in Python")

    with Sandbox(used):  # installs the patches; the folder descriptors are checked here
        _read_open(app_root / "data.txt")
        monkeypatch.setattr(paths, "walk", no_walk)
        monkeypatch.setattr(filesystem, "walk", no_walk)
        monkeypatch.setattr(filesystem, "realpath", no_walk)
        monkeypatch.setattr(filesystem, "resolve", no_walk)
        texts = [_read_open(app_root / "data.txt"), _read_os_open(app_root / "data.txt"),
                 (app_root / "pkg" / "helpers.py").read_text(), _read_open("data.txt")]
        with open(io.__file__, "rb") as library_file:
            library_source = library_file.read()
    assert texts[:2] == [DATA, DATA] and "def double" in texts[2] and texts[3] == DATA
    assert b"import" in library_source


def test_open_mode_says_which_way_reads_are_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = "openat2" if filesystem.openat2 is not None else "check-then-open"
    assert filesystem.open_mode() == expected
    monkeypatch.setattr(filesystem, "RACE_FREE_OPENS", False)
    assert filesystem.open_mode() == "check-then-open"


@needs_openat2
def test_a_kernel_without_openat2_at_run_time_falls_back(
        policy: Policy, app_root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seccomp filter installed after import answers ENOSYS: the next read falls back to
    check-then-open, and says so."""
    monkeypatch.setattr(filesystem, "openat2", lambda *args: -errno.ENOSYS)
    with Sandbox(policy):
        assert _read_open(app_root / "data.txt") == DATA
        with pytest.raises(FileReadRefused):
            _read_open(outside / "secret.txt")
    assert filesystem.open_mode() == "check-then-open"


# --- the file object and errors, as before --------------------------------------------------


def test_file_objects_and_errors_are_as_outside(
        policy: Policy, app_root: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    data = app_root / "data.txt"

    def describe() -> list[Any]:
        found: list[Any] = []
        for name, mode in ((str(data), "r"), (str(data), "rb"), (data, "r"),
                           (os.fsencode(data), "rb"), ("data.txt", "r")):
            with open(name, mode) as file:
                found.append((file.name, file.mode, type(file).__name__, file.read()))
        with open(data, "rb", buffering=0) as file:
            found.append((file.name, type(file).__name__, file.read()))
        with open(data, encoding="latin-1", newline="") as file:
            found.append((file.encoding, file.read()))
        for name in ("missing.txt", str(app_root / "missing.txt"), str(app_root / "static")):
            try:
                open(name).close()
            except OSError as error:
                found.append((type(error).__name__, error.errno, error.filename, str(error)))
        return found

    with Sandbox(policy) as sandbox:
        inside = describe()
    monkeypatch.chdir(app_root)  # the request's working directory is the app root
    assert inside == describe()
    assert sandbox.violations == []


def test_os_open_with_flags(policy: Policy, app_root: Path, mode: str) -> None:
    (app_root / "alias.txt").symlink_to("data.txt")
    with Sandbox(policy):
        folder = os.open(app_root / "static", os.O_RDONLY | os.O_DIRECTORY)
        listed = os.listdir(folder)
        os.close(folder)
        handle = os.open(app_root / "alias.txt", os.O_PATH | os.O_NOFOLLOW)
        is_link = stat.S_ISLNK(os.fstat(handle).st_mode)
        os.close(handle)
        with pytest.raises(OSError) as nofollow:
            os.open(app_root / "alias.txt", os.O_RDONLY | os.O_NOFOLLOW)
        odd = os.open(app_root / "data.txt", os.O_RDONLY | 0x4000_0000)  # unknown bit: ignored
        odd_data = os.read(odd, 100)
        os.close(odd)
    assert listed == ["style.css"]
    assert is_link
    assert nofollow.value.errno == errno.ELOOP
    assert odd_data == DATA.encode()


# --- the folder descriptors are the library's ------------------------------------------------


@needs_openat2
def test_the_folder_descriptors_are_out_of_the_apps_reach(
        policy: Policy, app_root: Path) -> None:
    with Sandbox(policy):
        _read_open(app_root / "data.txt")
        root_fd = filesystem.root_descriptors.descriptors()[policy.app_root]
        attempts: dict[str, Callable[[], Any]] = {
            "os.close": lambda: os.close(root_fd),
            "os.dup": lambda: os.dup(root_fd),
            "os.read": lambda: os.read(root_fd, 10),
            "open(fd)": lambda: open(root_fd, closefd=False),
            "os.open(dir_fd=)": lambda: os.open("data.txt", os.O_RDONLY, dir_fd=root_fd),
        }
        refused = {}
        for name, attempt in attempts.items():
            with pytest.raises(SandboxViolation) as caught:
                attempt()
            refused[name] = type(caught.value)
        assert _read_open(app_root / "data.txt") == DATA  # the descriptor still works
    assert refused["os.close"] is SystemCallRefused
    assert refused["os.dup"] is SystemCallRefused
    held = os.fstat(root_fd)
    assert (held.st_dev, held.st_ino) == (os.stat(app_root).st_dev, os.stat(app_root).st_ino)


@needs_openat2
def test_a_replaced_app_root_is_read_anew_by_the_next_request(
        policy: Policy, app_root: Path) -> None:
    with Sandbox(policy):
        before = _read_open(app_root / "data.txt")
    app_root.rename(app_root.with_name("old-app"))
    app_root.mkdir()
    (app_root / "data.txt").write_text("new release\n")
    with Sandbox(policy):
        after = _read_open(app_root / "data.txt")
    assert (before, after) == (DATA, "new release\n")


def test_report_mode_records_a_read_through_a_symlink_once(
        policy: Policy, app_root: Path, outside: Path, mode: str) -> None:
    (app_root / "leak.txt").symlink_to(outside / "secret.txt")
    with Sandbox(policy.replace(mode="report")) as sandbox:
        text = _read_open(app_root / "leak.txt")
    assert text == SECRET
    [violation] = sandbox.violations
    assert violation.kind == "file_read" and violation.count == 1


# --- the fallback ---------------------------------------------------------------------------

FALLBACK_PLUGIN = '''
import gae_sandbox.filesystem as filesystem


def pytest_configure(config):
    filesystem.RACE_FREE_OPENS = False


def pytest_sessionfinish(session, exitstatus):
    assert filesystem.open_mode() == "check-then-open"
    print("gae-sandbox-open-mode:", filesystem.open_mode())
'''


@pytest.fixture
def fallback_plugin(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "force_check_then_open.py").write_text(FALLBACK_PLUGIN)
    yield folder


def test_the_check_then_open_fallback_passes_the_file_tests(fallback_plugin: Path) -> None:
    """tests/test_files.py in a child pytest with the fallback forced (as on a kernel without
    openat2, or another platform)."""
    tests = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(fallback_plugin), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "force_check_then_open", "-s", str(tests / "test_files.py")],
        cwd=tests.parent, env=environment, capture_output=True, text=True, timeout=600,
        check=False)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert "gae-sandbox-open-mode: check-then-open" in result.stdout, output
    assert " passed" in result.stdout and " failed" not in result.stdout, output


@pytest.mark.parametrize("mode", [pytest.param("openat2", marks=needs_openat2),
                                  "check-then-open"], indirect=True)
def test_the_import_system_reads_bytecode_that_skip_files_hides(
        policy: Policy, app_on_path: Path, mode: str) -> None:
    """The default skip_files hide ``*.pyc``; the import system still reads the cached
    bytecode of a module the import gate judged (as the audit hook lets it), and other
    hidden bytecode stays hidden from the app."""
    source = app_on_path / "cached_module.py"
    source.write_text("VALUE = 'from bytecode'\n")
    cached = Path(importlib.util.cache_from_source(str(source)))
    py_compile.compile(str(source), cfile=str(cached), doraise=True)
    other = cached.with_name("other.cpython.pyc")
    other.write_bytes(cached.read_bytes())
    hiding = policy.replace(skip_files=(r"^(.*/)?.*\.py[co]$",))
    with Sandbox(hiding) as sandbox:
        module = importlib.import_module("cached_module")
        with pytest.raises(FileReadRefused) as caught:
            open(other, "rb").close()
    assert module.VALUE == "from bytecode"
    assert module.__spec__ is not None and module.__spec__.cached == str(cached)
    assert caught.value.setting == "skip_files"
    assert [v.setting for v in sandbox.violations] == ["skip_files"]


# --- os.stat: the cached resolution -----------------------------------------------------------
#
# os.stat and os.lstat inside a sandbox reuse where a path resolved (filesystem.resolve_walk)
# only when the one stat the call makes names the same file (device, inode, mode, ctime):
# a flipped symlink, a replaced file or a folder swapped for a symlink is walked again.


def _stat_identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def race_stat(path: Path, link: Path, targets: tuple[str, str], sandboxes: tuple[Sandbox, ...],
              secret: tuple[int, int], spelling: type = Path
              ) -> tuple[Counter[str], list[BaseException]]:
    """``os.stat(path)`` while a host thread flips ``link``: how often the secret's identity
    came back, how often another file's, and the refusals (a flip of a folder can leave the
    path missing for a moment: ``"missing"``). ``spelling=str`` passes the path as a str,
    the case the C accelerator answers from its resolution cache."""
    return race(lambda checked: "secret" if _stat_identity(spelling(checked)) == secret
                else "app", path, link, targets, sandboxes, missing_ok=True)


SPELLINGS = [pytest.param(Path, id="Path"), pytest.param(str, id="str")]


@pytest.fixture
def fresh_resolutions() -> Iterator[None]:
    filesystem.forget_resolutions()
    yield
    filesystem.forget_resolutions()


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("kind", ["file-link", "folder-link"])
def test_a_flipped_symlink_never_leads_a_stat_outside(
        policy: Policy, app_root: Path, outside: Path, kind: str, spelling: type,
        fresh_resolutions: None) -> None:
    path, link, targets = LINKS[kind](app_root, outside)
    secret_file = outside / ("secret.txt" if kind == "file-link" else "item.txt")
    secret = _stat_identity(secret_file)
    seen, refusals = race_stat(path, link, targets, (Sandbox(policy),), secret, spelling)
    assert seen["secret"] == 0, seen
    assert seen["app"] > 0 and seen["refused"] > 0, seen  # both states were met
    for refusal in refusals:
        assert isinstance(refusal, PermissionError)
        assert refusal.setting == "readable_paths"  # type: ignore[attr-defined]


def test_control_the_same_stat_loop_without_the_sandbox_sees_the_secret(
        app_root: Path, outside: Path) -> None:
    path, link, targets = _file_link(app_root, outside)
    seen, _ = race_stat(path, link, targets, (), _stat_identity(outside / "secret.txt"))
    assert seen["secret"] > 0, seen


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_stat_flipped_into_a_skip_files_folder_is_refused(
        hidden_policy: Policy, app_root: Path, spelling: type,
        fresh_resolutions: None) -> None:
    link = app_root / "current.txt"
    link.symlink_to("data.txt")
    hidden = _stat_identity(app_root / "private" / "key.txt")
    seen, refusals = race_stat(link, link, ("data.txt", "private/key.txt"),
                               (Sandbox(hidden_policy),), hidden, spelling)
    assert seen["secret"] == 0, seen
    assert seen["app"] > 0 and seen["refused"] > 0, seen
    assert {refusal.setting for refusal in refusals} == {"skip_files"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("call", ["stat", "lstat"])
def test_a_cached_resolution_is_checked_against_the_file_every_time(
        policy: Policy, app_root: Path, outside: Path, call: str, spelling: type,
        fresh_resolutions: None) -> None:
    """Each change after a cached answer: the next call answers about the file now there."""
    function = getattr(os, call)
    link = spelling(app_root / "current.txt")
    Path(link).symlink_to("data.txt")
    (app_root / "dir").mkdir()
    (app_root / "dir" / "secret.txt").write_text(DATA)
    inner = spelling(app_root / "dir" / "secret.txt")
    with Sandbox(policy):
        for _ in range(2):  # the second answer comes from the cache
            assert function(link).st_ino == os.lstat(link).st_ino if call == "lstat" else (
                function(link).st_ino == (app_root / "data.txt").stat().st_ino)
            assert function(inner).st_ino == os.stat(inner).st_ino
    assert str(link) in filesystem._RESOLVED or call == "lstat"
    assert str(inner) in filesystem._RESOLVED
    # the symlink now leads outside
    spare = app_root / "next"
    spare.symlink_to(outside / "secret.txt")
    os.replace(spare, link)
    # the folder on the way is now a symlink to an outside folder holding "secret.txt"
    os.rename(app_root / "dir", app_root / "old-dir")
    (app_root / "dir").symlink_to(outside, target_is_directory=True)
    with Sandbox(policy):
        if call == "stat":
            with pytest.raises(FileReadRefused):
                function(link)
        with pytest.raises(FileReadRefused):
            function(inner)
    # a file replaced by another (a new inode at the same name) is answered anew
    (app_root / "dir").unlink()
    os.rename(app_root / "old-dir", app_root / "dir")
    sandbox = Sandbox(policy)
    before = sandbox.call(function, inner).st_ino
    replacement = app_root / "replacement.txt"
    replacement.write_text("new\n")
    os.replace(replacement, inner)
    assert sandbox.call(function, inner).st_ino == os.stat(inner).st_ino != before


def test_a_cached_resolution_needs_the_same_ctime(
        policy: Policy, app_root: Path, fresh_resolutions: None) -> None:
    """An entry whose file changed since (its ctime: a new file reusing a freed inode number
    has another) is not used: the path is walked again."""
    data = app_root / "data.txt"
    with Sandbox(policy):
        os.stat(data)
    resolved, direct, dev, ino, mode, ctime = filesystem._RESOLVED[str(data)]
    filesystem._RESOLVED[str(data)] = ("/etc/passwd", direct, dev, ino, mode, ctime - 1)
    with Sandbox(policy):
        assert os.stat(data).st_ino == ino
    assert filesystem._RESOLVED[str(data)][0] == resolved  # walked and cached anew


def test_relative_stats_follow_the_requests_working_directory(
        policy: Policy, app_root: Path, outside: Path, fresh_resolutions: None) -> None:
    """Per-request working directories: a relative path is cached by the absolute path it
    names, so two apps with the same relative name never share an answer."""
    other_root = outside / "other-app"
    other_root.mkdir()
    (other_root / "data.txt").write_text("other\n")
    other = Policy.python27(app_root=other_root, deadline=None)
    with Sandbox(policy):
        assert os.stat("data.txt").st_ino == (app_root / "data.txt").stat().st_ino
    with Sandbox(other):
        assert os.stat("data.txt").st_ino == (other_root / "data.txt").stat().st_ino
    with Sandbox(policy):
        assert os.stat("data.txt").st_ino == (app_root / "data.txt").stat().st_ino
    assert "data.txt" not in filesystem._RESOLVED


# --- the working directory ------------------------------------------------------------------


def _chdir_through(outside: Path) -> Callable[[Path], str]:
    """``os.chdir`` into a folder symlink a host thread flips: the working directory that
    came of it, ``SECRET`` when it is ``outside`` (compared as strings: no file is read)."""
    def chdir(link: Path) -> str:
        os.chdir(link)
        cwd = os.getcwd()
        return SECRET if cwd == str(outside) else cwd
    return chdir


def test_a_flipped_folder_link_never_leaves_the_working_directory_outside(
        policy: Policy, app_root: Path, outside: Path) -> None:
    """``os.chdir`` stats the folder, then resolves it: the folder it stores is judged
    itself, so a link swapped between the two cannot leave the request's working directory
    (which relative reads and ``getcwd`` use) outside what it may read."""
    _, link, targets = _folder_link(app_root, outside)
    seen, refusals = race(_chdir_through(outside), link, link, targets, (Sandbox(policy),))
    assert seen[SECRET] == 0, seen
    assert seen[str(app_root / "public")] > 0 and seen["refused"] > 0, seen
    for refusal in refusals:
        assert refusal.setting == "readable_paths"


def test_control_the_same_chdir_loop_without_the_sandbox_ends_outside(
        app_root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(app_root)  # the process's working directory is put back after
    _, link, targets = _folder_link(app_root, outside)
    seen, _ = race(_chdir_through(outside), link, link, targets, ())
    assert seen[SECRET] > 0, seen
