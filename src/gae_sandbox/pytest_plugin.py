"""pytest plugin: run test bodies inside the App Engine python27 sandbox.

``pytest --gae-sandbox tests/`` runs the body of every test in a :class:`~gae_sandbox.Sandbox`
(``--gae-sandbox-mode=report`` lets every operation through and only records it;
``--gae-sandbox=report`` is the same); ``@pytest.mark.gae_sandbox(**overrides)`` changes the
policy for one test and turns the sandbox on for it even without the option; the
``gae_sandbox`` fixture gives the test its ``Sandbox`` (to look at ``violations``).

The policy is the project's: ``--gae-sandbox-policy FILE`` (TOML, the ``Policy`` fields as
keys), else ``[tool.gae-sandbox]`` in the app root's ``pyproject.toml``, over the app root's
``app.yaml`` (or ``--gae-sandbox-app-yaml``), over ``Policy.python27``; then the
``gae_sandbox_*`` ini options, then ``--gae-sandbox-mode`` and ``--gae-sandbox-deadline``, then
the marker. The app root is the rootdir unless ``gae_sandbox_app_root`` says otherwise.

Only the test body (``item.runtest()``) is sandboxed, never setup or teardown, so fixtures
prepare files, environment and servers as host code; a fixture the body requests itself
(``request.getfixturevalue``) is set up as host code too, so a refusal never leaves one half
set up. The test function is app code: its file is the location of what it does, and it may
read files under the app root. The body keeps the working directory pytest and its fixtures
gave it (``Policy.working_directory="host"`` unless the policy file says otherwise). What
pytest does *inside* the body keeps working: ``capsys``/``capfd`` capture, the
``tmp_path``/``tmpdir`` folders (readable to the tests that request them; read-only to the
body, as the runtime's files were: write them in fixtures, or mark the test
``filesystem="memory"``) and assertion rewriting of modules the body imports (no bytecode is
written while a body runs).

Threads a body starts are waited for when it ends, as the runtime waited for a request's
threads: at most ``--gae-sandbox-thread-wait`` seconds (the marker's ``thread_wait=``), never
past the deadline. A thread still running then is left running, still sandboxed; each test
that waited is listed in the summary with its threads' targets.

Each sandboxed test's violations travel in its report's ``user_properties`` (name
``"gae_sandbox"``, a JSON list; thread waits under ``"gae_sandbox_threads"``), so the summary is
printed by the process that prints the reports: the pytest-xdist controller as well.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .context import active_scope
from .policy import Policy
from .sandbox import Sandbox

MARKER = "gae_sandbox"
#: The user property that carries a sandboxed test's violations (a JSON list of dicts).
PROPERTY = "gae_sandbox"
#: The user property of a test that waited for threads it started (a JSON object).
THREADS_PROPERTY = "gae_sandbox_threads"
MODES = ("enforce", "report")
#: Marker arguments that are the plugin's, not ``Policy`` fields.
PLUGIN_ARGUMENTS = ("thread_wait",)
#: Seconds a test body's end waits for the threads it started (the deadline bounds it too).
DEFAULT_THREAD_WAIT = 0.5

INI_APP_ROOT = "gae_sandbox_app_root"
INI_DEADLINE = "gae_sandbox_deadline"
INI_ALLOWED_HOSTS = "gae_sandbox_allowed_hosts"
INI_READABLE_PATHS = "gae_sandbox_readable_paths"
INI_THREAD_WAIT = "gae_sandbox_thread_wait"

#: Fixtures whose folders the body may read (all under the session's basetemp).
_TMP_FIXTURES = ("tmp_path", "tmpdir", "tmp_path_factory", "tmpdir_factory")
_SUMMARY_PLUGIN = "gae_sandbox-summary"


@dataclass
class _Settings:
    """The session's options. The base policy is built on first use, so a run that never
    sandboxes a test never needs a valid one (pytest may run in ``/``)."""

    mode: str | None  # None: neither --gae-sandbox nor a mode was given
    app_yaml: str | None
    policy_file: str | None
    deadline: str | None
    thread_wait: float
    report_file: str | None
    base: Policy | None = None
    source: str = "Policy.python27"


@dataclass
class _Results:
    """Violations and thread waits per test node id, as read from the reports (on the xdist
    controller too)."""

    by_test: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    threads: dict[str, dict[str, Any]] = field(default_factory=dict)


_SETTINGS = pytest.StashKey[_Settings]()
_RESULTS = pytest.StashKey[_Results]()
_POLICY = pytest.StashKey["tuple[Policy, float] | None"]()  # per item: None = not sandboxed
_SANDBOX = pytest.StashKey[Sandbox]()  # per item, from the first setup to its teardown


# --- options --------------------------------------------------------------------------------


def _seconds(value: str) -> str:
    """argparse ``type`` of the seconds options: a number or ``none``, kept as text."""
    text = value.strip()
    if text.lower() == "none":
        return "none"
    try:
        if float(text) > 0:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r}: expected seconds (like 30) or 'none'")


def _wait_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected seconds (like 0.5), or 0")
    return seconds


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gae_sandbox", "App Engine python27 sandbox (gae_sandbox)")
    group.addoption(
        "--gae-sandbox", action="store_true", default=False, dest="gae_sandbox",
        help="run every test body in the App Engine python27 sandbox (the project's policy: "
        "--gae-sandbox-policy, [tool.gae-sandbox] in pyproject.toml, app.yaml). A refused "
        "operation fails the test; the violations are listed per kind at the end.",
    )
    # "--gae-sandbox=report" as one word: argparse matches a whole option string before it
    # splits at "=", so these leave "--gae-sandbox tests/" a flag followed by a path
    for mode in MODES:
        group.addoption(f"--gae-sandbox={mode}", action="store_const", const=mode,
                        dest="gae_sandbox_mode_alias", default=None, help=argparse.SUPPRESS)
    group.addoption(
        "--gae-sandbox-mode", action="store", choices=MODES, default=None,
        dest="gae_sandbox_mode",
        help="enforce (default): a refused operation fails the test; report: everything is "
        "let through and recorded, nothing else changes. Turns the sandbox on.",
    )
    group.addoption(
        "--gae-sandbox-deadline", action="store", type=_seconds, default=None,
        metavar="SECONDS", dest="gae_sandbox_deadline",
        help="seconds a test body may run, or 'none' (default: the policy's; python27: 60).",
    )
    group.addoption(
        "--gae-sandbox-thread-wait", action="store", type=_wait_seconds, default=None,
        metavar="SECONDS", dest="gae_sandbox_thread_wait",
        help="seconds the end of a test body waits for threads it started (default "
        f"{DEFAULT_THREAD_WAIT:g}; never past the deadline); threads still running are left "
        "running and listed in the summary.",
    )
    group.addoption(
        "--gae-sandbox-report", action="store", default=None, metavar="FILE",
        dest="gae_sandbox_report",
        help="write every violation and thread wait, per test, to FILE as JSON.",
    )
    group.addoption(
        "--gae-sandbox-policy", action="store", default=None, metavar="FILE",
        dest="gae_sandbox_policy",
        help="a TOML policy file (its keys are the Policy fields); default: [tool.gae-sandbox] "
        "in the app root's pyproject.toml.",
    )
    group.addoption(
        "--gae-sandbox-app-yaml", action="store", default=None, metavar="PATH",
        dest="gae_sandbox_app_yaml",
        help="build the sandbox policy from this app.yaml (default: the app root's, if any).",
    )
    parser.addini(INI_APP_ROOT, "gae_sandbox: the app root (default: the rootdir); relative "
                  "to the ini file's folder", type="string", default="")
    parser.addini(INI_DEADLINE, "gae_sandbox: seconds a test body may run, or 'none' "
                  "(default: the policy's; python27: 60)", type="string", default="")
    parser.addini(INI_ALLOWED_HOSTS, "gae_sandbox: 'host:port' patterns a test body may "
                  "connect to", type="linelist", default=[])
    parser.addini(INI_READABLE_PATHS, "gae_sandbox: extra folders a test body may read; "
                  "relative to the ini file's folder", type="linelist", default=[])
    parser.addini(INI_THREAD_WAIT, "gae_sandbox: seconds the end of a test body waits for "
                  f"its threads (default {DEFAULT_THREAD_WAIT:g})", type="string", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**overrides): run this test's body in the gae_sandbox sandbox (even "
        "without --gae-sandbox) with Policy.replace(**overrides), e.g. mode='report', "
        "filesystem='memory' (writes into tmp_path succeed in memory), deadline=5 or "
        "allowed_hosts=['127.0.0.1:*']; thread_wait=SECONDS for the wait for its threads.",
    )
    mode = (config.getoption("gae_sandbox_mode", None)
            or config.getoption("gae_sandbox_mode_alias", None))
    if mode is None and config.getoption("gae_sandbox", False):
        mode = "enforce"
    settings = _Settings(
        mode=mode,
        app_yaml=config.getoption("gae_sandbox_app_yaml", None),
        policy_file=config.getoption("gae_sandbox_policy", None),
        deadline=config.getoption("gae_sandbox_deadline", None),
        thread_wait=_thread_wait_setting(config),
        report_file=config.getoption("gae_sandbox_report", None),
    )
    config.stash[_SETTINGS] = settings
    config.stash[_RESULTS] = _Results()
    config.pluginmanager.register(_Summary(config), _SUMMARY_PLUGIN)
    if settings.mode is not None:
        _base_policy(config)  # a configuration error stops the run before the first test
        _prepare_process()


def _thread_wait_setting(config: pytest.Config) -> float:
    option = config.getoption("gae_sandbox_thread_wait", None)
    if option is not None:
        return float(option)
    text = str(config.getini(INI_THREAD_WAIT) or "").strip()
    if not text:
        return DEFAULT_THREAD_WAIT
    try:
        return _wait_seconds(text)
    except argparse.ArgumentTypeError:
        raise pytest.UsageError(f"{INI_THREAD_WAIT} = {text!r}: expected seconds (like 0.5)"
                                ) from None


def _prepare_process() -> None:
    """Before the test modules are imported: install the sandbox's hooks (functions that
    modules take by reference at import time are then the patched ones), and keep pyfakefs's
    ``Patcher`` (the ``fs`` fixture) out of the sandbox's own modules, whose checks must see
    the real disk."""
    from .sandbox import install

    install()
    _shield_from_pyfakefs()


def _shield_from_pyfakefs() -> None:
    unittest = sys.modules.get("pyfakefs.fake_filesystem_unittest")
    patcher = getattr(unittest, "Patcher", None)
    skipped = getattr(patcher, "SKIPMODULES", None)
    if isinstance(skipped, set):
        skipped.update(module for name, module in list(sys.modules.items())
                       if name == "gae_sandbox" or name.startswith("gae_sandbox."))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Install the hooks once the first sandboxed test is known (marker or fixture only),
    before any fixture runs: pyfakefs's ``fs`` fixture then patches over the sandbox's hooks
    and restores them, instead of the other way round."""
    if config.stash[_SETTINGS].mode is None and any(
            item.get_closest_marker(MARKER) is not None
            or MARKER in getattr(item, "fixturenames", ()) for item in items):
        _prepare_process()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    settings = config.stash[_SETTINGS]
    if settings.mode is None:
        return None
    policy = _base_policy(config)
    deadline = "none" if policy.deadline is None else f"{policy.deadline:g} s"
    return [f"gae_sandbox: {settings.mode} mode; policy {settings.source}, app root "
            f"{policy.app_root}; per test: deadline {deadline}, thread wait "
            f"{settings.thread_wait:g} s"]


