"""run: run a Python script under the sandbox.

The script's folder is the app root (or --app-root); an app.yaml there sets the policy.
Examples:
  gae-sandbox run myscript.py arg1 arg2
  gae-sandbox run --mode report --report violations.json tools/migrate.py
  gae-sandbox run --filesystem memory tools/build_cache.py   # writes stay in memory
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback
from typing import Any

from ..appyaml import AppYamlError, load_app_yaml
from ..errors import SandboxViolation
from ..policy import Policy
from ..sandbox import Sandbox
from .common import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app-root", metavar="DIR",
                        help="the app's folder (default: the script's folder)")
    parser.add_argument("--mode", choices=("enforce", "report"), default="enforce",
                        help="refuse violations, or let them through and report them")
    parser.add_argument("--report", metavar="FILE",
                        help="write every violation as JSON to FILE at exit")
    parser.add_argument("--filesystem", choices=("readonly", "memory"), default="readonly",
                        help="refuse writes (the runtime), or let them succeed in memory "
                             "(nothing reaches the disk)")
    parser.add_argument("--deadline", type=float, default=0,
                        help="seconds the script may run (default 0: no deadline)")
    parser.add_argument("script", metavar="SCRIPT.py", help="the script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def main(args: argparse.Namespace) -> int:
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        raise UsageError(f"{args.script}: no such script")
    if args.deadline < 0:
        raise UsageError("--deadline must be 0 (none) or a positive number of seconds")
    app_root = os.path.abspath(args.app_root or os.path.dirname(script))
    if not os.path.isdir(app_root):
        raise UsageError(f"--app-root {args.app_root}: not a folder")
    report_path = os.path.abspath(args.report) if args.report else None
    policy = _policy(app_root, args)

    sys.argv = [script, *args.args]
    sys.path.insert(0, os.path.dirname(script))
    status = 0
    sandbox = Sandbox(policy)
    try:
        with sandbox:
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    except SandboxViolation as refusal:
        traceback.print_exc()
        print(f"gae-sandbox run: {refusal}", file=sys.stderr)
        status = 1
    except BaseException:  # the script's own error: show it as Python would
        traceback.print_exc()
        status = 1
    from .serve import _finish_report

    _finish_report(sandbox.violations, argparse.Namespace(mode=args.mode, report=report_path))
    return status


def _policy(app_root: str, args: argparse.Namespace) -> Policy:
    changes: dict[str, Any] = {"mode": args.mode, "deadline": args.deadline or None,
                               "filesystem": args.filesystem}
    try:
        if any(os.path.isfile(os.path.join(app_root, n)) for n in ("app.yaml", "app.yml")):
            return load_app_yaml(app_root).policy(**changes)
        return Policy.python27(app_root=app_root, **changes)
    except (AppYamlError, TypeError, ValueError) as error:
        raise UsageError(str(error)) from None


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
