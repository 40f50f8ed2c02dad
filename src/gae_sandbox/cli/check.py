"""check: scan an app for what its App Engine runtime would refuse, without running it.

Takes the app's folder or its app.yaml (then that app.yaml's skip_files apply). Reads every
deployed ``.py`` file with ``ast`` (nothing is imported or executed) and judges it for the
app's runtime, its profile: --preset, else app.yaml's runtime, else python27. For python27 it
lists shipped C extensions, refused imports, file writes (open modes, os.open flags, logging
file handlers), opens whose mode is not known before run time, processes, sockets, signals,
chdir and environment changes, each with file:line, the rule and the fix, then the app.yaml
``libraries:`` entries the findings call for. For python3 (runtime: python3, python37 ...
python314) only writes outside /tmp, the one folder that runtime can write: to a path known
to be elsewhere (a relative path, one built from __file__), or to one not known statically
("write; allowed only beneath /tmp"). Findings in vendored third-party folders (lib/,
vendor/, site-packages/, folders holding *.dist-info or *.egg-info) are grouped per package
(--format json lists each one, marked "vendored"). Test files (test_*.py, *_test.py,
tests.py, conftest.py, test/ and tests/ folders) are not run in production and are skipped
unless --include-tests.

Exit status: 0 clean, 1 findings, 2 usage error (a missing path, a broken app.yaml given by
path).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..appyaml import AppYamlError
from ..checker import (
    PROFILES,
    TEST_FILE_PATTERNS,
    TEST_FOLDERS,
    Finding,
    ScanResult,
    libraries_needed,
    libraries_yaml,
    scan_app,
    summary,
)
from .common import UsageError

FORMATS = ("text", "json")

#: Example locations, and distinct targets, shown per rule of a vendored package.
EXAMPLES = 2
TARGETS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("app", metavar="APP_DIR_OR_APP_YAML",
                        help="the app's folder (holding app.yaml) or its app.yaml")
    parser.add_argument("--format", default="text", metavar="{text,json}",
                        help="output format (default: text)")
    parser.add_argument("--include-tests", action="store_true",
                        help="also scan test files (test_*.py, *_test.py, tests.py, "
                             "conftest.py, test/ and tests/ folders), skipped by default")
    parser.add_argument("--preset", choices=PROFILES, default=None,
                        help="the runtime to judge the app for (default: app.yaml's runtime, "
                             "else python27); python3 reports only writes outside /tmp")


def main(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise UsageError(f"unknown format {args.format!r}; choose from {', '.join(FORMATS)}")
    target = args.app
    if not os.path.exists(target):
        raise UsageError(f"APP_DIR_OR_APP_YAML {target!r} does not exist (give the app's "
                         "folder or its app.yaml)")
    if not os.path.isdir(target) and not (
            os.path.isfile(target) and target.lower().endswith((".yaml", ".yml"))):
        raise UsageError(f"APP_DIR_OR_APP_YAML {target!r} is not a folder or an app.yaml file")
    try:
        result = scan_app(target, include_tests=args.include_tests, preset=args.preset)
    except AppYamlError as error:
        raise UsageError(str(error)) from None
    except NotADirectoryError as error:  # removed while we looked
        raise UsageError(str(error)) from None
    if args.format == "json":
        _emit(json.dumps(to_json(result), indent=2))
    else:
        _emit(to_text(result))
    return 1 if result.findings else 0


def to_json(result: ScanResult) -> dict[str, object]:
    """The JSON report: the profile (the runtime the app was judged for) and what chose it,
    every finding (``vendored`` names the package of third-party code), counts per kind and
    per vendored package, the test files skipped, and the app.yaml ``libraries:`` entries."""
    findings = result.findings
    return {
        "app": result.app,
        "app_yaml": result.app_yaml,
        "profile": result.profile,
        "profile_reason": result.profile_reason,
        "findings": [f.as_dict() for f in findings],
        "summary": summary(findings),
        "vendored": {package: len(items) for package, items in vendored_groups(findings)},
        "skipped_tests": result.skipped_tests,
        "libraries": [{"name": n, "version": "latest"} for n in libraries_needed(findings)],
    }


def vendored_groups(findings: list[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings in vendored code, per package (sorted by name, case-insensitively)."""
    groups: dict[str, list[Finding]] = {}
    for finding in findings:
        if finding.vendored is not None:
            groups.setdefault(finding.vendored, []).append(finding)
    return sorted(groups.items(), key=lambda item: (item[0].lower(), item[0]))


