"""Figure 3: the same operation inside a sandbox versus outside, in one process.

``open``+``read`` of an app file, ``os.stat`` of it and ``import json`` (already imported),
timed in batches inside one entered sandbox (the entry itself is not timed; figure 1 is) and
outside it, after ``install()``, samples alternating.
"""

from __future__ import annotations

import os
import shutil

from ._common import Row, make_app_dir, median, now_ns, progress


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
       "import json (cached)": (_import, 2000)}


def run(quick: bool) -> list[Row]:
    import json  # noqa: F401  (cached before timing)

    import gae_sandbox
    from gae_sandbox import Policy, Sandbox

    gae_sandbox.install()
    app = make_app_dir()
    path = os.path.join(app, "data.txt")
    sandbox = Sandbox(Policy.python27(app_root=app))
    samples = 30 if quick else 150
    rows = []
    try:
        for op, (fn, batch) in OPS.items():
            progress(f"fig3: {op}")

            def timed(fn=fn, batch=batch) -> float:
                t0 = now_ns()
                fn(path, batch)
                return (now_ns() - t0) / batch

            for _ in range(3):
                timed()
                sandbox.call(timed)
            inside, outside = [], []
            for _ in range(samples):
                outside.append(timed())
                inside.append(sandbox.call(timed))
            value, base = median(inside), median(outside)
            ratio = value / base
            rows.append(Row("3", f"sandboxed {op}", value / 1e3, "us", "same op outside",
                            base / 1e3, ratio, "<= 1.5x", ratio <= 1.5))
    finally:
        shutil.rmtree(app, ignore_errors=True)
    return rows
