"""``filesystem="memory"``: writes succeed in a filesystem private to the request, laid over
the app's read-only files; nothing reaches the disk, and the host keeps the real disk.

Every test checks the disk itself: a snapshot of the app folder (names and contents) before
and after, and the exact paths the app wrote, which must not exist on disk.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import (
    FileReadRefused,
    FileWriteRefused,
    Policy,
    Sandbox,
    SandboxViolation,
    SystemCallRefused,
)
from gae_sandbox.memoryfs import TMP_FOLDERS
from gae_sandbox.paths import is_inside


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder`` with its content (None for a folder)."""
    found: dict[str, bytes | None] = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(base, name), folder)] = None
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


@pytest.fixture
def memory(app_root: Path) -> Policy:
    return Policy.python27(app_root=app_root, deadline=None, filesystem="memory")


@pytest.fixture
def tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``tempfile.gettempdir()`` (outside the app) for this test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_writes_succeed_in_memory_and_nothing_reaches_disk(memory: Policy,
                                                           app_root: Path) -> None:
    before = snapshot(app_root)
    new = app_root / "cache" / "entry.txt"
    with Sandbox(memory):
        os.makedirs(app_root / "cache")
        with open(new, "w") as f:
            f.write("in memory")
        with open(new) as f:
            assert f.read() == "in memory"
        assert os.path.isfile(new)
        assert sorted(os.listdir(app_root / "cache")) == ["entry.txt"]
    assert not new.exists()
    assert not (app_root / "cache").exists()
    assert snapshot(app_root) == before


def test_app_files_are_seen_and_changed_only_in_memory(memory: Policy, app_root: Path) -> None:
    before = snapshot(app_root)
    with Sandbox(memory):
        with open(app_root / "data.txt") as f:
            assert f.read() == "app data\n"
        with open(app_root / "data.txt", "a") as f:
            f.write("more\n")
        with open(app_root / "data.txt") as f:
            assert f.read() == "app data\nmore\n"
        os.remove(app_root / "pkg" / "helpers.py")
        os.rename(app_root / "static", app_root / "assets")
        assert not os.path.exists(app_root / "pkg" / "helpers.py")
        assert sorted(os.listdir(app_root)) == ["assets", "data.txt", "pkg"]
    assert snapshot(app_root) == before


def test_pathlib_shutil_glob_and_walk(memory: Policy, app_root: Path) -> None:
    before = snapshot(app_root)
    with Sandbox(memory):
        out = app_root / "out"
        out.mkdir()
        (out / "a.txt").write_text("A")
        (out / "b.bin").write_bytes(b"B")
        shutil.copy(app_root / "data.txt", out / "copy.txt")
        shutil.copytree(app_root / "pkg", out / "pkg2")
        assert (out / "copy.txt").read_text() == "app data\n"
        assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.bin", "copy.txt", "pkg2"]
        assert sorted(os.path.basename(p) for p in glob.glob(str(out / "*.txt"))) == [
            "a.txt", "copy.txt"]
        walked = sorted(name for _, _, files in os.walk(out) for name in files)
        assert walked == ["__init__.py", "a.txt", "b.bin", "copy.txt", "helpers.py"]
        shutil.rmtree(out)
        assert not out.exists()
    assert snapshot(app_root) == before


def test_descriptor_level_calls(memory: Policy, app_root: Path) -> None:
    path = app_root / "fd.bin"
    with Sandbox(memory):
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        assert os.write(fd, b"hello world") == 11
        assert os.fstat(fd).st_size == 11
        os.close(fd)
        fd = os.open(path, os.O_RDWR)
        assert os.lseek(fd, 6, os.SEEK_SET) == 6
        assert os.read(fd, 5) == b"world"
        os.ftruncate(fd, 5)
        os.close(fd)
        with open(path, "rb") as f:
            assert f.read() == b"hello"
            assert os.fstat(f.fileno()).st_size == 5
    assert not path.exists()


