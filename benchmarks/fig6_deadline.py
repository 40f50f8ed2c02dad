"""Figure 6: how late ``DeadlineExceededError`` arrives, with 16 concurrent requests.

16 threads each run one sandboxed request (``sandbox.call``) whose deadline is
100 ms + 3 ms x thread index (staggered, as real requests are), blocked in one of: a pure
Python loop, ``time.sleep(10)``, ``recv`` on a socketpair that never gets data. Lateness =
when the request caught the error - (start + deadline). Baseline, same threads and timings,
no sandbox: a loop polling ``perf_counter()``, ``time.sleep(deadline)``, ``recv`` with
``settimeout(deadline)``: the lateness the interpreter and OS give anyway.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time

from ._common import Row, make_app_dir, percentile, progress

THREADS = 16
BASE_DEADLINE = 0.100
STEP = 0.003
perf = time.perf_counter


def _round(kind: str, sandboxed: bool, sandboxes: list, pairs: list) -> list[float]:
    from gae_sandbox import DeadlineExceededError

    late = [0.0] * THREADS
    barrier = threading.Barrier(THREADS)

    def request(i: int) -> None:
        deadline = BASE_DEADLINE + STEP * i
        sock = pairs[i][0]
        barrier.wait()
        t0 = perf()
        end = t0 + deadline
        if not sandboxed:
            if kind == "loop":
                x = 0
                while perf() < end:
                    x += 1
            elif kind == "sleep":
                time.sleep(deadline)
            else:
                sock.settimeout(deadline)
                try:
                    sock.recv(1)
                except TimeoutError:
                    pass
            late[i] = perf() - end
            return

        def body() -> float:
            try:
                if kind == "loop":
                    x = 0
                    while True:
                        x += 1
                elif kind == "sleep":
                    time.sleep(10)
                else:
                    sock.recv(1)
            except DeadlineExceededError:
                return perf()
            return float("nan")

        try:
            late[i] = sandboxes[i].call(body) - end
        except DeadlineExceededError:  # raised on entry: the GIL came back after the deadline
            late[i] = perf() - end

    threads = [threading.Thread(target=request, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return late


def run(quick: bool) -> list[Row]:
    from gae_sandbox import Policy, Sandbox

    app = make_app_dir()
    sandboxes = [Sandbox(Policy.python27(app_root=app, deadline=BASE_DEADLINE + STEP * i))
                 for i in range(THREADS)]
    pairs = [socket.socketpair() for _ in range(THREADS)]
    for a, _ in pairs:
        a.settimeout(None)
    rounds = 3 if quick else 10
    rows = []
    try:
        for kind, label in (("loop", "Python loop"), ("sleep", "time.sleep"),
                            ("recv", "socket recv")):
            progress(f"fig6: {label}")
            _round(kind, True, sandboxes, pairs)  # warm-up
            samples: dict[bool, list[float]] = {True: [], False: []}
            for r in range(rounds):
                for sandboxed in ((True, False) if r % 2 == 0 else (False, True)):
                    if kind == "recv":
                        for a, _ in pairs:
                            a.settimeout(None)
                    samples[sandboxed].extend(_round(kind, sandboxed, sandboxes, pairs))
            ms = {k: [v * 1e3 for v in vals] for k, vals in samples.items()}
            for q, name in ((50, "p50"), (99, "p99")):
                value, base = percentile(ms[True], q), percentile(ms[False], q)
                ok = value <= 20.0 if q == 99 else None
                rows.append(Row("6", f"deadline lateness {label}, {name}", value, "ms",
                                "no-sandbox timeout", base,
                                value / base if base > 0.05 else None,
                                "p99 <= 20 ms" if q == 99 else "(info)", ok,
                                f"{len(ms[True])} requests, 16 concurrent"))
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        shutil.rmtree(app, ignore_errors=True)

    return rows
