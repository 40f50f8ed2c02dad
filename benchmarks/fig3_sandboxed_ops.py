"""Figure 3: the same operation inside a sandbox versus outside, in one process.

``open``+``read`` of an app file, ``os.stat`` of it and ``import json`` (already imported),
timed in batches inside one entered sandbox (the entry itself is not timed; figure 1 is) and
outside it, after ``install()``. CPU time of the thread (``thread_time_ns``); outside and
inside alternate over rounds, each round gives one ratio inside/outside.
"""

from __future__ import annotations

import os
import shutil

from ._common import (
    MIN_ROUNDS,
    Row,
    Target,
    alternate,
    make_app_dir,
    paired_row,
    per_op_cpu,
    progress,
)


def _stat(path: str, n: int) -> None:
    for _ in range(n):
        os.stat(path)


def _read(path: str, n: int) -> None:
    for _ in range(n):
        with open(path, "rb") as f:
            f.read()


def _import(path: str, n: int) -> None:
    for _ in range(n):
        import json  # noqa: F401


OPS = {"open+read app file": (_read, 300), "os.stat app file": (_stat, 1000),
       "import json (cached)": (_import, 5000)}


def run(quick: bool) -> list[Row]:
    import json  # noqa: F401  (cached before timing)

    import gae_sandbox
    from gae_sandbox import Policy, Sandbox

    gae_sandbox.install()
    app = make_app_dir()
    path = os.path.join(app, "data.txt")
    sandbox = Sandbox(Policy.python27(app_root=app))
    rounds = MIN_ROUNDS if quick else 16
    batches = 3 if quick else 5
    rows = []
    try:
        for op, (fn, batch) in OPS.items():
            progress(f"fig3: {op}, {rounds} rounds")

            def timed(fn=fn, batch=batch) -> float:
                return per_op_cpu(lambda n: fn(path, n), batch, batches)

            per = alternate({"outside": timed, "inside": lambda timed=timed: sandbox.call(timed)},
                            rounds, warmup=2)
            rows.append(paired_row("3", f"sandboxed {op}", unit="us",
                                   baseline_name="same op outside", baseline=per["outside"],
                                   candidate=per["inside"], target=Target("<=", 1.3),
                                   scale=1e-3, note="CPU per call, after install()"))
    finally:
        shutil.rmtree(app, ignore_errors=True)
    return rows
