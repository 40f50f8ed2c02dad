"""The pytest plugin: ``--gae-sandbox[=enforce|report]``, the ``gae_sandbox`` marker and
fixture, the ini options, the violations summary (also through pytest-xdist).

Each test runs an inner pytest session with ``pytester``: in-process where the inner session
only enters sandboxes (the hooks are process-wide but idle outside a sandbox), in a subprocess
for pytest-xdist.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

WRITES_A_FILE = """
    def test_writes():
        with open("out.txt", "w") as handle:
            handle.write("x")
"""


# --- the option -----------------------------------------------------------------------------


def test_help_shows_the_options_and_the_marker(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "*App Engine python27 sandbox*",
        "*--gae-sandbox=[[]enforce|report[]]*",
        "*--gae-sandbox-app-yaml=PATH*",
    ])
    for name in ("gae_sandbox_app_root", "gae_sandbox_deadline", "gae_sandbox_allowed_hosts",
                 "gae_sandbox_readable_paths"):
        assert name in result.stdout.str()
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.gae_sandbox(**overrides): *"])


def test_enforce_fails_a_test_that_writes_and_nothing_is_written(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WRITES_A_FILE)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FileWriteRefused: gae_sandbox refused file write out.txt*"])
    assert not (pytester.path / "out.txt").exists()
    explicit = pytester.runpytest("--gae-sandbox=enforce")
    explicit.assert_outcomes(failed=1)


def test_without_the_option_nothing_is_sandboxed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WRITES_A_FILE)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert (pytester.path / "out.txt").read_text() == "x"
    assert "gae_sandbox" not in result.stdout.str()


def test_report_mode_passes_and_lists_the_violations_per_test(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_report="""
        def test_writes_three_times():
            for _ in range(3):
                open("out.txt", "w").close()

        def test_clean():
            assert True
    """)
    result = pytester.runpytest("--gae-sandbox=report")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "*= gae_sandbox violations =*",
        "test_report.py::test_writes_three_times",
        "    file_write: out.txt (open mode 'w') at test_report.py:3 (x3, reported)",
        "gae_sandbox: 1 violation (3 occurrences) in 1 of 2 sandboxed tests",
    ])
    assert "test_report.py::test_clean" not in result.stdout.str()
    assert (pytester.path / "out.txt").exists()


def test_enforce_lists_a_refusal_the_test_swallowed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_swallow="""
        def test_swallows():
            try:
                open("out.txt", "w")
            except OSError:
                pass
    """)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "test_swallow.py::test_swallows",
        "    file_write: out.txt (open mode 'w') at test_swallow.py:3 (x1, refused)",
    ])


def test_a_summary_without_violations(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_ok():\n    assert sum([1, 2]) == 3\n")
    result = pytester.runpytest("--gae-sandbox=report")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["gae_sandbox: no violations in 1 sandboxed test"])


def test_a_path_after_the_bare_option_is_a_clear_usage_error(
        pytester: pytest.Pytester) -> None:
    path = pytester.makepyfile(WRITES_A_FILE)
    result = pytester.runpytest("--gae-sandbox", path.name)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'test_a_path_after*' is not a mode; write --gae-sandbox,*"])
    last = pytester.runpytest(path.name, "--gae-sandbox")  # last: fine
    last.assert_outcomes(failed=1)


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
    """)
    pytester.runpytest("--gae-sandbox").assert_outcomes(passed=3)