def test_open_with_an_opener(memory: Policy, app_root: Path) -> None:
    target = app_root / "opened.txt"
    with Sandbox(memory):
        def opener(path: str, flags: int) -> int:
            return os.open(path, flags, 0o600)

        with open(target, "w", opener=opener) as f:
            f.write("through the opener")
        with open(target) as f:
            assert f.read() == "through the opener"
    assert not target.exists()


def test_real_descriptors_the_app_makes_still_work(memory: Policy) -> None:
    with Sandbox(memory):
        read_end, write_end = os.pipe()
        try:
            assert os.write(write_end, b"through the pipe") == 16
            assert os.read(read_end, 64) == b"through the pipe"
        finally:
            os.close(read_end)
            os.close(write_end)


def test_tempfile_makers_work_in_memory(memory: Policy, tempdir: Path) -> None:
    with Sandbox(memory):
        fd, name = tempfile.mkstemp(suffix=".txt")
        os.write(fd, b"stemp")
        os.close(fd)
        with open(name) as f:
            assert f.read() == "stemp"
        folder = tempfile.mkdtemp()
        assert os.path.isdir(folder)
        with tempfile.TemporaryDirectory() as scratch:
            with open(os.path.join(scratch, "x"), "w") as f:
                f.write("x")
            assert os.listdir(scratch) == ["x"]
        assert not os.path.exists(scratch)
        with tempfile.NamedTemporaryFile("w+") as named:
            named.write("named")
            named.flush()
            with open(named.name) as f:
                assert f.read() == "named"
        assert not os.path.exists(named.name)
    assert os.listdir(tempdir) == []
    for made in (name, folder, scratch, named.name):
        assert not os.path.exists(made)


def test_each_request_has_its_own_files(memory: Policy, app_root: Path) -> None:
    sandbox = Sandbox(memory)
    with sandbox:
        with open(app_root / "first.txt", "w") as f:
            f.write("1")
    with sandbox:
        assert not os.path.exists(app_root / "first.txt")
        with pytest.raises(FileNotFoundError):
            open(app_root / "first.txt")
    assert not (app_root / "first.txt").exists()


def test_keep_memory_filesystem_shares_files_across_one_sandboxs_requests(
        memory: Policy, app_root: Path) -> None:
    kept = Sandbox(memory, keep_memory_filesystem=True)
    with kept:
        with open(app_root / "session.txt", "w") as f:
            f.write("kept")
    with kept:
        with open(app_root / "session.txt") as f:
            assert f.read() == "kept"
    with Sandbox(memory):  # another sandbox does not see them
        assert not os.path.exists(app_root / "session.txt")
    assert not (app_root / "session.txt").exists()


