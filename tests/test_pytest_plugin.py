"""The pytest plugin: ``--gae-sandbox`` (a flag) with ``--gae-sandbox-mode``, the deadline,
the thread wait, the report file and the policy file; the ``gae_sandbox`` marker and
fixture; the ini options; the summary grouped by kind and rule (also through pytest-xdist).

Each test runs an inner pytest session with ``pytester``: in-process where the inner session
only enters sandboxes (the hooks are process-wide but idle outside a sandbox), in a subprocess
for pytest-xdist.
"""

from __future__ import annotations

import json
import textwrap
import types

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _lean_inner_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner sessions without hypothesis's plugin: its end-of-session summary imports (and
    assert-rewrites) 70 modules again in every in-process session."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:hypothesispytest")

WRITES_A_FILE = """
    def test_writes():
        with open("out.txt", "w") as handle:
            handle.write("x")
"""
WRITE_RULE = ("file_write: the filesystem is read-only (filesystem='memory' lets writes succeed "
              "in a private in-memory filesystem)")


# --- the command line -----------------------------------------------------------------------


def test_help_shows_the_options_and_the_marker(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "*App Engine python27 sandbox*",
        "*--gae-sandbox *run every test body*",
        "*--gae-sandbox-mode=*enforce,report*",
        "*--gae-sandbox-deadline=SECONDS*",
        "*--gae-sandbox-thread-wait=SECONDS*",
        "*--gae-sandbox-report=FILE*",
        "*--gae-sandbox-policy=FILE*",
        "*--gae-sandbox-app-yaml=PATH*",
    ])
    assert "--gae-sandbox=report" not in result.stdout.str()  # a hidden spelling
    for name in ("gae_sandbox_app_root", "gae_sandbox_deadline", "gae_sandbox_allowed_hosts",
                 "gae_sandbox_readable_paths", "gae_sandbox_thread_wait"):
        assert name in result.stdout.str()
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.gae_sandbox(**overrides): *"])


@pytest.mark.parametrize("options", [
    ["--gae-sandbox"], ["--gae-sandbox=enforce"], ["--gae-sandbox-mode=enforce"],
    ["--gae-sandbox", "--gae-sandbox-mode", "enforce"],
])
def test_enforce_fails_a_test_that_writes_and_nothing_is_written(
        pytester: pytest.Pytester, options: list[str]) -> None:
    pytester.makepyfile(WRITES_A_FILE)
    result = pytester.runpytest(*options)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FileWriteRefused: gae_sandbox refused file write out.txt*"])
    assert not (pytester.path / "out.txt").exists()


def test_the_flag_then_a_path_as_a_user_types_it(pytester: pytest.Pytester) -> None:
    tests = pytester.mkpydir("tests")
    (tests / "test_inner_writes.py").write_text(WRITES_A_FILE.replace("\n    ", "\n"))
    (pytester.path / "test_inner_elsewhere.py").write_text("def test_not_collected():\n    pass\n")
    result = pytester.runpytest("--gae-sandbox", "tests/")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["gae_sandbox: enforce mode; policy python27 preset*"])
    report = pytester.runpytest("--gae-sandbox-mode", "report", "tests")
    report.assert_outcomes(passed=1)
    alias = pytester.runpytest("--gae-sandbox=report", "tests")
    alias.assert_outcomes(passed=1)


def test_an_unknown_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WRITES_A_FILE)
    for option in ("--gae-sandbox=loud", "--gae-sandbox-mode=loud"):
        result = pytester.runpytest(option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*gae-sandbox*loud*"])


def test_without_the_option_nothing_is_sandboxed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WRITES_A_FILE)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert (pytester.path / "out.txt").read_text() == "x"
    assert "gae_sandbox" not in result.stdout.str()


# --- the summary ----------------------------------------------------------------------------


