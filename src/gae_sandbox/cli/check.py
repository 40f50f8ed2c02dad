"""check: scan an app folder for what the python27 sandbox would refuse, without running it.

Reads every deployed ``.py`` file with ``ast`` (nothing is imported or executed) and lists
shipped C extensions, refused imports, file writes, processes, sockets, signals and
environment changes, each with file:line, the rule and the fix, then the app.yaml
``libraries:`` entries the findings call for.

Exit status: 0 clean, 1 findings, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..checker import Finding, libraries_needed, libraries_yaml, scan, summary
from .common import UsageError

FORMATS = ("text", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app_dir", metavar="APP_DIR", help="the app folder (where app.yaml is)")
    parser.add_argument("--format", default="text", metavar="{text,json}",
                        help="output format (default: text)")


def main(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise UsageError(f"unknown format {args.format!r}; choose from {', '.join(FORMATS)}")
    app_dir = args.app_dir
    if not os.path.exists(app_dir):
        raise UsageError(f"APP_DIR {app_dir!r} does not exist")
    if not os.path.isdir(app_dir):
        raise UsageError(f"APP_DIR {app_dir!r} is not a folder")
    findings = scan(app_dir)
    app = os.path.realpath(app_dir)
    if args.format == "json":
        _emit(json.dumps(to_json(app, findings), indent=2))
    else:
        _emit(to_text(app, findings))
    return 1 if findings else 0


def to_json(app: str, findings: list[Finding]) -> dict[str, object]:
    """The JSON report: findings, counts per kind, and the app.yaml libraries entries."""
    return {
        "app": app,
        "findings": [f.as_dict() for f in findings],
        "summary": summary(findings),
        "libraries": [{"name": n, "version": "latest"} for n in libraries_needed(findings)],
    }


def to_text(app: str, findings: list[Finding]) -> str:
    """One line per finding, a summary per kind, and a ready-to-paste ``libraries:`` block."""
    if not findings:
        return f"{app}: no portability problems found"
    lines = [str(f) for f in findings]
    counts = summary(findings)
    width = max(len(kind) for kind in counts)
    total = len(findings)
    lines += ["", f"{total} finding{'s' if total != 1 else ''} in {app}:"]
    lines += [f"  {kind:<{width}}  {count}" for kind, count in counts.items()]
    snippet = libraries_yaml(libraries_needed(findings))
    if snippet:
        lines += ["", "app.yaml needs these libraries (paste into app.yaml):", snippet.rstrip()]
    return "\n".join(lines)


def _emit(text: str) -> None:
    """Print, escaping what the terminal's encoding cannot show instead of failing."""
    try:
        print(text)
    except UnicodeEncodeError:
        encoding = sys.stdout.encoding or "ascii"
        print(text.encode(encoding, "backslashreplace").decode(encoding))
