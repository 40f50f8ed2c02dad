"""``gae-sandbox``: serve an app under the sandbox, check it statically, or run a script.

Each subcommand lives in its own module with ``add_arguments(parser)`` and
``main(args) -> int``. Exit codes: 0 success, 1 findings or a failed run, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import check, run, serve
from .common import UsageError

COMMANDS = {"serve": serve, "check": check, "run": run}


def version_text() -> str:
    """The installed version and the implementation of the host-code fast path: ``C`` (the
    ``gae_sandbox._speedups`` accelerator) or ``pure Python (why)``."""
    from importlib.metadata import PackageNotFoundError, version

    from ..patches import accelerator

    try:
        number = version("gae-sandbox")
    except PackageNotFoundError:  # run from a source tree that is not installed
        number = "unknown"
    return f"gae-sandbox {number}\naccelerator: {accelerator()}"


class _Version(argparse.Action):
    """``--version``: two lines as they are (argparse's own action would refill them)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gae-sandbox",
        description="The App Engine python27 sandbox, in process: serve, check or run an app.",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and which accelerator is active, and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or "").strip().splitlines()[0]
        # run: the script's own options follow its name, so none is taken for a prefix
        # of one of ours (``--n 3`` is not ``--no-allow-threads``)
        sub = commands.add_parser(name, help=doc, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  allow_abbrev=name != "run")
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)
    return parser


def _drop_script_folder() -> None:
    """Run as the ``gae-sandbox`` console script, Python put the script's own folder (the
    environment's ``bin``) first on ``sys.path``: the app would import pip's script copies
    there (``bottle.py``) instead of its packages, and read a folder outside its own."""
    script = sys.argv[0] if sys.argv else ""
    if not script or os.path.basename(script) != "gae-sandbox" or not sys.path:
        return
    if os.path.realpath(sys.path[0] or ".") == os.path.dirname(os.path.realpath(script)):
        del sys.path[0]


def main(argv: Sequence[str] | None = None) -> int:
    _drop_script_folder()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as error:
        print(f"gae-sandbox {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 1
