"""pytest plugin: run test bodies inside the App Engine python27 sandbox.

``pytest --gae-sandbox`` (or ``--gae-sandbox=report``) runs the body of every test in a
:class:`~gae_sandbox.Sandbox`; ``@pytest.mark.gae_sandbox(**overrides)`` changes the policy for
one test and turns the sandbox on for it even without the option; the ``gae_sandbox`` fixture
gives the test its ``Sandbox`` (to look at ``violations``).

Only the test body (``item.runtest()``) is sandboxed, never setup or teardown, so fixtures
prepare files, environment and servers as host code. The test function is app code: its file
is the location of what it does, and it may read files under ``app_root`` (the rootdir unless
configured). pytest's own work around the body stays host code, and what pytest does *inside*
the body keeps working: ``capsys``/``capfd`` capture, the ``tmp_path``/``tmpdir`` folders (made
readable to the tests that request them; like the runtime's files they are read-only to the
body, so write them in fixtures) and assertion rewriting of modules the body imports (no
bytecode is written while a body runs, so neither pytest's nor importlib's cache writes count
as the test's violations).

Each sandboxed test's violations travel in its report's ``user_properties`` (name
``"gae_sandbox"``, a JSON list), so the summary is printed by the process that prints the
reports: the pytest-xdist controller as well. (junitxml shows them as a property.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .policy import Policy
from .sandbox import Sandbox

MARKER = "gae_sandbox"
#: The user property that carries a sandboxed test's violations (a JSON list of dicts).
PROPERTY = "gae_sandbox"
MODES = ("enforce", "report")

INI_APP_ROOT = "gae_sandbox_app_root"
INI_DEADLINE = "gae_sandbox_deadline"
INI_ALLOWED_HOSTS = "gae_sandbox_allowed_hosts"
INI_READABLE_PATHS = "gae_sandbox_readable_paths"

#: Fixtures whose folders the body may read (all under the session's basetemp).
_TMP_FIXTURES = ("tmp_path", "tmpdir", "tmp_path_factory", "tmpdir_factory")
_SUMMARY_PLUGIN = "gae_sandbox-summary"


@dataclass
class _Settings:
    """The session's options. The base policy is built on first use, so a run that never
    sandboxes a test never needs a valid one (pytest may run in ``/``)."""

    mode: str | None  # None: --gae-sandbox was not given
    app_yaml: str | None
    base: Policy | None = None


@dataclass
class _Results:
    """Violations per test node id, as read from the reports (on the xdist controller too)."""

    by_test: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


_SETTINGS = pytest.StashKey[_Settings]()
_RESULTS = pytest.StashKey[_Results]()
_POLICY = pytest.StashKey[Policy | None]()  # per item: None = body not sandboxed
_SANDBOX = pytest.StashKey[Sandbox]()  # per item, from the first setup to its teardown


# --- options --------------------------------------------------------------------------------


def _mode_argument(value: str) -> str:
    """argparse ``type`` of ``--gae-sandbox``: with an optional value, ``--gae-sandbox tests/``
    reads ``tests/`` as the mode, so say how to write it."""
    if value in MODES:
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a mode; write --gae-sandbox, --gae-sandbox=enforce or "
        "--gae-sandbox=report (with '=', or last, when test paths follow it)"
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gae_sandbox", "App Engine python27 sandbox (gae_sandbox)")
    group.addoption(
        "--gae-sandbox", action="store", nargs="?", const="enforce", default=None,
        type=_mode_argument, metavar="enforce|report", dest="gae_sandbox",
        help="run every test body in the App Engine python27 sandbox. 'enforce' (the "
        "default) fails a test on a refused operation; 'report' lets it through; both list "
        "the violations per test at the end.",
    )
    group.addoption(
        "--gae-sandbox-app-yaml", action="store", default=None, metavar="PATH",
        dest="gae_sandbox_app_yaml",
        help="build the sandbox policy from this app.yaml (Policy.from_app_yaml).",
    )
    parser.addini(INI_APP_ROOT, "gae_sandbox: the app root (default: the rootdir); relative "
                  "to the ini file's folder", type="string", default="")
    parser.addini(INI_DEADLINE, "gae_sandbox: seconds a test body may run, or 'none' "
                  "(default: 60, the python27 request deadline)", type="string", default="")
    parser.addini(INI_ALLOWED_HOSTS, "gae_sandbox: 'host:port' patterns a test body may "
                  "connect to", type="linelist", default=[])
    parser.addini(INI_READABLE_PATHS, "gae_sandbox: extra folders a test body may read; "
                  "relative to the ini file's folder", type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**overrides): run this test's body in the gae_sandbox sandbox (even "
        "without --gae-sandbox) with Policy.replace(**overrides), e.g. mode='report' or "
        "allowed_hosts=['127.0.0.1:*'].",
    )
    settings = _Settings(mode=config.getoption("gae_sandbox", None),
                         app_yaml=config.getoption("gae_sandbox_app_yaml", None))
    config.stash[_SETTINGS] = settings
    config.stash[_RESULTS] = _Results()
    config.pluginmanager.register(_Summary(config), _SUMMARY_PLUGIN)
    if settings.mode is not None or settings.app_yaml is not None:
        _base_policy(config)  # a configuration error stops the run before the first test


# --- the policy -----------------------------------------------------------------------------


def _config_folder(config: pytest.Config) -> Path:
    """Relative ini paths are relative to the ini file, like pytest's own path options."""
    return config.inipath.parent if config.inipath is not None else config.rootpath