def test_concurrent_requests_do_not_see_each_other_and_the_host_keeps_the_disk(
        memory: Policy, app_root: Path, tmp_path: Path) -> None:
    before = snapshot(app_root)
    barrier = threading.Barrier(3, timeout=10)
    seen: dict[str, object] = {}
    host_file = tmp_path / "host.txt"

    def request(name: str) -> None:
        try:
            with Sandbox(memory):
                with open(app_root / "shared.txt", "w") as f:
                    f.write(name)
                with open(app_root / f"only-{name}.txt", "w") as f:
                    f.write(name)
                barrier.wait()  # both have written; the host writes now
                barrier.wait()
                with open(app_root / "shared.txt") as f:
                    seen[name] = (f.read(), sorted(os.listdir(app_root)))
        except BaseException as error:  # pragma: no cover - reported below
            seen[name] = error

    threads = [threading.Thread(target=request, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    barrier.wait()
    host_file.write_text("host")  # the host, while both requests are open
    barrier.wait()
    for thread in threads:
        thread.join(10)
    assert seen["a"] == ("a", ["data.txt", "only-a.txt", "pkg", "shared.txt", "static"])
    assert seen["b"] == ("b", ["data.txt", "only-b.txt", "pkg", "shared.txt", "static"])
    assert host_file.read_text() == "host"
    assert snapshot(app_root) == before


def test_threads_of_a_request_share_its_files(memory: Policy, app_root: Path) -> None:
    with Sandbox(memory):
        with open(app_root / "parent.txt", "w") as f:
            f.write("from the request")
        result: list[str] = []

        def worker() -> None:
            with open(app_root / "parent.txt") as f:
                result.append(f.read())
            with open(app_root / "child.txt", "w") as f:
                f.write("from the thread")

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert result == ["from the request"]
        with open(app_root / "child.txt") as f:
            assert f.read() == "from the thread"
    assert not (app_root / "child.txt").exists()


def test_host_code_inside_the_request_uses_the_real_disk(memory: Policy, app_root: Path,
                                                         tmp_path: Path) -> None:
    from gae_sandbox.context import unsandboxed

    real = tmp_path / "real.txt"
    with Sandbox(memory):
        with unsandboxed():
            real.write_text("host write")
    assert real.read_text() == "host write"


def test_hidden_and_outside_files_stay_refused(app_root: Path, outside: Path) -> None:
    (app_root / "app.yaml").write_text("runtime: python27\n")
    (app_root / "escape").symlink_to(outside / "secret.txt")
    policy = Policy.python27(app_root=app_root, deadline=None, filesystem="memory",
                             skip_files=(r"^app\.yaml$",))
    with Sandbox(policy):
        with pytest.raises(FileReadRefused) as hidden:
            open(app_root / "app.yaml")
        assert hidden.value.setting == "skip_files"
        assert "app.yaml" not in os.listdir(app_root)
        with pytest.raises(FileReadRefused) as beyond:
            open(outside / "secret.txt")
        assert beyond.value.setting == "readable_paths"
        with pytest.raises(OSError):  # the link's target is not in the memory filesystem
            open(app_root / "escape")
        with pytest.raises(FileNotFoundError):  # missing everywhere: just missing
            open(app_root / "nothing.txt")


def test_functions_that_bypass_the_routers_are_still_refused(memory: Policy,
                                                             app_root: Path) -> None:
    import _io
    import posix

    target = app_root / "direct.txt"
    with Sandbox(memory):
        with pytest.raises(FileWriteRefused):
            _io.FileIO(str(target), "w")
        with pytest.raises(FileWriteRefused):
            posix.mkdir(str(app_root / "direct"))
    assert not target.exists()
    assert not (app_root / "direct").exists()


@pytest.mark.parametrize("outer, inner", [("readonly", "memory"), ("memory", "readonly")])
def test_nesting_with_a_readonly_layer_stays_readonly(app_root: Path, outer: str,
                                                      inner: str) -> None:
    target = app_root / "nested.txt"
    with Sandbox(Policy.python27(app_root=app_root, deadline=None, filesystem=outer)):
        with Sandbox(Policy.python27(app_root=app_root, deadline=None, filesystem=inner)):
            with pytest.raises(FileWriteRefused) as info:
                open(target, "w")
    assert info.value.setting == "filesystem"
    assert not target.exists()


def test_readonly_refusal_names_the_memory_setting(policy: Policy, app_root: Path) -> None:
    with Sandbox(policy):
        with pytest.raises(SandboxViolation) as info:
            open(app_root / "x.txt", "w")
    assert "filesystem='memory'" in str(info.value)
    assert info.value.setting == "filesystem"
    assert not (app_root / "x.txt").exists()


def test_report_mode_records_no_violation_for_memory_writes(app_root: Path) -> None:
    policy = Policy.python27(app_root=app_root, deadline=None, filesystem="memory",
                             mode="report")
    with Sandbox(policy) as sandbox:
        with open(app_root / "report.txt", "w") as f:
            f.write("x")
    assert sandbox.violations == []
    assert not (app_root / "report.txt").exists()


def test_links_made_in_memory_do_not_reach_real_files(memory: Policy, app_root: Path,
                                                     outside: Path) -> None:
    before = snapshot(app_root)
    secret = outside / "secret.txt"
    with Sandbox(memory):
        os.symlink(secret, app_root / "to-secret")
        with pytest.raises(FileReadRefused):
            open(app_root / "to-secret")
        with pytest.raises(OSError):  # the real file is not in memory to be written through
            with open(app_root / "to-secret", "w") as f:
                f.write("through a link")
        os.link(app_root / "data.txt", app_root / "hard")
        with open(app_root / "hard", "w") as f:
            f.write("changed through a hard link")
        with open(app_root / "data.txt") as f:
            assert f.read() == "changed through a hard link"
        with pytest.raises(OSError):
            with open("/proc/self/mem", "wb") as f:
                f.write(b"x")
    assert secret.read_text() == "host secret\n"
    assert snapshot(app_root) == before


def test_the_request_cannot_reach_real_descriptors_through_memory_paths(
        memory: Policy, app_root: Path, tmp_path: Path) -> None:
    before = snapshot(app_root)
    with Sandbox(memory):
        folder = os.open(app_root, os.O_RDONLY)  # a descriptor of the in-memory folder
        try:
            fd = os.open("via-dir-fd.txt", os.O_CREAT | os.O_WRONLY, dir_fd=folder)
            os.write(fd, b"x")
            os.close(fd)
            assert "via-dir-fd.txt" in os.listdir(app_root)
        finally:
            os.close(folder)
    assert snapshot(app_root) == before


# --- what real apps do with files they never close, /dev/null, and shutil.rmtree -------------


@pytest.mark.parametrize("preset", ["memory", "python3"])
def test_a_file_written_and_never_closed_is_read_back(app_root: Path, preset: str) -> None:
    """``open(path, 'w').write(data)`` and ``json.dump(obj, open(path, 'w'))``: CPython closes
    such a file at once (reference counting); the in-memory filesystem keeps every open file
    in its descriptor table, so the data is flushed when anything opens a file."""
    import json

    policy = (Policy.python27(app_root=app_root, deadline=None, filesystem="memory")
              if preset == "memory" else Policy.python3(app_root=app_root))
    with Sandbox(policy):
        folder = tempfile.gettempdir()
        open(os.path.join(folder, "unclosed.txt"), "w").write("hello")  # noqa: SIM115
        json.dump({"a": 1}, open(os.path.join(folder, "unclosed.json"), "w"))  # noqa: SIM115
        with open(os.path.join(folder, "unclosed.txt")) as text:
            assert text.read() == "hello"
        with open(os.path.join(folder, "unclosed.json")) as data:
            assert json.load(data) == {"a": 1}


@pytest.mark.parametrize("preset", ["memory", "python3"])
def test_dev_null_takes_writes_where_writes_land_in_memory(app_root: Path,
                                                          preset: str) -> None:
    """Where writes succeed in memory, ``os.devnull`` is the real, empty device (a real
    descriptor: ``subprocess.DEVNULL`` hands it to a child process); the read-only preset
    refuses it, as the python27 runtime did."""
    policy = (Policy.python27(app_root=app_root, deadline=None, filesystem="memory")
              if preset == "memory" else Policy.python3(app_root=app_root))
    with Sandbox(policy):
        with open(os.devnull, "w") as sink:
            sink.write("discarded")
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            assert os.write(fd, b"discarded") == 9
        finally:
            os.close(fd)
        if policy.allow_processes:  # a real descriptor, which a child process can use
            child = subprocess.run([sys.executable, "-c", "print('to /dev/null')"],
                                   stdout=subprocess.DEVNULL, timeout=60)
            assert child.returncode == 0
    with Sandbox(Policy.python27(app_root=app_root, deadline=None)), \
            pytest.raises(FileWriteRefused):
        open(os.devnull, "w")  # noqa: SIM115


def test_rmtree_of_a_temporary_folder_in_the_python3_tmp(app_root: Path) -> None:
    """``shutil.rmtree`` removes entries by descriptor (``os.unlink(name, dir_fd=fd)``): the
    name is judged from that folder, inside ``/tmp``; one outside it is still refused."""
    with Sandbox(Policy.python3(app_root=app_root)):
        folder = tempfile.mkdtemp()
        with open(os.path.join(folder, "file"), "w") as file:
            file.write("x")
        os.mkdir(os.path.join(folder, "sub"))
        shutil.rmtree(folder)
        assert not os.path.exists(folder)
        outside = os.open(str(app_root), os.O_RDONLY)
        try:
            with pytest.raises(FileWriteRefused):
                os.unlink("data.txt", dir_fd=outside)
        finally:
            os.close(outside)
    assert (app_root / "data.txt").exists()


def test_python3_tmp_writes_into_a_readable_folder_under_tmp_stay_in_memory(
        app_root: Path, tmp_path: Path) -> None:
    """A ``readable_paths`` folder under /tmp (the pytest plugin's ``tmp_path``) is /tmp to
    the python3 preset: its files are read, writes there go to memory; the app's own folder
    stays read-only, and the refusal says so."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "given.txt").write_text("from the host")
    policy = Policy.python3(app_root=app_root, readable_paths=(str(shared),))
    with Sandbox(policy):
        assert (shared / "given.txt").read_text() == "from the host"
        (shared / "made.txt").write_text("in memory")
        assert (shared / "made.txt").read_text() == "in memory"
        with pytest.raises(FileWriteRefused, match="app's own files are read-only also"):
            (app_root / "made.txt").write_text("x")
    assert not (shared / "made.txt").exists()
    assert not (app_root / "made.txt").exists()


def test_python3_fcntl_locks_on_tmp_files_and_own_descriptors(app_root: Path,
                                                             tmp_path: Path) -> None:
    """``fcntl`` (``filelock``, Django's file cache): a lock on an in-memory /tmp file is
    granted (the request's alone), a real descriptor the request opened is the real call,
    a host descriptor is refused (the control: the host itself may lock it)."""
    import fcntl

    lock_name = f"/tmp/gae-sandbox-test-{os.getpid()}.lock"
    with open(tmp_path / "host.txt", "w") as host:
        fcntl.flock(host.fileno(), fcntl.LOCK_EX)  # control: allowed to the host
        fcntl.flock(host.fileno(), fcntl.LOCK_UN)
        with Sandbox(Policy.python3(app_root=app_root)):
            fd = os.open(lock_name, os.O_RDWR | os.O_CREAT)
            assert fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is None
            assert fcntl.fcntl(fd, fcntl.F_GETFL) == os.O_RDWR
            with open(lock_name, "a") as again:
                fcntl.lockf(again, fcntl.LOCK_EX)
            os.close(fd)
            read_end, write_end = os.pipe()
            assert fcntl.fcntl(read_end, fcntl.F_GETFL) & os.O_NONBLOCK == 0
            os.close(read_end)
            os.close(write_end)
            with pytest.raises(SystemCallRefused, match="fcntl.flock"):
                fcntl.flock(host.fileno(), fcntl.LOCK_EX)
    assert not os.path.exists(lock_name)


def test_python3_sqlite_in_tmp_read_only_elsewhere(app_root: Path, outside: Path) -> None:
    """SQLite opens files in C, by name: a database under /tmp is the request's own in
    memory (its connections share it; nothing on disk; gone with the request; a host file
    there is not read into it), one of the app's files opens read-only (the runtime's disk),
    one outside /tmp and the readable set is refused as a read, and URIs keep the
    ":memory:"-only rule."""
    sqlite3 = pytest.importorskip("sqlite3")
    elsewhere = Path(tempfile.mkdtemp(dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    if is_inside(str(elsewhere), TMP_FOLDERS):
        pytest.skip("no folder outside /tmp to hold the host's database")
    try:
        _sqlite_case(sqlite3, app_root, outside, elsewhere)
    finally:
        shutil.rmtree(elsewhere)


def _sqlite_case(sqlite3: Any, app_root: Path, outside: Path, elsewhere: Path) -> None:
    bundled = sqlite3.connect(app_root / "bundled.db")
    bundled.execute("create table t (x)")
    bundled.execute("insert into t values (1)")
    bundled.commit()
    bundled.close()
    host_db = sqlite3.connect(outside / "host.db")  # under /tmp, the host's
    host_db.execute("create table host_only (x)")
    host_db.commit()
    host_db.close()
    secret = elsewhere / "secret.db"
    sqlite3.connect(secret).close()  # control: the host opens it
    name = f"/tmp/gae-sandbox-test-{os.getpid()}.db"
    policy = Policy.python3(app_root=app_root)
    with Sandbox(policy):
        first = sqlite3.connect(name)
        first.execute("create table a (v)")
        first.execute("insert into a values ('kept')")
        first.commit()
        first.close()
        assert sqlite3.connect(name).execute("select v from a").fetchall() == [("kept",)]
        app_db = sqlite3.connect(str(app_root / "bundled.db"))
        assert app_db.execute("select x from t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            app_db.execute("insert into t values (2)")
        with pytest.raises(FileReadRefused):
            sqlite3.connect(str(secret))
        in_tmp = sqlite3.connect(str(outside / "host.db"))
        assert in_tmp.execute("select name from sqlite_master").fetchall() == []
        with pytest.raises(SystemCallRefused):
            sqlite3.connect(f"file:{secret}?mode=ro", uri=True)
    assert not os.path.exists(name)
    with Sandbox(policy):
        fresh = sqlite3.connect(name)
        assert fresh.execute("select name from sqlite_master").fetchall() == []
    check = sqlite3.connect(app_root / "bundled.db")
    assert check.execute("select x from t").fetchall() == [(1,)]
    check.close()


def test_python3_reads_the_ca_certificates_and_time_zones_by_path(app_root: Path) -> None:
    """The runtime's image has them and apps open them by path (a CA bundle when
    ``certifi`` is absent); the python27 preset still refuses them."""
    from gae_sandbox.policy import PYTHON3_SYSTEM_FOLDERS

    files = [os.path.join(folder, name) for folder in PYTHON3_SYSTEM_FOLDERS
             if os.path.isdir(folder) for name in sorted(os.listdir(folder))
             if os.path.isfile(os.path.join(folder, name))][:1]
    if not files:
        pytest.skip("this machine has none of those folders")
    with open(files[0], "rb") as file:
        expected = file.read()
    with Sandbox(Policy.python3(app_root=app_root)):
        with open(files[0], "rb") as file:
            assert file.read() == expected
    with Sandbox(Policy.python27(app_root=app_root)), pytest.raises(FileReadRefused):
        open(files[0], "rb")  # noqa: SIM115


@pytest.mark.parametrize("preset", ["memory", "python3"])
def test_disk_usage_of_the_in_memory_tmp(app_root: Path, outside: Path, preset: str) -> None:
    """``shutil.disk_usage("/tmp")`` (``os.statvfs``) answers from the in-memory filesystem
    (pyfakefs has no ``statvfs``: it was refused as a read of the real /tmp); a folder outside
    the readable ones stays refused, as reading it is."""
    policy = (Policy.python3(app_root=app_root) if preset == "python3" else
              Policy.python27(app_root=app_root, filesystem="memory"))
    with Sandbox(policy):
        usage = shutil.disk_usage("/tmp")
        with open("/tmp/disk-usage.txt", "wb") as file:
            file.write(b"x" * 10)
            by_descriptor = os.fstatvfs(file.fileno())
        with pytest.raises(FileNotFoundError):
            os.statvfs("/tmp/no-such-file")
        with pytest.raises(FileReadRefused):
            os.statvfs(outside)
    assert usage.total > 0 and usage.free > 0 and by_descriptor.f_bsize == 4096
    assert not os.path.exists("/tmp/disk-usage.txt")
    assert os.statvfs(outside).f_blocks > 0  # the control: the host's call reads the disk


def test_python3_sqlite_cannot_attach_or_vacuum_into_files(app_root: Path, outside: Path
                                                          ) -> None:
    """ATTACH and VACUUM INTO open database files by name in SQLite's C code: on a connection
    made in a sandbox they are refused (an in-memory database may still be attached), and
    a connection made past sqlite3.connect is refused."""
    import sqlite3

    secret = outside / "host.db"
    with sqlite3.connect(secret) as host:
        host.execute("CREATE TABLE t (v)")
        host.execute("INSERT INTO t VALUES ('host secret')")
    host.close()
    attached, vacuumed = outside / "attached.db", outside / "vacuumed.db"
    statements = [f"ATTACH DATABASE '{attached}' AS a", "CREATE TABLE a.t (v)",
                  f"VACUUM INTO '{vacuumed}'"]
    plain = sqlite3.connect(":memory:")  # the control: plain SQLite does all of it
    for sql in statements:
        plain.execute(sql)
    assert plain.execute(f"ATTACH DATABASE '{secret}' AS s").fetchall() == []
    assert plain.execute("SELECT v FROM s.t").fetchall() == [("host secret",)]
    plain.close()
    assert attached.exists() and vacuumed.exists()
    attached.unlink()
    vacuumed.unlink()
    with Sandbox(Policy.python3(app_root=app_root)):
        connection = sqlite3.connect("/tmp/app.db")
        for sql in (*statements, f"ATTACH DATABASE '{secret}' AS s"):
            with pytest.raises(sqlite3.DatabaseError, match="not authorized|denied|unknown"):
                connection.execute(sql)
        connection.execute("ATTACH DATABASE ':memory:' AS scratch")
        connection.execute("CREATE TABLE scratch.t (v)")
        connection.close()
        with pytest.raises(SystemCallRefused, match="made directly"):
            sqlite3.Connection(":memory:")
    assert not attached.exists() and not vacuumed.exists()


def test_in_memory_descriptors_never_name_a_file_of_the_host(app_root: Path,
                                                             tmp_path: Path) -> None:
    """An in-memory file's fileno() handed to C code or a child process (Pillow's encoders,
    subprocess stdout=) was a made-up number from 1024 up: where the host had that
    descriptor open, the bytes went into the host's file. It is now a placeholder
    descriptor the filesystem holds (O_PATH of /dev/null): the kernel refuses the write."""
    host_log = tmp_path / "host.log"
    control = tmp_path / "control.txt"
    with open(control, "w") as file:  # the control: a child writes through a real fileno()
        subprocess.run([sys.executable, "-c", "print('child output')"], stdout=file,
                       check=True, timeout=60)
    assert control.read_text() == "child output\n"
    with open(host_log, "w") as host_file, Sandbox(Policy.python3(app_root=app_root)):
        with open("/tmp/child-output.txt", "w") as file:
            assert file.fileno() != host_file.fileno()
            result = subprocess.run([sys.executable, "-c", "print('child output')"],
                                    stdout=file, stderr=subprocess.DEVNULL, timeout=60,
                                    check=False)
            assert result.returncode != 0  # its write failed (EBADF)
        with open("/tmp/child-output.txt") as file:
            assert file.read() == ""
    assert host_log.read_text() == ""
    assert not os.path.exists("/tmp/child-output.txt")


def test_a_symlink_from_outside_into_a_readable_folder(app_root: Path, outside: Path,
                                                       tmp_path: Path) -> None:
    """/etc/localtime is a link into the time zone folder: the read-only mode reads through
    such a link, and the memory filesystem, which maps only the readable folders, said the
    file was missing; it maps it when its target may be read, and refuses it otherwise."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "to_app").symlink_to(app_root / "data.txt")
    (links / "to_outside").symlink_to(outside / "secret.txt")
    policy = Policy.python27(app_root=app_root, filesystem="memory")
    for each in (Policy.python27(app_root=app_root), policy):  # read-only mode: the same
        with Sandbox(each):
            assert os.path.exists(links / "to_app")
            with open(links / "to_app") as file:
                assert file.read() == "app data\n"
            with pytest.raises(FileReadRefused):
                open(links / "to_outside")  # noqa: SIM115
    localtime = "/etc/localtime"  # the python3 preset's case (its /tmp is all in memory)
    if os.path.islink(localtime) and os.path.realpath(localtime).startswith(
            "/usr/share/zoneinfo/"):
        with open(localtime, "rb") as file:
            expected = file.read()
        with Sandbox(Policy.python3(app_root=app_root)), open(localtime, "rb") as file:
            assert file.read() == expected


def test_an_exit_handler_finds_the_python3_tmp_it_cleans(app_root: Path) -> None:
    """matplotlib makes a scratch folder in /tmp and registers shutil.rmtree of it at exit:
    the handler runs in the registering Sandbox's scope, whose /tmp lasts as long as the
    Sandbox (it failed with FileNotFoundError, printed at exit); nothing reaches the disk."""
    script = textwrap.dedent(f"""
        import atexit, os, shutil, tempfile
        from gae_sandbox import Policy, Sandbox
        sandbox = Sandbox(Policy.python3(app_root={str(app_root)!r}))
        with sandbox:
            folder = tempfile.mkdtemp(prefix="gae-sandbox-scratch-")
            atexit.register(shutil.rmtree, folder)
        print(folder, os.path.exists(folder))
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    folder, exists = result.stdout.split()
    assert result.returncode == 0 and exists == "False", result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert not os.path.exists(folder)


def test_python3_reads_the_images_programs_and_release_file(app_root: Path) -> None:
    """The python3 runtime's filesystem is readable but for /tmp: ``shutil.which`` finds a
    program (processes run there, so ``X_OK`` is the host's answer) and the OS release file
    is read; the rest of ``/etc`` stays the host's. The python27 preset finds neither."""
    import platform

    if not os.path.isfile("/usr/lib/os-release") or shutil.which("ls") is None:
        pytest.skip("this machine has no /usr/lib/os-release or ls")
    expected = platform.freedesktop_os_release()["ID"]
    with Sandbox(Policy.python3(app_root=app_root)):
        assert shutil.which("ls") is not None
        assert platform.freedesktop_os_release()["ID"] == expected
        with pytest.raises(FileReadRefused):
            open("/etc/shadow", "rb")  # noqa: SIM115
    with Sandbox(Policy.python27(app_root=app_root)):
        assert shutil.which("ls") is None
        with pytest.raises(FileReadRefused):
            open("/usr/lib/os-release", "rb")  # noqa: SIM115


def test_python3_sqlite_in_memory_uris_open_no_file(app_root: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``file::memory:?cache=shared`` and ``file:NAME?mode=memory&cache=shared`` (Django's
    test databases) open no file: allowed, shared between the request's connections and
    never with the host's database of the same name (renamed into the Sandbox's own). A URI
    with any other parameter, or percent-encoded, keeps the rule (a file URI is refused),
    and no file appears (control: the file URI, unsandboxed, makes its file)."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    # the host's own shared-cache database of the same name: the whole process's, not the
    # request's to read or change (control: another connection of the host's sees it)
    shared = "file:memdb1?mode=memory&cache=shared"
    host = sqlite3.connect(shared, uri=True)
    host.execute("CREATE TABLE secrets (v)")
    host.execute("INSERT INTO secrets VALUES ('host secret')")
    host.commit()
    assert sqlite3.connect(shared, uri=True).execute("SELECT v FROM secrets").fetchall()
    with Sandbox(Policy.python3(app_root=app_root)):
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            sqlite3.connect(shared, uri=True).execute("SELECT v FROM secrets")
        first = sqlite3.connect("file:memdb1?mode=memory&cache=shared", uri=True)
        first.execute("CREATE TABLE t (v)")
        first.execute("INSERT INTO t VALUES (1)")
        first.commit()
        second = sqlite3.connect("file:memdb1?mode=memory&cache=shared", uri=True)
        assert second.execute("SELECT v FROM t").fetchall() == [(1,)]
        sqlite3.connect("file::memory:?cache=shared", uri=True).execute("CREATE TABLE u (v)")
        for refused in ("file:made.db?mode=memory&vfs=unix", "file:made.db?mo%64e=memory",
                        "file:made.db?mode=memory&mode=rwc", "file:made.db"):
            with pytest.raises(SandboxViolation):
                sqlite3.connect(refused, uri=True)
        for connection in (first, second):
            connection.close()
    assert snapshot(tmp_path) == before
    assert host.execute("SELECT v FROM secrets").fetchall() == [("host secret",)]
    assert host.execute("SELECT name FROM sqlite_master").fetchall() == [("secrets",)]
    host.close()
    sqlite3.connect("file:made.db", uri=True).close()  # control: that URI makes a file
    assert (tmp_path / "made.db").exists()