def test_report_mode_passes_and_groups_the_violations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_report="""
        def test_writes_three_times():
            for _ in range(3):
                open("out.txt", "w").close()

        def test_writes_elsewhere():
            open("other.txt", "w").close()

        def test_clean():
            assert True
    """)
    result = pytester.runpytest("--gae-sandbox-mode=report")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "gae_sandbox: report mode; policy python27 preset*deadline 60 s, thread wait 0.5 s",
        "*= gae_sandbox violations =*",
        f"{WRITE_RULE} (2 violations, 4 occurrences in 2 tests, reported)",
        '    allow: @pytest.mark.gae_sandbox(filesystem="memory") (writes succeed in a '
        "private in-memory filesystem: for tests that write into tmp_path)*",
        "    test_inner_report.py:3 (x3): out.txt (open mode 'w')",
        "    test_inner_report.py:6 (x1): other.txt (open mode 'w')",
        "gae_sandbox: 2 violations (4 occurrences) in 2 of 3 sandboxed tests; -vv lists them "
        "per test",
    ])
    assert "test_inner_report.py::test_clean" not in result.stdout.str()
    assert (pytester.path / "out.txt").exists()


def test_the_summary_shows_the_top_locations_and_per_test_with_vv(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_many="\n".join(
        f"def test_{n}():\n    open('f{n}.txt', 'w').close()\n" for n in range(5)))
    result = pytester.runpytest("--gae-sandbox=report")
    result.stdout.fnmatch_lines([
        f"{WRITE_RULE} (5 violations, 5 occurrences in 5 tests, reported)",
        "    allow: *", "    test_inner_many.py:2 (x1): f0.txt (open mode 'w')",
        "    test_inner_many.py:5 (x1): *", "    test_inner_many.py:8 (x1): *",
        "    ... 2 more locations",
    ])
    verbose = pytester.runpytest("--gae-sandbox=report", "-vv")
    verbose.stdout.fnmatch_lines([
        "test_inner_many.py::test_0",
        "    file_write: f0.txt (open mode 'w') at test_inner_many.py:2 (x1, reported)",
    ])


def test_enforce_lists_a_refusal_the_test_swallowed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_swallow="""
        def test_swallows():
            try:
                open("out.txt", "w")
            except OSError:
                pass
    """)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        f"{WRITE_RULE} (1 violation, 1 occurrence in 1 test, refused)",
        "    test_inner_swallow.py:3 (x1): out.txt (open mode 'w')",
    ])


def test_targets_are_printed_escaped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_escape="""
        def test_odd_names():
            open("two\\nlines.txt", "w").close()
            open("tab\\there.txt", "w").close()
    """)
    result = pytester.runpytest("--gae-sandbox=report", "-vv")
    output = result.stdout.str()
    assert "two\\nlines.txt (open mode 'w')" in output
    assert "tab\\there.txt" in output
    assert "two\nlines" not in output


def test_a_summary_without_violations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_ok():\n    assert sum([1, 2]) == 3\n")
    result = pytester.runpytest("--gae-sandbox=report")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["gae_sandbox: no violations in 1 sandboxed test"])


def test_the_report_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_file="""
        def test_writes():
            open("out.txt", "w").close()
            open("out.txt", "w").close()

        def test_clean():
            pass
    """)
    (pytester.path / "out").mkdir()
    result = pytester.runpytest("--gae-sandbox-mode=report",
                                "--gae-sandbox-report=out/report.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*; all in out/report.json"])
    document = json.loads((pytester.path / "out" / "report.json").read_text())
    assert document["mode"] == "report"
    [group] = document["groups"]
    assert (group["kind"], group["setting"], group["occurrences"], group["tests"]) == (
        "file_write", "filesystem", 2, 1)
    assert group["locations"] == {"test_inner_file.py:2": 1, "test_inner_file.py:3": 1}
    assert document["tests"]["test_inner_file.py::test_clean"] == {"violations": [],
                                                             "threads": None}
    [first, second] = document["tests"]["test_inner_file.py::test_writes"]["violations"]
    assert first["target"] == "out.txt (open mode 'w')" and first["enforced"] is False


# --- threads the body started ---------------------------------------------------------------


