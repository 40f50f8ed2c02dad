"""``gae-sandbox check``: the static portability scan.

Sources under test carry ``# expect: KIND TARGET`` comments on the lines that must be
reported, so each test asserts the exact set of (file, line, kind, target) the scan returns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from gae_sandbox.checker import Finding, libraries_needed, libraries_yaml, scan, scan_app
from gae_sandbox.cli import main as cli_main

Key = tuple[str, int, str, str]


def write(root: Path, rel: str, source: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the first line of ``path`` containing ``needle``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def expected(root: Path, *rels: str) -> set[Key]:
    """The findings the ``# expect:`` comments of the given files announce."""
    keys: set[Key] = set()
    for rel in rels:
        for number, line in enumerate((root / rel).read_text().splitlines(), 1):
            _, marker, wanted = line.partition("# expect: ")
            for item in filter(None, (w.strip() for w in wanted.split(";") if marker)):
                kind, target = item.split(" ", 1)
                keys.add((rel, number, kind, target))
    return keys


def keys(findings: list[Finding]) -> set[Key]:
    return {(f.file, f.line, f.kind, f.target) for f in findings}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli_main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def compile_shared_library(source: str, target: Path) -> Path:
    """Build a real shared library with gcc (skip the test without it)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build a real shared library")
    c_file = target.parent / "_build_src.c"
    target.parent.mkdir(parents=True, exist_ok=True)
    c_file.write_text(source)
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(target), str(c_file)], check=True,
                   capture_output=True, timeout=60)
    c_file.unlink()
    assert target.read_bytes()[:4] == b"\x7fELF"
    return target


APP_YAML = ("runtime: python27\napi_version: 1\nthreadsafe: true\n"
            "handlers:\n- url: /.*\n  script: main.application\n")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    root.mkdir()
    (root / "app.yaml").write_text(APP_YAML)
    return root


# --- what is found --------------------------------------------------------------------------


def test_clean_app_has_no_findings_and_exits_0(app: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "main.py", """\
        import io, json, os, re, tempfile, logging, threading, _json, math
        from . import helpers
        from .pkg import thing

        def application(environ, start_response):
            with open(os.path.join(os.path.dirname(__file__), "data.txt")) as f:
                data = f.read()
            with open("data.bin", "rb") as f:
                f.read()
            scratch = tempfile.TemporaryFile()
            scratch.write(b"x")
            io.BytesIO().write(b"y")
            text = "a-b".replace("-", "+")
            start_response("200 OK", [])
            return [json.dumps({"d": data, "t": text, "m": os.environ.get("MODE")}).encode()]
        """)
    write(app, "helpers.py", "def double(x):\n    return 2 * x\n")
    write(app, "pkg/__init__.py", "")
    assert scan(app) == []
    code, out, err = run_cli(capsys, str(app))
    assert (code, err) == (0, "")
    assert "no portability problems found" in out


def test_shipped_shared_libraries_are_reported(app: Path, tmp_path: Path) -> None:
    suffix = EXTENSION_SUFFIXES[0]
    marker = tmp_path / "loaded-marker"
    source = textwrap.dedent(f"""\
        #include <stdio.h>
        __attribute__((constructor)) static void on_load(void) {{
            FILE *f = fopen("{marker}", "w"); if (f) fclose(f);
        }}
        int answer(void) {{ return 42; }}
        """)
    compile_shared_library(source, app / "pkg" / f"mod{suffix}")
    compile_shared_library(source, app / "lib" / "numpy" / "core" / f"_fast{suffix}")
    (app / "win.pyd").write_bytes(b"MZ not really")

    findings = scan(app)

    assert keys(findings) == {
        (f"lib/numpy/core/_fast{suffix}", 1, "c_extension", "lib.numpy.core._fast"),
        (f"pkg/mod{suffix}", 1, "c_extension", "pkg.mod"),
        ("win.pyd", 1, "c_extension", "win"),
    }
    by_target = {f.target: f for f in findings}
    assert by_target["lib.numpy.core._fast"].library == "numpy"
    assert "add to app.yaml libraries: - name: numpy" in by_target["lib.numpy.core._fast"].fix
    assert by_target["pkg.mod"].library is None
    assert "pure Python" in by_target["pkg.mod"].fix
    assert "libraries:" in by_target["pkg.mod"].rule
    assert libraries_needed(findings) == ["numpy"]
    assert not marker.exists(), "the scan loaded a shared library"


def test_enabled_library_is_not_asked_for_again(app: Path) -> None:
    (app / "app.yaml").write_text(APP_YAML + "libraries:\n- name: numpy\n  version: latest\n")
    write(app, "main.py", """\
        import numpy
        import lxml.etree  # expect: c_extension lxml.etree
        """)
    (app / "numpy_copy").mkdir()
    (app / "numpy_copy" / "numpy").mkdir()
    (app / "numpy_copy" / "numpy" / "_core.so").write_bytes(b"\x7fELF")
    findings = scan(app)
    assert keys(findings) == expected(app, "main.py") | {
        ("numpy_copy/numpy/_core.so", 1, "c_extension", "numpy_copy.numpy._core")}
    assert libraries_needed(findings) == ["lxml"]
    shipped = next(f for f in findings if f.file.endswith(".so"))
    assert shipped.library is None and "already provides numpy" in shipped.fix


def test_imports_follow_the_runtime_gate(app: Path) -> None:
    write(app, "main.py", """\
        import importlib
        import os as o
        import os.path
        import ctypes  # expect: import ctypes
        import multiprocessing.pool  # expect: import multiprocessing.pool
        import sqlite3  # expect: import sqlite3
        import numpy  # expect: c_extension numpy
        from lxml import etree  # expect: c_extension lxml
        from PIL import Image  # expect: c_extension PIL
        import Crypto.Cipher.AES  # expect: c_extension Crypto.Cipher.AES
        import select, _socket  # expect: c_extension _socket
        from posix import unlink  # expect: c_extension posix
        import json, re, _json, math, time, socket, subprocess, signal
        import webapp2, jinja2
        from . import helpers
        from .pkg import thing
        from .. import up
        __import__("mmap")  # expect: import mmap
        importlib.import_module("fcntl")  # expect: import fcntl
        importlib.import_module(".sibling", "pkg")
        __import__(o.environ["NAME"])
        try:
            import termios
        except ImportError:
            termios = None
        from google.appengine.ext import ndb  # expect: import google.appengine.ext
        import google.cloud.storage
        try:
            from google.appengine.api import users
        except ImportError:
            users = None
        """)
    findings = scan(app)
    assert keys(findings) == expected(app, "main.py")
    services = next(f for f in findings if f.target.startswith("google"))
    assert "not its bundled services" in services.rule and "google-cloud-ndb" in services.fix
    assert libraries_needed(findings) == ["PIL", "lxml", "numpy", "pycrypto"]
    crypto = next(f for f in findings if f.target.startswith("Crypto"))
    assert crypto.fix == "add to app.yaml libraries: - name: pycrypto"
    wrapped = next(f for f in findings if f.target == "_socket")
    assert "only through the module that wraps it" in wrapped.rule
    assert wrapped.fix == "import socket instead"


def test_app_modules_shadow_library_names(app: Path) -> None:
    write(app, "PIL/__init__.py", "")
    write(app, "main.py", "import PIL\nfrom .PIL import thing\n")
    assert scan(app) == []


def test_file_writes_and_tempfile(app: Path) -> None:
    write(app, "store.py", """\
        import io, os, shutil, tempfile
        import os as o
        from os import remove as rm, makedirs
        from pathlib import Path
        from shutil import copytree

        def save(p, data):
            open("out.txt", "w")  # expect: file_write open
            open("in.txt")
            open("in.txt", "rb")
            open("log.txt", mode="a")  # expect: file_write open
            open("new.txt", "x")  # expect: file_write open
            io.open("x", "r+")  # expect: file_write io.open
            Path("p.txt").open("w")  # expect: file_write pathlib.Path(...).open
            Path("p.txt").open()
            Path("p.txt").write_text(data)  # expect: file_write pathlib.Path(...).write_text
            p.write_bytes(data)  # expect: file_write p.write_bytes
            o.unlink("a")  # expect: file_write os.unlink
            rm("b")  # expect: file_write os.remove
            makedirs("c")  # expect: file_write os.makedirs
            os.rename("a", "b")  # expect: file_write os.rename
            os.chmod("a", 0o644)  # expect: file_write os.chmod
            os.symlink("a", "b")  # expect: file_write os.symlink
            os.utime("a")  # expect: file_write os.utime
            shutil.copy("a", "b")  # expect: file_write shutil.copy
            copytree("a", "b")  # expect: file_write shutil.copytree
            shutil.rmtree("a")  # expect: file_write shutil.rmtree
            shutil.move("a", "b")  # expect: file_write shutil.move
            shutil.copyfileobj(data, data)
            os.open("f", os.O_WRONLY | os.O_CREAT)  # expect: file_write os.open
            os.open("f", os.O_RDONLY)
            os.path.join("a", "b")
            tempfile.mkstemp()  # expect: tempfile tempfile.mkstemp
            tempfile.NamedTemporaryFile()  # expect: tempfile tempfile.NamedTemporaryFile
            tempfile.TemporaryDirectory()  # expect: tempfile tempfile.TemporaryDirectory
            tempfile.TemporaryFile()
            tempfile.SpooledTemporaryFile()
            "a,b".replace(",", ";")
        """)
    findings = scan(app)
    assert keys(findings) == expected(app, "store.py")
    first = findings[0]
    assert (first.line, first.rule) == (8, "files are read-only on the runtime (mode 'w')")
    assert "Datastore" in first.fix


def test_processes_sockets_signals_environment(app: Path) -> None:
    write(app, "jobs.py", """\
        import os, signal, socket, subprocess
        from subprocess import Popen as P, check_output
        from socket import create_connection
        from os import environ

        def run():
            subprocess.run(["ls"])  # expect: process subprocess.run
            P(["ls"])  # expect: process subprocess.Popen
            check_output("ls")  # expect: process subprocess.check_output
            os.system("ls")  # expect: process os.system
            os.popen("ls")  # expect: process os.popen
            os.fork()  # expect: process os.fork
            os.execvp("ls", ["ls"])  # expect: process os.execvp
            os.spawnl(os.P_WAIT, "/bin/ls")  # expect: process os.spawnl
            os.posix_spawn("/bin/ls", [], {})  # expect: process os.posix_spawn
            os.kill(1, signal.SIGTERM)  # expect: process os.kill
            socket.socket()  # expect: network socket.socket
            create_connection(("h", 80))  # expect: network socket.create_connection
            socket.create_server(("", 0))  # expect: network socket.create_server
            socket.gethostname()
            signal.signal(signal.SIGALRM, None)  # expect: system signal.signal
            signal.alarm(5)  # expect: system signal.alarm
            os.environ["MODE"] = "x"  # per request on the runtime too: not a finding
            environ["OTHER"] = "y"
            os.putenv("MODE", "x")  # expect: system os.putenv
            os.environ.get("MODE")
            os.getpid()
        """)
    findings = scan(app)
    assert keys(findings) == expected(app, "jobs.py")
    environ_fix = {f.fix for f in findings if f.target == "os.putenv"}
    assert environ_fix == {"set the variable in app.yaml env_variables:"}


def test_shadowed_names_are_not_the_builtins(app: Path) -> None:
    write(app, "local.py", """\
        def open(path, mode="r"):
            return path

        class system:
            pass

        open("x", "w")
        system()
        """)
    assert scan(app) == []


def test_skip_files_and_tool_folders_are_not_scanned(app: Path) -> None:
    bad = "import subprocess\nsubprocess.run(['ls'])\n"
    for rel in (".git/hooks/hook.py", "__pycache__/x.py", "node_modules/pkg/y.py",
                ".venv/lib/z.py", "venv/lib/z.py", "env/lib/z.py", ".hidden.py",
                "#autosave.py#", "backup.py~", "pkg/.secret/s.py", "pkg/RCS/old.py"):
        write(app, rel, bad)
    (app / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (app / "junk.pyc").write_bytes(b"\0\1\2 not python")
    (app / ".git" / "objects.so").write_bytes(b"\x7fELF")
    write(app, "pkg/real.py", "import subprocess\n"
                              "subprocess.call(['ls'])  # expect: process subprocess.call\n")
    assert keys(scan(app)) == expected(app, "pkg/real.py") == {
        ("pkg/real.py", 2, "process", "subprocess.call")}


def test_app_yaml_skip_files_are_honoured(app: Path) -> None:
    (app / "app.yaml").write_text(APP_YAML + "skip_files:\n- ^tests/.*$\n- (?i)^BUILD/.*$\n")
    write(app, "tests/test_x.py", "import subprocess\nsubprocess.run(['ls'])\n")
    write(app, "build/tool.py", "import subprocess\nsubprocess.run(['ls'])\n")
    assert scan(app) == []


def test_broken_app_yaml_is_a_finding(app: Path) -> None:
    write(app, "main.py", "import os\nos.system('ls')\n")
    write(app, ".hidden/x.py", "import os\nos.system('ls')\n")
    (app / "app.yaml").write_text("runtime: python27\nlibraries: [\n  {name: numpy\n")
    findings = scan(app)
    assert keys(findings) == {("app.yaml", 4, "app_yaml", "app.yaml"),
                              ("main.py", 2, "process", "os.system")}
    assert findings[0].rule.startswith("app.yaml is not valid: invalid YAML")
    (app / "app.yaml").write_text("runtime: python25\nhandlers: []\n")
    [(file, line, rule)] = [(f.file, f.line, f.rule) for f in scan(app) if f.kind == "app_yaml"]
    assert (file, line) == ("app.yaml", 1)
    assert rule.startswith("app.yaml is not valid: runtime: 'python25' is not supported; "
                           "gae_sandbox emulates python27")


# --- broken input ---------------------------------------------------------------------------


def test_syntax_error_is_a_finding(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "ok.py", "import os\nos.system('ls')\n")
    write(app, "py2.py", "import os\n\nprint 'hello'\n")
    findings = scan(app)
    assert keys(findings) == {("ok.py", 2, "process", "os.system"),
                              ("py2.py", 3, "syntax", "py2.py")}
    code, out, err = run_cli(capsys, str(app))
    assert code == 1 and err == ""
    assert out.startswith("ok.py:2: process: os.system \u2014 ")
    assert "py2.py:3: syntax: py2.py \u2014 does not parse as Python 3" in out


def test_binary_and_undecodable_files_are_findings(app: Path) -> None:
    (app / "blob.py").write_bytes(b"x = 1\n\x00\x01\x02\xff" * 10)
    (app / "latin.py").write_bytes(b"# comment\ns = '\xe9t\xe9'\n")
    (app / "declared.py").write_bytes(b"# -*- coding: latin-1 -*-\ns = '\xe9t\xe9'\n")
    (app / "cookie.py").write_bytes(b"# -*- coding: no-such-codec -*-\nx = 1\n")
    findings = scan(app)
    assert {(f.file, f.line, f.kind) for f in findings} == {
        ("blob.py", 2, "unreadable"), ("latin.py", 2, "unreadable"), ("cookie.py", 1, "syntax"),
    }


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_file_and_folder_are_findings(app: Path) -> None:
    locked = write(app, "locked.py", "x = 1\n")
    closed = app / "closed"
    closed.mkdir()
    locked.chmod(0)
    closed.chmod(0)
    try:
        findings = scan(app)
    finally:
        locked.chmod(0o644)
        closed.chmod(0o755)
    assert {(f.file, f.kind) for f in findings} == {("locked.py", "unreadable"),
                                                     ("closed", "unreadable")}


def test_hostile_tree_does_not_crash_or_hang(app: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (app / "loop").symlink_to(app)  # a folder that contains itself
    (app / "a").symlink_to(app / "b")
    (app / "b").symlink_to(app / "a")  # a two-link loop
    (app / "etc").symlink_to("/etc")
    (app / "passwd.py").symlink_to("/etc/passwd")
    outside = tmp_path / "outside.py"
    outside.write_text("import os\nos.system('ls')\n")
    (app / "outside_link.py").symlink_to(outside)
    (app / "dangling.py").symlink_to(app / "nowhere.py")
    write(app, "real.py", "import os\nos.fork()\n")
    (app / "alias.py").symlink_to(app / "real.py")  # the same file, reported once
    if hasattr(os, "mkfifo"):
        os.mkfifo(app / "pipe.py")  # opening it would block
    (app / "empty.py").write_bytes(b"")
    weird = os.fsencode(app) + b"/bad\xff\xfename.py"
    with open(weird, "wb") as file:
        file.write(b"open('x', 'w')\n")
    deep = app.joinpath(*(["d"] * 150))
    deep.mkdir(parents=True)
    (deep / "bottom.py").write_text("import ctypes\n")

    findings = scan(app)

    assert keys(findings) == {
        ("bad\\xff\\xfename.py", 1, "file_write", "open"),
        ("/".join(["d"] * 150) + "/bottom.py", 1, "import", "ctypes"),
        ("real.py", 2, "process", "os.fork"),
    }
    code, out, _ = run_cli(capsys, str(app))
    assert code == 1 and "bad\\xff\\xfename.py:1: file_write: open" in out
    result = subprocess.run([sys.executable, "-m", "gae_sandbox", "check", str(app),
                             "--format", "json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert len(json.loads(result.stdout)["findings"]) == 3


def test_scan_never_runs_app_code(app: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "ran"
    write(app, "main.py", f"""\
        open({str(marker)!r}, "w").close()  # expect: file_write open
        import os
        os.system("touch " + {str(marker)!r})  # expect: process os.system
        raise SystemExit(3)
        """)
    write(app, "sitecustomize.py", f"open({str(marker)!r}, 'w')  # expect: file_write open\n")
    write(app, "conftest.py", f"open({str(marker)!r}, 'w')  # expect: file_write open\n")
    write(app, "pkg/__init__.py", f"__import__('os').system('touch {marker}')\n")
    (app / "pkg" / "__main__.py").write_text(f"open({str(marker)!r}, 'w')\n")
    findings = scan(app, include_tests=True)
    assert keys(findings) >= expected(app, "main.py", "sitecustomize.py", "conftest.py")
    assert keys(scan(app)) >= expected(app, "main.py", "sitecustomize.py")
    assert run_cli(capsys, str(app))[0] == 1
    assert run_cli(capsys, "--format", "json", str(app))[0] == 1
    assert run_cli(capsys, "--include-tests", str(app))[0] == 1
    assert not marker.exists()


# --- output and the command line ------------------------------------------------------------


def test_text_output_lists_findings_summary_and_libraries(
        app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "main.py", """\
        import numpy
        import os
        os.remove("x")
        os.unlink("y")
        """)
    code, out, err = run_cli(capsys, str(app))
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == ("main.py:1: c_extension: numpy \u2014 C extension libraries are refused "
                        "unless enabled in app.yaml libraries: (add to app.yaml libraries: - "
                        "name: numpy)")
    assert lines[1].startswith("main.py:3: file_write: os.remove \u2014 files are read-only")
    assert lines[2].startswith("main.py:4: file_write: os.unlink")
    summary = out.split("\n\n")[1].splitlines()
    assert summary[0] == f"3 findings in {os.path.realpath(app)}:"
    assert [line.split() for line in summary[1:]] == [["c_extension", "1"], ["file_write", "2"]]
    assert out.rstrip().endswith(libraries_yaml(["numpy"]).rstrip())
    assert libraries_yaml(["numpy"]) == "libraries:\n- name: numpy\n  version: latest\n"


def test_json_output_matches_the_scan(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "main.py", "from Crypto.Cipher import AES\nimport os\nos.popen('ls')\n")
    write(app, "broken.py", "def f(:\n")
    code, out, err = run_cli(capsys, "--format", "json", str(app))
    assert (code, err) == (1, "")
    report = json.loads(out)
    assert report["app"] == os.path.realpath(app)
    assert report["findings"] == [f.as_dict() for f in scan(app)]
    assert [(f["file"], f["line"], f["kind"], f["target"]) for f in report["findings"]] == [
        ("broken.py", 1, "syntax", "broken.py"),
        ("main.py", 1, "c_extension", "Crypto.Cipher"),
        ("main.py", 3, "process", "os.popen"),
    ]
    assert report["summary"] == {"syntax": 1, "c_extension": 1, "process": 1}
    assert report["libraries"] == [{"name": "pycrypto", "version": "latest"}]
    assert set(report["findings"][0]) == {"kind", "file", "line", "target", "rule", "fix",
                                          "library", "vendored"}
    assert report["vendored"] == {} and report["skipped_tests"] == []
    assert report["app_yaml"] == os.path.realpath(app / "app.yaml")


def test_clean_json_output(app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, str(app), "--format=json")
    assert code == 0
    assert json.loads(out) == {"app": os.path.realpath(app),
                               "app_yaml": os.path.realpath(app / "app.yaml"),
                               "profile": "python27",
                               "profile_reason": "app.yaml runtime: python27", "findings": [],
                               "summary": {}, "vendored": {}, "skipped_tests": [],
                               "libraries": []}


@pytest.mark.parametrize("make, message", [
    (lambda tmp: str(tmp / "missing"), "does not exist"),
    (lambda tmp: str(write(tmp, "file.txt", "x")), "is not a folder"),
])
def test_bad_app_dir_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      make, message: str) -> None:
    code, out, err = run_cli(capsys, make(tmp_path))
    assert (code, out) == (2, "")
    assert err.startswith("gae-sandbox check: error: APP_DIR_OR_APP_YAML ") and message in err


def test_unknown_format_is_a_usage_error(app: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(app), "--format", "xml")
    assert (code, out) == (2, "")
    assert "unknown format 'xml'" in err and "text, json" in err


def test_missing_argument_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check"])
    assert exit_info.value.code == 2
    assert "APP_DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "APP_DIR" in out and "--format" in out and "Exit status" in out


def test_python_dash_m_runs_the_check(app: Path) -> None:
    write(app, "main.py", "import os\nos.system('ls')\n")
    command = [sys.executable, "-m", "gae_sandbox", "check"]
    result = subprocess.run([*command, str(app)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("main.py:2: process: os.system \u2014 ")
    (app / "main.py").write_text("import os\nprint(os.getcwd())\n")
    result = subprocess.run([*command, "--format", "json", str(app)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["findings"] == []
    result = subprocess.run([*command, str(app / "nope")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_scan_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        scan(tmp_path / "missing")


# --- logging files, chdir, modes not known statically -----------------------------------------


def test_logging_file_handlers_and_chdir(app: Path) -> None:
    write(app, "setup_logs.py", """\
        import logging, logging.handlers, os
        from logging import FileHandler, basicConfig
        from logging.handlers import RotatingFileHandler as Rotating
        from logging.handlers import TimedRotatingFileHandler as T, WatchedFileHandler as W

        def configure(name, config, fd):
            logging.FileHandler("app.log")  # expect: file_write logging.FileHandler
            FileHandler("app.log", delay=True)  # expect: file_write logging.FileHandler
            Rotating(name)  # expect: file_write logging.handlers.RotatingFileHandler
            T(name)  # expect: file_write logging.handlers.TimedRotatingFileHandler
            W(name)  # expect: file_write logging.handlers.WatchedFileHandler
            basicConfig(filename=name, level=10)  # expect: file_write logging.basicConfig
            logging.basicConfig(level=logging.INFO)
            logging.basicConfig(filename=None)
            logging.StreamHandler()
            logging.handlers.MemoryHandler(100)
            os.chdir(os.path.dirname(__file__))  # expect: system os.chdir
            os.fchdir(fd)  # expect: system os.fchdir
            os.umask(0o22)  # expect: system os.umask
            os.getcwd()
            os.path.join("a", "b")

        LOGGING = {
            "handlers": {
                "file": {"class": "logging.FileHandler",  # expect: file_write logging.FileHandler
                         "filename": "debug.log"},
                "console": {"class": "logging.StreamHandler"},
            },
        }
        """)
    findings = scan(app)
    assert keys(findings) == expected(app, "setup_logs.py")
    rules = {(f.target, f.rule, f.fix) for f in findings}
    logging_fix = next(f.fix for f in findings if f.target == "logging.FileHandler")
    assert "logging" in logging_fix and "StreamHandler" in logging_fix
    assert ("logging.handlers.RotatingFileHandler", "logging file handlers open their file for "
            "writing; files are read-only on the runtime", logging_fix) in rules
    assert ("logging.basicConfig", "logging.basicConfig(filename=...) opens its log file for "
            "writing; files are read-only on the runtime", logging_fix) in rules
    chdir = {(f.rule, f.fix) for f in findings if f.target in ("os.chdir", "os.fchdir")}
    [(chdir_rule, chdir_fix)] = chdir
    assert chdir_rule.startswith("the working folder is process-wide")
    assert "os.path.dirname(__file__)" in chdir_fix
    configured = [f for f in findings if f.line == line_of(app / "setup_logs.py", '"file":')]
    assert [f.rule.split(",")[0] for f in configured] == [
        "a logging configuration names a file handler"]


def test_modes_not_known_statically_are_a_distinct_rule(app: Path) -> None:
    write(app, "files.py", """\
        import gzip, io, os, tarfile, zipfile
        from os import O_RDONLY, O_WRONLY
        from pathlib import Path

        def use(path, mode, flags, options, *rest):
            open(path, mode)  # expect: possible_write open
            open(path, mode=mode)  # expect: possible_write open
            open(path, mode + "b")  # expect: possible_write open
            open(path, **options)  # expect: possible_write open
            open(*rest)  # expect: possible_write open
            io.open(path, mode)  # expect: possible_write io.open
            gzip.open(path, mode)  # expect: possible_write gzip.open
            Path(path).open(mode)  # expect: possible_write pathlib.Path(...).open
            Path.home().open(mode)  # expect: possible_write pathlib.Path.home(...).open
            (Path(__file__).parent / path).open(mode=mode)  # expect: possible_write (...).open
            Path.open(Path(path), mode)  # expect: possible_write pathlib.Path.open
            os.open(path, flags)  # expect: possible_write os.open
            os.open(path, os.O_RDONLY if mode else flags)  # expect: possible_write os.open
            open(path, "ab" if mode else "rb")  # expect: file_write open
            os.open(path, flags | os.O_CREAT)  # expect: file_write os.open
            os.open(path, O_WRONLY)  # expect: file_write os.open
            os.open(path, 1)  # expect: file_write os.open
            tarfile.open(path, "w:gz")  # expect: file_write tarfile.open
            open(path)
            open(path, "rb" if mode else "r")
            open(path, None)
            Path(path).open()
            Path(path).open("rb")
            os.open(path, O_RDONLY)
            os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            os.open(path, 0)
            tarfile.open(path, "r:xz")
            tarfile.open(path, "r|xz")
            gzip.GzipFile(fileobj=io.BytesIO(), mode="wb")
            zipfile.ZipFile(io.BytesIO(), mode)
            archive.open(path, mode)
            zipfile.ZipFile(path).open("member.txt")
        """)
    findings = scan(app)
    assert keys(findings) == expected(app, "files.py")
    possible = [f for f in findings if f.kind == "possible_write"]
    assert {f.rule for f in possible} == {
        "mode not known statically; writes are refused at run time",
        "flags not known statically; writes are refused at run time"}
    assert all("reading" in f.fix for f in possible)
    certain = {f.line: f.rule for f in findings if f.kind == "file_write"}
    source = app / "files.py"
    assert certain[line_of(source, '"ab" if mode')] == ("files are read-only on the runtime "
                                                        "(mode 'ab')")
    assert certain[line_of(source, '"w:gz"')] == "files are read-only on the runtime (mode 'w:gz')"


def test_possible_writes_are_counted_apart_in_the_summary(
        app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "main.py", "def f(p, m):\n    open(p, m)\n    open(p, 'w')\n")
    code, out, _ = run_cli(capsys, str(app))
    assert code == 1
    assert out.splitlines()[0].startswith(
        "main.py:2: possible_write: open \u2014 mode not known statically; writes are refused "
        "at run time (")
    summary = out.split("\n\n")[1].splitlines()
    assert [line.split() for line in summary[1:]] == [["file_write", "1"],
                                                      ["possible_write", "1"]]


# --- vendored third-party folders -----------------------------------------------------------

WRITES = "import os\nos.remove('a')\nos.rename('a', 'b')\n"


def dist_info(folder: Path, name: str, version: str, files: list[str],
              display_name: str | None = None) -> None:
    """A pip-installed distribution's metadata: METADATA and RECORD, as pip writes them."""
    meta = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {display_name or name}\n"
                                   f"Version: {version}\n\nLong description.\nName: nope\n")
    rows = [f"{item},sha256=abc,10" for item in files]
    rows.append(f"{meta.name}/RECORD,,")
    (meta / "RECORD").write_text("\n".join(rows) + "\n")


