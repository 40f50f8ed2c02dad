"""Figure 9: a fresh confined process per request (``serve --isolation request``).

The same hello-world app.yaml app under ``gae-sandbox serve`` with gunicorn (2 workers, 8
requests at once per worker): ``--isolation request`` against ``--isolation os`` and
``--isolation none``. The three servers run at once; rounds alternate between them
(:func:`schedule`), and every row prints the median over rounds with its IQR. Every request
opens its own connection (``Connection: close``) in all three cases, since
``--isolation request`` serves one request per connection: the comparison is the process, not
keep-alive.

* throughput: a load client (another process, 8 threads on fresh connections) sends a fixed
  number of requests to one server; the server's CPU over them (arbiter, workers and the
  children they reaped, from ``/proc``) gives requests per CPU-second, requests per
  wall-clock second are the second column;
* latency at low load: one request at a time, 10 ms apart (a spare child is ready, as the
  worker forks the next one right after it hands a request over); p50 and p99, and what
  ``request`` (and ``os``) add to ``none`` in the same round;
* fork cost: what each worker logs at exit, the medians of its CPU in ``fork()``, of a child's
  CPU from fork to exit (``wait4``) and of the part after the hand-over (the request's path);
  and the server CPU a request costs more under ``request`` than under ``os``;
* memory: ``Rss``, ``Pss`` and private memory of the spare children (``smaps_rollup``);
* leaks: processes under the server and descriptors of its workers, before and after 10,000
  requests (``--quick``: 300), once the server is idle again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ._common import (
    MIN_ROUNDS,
    PYTHON,
    ROOT,
    ProcessTreeCPU,
    Row,
    Target,
    child_env,
    children_of,
    free_port,
    make_hello_app,
    median,
    paired_row,
    percentile,
    progress,
    schedule,
    value_row,
)

ISOLATIONS = ("none", "os", "request")
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
CLIENT_THREADS = 8
LATENCY_GAP = 0.01  # seconds between the requests of the latency rounds


def _one(port: int) -> bool:
    """One GET on a fresh connection, read to the end; whether it was a 200."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(REQUEST)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.startswith(b"HTTP/1.1 200")