def test_a_thread_still_running_is_waited_for_then_left_and_listed(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_threads="""
        import threading
        import pytest

        @pytest.fixture
        def release():
            event = threading.Event()
            yield event
            event.set()  # teardown, as host code: the thread ends

        def blocked(event):
            event.wait()

        @pytest.mark.gae_sandbox(thread_wait=0.05)
        def test_leaves_a_thread(release):
            threading.Thread(target=blocked, args=(release,), name="blocker").start()

        def test_joins_its_thread():
            thread = threading.Thread(target=print, name="quick")
            thread.start()
            thread.join()

        def test_after():
            pass
    """)
    result = pytester.runpytest("--gae-sandbox=report")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "thread wait: test_inner_threads.py::test_leaves_a_thread: waited * s for 'blocker' "
        "(test_inner_threads.blocked); still running after 0.05 s (left running; "
        "--gae-sandbox-thread-wait, marker thread_wait=)",
    ])
    assert "test_joins_its_thread" not in result.stdout.str()


def test_an_executor_the_body_dropped_lets_its_worker_go(pytester: pytest.Pytester) -> None:
    """asgiref's pattern: a ThreadPoolExecutor that is never shut down, kept alive by a
    reference cycle; its idle worker blocks in C until the executor is collected."""
    pytester.makepyfile(test_inner_executor="""
        from concurrent.futures import ThreadPoolExecutor

        def test_drops_an_executor():
            executor = ThreadPoolExecutor(max_workers=1)
            cycle = [executor]
            cycle.append(cycle)
            assert executor.submit(sum, [1, 2]).result() == 3
    """)
    result = pytester.runpytest("--gae-sandbox", "--gae-sandbox-thread-wait=60")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "thread wait: test_inner_executor.py::test_drops_an_executor: waited * s for "
        "'ThreadPoolExecutor-*' (concurrent.futures.thread._worker)",
    ])
    assert "still running" not in result.stdout.str()


def test_deadline_option_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        def test_option(gae_sandbox):
            assert gae_sandbox.policy.deadline == 7.5

        @pytest.mark.gae_sandbox(deadline=2)
        def test_marker(gae_sandbox):
            assert gae_sandbox.policy.deadline == 2
    """)
    result = pytester.runpytest("--gae-sandbox", "--gae-sandbox-deadline", "7.5")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["gae_sandbox: enforce mode;*deadline 7.5 s, thread wait 0.5 s"])
    bad = pytester.runpytest("--gae-sandbox-deadline=soon")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


# --- what keeps working inside the body -----------------------------------------------------


def test_setup_and_teardown_are_host_code(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os
        import pytest

        @pytest.fixture
        def written(tmp_path, monkeypatch):
            monkeypatch.setenv("FROM_FIXTURE", "1")
            path = tmp_path / "in.txt"
            path.write_text("prepared")
            yield path
            path.unlink()

        def test_body(written):
            assert written.read_text() == "prepared"
            assert os.environ["FROM_FIXTURE"] == "1"
    """)
    pytester.runpytest("--gae-sandbox").assert_outcomes(passed=1)