# --- the policy -----------------------------------------------------------------------------


def _config_folder(config: pytest.Config) -> Path:
    """Relative ini paths are relative to the ini file, like pytest's own path options."""
    return config.inipath.parent if config.inipath is not None else config.rootpath


def _deadline_value(text: Any, where: str) -> float | None:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return text  # a native TOML number
    value = str(text).strip()
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(f"{where} = {value!r}: expected seconds (like 30) or 'none'"
                                ) from None


def _changes(config: pytest.Config) -> tuple[str | None, dict[str, Any]]:
    """The app root the ini options name, and the settings of the ini options and the
    command line, in ``loaders.build_policy``'s ``flags`` form (lists add to the file's)."""
    settings = config.stash[_SETTINGS]
    folder = _config_folder(config)
    flags: dict[str, Any] = {}
    app_root = str(config.getini(INI_APP_ROOT) or "").strip()
    deadline = config.getini(INI_DEADLINE)
    if deadline not in ("", None):
        flags["deadline"] = _deadline_value(deadline, INI_DEADLINE)
    hosts = [str(h).strip() for h in config.getini(INI_ALLOWED_HOSTS) if str(h).strip()]
    if hosts:
        flags["allowed_hosts"] = ("add", tuple(hosts))
    readable = [str(p).strip() for p in config.getini(INI_READABLE_PATHS) if str(p).strip()]
    if readable:
        flags["readable_paths"] = ("add", tuple(str(folder / p) for p in readable))
    if settings.deadline is not None:
        flags["deadline"] = _deadline_value(settings.deadline, "--gae-sandbox-deadline")
    if settings.mode is not None:
        flags["mode"] = settings.mode
    return (str(folder / app_root) if app_root else None), flags


