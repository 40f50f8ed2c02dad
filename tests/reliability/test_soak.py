"""A soak: thousands of mixed requests through the middleware, in this process.

Per-request state (scopes, contexts, deadlines in the timer's heap, thread registries,
violation records) must not pile up: resident memory and the thread count are compared
between the end of a warm-up window and the end of the run, with generous bounds.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gae_sandbox.sandbox as sandbox_module
from gae_sandbox import Policy, SandboxMiddleware
from gae_sandbox.deadline import TIMER

WARMUP = 1_000
REQUESTS = 24_000
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def os_threads() -> int:
    """Threads the kernel sees (``_thread`` threads too, which threading does not list)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def serve(middleware: SandboxMiddleware, path: str) -> tuple[str, bytes]:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        statuses.append(status)
        return lambda data: None

    body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": path}, start_response)
    try:
        data = b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return statuses[-1], data


def spin_past_the_deadline() -> None:
    end = time.monotonic() + 5  # bounded; the 20 ms deadline ends it first
    while time.monotonic() < end:
        pass


def test_memory_and_threads_stay_flat(app_root: Path) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ["PATH_INFO"]
        if path == "/thread":
            seen: list[int] = []
            workers = [threading.Thread(target=seen.append, args=(n,)) for n in range(2)]
            for worker in workers:
                worker.start()
            body = [b"threads"]  # joined by the scope before the response goes out
        elif path == "/deadline":
            spin_past_the_deadline()
            body = [b"never"]
        elif path == "/refused":
            try:
                open(app_root / "written.txt", "w").close()
                body = [b"wrote"]
            except PermissionError:
                body = [b"refused"]
        else:
            with open(app_root / "data.txt", "rb") as f:
                body = [f.read()]
        start_response("200 OK", [("Content-Type", "text/plain")])
        if path == "/generator":
            return iter(body)
        return body

    fast = SandboxMiddleware(app, Policy.python27(app_root=app_root, deadline=30.0))
    short = SandboxMiddleware(app, Policy.python27(app_root=app_root, deadline=0.02,
                                                   hard_deadline_grace=1.0))
    expected = {"/plain": ("200 OK", b"app data\n"), "/generator": ("200 OK", b"app data\n"),
                "/thread": ("200 OK", b"threads"), "/refused": ("200 OK", b"refused"),
                "/deadline": ("500 Internal Server Error", b"500 Internal Server Error\n")}
    kinds = ["/plain", "/generator", "/thread", "/refused"]

    def request(n: int) -> None:
        if n % 200 == 199:
            path, result = "/deadline", serve(short, "/deadline")
        else:
            path = kinds[n % len(kinds)]
            result = serve(fast, path)
        assert result == expected[path], (n, path, result)

    scopes = sandbox_module.active_scope_count()
    python_threads = threading.active_count()
    for n in range(WARMUP):
        request(n)
    gc.collect()
    warm_rss, warm_threads = rss_bytes(), os_threads()
    for n in range(WARMUP, REQUESTS):
        request(n)
    gc.collect()
    end_rss = rss_bytes()
    settle = time.monotonic() + 5  # a joined thread may still be leaving the kernel
    while os_threads() > warm_threads and time.monotonic() < settle:
        time.sleep(0.01)
    end_threads = os_threads()

    growth = end_rss - warm_rss
    assert growth < 20 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over {REQUESTS - WARMUP}"
    assert end_threads <= warm_threads, (warm_threads, end_threads)
    # the deadline timer is the only thread the requests may have added for good
    assert threading.active_count() <= python_threads + 1
    assert sandbox_module.active_scope_count() == scopes
    with TIMER._lock:
        assert not [d for _, _, d in TIMER._heap if d.active]
    assert not (app_root / "written.txt").exists()
    # one record per distinct violation, however often it happened
    refused = sum(1 for n in range(REQUESTS) if n % 200 != 199 and n % 4 == 3)
    assert len(fast.violations) == 1 and fast.violations[0].count == refused
