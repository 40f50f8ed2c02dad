"""Figure 7: RSS growth over many sandboxed requests, in a child process.

N requests through ``sandbox.call`` (a small body: a dict, ``os.stat`` of an app file, an
``open``+``read`` every 10th); every 100th starts a thread (joined by the scope), every
1000th blocks in ``time.sleep`` past a 5 ms deadline. After 2000 warm-up requests and
``gc.collect()``, VmRSS is read, then again (after ``gc.collect()``) every N/10 requests. The
figure is the growth rate in MB per 100,000 requests: the median of the slopes between every
pair of the 11 readings (Theil-Sen: a one-off step such as a new 1 MiB arena near either end
does not move it, steady growth counts in full), with the IQR of those slopes; the total
growth is in the note. Baseline: the same loop,
same threads and sleeps, without a sandbox.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import threading
import time

from ._common import (
    Row,
    Target,
    make_app_dir,
    progress,
    rss_kib,
    run_child,
    spread,
    theil_sen_slope,
)

SEGMENTS = 10
PER = 100_000  # the target is in MB per 100,000 requests


def run(quick: bool, requests: int | None = None) -> list[Row]:
    n = requests or (10_000 if quick else 100_000)
    app = make_app_dir()
    try:
        progress(f"fig7: {n} requests, no sandbox")
        base = run_child("fig7_memory", "plain", app, str(n))
        progress(f"fig7: {n} sandboxed requests")
        value = run_child("fig7_memory", "sandbox", app, str(n))
    finally:
        shutil.rmtree(app, ignore_errors=True)

    def rate(result: dict) -> tuple[float, list[float]]:
        xs = [r for r, _ in result["readings"]]
        ys = [kib / 1024 * PER for _, kib in result["readings"]]  # MB x requests per 100k
        return theil_sen_slope(xs, ys)

    slope, slopes = rate(value)
    base_slope, _ = rate(base)
    s = spread(slopes)
    grow = (value["readings"][-1][1] - value["readings"][0][1]) / 1024
    base_grow = (base["readings"][-1][1] - base["readings"][0][1]) / 1024
    target = Target("<=", 10.0, "MB", on="value")
    return [Row("7", f"RSS growth per 100k requests (over {n:,} sandboxed requests)", slope,
                "MB", "same loop, no sandbox", base_slope, None, str(target),
                target.meets(slope),
                f"Theil-Sen over {SEGMENTS + 1} readings, IQR of the {s.n} pairwise slopes; "
                f"total growth {grow:.2f} MB (no sandbox {base_grow:.2f} MB); "
                f"{value['deadlines']} deadlines hit, {value['threads']} threads; "
                f"RSS {value['readings'][0][1] // 1024}->{value['readings'][-1][1] // 1024} MB",
                judged="value", q1=s.q1, q3=s.q3, rounds=s.n, values=slopes)]


def child(mode: str, app: str, n: int) -> dict[str, object]:
    path = os.path.join(app, "data.txt")
    counters = {"deadlines": 0, "threads": 0}

    def work() -> None:
        pass

    def body(i: int) -> int:
        environ = {"PATH_INFO": "/", "i": i, "headers": [("a", "b")] * 4}
        os.stat(path)
        if i % 10 == 0:
            with open(path, "rb") as f:
                f.read()
        if i % 100 == 0:
            t = threading.Thread(target=work)
            t.start()
            counters["threads"] += 1
            if mode == "plain":
                t.join()
        return len(environ)

    if mode == "sandbox":
        from gae_sandbox import DeadlineExceededError, Policy, Sandbox

        sandbox = Sandbox(Policy.python27(app_root=app))
        short = Sandbox(Policy.python27(app_root=app, deadline=0.005))

        def slow() -> None:
            try:
                time.sleep(1)
            except DeadlineExceededError:
                counters["deadlines"] += 1

        def request(i: int) -> None:
            if i % 1000 == 500:
                try:
                    short.call(slow)
                except DeadlineExceededError:  # expired before the body started
                    counters["deadlines"] += 1
            else:
                sandbox.call(body, i)
    else:
        def request(i: int) -> None:
            if i % 1000 == 500:
                time.sleep(0.005)
            else:
                body(i)

    for i in range(2000):
        request(i)
    gc.collect()
    readings = [(0, rss_kib())]
    counters["deadlines"] = counters["threads"] = 0
    step = max(1, n // SEGMENTS)
    for i in range(n):
        request(i)
        if (i + 1) % step == 0:
            gc.collect()
            readings.append((i + 1, rss_kib()))
    return {"readings": readings, **counters}


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