def _invocation_path(config: pytest.Config, option: str) -> Path:
    path = Path(option)
    return path if path.is_absolute() else config.invocation_params.dir / path


def _base_policy(config: pytest.Config) -> Policy:
    """The session's policy (see the module's docstring for the order). Built once; errors
    are usage errors naming the file or option and the field."""
    settings = config.stash[_SETTINGS]
    if settings.base is not None:
        return settings.base
    from . import loaders

    app_root, flags = _changes(config)
    app: Path = Path(app_root) if app_root is not None else config.rootpath
    if settings.app_yaml is not None:
        app = _invocation_path(config, settings.app_yaml)
        if not app.is_file():
            raise pytest.UsageError(
                f"--gae-sandbox-app-yaml={settings.app_yaml}: no such file ({app})")
    policy_file = None
    if settings.policy_file is not None:
        policy_file = str(_invocation_path(config, settings.policy_file))
        if not os.path.isfile(policy_file):
            raise pytest.UsageError(
                f"--gae-sandbox-policy={settings.policy_file}: no such file ({policy_file})")
    try:
        if settings.app_yaml is None and not app.is_dir():
            raise ValueError(f"Policy.app_root: {str(app)!r} is not an existing folder")
        loaded = loaders.build_policy(app, policy_file=policy_file)
    except (TypeError, ValueError, OSError) as error:
        raise pytest.UsageError(f"gae_sandbox: bad policy: {error}") from None
    changes: dict[str, Any] = {}
    if app_root is not None and settings.app_yaml is not None:
        changes["app_root"] = app_root
    for name, value in flags.items():  # over the file's: lists add to them
        if isinstance(value, tuple) and value[:1] == ("add",):
            value = (*getattr(loaded.policy, name), *value[1])
        changes[name] = value
    if ("working_directory" in Policy.__dataclass_fields__
            and "working_directory" not in loaded.file_keys):
        # the body keeps the working directory pytest and its fixtures gave it
        changes["working_directory"] = "host"
    try:
        policy = loaded.policy.replace(**changes)
    except (TypeError, ValueError) as error:
        raise pytest.UsageError("gae_sandbox: bad policy from the gae_sandbox_* ini options "
                                f"or the --gae-sandbox-* options: {error}") from None
    sources = [f"{loaded.preset} preset"]
    if loaded.app_config is not None:
        sources.append(str(getattr(loaded.app_config, "path", "app.yaml")))
    if loaded.policy_file is not None:
        name = loaded.policy_file
        sources.append(f"{name} [tool.gae-sandbox]" if name.endswith("pyproject.toml")
                       else name)
    settings.source = " + ".join(sources)
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