def test_tmp_path_capsys_and_capfd_work_inside(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import os
        import pytest
        from gae_sandbox import FileWriteRefused, current_sandbox

        def test_capsys(capsys):
            assert current_sandbox() is not None
            print("hello")
            assert capsys.readouterr().out == "hello\\n"

        def test_capfd(capfd):
            print("out")
            os.write(2, b"err\\n")
            assert capfd.readouterr() == ("out\\n", "err\\n")

        def test_tmp_path_readable_but_not_writable(tmp_path, tmpdir):
            assert list(tmp_path.iterdir()) == []
            assert tmpdir.listdir() == []
            with pytest.raises(FileWriteRefused):
                (tmp_path / "new.txt").write_text("x")

        @pytest.mark.gae_sandbox(filesystem="memory")
        def test_tmp_path_written_in_memory(tmp_path):
            (tmp_path / "new.txt").write_text("x")
            assert (tmp_path / "new.txt").read_text() == "x"
    """)
    pytester.runpytest("--gae-sandbox").assert_outcomes(passed=4)


def test_a_fixture_the_body_requests_is_set_up_as_host_code(pytester: pytest.Pytester) -> None:
    """``request.getfixturevalue("capfd")`` inside the body: set up outside the sandbox, so
    it is whole, and the tests after it run as usual."""
    pytester.makepyfile("""
        import os

        def test_requests_capfd(request):
            capfd = request.getfixturevalue("capfd")
            os.write(1, b"captured\\n")
            assert capfd.readouterr().out == "captured\\n"

        def test_after_one(capsys):
            print("one")
            assert capsys.readouterr().out == "one\\n"

        def test_after_two():
            pass
    """)
    for mode in ("enforce", "report"):
        pytester.runpytest(f"--gae-sandbox-mode={mode}").assert_outcomes(passed=3)


def test_pyfakefs_fs_fixture_works_in_the_sandbox(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pyfakefs")
    pytester.makepyfile("""
        import json
        import os

        def test_fake_files(fs):
            fs.create_file("/data/x.txt", contents="hi")
            with open("/data/x.txt") as handle:
                assert handle.read() == "hi"
            assert os.path.exists("/data/x.txt")
            assert json.dumps([1]) == "[1]"

        def test_fake_files_again(fs):
            fs.create_file("/data/y.txt", contents="ho")
            assert open("/data/y.txt").read() == "ho"

        def test_real_files_after():
            assert os.path.exists(__file__)
            assert not os.path.exists("/data/x.txt")
    """)
    for mode in ("enforce", "report"):
        result = pytester.runpytest("-p", "no:cacheprovider", f"--gae-sandbox-mode={mode}")
        result.assert_outcomes(passed=3)
        assert "RecursionError" not in result.stdout.str()


def test_modules_imported_by_the_body_are_assert_rewritten_and_not_cached(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest('import pytest\npytest.register_assert_rewrite("helper")\n')
    pytester.makepyfile(helper="def check(value):\n    assert value == [1, 2]\n")
    pytester.makepyfile(test_inner_rewrite="""
        def test_passes():
            import helper
            helper.check([1, 2])

        def test_fails():
            import helper
            helper.check([1, 3])
    """)
    result = pytester.runpytest("--gae-sandbox=report")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*At index 1 diff: 3 != 2*",
                                 "gae_sandbox: no violations in 2 sandboxed tests"])
    assert not list(pytester.path.rglob("helper*.pyc"))


# --- the marker -----------------------------------------------------------------------------


def test_marker_sandboxes_one_test_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_marked="""
        import pytest

        @pytest.mark.gae_sandbox(mode="report")
        def test_marked():
            open("marked.txt", "w").close()

        def test_unmarked():
            open("unmarked.txt", "w").close()
    """)
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        f"{WRITE_RULE} (1 violation, 1 occurrence in 1 test, reported)",
        "    test_inner_marked.py:5 (x1): marked.txt (open mode 'w')",
        "gae_sandbox: 1 violation (1 occurrence) in 1 of 1 sandboxed test*",
    ])
    assert "unmarked" not in result.stdout.str()


def test_marker_overrides_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import socket
        import pytest
        from gae_sandbox import NetworkRefused

        @pytest.fixture
        def port():
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            yield server.getsockname()[1]
            server.close()

        @pytest.mark.gae_sandbox(allowed_hosts=["127.0.0.1:*"])
        def test_allowed(port):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        def test_refused(port):
            with pytest.raises(NetworkRefused):
                socket.create_connection(("127.0.0.1", port), timeout=5)

        @pytest.mark.gae_sandbox(mode="report")
        def test_reported():
            open("reported.txt", "w").close()
    """)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=3)
    assert (pytester.path / "reported.txt").exists()


