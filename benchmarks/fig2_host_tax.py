"""Figure 2: the host-code tax of ``gae_sandbox.install()``.

The same child script runs ``os.stat``, ``open``+``read`` of a small file and
``socket.socket()``+``close`` outside any sandbox, once in a child that never imported
gae_sandbox (baseline) and once in a child that called ``gae_sandbox.install()``; children
alternate, several rounds, and the figure is the median over rounds of each child's median.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from ._common import Row, make_app_dir, median, per_op_samples, progress, run_child

OPS = ("os.stat", "open+read", "socket()+close")


def run(quick: bool) -> list[Row]:
    app = make_app_dir()
    rounds = 3 if quick else 7
    samples = "21" if quick else "41"
    per: dict[str, dict[str, list[float]]] = {m: {op: [] for op in OPS}
                                             for m in ("plain", "installed")}
    try:
        for r in range(rounds):
            progress(f"fig2: round {r + 1}/{rounds}")
            order = ("plain", "installed") if r % 2 == 0 else ("installed", "plain")
            for mode in order:
                result = run_child("fig2_host_tax", mode, app, samples)
                for op in OPS:
                    per[mode][op].append(result[op])
    finally:
        shutil.rmtree(app, ignore_errors=True)
    rows = []
    for op in OPS:
        base = median(per["plain"][op])
        value = median(per["installed"][op])
        ratio = value / base
        rows.append(Row("2", f"host {op} after install()", value / 1e3, "us",
                        "child without gae_sandbox", base / 1e3, ratio, "<= 1.05x",
                        ratio <= 1.05))
    return rows


def child(mode: str, app: str, samples: int) -> dict[str, float]:
    if mode == "installed":
        import gae_sandbox

        gae_sandbox.install()
    elif "gae_sandbox" in sys.modules:
        raise SystemExit("baseline child imported gae_sandbox")
    import socket

    path = os.path.join(app, "data.txt")

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

    functions = {"os.stat": (stat, 2000), "open+read": (read, 500),
                 "socket()+close": (sock, 500)}
    collected: dict[str, list[float]] = {op: [] for op in OPS}
    for fn, batch in functions.values():
        per_op_samples(fn, batch, 1, warmup=5)
    for _ in range(samples):  # interleave the operations
        for op, (fn, batch) in functions.items():
            collected[op].extend(per_op_samples(fn, batch, 1, warmup=0))
    return {op: median(values) for op, values in collected.items()}


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