def _item_policy(item: pytest.Item, *, forced: bool = False) -> tuple[Policy, float] | None:
    """The policy of ``item``'s body and its thread wait, ``None`` when it is not sandboxed.
    A bad marker or configuration fails this test alone, with a message naming the field."""
    known = item.stash.get(_POLICY, False)
    if known is not False and (known is not None or not forced):
        return known  # type: ignore[return-value]
    overrides = _marker_overrides(item)
    settings = item.config.stash[_SETTINGS]
    result: tuple[Policy, float] | None = None
    if forced or overrides is not None or settings.mode is not None:
        try:
            policy = _base_policy(item.config)
        except pytest.UsageError as error:
            pytest.fail(f"{item.nodeid}: {error}", pytrace=False)
        overrides = dict(overrides or {})
        shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        wait = settings.thread_wait
        if "thread_wait" in overrides:
            value = overrides.pop("thread_wait")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                pytest.fail(f"{item.nodeid}: bad @pytest.mark.{MARKER}({shown}): thread_wait "
                            f"must be seconds (a number, 0 or more), got {value!r}",
                            pytrace=False)
            wait = float(value)
        if overrides:
            try:
                policy = policy.replace(**overrides)
            except (TypeError, ValueError) as error:
                pytest.fail(f"{item.nodeid}: bad @pytest.mark.{MARKER}({shown}): {error}",
                            pytrace=False)
        result = (policy, wait)
    item.stash[_POLICY] = result
    return result


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
    _shield_from_pyfakefs()
    sandbox = Sandbox(policy)
    item.stash[_SANDBOX] = sandbox
    return sandbox