def test_closest_marker_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.gae_sandbox(mode="report", deadline=5)

        @pytest.mark.gae_sandbox(mode="enforce")
        def test_function_marker(gae_sandbox):
            assert (gae_sandbox.policy.mode, gae_sandbox.policy.deadline) == ("enforce", 5.0)

        def test_module_marker(gae_sandbox):
            assert gae_sandbox.policy.mode == "report"
    """)
    pytester.runpytest().assert_outcomes(passed=2)


def test_bad_marker_overrides_fail_that_test_naming_it_and_the_field(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner_bad="""
        import pytest

        @pytest.fixture
        def costly():
            raise AssertionError("fixtures of a test with a bad marker must not run")

        @pytest.mark.gae_sandbox(allowed_host=["127.0.0.1:*"])
        def test_typo(costly):
            pass

        @pytest.mark.gae_sandbox(mode="loud")
        def test_bad_value():
            pass

        @pytest.mark.gae_sandbox("report")
        def test_positional():
            pass

        @pytest.mark.gae_sandbox(thread_wait="long")
        def test_bad_wait():
            pass

        def test_fine():
            pass
    """)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=1, errors=4)
    result.stdout.fnmatch_lines([
        "*test_inner_bad.py::test_typo: bad @pytest.mark.gae_sandbox(allowed_host=*"
        "Policy has no field allowed_host;*",
        "*test_inner_bad.py::test_bad_value: bad @pytest.mark.gae_sandbox(mode='loud'): "
        "Policy.mode must be one of 'enforce', 'report', got 'loud'*",
        "*test_inner_bad.py::test_positional: @pytest.mark.gae_sandbox() takes Policy fields as "
        "keyword arguments*",
        "*test_inner_bad.py::test_bad_wait: bad @pytest.mark.gae_sandbox(thread_wait='long'): "
        "thread_wait must be seconds*",
    ])
    assert "must not run" not in result.stdout.str()


# --- the fixture ----------------------------------------------------------------------------


def test_fixture_yields_the_sandbox_of_the_body(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        from gae_sandbox import Sandbox, current_sandbox

        def test_turns_it_on(gae_sandbox):
            assert isinstance(gae_sandbox, Sandbox)
            assert current_sandbox() == gae_sandbox
            assert gae_sandbox.policy.mode == "enforce"
            try:
                open("refused.txt", "w")
            except OSError:
                pass
            [violation] = gae_sandbox.violations
            assert (violation.kind, violation.enforced) == ("file_write", True)

        @pytest.mark.gae_sandbox(mode="report")
        def test_with_the_marker(gae_sandbox):
            open("reported.txt", "w").close()
            assert [v.kind for v in gae_sandbox.violations] == ["file_write"]
            assert not gae_sandbox.violations[0].enforced

        def test_off_without_it():
            assert current_sandbox() is None
    """)
    pytester.runpytest().assert_outcomes(passed=3)
    assert not (pytester.path / "refused.txt").exists()
    assert (pytester.path / "reported.txt").exists()
    with_option = pytester.runpytest("--gae-sandbox=report", "-k", "with_the_marker")
    with_option.assert_outcomes(passed=1)


# --- configuration --------------------------------------------------------------------------


def test_ini_options(pytester: pytest.Pytester) -> None:
    shared = pytester.mkdir("shared")  # under the rootdir, but outside the app root
    (shared / "data.txt").write_text("shared data")
    app = pytester.mkdir("app")
    pytester.makeini("""
        [pytest]
        gae_sandbox_app_root = app
        gae_sandbox_deadline = 12.5
        gae_sandbox_allowed_hosts =
            127.0.0.1:*
            api.example.com:443
        gae_sandbox_readable_paths = shared
        gae_sandbox_thread_wait = 0.25
    """)
    (pytester.path / "outside.txt").write_text("not the app's")
    pytester.makepyfile(f"""
        import os
        import pytest
        from gae_sandbox import FileReadRefused

        def test_policy(gae_sandbox):
            policy = gae_sandbox.policy
            assert policy.app_root == {str(app.resolve())!r}
            assert policy.deadline == 12.5
            assert policy.allowed_hosts == ("127.0.0.1:*", "api.example.com:443")
            assert policy.readable_paths == ({str(shared.resolve())!r},)

        def test_reads():  # in the working directory pytest gave the test
            assert os.getcwd() == {str(pytester.path)!r}
            assert open("shared/data.txt").read() == "shared data"
            with pytest.raises(FileReadRefused):
                open("outside.txt").read()
    """)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*deadline 12.5 s, thread wait 0.25 s"])


