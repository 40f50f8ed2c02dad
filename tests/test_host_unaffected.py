"""The host is never restricted by a sandbox in another thread; scopes nest, are per thread
and per entry; report mode lets operations through and records them; uninstall restores."""

from __future__ import annotations

import builtins
import contextvars
import importlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gae_sandbox
from gae_sandbox import (
    FileWriteRefused,
    ImportRefused,
    NetworkRefused,
    Policy,
    ProcessRefused,
    Sandbox,
    SandboxViolation,
    current_sandbox,
)
from gae_sandbox import imports as gate

BLOCKED_PURE_MODULE = "tty"  # pure Python, in Policy.python27's blocked_modules


def connect(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
    finally:
        sock.close()


def fresh_import(name: str) -> object:
    """Import ``name`` anew (through the finders, not the sys.modules cache) and put the
    original module back, so nothing else sees a second copy."""
    saved = sys.modules.pop(name, None)
    try:
        return importlib.import_module(name)
    finally:
        if saved is not None:
            sys.modules[name] = saved


# --- a sandboxed thread beside an unrestricted host ---------------------------------------------


def test_sandboxed_thread_does_not_restrict_host(policy: Policy, tmp_path: Path,
                                                 listener) -> None:
    sandbox_dir = tmp_path / "from-sandbox"
    sandbox_dir.mkdir()
    host_dir = tmp_path / "from-host"
    host_dir.mkdir()
    inside = threading.Event()
    host_done = threading.Event()
    counts = {"write_refused": 0, "connect_refused": 0, "import_refused": 0, "let_through": 0}
    unexpected: list[BaseException] = []

    def sandboxed() -> None:
        started = time.monotonic()
        try:
            with Sandbox(policy):
                inside.set()
                attempt = 0
                # ~0.5 s, and at least until the host is done; never beyond 3 s
                while time.monotonic() - started < 3 and not (
                    host_done.is_set() and time.monotonic() - started >= 0.5
                ):
                    attempt += 1
                    try:
                        with open(sandbox_dir / f"attempt-{attempt}.txt", "w") as handle:
                            handle.write("escaped")
                        counts["let_through"] += 1
                    except FileWriteRefused:
                        counts["write_refused"] += 1
                    try:
                        connect(listener.port)
                        counts["let_through"] += 1
                    except NetworkRefused:
                        counts["connect_refused"] += 1
                    try:
                        importlib.import_module(BLOCKED_PURE_MODULE)
                        counts["let_through"] += 1
                    except ImportRefused:
                        counts["import_refused"] += 1
                    time.sleep(0.005)
        except BaseException as error:  # noqa: B036 - reported by the main thread
            unexpected.append(error)
        finally:
            inside.set()

    thread = threading.Thread(target=sandboxed, name="sandboxed-loop")
    thread.start()
    try:
        assert inside.wait(5)
        assert current_sandbox() is None
        # the host, while the other thread is inside its sandbox:
        for index in range(5):
            (host_dir / f"host-{index}.txt").write_text(f"host {index}")
        for _ in range(3):
            connect(listener.port)
        marker = host_dir / "from-subprocess"
        subprocess.run(["/bin/sh", "-c", f"touch '{marker}'"], check=True, timeout=10)
        module = fresh_import(BLOCKED_PURE_MODULE)
        still_sandboxed = thread.is_alive()
    finally:
        host_done.set()
        thread.join(5)
    assert not thread.is_alive()
    assert unexpected == []
    assert still_sandboxed  # the host's operations overlapped the sandboxed loop
    # every host operation succeeded
    assert sorted(p.name for p in host_dir.iterdir()) == [
        "from-subprocess", *(f"host-{i}.txt" for i in range(5))]
    assert (host_dir / "host-3.txt").read_text() == "host 3"
    assert getattr(module, "__name__", None) == BLOCKED_PURE_MODULE
    assert listener.settle() == 3
    # the sandboxed thread saw only refusals
    assert counts["let_through"] == 0
    assert counts["write_refused"] >= 5
    assert counts["connect_refused"] == counts["write_refused"]
    assert counts["import_refused"] == counts["write_refused"]
    assert list(sandbox_dir.iterdir()) == []


# --- nesting, threads, order --------------------------------------------------------------------


def test_nested_sandbox_only_narrows(policy: Policy, listener) -> None:
    outer = Sandbox(policy.replace(allowed_hosts=(f"127.0.0.1:{listener.port}",)))
    inner = Sandbox(policy)  # allowed_hosts=()
    with outer:
        connect(listener.port)
        with inner:
            assert current_sandbox() == inner
            with pytest.raises(NetworkRefused):
                connect(listener.port)
        assert current_sandbox() == outer
        connect(listener.port)
    assert current_sandbox() is None
    assert listener.settle() == 2
    assert outer.violations == []
    assert [v.kind for v in inner.violations] == ["network"]


def test_nested_wider_policy_does_not_widen(policy: Policy, listener) -> None:
    outer = Sandbox(policy)
    inner = Sandbox(policy.replace(allowed_hosts=("127.0.0.1:*",)))
    with outer, inner:
        with pytest.raises(NetworkRefused):
            connect(listener.port)
    assert listener.settle() == 0
    assert [v.kind for v in outer.violations] == ["network"]
    assert inner.violations == []


def test_one_sandbox_entered_by_several_threads(policy: Policy, tmp_path: Path) -> None:
    box = Sandbox(policy)
    workers = 4
    all_inside = threading.Barrier(workers + 1, timeout=5)
    host_checked = threading.Barrier(workers + 1, timeout=5)
    seen: dict[int, object] = {}
    after: dict[int, object] = {}
    refused: dict[int, bool] = {}
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            with box:
                seen[index] = current_sandbox()
                all_inside.wait()
                try:
                    with open(tmp_path / f"worker-{index}.txt", "w") as handle:
                        handle.write("escaped")
                    refused[index] = False
                except FileWriteRefused:
                    refused[index] = True
                host_checked.wait()
            after[index] = current_sandbox()
        except BaseException as error:  # noqa: B036 - reported by the main thread
            errors.append(error)
            all_inside.abort()
            host_checked.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        all_inside.wait()  # every worker is inside the same Sandbox object now
        assert current_sandbox() is None
        (tmp_path / "host.txt").write_text("host")  # the host is not restricted
        host_checked.wait()
    finally:
        for thread in threads:
            thread.join(5)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert seen == {i: box for i in range(workers)}
    assert refused == {i: True for i in range(workers)}
    assert after == {i: None for i in range(workers)}
    assert (tmp_path / "host.txt").read_text() == "host"
    assert not any((tmp_path / f"worker-{i}.txt").exists() for i in range(workers))
    writes = [v for v in box.violations if v.kind == "file_write"]
    assert len(writes) == workers
    for index in range(workers):
        assert sum(f"worker-{index}.txt" in v.target for v in writes) == 1


def test_exiting_out_of_order_raises_and_ends_the_sandboxes_left_open(
        policy: Policy, tmp_path: Path) -> None:
    """The outer sandbox's exit ends an inner one still open (app code may enter one and
    never leave it): the host is not left sandboxed, and is told."""
    outer = Sandbox(policy)
    inner = Sandbox(policy)
    outer.__enter__()
    inner.__enter__()
    with pytest.raises(RuntimeError, match="out of order"):
        outer.__exit__(None, None, None)
    assert current_sandbox() is None
    (tmp_path / "host.txt").write_text("host code again")  # not refused
    with pytest.raises(RuntimeError, match="out of order"):
        inner.__exit__(None, None, None)  # it ended with the outer one
    assert current_sandbox() is None


def test_exiting_a_sandbox_never_entered_raises(policy: Policy) -> None:
    with pytest.raises(RuntimeError, match="out of order"):
        Sandbox(policy).__exit__(None, None, None)
    assert current_sandbox() is None


def test_exiting_in_a_thread_that_never_entered_raises(policy: Policy) -> None:
    box = Sandbox(policy)
    entered = threading.Event()
    errors: list[BaseException] = []

    def leave() -> None:
        if entered.wait(5):
            try:
                box.__exit__(None, None, None)
            except BaseException as error:  # noqa: B036 - checked below
                errors.append(error)

    thread = threading.Thread(target=leave)  # started by the host, outside any sandbox
    thread.start()
    box.__enter__()
    try:
        entered.set()
        thread.join(5)
        assert not thread.is_alive()
        assert current_sandbox() == box  # the entering thread is still inside
    finally:
        box.__exit__(None, None, None)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert current_sandbox() is None


def test_exit_from_a_thread_that_inherited_the_scope(policy: Policy) -> None:
    def scenario() -> tuple[list[BaseException], bool]:
        box = Sandbox(policy)
        errors: list[BaseException] = []

        def leave() -> None:
            try:
                box.__exit__(None, None, None)
            except BaseException as error:  # noqa: B036 - checked below
                errors.append(error)

        box.__enter__()
        thread = threading.Thread(target=leave)  # carries the sandbox
        thread.start()
        thread.join(5)
        try:
            box.__exit__(None, None, None)
        except RuntimeError:
            return errors, False
        return errors, current_sandbox() is None

    # in a copy of the context, so a scope the bug leaves active cannot leak into pytest
    errors, owner_left = contextvars.copy_context().run(scenario)
    assert current_sandbox() is None
    assert [type(error) for error in errors] == [RuntimeError]
    assert owner_left


# --- report mode ------------------------------------------------------------------------------


def in_this_file(location: str) -> bool:
    filename, _, line = location.rpartition(":")
    return Path(filename).resolve() == Path(__file__).resolve() and line.isdigit()


def test_report_mode_lets_a_connection_through_and_records_it(policy: Policy,
                                                              listener) -> None:
    box = Sandbox(policy.replace(mode="report"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        with box:
            line = sys._getframe().f_lineno + 1
            sock.connect(("127.0.0.1", listener.port))
    finally:
        sock.close()
    assert listener.settle() == 1
    assert len(box.violations) == 1
    violation = box.violations[0]
    assert violation.kind == "network"
    assert violation.enforced is False
    assert f"127.0.0.1:{listener.port}" in violation.target
    assert violation.setting == "allowed_hosts"
    assert in_this_file(violation.location)
    assert violation.location.endswith(f":{line}")


def test_report_mode_create_connection_is_one_record(policy: Policy, listener) -> None:
    box = Sandbox(policy.replace(mode="report"))
    with box:
        socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
    assert listener.settle() == 1
    assert [v.kind for v in box.violations] == ["network"]


def test_report_mode_lets_a_process_run_and_records_it(policy: Policy, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    box = Sandbox(policy.replace(mode="report"))
    with box:
        line = sys._getframe().f_lineno + 1
        status = os.system(f"touch '{marker}'")
    assert status == 0
    assert marker.exists()
    assert len(box.violations) == 1
    violation = box.violations[0]
    assert violation.kind == "process"
    assert violation.enforced is False
    assert in_this_file(violation.location)
    assert violation.location.endswith(f":{line}")


def test_report_mode_subprocess_is_one_record(policy: Policy, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    box = Sandbox(policy.replace(mode="report"))
    with box:
        subprocess.run(["/bin/sh", "-c", f"touch '{marker}'"], check=True, timeout=10)
    assert marker.exists()
    assert [(v.kind, in_this_file(v.location)) for v in box.violations] == [("process", True)]


def test_enforce_mode_records_the_refusal_too(policy: Policy, tmp_path: Path) -> None:
    box = Sandbox(policy)
    marker = tmp_path / "marker"
    with box:
        for _ in range(3):  # swallowed by the app, still recorded (once, with a count)
            try:
                os.system(f"touch '{marker}'")
            except ProcessRefused:
                pass
    assert not marker.exists()
    assert len(box.violations) == 1
    assert box.violations[0].kind == "process"
    assert box.violations[0].enforced is True
    assert box.violations[0].count == 3


# --- uninstall and re-install -------------------------------------------------------------------


def test_uninstall_restores_import_and_a_later_sandbox_reinstalls(policy: Policy,
                                                                   tmp_path: Path) -> None:
    was_installed = gae_sandbox.is_installed()
    try:
        with Sandbox(policy):
            with pytest.raises(RuntimeError):
                gae_sandbox.uninstall()  # refused while a sandbox is active
        assert builtins.__import__ is gate.gated_import

        gae_sandbox.uninstall()
        assert not gae_sandbox.is_installed()
        assert builtins.__import__ is gate.original_import
        assert gate.GATE not in sys.meta_path
        assert importlib.import_module is gate.original_import_module
        assert not hasattr(os.stat, "__wrapped__")
        assert getattr(fresh_import(BLOCKED_PURE_MODULE), "__name__", None) == "tty"

        marker = tmp_path / "written.txt"
        with Sandbox(policy):
            assert gae_sandbox.is_installed()
            assert builtins.__import__ is gate.gated_import
            assert sys.meta_path[0] is gate.GATE
            with pytest.raises(ImportRefused):
                importlib.import_module(BLOCKED_PURE_MODULE)
            with pytest.raises(SandboxViolation):
                marker.write_text("escaped")
        assert not marker.exists()
        assert gae_sandbox.is_installed()
        assert builtins.__import__ is gate.gated_import
    finally:
        if was_installed:
            gae_sandbox.install()
        else:
            gae_sandbox.uninstall()
    assert gae_sandbox.is_installed() is was_installed


def test_modules_imported_after_install_are_plain_modules(policy: Policy) -> None:
    """``sys``, ``logging``, ``threading`` and ``warnings`` change class while installed (to
    route hook assignments); the import system makes every new module with
    ``type(sys)(name)``, and those must stay plain modules, inside a sandbox and out."""
    import types

    with Sandbox(policy):
        pass  # installed
    assert type(sys) is not types.ModuleType  # the control: sys's class is changed
    assert type(fresh_import("colorsys")) is types.ModuleType
    assert type(type(sys)("made_like_the_import_system")) is types.ModuleType
    with Sandbox(policy):
        assert type(fresh_import("colorsys")) is types.ModuleType
