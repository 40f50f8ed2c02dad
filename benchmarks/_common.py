"""Shared helpers: timing, result rows, child processes. Never imports gae_sandbox."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
now_ns = time.perf_counter_ns


@dataclass
class Row:
    """One line of the table. ``ratio`` is value/baseline (or baseline/value when
    ``higher_is_better`` on the ratio, e.g. "x cheaper"), ``target`` a human string and
    ``passed`` whether the target holds."""

    figure: str
    measure: str
    value: float | None
    unit: str
    baseline_name: str
    baseline: float | None
    ratio: float | None
    target: str
    passed: bool | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    data = sorted(values)
    if not data:
        return float("nan")
    rank = max(1, min(len(data), round(q / 100 * len(data) + 0.5)))
    return data[rank - 1]


def per_op_samples(batch_fn: Callable[[int], None], batch: int, samples: int,
                   warmup: int = 3) -> list[float]:
    """Run ``batch_fn(batch)`` ``warmup`` then ``samples`` times; return ns per op per sample."""
    for _ in range(warmup):
        batch_fn(batch)
    out = []
    for _ in range(samples):
        t0 = now_ns()
        batch_fn(batch)
        out.append((now_ns() - t0) / batch)
    return out


def run_child(module: str, *args: str, timeout: float = 300) -> Any:
    """Run ``python -m benchmarks.<module> child args...`` and parse its last stdout line as
    JSON."""
    proc = subprocess.run(
        [PYTHON, "-m", f"benchmarks.{module}", "child", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=child_env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child benchmarks.{module} {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def make_app_dir() -> str:
    """A small app folder (a data file and a template) shared by the figures."""
    folder = tempfile.mkdtemp(prefix="gae_sandbox_bench_app_")
    Path(folder, "data.txt").write_text("hello from the app\n" * 20)
    Path(folder, "main.py").write_text("# the app\n")
    return folder


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
