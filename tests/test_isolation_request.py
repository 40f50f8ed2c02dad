"""A fresh confined process per request (``serve --isolation request``, ``gae_sandbox.worker``).

Each property is checked against a control where it does not hold: the same app and the same
requests under ``--isolation os`` (one confined worker serving every request), where what one
request leaves behind is seen by the next, and another request's socket is in reach. Servers
run on 127.0.0.1 in their own process and are always stopped; every wait is bounded.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gae_sandbox.confine import landlock_abi, seccomp_available
from loopback import Server, free_port

pytest.importorskip("gunicorn")

ABI = landlock_abi()
pytestmark = pytest.mark.skipif(
    ABI < 6 or not seccomp_available(),
    reason=f"needs Landlock ABI >= 6 (TCP rules, scopes) and seccomp; this kernel: ABI {ABI}, "
           f"seccomp {'yes' if seccomp_available() else 'no'}",
)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

APP = textwrap.dedent(
    """
    import json, os, threading, time
    import gae_sandbox

    COUNTER = 0
    KEPT = []


    def reply(start_response, body, status="200 OK"):
        data = body.encode()
        start_response(status, [("Content-Type", "text/plain"),
                                ("Content-Length", str(len(data)))])
        return [data]


    def app(environ, start_response):
        global COUNTER
        path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
        if path == "/hostile":  # everything a request can leave behind in its process
            json.dumps = lambda *args, **kwargs: "EVIL"
            import gc
            import gae_sandbox.audit as audit
            for table in (audit.HANDLERS, *gc.get_referents(audit.HANDLERS)):
                if isinstance(table, dict):  # behind a read-only view, if there is one
                    table.clear()  # the sandbox's audit checks
            COUNTER += 1
            gae_sandbox.start_background_thread(time.sleep, 3600)
            try:
                while True:
                    KEPT.append(bytes(32 << 20))
            except MemoryError:
                del KEPT[-2:]  # room for the rest of this request
            return reply(start_response, "left %d blocks" % len(KEPT))
        if path == "/state":  # what the next request sees
            import gae_sandbox.audit as audit
            try:
                bytes(256 << 20)
                memory = "ok"
            except MemoryError:
                memory = "MemoryError"
            return reply(start_response, repr({
                "json": json.dumps([1]), "counter": COUNTER, "checks": len(audit.HANDLERS),
                "threads": threading.active_count(), "kept": len(KEPT), "memory": memory,
                "pid": os.getpid()}))
        if path == "/loop":
            sum(range(10 ** 12))  # C code: nothing in-process interrupts it
        if path == "/lock":
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()  # never returns
        if path == "/started":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            write(b"partial ")
            sum(range(10 ** 12))
        if path == "/bomb":
            hog = []
            while True:
                hog.append(bytes(64 << 20))
        if path == "/hold":
            time.sleep(float(query or 1))
            return reply(start_response, "held")
        if path == "/steal":  # another request's connection, or the listening socket
            import socket
            found = []
            for fd in range(3, 256):
                try:
                    sock = socket.socket(fileno=os.dup(fd))
                except OSError:
                    continue
                try:
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                        found.append("listener")
                    elif sock.family in (socket.AF_INET, socket.AF_INET6) and (
                            sock.getpeername()[1] == int(query)):
                        sock.sendall(b"INJECTED")
                        found.append("victim")
                except OSError:
                    pass
                finally:
                    sock.close()
            return reply(start_response, ",".join(found) or "nothing")
        if path == "/violate":
            import ctypes  # a removed module: report mode records it and lets it through
            return reply(start_response, "imported")
        COUNTER += 1  # (os.getpid() answers -1 in enforce mode, as on the runtime)
        return reply(start_response, "call %d in pid %d" % (COUNTER, os.getpid()))
    """
)


def make_app(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                     "handlers:\n- url: /.*\n  script: main.app\n")
    (folder / "main.py").write_text(APP)
    return folder


def start(app: Path, log: Path, *flags: str) -> Server:
    """``gae-sandbox serve`` with gunicorn, once a worker answers."""
    server = Server(app, *flags, log=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if request(server.port, "/")[0] == 200:
                return server
        except OSError:
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            output = server.stop()
            raise AssertionError(f"server did not start:\n{output}")
        time.sleep(0.1)


def request(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request on its own connection: (status, body) from the raw bytes read
    until the server closes; status 0 when it closed without a status line."""
    raw = raw_request(port, path, timeout)
    match = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return (int(match.group(1)) if match else 0), raw.partition(b"\r\n\r\n")[2]


