"""Figure 5: WSGI throughput under waitress (8 threads), with and without SandboxMiddleware.

The server runs in one child process, the load generator in another (``wrk`` if installed,
else a small Python client: N threads, one keep-alive ``http.client`` connection each, for a
fixed time). Cases alternate, and the figure is the median requests/s over rounds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

from ._common import PYTHON, ROOT, Row, child_env, make_app_dir, median, progress

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


def load(port: int, seconds: float, threads: int) -> dict[str, float]:
    import http.client

    counts = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start.wait()
        n = e = 0
        while time.perf_counter() < stop_at[0]:
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    n += 1
                else:
                    e += 1
            except OSError:
                e += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        counts[i], errors[i] = n, e
        conn.close()

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    return {"rps": sum(counts) / elapsed, "errors": sum(errors)}


def _measure(kind: str, mode: str, app_dir: str, seconds: float) -> float:
    server = subprocess.Popen(
        [PYTHON, "-m", "benchmarks.fig5_wsgi", "server", kind, mode, app_dir],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        if shutil.which("wrk"):
            out = subprocess.run(
                ["wrk", "-t2", f"-c{CLIENT_THREADS}", f"-d{max(1, round(seconds))}s",
                 f"http://127.0.0.1:{port}/"],
                capture_output=True, text=True, check=True,
            ).stdout
            return float(out.split("Requests/sec:")[1].split()[0])
        client = [PYTHON, "-m", "benchmarks.fig5_wsgi", "client", str(port)]
        subprocess.run(client + ["0.3"], cwd=ROOT, env=child_env(), check=True,
                       capture_output=True)  # warm-up
        out = subprocess.run(client + [str(seconds)], cwd=ROOT, env=child_env(), check=True,
                             capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        if result["errors"]:
            progress(f"fig5: {result['errors']} errors in {kind}/{mode}")
        return result["rps"]
    finally:
        server.terminate()
        server.wait(10)


def run(quick: bool) -> list[Row]:
    app_dir = make_app_dir()
    seconds = 1.5 if quick else 4.0
    rounds = 1 if quick else 3
    rows = []
    try:
        for kind in ("hello", "template"):
            per: dict[str, list[float]] = {"plain": [], "sandbox": []}
            for r in range(rounds):
                for mode in (("plain", "sandbox") if r % 2 == 0 else ("sandbox", "plain")):
                    progress(f"fig5: {kind} app, {mode}, round {r + 1}/{rounds}")
                    per[mode].append(_measure(kind, mode, app_dir, seconds))
            value, base = median(per["sandbox"]), median(per["plain"])
            rows.append(Row("5", f"waitress {kind} app + SandboxMiddleware", value, "req/s",
                            "waitress, no middleware", base, value / base, ">= 0.95x",
                            value / base >= 0.95))
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["server"]:
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1:2] == ["client"]:
        print(json.dumps(load(int(sys.argv[2]), float(sys.argv[3]), CLIENT_THREADS)))
