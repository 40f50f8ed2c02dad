"""Figure 5: WSGI throughput under waitress (8 threads), with and without SandboxMiddleware.

Both servers (the bare app and the app in the middleware) run at once, each in its own child
process; the load generator is a third process (8 threads, one keep-alive ``http.client``
connection each) that sends a fixed number of requests to one server at a time, alternating
between them over rounds. The figure is requests per CPU-second of the server process (its
CPU time over the round, read from ``/proc``: :class:`ProcessTreeCPU`), so the client and the
other tenants of the machine do not count; each round gives one ratio middleware/bare.
Requests per wall-clock second are printed as a second column.
"""

from __future__ import annotations

import json
import shutil
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
    alternate,
    child_env,
    make_app_dir,
    median,
    paired_ratios,
    paired_row,
    progress,
)

CLIENT_THREADS = 8

TEMPLATE = """<html><head><title>{{ title }}</title></head><body>
<h1>{{ title }}</h1><table>
{% for row in rows %}<tr><td>{{ row.id }}</td><td>{{ row.name|e }}</td>
<td>{{ "%.2f"|format(row.price) }}</td></tr>
{% endfor %}</table></body></html>"""


def make_app(kind: str):
    if kind == "hello":
        def hello(environ, start_response):
            body = b"Hello, world!\n"
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        return hello
    try:
        import jinja2

        template = jinja2.Template(TEMPLATE)
        render = template.render
    except ImportError:  # pragma: no cover
        import string

        simple = string.Template("<h1>$title</h1><table>$rows</table>")

        def render(title, rows):
            cells = "".join(f"<tr><td>{r['id']}</td><td>{r['name']}</td></tr>" for r in rows)
            return simple.substitute(title=title, rows=cells)

    def page(environ, start_response):
        rows = [{"id": i, "name": f"item <{i}>", "price": i * 1.25} for i in range(20)]
        body = render(title="Items", rows=rows).encode()
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return page


def serve(kind: str, mode: str, app_dir: str) -> None:
    import waitress

    app = make_app(kind)
    if mode == "sandbox":
        from gae_sandbox import Policy, SandboxMiddleware

        app = SandboxMiddleware(app, Policy.python27(app_root=app_dir))
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8)
    print(server.effective_port, flush=True)
    server.run()


def load(port: int, count: int, threads: int = CLIENT_THREADS) -> dict[str, float]:
    """``count`` GET requests over ``threads`` keep-alive connections."""
    import http.client

    lock = threading.Lock()
    left = [count]
    done = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        start.wait()
        while True:
            with lock:
                if left[0] <= 0:
                    break
                left[0] -= 1
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    done[i] += 1
                else:
                    errors[i] += 1
            except OSError:
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    return {"requests": sum(done), "errors": sum(errors), "seconds": elapsed,
            "rps": sum(done) / elapsed}


def client_loop() -> None:
    """The load generator process: one ``PORT COUNT`` line in, one JSON line out."""
    for line in sys.stdin:
        port, count = line.split()
        print(json.dumps(load(int(port), int(count))), flush=True)


class LoadClient:
    """The load generator, one process for the whole figure (its start-up is not paid per
    round); also used by figure 8."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.fig5_wsgi", "client"], cwd=ROOT, env=child_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def load(self, port: int, count: int) -> dict[str, float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{port} {count}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"load client exited with {self.process.wait(10)}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def measure_round(client: LoadClient, port: int, cpu: ProcessTreeCPU, count: int,
                  label: str) -> dict[str, float]:
    """One round of one server: ``count`` requests; the server's CPU over them."""
    before = cpu.read()
    result = client.load(port, count)
    spent = cpu.delta_ns(before, cpu.read())
    if result["errors"]:
        progress(f"{label}: {result['errors']} errors")
    requests = max(result["requests"], 1)
    return {"per_cpu_s": requests / (spent / 1e9) if spent > 0 else float("nan"),
            "cpu_us": spent / 1e3 / requests, "rps": result["rps"], "exact": cpu.last_exact}


def throughput_rows(figure: str, measure: str, baseline_name: str,
                    per: dict[str, list[dict[str, float]]], base: str, cand: str,
                    target: Target | None, note: str = "") -> Row:
    """A row of requests per server CPU-second (paired ratios per round), with requests per
    wall-clock second as the second column."""
    rps_base = [r["rps"] for r in per[base]]
    rps_cand = [r["rps"] for r in per[cand]]
    rps_ratio = median(paired_ratios(rps_base, rps_cand))
    cpu_us = median([r["cpu_us"] for r in per[cand]])
    base_us = median([r["cpu_us"] for r in per[base]])
    exact = sum(1 for arm in (base, cand) for r in per[arm] if r["exact"])
    total = len(per[base]) + len(per[cand])
    clock = ("per-thread schedstat" if exact == total else
             f"schedstat in {exact} of {total} readings, utime+stime ticks in the others")
    text = f"server CPU {cpu_us:.0f} vs {base_us:.0f} us/request ({clock})"
    return paired_row(figure, measure, unit="req/CPU-s", baseline_name=baseline_name,
                      baseline=[r["per_cpu_s"] for r in per[base]],
                      candidate=[r["per_cpu_s"] for r in per[cand]], target=target,
                      note=f"{text}; {note}" if note else text,
                      also=f"req/s {median(rps_cand):,.0f} vs {median(rps_base):,.0f} "
                           f"({rps_ratio:.3g}x)")


class Server:
    """``python -m benchmarks.fig5_wsgi server KIND MODE APP_DIR``."""

    def __init__(self, kind: str, mode: str, app_dir: str) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.fig5_wsgi", "server", kind, mode, app_dir],
            cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        self.cpu = ProcessTreeCPU(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def run(quick: bool) -> list[Row]:
    app_dir = make_app_dir()
    rounds = MIN_ROUNDS if quick else 12
    count = 400 if quick else 2000
    rows = []
    client = LoadClient()
    try:
        for kind in ("hello", "template"):
            progress(f"fig5: {kind} app, {rounds} rounds of {count} requests per server")
            servers = {mode: Server(kind, mode, app_dir) for mode in ("plain", "sandbox")}
            try:
                per: dict[str, list[dict[str, Any]]] = {"plain": [], "sandbox": []}

                def arm(mode: str, per=per, servers=servers, kind=kind) -> float:
                    server = servers[mode]
                    result = measure_round(client, server.port, server.cpu, count,
                                           f"fig5 {kind}/{mode}")
                    per[mode].append(result)
                    return result["per_cpu_s"]

                for server in servers.values():  # warm-up: every thread started
                    client.load(server.port, 2 * count)
                alternate({"plain": lambda: arm("plain"), "sandbox": lambda: arm("sandbox")},
                          rounds, warmup=0)
            finally:
                for server in servers.values():
                    server.stop()
            rows.append(throughput_rows("5", f"waitress {kind} app + SandboxMiddleware",
                                        "waitress, no middleware", per, "plain", "sandbox",
                                        Target(">=", 0.95)))
    finally:
        client.close()
        shutil.rmtree(app_dir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1:2] == ["client"]:
        client_loop()
