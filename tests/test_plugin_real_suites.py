"""The pytest plugin on real test suites, as a user runs it: the suites of itsdangerous, click
and part of werkzeug, from their pinned sdists (downloaded from PyPI once, cached), each run
plainly and with ``--gae-sandbox=report``.

Report mode changes nothing but the record: the same pass counts. And the record holds none
of the false positives these suites used to show: the folders above a readable folder that
``os.path.realpath`` looks at, the standard library's zip on ``sys.path``, the interpreter's
own folders, ``TemporaryFile`` taken before install, a thread left waiting.

Each suite runs against its own source (``src`` on ``PYTHONPATH``), so the pinned version is
what is tested whatever version the environment has installed. The cost is bounded by the
suites (a few seconds each), not by time: nothing here asserts on durations.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    paths: tuple[str, ...]
    options: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


SUITES = {
    "itsdangerous": Suite("itsdangerous", "2.2.0", ("tests",), needs=("freezegun",)),
    # click 8.1.8's tests use an API pytest 9 deprecates; its pyproject turns warnings into
    # errors
    "click": Suite("click", "8.1.8", ("tests",), ("-W", "ignore::DeprecationWarning")),
    # werkzeug's conftest needs the dev server's packages; these files need none of it
    "werkzeug": Suite("werkzeug", "3.1.9", (
        "tests/test_formparser.py", "tests/test_test.py", "tests/test_wrappers.py",
        "tests/test_utils.py", "tests/test_datastructures.py", "tests/test_local.py",
    ), ("--noconftest",), needs=("markupsafe",)),
}
#: The plugins of this environment that have nothing to do with the suites.
_QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:xdist",
          "-p", "no:randomly")


def _cache() -> Path:
    folder = os.environ.get("GAE_SANDBOX_SUITES_CACHE") or os.path.join(
        tempfile.gettempdir(), "gae-sandbox-suites")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sdist(suite: Suite) -> Path:
    """The unpacked sdist (``pip download --no-binary``), shared by every run and worker:
    unpacked beside its final name, then renamed into place (the first rename wins)."""
    target = _cache() / f"{suite.name}-{suite.version}"
    if (target / "PKG-INFO").exists():
        return target
    work = _cache() / f"download-{uuid.uuid4().hex}"
    work.mkdir()
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--no-binary", ":all:", f"{suite.name}=={suite.version}",
               "-d", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    archives = list(work.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        pytest.skip(f"cannot download the {suite.name} {suite.version} sdist from PyPI: "
                    f"{(done.stderr or done.stdout).strip()[-300:]}")
    with tarfile.open(archives[0]) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(work, filter="data")
        else:  # pragma: no cover - Pythons without the extraction filters
            archive.extractall(work)  # noqa: S202
    [unpacked] = [p for p in work.iterdir() if p.is_dir()]
    try:
        unpacked.rename(target)
    except OSError:  # another worker was first
        pass
    return target


_OUTCOME = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)")


def _outcomes(done: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The counts of pytest's last line (``628 passed, 21 skipped, 1 xfailed in 1.3s``)."""
    output = done.stdout
    lines = [line for line in output.splitlines() if re.search(r"\bin [\d.]+s\b", line)]
    assert lines, (done.returncode, output[-2000:], done.stderr[-2000:])
    counts = {kind.rstrip("s") if kind == "errors" else kind: int(number)
              for number, kind in _OUTCOME.findall(lines[-1])}
    return counts


def _run(suite: Suite, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PYTEST_", "GAE_SANDBOX_"))}
    environment["PYTHONPATH"] = str(folder / "src")
    environment["PYTHONDONTWRITEBYTECODE"] = "1"  # the cache is shared: leave it as unpacked
    command = [sys.executable, "-m", "pytest", *_QUIET, "-q", *suite.options, *options,
               *suite.paths]
    return subprocess.run(command, cwd=folder, env=environment, capture_output=True,
                          text=True, timeout=600, check=False)


def _violations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [violation for test in document["tests"].values()
            for violation in test["violations"]]


def _resolved(target: str) -> str:
    path = target.partition(" (resolves to ")[2].rstrip(")") or target
    return os.path.realpath(path)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_report_mode_passes_what_the_plain_run_passes(name: str, tmp_path: Path) -> None:
    suite = SUITES[name]
    for module in suite.needs:
        pytest.importorskip(module)
    folder = _sdist(suite)
    plain = _run(suite, folder)
    report_file = tmp_path / "report.json"
    sandboxed = _run(suite, folder, "--gae-sandbox=report", f"--gae-sandbox-report={report_file}")

    assert _outcomes(sandboxed) == _outcomes(plain), sandboxed.stdout[-3000:]
    assert _outcomes(plain).get("passed", 0) > 50
    assert "gae_sandbox: " in sandboxed.stdout  # the summary
    document = json.loads(report_file.read_text())
    assert len(document["tests"]) >= _outcomes(plain)["passed"]

    # none of the false positives
    interpreter = {sys.prefix, sys.base_prefix, os.path.dirname(os.__file__), str(folder)}
    for violation in _violations(document):
        target = str(violation["target"])
        if violation["kind"] == "file_read":
            path = _resolved(target)
            above = path.rstrip("/") + "/"
            assert not any(os.path.realpath(p).startswith(above) for p in interpreter), (
                f"a folder above a readable one: {violation}")
            assert not re.search(r"python3\d+\.zip$", path), violation
        assert "RecursionError" not in str(violation.get("message")), violation
        if violation["kind"] in ("file_write", "tempfile"):  # TemporaryFile is in memory
            assert not target.startswith(f"{tempfile.gettempdir()} (os.open flags"), violation
            assert "TemporaryFile" not in target, violation
    for nodeid, test in document["tests"].items():
        threads = test["threads"]
        assert threads is None or not threads["still_running"], (nodeid, threads)
