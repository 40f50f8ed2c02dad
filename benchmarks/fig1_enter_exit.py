"""Figure 1: the cost of entering and leaving a sandbox with an empty body.

Baselines, measured in the same run: entering and leaving a pyfakefs ``Patcher`` per request
(the usual in-process alternative), and a fresh ``python -c pass`` subprocess per request
(process isolation).
"""

from __future__ import annotations

import shutil
import subprocess

from ._common import PYTHON, Row, make_app_dir, median, now_ns, per_op_samples, progress


def run(quick: bool) -> list[Row]:
    from gae_sandbox import Policy, Sandbox

    app = make_app_dir()
    try:
        samples = 60 if quick else 300
        batch = 500 if quick else 1000
        results: dict[str, float] = {}
        for label, deadline in (("None", None), ("60", 60.0)):
            sandbox = Sandbox(Policy.python27(app_root=app, deadline=deadline))

            def enter_exit(n: int, sandbox: Sandbox = sandbox) -> None:
                for _ in range(n):
                    with sandbox:
                        pass

            progress(f"fig1: sandbox enter+exit, deadline {label}")
            results[label] = median(per_op_samples(enter_exit, batch, samples, warmup=5)) / 1e3

        progress("fig1: pyfakefs Patcher per request")
        from pyfakefs.fake_filesystem_unittest import Patcher

        patcher_times = []
        for i in range(3 + (10 if quick else 40)):
            t0 = now_ns()
            with Patcher():
                pass
            if i >= 3:
                patcher_times.append((now_ns() - t0) / 1e3)
        patcher = median(patcher_times)

        progress("fig1: python -c pass per request")
        proc_times = []
        for i in range(2 + (10 if quick else 40)):
            t0 = now_ns()
            subprocess.run([PYTHON, "-c", "pass"], check=True)
            if i >= 2:
                proc_times.append((now_ns() - t0) / 1e3)
        process = median(proc_times)
    finally:
        shutil.rmtree(app, ignore_errors=True)

    worst = max(results.values())
    rows = [
        Row("1", f"sandbox enter+exit, deadline {label}", value, "us", "target", 5.0,
            value / 5.0, "<= 5 us", value <= 5.0)
        for label, value in results.items()
    ]
    rows.append(Row("1", "vs pyfakefs Patcher per request", worst, "us",
                    "Patcher enter+exit", patcher, patcher / worst, ">= 100x cheaper",
                    patcher / worst >= 100, "ratio = baseline/sandbox (deadline 60)"))
    rows.append(Row("1", "vs `python -c pass` per request", worst, "us",
                    "subprocess", process, process / worst, ">= 1000x cheaper",
                    process / worst >= 1000, "ratio = baseline/sandbox (deadline 60)"))
    return rows
