"""serve: run an app.yaml app under the sandbox (the development server).

Examples:
  gae-sandbox serve examples/guestbook
  gae-sandbox serve path/to/app.yaml --port 8080 --mode report --report violations.json
  gae-sandbox serve examples/flask_app --server gunicorn --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from typing import Any

from ..appyaml import AppYamlError, load_app_yaml
from ..devserver import DevServerApp
from ..report import Violation, format_summary, from_json_document, merge, to_json_document
from .common import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="APP_DIR_OR_APP_YAML",
                        help="the app's folder (holding app.yaml) or its app.yaml")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    parser.add_argument("--server", choices=("waitress", "gunicorn"), default="waitress",
                        help="waitress (threaded, in this process) or gunicorn (processes)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per process")
    parser.add_argument("--mode", choices=("enforce", "report"), default="enforce",
                        help="refuse violations, or let them through and report them")
    parser.add_argument("--report", metavar="FILE",
                        help="write every violation as JSON to FILE at exit")
    parser.add_argument("--deadline", type=float, default=None,
                        help="request deadline in seconds (default: app.yaml's runtime, 60)")


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number")
    if args.workers < 1 or args.threads < 1:
        raise UsageError("--workers and --threads must be at least 1")
    if args.deadline is not None and args.deadline <= 0:
        raise UsageError("--deadline must be a positive number of seconds")
    try:
        config = load_app_yaml(args.app)
    except AppYamlError as error:
        raise UsageError(str(error)) from None
    changes: dict[str, Any] = {"mode": args.mode}
    if args.deadline is not None:
        changes["deadline"] = args.deadline
    try:
        policy = config.policy(**changes)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{config.path}: {error}") from None
    if args.report:
        args.report = os.path.abspath(args.report)  # before the chdir below
    _configure_logging()
    os.chdir(config.app_root)  # the runtime ran apps in their own folder
    if args.server == "gunicorn":
        violations = _serve_gunicorn(config, policy, args)
    else:
        violations = _serve_waitress(config, policy, args)
    _finish_report(violations, args)
    return 0


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _serve_waitress(config: Any, policy: Any, args: argparse.Namespace) -> list[Violation]:
    from waitress.server import create_server

    app = DevServerApp(config, policy)
    try:
        server = create_server(app, host=args.host, port=args.port, threads=args.threads,
                               ident="gae-sandbox")
    except OSError as error:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    port = server.effective_port  # type: ignore[union-attr]
    print(f"gae-sandbox: serving {config.path} ({policy.mode} mode) at "
          f"http://{args.host}:{port}/ - Ctrl-C to stop", flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        print("gae-sandbox: stopped", flush=True)
    return app.violations


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _serve_gunicorn(config: Any, policy: Any, args: argparse.Namespace) -> list[Violation]:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise UsageError("--server gunicorn needs gunicorn: pip install 'gae-sandbox[gunicorn]'"
                         ) from None
    port = args.port or _free_port(args.host)
    spool = f"{args.report or os.path.join(os.getcwd(), '.gae-sandbox-report')}.workers"
    state: dict[str, Any] = {}

    def worker_exit(server: Any, worker: Any) -> None:
        app = state.get("app")
        if app is not None and app.violations:
            os.makedirs(spool, exist_ok=True)
            with open(os.path.join(spool, f"{os.getpid()}.json"), "w") as file:
                json.dump(to_json_document(app.violations), file)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", args.threads)
            self.cfg.set("worker_exit", worker_exit)
            self.cfg.set("graceful_timeout", 5)
            if policy.deadline:
                # the worker timeout is the hard deadline that kills
                self.cfg.set("timeout", int(policy.deadline + policy.hard_deadline_grace + 5))

        def load(self) -> Any:
            state["app"] = DevServerApp(config, policy)
            return state["app"]

    print(f"gae-sandbox: serving {config.path} ({policy.mode} mode) at "
          f"http://{args.host}:{port}/ with gunicorn, {args.workers} worker(s) - Ctrl-C to stop",
          flush=True)
    Server().run()
    violations: list[list[Violation]] = []
    if os.path.isdir(spool):
        for name in sorted(os.listdir(spool)):
            path = os.path.join(spool, name)
            try:
                with open(path) as file:
                    violations.append(from_json_document(json.load(file)))
            except (OSError, ValueError):
                pass
            os.remove(path)
        os.rmdir(spool)
    return merge(*violations)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _finish_report(violations: list[Violation], args: argparse.Namespace) -> None:
    if args.report:
        write_report(args.report, violations)
    if args.mode == "report" or args.report or violations:
        print(format_summary(violations), file=sys.stderr, flush=True)


def write_report(path: str, violations: list[Violation]) -> None:
    """Write the JSON report next to, never over, anything but a previous report."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(to_json_document(violations), file, indent=2)
        file.write("\n")
    os.replace(temporary, path)