def test_vendored_packages_are_found_by_their_metadata(app: Path) -> None:
    deps = app / "deps"  # not a conventional name: the metadata makes it a vendor folder
    for rel in ("somepkg/__init__.py", "somepkg/io.py", "google/protobuf/x.py",
                "google/cloud/storage/y.py", "handmade.py"):
        write(deps, rel, WRITES)
    dist_info(deps, "some-pkg", "1.0", ["somepkg/__init__.py", "somepkg/io.py"], "Some-Pkg")
    dist_info(deps, "protobuf", "3.20", ["google/protobuf/x.py"])
    dist_info(deps, "google-cloud-storage", "2.0", ["google/cloud/storage/y.py"])
    write(app, "six.py", WRITES)  # pip install -t . : the app folder's own metadata
    dist_info(app, "six", "1.16", ["six.py"])
    write(app, "main.py", WRITES)
    egg = app / "legacy"
    write(egg, "oldlib/core.py", WRITES)
    (egg / "oldlib-0.1-py2.7.egg-info").mkdir()
    (egg / "oldlib-0.1-py2.7.egg-info" / "PKG-INFO").write_text("Name: OldLib\nVersion: 0.1\n")
    (egg / "oldlib-0.1-py2.7.egg-info" / "top_level.txt").write_text("oldlib\n")

    vendored = {(f.file, f.vendored) for f in scan(app)}

    assert vendored == {
        ("deps/somepkg/__init__.py", "Some-Pkg"), ("deps/somepkg/io.py", "Some-Pkg"),
        ("deps/google/protobuf/x.py", "protobuf"),
        ("deps/google/cloud/storage/y.py", "google-cloud-storage"),
        ("deps/handmade.py", "handmade"),  # unclaimed, in a folder pip installed into
        ("six.py", "six"), ("main.py", None), ("legacy/oldlib/core.py", "OldLib"),
    }


