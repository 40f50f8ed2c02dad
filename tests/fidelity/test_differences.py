"""The issue's behaviours beyond the SDK's own tests, and README's "Differences from the
python27 runtime" table: each ``test_difference_*`` checks one row says what happens.

The per-request working directory, locale and ids are checked where they could leak: a host
thread reads the process's values while a request changes its own, and the autouse fixture
(``conftest.py``) checks the process after every test.
"""

from __future__ import annotations

import _locale
import errno
import glob
import locale
import mimetypes
import os
import pathlib
import platform
import posix
import sys
import tempfile
import threading
from collections.abc import Iterator
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
    SystemCallRefused,
    TempfileRefused,
)

DATA = "app data\n"


@pytest.fixture
def app(app_root: Path) -> Path:
    (app_root / "templates").mkdir()
    (app_root / "templates" / "index.html").write_text("<p>hi</p>\n")
    (app_root / "templates" / "parts").mkdir()
    (app_root / "templates" / "parts" / "nav.html").write_text("<nav/>\n")
    return app_root


# --- the working directory ----------------------------------------------------------------------


def test_working_directory_is_the_app_root(policy: Policy, app: Path) -> None:
    """Relative paths and os.getcwd() are the app's folder in every API, while the process
    stays where the host is (a folder where none of these paths exist)."""
    assert posix.getcwd() != str(app) and not Path("templates").exists()
    with Sandbox(policy):
        cwd = (os.getcwd(), os.getcwdb(), str(pathlib.Path.cwd()), os.path.abspath("x"),
               str(pathlib.Path("x").absolute()))
        with open("templates/index.html") as f:
            opened = (f.read(), f.name)
        with open(b"templates/index.html", "rb", buffering=0) as f:
            raw = (f.read(), f.name)
        metadata = (os.stat("data.txt").st_size, os.lstat("templates").st_mode,
                    os.path.isfile("data.txt"), os.path.exists("templates/parts"),
                    os.path.getsize("data.txt"), os.access("data.txt", os.R_OK))
        fd = os.open("data.txt", os.O_RDONLY)
        os.close(fd)
        listings = (sorted(os.listdir()), sorted(os.listdir(".")), os.listdir("templates/parts"),
                    sorted(e.path for e in os.scandir("templates")),
                    sorted(e.path for e in os.scandir()))
        paths = (pathlib.Path("templates/index.html").read_text(),
                 sorted(str(p) for p in pathlib.Path("templates").iterdir()),
                 sorted(str(p) for p in pathlib.Path("templates").glob("*.html")),
                 str(pathlib.Path("templates/parts/../index.html").resolve()),
                 os.path.realpath("templates"), sorted(glob.glob("templates/*")),
                 [(top, sorted(files)) for top, _, files in os.walk("templates", topdown=False)])
    assert cwd == (str(app), os.fsencode(str(app)), str(app), f"{app}/x", f"{app}/x")
    assert opened == ("<p>hi</p>\n", "templates/index.html")
    assert raw == (b"<p>hi</p>\n", b"templates/index.html")
    assert metadata[0] == len(DATA) and metadata[2:] == (True, True, len(DATA), True)
    assert listings == (["data.txt", "pkg", "static", "templates"],
                        ["data.txt", "pkg", "static", "templates"], ["nav.html"],
                        ["templates/index.html", "templates/parts"],
                        ["./data.txt", "./pkg", "./static", "./templates"])
    assert paths == ("<p>hi</p>\n", ["templates/index.html", "templates/parts"],
                     ["templates/index.html"], f"{app}/templates/index.html",
                     f"{app}/templates", ["templates/index.html", "templates/parts"],
                     [("templates/parts", ["nav.html"]), ("templates", ["index.html"])])


