"""run: run a Python script under the sandbox.

The script's folder is the app root (or --app-root); an app.yaml, a [tool.gae-sandbox] table
in pyproject.toml or --policy FILE there sets the policy, and every Policy field has a flag.
Scripts have no deadline unless --deadline (or the policy file) sets one.
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

from ..appyaml import AppYamlError
from ..errors import SandboxViolation
from ..loaders import PolicyConfigError, add_policy_arguments, build_policy, flag_settings
from ..policy import Policy
from ..sandbox import Sandbox
from .common import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app-root", metavar="DIR",
                        help="the app's folder (default: the script's folder)")
    parser.add_argument("--report", metavar="FILE",
                        help="write every violation as JSON to FILE at exit")
    add_policy_arguments(parser)
    parser.add_argument("script", metavar="SCRIPT.py", help="the script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")


def main(args: argparse.Namespace) -> int:
    script = os.path.abspath(args.script)
    if not os.path.isfile(script):
        raise UsageError(f"{args.script}: no such script")
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
    try:
        flags = flag_settings(args)
        flags.setdefault("deadline", None)  # a script has no request deadline...
        loaded = build_policy(app_root, policy_file=args.policy_file, preset=args.preset,
                              flags=flags)
        if "deadline" in loaded.file_keys and getattr(args, "policy__deadline", None) is None:
            # ...unless its policy file gives one
            flags.pop("deadline")
            loaded = build_policy(app_root, policy_file=args.policy_file, preset=args.preset,
                                  flags=flags)
    except (AppYamlError, PolicyConfigError) as error:
        raise UsageError(str(error)) from None
    args.mode = loaded.policy.mode
    return loaded.policy


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