# --- the test body --------------------------------------------------------------------------


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Judge the marker before the fixtures run (this plugin's hook runs before pytest's
    own setup), so a bad override costs no setup."""
    _item_policy(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: Any) -> Iterator[None]:
    """A fixture the body asks its own request for (``request.getfixturevalue("capfd")``)
    is set up as host code, like every other fixture (a refusal never leaves it half set
    up), but only one pytest collected before the body ran, with the function it had then:
    a fixture definition the body made or changed is refused. A setup the body calls
    itself (``config.hook.pytest_fixture_setup``) stays in its sandbox."""
    known = _HOST_SETUPS.get(threading.get_ident())
    if known is not None and active_scope() is None:
        entry = known.get(id(fixturedef))
        if entry is None or entry[0] is not fixturedef or (
                getattr(fixturedef, "func", None) is not entry[1]):
            from .errors import SystemCallRefused

            name = getattr(fixturedef, "argname", None)
            raise SystemCallRefused(
                f"fixture {name if type(name) is str else '?'!r} set up as host code",
                "the test body made or changed this fixture's definition: only fixtures "
                "pytest collected before the body ran are set up outside its sandbox", None)
    yield


def _known_fixtures(request: Any) -> dict[int, tuple[Any, Any]]:
    """id -> (definition, its function) of every fixture definition pytest has collected
    (the session's fixture manager's tables, whatever their shape in this pytest version,
    and the request's own), read by host code before the body runs: the definitions a
    body's ``getfixturevalue`` may set up as host code."""
    from _pytest.fixtures import FixtureDef

    known: dict[int, tuple[Any, Any]] = {}
    manager = getattr(request, "_fixturemanager", None)
    pending = [*(vars(manager).values() if hasattr(manager, "__dict__") else ()),
               getattr(request, "_arg2fixturedefs", None)]
    depth = {id(value): 0 for value in pending}
    while pending:
        value = pending.pop()
        if isinstance(value, FixtureDef):
            known[id(value)] = (value, getattr(value, "func", None))
        elif type(value) in (dict, list, tuple) and depth.get(id(value), 3) < 3:
            items = value.values() if type(value) is dict else value
            for item in items:
                depth[id(item)] = depth[id(value)] + 1
                pending.append(item)
    return known


def _request_state(request: Any) -> dict[str, Any]:
    """The body's request's own attributes as pytest left them before the body ran."""
    held = getattr(request, "__dict__", None)
    return dict(held) if type(held) is dict else {}


def _same_state(request: Any, state: dict[str, Any]) -> bool:
    """Whether ``request`` still has exactly the attributes of ``state`` (the very objects),
    and its tables (dicts) only ``str`` keys: pytest's own code reads them as host code when
    the body asks for a fixture, so a replaced attribute or an odd key would be app code run
    there. Checked in the body's sandbox (a key's ``__eq__`` runs as app code)."""
    held = getattr(request, "__dict__", None)
    if type(held) is not dict or len(held) != len(state):
        return False
    for name, value in list(held.items()):
        if type(name) is not str or state.get(name, _MISSING) is not value:
            return False
        if type(value) is dict and not all(type(key) is str for key in list(value)):
            return False
        if isinstance(value, dict) and type(value) is not dict:
            return False
    return True


_MISSING = object()


#: Thread ident -> the fixture definitions known before the body (:func:`_known_fixtures`)
#: while that thread sets up, as host code, a fixture a body asked its own request for.
_HOST_SETUPS: dict[int, dict[int, tuple[Any, Any]]] = {}


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
        chosen = _item_policy(item, forced=True)
        assert chosen is not None
        sandbox = _make_sandbox(item, chosen[0], request.getfixturevalue)
    return sandbox


def _describe_thread(ident: int | None, name: str) -> str:
    """``'name' (module.target)``: the function the thread runs."""
    thread = next((t for t in threading.enumerate() if t.ident == ident), None)
    target = getattr(thread, "_target", None)
    if target is None and thread is not None and type(thread).run is not threading.Thread.run:
        target = type(thread).run
    if target is None:
        return repr(name)
    where = getattr(target, "__module__", None) or "?"
    return f"{name!r} ({where}.{getattr(target, '__qualname__', repr(target))})"


def _wait_for_threads(wait: float) -> dict[str, Any] | None:
    """At the end of a body, in its scope: wait up to ``wait`` seconds (never past the
    deadline) for the threads it started; what is still running is handed to nobody (it
    stays sandboxed), so the scope's own end does not wait again. ``None`` if none ran."""
    scope = active_scope()
    registry = getattr(scope, "threads", None)
    if scope is None or registry is None:
        return None
    current = threading.get_ident()
    running = [t for t in registry.running() if t.ident != current]
    if not running:
        return None
    described = [_describe_thread(t.ident, t.name) for t in running]
    started = time.monotonic()
    end = started + wait
    deadline = scope.deadline
    if deadline is not None and getattr(deadline, "when", None) is not None:
        end = min(end, deadline.when)
    gc.collect()  # an executor the body dropped (asgiref's) lets its idle worker go
    for tracked in running:
        tracked.wait(max(end - time.monotonic(), 0.0))
    scope.threads = None
    return {
        "threads": described,
        "waited": round(time.monotonic() - started, 3),
        "still_running": [d for d, t in zip(described, running, strict=True) if t.alive],
        "wait": wait,
    }


def _sandboxed(item: pytest.Item, sandbox: Sandbox, wait: float,
               runtest: Callable[[], None]) -> Callable[[], None]:
    """``item.runtest`` inside the sandbox, with no bytecode written meanwhile: pytest's
    assertion rewriter and importlib would write caches for the body's imports, and those
    writes are not the test's."""

    def runtest_in_sandbox() -> None:
        __tracebackhide__ = True
        dont_write_bytecode = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        finders = list(sys.meta_path)
        request = vars(item).get("_request")  # the body's own, as pytest made it
        _BODY_REQUESTS.append((request, _known_fixtures(request), _request_state(request)))
        try:
            with sandbox:
                try:
                    runtest()
                finally:
                    waited = _wait_for_threads(wait)
                    if waited is not None:
                        item.stash[_WAITED] = waited
        finally:
            for index, (known, _, _) in enumerate(_BODY_REQUESTS):
                if known is request:
                    del _BODY_REQUESTS[index]
                    break
            sys.dont_write_bytecode = dont_write_bytecode
            _gate_back_in_place(finders)

    return runtest_in_sandbox


def _gate_back_in_place(before: list[Any]) -> None:
    """Entering the sandbox puts the import gate first in ``sys.meta_path``; a fixture's
    finder that was first (pyfakefs's ``fs``, which removes ``sys.meta_path[0]`` at its
    teardown) gets its place back once the body is over."""
    from .imports import GATE

    finders = sys.meta_path
    if GATE not in before or not finders or finders[0] is not GATE:
        return
    ahead = before[:before.index(GATE)]
    if ahead and finders[1:1 + len(ahead)] == ahead:
        finders.remove(GATE)
        finders.insert(len(ahead), GATE)


_WAITED = pytest.StashKey[dict[str, Any]]()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Sandbox the test body and publish its violations.

    The sandbox wraps ``item.runtest()``, not the whole call phase: pytest's runner sets
    ``PYTEST_CURRENT_TEST`` in the environment around the body, which the sandbox refuses.
    """
    chosen = _item_policy(item)
    sandbox = item.stash.get(_SANDBOX, None)
    if sandbox is None and chosen is not None:
        sandbox = _make_sandbox(item, chosen[0], getattr(item, "funcargs", {}).get)
    if sandbox is None:
        yield
        return
    wait = chosen[1] if chosen is not None else item.config.stash[_SETTINGS].thread_wait
    if not _FINALIZERS_WRAPPED:
        _wrap_finalizers()
    own = vars(item).get("runtest")
    item.runtest = _sandboxed(item, sandbox, wait, item.runtest)  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is not None:
            item.runtest = own  # type: ignore[method-assign]
        else:
            del item.runtest
        violations = [violation.to_dict() for violation in sandbox.violations]
        item.user_properties.append((PROPERTY, json.dumps(violations)))
        waited = item.stash.get(_WAITED, None)
        if waited is not None:
            item.user_properties.append((THREADS_PROPERTY, json.dumps(waited)))


_FINALIZERS_WRAPPED: list[bool] = []

#: The request object each running sandboxed body was handed (the item's own, read by host
#: code before the body starts), with the fixture definitions known then and its own
#: attributes then: its ``getfixturevalue`` sets those fixtures up as host code while the
#: attributes are unchanged. A request the app made itself is not one
#: of these, however it looks.
_BODY_REQUESTS: list[tuple[Any, dict[int, tuple[Any, Any]], dict[str, Any]]] = []


def _wrap_finalizers() -> None:
    """What the sandboxed body hands pytest to call later runs in the test's sandbox or not
    at all: a finalizer it adds (``request.addfinalizer(f)``) and a cleanup
    (``config.add_cleanup(f)``) are wrapped to run in the test's sandbox, as every callback
    registered from inside a sandbox (``registrations.sandboxed``); a plugin
    (``pluginmanager.register``) is refused, its hooks would run as host code for every
    later test. A fixture the body asks its own request for is set up as host code, with the
    teardown pytest schedules for it. Done once, at the first sandboxed test; outside a
    sandbox the methods pass their arguments on as they are."""
    import pluggy
    from _pytest.config import Config, PytestPluginManager
    from _pytest.fixtures import FixtureDef, FixtureRequest
    from _pytest.nodes import Node

    from .context import host_call, passthrough
    from .patches import _named, _refuse_system
    from .registrations import sandboxed

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def addfinalizer(self: Any, finalizer: Any, *args: Any, **kwargs: Any) -> Any:
            if active_scope() is not None:
                finalizer = sandboxed(finalizer)
            return original(self, finalizer, *args, **kwargs)

        return _named(addfinalizer, original)

    def host_fixture(original: Callable[..., Any]) -> Callable[..., Any]:
        def getfixturevalue(self: Any, argname: Any) -> Any:
            if active_scope() is None or not isinstance(argname, str):
                return original(self, argname)
            found = next((entry for entry in _BODY_REQUESTS if entry[0] is self), None)
            if found is None:  # a request the body made: its fixtures are the body's
                return original(self, argname)
            _, known, state = found
            if not _same_state(self, state):
                from .errors import SystemCallRefused

                raise SystemCallRefused(
                    f"request.getfixturevalue({str.__str__(argname)!r})",
                    "the test body changed its request object (an attribute replaced, or "
                    "a key that is not a str added to one of its tables), which pytest reads "
                    "as host code while it sets the fixture up", None)
            thread = threading.get_ident()
            outer = _HOST_SETUPS.get(thread)
            _HOST_SETUPS[thread] = known
            try:
                return host_call(original, self, str.__str__(argname))
            finally:
                if outer is None:
                    _HOST_SETUPS.pop(thread, None)
                else:
                    _HOST_SETUPS[thread] = outer

        return _named(getfixturevalue, original)

    def refused(original: Callable[..., Any]) -> Callable[..., Any]:
        what = f"pytest's {original.__qualname__}()"

        def refuse(*args: Any, **kwargs: Any) -> Any:
            scope = active_scope()
            if scope is not None:
                scope.judge(_refuse_system, what, "a plugin's hooks would run as host code "
                            "for every later test: register it in conftest.py")
                return passthrough(original, *args, **kwargs)  # report mode
            return original(*args, **kwargs)

        return _named(refuse, original)

    changes: list[tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
        (Node, "addfinalizer", wrap), (FixtureDef, "addfinalizer", wrap),
        (Config, "add_cleanup", wrap), (FixtureRequest, "getfixturevalue", host_fixture)]
    for owner in (pluggy.PluginManager, PytestPluginManager):
        for name in ("register", "add_hookcall_monitoring", "add_hookspecs",
                     "enable_tracing"):
            changes.append((owner, name, refused))
    for owner, name, make in changes:
        original = vars(owner).get(name)
        if callable(original):
            setattr(owner, name, make(original))
    _FINALIZERS_WRAPPED.append(True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Forget the test's sandbox after teardown (a rerun of the item starts afresh)."""
    yield
    for key in (_SANDBOX, _POLICY, _WAITED):
        if key in item.stash:
            del item.stash[key]


# --- the summary ----------------------------------------------------------------------------

#: How each setting a refusal names is changed for one test, or for the whole suite.
_HOW_TO_ALLOW: dict[str, str] = {
    "filesystem": '@pytest.mark.gae_sandbox(filesystem="memory") (writes succeed in a '
                  "private in-memory filesystem: for tests that write into tmp_path), or "
                  "write the files in a fixture",
    "readable_paths": "@pytest.mark.gae_sandbox(readable_paths=[FOLDER]), or the "
                      "gae_sandbox_readable_paths ini option / readable_paths in the policy "
                      "file for every test",
    "allowed_hosts": '@pytest.mark.gae_sandbox(allowed_hosts=["HOST:PORT"]), or the '
                     "gae_sandbox_allowed_hosts ini option / allowed_hosts in the policy file",
    "allowed_modules": '@pytest.mark.gae_sandbox(allowed_modules=["NAME"]), or '
                       "allowed_modules in the policy file",
    "allowed_c_extensions": '@pytest.mark.gae_sandbox(allowed_c_extensions=["NAME"]), or '
                            "app.yaml libraries: / allowed_c_extensions in the policy file",
    "blocked_modules": "@pytest.mark.gae_sandbox(blocked_modules=[...]) without it, or "
                       "blocked_modules in the policy file",
    "deadline": "@pytest.mark.gae_sandbox(deadline=SECONDS), or --gae-sandbox-deadline",
    "skip_files": "skip_files in app.yaml or the policy file",
    "unreadable_paths": "application_readable: true in app.yaml, or unreadable_paths in the "
                        "policy file",
    "env_variables": "@pytest.mark.gae_sandbox(env_variables={...}), or env_variables in "
                     "app.yaml or the policy file",
}


def how_to_allow(setting: str | None) -> str:
    """The marker or setting that allows what a refusal's ``setting`` names."""
    if not setting:
        return 'no setting allows it: change the code, or mark the test mode="report"'
    return _HOW_TO_ALLOW.get(setting) or (
        f"@pytest.mark.gae_sandbox({setting}=...), or {setting} in the policy file")


def escaped(text: Any, limit: int = 0) -> str:
    """``text`` printable on one line: control characters (newlines, NUL) escaped; shortened
    to ``limit`` characters when given."""
    value = str(text)
    if not value.isprintable():
        value = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                        for c in value)
    if limit and len(value) > limit:
        value = value[:limit - 3] + "..."
    return value