def test_relative_errors_name_the_path_as_given(policy: Policy, app: Path) -> None:
    with Sandbox(policy):
        for call in (lambda: open("missing.txt"), lambda: os.stat("missing.txt"),
                     lambda: os.listdir("missing.txt"), lambda: os.open("missing.txt", 0)):
            with pytest.raises(FileNotFoundError) as caught:
                call()
            assert caught.value.filename == "missing.txt"
        with pytest.raises(FileReadRefused) as refused:
            open("../app2/secret.txt")
        with pytest.raises(FileWriteRefused) as write:
            open("new.txt", "w")
    assert refused.value.filename == "../app2/secret.txt"
    assert write.value.filename == "new.txt"
    assert not (app / "new.txt").exists()


def test_chdir_moves_the_request_only(policy: Policy, app: Path) -> None:
    """os.chdir inside the app root moves the request's working directory (and its threads'),
    never the process's: a host thread reading it meanwhile sees its own."""
    host_cwd = posix.getcwd()
    seen_by_host: list[str] = []
    moved = threading.Event()
    checked = threading.Event()

    def host() -> None:
        moved.wait(5)
        seen_by_host.append(os.getcwd())
        checked.set()

    watcher = threading.Thread(target=host)
    watcher.start()
    with Sandbox(policy):
        os.chdir("templates")
        moved.set()
        checked.wait(5)
        in_thread: list[str] = []
        thread = threading.Thread(target=lambda: in_thread.append(open("index.html").read()))
        thread.start()
        thread.join(5)
        inside = (os.getcwd(), pathlib.Path.cwd().name, os.listdir("parts"))
        os.chdir("..")
        back = os.getcwd()
        os.chdir(app / "pkg")
        absolute = os.getcwd()
    watcher.join(5)
    assert inside == (f"{app}/templates", "templates", ["nav.html"])
    assert in_thread == ["<p>hi</p>\n"]
    assert (back, absolute) == (str(app), f"{app}/pkg")
    assert seen_by_host == [host_cwd] and posix.getcwd() == host_cwd
    with Sandbox(policy):
        assert os.getcwd() == str(app)  # the next request starts at the app root again


def test_chdir_refusals(policy: Policy, app: Path, outside: Path) -> None:
    with Sandbox(policy):
        with pytest.raises(FileReadRefused) as caught:
            os.chdir(outside)
        with pytest.raises(FileNotFoundError):
            os.chdir("missing")
        with pytest.raises(NotADirectoryError):
            os.chdir("data.txt")
        fd = os.open(".", os.O_RDONLY)
        try:
            with pytest.raises(SystemCallRefused):
                os.fchdir(fd)
            with pytest.raises(SystemCallRefused):
                os.chdir(fd)
        finally:
            os.close(fd)
        after = os.getcwd()
    assert caught.value.setting == "readable_paths" and after == str(app)