def test_vendored_packages_are_found_by_conventional_folders(app: Path) -> None:
    for rel in ("lib/requests/adapters.py", "lib/numpy/lib/shape.py", "lib/six.py",
                "vendor/pkg/sub/deep.py", "third_party/py2/site-packages/chardet/x.py",
                "mine/lib/__init__.py", "mine/lib/helpers.py", "main.py",
                "lib/numpy/lib/__init__.py"):
        write(app, rel, WRITES)
    vendored = {(f.file, f.vendored) for f in scan(app)}
    assert vendored == {
        ("lib/requests/adapters.py", "requests"),
        ("lib/numpy/lib/__init__.py", "numpy"), ("lib/numpy/lib/shape.py", "numpy"),
        ("lib/six.py", "six"), ("vendor/pkg/sub/deep.py", "pkg"),
        ("third_party/py2/site-packages/chardet/x.py", "chardet"),
        ("mine/lib/__init__.py", None), ("mine/lib/helpers.py", None),  # a package, not vendor
        ("main.py", None),
    }


def test_vendored_findings_are_grouped_in_text_and_listed_in_json(
        app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "main.py", "import os\nos.remove('x')\n")
    write(app, "lib/chatty/__init__.py", WRITES + "os.unlink('c')\n")
    write(app, "lib/chatty/more.py", "import os, socket\nos.remove('d')\nsocket.socket()\n")
    write(app, "lib/quiet.py", "import subprocess\nsubprocess.run(['ls'])\n")
    dist_info(app / "lib", "chatty", "2.0", ["chatty/__init__.py", "chatty/more.py"])

    code, out, err = run_cli(capsys, str(app))

    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0].startswith("main.py:2: file_write: os.remove \u2014 ")
    assert not any(line.startswith("lib/") for line in lines), "vendored findings listed flat"
    group = lines[lines.index("vendored chatty: 5 findings in 2 files (third-party code; "
                              "--format json lists each one)"):]
    assert group[1] == ("  4 \u00d7 file_write: os.remove, os.rename, os.unlink \u2014 files are "
                        "read-only on the runtime (keep data in the Datastore, Cloud Storage or "
                        "memcache; use io.BytesIO() or tempfile.TemporaryFile() for scratch "
                        "data)")
    assert group[2] == "      e.g. lib/chatty/__init__.py:2, lib/chatty/__init__.py:3 and 2 more"
    assert group[3].startswith("  1 \u00d7 network: socket.socket \u2014 the runtime offers no "
                               "raw sockets")
    assert group[4] == "      e.g. lib/chatty/more.py:3"
    assert "vendored quiet: 1 finding in 1 file (" in out
    assert "  1 \u00d7 process: subprocess.run \u2014 " in out
    assert f"7 findings in {os.path.realpath(app)} (1 in the app's own code, 6 in 2 vendored " \
           "packages):" in lines

    code, out, _ = run_cli(capsys, "--format", "json", str(app))
    report = json.loads(out)
    assert len(report["findings"]) == 7
    assert [(f["file"], f["line"], f["vendored"]) for f in report["findings"]] == [
        ("lib/chatty/__init__.py", 2, "chatty"), ("lib/chatty/__init__.py", 3, "chatty"),
        ("lib/chatty/__init__.py", 4, "chatty"), ("lib/chatty/more.py", 2, "chatty"),
        ("lib/chatty/more.py", 3, "chatty"), ("lib/quiet.py", 2, "quiet"),
        ("main.py", 2, None)]
    assert report["vendored"] == {"chatty": 5, "quiet": 1}


