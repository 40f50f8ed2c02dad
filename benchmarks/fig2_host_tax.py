"""Figure 2: the host-code tax of ``gae_sandbox.install()``.

Host code, outside any sandbox: ``os.stat``, ``open``+``read`` of a small file,
``socket.socket()``+``close``, a cached ``import json`` and ``logging.info`` (a record
formatted and written to a file), after ``install()`` against the same calls before it.

One child process imports gae_sandbox (without installing it) and warms every operation up,
then forks one grandchild per arm and round, alternating: the "before" grandchild measures as
it is, the "after" one calls ``install()`` first. Both start from the same memory, so the only
difference is the install. Each grandchild runs every operation once untimed, then measures it
in interleaved batches (CPU time of the thread, ``thread_time_ns``) and reports the median
batch; the row is the median and IQR of the per-round ratios after/before.

The "after" arm installs whichever implementation is active (the C accelerator
``gae_sandbox._speedups`` where it is built, unless ``GAE_SANDBOX_PURE_PYTHON=1``). With the
accelerator active, a third arm ("pure") installs the pure-Python code instead, and its rows
(information, no target) give the C-versus-Python figure against the same "before" arm.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from ._common import (
    MIN_ROUNDS,
    Row,
    Target,
    in_fork,
    make_app_dir,
    median,
    paired_row,
    per_op_cpu,
    progress,
    run_child,
    schedule,
)

OPS = ("os.stat", "open+read", "socket()+close", "import json (cached)", "logging.info")
TARGET = Target("<=", 1.03)


def run(quick: bool) -> list[Row]:
    app = make_app_dir()
    rounds = MIN_ROUNDS if quick else 14
    samples = 5 if quick else 9
    try:
        progress(f"fig2: {rounds} rounds, one fork per arm")
        result = run_child("fig2_host_tax", app, str(rounds), str(samples))
    finally:
        shutil.rmtree(app, ignore_errors=True)
    accelerator = result["accelerator"]
    rows = [paired_row("2", f"host {op} after install()", unit="us",
                       baseline_name="same calls before install()",
                       baseline=result["before"][op], candidate=result["after"][op],
                       target=TARGET, scale=1e-3,
                       note=f"CPU per call, outside any sandbox; accelerator: {accelerator}")
            for op in OPS]
    if "pure" in result:
        rows += [paired_row("2", f"host {op} after install(), pure Python", unit="us",
                            baseline_name="same calls before install()",
                            baseline=result["before"][op], candidate=result["pure"][op],
                            target=None, scale=1e-3,
                            note="the same, with the pure-Python code instead of the C "
                                 "accelerator (GAE_SANDBOX_PURE_PYTHON=1)")
                 for op in OPS]
    return rows


def _operations(app: str) -> dict[str, tuple[Callable[[int], None], int]]:
    import socket

    path = os.path.join(app, "data.txt")
    log = logging.getLogger("bench.host")

    def stat(n: int) -> None:
        for _ in range(n):
            os.stat(path)

    def read(n: int) -> None:
        for _ in range(n):
            with open(path, "rb") as f:
                f.read()

    def sock(n: int) -> None:
        for _ in range(n):
            s = socket.socket()
            s.close()

    def cached_import(n: int) -> None:
        for _ in range(n):
            import json  # noqa: F401

    def info(n: int) -> None:
        for i in range(n):
            log.info("request %d served", i)

    # batches of roughly 1-2 ms each
    return {"os.stat": (stat, 1000), "open+read": (read, 300),
            "socket()+close": (sock, 500), "import json (cached)": (cached_import, 5000),
            "logging.info": (info, 200)}


def _arm(install: bool, app: str, samples: int, pure: bool = False) -> dict[str, float]:
    if install:
        import gae_sandbox
        from gae_sandbox import patches

        if pure:  # what GAE_SANDBOX_PURE_PYTHON=1 selects when gae_sandbox is imported
            patches.SPEEDUPS = None
        gae_sandbox.install()
    operations = _operations(app)
    for fn, batch in operations.values():  # warm-up, outside the timed region
        fn(batch)
    collected: dict[str, list[float]] = {op: [] for op in operations}
    for _ in range(samples):  # interleave the operations
        for op, (fn, batch) in operations.items():
            collected[op].append(per_op_cpu(fn, batch))
    return {op: median(values) for op, values in collected.items()}


def child(app: str, rounds: int, samples: int) -> dict[str, Any]:
    import gae_sandbox  # imported by every arm; only "after" and "pure" install it
    from gae_sandbox.patches import SPEEDUPS, accelerator

    if gae_sandbox.is_installed():
        raise SystemExit("fig2: gae_sandbox installed itself on import")
    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    _arm(False, app, 1)  # page cache, lazy imports: in the parent, before any fork
    arms = ("before", "after", "pure") if SPEEDUPS is not None else ("before", "after")
    out: dict[str, Any] = {arm: {op: [] for op in OPS} for arm in arms}
    for _, arm in schedule(rounds, arms):
        result = in_fork(lambda arm=arm: _arm(arm != "before", app, samples, arm == "pure"))
        for op in OPS:
            out[arm][op].append(result[op])
    out["accelerator"] = accelerator()
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
