"""Figure 1: the cost of entering and leaving a sandbox with an empty body.

Baselines, measured in the same rounds: entering and leaving a pyfakefs ``Patcher`` per
request (the usual in-process alternative), and a fresh ``python -c pass`` process per request
(process isolation). Everything is CPU time of this process (``process_time_ns``: the deadline
timer thread's share of a request counts), plus the child's user+system time for the process.

Also (for information): a hello-world WSGI request through ``SandboxMiddleware``, called
in-process with no server, against the bare app: the middleware's own path per request
(figure 5 has it under waitress, where the server's own work and the machine's noise add up).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from ._common import (
    MIN_ROUNDS,
    PYTHON,
    Row,
    Target,
    alternate,
    make_app_dir,
    paired_row,
    per_op_cpu,
    process_cpu_ns,
    progress,
    spawn_cpu_ns,
    value_row,
)


def run(quick: bool) -> list[Row]:
    from pyfakefs.fake_filesystem_unittest import Patcher

    from gae_sandbox import Policy, Sandbox, SandboxMiddleware

    rounds = MIN_ROUNDS if quick else 15
    batch, batches = (500, 3) if quick else (1000, 5)
    patchers = 5 if quick else 10
    processes = 1 if quick else 2
    app = make_app_dir()
    try:
        def entering(deadline: float | None) -> Callable[[], float]:
            sandbox = Sandbox(Policy.python27(app_root=app, deadline=deadline))

            def loop(n: int) -> None:
                for _ in range(n):
                    with sandbox:
                        pass

            return lambda: per_op_cpu(loop, batch, batches, clock=process_cpu_ns)

        def patcher(n: int) -> None:
            for _ in range(n):
                with Patcher():
                    pass

        def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            body = b"Hello, world!\n"
            start_response("200 OK", [("Content-Type", "text/plain"),
                                      ("Content-Length", str(len(body)))])
            return [body]

        def serving(app: Callable[..., Any]) -> Callable[[], float]:
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_SOFTWARE": "bench"}

            def start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
                return len

            def loop(n: int) -> None:
                for _ in range(n):
                    response = app(environ, start_response)
                    for _chunk in response:
                        pass
                    close = getattr(response, "close", None)
                    if close is not None:
                        close()

            return lambda: per_op_cpu(loop, batch, batches, clock=process_cpu_ns)

        middleware = SandboxMiddleware(hello, Policy.python27(app_root=app, deadline=60.0))

        def process() -> float:
            return sum(spawn_cpu_ns([PYTHON, "-c", "pass"]) for _ in range(processes)) / processes

        progress(f"fig1: {rounds} rounds of sandbox / Patcher / process")
        per = alternate({
            "None": entering(None),
            "60": entering(60.0),
            "patcher": lambda: per_op_cpu(patcher, patchers, 1, clock=process_cpu_ns),
            "process": process,
            "bare app": serving(hello),
            "middleware": serving(middleware),
        }, rounds)
    finally:
        shutil.rmtree(app, ignore_errors=True)

    us = 1e-3
    return [
        value_row("1", "sandbox enter+exit, deadline None", unit="us", values=per["None"],
                  target=None, scale=us, note="CPU per request; the target is for deadline 60"),
        value_row("1", "sandbox enter+exit, deadline 60", unit="us", values=per["60"],
                  target=Target("<=", 5.0, "us", on="value"), scale=us,
                  note="CPU per request, the runtime's 60 s deadline"),
        paired_row("1", "vs pyfakefs Patcher per request", unit="us",
                   baseline_name="Patcher enter+exit", baseline=per["patcher"],
                   candidate=per["60"], target=Target(">=", 150), invert=True, scale=us,
                   note="ratio = Patcher / sandbox (deadline 60), x cheaper"),
        paired_row("1", "vs `python -c pass` per request", unit="us",
                   baseline_name="process (parent + child CPU)", baseline=per["process"],
                   candidate=per["60"], target=Target(">=", 1000), invert=True, scale=us,
                   note="ratio = process / sandbox (deadline 60), x cheaper"),
        value_row("1", "SandboxMiddleware request, in-process", unit="us",
                  values=[m - b for m, b in zip(per["middleware"], per["bare app"],
                                                strict=True)],
                  target=None, scale=us,
                  note="CPU per hello-world request added by the middleware (no server), "
                       "per round: middleware minus the bare app"),
    ]
