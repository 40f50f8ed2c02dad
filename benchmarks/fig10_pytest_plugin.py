"""Figure 10: the pytest plugin on real test suites: --gae-sandbox=report against the plain run.

A real project's own suite, from its pinned sdist (``pip download --no-binary``, cached in
``$TMPDIR/gae-sandbox-suites``, the folder the tests use; a missing sdist is downloaded once,
outside the timed part), run against its own source (``src`` on ``PYTHONPATH``) by a child
``python -m pytest`` per arm and round: plain, then with ``--gae-sandbox=report``. Timed: the
child's CPU time (user + system, from ``getrusage(RUSAGE_CHILDREN)`` around it), which
includes the interpreter's and pytest's start. The rounds alternate (plain, report; report,
plain; ...); each gives one paired ratio. The row also says whether both arms had the same
outcome counts in every round (report mode must change nothing but the record).

Full run: click 8.1.8's whole suite and itsdangerous 2.2.0's, 8 rounds each. ``--quick``:
itsdangerous's suite (click's test_basic.py without freezegun), 3 rounds, with their spread.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

from ._common import PYTHON, Row, Target, paired_row, progress, schedule

SUITES = {
    "click": ("click", "8.1.8", ("tests",), ("-W", "ignore::DeprecationWarning")),
    "click-basic": ("click", "8.1.8", ("tests/test_basic.py",),
                    ("-W", "ignore::DeprecationWarning")),
    "itsdangerous": ("itsdangerous", "2.2.0", ("tests",), ()),
}
_QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:xdist",
          "-p", "no:randomly", "-q")
_OUTCOME = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)")


def _sdist(name: str, version: str) -> Path:
    cache = Path(os.environ.get("GAE_SANDBOX_SUITES_CACHE")
                 or os.path.join(tempfile.gettempdir(), "gae-sandbox-suites"))
    target = cache / f"{name}-{version}"
    if (target / "PKG-INFO").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"download-{uuid.uuid4().hex}"
    work.mkdir()
    progress(f"fig10: downloading the {name} {version} sdist")
    done = subprocess.run([PYTHON, "-m", "pip", "download", "--quiet", "--no-deps",
                           "--no-binary", ":all:", f"{name}=={version}", "-d", str(work)],
                          capture_output=True, text=True, timeout=300, check=False)
    archives = list(work.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise RuntimeError(f"no {name} {version} sdist: {done.stderr.strip()[-200:]}")
    with tarfile.open(archives[0]) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(work, filter="data")
        else:  # pragma: no cover
            archive.extractall(work)  # noqa: S202
    [unpacked] = [p for p in work.iterdir() if p.is_dir()]
    try:
        unpacked.rename(target)
    except OSError:
        pass
    return target


def _run(folder: Path, paths: tuple[str, ...], options: tuple[str, ...],
         report: bool) -> tuple[float, float, dict[str, int]]:
    """(CPU seconds of the child pytest, its wall seconds, its outcome counts)."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PYTEST_", "GAE_SANDBOX_"))}
    environment["PYTHONPATH"] = str(folder / "src")
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [PYTHON, "-m", "pytest", *_QUIET, *options,
               *(("--gae-sandbox=report",) if report else ()), *paths]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=environment, capture_output=True,
                          text=True, timeout=600, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    last = [line for line in done.stdout.splitlines() if re.search(r"\bin [\d.]+s\b", line)]
    if not last:
        raise RuntimeError(f"pytest gave no outcome line ({done.returncode}): "
                           f"{(done.stderr or done.stdout)[-300:]}")
    return cpu, wall, {kind: int(n) for n, kind in _OUTCOME.findall(last[-1])}


def _freezegun() -> bool:
    import importlib.util

    return importlib.util.find_spec("freezegun") is not None


def run(quick: bool) -> list[Row]:
    if quick:
        plans = [("itsdangerous" if _freezegun() else "click-basic", 3)]
    else:
        plans = [("click", 8)] + ([("itsdangerous", 8)] if _freezegun() else [])
    rows = []
    for key, rounds in plans:
        name, version, paths, options = SUITES[key]
        measure = f"pytest --gae-sandbox=report, {name} {version} suite"
        if key == "click-basic":
            measure += " (test_basic.py)"
        try:
            folder = _sdist(name, version)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            rows.append(Row("10", measure, None, "s", "plain pytest", None, None, "<= 1.5x",
                            None, f"not measured: {error}"[:200]))
            continue
        progress(f"fig10: {key}, {rounds} rounds")
        cpu: dict[str, list[float]] = {"plain": [], "report": []}
        wall: dict[str, list[float]] = {"plain": [], "report": []}
        outcomes: dict[str, set[tuple[tuple[str, int], ...]]] = {"plain": set(),
                                                                  "report": set()}
        if not quick:
            _run(folder, paths, options, False)  # warm-up: the file cache, pip's imports
        for _, arm in schedule(rounds, ("plain", "report")):
            seconds, elapsed, counts = _run(folder, paths, options, arm == "report")
            cpu[arm].append(seconds)
            wall[arm].append(elapsed)
            outcomes[arm].add(tuple(sorted(counts.items())))
        same = outcomes["plain"] == outcomes["report"] and len(outcomes["plain"]) == 1
        shown = ", ".join(f"{n} {k}" for k, n in sorted(next(iter(outcomes["plain"]))))
        wall_ratios = sorted(r / p for p, r in zip(wall["plain"], wall["report"], strict=True))
        note = (f"CPU of the child pytest (start included); wall-clock ratio median "
                f"{wall_ratios[len(wall_ratios) // 2]:.2f}x (thread waits are wall time)")
        rows.append(paired_row(
            "10", measure, unit="s", baseline_name="plain pytest", baseline=cpu["plain"],
            candidate=cpu["report"], target=Target("<=", 1.5), note=note,
            also=("same outcomes: " if same else "OUTCOMES DIFFER: ") + shown))
    return rows