def _ini_deadline(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # a native TOML number
    text = str(value).strip()
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise pytest.UsageError(
            f"{INI_DEADLINE} = {text!r}: expected seconds (like 30) or 'none'"
        ) from None


def _ini_changes(config: pytest.Config) -> dict[str, Any]:
    """The ``gae_sandbox_*`` ini options that are set, as ``Policy`` changes."""
    changes: dict[str, Any] = {}
    folder = _config_folder(config)
    app_root = str(config.getini(INI_APP_ROOT) or "").strip()
    if app_root:
        changes["app_root"] = str(folder / app_root)
    deadline = config.getini(INI_DEADLINE)
    if deadline not in ("", None):
        changes["deadline"] = _ini_deadline(deadline)
    hosts = [str(h).strip() for h in config.getini(INI_ALLOWED_HOSTS) if str(h).strip()]
    if hosts:
        changes["allowed_hosts"] = tuple(hosts)
    readable = [str(p).strip() for p in config.getini(INI_READABLE_PATHS) if str(p).strip()]
    if readable:
        changes["readable_paths"] = tuple(str(folder / p) for p in readable)
    return changes


def _policy_from_app_yaml(config: pytest.Config, option: str, changes: dict[str, Any]) -> Policy:
    from .loaders import policy_from_app_yaml as from_app_yaml

    path = Path(option)
    if not path.is_absolute():
        path = config.invocation_params.dir / path
    if not path.is_file():
        raise pytest.UsageError(f"--gae-sandbox-app-yaml={option}: no such file ({path})")
    try:
        return from_app_yaml(path, **changes)
    except ImportError as error:
        raise pytest.UsageError(
            f"--gae-sandbox-app-yaml={option}: app.yaml support is not available ({error})"
        ) from None


def _base_policy(config: pytest.Config) -> Policy:
    """The session's policy: the app.yaml's, or python27 at the rootdir; then the ini
    options; then the mode of ``--gae-sandbox``. Built once; errors are usage errors."""
    settings = config.stash[_SETTINGS]
    if settings.base is not None:
        return settings.base
    changes = _ini_changes(config)
    if settings.mode is not None:
        changes["mode"] = settings.mode
    source = "the gae_sandbox_* ini options"
    try:
        if settings.app_yaml is not None:
            source = f"--gae-sandbox-app-yaml={settings.app_yaml}"
            policy = _policy_from_app_yaml(config, settings.app_yaml, changes)
        else:
            app_root = changes.pop("app_root", str(config.rootpath))
            policy = Policy.python27(app_root=app_root, **changes)
    except (TypeError, ValueError, OSError) as error:
        raise pytest.UsageError(f"gae_sandbox: bad policy from {source}: {error}") from None
    settings.base = policy
    return policy


def _marker_overrides(item: pytest.Item) -> dict[str, Any] | None:
    """The ``gae_sandbox`` markers' keyword arguments, merged so the closest marker (the
    function's over the class's over the module's) wins; ``None`` without a marker."""
    marks = list(item.iter_markers(MARKER))
    if not marks:
        return None
    overrides: dict[str, Any] = {}
    for mark in reversed(marks):
        if mark.args:
            pytest.fail(f"{item.nodeid}: @pytest.mark.{MARKER}() takes Policy fields as "
                        f"keyword arguments, got positional {mark.args!r}", pytrace=False)
        overrides.update(mark.kwargs)
    return overrides


def _item_policy(item: pytest.Item, *, forced: bool = False) -> Policy | None:
    """The policy of ``item``'s body, ``None`` when it is not sandboxed. A bad marker or
    configuration fails this test alone, with a message naming it and the field."""
    known = item.stash.get(_POLICY, False)
    if known is not False and (known is not None or not forced):
        return known  # type: ignore[return-value]
    overrides = _marker_overrides(item)
    policy: Policy | None = None
    if forced or overrides is not None or item.config.stash[_SETTINGS].mode is not None:
        try:
            policy = _base_policy(item.config)
        except pytest.UsageError as error:
            pytest.fail(f"{item.nodeid}: {error}", pytrace=False)
        if overrides:
            try:
                policy = policy.replace(**overrides)
            except (TypeError, ValueError) as error:
                shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
                pytest.fail(f"{item.nodeid}: bad @pytest.mark.{MARKER}({shown}): {error}",
                            pytrace=False)
    item.stash[_POLICY] = policy
    return policy


def _make_sandbox(item: pytest.Item, policy: Policy,
                  get_fixture: Callable[[str], Any]) -> Sandbox:
    """The test's sandbox, with pytest's temporary folders readable if the test asked for
    them (``get_fixture`` returns a set-up fixture's value)."""
    names = getattr(item, "fixturenames", ())
    if any(name in names for name in _TMP_FIXTURES):
        factory = get_fixture("tmp_path_factory")
        if factory is not None:
            basetemp = str(factory.getbasetemp())
            policy = policy.replace(readable_paths=(*policy.readable_paths, basetemp))
    sandbox = Sandbox(policy)
    item.stash[_SANDBOX] = sandbox
    return sandbox


# --- the test body --------------------------------------------------------------------------


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Judge the marker before the fixtures run (this plugin's hook runs before pytest's
    own setup), so a bad override costs no setup."""
    _item_policy(item)


@pytest.fixture
def gae_sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """The :class:`~gae_sandbox.Sandbox` this test's body runs in.

    Requesting it turns the sandbox on for the test when neither ``--gae-sandbox`` nor the
    ``gae_sandbox`` marker did (the configured policy, enforce mode unless the marker says
    otherwise). The fixture never enters the sandbox itself: the plugin enters it around the
    test body only, so ``violations`` holds what the body has done so far.
    """
    item = request.node
    sandbox = item.stash.get(_SANDBOX, None)
    if sandbox is None:
        policy = _item_policy(item, forced=True)
        assert policy is not None
        sandbox = _make_sandbox(item, policy, request.getfixturevalue)
    return sandbox


def _sandboxed(sandbox: Sandbox, runtest: Callable[[], None]) -> Callable[[], None]:
    """``item.runtest`` inside the sandbox, with no bytecode written meanwhile: pytest's
    assertion rewriter and importlib would write caches for the body's imports, and those
    writes are not the test's."""

    def runtest_in_sandbox() -> None:
        __tracebackhide__ = True
        dont_write_bytecode = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        try:
            with sandbox:
                runtest()
        finally:
            sys.dont_write_bytecode = dont_write_bytecode

    return runtest_in_sandbox


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Sandbox the test body and publish its violations.

    The sandbox wraps ``item.runtest()``, not the whole call phase: pytest's runner sets
    ``PYTEST_CURRENT_TEST`` in the environment around the body, which the sandbox refuses.
    """
    sandbox = item.stash.get(_SANDBOX, None)
    if sandbox is None:
        policy = _item_policy(item)
        if policy is not None:
            sandbox = _make_sandbox(item, policy, getattr(item, "funcargs", {}).get)
    if sandbox is None:
        yield
        return
    own = vars(item).get("runtest")
    item.runtest = _sandboxed(sandbox, item.runtest)  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is not None:
            item.runtest = own  # type: ignore[method-assign]
        else:
            del item.runtest
        violations = [violation.to_dict() for violation in sandbox.violations]
        item.user_properties.append((PROPERTY, json.dumps(violations)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Forget the test's sandbox after teardown (a rerun of the item starts afresh)."""
    yield
    for key in (_SANDBOX, _POLICY):
        if key in item.stash:
            del item.stash[key]


# --- the summary ----------------------------------------------------------------------------


class _Summary:
    """Collects each sandboxed test's violations from its call report; prints them at the end.

    Registered per session because ``pytest_runtest_logreport`` gets no ``config``; the data
    lives in ``config.stash``. Under pytest-xdist the controller reads the reports the workers
    send, and only the controller prints.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == PROPERTY and isinstance(value, str):
                self.config.stash[_RESULTS].by_test[report.nodeid] = json.loads(value)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput"):
            return  # an xdist worker: the controller prints
        by_test = self.config.stash[_RESULTS].by_test
        if not by_test:
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "gae_sandbox violations")
        root = str(self.config.rootpath) + os.sep
        distinct = occurrences = tests = 0
        for nodeid, violations in by_test.items():
            if not violations:
                continue
            tests += 1
            write(nodeid)
            for violation in violations:
                count = int(violation.get("count", 1))
                distinct += 1
                occurrences += count
                location = str(violation.get("location", "?"))
                if location.startswith(root):
                    location = location[len(root):]
                how = "refused" if violation.get("enforced") else "reported"
                write(f"    {violation.get('kind')}: {violation.get('target')} "
                      f"at {location} (x{count}, {how})")
        sandboxed = _plural(len(by_test), "sandboxed test")
        if distinct:
            write(f"gae_sandbox: {_plural(distinct, 'violation')} "
                  f"({_plural(occurrences, 'occurrence')}) in {tests} of {sandboxed}", red=True)
        else:
            write(f"gae_sandbox: no violations in {sandboxed}", green=True)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