def test_ini_deadline_none(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ngae_sandbox_deadline = none\n")
    pytester.makepyfile("def test_it(gae_sandbox):\n"
                        "    assert gae_sandbox.policy.deadline is None\n")
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize(("ini", "message"), [
    ("gae_sandbox_deadline = soon", "*gae_sandbox_deadline = 'soon': expected seconds*"),
    ("gae_sandbox_allowed_hosts = example.com",
     "*gae_sandbox: bad policy from the gae_sandbox_[*] ini options*: "
     "Policy.allowed_hosts entry 'example.com' must be 'host:port'*"),
    ("gae_sandbox_app_root = missing", "*Policy.app_root: * is not an existing folder*"),
    ("gae_sandbox_thread_wait = soon", "*gae_sandbox_thread_wait = 'soon': expected seconds*"),
])
def test_bad_ini_options_are_usage_errors(pytester: pytest.Pytester, ini: str,
                                          message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_it():\n    pass\n")
    result = pytester.runpytest("--gae-sandbox")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    if "thread_wait" not in ini:
        pytester.runpytest().assert_outcomes(passed=1)  # unused without the option or marker


def test_policy_from_pyproject_and_from_a_policy_file(pytester: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyprojecttoml("""
        [tool.gae-sandbox]
        allowed_hosts = ["127.0.0.1:*"]
        deadline = 20
    """)
    (pytester.path / "strict.toml").write_text('allowed_hosts = []\ndeadline = 3\n')
    pytester.makepyfile(test_inner_policy="""
        import os

        def test_it(gae_sandbox):
            expected = os.environ["EXPECTED"].split(",")
            assert list(gae_sandbox.policy.allowed_hosts) == [h for h in expected if h]
            assert gae_sandbox.policy.deadline == float(os.environ["DEADLINE"])
    """)
    monkeypatch.setenv("EXPECTED", "127.0.0.1:*")
    monkeypatch.setenv("DEADLINE", "20")
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["gae_sandbox: enforce mode; policy python27 preset + "
                                 "*pyproject.toml [[]tool.gae-sandbox[]]*"])
    monkeypatch.setenv("EXPECTED", "")
    monkeypatch.setenv("DEADLINE", "3")
    pytester.runpytest("--gae-sandbox", "--gae-sandbox-policy=strict.toml").assert_outcomes(
        passed=1)
    monkeypatch.setenv("DEADLINE", "4")
    pytester.runpytest("--gae-sandbox", "--gae-sandbox-policy=strict.toml",
                       "--gae-sandbox-deadline=4").assert_outcomes(passed=1)


def test_a_bad_policy_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "bad.toml").write_text('allowed_host = ["x:1"]\n')
    pytester.makepyfile("def test_it():\n    pass\n")
    for option, message in (("--gae-sandbox-policy=bad.toml", "*unknown key 'allowed_host'*"),
                            ("--gae-sandbox-policy=none.toml", "*no such file*")):
        result = pytester.runpytest("--gae-sandbox", option)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])


def test_missing_app_yaml_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_it():\n    pass\n")
    result = pytester.runpytest("--gae-sandbox", "--gae-sandbox-app-yaml=nowhere/app.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gae-sandbox-app-yaml=nowhere/app.yaml: no such file*"])


def test_policy_from_app_yaml(pytester: pytest.Pytester) -> None:
    app = pytester.mkdir("app")
    (app / "app.yaml").write_text(
        "runtime: python27\napi_version: 1\nthreadsafe: yes\n"
        "handlers:\n- url: /.*\n  script: main.app\n"
        "env_variables:\n  FROM_APP_YAML: 'yes'\n"
    )
    pytester.makepyfile(f"""
        import os

        def test_it(gae_sandbox):
            assert gae_sandbox.policy.app_root == {str(app.resolve())!r}
            assert gae_sandbox.policy.mode == "report"
            assert os.environ["FROM_APP_YAML"] == "yes"
    """)
    result = pytester.runpytest("--gae-sandbox=report", "--gae-sandbox-app-yaml=app/app.yaml")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["gae_sandbox: report mode; policy python27 preset + "
                                 "*app.yaml*"])


