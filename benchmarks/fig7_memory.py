"""Figure 7: RSS growth over many sandboxed requests, in a child process.

N requests through ``sandbox.call`` (a small body: a dict, ``os.stat`` of an app file, an
``open``+``read`` every 10th); every 100th starts a thread (joined by the scope), every
1000th blocks in ``time.sleep`` past a 5 ms deadline. After 2000 warm-up requests and
``gc.collect()``, VmRSS is read, the N requests run, ``gc.collect()``, VmRSS again. Baseline:
the same loop, same threads and sleeps, without a sandbox.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import threading
import time

from ._common import Row, make_app_dir, progress, rss_kib, run_child


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
    grow, base_grow = value["growth_kib"] / 1024, base["growth_kib"] / 1024
    return [Row("7", f"RSS growth over {n} sandboxed requests", grow, "MB",
                "same loop, no sandbox", base_grow,
                grow / base_grow if base_grow > 0.5 else None, "<= 10 MB", grow <= 10.0,
                f"{value['deadlines']} deadlines hit, {value['threads']} threads; "
                f"RSS {value['start_kib'] // 1024}->{value['end_kib'] // 1024} MB")]


def child(mode: str, app: str, n: int) -> dict[str, int]:
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
    start = rss_kib()
    counters["deadlines"] = counters["threads"] = 0
    for i in range(n):
        request(i)
    gc.collect()
    end = rss_kib()
    return {"start_kib": start, "end_kib": end, "growth_kib": end - start, **counters}


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
