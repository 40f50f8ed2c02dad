"""Figure 8: the price of OS-level confinement (``serve --isolation os``).

Throughput: ``gae-sandbox serve`` with gunicorn, 2 gthread workers, a hello-world app.yaml app,
``--isolation os`` against ``--isolation none`` (the same server, in-process sandbox only). The
load comes from fig5's client (8 keep-alive connections) in another process on loopback; cases
alternate and the figure is the median over rounds.

Worker start: in a child process, the time of ``confine_process`` itself, and the time from
``fork`` to the parent's ``waitpid`` for a child that confines itself and exits, against one
that only exits.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._common import PYTHON, ROOT, Row, child_env, median, progress

APP = """
def app(environ, start_response):
    body = b"Hello, world!\\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def _make_app() -> str:
    folder = tempfile.mkdtemp(prefix="gae_sandbox_bench_fig8_")
    Path(folder, "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                        "handlers:\n- url: /.*\n  script: main.app\n")
    Path(folder, "main.py").write_text(APP)
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def _measure(isolation: str, app_dir: str, seconds: float) -> float:
    port = _free_port()
    server = subprocess.Popen(
        [PYTHON, "-m", "gae_sandbox", "serve", app_dir, "--port", str(port), "--server",
         "gunicorn", "--workers", "2", "--isolation", isolation],
        cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_serving(port, server)
        client = [PYTHON, "-m", "benchmarks.fig5_wsgi", "client", str(port)]
        subprocess.run(client + ["0.5"], cwd=ROOT, env=child_env(), check=True,
                       capture_output=True)  # warm-up: both workers imported the app
        out = subprocess.run(client + [str(seconds)], cwd=ROOT, env=child_env(), check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        if result["errors"]:
            progress(f"fig8: {result['errors']} errors with --isolation {isolation}")
        return float(result["rps"])
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(20)


def child(samples: int) -> dict[str, float]:
    """Fork ``samples`` children each way; report medians in milliseconds."""
    from gae_sandbox import Policy, confine_process

    policy = Policy.python27(app_root=_make_app())
    plain, confined, inside = [], [], []
    for _ in range(samples):
        for confine in (False, True):
            reader, writer = os.pipe()
            started = time.perf_counter()
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    if confine:
                        t0 = time.perf_counter()
                        confine_process(policy)
                        os.write(writer, str(time.perf_counter() - t0).encode())
                except BaseException:
                    code = 1
                os._exit(code)
            os.close(writer)
            _, status = os.waitpid(pid, 0)
            elapsed = time.perf_counter() - started
            data = os.read(reader, 64)
            os.close(reader)
            if status != 0:
                raise RuntimeError("fig8: a confined child failed")
            if confine:
                confined.append(elapsed)
                inside.append(float(data))
            else:
                plain.append(elapsed)
    shutil.rmtree(policy.app_root, ignore_errors=True)
    return {"fork_ms": median(plain) * 1e3, "fork_confine_ms": median(confined) * 1e3,
            "confine_ms": median(inside) * 1e3}


def run(quick: bool) -> list[Row]:
    app_dir = _make_app()
    seconds = 1.5 if quick else 4.0
    rounds = 1 if quick else 3
    rows = []
    try:
        per: dict[str, list[float]] = {"none": [], "os": []}
        for r in range(rounds):
            for isolation in (("none", "os") if r % 2 == 0 else ("os", "none")):
                progress(f"fig8: --isolation {isolation}, round {r + 1}/{rounds}")
                per[isolation].append(_measure(isolation, app_dir, seconds))
        value, base = median(per["os"]), median(per["none"])
        rows.append(Row("8", "gunicorn 2 workers, hello app, --isolation os", value, "req/s",
                        "--isolation none", base, value / base, ">= 0.95x", value / base >= 0.95))
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)

    progress("fig8: worker start, fork + confine_process")
    proc = subprocess.run([PYTHON, "-m", "benchmarks.fig8_isolation", "child",
                           "20" if quick else "100"], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"fig8 child failed:\n{proc.stderr[-3000:]}")
    start = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append(Row("8", "confine_process() in a fresh fork", start["confine_ms"], "ms",
                    "-", None, None, "-", None))
    rows.append(Row("8", "fork + confine_process + exit", start["fork_confine_ms"], "ms",
                    "fork + exit", start["fork_ms"], start["fork_confine_ms"] / start["fork_ms"],
                    "-", None))
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        print(json.dumps(child(int(sys.argv[2]))))