# --- pytest-xdist ---------------------------------------------------------------------------


def test_xdist_controller_prints_the_summary(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        test_inner_one="def test_one():\n    open('one.txt', 'w').close()\n",
        test_inner_two=("def test_two():\n    for _ in range(2):\n"
                        "        open('two.txt', 'w').close()\n"),
        test_inner_three="def test_three():\n    assert True\n",
    )
    result = pytester.runpytest_subprocess("-n", "2", "--gae-sandbox=report",
                                           "--gae-sandbox-report=report.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random([
        f"{WRITE_RULE} (2 violations, 3 occurrences in 2 tests, reported)",
        "    test_inner_two.py:3 (x2): two.txt (open mode 'w')",
        "    test_inner_one.py:2 (x1): one.txt (open mode 'w')",
        "gae_sandbox: 2 violations (3 occurrences) in 2 of 3 sandboxed tests*",
    ])
    document = json.loads((pytester.path / "report.json").read_text())
    assert sorted(document["tests"]) == ["test_inner_one.py::test_one",
                                         "test_inner_three.py::test_three",
                                         "test_inner_two.py::test_two"]


ADDS_A_FINALIZER = """
    def write():
        with open("fin.txt", "w") as handle:
            handle.write("x")

    def test_body(request):
        request.addfinalizer(write)
"""


@pytest.mark.parametrize("sandboxed", [False, True])
def test_a_finalizer_the_body_adds_runs_in_its_sandbox(pytester: pytest.Pytester,
                                                       sandboxed: bool) -> None:
    """Teardown is host code: a finalizer added by the sandboxed body runs in the test's
    sandbox (its write refused), not as host code; the control without the option writes."""
    pytester.makepyfile(ADDS_A_FINALIZER)
    result = pytester.runpytest(*(["--gae-sandbox"] if sandboxed else []))
    if sandboxed:
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*FileWriteRefused*fin.txt*"])
    else:
        result.assert_outcomes(passed=1)
    assert (pytester.path / "fin.txt").exists() is not sandboxed


#: What every test file below starts with: the body's ``write``, and a fixture definition
#: of the body's making whose function is ``write``.
_CALLBACK_PRELUDE = """
    def write():
        with open("escaped.txt", "w") as handle:
            handle.write("x")

    def made_fixture(request):
        from _pytest.fixtures import FixtureDef
        return FixtureDef(config=request.config, baseid="", argname="made", func=write,
                          scope="function", params=None, ids=None, _ispytest=True)
"""

#: A test body hands pytest something to call after the body: each runs the body's
#: ``write`` as host code in a plain run (the control), never in a sandboxed one.
HANDS_PYTEST_A_CALLBACK = {
    "forged_fixture_teardown": """
        import functools, pytest

        class Forged:  # what pytest's own teardown of a fixture is handed, of the app's making
            @property
            def node(self):
                write()
                raise RuntimeError("forged")

        @pytest.fixture
        def thing():
            return 1

        def test_body(request, thing):
            fixturedef = request._fixture_defs["thing"]
            request.addfinalizer(functools.partial(fixturedef.finish, request=Forged()))
    """,
    "config_cleanup": """
        def test_body(request):
            request.config.add_cleanup(write)
    """,
    "fixture_setup_called_by_the_body": """
        def test_body(request):
            made = made_fixture(request)
            request.config.hook.pytest_fixture_setup(fixturedef=made, request=request)
    """,
    "fixture_definition_the_body_added": """
        def test_body(request):
            made = made_fixture(request)
            request._arg2fixturedefs["made"] = [made]
            request.getfixturevalue("made")
    """,
    "fixture_function_the_body_changed": """
        import pytest

        @pytest.fixture
        def thing():
            return 1

        def test_body(request):
            definitions = request._fixturemanager.getfixturedefs("thing", request.node)
            definitions[-1].func = write
            request.getfixturevalue("thing")
    """,
    "request_table_replaced": """
        class Table(dict):  # read by pytest's own code while it sets a fixture up
            def get(self, *args):
                write()
                return dict.get(self, *args)

        def test_body(request):
            request._fixture_defs = Table(request._fixture_defs)
            request.getfixturevalue("tmp_path")
    """,
    "unittest_class_cleanup": """
        import unittest

        class Case(unittest.TestCase):
            def test_body(self):
                self.addClassCleanup(write)
    """,
    "plugin_registered": """
        class Plugin:
            def pytest_runtest_teardown(self, item):
                write()

        def test_body(request):
            request.config.pluginmanager.register(Plugin(), "the-apps")
    """,
}