def _location_key(location: str) -> tuple[str, int]:
    """``file:line`` in file order, line numbers as numbers."""
    path, _, line = location.rpartition(":")
    return (path, int(line)) if line.isdigit() else (location, 0)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass
class _Group:
    kind: str
    rule: str
    setting: str | None
    distinct: int = 0
    occurrences: int = 0
    tests: set[str] = field(default_factory=set)
    #: location -> [occurrences, first target]
    locations: dict[str, list[Any]] = field(default_factory=dict)
    enforced: bool = False


def group_violations(by_test: dict[str, list[dict[str, Any]]],
                     root: str = "") -> list[_Group]:
    """The violations of every test, grouped by kind and rule, most occurrences first."""
    groups: dict[tuple[str, str], _Group] = {}
    for nodeid, violations in by_test.items():
        for violation in violations:
            kind, rule = str(violation.get("kind")), str(violation.get("rule"))
            group = groups.get((kind, rule))
            if group is None:
                group = groups[(kind, rule)] = _Group(kind, rule, violation.get("setting"))
            count = int(violation.get("count", 1))
            group.distinct += 1
            group.occurrences += count
            group.tests.add(nodeid)
            group.enforced = group.enforced or bool(violation.get("enforced"))
            location = str(violation.get("location", "?"))
            if root and location.startswith(root):
                location = location[len(root):]
            seen = group.locations.setdefault(location, [0, violation.get("target")])
            seen[0] += count
    return sorted(groups.values(), key=lambda g: (-g.occurrences, g.kind, g.rule))


