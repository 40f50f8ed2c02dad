"""Figure 1: the cost of entering and leaving a sandbox with an empty body.

Baselines, measured in the same rounds: entering and leaving a pyfakefs ``Patcher`` per
request (the usual in-process alternative), and a fresh ``python -c pass`` process per request
(process isolation). Everything is CPU time of this process (``process_time_ns``: the deadline
timer thread's share of a request counts), plus the child's user+system time for the process.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from ._common import (
    MIN_ROUNDS,
    PYTHON,
    Row,
    Target,
    alternate,
    make_app_dir,
    paired_row,
    per_op_cpu,
    process_cpu_ns,
    progress,
    spawn_cpu_ns,
    value_row,
)


def run(quick: bool) -> list[Row]:
    from pyfakefs.fake_filesystem_unittest import Patcher

    from gae_sandbox import Policy, Sandbox

    rounds = MIN_ROUNDS if quick else 15
    batch, batches = (500, 3) if quick else (1000, 5)
    patchers = 5 if quick else 10
    processes = 1 if quick else 2
    app = make_app_dir()
    try:
        def entering(deadline: float | None) -> Callable[[], float]:
            sandbox = Sandbox(Policy.python27(app_root=app, deadline=deadline))

            def loop(n: int) -> None:
                for _ in range(n):
                    with sandbox:
                        pass

            return lambda: per_op_cpu(loop, batch, batches, clock=process_cpu_ns)

        def patcher(n: int) -> None:
            for _ in range(n):
                with Patcher():
                    pass

        def process() -> float:
            return sum(spawn_cpu_ns([PYTHON, "-c", "pass"]) for _ in range(processes)) / processes

        progress(f"fig1: {rounds} rounds of sandbox / Patcher / process")
        per = alternate({
            "None": entering(None),
            "60": entering(60.0),
            "patcher": lambda: per_op_cpu(patcher, patchers, 1, clock=process_cpu_ns),
            "process": process,
        }, rounds)
    finally:
        shutil.rmtree(app, ignore_errors=True)

    us = 1e-3
    return [
        value_row("1", "sandbox enter+exit, deadline None", unit="us", values=per["None"],
                  target=None, scale=us, note="CPU per request; the target is for deadline 60"),
        value_row("1", "sandbox enter+exit, deadline 60", unit="us", values=per["60"],
                  target=Target("<=", 5.0, "us", on="value"), scale=us,
                  note="CPU per request, the runtime's 60 s deadline"),
        paired_row("1", "vs pyfakefs Patcher per request", unit="us",
                   baseline_name="Patcher enter+exit", baseline=per["patcher"],
                   candidate=per["60"], target=Target(">=", 150), invert=True, scale=us,
                   note="ratio = Patcher / sandbox (deadline 60), x cheaper"),
        paired_row("1", "vs `python -c pass` per request", unit="us",
                   baseline_name="process (parent + child CPU)", baseline=per["process"],
                   candidate=per["60"], target=Target(">=", 1000), invert=True, scale=us,
                   note="ratio = process / sandbox (deadline 60), x cheaper"),
    ]