def raw_request(port: int, path: str, timeout: float = 30.0,
                opened: list[socket.socket] | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if opened is not None:
            opened.append(sock)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def state(port: int) -> dict[str, object]:
    status, body = request(port, "/state")
    assert status == 200, body
    return ast.literal_eval(body.decode())


def worker_pid(log: Path) -> int:
    found = re.findall(r"worker (\d+) confined", log.read_text(errors="replace"))
    assert found, log.read_text()
    return int(found[-1])


def counts(pid: int) -> tuple[int, int]:
    """(open descriptors, child processes) of a process, from /proc."""
    children = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            children += len(file.read().split())
    return len(os.listdir(f"/proc/{pid}/fd")), children


#: report mode: the in-process layer records the hostile requests' operations and lets them
#: through (reaching into gae_sandbox's own modules is refused in enforce mode), so what
#: they leave behind is up to the process boundary
FLAGS = ("--server", "gunicorn", "--workers", "1", "--mode", "report",
         "--allow-background-threads", "--memory-limit", "768", "--deadline", "1",
         "--hard-deadline-grace", "1")


@pytest.fixture(scope="module")
def per_request(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """One ``--isolation request`` server for the tests that share it."""
    folder = tmp_path_factory.mktemp("per_request")
    log = folder / "serve.log"
    server = start(make_app(folder / "app"), log, "--isolation", "request", "--threads", "4",
                   *FLAGS)
    try:
        yield server, log
    finally:
        server.stop()


# -- nothing a request does reaches the next one --------------------------------------------


def test_a_hostile_request_leaves_nothing_for_the_next(per_request: tuple[Server, Path]
                                                       ) -> None:
    server, _ = per_request
    before = state(server.port)
    status, body = request(server.port, "/hostile")
    assert status == 200 and body.startswith(b"left "), body
    after = state(server.port)
    assert after["pid"] != before["pid"]  # a new process
    assert {k: v for k, v in after.items() if k != "pid"} == {
        k: v for k, v in before.items() if k != "pid"}
    assert after["json"] == "[1]" and after["counter"] == 0 and after["kept"] == 0
    assert after["checks"] > 0 and after["memory"] == "ok"


def test_control_under_isolation_os_the_next_request_sees_it_all(tmp_path: Path) -> None:
    """The same requests, one confined worker serving both: everything stays."""
    server = start(make_app(tmp_path / "app"), tmp_path / "serve.log", "--isolation", "os",
                   "--threads", "1", *FLAGS)
    try:
        before = state(server.port)
        assert request(server.port, "/hostile")[0] == 200
        after = state(server.port)
    finally:
        server.stop()
    assert after["pid"] == before["pid"]
    assert after["json"] == "EVIL" and after["checks"] == 0
    assert after["counter"] == before["counter"] + 1  # type: ignore[operator]
    assert after["threads"] == before["threads"] + 1  # type: ignore[operator]
    assert after["kept"] and after["memory"] == "MemoryError"


# -- a request cannot reach another request's socket ---------------------------------------


def _steal_while_held(port: int) -> tuple[bytes, bytes]:
    """Request A holds its connection for 1.5 s; meanwhile request B looks for A's socket
    (by its client port) and for the listening socket. Returns (A's raw response, B's body)."""
    opened: list[socket.socket] = []
    result: dict[str, bytes] = {}
    holder = threading.Thread(
        target=lambda: result.setdefault("a", raw_request(port, "/hold?1.5", opened=opened)))
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while not opened and time.monotonic() < deadline:
            time.sleep(0.01)
        assert opened, "request A did not connect"
        time.sleep(0.4)  # A is being served
        status, body = request(port, f"/steal?{opened[0].getsockname()[1]}")
        assert status == 200, body
    finally:
        holder.join(timeout=30)
    return result.get("a", b""), body


@pytest.mark.parametrize("isolation", ["request", "os"])
def test_a_request_cannot_reach_another_requests_socket(isolation: str, tmp_path: Path) -> None:
    # report mode: the in-process layer lets the descriptor tricks through, the OS decides
    server = start(make_app(tmp_path / "app"), tmp_path / "serve.log", "--isolation",
                   isolation, "--server", "gunicorn", "--workers", "1", "--threads", "2",
                   "--mode", "report")
    try:
        victim, thief = _steal_while_held(server.port)
    finally:
        server.stop()
    if isolation == "request":
        assert thief == b"nothing"
        assert victim.startswith(b"HTTP/1.1 200") and victim.endswith(b"held"), victim
    else:  # control: one process holds every connection and the listening socket
        assert set(thief.decode().split(",")) == {"listener", "victim"}
        assert b"INJECTED" in victim


# -- the hard deadline kills one child, not the worker ----------------------------------


def test_a_stuck_request_is_killed_at_deadline_plus_grace(per_request: tuple[Server, Path]
                                                          ) -> None:
    server, log = per_request
    worker = worker_pid(log)
    results: dict[str, bytes] = {}

    def call(path: str) -> None:
        results[path] = raw_request(server.port, path)

    threads = [threading.Thread(target=call, args=(path,))
               for path in ("/loop", "/lock", "/started", "/bomb")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for path in ("/loop", "/lock"):  # killed at 1 s + 1 s: 500, the response not begun
        assert results[path].startswith(b"HTTP/1.1 500"), results
    raw = results["/started"]  # begun: cut, not 500
    assert raw.startswith(b"HTTP/1.1 200") and b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # no last chunk
    assert results["/bomb"].startswith(b"HTTP/1.1 500")  # MemoryError at RLIMIT_AS
    assert state(server.port)["memory"] == "ok"
    assert worker_pid(log) == worker  # the same worker serves on
    text = log.read_text(errors="replace")
    killed = (r'killed at its hard deadline \([\d.]+ s; deadline 1 s \+ grace 1 s\): answered '
              r"500")
    assert re.search(rf'request "GET /lock" from 127\.0\.0\.1:\d+ \(child \d+\) {killed}',
                     text), text
    # the C loop burns CPU as fast as time passes: its CPU limit (deadline + grace) and the
    # worker's kill at deadline + grace race; either ends it with a 500, both are logged
    assert re.search(r'request "GET /loop" from 127\.0\.0\.1:\d+ \(child \d+\) '
                     rf"(?:{killed}|ended abnormally after [\d.]+ s \(SIGXCPU: its CPU time "
                     r"limit\): answered 500)", text), text
    # the same C loop after the response began: the same race, the connection cut either way
    assert re.search(r'request "GET /started" .* (?:killed at its hard deadline|ended '
                     r"abnormally after [\d.]+ s \(SIGXCPU: its CPU time limit\)).*: "
                     r"connection closed \(the response had started\)", text), text


def test_no_process_or_descriptor_left_after_many_requests(per_request: tuple[Server, Path]
                                                           ) -> None:
    server, log = per_request
    worker = worker_pid(log)

    def settled() -> tuple[int, int]:
        deadline = time.monotonic() + 10
        previous = counts(worker)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = counts(worker)
            if now == previous:
                return now
            previous = now
        return previous

    baseline = settled()
    statuses = {}
    for number in range(300):
        path = ("/", "/state", "/bomb", "/nope.txt")[number % 4]
        status = request(server.port, path)[0]
        statuses[status] = statuses.get(status, 0) + 1
    assert statuses == {200: 225, 500: 75}, statuses
    assert settled() == baseline  # the spare child, and the worker's own descriptors


# -- queue, shutdown, report mode ---------------------------------------------------------


def test_full_queue_answers_503_and_sigterm_finishes_running_requests(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server = start(make_app(tmp_path / "app"), log, "--isolation", "request", "--server",
                   "gunicorn", "--workers", "1", "--threads", "1", "--queue", "1",
                   "--deadline", "10")
    try:
        results: list[int] = []
        first = threading.Thread(target=lambda: results.append(request(server.port,
                                                                        "/hold?1.5")[0]))
        first.start()
        time.sleep(0.4)
        others = [threading.Thread(target=lambda: results.append(
            request(server.port, "/hold?0.1")[0])) for _ in range(3)]
        for thread in others:
            thread.start()
        for thread in [first, *others]:
            thread.join(timeout=30)
        assert sorted(results) == [200, 200, 503, 503], results  # one ran, one waited

        running: list[int] = []
        last = threading.Thread(target=lambda: running.append(request(server.port,
                                                                      "/hold?1.5")[0]))
        last.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        last.join(timeout=30)
        assert running == [200]  # finished, not cut
        assert server.process.wait(timeout=30) == 0
    finally:
        output = server.stop()
    assert "answered 503" in output
    assert re.search(r"worker \d+: \d+ request\(s\) in their own process", output), output


def test_report_mode_merges_every_childs_records(tmp_path: Path) -> None:
    report = tmp_path / "violations.json"
    server = start(make_app(tmp_path / "app"), tmp_path / "serve.log", "--isolation",
                   "request", "--server", "gunicorn", "--workers", "2", "--mode", "report",
                   "--report", str(report))
    try:
        pids = set()
        for _ in range(3):
            status, body = request(server.port, "/violate")
            assert (status, body) == (200, b"imported")
            status, body = request(server.port, "/")
            assert status == 200 and body.startswith(b"call 1 in pid ")
            pids.add(body)
    finally:
        output = server.stop()
    assert len(pids) == 3  # three processes
    violations = json.loads(report.read_text())["violations"]
    imports = [v for v in violations if v["target"] == "ctypes"]
    assert len(imports) == 1 and imports[0]["count"] == 3, violations
    assert "ctypes" in output  # the summary at exit


# -- the examples, and gunicorn used directly ------------------------------------------------


def test_guestbook_example(tmp_path: Path) -> None:
    import shutil

    app = tmp_path / "guestbook"
    shutil.copytree(EXAMPLES / "guestbook", app,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "entries.log"))
    server = start(app, tmp_path / "serve.log", "--isolation", "request", "--health-path",
                   "/_ah/health")
    try:
        status, body = request(server.port, "/")
        assert status == 200 and b"The gae_sandbox guestbook" in body
        assert request(server.port, "/_ah/health") == (200, b"ok\n")  # not the app's 404
        status, body = request(server.port, "/static/style.css")
        assert status == 200 and b"blockquote" in body
        connection = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        with connection:
            connection.sendall(b"POST /sign HTTP/1.1\r\nHost: t\r\nContent-Type: application/"
                               b"x-www-form-urlencoded\r\nContent-Length: 13\r\n\r\n"
                               b"content=hello")
            assert connection.recv(65536).startswith(b"HTTP/1.1 500")  # the write is refused
        # its in-memory list lived in that request's process only
        assert b"hello" not in request(server.port, "/")[1]
    finally:
        output = server.stop()
    assert not (app / "entries.log").exists()
    assert "FileWriteRefused" in output and "a confined process per request" in output


def test_gunicorn_worker_class_used_directly(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    (tmp_path / "wsgi.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(app)!r})
        from gae_sandbox import Policy, SandboxMiddleware
        from main import app
        application = SandboxMiddleware(app, Policy.python27(app_root={str(app)!r}))
    """))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gae_sandbox.worker.RequestWorker",
         "--threads", "2", "-b", f"127.0.0.1:{port}", "--chdir", str(tmp_path), "wsgi:application"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # a pipe: confined workers log
    output: list[bytes] = []
    drain = threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True)
    drain.start()
    try:
        deadline = time.monotonic() + 60
        bodies = []
        while len(bodies) < 2:
            assert process.poll() is None and time.monotonic() < deadline, b"".join(output)
            try:
                status, body = request(port, "/")
            except OSError:
                time.sleep(0.1)
                continue
            assert status == 200, body
            bodies.append(body)
        assert bodies == [b"call 1 in pid -1"] * 2  # in one process: calls 1 and 2
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        drain.join(timeout=10)
    text = b"".join(output).decode(errors="replace")
    assert "a confined child per request" in text and "imported before confinement" in text


# -- the kernel layers of the child -------------------------------------------------------

LAYERS = textwrap.dedent(
    """
    import os, resource, signal, sys
    from gae_sandbox import Policy, confine_process
    from gae_sandbox.confine import confine_child
    confine_process(Policy.python27(app_root=sys.argv[1]), fork=True)
    layered = sys.argv[2] == "1"
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        if layered:
            confine_child(cpu_seconds=30)
        out = []
        try:
            grandchild = os.fork()
            if grandchild == 0:
                os._exit(0)
            os.waitpid(grandchild, 0)
            out.append("forked")
        except OSError as error:
            out.append("fork %d" % error.errno)
        try:
            os.kill(os.getppid(), 0)
            out.append("signalled the worker")
        except OSError as error:
            out.append("kill %d" % error.errno)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (3600, 3600))
            out.append("set its CPU limit")
        except (OSError, ValueError):
            out.append("rlimit refused")
        os.write(writer, ";".join(out).encode())
        os._exit(0)
    os.close(writer)
    print(os.read(reader, 1000).decode())
    os.waitpid(pid, 0)
    victim = os.fork()
    if victim == 0:
        if layered:
            confine_child()
        signal.pause()
        os._exit(0)
    os.kill(victim, signal.SIGKILL)  # the worker may kill its child
    print("killed by", os.WTERMSIG(os.waitpid(victim, 0)[1]))
    """
)


@pytest.mark.parametrize("layered", [True, False])
def test_child_layer_refuses_processes_signals_and_rlimits(layered: bool, tmp_path: Path
                                                           ) -> None:
    completed = subprocess.run([sys.executable, "-c", LAYERS, str(tmp_path), str(int(layered))],
                               capture_output=True, text=True, timeout=60)
    lines = completed.stdout.splitlines()
    assert completed.returncode == 0 and len(lines) == 2, completed.stderr
    if layered:
        assert lines[0] == "fork 1;kill 1;rlimit refused"
    else:  # control: the worker's own layer lets its child do all three
        assert lines[0] == "forked;signalled the worker;set its CPU limit"
    assert lines[1] == f"killed by {signal.SIGKILL}"