class _Server:
    """``gae-sandbox serve`` in its own process; its log (but the per-request lines) is kept
    from a pipe."""

    def __init__(self, isolation: str, app_dir: str) -> None:
        self.isolation = isolation
        self.port = free_port()
        self.process = subprocess.Popen(
            [PYTHON, "-m", "gae_sandbox", "serve", app_dir, "--port", str(self.port),
             "--server", "gunicorn", "--workers", "2", "--threads", "8", "--isolation",
             isolation], cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.cpu = ProcessTreeCPU(self.process.pid)
        self.lines: list[str] = []
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if _one(self.port) and len(self.workers()) == 2:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"fig9: --isolation {isolation} did not start:\n"
                                   f"{self.log[-3000:]}")
            time.sleep(0.1)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if b" gae_sandbox.devserver: " not in line:  # not the one line per request
                self.lines.append(line.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def workers(self) -> list[int]:
        return children_of(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(60)
        self._drain.join(timeout=10)


class _Client:
    """The load generator: one process for the whole figure, driven line by line."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.fig9_request_isolation", "client"], cwd=ROOT,
            env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, *words: object) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"fig9 client exited with {self.process.wait(10)}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def load(port: int, count: int, threads: int = CLIENT_THREADS) -> dict[str, float]:
    """``count`` requests over ``threads`` threads, each on fresh connections."""
    lock = threading.Lock()
    left = [count]
    done = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        start.wait()
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                if _one(port):
                    done[index] += 1
                else:
                    errors[index] += 1
            except OSError:
                errors[index] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    started = time.perf_counter()
    start.wait()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    return {"requests": sum(done), "errors": sum(errors), "rps": sum(done) / elapsed}


def latency(port: int, count: int, gap: float) -> dict[str, list[float]]:
    """``count`` requests one at a time, ``gap`` seconds apart: wall-clock ms of each."""
    samples = []
    for _ in range(count):
        time.sleep(gap)
        started = time.perf_counter()
        if not _one(port):
            raise RuntimeError("fig9: a latency request failed")
        samples.append((time.perf_counter() - started) * 1e3)
    return {"ms": samples}


def _memory(pid: int) -> dict[str, float]:
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                name, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    values[name] = int(rest.split()[0])
    except OSError:
        return {}
    return {"rss": values.get("Rss", 0), "pss": values.get("Pss", 0),
            "private": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)}


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _settled(server: _Server) -> tuple[int, int]:
    """(processes, worker descriptors) once two readings 0.2 s apart agree."""
    previous = (-1, -1)
    for _ in range(150):
        workers = server.workers()
        now = (len(workers) + sum(len(children_of(w)) for w in workers),
               sum(_fds(w) for w in workers))
        if now == previous:
            return now
        previous = now
        time.sleep(0.2)
    return previous


def run(quick: bool) -> list[Row]:
    rounds = MIN_ROUNDS if quick else 12
    count = 200 if quick else 600
    samples = 60 if quick else 150
    leak_count = 300 if quick else 10000  # --quick: under a minute for the whole suite
    app_dir = make_hello_app("gae_sandbox_bench_fig9_")
    client = _Client()
    per: dict[str, list[dict[str, Any]]] = {name: [] for name in ISOLATIONS}
    memory: list[dict[str, float]] = []
    try:
        progress(f"fig9: --isolation none, os and request, {rounds} rounds of {count} "
                 f"requests and {samples} one at a time")
        servers = {name: _Server(name, app_dir) for name in ISOLATIONS}
        try:
            for server in servers.values():  # warm-up
                client.ask("load", server.port, count // 2)
            for _, name in schedule(rounds, ISOLATIONS):
                server = servers[name]
                before = server.cpu.read()
                result = client.ask("load", server.port, count)
                spent = server.cpu.delta_ns(before, server.cpu.read())
                if result["errors"]:
                    progress(f"fig9 --isolation {name}: {result['errors']} errors")
                time.sleep(0.5)  # the load's last children exit, the spares are forked again
                ms = client.ask("latency", server.port, samples, LATENCY_GAP)["ms"]
                requests = max(result["requests"], 1)
                per[name].append({
                    "per_cpu_s": requests / (spent / 1e9) if spent > 0 else float("nan"),
                    "cpu_ms": spent / 1e6 / requests, "rps": result["rps"],
                    "p50": percentile(ms, 50), "p99": percentile(ms, 99)})
            spares = [pid for worker in servers["request"].workers()
                      for pid in children_of(worker)]
            memory = [m for m in (_memory(pid) for pid in spares) if m]
        finally:
            for server in servers.values():
                server.stop()
        # each worker's exit line: CPU per request (medians) of fork, child, path
        totals = [tuple(float(x) for x in found) for found in re.findall(
            r"fork ([\d.]+) ms in the worker, ([\d.]+) ms in the child, ([\d.]+) ms of it "
            r"after the hand-over", servers["request"].log)]

        progress(f"fig9: --isolation request, {leak_count:,} requests, then processes and "
                 "descriptors")
        server = _Server("request", app_dir)
        try:
            before_leak = _settled(server)
            started = time.perf_counter()
            result = client.ask("load", server.port, leak_count)
            leak_seconds = time.perf_counter() - started
            after_leak = _settled(server)
        finally:
            server.stop()
    finally:
        client.close()
        shutil.rmtree(app_dir, ignore_errors=True)

    def values(name: str, key: str) -> list[float]:
        return [r[key] for r in per[name]]

    def rps(name: str) -> str:
        return f"req/s {median(values(name, 'rps')):,.0f} vs {median(values('none', 'rps')):,.0f}"

    rows = [
        # 300 req/s on 2 cores is 150 requests per CPU-second of the server, the client and
        # the machine's other tenants left out
        value_row("9", "hello, 2 workers, --isolation request", unit="req/CPU-s",
                  values=values("request", "per_cpu_s"),
                  target=Target(">=", 150, "req/CPU-s", on="value"),
                  baseline_name="--isolation none", baseline=values("none", "per_cpu_s"),
                  note=f"300 req/s on 2 cores = 150 per server CPU-second; server CPU "
                       f"{median(values('request', 'cpu_ms')):.2f} vs "
                       f"{median(values('none', 'cpu_ms')):.2f} ms/request; fresh "
                       "connections in both", also=rps("request")),
        paired_row("9", "hello, 2 workers, --isolation os", unit="req/CPU-s",
                   baseline_name="--isolation none", baseline=values("none", "per_cpu_s"),
                   candidate=values("os", "per_cpu_s"), target=None, also=rps("os")),
    ]
    for name, target in (("request", Target("<=", 2, "ms", on="value")), ("os", None)):
        added = [r["p50"] - n["p50"] for r, n in zip(per[name], per["none"], strict=True)]
        added99 = [r["p99"] - n["p99"] for r, n in zip(per[name], per["none"], strict=True)]
        rows.append(value_row("9", f"p50 latency added, --isolation {name}", unit="ms",
                              values=added, target=target, baseline_name="none p50",
                              baseline=values("none", "p50"),
                              note=f"one request every {LATENCY_GAP * 1e3:g} ms, wall clock",
                              also=f"p50 {median(values(name, 'p50')):.2f} ms"))
        rows.append(value_row("9", f"p99 latency added, --isolation {name}", unit="ms",
                              values=added99, target=None, baseline_name="none p99",
                              baseline=values("none", "p99"),
                              also=f"p99 {median(values(name, 'p99')):.2f} ms"))
    added_cpu = [r - o for r, o in zip(values("request", "cpu_ms"), values("os", "cpu_ms"),
                                       strict=True)]
    rows.append(value_row("9", "server CPU per request, request - os", unit="ms",
                          values=added_cpu, target=None,
                          note="fork, the child's setup and copied pages, its exit"))
    if totals:
        for index, label, note in (
                (0, "fork(), the worker's CPU per request", "median per worker (exit log)"),
                (1, "a child's CPU, fork to exit", "median per worker (wait4)"),
                (2, "a child's CPU after the hand-over", "on the request's path: parse, app, "
                                                     "response (median per worker)")):
            rows.append(value_row("9", label, unit="ms", values=[t[index] for t in totals],
                                  target=None, note=note))
    for key, label in (("rss", "Rss"), ("pss", "Pss"), ("private", "private")):
        if memory:
            rows.append(value_row("9", f"memory per spare child: {label}", unit="MiB",
                                  values=[m[key] for m in memory], target=None,
                                  scale=1 / 1024))
    processes = after_leak[0] - before_leak[0]
    descriptors = after_leak[1] - before_leak[1]
    rows.append(value_row("9", f"processes + descriptors left after {leak_count:,} requests",
                          unit="", values=[processes + descriptors],
                          target=Target("<=", 0, "", on="value"),
                          note=f"{processes} processes, {descriptors} descriptors; "
                               f"{result['errors']} errors",
                          also=f"req/s {leak_count / leak_seconds:,.0f}"))
    return rows


def _serve_client() -> None:
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "load":
            out: dict[str, Any] = load(int(words[1]), int(words[2]))
        else:
            out = latency(int(words[1]), int(words[2]), float(words[3]))
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        _serve_client()