@pytest.mark.parametrize("sandboxed", [False, True], ids=["plain", "sandboxed"])
@pytest.mark.parametrize("case", sorted(HANDS_PYTEST_A_CALLBACK))
def test_what_the_body_hands_pytest_never_runs_as_host_code(
        pytester: pytest.Pytester, case: str, sandboxed: bool) -> None:
    """A forged ``partial(fixturedef.finish, request=...)`` finalizer (the shape of pytest's
    own teardown of a fixture), a config cleanup, a unittest class cleanup, a plugin, and
    fixtures the body set up itself, defined itself or changed: in a plain run each writes
    the file; from a sandboxed body the callbacks run in its sandbox (the write refused),
    the plugin and the host setup of a fixture the body made or changed (or asked of a
    request whose attributes it replaced) are refused, and a setup the body calls itself
    stays in its sandbox."""
    pytester.makepyfile(textwrap.dedent(_CALLBACK_PRELUDE)
                        + textwrap.dedent(HANDS_PYTEST_A_CALLBACK[case]))
    result = pytester.runpytest(*(["--gae-sandbox"] if sandboxed else []))
    assert (pytester.path / "escaped.txt").exists() is not sandboxed, result.stdout.str()
    if sandboxed and case == "plugin_registered":
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*SystemCallRefused*register*conftest.py*"])


GETS_A_FIXTURE_ITSELF = """
    import os

    def test_body(request):
        path = request.getfixturevalue("tmp_path")  # set up as host code: mkdir works
        assert path.name.startswith("test_body")
        request.getfixturevalue("monkeypatch").setattr(os, "sep", os.sep)
"""


def test_a_fixture_the_body_requests_is_set_up_and_torn_down_as_host_code(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GETS_A_FIXTURE_ITSELF)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=1)


def test_the_summary_reads_only_exact_strings_of_user_properties() -> None:
    """A body appends its own object to ``user_properties``: the plugin's summary (host
    code) reads the list without running any of its methods. Control: comparing it with the
    property name, as a plain reader does, runs the app's ``__eq__``."""
    from gae_sandbox.pytest_plugin import PROPERTY, _Summary

    ran: list[str] = []

    class Name:
        def __eq__(self, other: object) -> bool:
            ran.append("app code")
            return False

        __hash__ = object.__hash__

    class Text(str):
        def __eq__(self, other: object) -> bool:
            ran.append("app code")
            return False

        __hash__ = str.__hash__

    assert not (Name() == PROPERTY) and ran == ["app code"]  # control
    del ran[:]
    config = types.SimpleNamespace(stash={})
    from gae_sandbox import pytest_plugin

    config.stash[pytest_plugin._RESULTS] = pytest_plugin._Results()
    report = types.SimpleNamespace(when="call", nodeid="t", user_properties=[
        (Name(), "[]"), (Text(PROPERTY), "[]"), (PROPERTY, Text("[]")), [PROPERTY, "[]"],
        (PROPERTY, '[{"kind": "file_read"}]')])
    _Summary(config).pytest_runtest_logreport(report)  # type: ignore[arg-type]
    assert ran == []
    assert config.stash[pytest_plugin._RESULTS].by_test == {"t": [{"kind": "file_read"}]}