class _Summary:
    """Collects each sandboxed test's violations and thread waits from its call report;
    prints them at the end, grouped by kind and rule.

    Registered per session because ``pytest_runtest_logreport`` gets no ``config``; the data
    lives in ``config.stash``. Under pytest-xdist the controller reads the reports the workers
    send, and only the controller prints and writes the report file.
    """

    TOP_LOCATIONS = 3

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        results = self.config.stash[_RESULTS]
        properties = report.user_properties
        if type(properties) is not list:
            return
        # what a test body appended is there too: only exact tuples of exact str are read,
        # so no method of the app's runs here (a str subclass's __eq__)
        for entry in list(properties):
            if type(entry) is not tuple or len(entry) != 2:
                continue
            name, value = entry
            if type(name) is not str or type(value) is not str:
                continue
            if name == PROPERTY:
                results.by_test[report.nodeid] = json.loads(value)
            elif name == THREADS_PROPERTY:
                results.threads[report.nodeid] = json.loads(value)

    def _root(self) -> str:
        return str(self.config.rootpath) + os.sep

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if hasattr(self.config, "workerinput"):
            return  # an xdist worker: the controller prints
        results = self.config.stash[_RESULTS]
        by_test = results.by_test
        if not by_test:
            return
        write = terminalreporter.write_line
        root = self._root()
        terminalreporter.write_sep("=", "gae_sandbox violations")
        groups = group_violations(by_test, root)
        for group in groups:
            how = "refused" if group.enforced else "reported"
            write(f"{group.kind}: {group.rule} ({_plural(group.distinct, 'violation')}, "
                  f"{_plural(group.occurrences, 'occurrence')} in "
                  f"{_plural(len(group.tests), 'test')}, {how})")
            write(f"    allow: {how_to_allow(group.setting)}")
            ranked = sorted(group.locations.items(),
                            key=lambda item: (-item[1][0], _location_key(item[0])))
            for location, (count, target) in ranked[:self.TOP_LOCATIONS]:
                write(f"    {location} (x{count}): {escaped(target, 100)}")
            if len(ranked) > self.TOP_LOCATIONS:
                write(f"    ... {_plural(len(ranked) - self.TOP_LOCATIONS, 'more location')}")
        if self.config.option.verbose >= 2:
            self._per_test(write, by_test, root)
        for nodeid, waited in results.threads.items():
            still = waited.get("still_running") or []
            line = (f"{nodeid}: waited {waited.get('waited', 0):.2f} s for "
                    f"{', '.join(waited.get('threads') or [])}")
            if still:
                line += (f"; still running after {waited.get('wait', 0):g} s (left running; "
                         "--gae-sandbox-thread-wait, marker thread_wait=)")
            write(f"thread wait: {line}")
        sandboxed = _plural(len(by_test), "sandboxed test")
        distinct = sum(group.distinct for group in groups)
        occurrences = sum(group.occurrences for group in groups)
        tests = sum(1 for violations in by_test.values() if violations)
        if distinct:
            more = "" if self.config.option.verbose >= 2 else "; -vv lists them per test"
            if self.config.stash[_SETTINGS].report_file:
                more += f"; all in {self.config.stash[_SETTINGS].report_file}"
            write(f"gae_sandbox: {_plural(distinct, 'violation')} "
                  f"({_plural(occurrences, 'occurrence')}) in {tests} of {sandboxed}{more}",
                  red=True)
        else:
            write(f"gae_sandbox: no violations in {sandboxed}", green=True)

    @staticmethod
    def _per_test(write: Callable[..., None], by_test: dict[str, list[dict[str, Any]]],
                  root: str) -> None:
        for nodeid, violations in by_test.items():
            if not violations:
                continue
            write(nodeid)
            for violation in violations:
                location = str(violation.get("location", "?"))
                if location.startswith(root):
                    location = location[len(root):]
                how = "refused" if violation.get("enforced") else "reported"
                write(f"    {violation.get('kind')}: {escaped(violation.get('target'))} "
                      f"at {location} (x{int(violation.get('count', 1))}, {how})")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        settings = self.config.stash[_SETTINGS]
        if settings.report_file is None or hasattr(self.config, "workerinput"):
            return
        results = self.config.stash[_RESULTS]
        root = self._root()
        document = {
            "mode": settings.mode,
            "policy": settings.source,
            "groups": [{
                "kind": group.kind, "rule": group.rule, "setting": group.setting,
                "allow": how_to_allow(group.setting), "violations": group.distinct,
                "occurrences": group.occurrences, "tests": len(group.tests),
                "locations": {location: count for location, (count, _) in sorted(
                    group.locations.items(),
                    key=lambda item: (-item[1][0], _location_key(item[0])))},
            } for group in group_violations(results.by_test, root)],
            "tests": {nodeid: {"violations": violations,
                               "threads": results.threads.get(nodeid)}
                      for nodeid, violations in results.by_test.items()},
        }
        path = _invocation_path(self.config, settings.report_file)
        path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