def test_modules_imported_by_the_body_are_assert_rewritten_and_not_cached(
        pytester: pytest.Pytester) -> None:
    pytester.makeconftest('import pytest\npytest.register_assert_rewrite("helper")\n')
    pytester.makepyfile(helper="def check(value):\n    assert value == [1, 2]\n")
    pytester.makepyfile(test_rewrite="""
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
    pytester.makepyfile(test_marked="""
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
        "test_marked.py::test_marked",
        "    file_write: marked.txt (open mode 'w') at test_marked.py:5 (x1, reported)",
        "gae_sandbox: 1 violation (1 occurrence) in 1 of 1 sandboxed test",
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
    pytester.makepyfile(test_bad="""
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

        def test_fine():
            pass
    """)
    result = pytester.runpytest("--gae-sandbox")
    result.assert_outcomes(passed=1, errors=3)
    result.stdout.fnmatch_lines([
        "*test_bad.py::test_typo: bad @pytest.mark.gae_sandbox(allowed_host=*"
        "Policy has no field allowed_host;*",
        "*test_bad.py::test_bad_value: bad @pytest.mark.gae_sandbox(mode='loud'): "
        "Policy.mode must be one of 'enforce', 'report', got 'loud'*",
        "*test_bad.py::test_positional: @pytest.mark.gae_sandbox() takes Policy fields as "
        "keyword arguments*",
    ])
    assert "must not run" not in result.stdout.str()


# --- the fixture ----------------------------------------------------------------------------


def test_fixture_yields_the_sandbox_of_the_body(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        from gae_sandbox import Sandbox, current_sandbox

        def test_turns_it_on(gae_sandbox):
            assert isinstance(gae_sandbox, Sandbox)
            assert current_sandbox() is gae_sandbox
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

        def test_reads():
            assert open("shared/data.txt").read() == "shared data"
            with pytest.raises(FileReadRefused):
                open("outside.txt").read()
    """)
    pytester.runpytest("--gae-sandbox").assert_outcomes(passed=2)


def test_ini_deadline_none(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ngae_sandbox_deadline = none\n")
    pytester.makepyfile("def test_it(gae_sandbox):\n"
                        "    assert gae_sandbox.policy.deadline is None\n")
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize(("ini", "message"), [
    ("gae_sandbox_deadline = soon", "*gae_sandbox_deadline = 'soon': expected seconds*"),
    ("gae_sandbox_allowed_hosts = example.com",
     "*gae_sandbox: bad policy from the gae_sandbox_[*] ini options: "
     "Policy.allowed_hosts entry 'example.com' must be 'host:port'*"),
    ("gae_sandbox_app_root = missing", "*Policy.app_root: * is not an existing folder*"),
])
def test_bad_ini_options_are_usage_errors(pytester: pytest.Pytester, ini: str,
                                          message: str) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_it():\n    pass\n")
    result = pytester.runpytest("--gae-sandbox")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    pytester.runpytest().assert_outcomes(passed=1)  # unused without the option or marker


def test_missing_app_yaml_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_it():\n    pass\n")
    result = pytester.runpytest("--gae-sandbox", "--gae-sandbox-app-yaml=nowhere/app.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--gae-sandbox-app-yaml=nowhere/app.yaml: no such file*"])


def test_policy_from_app_yaml(pytester: pytest.Pytester) -> None:
    pytest.importorskip("gae_sandbox.appyaml", reason="app.yaml support not built yet")
    app = pytester.mkdir("app")
    (app / "app.yaml").write_text(
        "runtime: python27\napi_version: 1\nthreadsafe: yes\n"
        "handlers:\n- url: /.*\n  script: main.app\n"
    )
    pytester.makepyfile(f"""
        def test_it(gae_sandbox):
            assert gae_sandbox.policy.app_root == {str(app.resolve())!r}
            assert gae_sandbox.policy.mode == "report"
    """)
    result = pytester.runpytest("--gae-sandbox=report", "--gae-sandbox-app-yaml=app/app.yaml")
    result.assert_outcomes(passed=1)


# --- pytest-xdist ---------------------------------------------------------------------------


def test_xdist_controller_prints_the_summary(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        test_one="def test_one():\n    open('one.txt', 'w').close()\n",
        test_two="def test_two():\n    for _ in range(2):\n        open('two.txt', 'w').close()\n",
        test_three="def test_three():\n    assert True\n",
    )
    result = pytester.runpytest_subprocess("-n", "2", "--gae-sandbox=report")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines_random([
        "test_one.py::test_one",
        "    file_write: one.txt (open mode 'w') at test_one.py:2 (x1, reported)",
        "test_two.py::test_two",
        "    file_write: two.txt (open mode 'w') at test_two.py:3 (x2, reported)",
        "gae_sandbox: 2 violations (3 occurrences) in 2 of 3 sandboxed tests",
    ])
