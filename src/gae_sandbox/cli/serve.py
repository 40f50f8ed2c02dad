"""serve: run an app.yaml app under the sandbox (the development server).

Examples:
  gae-sandbox serve examples/guestbook
  gae-sandbox serve examples/guestbook --allow-host api.example.com:443 --filesystem memory
  gae-sandbox serve path/to/app.yaml --policy sandbox.toml
  gae-sandbox serve path/to/app.yaml --port 8080 --mode report --report violations.json
  gae-sandbox serve examples/flask_app --server gunicorn --workers 2
  gae-sandbox serve examples/guestbook --isolation os --max-requests 1000
  gae-sandbox serve examples/guestbook --isolation request --workers 2 --threads 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import mimetypes
import os
import signal
import socket
import stat
import sys
import threading
import warnings
from typing import Any

from ..appyaml import AppConfig, AppYamlError
from ..devserver import DevServerApp
from ..loaders import PolicyConfigError, add_policy_arguments, build_policy, flag_settings
from ..report import Violation, format_summary, from_json_document, merge, to_json_document
from .common import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="APP_DIR_OR_APP_YAML",
                        help="the app's folder (holding app.yaml) or its app.yaml")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    parser.add_argument("--server", choices=("waitress", "gunicorn"), default=None,
                        help="waitress (threaded, in this process; the default) or gunicorn "
                             "(processes; the only choice with --isolation os or request)")
    parser.add_argument("--isolation", choices=("none", "os", "request"), default="none",
                        help="none: the in-process sandbox only; os: also confine each "
                             "gunicorn worker with Landlock, seccomp and rlimits; request: a "
                             "confined worker forks a confined child per request")
    parser.add_argument("--timeout", type=float, default=None,
                        help="gunicorn worker timeout in seconds, the hard deadline that kills "
                             "a stuck worker (default: deadline + grace + 5)")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="gunicorn: replace a worker after this many requests (0: never)")
    parser.add_argument("--memory-limit", type=int, default=2048, metavar="MB",
                        help="--isolation os: address space limit per worker (RLIMIT_AS); "
                             "request: per worker and per child")
    parser.add_argument("--cpu-limit", type=int, default=None, metavar="SECONDS",
                        help="--isolation os: CPU seconds a worker may use in its lifetime "
                             "(RLIMIT_CPU; it is then replaced); request: a cap on each "
                             "request's CPU besides deadline + grace; default: no limit")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=8,
                        help="threads per process (--isolation request: requests each worker "
                             "runs at once, each in its own child)")
    parser.add_argument("--queue", type=int, default=64, metavar="N",
                        help="--isolation request: connections a busy worker holds waiting; "
                             "more are answered 503")
    parser.add_argument("--health-path", metavar="PATH", default=None,
                        help="--isolation request: answer GET PATH with 200 from a fresh "
                             "confined child, without calling the app (readiness probes)")
    parser.add_argument("--report", metavar="FILE",
                        help="write every violation as JSON to FILE at exit")
    parser.add_argument("--wsgi-app", metavar="MODULE:APP", default=None,
                        help="python3 runtimes: the WSGI app to serve (default: what "
                             "entrypoint: names, else main:app)")
    add_policy_arguments(parser)


def main(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number")
    if args.workers < 1 or args.threads < 1:
        raise UsageError("--workers and --threads must be at least 1")
    if args.isolation in ("os", "request"):
        if args.server == "waitress":
            raise UsageError(f"--isolation {args.isolation} runs gunicorn worker processes; it "
                             "cannot be used with --server waitress")
        args.server = "gunicorn"
    args.server = args.server or "waitress"
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if args.max_requests < 0:
        raise UsageError("--max-requests must be 0 (never) or more")
    if args.memory_limit < 64 or (args.cpu_limit is not None and args.cpu_limit < 1):
        raise UsageError("--memory-limit must be at least 64 (MB), --cpu-limit at least 1")
    if args.queue < 0:
        raise UsageError("--queue must be 0 or more")
    if args.health_path is not None and (args.isolation != "request"
                                         or not args.health_path.startswith("/")):
        raise UsageError("--health-path needs --isolation request and a path starting with /")
    try:
        loaded = build_policy(args.app, policy_file=args.policy_file, preset=args.preset,
                              flags=flag_settings(args), require_app_yaml=True)
    except (AppYamlError, PolicyConfigError) as error:
        raise UsageError(str(error)) from None
    config: AppConfig = loaded.app_config  # type: ignore[assignment]
    policy = loaded.policy
    if args.wsgi_app:
        from ..appyaml import parse_wsgi_reference

        try:
            parse_wsgi_reference(args.wsgi_app)
        except ValueError as error:
            raise UsageError(f"--wsgi-app {error}") from None
        config = dataclasses.replace(config, wsgi_app=args.wsgi_app)
    args.mode = policy.mode
    if args.isolation in ("os", "request"):
        from ..confine import missing_layers, unavailable_error

        missing = missing_layers(policy)
        if missing and policy.os_confinement == "required":
            raise UsageError(f"--isolation {args.isolation}: {unavailable_error(missing)}")
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
    isolated = args.isolation in ("os", "request")
    per_request = args.isolation == "request"
    relays: list[tuple[int, int, int, threading.Thread]] = []
    # A confined worker writes no file data (RLIMIT_FSIZE=0) and only beneath writable_paths
    # (Landlock); the violations of report mode are the exception, in their own folder.
    keep_violations = not isolated or args.report is not None or policy.mode == "report"
    if isolated:
        if keep_violations:
            os.makedirs(spool, exist_ok=True)  # Landlock rules name existing paths
        relays = _relay_file_output()

    def post_fork(server: Any, worker: Any) -> None:
        if not isolated:
            return
        from ..confine import confine_process

        mimetypes.init()  # reads /etc/mime.types, outside what the worker may read afterwards
        for _, target, reader, _ in relays:  # the log files and the other workers' output
            os.close(target)
            os.close(reader)
        if per_request:
            return  # gae_sandbox.worker.RequestWorker confines itself (forks allowed to it)
        confinement = confine_process(
            policy,
            writable_paths=(spool,) if keep_violations else (),
            address_space_mb=args.memory_limit,
            cpu_seconds=args.cpu_limit,
            max_file_size=None if keep_violations else 0,
            heartbeat_fd=worker.tmp.fileno(),  # gunicorn's heartbeat: futimens on it only
        )
        server.log.info("worker %s confined: %s (Landlock ABI %s)", os.getpid(),
                        ", ".join(confinement.applied), confinement.landlock_abi)

    def worker_exit(server: Any, worker: Any) -> None:
        app = state.get("app")
        if app is not None and app.violations and keep_violations:
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
            self.cfg.set("post_fork", post_fork)
            self.cfg.set("graceful_timeout", 5)
            if per_request:  # a fresh confined child per request; SIGTERM lets them finish
                from ..worker import RequestWorker

                self.cfg.set("worker_class", RequestWorker.configured(
                    policy=policy, memory_limit_mb=args.memory_limit, cpu_limit=args.cpu_limit,
                    writable_paths=(spool,) if keep_violations else (),
                    worker_file_size=None if keep_violations else 0,
                    health_path=args.health_path))
                self.cfg.set("worker_connections", args.threads + args.queue)
                self.cfg.set("graceful_timeout", 30 if not policy.deadline else
                             math.ceil(policy.deadline + policy.hard_deadline_grace + 1))
            self.cfg.set("max_requests", args.max_requests)
            # the worker timeout is the hard deadline that kills
            if args.timeout is not None:
                self.cfg.set("timeout", max(1, math.ceil(args.timeout)))
            elif policy.deadline:
                self.cfg.set("timeout", int(policy.deadline + policy.hard_deadline_grace + 5))

        def load(self) -> Any:
            state["app"] = DevServerApp(config, policy)
            return state["app"]

    print(f"gae-sandbox: serving {config.path} ({policy.mode} mode) at "
          f"http://{args.host}:{port}/ with gunicorn, {args.workers} worker(s)"
          f"{', each confined (--isolation os)' if args.isolation == 'os' else ''}"
          f"{', a confined process per request (--isolation request)' if per_request else ''}"
          " - Ctrl-C to stop",
          flush=True)
    arbiter = os.getpid()
    try:
        Server().run()
    except SystemExit as stop:
        # a worker leaves through here too (it was forked inside run()): only the arbiter,
        # whose halt() exits, goes on to merge the workers' reports
        if os.getpid() != arbiter or stop.code not in (0, None):
            raise
    finally:
        if isolated and os.getpid() == arbiter:
            _end_relays(relays)
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


def _relay_file_output() -> list[tuple[int, int, int, threading.Thread]]:
    """Point stdout and stderr at pipes when they are regular files, copied by a thread of
    this (unconfined) process: confined workers may write no file data (RLIMIT_FSIZE=0), but
    they must still log."""
    relays: list[tuple[int, int, int, threading.Thread]] = []
    for fd in (1, 2):
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            continue
        if not regular:
            continue
        target = os.dup(fd)
        reader, writer = os.pipe()
        os.dup2(writer, fd)
        os.close(writer)
        thread = threading.Thread(target=_copy, args=(reader, target), daemon=True,
                                  name=f"gae_sandbox-relay-{fd}")
        thread.start()
        relays.append((fd, target, reader, thread))
    # gunicorn forks workers from this now multi-threaded process: the relay threads hold no
    # lock a worker needs
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                            category=DeprecationWarning)
    return relays


def _end_relays(relays: list[tuple[int, int, int, threading.Thread]]) -> None:
    """Give stdout and stderr their files back, once the relays copied what is left."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, target, _, _ in relays:
        os.dup2(target, fd)  # closes this process's end of the pipe: the relay sees EOF
    for _, target, _, thread in relays:
        thread.join(timeout=5)
        os.close(target)


def _copy(reader: int, target: int) -> None:
    try:
        while True:
            data = os.read(reader, 65536)
            if not data:
                return
            while data:
                data = data[os.write(target, data):]
    finally:
        os.close(reader)


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