def test_hostile_metadata_does_not_break_the_scan(app: Path, tmp_path: Path) -> None:
    lib = app / "lib"
    write(lib, "pkg/x.py", WRITES)
    meta = lib / "pkg-1.0.dist-info"
    meta.mkdir()
    (meta / "RECORD").write_bytes(b"\xff\xfe\0bad,\"unterminated\n" + b"x" * 200_000 + b"\n")
    outside = tmp_path / "METADATA"
    outside.write_text("Metadata-Version: 2.1\nName: Outside\n")
    (meta / "METADATA").symlink_to(outside)  # outside the app: never read
    if hasattr(os, "mkfifo"):
        os.mkfifo(meta / "top_level.txt")  # opening it would block
    (lib / "broken-2.0.egg-info").write_bytes(b"\0" * 100)
    assert {(f.file, f.vendored) for f in scan(app)} == {("lib/pkg/x.py", "pkg")}


# --- test files -----------------------------------------------------------------------------


def test_test_files_are_skipped_unless_asked_for(app: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = "import os\nos.system('ls')\n"
    tests = ["test_main.py", "main_test.py", "conftest.py", "tests/helpers.py",
             "pkg/test/fixtures.py", "pkg/tests.py", "lib/dep/tests/test_dep.py"]
    for rel in [*tests, "main.py", "testing.py", "contest.py", "pkg/latest.py"]:
        write(app, rel, bad)
    kept = {("main.py", 2, "process", "os.system"), ("testing.py", 2, "process", "os.system"),
            ("contest.py", 2, "process", "os.system"), ("pkg/latest.py", 2, "process",
                                                         "os.system")}
    assert keys(scan(app)) == kept
    assert keys(scan(app, include_tests=True)) == kept | {
        (rel, 2, "process", "os.system") for rel in tests}

    code, out, _ = run_cli(capsys, str(app))
    assert code == 1
    assert not any(f"{rel}:" in out for rel in tests)
    assert ("7 test files not scanned: tests do not run in production (test_*.py, *_test.py, "
            "tests.py, conftest.py, test/, tests/); --include-tests scans them") in out
    code, out, _ = run_cli(capsys, "--include-tests", str(app))
    assert code == 1 and "not scanned" not in out
    assert all(f"{rel}:2: process: os.system" in out for rel in tests[:-1])
    assert "vendored dep: 1 finding in 1 file" in out
    assert "      e.g. lib/dep/tests/test_dep.py:2" in out
    code, out, _ = run_cli(capsys, "--format", "json", str(app))
    assert sorted(json.loads(out)["skipped_tests"]) == sorted(tests)


def test_only_test_files_means_a_clean_app_that_says_so(
        app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "tests/test_it.py", "import subprocess\nsubprocess.run(['ls'])\n")
    code, out, _ = run_cli(capsys, str(app))
    assert code == 0
    assert out.splitlines() == [
        f"{os.path.realpath(app)}: no portability problems found",
        "profile python27 (app.yaml runtime: python27)",
        "1 test file not scanned: tests do not run in production (test_*.py, *_test.py, "
        "tests.py, conftest.py, test/, tests/); --include-tests scans them"]


# --- an app.yaml path -----------------------------------------------------------------------


def test_an_app_yaml_path_checks_its_folder_with_its_skip_files(
        app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(app, "main.py", "import os\nos.system('ls')\n")
    write(app, "legacy/old.py", "import os\nos.fork()\n")
    staging = app / "staging.yaml"
    staging.write_text(APP_YAML + "skip_files:\n- ^legacy/.*$\n")
    assert keys(scan(app)) == {("main.py", 2, "process", "os.system"),
                               ("legacy/old.py", 2, "process", "os.fork")}
    assert keys(scan(staging)) == {("main.py", 2, "process", "os.system")}

    code, out, err = run_cli(capsys, str(staging))
    assert (code, err) == (1, "")
    assert "main.py:2: process: os.system" in out and "legacy/old.py" not in out
    code, out, _ = run_cli(capsys, "--format", "json", str(staging))
    report = json.loads(out)
    assert report["app"] == os.path.realpath(app)
    assert report["app_yaml"] == os.path.realpath(staging)
    assert [f["file"] for f in report["findings"]] == ["main.py"]


def test_a_broken_app_yaml_path_is_a_usage_error(app: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (app / "app.yaml").write_text("runtime: python27\nhandlers: [\n")
    code, out, err = run_cli(capsys, str(app / "app.yaml"))
    assert (code, out) == (2, "")
    assert err.startswith(f"gae-sandbox check: error: {app / 'app.yaml'}:")
    assert "invalid YAML" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, str(app / "missing.yaml"))
    assert (code, out) == (2, "")
    assert "missing.yaml' does not exist" in err


def test_an_alias_bomb_app_yaml_fails_at_once_with_a_short_message(
        app: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[level]
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    (app / "app.yaml").write_text(APP_YAML + "\n".join(lines) + "\nthreadsafe: *i\n")
    assert (app / "app.yaml").stat().st_size < 1500  # 9 levels: 9**9 strings if expanded
    write(app, "main.py", "import os\nos.system('ls')\n")
    from gae_sandbox import appyaml

    composed = 0
    compose = appyaml._LineLoader.compose_node

    def counting(loader: object, parent: object, index: object) -> object:
        nonlocal composed
        composed += 1
        return compose(loader, parent, index)

    monkeypatch.setattr(appyaml._LineLoader, "compose_node", counting)
    findings = scan(app)  # by folder: a finding, and the rest of the scan goes on
    assert keys(findings) == {("app.yaml", 7, "app_yaml", "app.yaml"),
                              ("main.py", 2, "process", "os.system")}
    assert findings[0].rule.startswith("app.yaml is not valid: invalid YAML: anchor &a: ")
    assert len(findings[0].rule) < 200
    code, out, err = run_cli(capsys, str(app / "app.yaml"))  # by path: a usage error
    assert (code, out) == (2, "")
    assert err.startswith(f"gae-sandbox check: error: {app / 'app.yaml'}:7: invalid YAML: "
                          "anchor &a: anchors and aliases are not supported")
    assert len(err) < len(str(app)) + 250
    assert composed < 40  # the nodes before the first anchor, twice: never the expansion


# --- the python3 profile: only writes outside /tmp ------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PYTHON3_YAML = "runtime: python312\n"
TMP_RULE = "the python3 runtime's filesystem is read-only except /tmp"
UNKNOWN_PATH_RULE = "write; allowed only beneath /tmp on the python3 runtime"


def test_python3_runtime_reports_only_writes_outside_tmp(
        app: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (app / "app.yaml").write_text(PYTHON3_YAML)
    main = write(app, "main.py", """\
        import ctypes, numpy, os, signal, socket, subprocess, tempfile

        def handler(request):
            with open("/tmp/x", "w") as scratch:
                scratch.write("ok")
            with open("data.json", "w") as out:  # expect: file_write open
                out.write("{}")
            subprocess.run(["ls"])
            os.system("ls")
            socket.create_connection(("example.com", 443))
            socket.getaddrinfo("example.com", 443)
            fd, name = tempfile.mkstemp()
            tempfile.NamedTemporaryFile()
            signal.signal(signal.SIGTERM, None)
            os.chdir("/tmp")
            os.putenv("MODE", "x")
        """)
    (app / "fast.so").write_bytes(b"\x7fELF")

    result = scan_app(app)

    assert (result.profile, result.profile_reason) == ("python3", "app.yaml runtime: python312")
    assert keys(result.findings) == expected(app, "main.py")
    [finding] = result.findings
    assert (finding.file, finding.line, finding.kind, finding.target) == (
        "main.py", line_of(main, '"data.json"'), "file_write", "open")
    assert finding.rule == f"{TMP_RULE} (mode 'w'; path 'data.json' is in the app's folder)"
    assert finding.fix.startswith("write under tempfile.gettempdir() (/tmp: in memory")
    assert finding.library is None and libraries_needed(result.findings) == []

    # the same tree judged for python27 (the preset wins over app.yaml): all of it is refused
    old = scan_app(app, preset="python27")
    assert (old.profile, old.profile_reason) == (
        "python27", "--preset python27, over app.yaml runtime: python312")
    assert {(f.line, f.kind, f.target) for f in old.findings} >= {
        (1, "import", "ctypes"), (1, "c_extension", "numpy"),
        (line_of(main, "/tmp/x"), "file_write", "open"),
        (line_of(main, "subprocess.run"), "process", "subprocess.run"),
        (line_of(main, "os.system"), "process", "os.system"),
        (line_of(main, "create_connection"), "network", "socket.create_connection"),
        (line_of(main, "mkstemp"), "tempfile", "tempfile.mkstemp"),
        (line_of(main, "signal.signal"), "system", "signal.signal"),
        (line_of(main, "os.chdir"), "system", "os.chdir"),
    }
    assert ("fast.so", 1, "c_extension", "fast") in keys(old.findings)

    code, out, err = run_cli(capsys, str(app))
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == (f"main.py:{finding.line}: file_write: open \u2014 {finding.rule} "
                        f"({finding.fix})")
    assert "profile python3 (app.yaml runtime: python312)" in lines
    assert "libraries:" not in out
    code, out, _ = run_cli(capsys, "--format", "json", str(app))
    report = json.loads(out)
    assert (report["profile"], report["profile_reason"]) == ("python3",
                                                             "app.yaml runtime: python312")
    assert report["findings"] == [finding.as_dict()]


def test_python3_follows_written_paths(app: Path) -> None:
    (app / "app.yaml").write_text("runtime: python3\n")
    source = write(app, "store.py", """\
        import logging, os, shutil, tempfile
        from logging.handlers import RotatingFileHandler as Rotating
        from pathlib import Path

        HERE = os.path.dirname(os.path.abspath(__file__))
        BASE = Path(__file__).resolve().parent
        CACHE = os.path.join(tempfile.gettempdir(), "cache")

        def save(path, mode, name, data):
            open(os.path.join(CACHE, name), "w")
            open(f"/tmp/{name}.json", "w")
            open("/tmp/%s" % name, "a")
            open("{}/x".format(CACHE), "w")
            open(CACHE + "/" + name, "wb")
            open(CACHE, mode)
            (Path("/tmp") / name).write_text(data)
            Path(tempfile.mkdtemp()).joinpath(name).write_bytes(data)
            fd, temporary = tempfile.mkstemp()
            open(temporary, "w")
            os.fchmod(fd, 0o600)
            with tempfile.TemporaryDirectory() as folder:
                open(os.path.join(folder, name), "w")
            os.makedirs(CACHE, exist_ok=True)
            os.open(os.path.join(CACHE, name), os.O_WRONLY | os.O_CREAT)
            shutil.copy("seed.json", CACHE)
            logging.FileHandler("/tmp/app.log")
            logging.basicConfig(filename=os.path.join(CACHE, "app.log"))
            open(os.path.join(HERE, "x.json"), "w")  # expect: file_write open
            (BASE / name).write_text(data)  # expect: file_write (...).write_text
            open("/var/log/app.log", "a")  # expect: file_write open
            open("/tmp/../etc/x", "w")  # expect: file_write open
            os.makedirs("cache")  # expect: file_write os.makedirs
            os.rename(os.path.join(CACHE, name), "kept.json")  # expect: file_write os.rename
            shutil.unpack_archive("/tmp/a.zip")  # expect: file_write shutil.unpack_archive
            logging.FileHandler("app.log")  # expect: file_write logging.FileHandler
            Rotating(HERE + "/x.log")  # expect: file_write logging.handlers.RotatingFileHandler
            open(path, "w")  # expect: file_write open
            open(path, mode)  # expect: possible_write open
            chosen = "/tmp/a"
            chosen = "data"
            open(chosen, "w")  # expect: file_write open

        LOGGING = {"handlers": {
            "file": {"class": "logging.FileHandler",  # expect: file_write logging.FileHandler
                     "filename": os.path.join(HERE, "debug.log")},
            "scratch": {"class": "logging.FileHandler", "filename": "/tmp/debug.log"},
        }}
        """)
    findings = scan(app)
    assert keys(findings) == expected(app, "store.py")
    rules = {f.line: f.rule for f in findings}
    assert rules[line_of(source, '"x.json"')] == (
        f"{TMP_RULE} (mode 'w'; a path built from __file__ is in the app's folder)")
    assert rules[line_of(source, '"/var/log/app.log"')] == (
        f"{TMP_RULE} (mode 'a'; path '/var/log/app.log' is outside /tmp)")
    assert rules[line_of(source, '"kept.json"')] == (
        f"{TMP_RULE} (path 'kept.json' is in the app's folder)")
    assert rules[line_of(source, "unpack_archive")] == (
        f"{TMP_RULE} (the working folder is the app's folder)")
    assert rules[line_of(source, 'FileHandler("app.log")')] == (
        f"logging file handlers open their file for writing; {TMP_RULE} (path 'app.log' is in "
        "the app's folder)")
    unknown = next(f for f in findings if f.line == line_of(source, 'open(path, "w")'))
    assert unknown.rule == f"{UNKNOWN_PATH_RULE} (mode 'w'; path not known statically)"
    assert "tempfile.gettempdir()" in unknown.fix
    possible = next(f for f in findings if f.kind == "possible_write")
    assert possible.rule == "mode not known statically; writes outside /tmp are refused at run time"
    assert rules[line_of(source, "open(chosen")] == (
        f"{TMP_RULE} (mode 'w'; path 'data' is in the app's folder)")
    logged = [f for f in findings if f.line == line_of(source, '"file": {')]
    assert [f.rule for f in logged] == [
        "a logging configuration names a file handler, which opens its file for writing; "
        f"{TMP_RULE} (a path built from __file__ is in the app's folder)"]


def test_preset_python3_on_a_folder_without_app_yaml(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "plain"
    main = write(app, "main.py", """\
        import numpy, subprocess
        subprocess.run(["ls"])
        open("/tmp/scratch", "w")
        open("out.txt", "w")
        """)
    assert not (app / "app.yaml").exists()
    default = scan_app(app)
    assert (default.profile, default.profile_reason) == ("python27", "no app.yaml; the default")
    assert keys(default.findings) == {("main.py", 1, "c_extension", "numpy"),
                                      ("main.py", 2, "process", "subprocess.run"),
                                      ("main.py", 3, "file_write", "open"),
                                      ("main.py", 4, "file_write", "open")}

    code, out, err = run_cli(capsys, "--preset", "python3", str(app))
    assert (code, err) == (1, "")
    line = line_of(main, "out.txt")
    assert out.splitlines()[0] == (
        f"main.py:{line}: file_write: open \u2014 {TMP_RULE} (mode 'w'; path 'out.txt' is in the "
        "app's folder) (write under tempfile.gettempdir() (/tmp: in memory, lost when the "
        "instance stops), or keep data in Cloud Storage or a database)")
    assert out.split("\n\n")[2].splitlines() == ["profile python3 (--preset python3)"]
    code, out, _ = run_cli(capsys, "--preset", "python3", "--format", "json", str(app))
    report = json.loads(out)
    assert (report["profile"], report["profile_reason"]) == ("python3", "--preset python3")
    assert [(f["file"], f["line"], f["kind"], f["target"]) for f in report["findings"]] == [
        ("main.py", line, "file_write", "open")]
    assert report["app_yaml"] is None and report["libraries"] == []

    code, out, _ = run_cli(capsys, str(app))
    assert code == 1 and "profile python27 (no app.yaml; the default)" in out.splitlines()
    (app / "main.py").write_text("import numpy\nopen('/tmp/x', 'w')\n")
    code, out, _ = run_cli(capsys, "--preset=python3", str(app))
    assert (code, out.splitlines()) == (0, [
        f"{os.path.realpath(app)}: no portability problems found",
        "profile python3 (--preset python3)"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["check", "--preset", "python25", str(app)])
    assert exit_info.value.code == 2
    assert "python27" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset 'python25'"):
        scan_app(app, preset="python25")


def test_a_python3_app_yaml_path_picks_the_profile(app: Path) -> None:
    write(app, "main.py", "import subprocess\nsubprocess.run(['ls'])\nopen('x.txt', 'w')\n")
    staging = app / "staging.yaml"
    staging.write_text("runtime: python39\n")
    result = scan_app(staging)
    assert (result.profile, result.profile_reason) == ("python3", "staging.yaml runtime: python39")
    assert keys(result.findings) == {("main.py", 3, "file_write", "open")}
    assert scan_app(app).profile == "python27"  # app.yaml in the folder says python27


def test_ssl_needs_its_library_in_python27_and_select_is_allowed(app: Path) -> None:
    main = write(app, "main.py", """\
        import select
        import ssl  # expect: c_extension ssl
        from _ssl import RAND_status  # expect: c_extension _ssl
        try:
            import ssl as optional
        except ImportError:
            optional = None
        """)
    findings = scan(app)
    assert keys(findings) == expected(app, "main.py")
    first = findings[0]
    assert (first.file, first.line, first.kind, first.target) == (
        "main.py", line_of(main, "import ssl  #"), "c_extension", "ssl")
    assert first.rule == ("the runtime offers ssl only when app.yaml asks for it "
                          "(libraries: - name: ssl)")
    assert first.fix == "add to app.yaml libraries: - name: ssl"
    assert first.library == "ssl" and libraries_needed(findings) == ["ssl"]

    (app / "app.yaml").write_text(APP_YAML + "libraries:\n- name: ssl\n  version: latest\n")
    assert scan(app) == []
    assert scan(app, enabled_libraries=[]) != []
    (app / "app.yaml").write_text(PYTHON3_YAML)
    assert scan(app) == []  # the python3 runtime offers ssl to every app


def test_python3_example_reports_its_one_problem(capsys: pytest.CaptureFixture[str]) -> None:
    example = EXAMPLES / "python3_app"
    main = example / "main.py"
    result = scan_app(example)
    assert (result.profile, result.profile_reason) == ("python3", "app.yaml runtime: python312")
    [finding] = result.findings
    assert (finding.file, finding.line, finding.kind, finding.target) == (
        "main.py", line_of(main, '"saved.json"), "w"'), "file_write", "open")
    assert finding.line < line_of(main, "return {\"saved\": True}")  # in /save
    assert finding.rule == (f"{TMP_RULE} (mode 'w'; a path built from __file__ is in the app's "
                            "folder)")
    assert "tempfile.gettempdir()" in finding.fix
    code, out, _ = run_cli(capsys, str(example))
    assert code == 1
    assert out.split("\n\n")[1:] == [
        f"1 finding in {os.path.realpath(example)}:\n  file_write  1",
        "profile python3 (app.yaml runtime: python312)\n"]