def to_text(result: ScanResult) -> str:
    """The app's own findings one per line, vendored packages grouped (a count per rule and
    a few locations), a summary per kind, the profile used and why, the test files skipped,
    and a ready-to-paste ``libraries:`` block."""
    app, findings = result.app, result.findings
    skipped = _skipped_line(result.skipped_tests)
    profile = profile_line(result)
    if not findings:
        return "\n".join([f"{app}: no portability problems found", profile, *skipped])
    own = [f for f in findings if f.vendored is None]
    groups = vendored_groups(findings)
    lines = [str(f) for f in own]
    for package, items in groups:
        if lines:
            lines.append("")
        lines += _group_lines(package, items)
    counts = summary(findings)
    width = max(len(kind) for kind in counts)
    total = len(findings)
    where = ""
    if groups:
        where = (f" ({len(own)} in the app's own code, {total - len(own)} in {len(groups)} "
                 f"vendored package{'s' if len(groups) != 1 else ''})")
    lines += ["", f"{total} finding{'s' if total != 1 else ''} in {app}{where}:"]
    lines += [f"  {kind:<{width}}  {count}" for kind, count in counts.items()]
    lines += ["", profile, *skipped]
    snippet = libraries_yaml(libraries_needed(findings))
    if snippet:
        lines += ["", "app.yaml needs these libraries (paste into app.yaml):", snippet.rstrip()]
    return "\n".join(lines)


def profile_line(result: ScanResult) -> str:
    """Which runtime the app was judged for, and what chose it."""
    return f"profile {result.profile} ({result.profile_reason})"


def _group_lines(package: str, findings: list[Finding]) -> list[str]:
    """One vendored package: a header, then per (kind, rule) its count, fix and examples."""
    files = {f.file for f in findings}
    count = len(findings)
    lines = [f"vendored {package}: {count} finding{'s' if count != 1 else ''} in {len(files)} "
             f"file{'s' if len(files) != 1 else ''} (third-party code; --format json lists "
             "each one)"]
    by_rule: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        by_rule.setdefault((finding.kind, finding.rule, finding.fix), []).append(finding)
    for (kind, rule, fix), items in sorted(by_rule.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        targets = sorted({f.target for f in items})
        shown = ", ".join(targets[:TARGETS]) + (", ..." if len(targets) > TARGETS else "")
        examples = ", ".join(f"{f.file}:{f.line}" for f in items[:EXAMPLES])
        more = f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
        lines.append(f"  {len(items)} \u00d7 {kind}: {shown} \u2014 {rule} ({fix})")
        lines.append(f"      e.g. {examples}{more}")
    return lines


def _skipped_line(skipped: list[str]) -> list[str]:
    if not skipped:
        return []
    patterns = ", ".join([*TEST_FILE_PATTERNS, *(f"{f}/" for f in sorted(TEST_FOLDERS))])
    count = len(skipped)
    return [f"{count} test file{'s' if count != 1 else ''} not scanned: tests do not run in "
            f"production ({patterns}); --include-tests scans them"]


def _emit(text: str) -> None:
    """Print, escaping what the terminal's encoding cannot show instead of failing."""
    try:
        print(text)
    except UnicodeEncodeError:
        encoding = sys.stdout.encoding or "ascii"
        print(text.encode(encoding, "backslashreplace").decode(encoding))
