"""Figure 8: the price of OS-level confinement (``serve --isolation os``).

Throughput: ``gae-sandbox serve`` with gunicorn, 2 gthread workers, a hello-world app.yaml app,
``--isolation os`` against ``--isolation none`` (the same server, in-process sandbox only). Both
servers run at once; fig5's load client (8 keep-alive connections, another process) sends a
fixed number of requests to one at a time, alternating over rounds, and the figure is requests
per CPU-second of the server (arbiter and workers, from ``/proc``), as a paired ratio per
round; requests per wall-clock second are the second column.

Worker start: in a child process, the CPU time of ``confine_process`` itself, and the CPU time
of a fork whose child confines itself and exits (the parent's CPU plus the child's, from
``wait4``) against one whose child only exits, alternating.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from ._common import (
    MIN_ROUNDS,
    PYTHON,
    ROOT,
    ProcessTreeCPU,
    Row,
    Target,
    alternate,
    child_env,
    cpu_ns,
    free_port,
    make_hello_app,
    paired_row,
    progress,
    schedule,
    value_row,
)
from .fig5_wsgi import LoadClient, measure_round, throughput_rows


def _wait_serving(port: int, server: subprocess.Popen) -> None:
    import http.client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"fig8: server exited with {server.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/")
            ok = connection.getresponse().status == 200
            connection.close()
            if ok:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("fig8: server did not start")


class _Server:
    def __init__(self, isolation: str, app_dir: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [PYTHON, "-m", "gae_sandbox", "serve", app_dir, "--port", str(self.port),
             "--server", "gunicorn", "--workers", "2", "--isolation", isolation],
            cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.cpu = ProcessTreeCPU(self.process.pid)
        try:
            _wait_serving(self.port, self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)


def child(samples: int) -> dict[str, list[float]]:
    """Fork ``samples`` children each way, alternating; CPU ns per fork."""
    from gae_sandbox import Policy, confine_process

    policy = Policy.python27(app_root=make_hello_app("gae_sandbox_bench_fig8_"))
    out: dict[str, list[float]] = {"plain": [], "confined": [], "confine": []}
    for _, arm in schedule(samples, ("plain", "confined")):
        reader, writer = os.pipe()
        t0 = cpu_ns()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if arm == "confined":
                    c0 = cpu_ns()
                    confine_process(policy)
                    os.write(writer, str(cpu_ns() - c0).encode())
            except BaseException:
                code = 1
            os._exit(code)
        os.close(writer)
        _, status, usage = os.wait4(pid, 0)
        spent = cpu_ns() - t0 + (usage.ru_utime + usage.ru_stime) * 1e9
        data = os.read(reader, 64)
        os.close(reader)
        if status != 0:
            raise RuntimeError("fig8: a confined child failed")
        out[arm].append(spent)
        if arm == "confined":
            out["confine"].append(float(data))
    shutil.rmtree(policy.app_root, ignore_errors=True)
    return out


def run(quick: bool) -> list[Row]:
    app_dir = make_hello_app("gae_sandbox_bench_fig8_")
    rounds = MIN_ROUNDS if quick else 12
    count = 400 if quick else 2000
    rows = []
    client = LoadClient()
    try:
        progress(f"fig8: gunicorn --isolation none and os, {rounds} rounds of {count} requests")
        servers = {isolation: _Server(isolation, app_dir) for isolation in ("none", "os")}
        try:
            per: dict[str, list[dict[str, float]]] = {"none": [], "os": []}

            def arm(isolation: str) -> float:
                server = servers[isolation]
                result = measure_round(client, server.port, server.cpu, count,
                                       f"fig8 --isolation {isolation}")
                per[isolation].append(result)
                return result["per_cpu_s"]

            for server in servers.values():  # warm-up: every worker thread started
                client.load(server.port, 3 * count)
            alternate({"none": lambda: arm("none"), "os": lambda: arm("os")}, rounds, warmup=0)
        finally:
            for server in servers.values():
                server.stop()
        rows.append(throughput_rows("8", "gunicorn 2 workers, hello app, --isolation os",
                                    "--isolation none", per, "none", "os",
                                    Target(">=", 0.95), note="server = arbiter + workers"))
    finally:
        client.close()
        shutil.rmtree(app_dir, ignore_errors=True)

    progress("fig8: worker start, fork + confine_process")
    proc = subprocess.run([PYTHON, "-m", "benchmarks.fig8_isolation", "child",
                           str(MIN_ROUNDS * 2) if quick else "60"], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"fig8 child failed:\n{proc.stderr[-3000:]}")
    start = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append(value_row("8", "confine_process() in a fresh fork", unit="ms",
                          values=start["confine"], target=None, scale=1e-6,
                          note="CPU of the call, in the child"))
    rows.append(paired_row("8", "fork + confine_process + exit", unit="ms",
                           baseline_name="fork + exit", baseline=start["plain"],
                           candidate=start["confined"], target=None, scale=1e-6,
                           note="CPU of parent + child (wait4)"))
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        print(json.dumps(child(int(sys.argv[2]))))