def test_working_directory_host_keeps_the_process_one(policy: Policy, app: Path,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Sandbox(policy.replace(working_directory="host")):
        before = os.getcwd()
        text = Path("app/templates/index.html").read_text()
        os.chdir("app/templates")  # still the request's own
        moved = (os.getcwd(), open("index.html").read())
    assert before == str(tmp_path) and text == "<p>hi</p>\n"
    assert moved == (f"{app}/templates", "<p>hi</p>\n") and os.getcwd() == str(tmp_path)


def test_working_directory_in_memory_mode(policy: Policy, app: Path) -> None:
    """filesystem="memory": relative reads and writes go to the request's in-memory view of
    the app folder; chdir into a folder made in memory works; nothing reaches the disk."""
    before = tree(app)
    with Sandbox(policy.replace(filesystem="memory")):
        read = open("templates/index.html").read()
        os.mkdir("cache")
        with open("cache/entry.txt", "w") as f:
            f.write("cached")
        os.chdir("cache")
        inside = (os.getcwd(), os.listdir(), open("entry.txt").read(),
                  sorted(os.listdir("..")))
    assert read == "<p>hi</p>\n"
    assert inside == (f"{app}/cache", ["entry.txt"], "cached",
                      ["cache", "data.txt", "pkg", "static", "templates"])
    assert tree(app) == before


def test_working_directory_under_the_python3_preset(app: Path) -> None:
    """filesystem="tmp": the app folder stays read-only; after os.chdir("/tmp") relative
    writes go to the request's in-memory /tmp."""
    name = f"gae-sandbox-fidelity-{os.getpid()}.txt"
    before = tree(app)
    with Sandbox(Policy.python3(app_root=app, deadline=None)):
        with pytest.raises(FileWriteRefused):
            open(name, "w")
        os.chdir(tempfile.gettempdir())
        with open(name, "w") as f:
            f.write("in memory")
        inside = (os.getcwd(), open(name).read())
    assert inside == (os.path.realpath(tempfile.gettempdir()), "in memory")
    assert not (Path(tempfile.gettempdir()) / name).exists() and tree(app) == before


def test_nested_sandbox_has_its_own_working_directory(policy: Policy, app: Path,
                                                      outside: Path) -> None:
    inner = Policy.python27(app_root=outside, deadline=None)
    with Sandbox(policy.replace(readable_paths=(str(outside),))):
        os.chdir("templates")
        with Sandbox(inner):
            nested = os.getcwd()
        after = os.getcwd()
    assert (nested, after) == (str(outside), f"{app}/templates")


def test_report_mode_emulates_chdir_too(policy: Policy, app: Path, outside: Path) -> None:
    """Report mode lets a chdir outside the readable folders through, as the request's own,
    and records the read; the process does not move (autouse fixture)."""
    with Sandbox(policy.replace(mode="report")) as box:
        os.chdir(outside)
        moved = (os.getcwd(), open("secret.txt").read())
    assert moved == (str(outside), "host secret\n")
    assert {v.kind for v in box.violations} == {"file_read"}


# --- what a request changes, a host thread never sees ------------------------------------------


def test_host_thread_keeps_its_locale_cwd_and_ids_while_a_request_changes_them(
        policy: Policy, app: Path) -> None:
    names = ("getpid", "getuid", "getgid")
    host_before = (posix.getcwd(), _locale.setlocale(_locale.LC_ALL),
                   tuple(getattr(os, n)() for n in names))
    observed: list[tuple[Any, ...]] = []
    stop = threading.Event()

    def host() -> None:
        while not stop.is_set():
            observed.append((os.getcwd(), locale.setlocale(locale.LC_ALL),
                             tuple(getattr(os, n)() for n in names)))

    watcher = threading.Thread(target=host)
    watcher.start()
    try:
        with Sandbox(policy):
            for _ in range(50):
                os.chdir("templates")
                locale.setlocale(locale.LC_ALL, "")
                with pytest.raises(LocaleRefused):
                    locale.setlocale(locale.LC_ALL, "C.UTF-8")
                with pytest.raises(FunctionNotImplementedRefused):
                    os.setuid(65534)
                inside = (os.getcwd(), tuple(getattr(os, n)() for n in names))
                os.chdir("..")
    finally:
        stop.set()
        watcher.join(5)
    assert inside == (f"{app}/templates", (-1, -1, -1))
    assert observed and set(observed) == {host_before}


def test_report_mode_records_stubs_and_locale_without_carrying_them_out(
        policy: Policy) -> None:
    before = (os.getuid(), _locale.setlocale(_locale.LC_ALL))
    with Sandbox(policy.replace(mode="report")) as box:
        results = (os.setuid(65534), os.setgroups([]), os.nice(0),
                   locale.setlocale(locale.LC_ALL, "C.UTF-8"))
    assert results[:2] == (None, None) and results[3] == "C"
    assert (os.getuid(), _locale.setlocale(_locale.LC_ALL)) == before
    assert sorted(v.target for v in box.violations) == [
        "locale.setlocale(LC_ALL, 'C.UTF-8')", "os.nice()", "os.setgroups()", "os.setuid()"]


# --- mimetypes, platform: process-wide caches filled inside a request ---------------------------


@pytest.fixture
def fresh_mimetypes() -> Iterator[None]:
    saved = (mimetypes.inited, mimetypes._db, dict(mimetypes.types_map))
    mimetypes.inited, mimetypes._db = False, None
    try:
        yield
    finally:
        mimetypes.inited, mimetypes._db = saved[0], saved[1]
        mimetypes.types_map.clear()
        mimetypes.types_map.update(saved[2])


def test_mimetypes_first_initialised_in_a_request_has_the_system_table(
        policy: Policy, fresh_mimetypes: None) -> None:
    """The process-wide table mimetypes builds on first use: built inside a request it reads
    the system files too, so the host is not left with a smaller one."""
    if not any(os.path.isfile(f) for f in mimetypes.knownfiles):
        pytest.skip("no mimetypes.knownfiles entry exists on this machine")
    with Sandbox(policy):
        inside = dict(mimetypes.types_map) if mimetypes.init() is None else None
    host = mimetypes.MimeTypes(filenames=[f for f in mimetypes.knownfiles
                                          if os.path.isfile(f)]).types_map[True]
    assert inside is not None and set(host) <= set(inside)


def test_platform_uname_cache_stays_the_hosts(policy: Policy) -> None:
    cache = platform._uname_cache
    platform._uname_cache = None
    try:
        with Sandbox(policy):
            inside = platform.uname()
            node = platform.node()
        host = platform.uname()
    finally:
        platform._uname_cache = cache
    assert (inside.node, node) == ("localhost", "localhost")
    assert host.node == os.uname().nodename


# --- README: Differences from the python27 runtime ------------------------------------------------


def test_difference_working_directory(policy: Policy, app: Path) -> None:
    """Runtime: the process ran in the app folder, os.chdir was a stub (ENOSYS). Here: per
    request, the app folder by default, and os.chdir moves the request's own."""
    with Sandbox(policy):
        os.chdir("templates")
        cwd = os.getcwd()
    assert cwd == f"{app}/templates" and posix.getcwd() != cwd


def test_difference_working_directory_limits(policy: Policy, app: Path) -> None:
    """``io.FileIO`` and ``posix`` functions take relative paths from the process's working
    directory (and are judged there), as README says."""
    import _io

    with Sandbox(policy):
        assert open("data.txt").read() == DATA
        with pytest.raises(OSError):
            _io.FileIO("data.txt")  # the host's folder has no data.txt (or it is refused)
        with pytest.raises(OSError):
            posix.stat("templates")


def test_difference_locale_is_never_set(policy: Policy) -> None:
    """Runtime: '', None, 'C', 'POSIX' set C in its own process. Here: they answer 'C' and
    set nothing; C-level formatting keeps the process's locale."""
    process = _locale.setlocale(_locale.LC_ALL)
    with Sandbox(policy):
        answer = locale.setlocale(locale.LC_ALL, "")
        localeconv = locale.localeconv()
    assert answer == "C" and _locale.setlocale(_locale.LC_ALL) == process
    assert localeconv == locale.localeconv()


def test_difference_time_zone_is_never_set(policy: Policy) -> None:
    """Runtime: ``os.environ['TZ'] = ...; time.tzset()`` changed the app's own process's
    zone. Here the request's ``os.environ`` is its own and ``tzset`` reads the process's: the
    zone (which the host's threads read too) stays the process's."""
    import time

    before = (time.tzname, time.timezone, os.environ.get("TZ"))
    with Sandbox(policy):
        os.environ["TZ"] = "Asia/Tokyo"
        time.tzset()
        inside = (time.tzname, time.timezone)
    assert inside == before[:2]
    assert (time.tzname, time.timezone, os.environ.get("TZ")) == before


def test_difference_uname(policy: Policy) -> None:
    """Runtime: ('Linux', '', '', '', ''). Here: no empty field, the real machine."""
    with Sandbox(policy):
        name = os.uname()
        system_platform = sys.platform
    assert tuple(name) == ("Linux", "localhost", "4.4.0", "#1 SMP", os.uname().machine)
    assert system_platform == sys.platform


def test_difference_ids_where_kill_goes_through(policy: Policy) -> None:
    """Where a kill is let through (processes allowed, or report mode), -1 would mean every
    process: the ids are the real ones there."""
    with Sandbox(policy.replace(allow_processes=True)):
        allowed = (os.getpid(), os.getuid())
    with Sandbox(policy.replace(mode="report")):
        reported = (os.getpid(), os.getuid())
    with Sandbox(policy.replace(mode="report")), Sandbox(policy):
        nested = (os.getpid(), os.getuid())  # the enforcing layer refuses the kill
    with Sandbox(policy):
        faked = (os.getpid(), os.getuid())
    real = (os.getpid(), os.getuid())
    assert allowed == reported == real and nested == faked == (-1, -1)


def test_difference_other_os_functions_work(policy: Policy) -> None:
    """Runtime: every os function off its list was an ENOSYS stub. Here: those that only
    read work (those that change the process or the files are refused or stubbed)."""
    with Sandbox(policy):
        answers = (os.cpu_count(), os.getloadavg(), os.urandom(4), os.times().elapsed)
    assert answers[0] == os.cpu_count() and len(answers[1]) == 3 and len(answers[2]) == 4


def test_difference_read_refusal_is_eacces(policy: Policy, outside: Path) -> None:
    """Runtime: os.open of an unreadable file said ENOENT (the file looked missing). Here:
    PermissionError (EACCES) everywhere, naming the file."""
    secret = str(outside / "secret.txt")
    for call in (lambda: os.open(secret, os.O_RDONLY), lambda: open(secret),
                 lambda: os.stat(secret), lambda: os.listdir(outside)):
        with Sandbox(policy), pytest.raises(PermissionError) as caught:
            call()
        assert caught.value.errno == errno.EACCES
        assert caught.value.filename in (secret, str(outside))


def test_difference_whole_path_components(policy: Policy, app_root: Path,
                                          outside: Path) -> None:
    """Runtime: a string-prefix test (``/app2`` passed for ``/app``), symlinks not resolved.
    Here: whole components, symlinks resolved."""
    (app_root / "link").symlink_to(outside / "secret.txt")
    with Sandbox(policy):
        for path in (outside / "secret.txt", app_root / "link"):
            with pytest.raises(FileReadRefused):
                open(path)


def test_difference_gettempdir(policy: Policy) -> None:
    """Runtime: tempfile.gettempdir did not exist (AttributeError). Here: TempfileRefused
    (NotImplementedError), like its other tempfile functions; memory mode answers."""
    with Sandbox(policy), pytest.raises(TempfileRefused) as caught:
        tempfile.gettempdir()
    assert isinstance(caught.value, NotImplementedError)
    assert caught.value.setting == "filesystem"
    with Sandbox(policy.replace(filesystem="memory")):
        inside = (tempfile.gettempdir(), os.path.isdir(tempfile.gettempdir()))
    assert inside == (tempfile.gettempdir(), True)


def test_difference_writable_temp_folder(policy: Policy) -> None:
    """The SDK's development server (1.9.86+) let apps write into a temporary folder. Here:
    read-only refuses it; filesystem="memory" lets it succeed in memory."""
    name = Path(tempfile.gettempdir()) / f"gae-sandbox-difference-{os.getpid()}"
    with Sandbox(policy), pytest.raises(FileWriteRefused):
        name.write_text("x")
    with Sandbox(policy.replace(filesystem="memory")):
        name.write_text("x")
    assert not name.exists()
