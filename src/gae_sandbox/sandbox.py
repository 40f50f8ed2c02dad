"""The request scope, and the process-wide install it relies on.

Hooks are installed once (idempotently, on first use); a ``Sandbox`` only switches the
ContextVar that every hook reads, so entering and leaving costs microseconds and the host's
other threads are never restricted.
"""

from __future__ import annotations

import builtins
import importlib
import sys
import threading
from types import TracebackType
from typing import Any

from . import imports, patches
from .audit import install_audit_hook
from .context import _ACTIVE, Layer, Scope
from .policy import Policy
from .report import Report, Violation

_install_lock = threading.RLock()
_patches: list[patches.Patch] = []
_installed = False
_active_count = 0


def install() -> None:
    """Install the process-wide hooks (idempotent). Called by the first ``Sandbox`` entry;
    call it early yourself to keep references captured later by host code patched too."""
    global _installed
    with _install_lock:
        if _installed:
            _ensure_gate_first()
            return
        install_audit_hook()
        _patches[:] = patches.build_patches()
        _patches.extend([
            (builtins, "__import__", imports.original_import, imports.gated_import),
            (importlib, "import_module", imports.original_import_module,
             imports.gated_import_module),
            (imports._bootstrap, "_gcd_import", imports.original_gcd_import,
             imports.gated_gcd_import),
        ])
        patches.apply(_patches)
        _ensure_gate_first()
        _installed = True


def uninstall() -> None:
    """Remove the patches and the import finder (the audit hook stays, inert). For tests;
    refused while a sandbox is active anywhere in the process."""
    global _installed
    with _install_lock:
        if _active_count:
            raise RuntimeError(
                f"gae_sandbox.uninstall(): {_active_count} sandbox scope(s) are still active"
            )
        patches.restore(_patches)
        _patches.clear()
        while imports.GATE in sys.meta_path:
            sys.meta_path.remove(imports.GATE)
        _installed = False


def is_installed() -> bool:
    return _installed


def _ensure_gate_first() -> None:
    if not sys.meta_path or sys.meta_path[0] is not imports.GATE:
        while imports.GATE in sys.meta_path:
            sys.meta_path.remove(imports.GATE)
        sys.meta_path.insert(0, imports.GATE)
    if builtins.__import__ is not imports.gated_import:
        builtins.__import__ = imports.gated_import


def _count(delta: int) -> None:
    global _active_count
    with _install_lock:
        _active_count += delta


class Sandbox:
    """``with Sandbox(policy):`` runs the body under the policy.

    One ``Sandbox`` may be entered by many threads at once (each entry is its own scope in
    its own context); ``violations`` collects what all its entries did. Entering inside
    another sandbox adds a layer: the operation must pass both, so nesting only narrows.
    """

    def __init__(self, policy: Policy) -> None:
        if not isinstance(policy, Policy):
            raise TypeError(
                f"Sandbox(policy) needs a gae_sandbox.Policy, got {type(policy).__name__}; "
                "build one with Policy.python27(app_root=...)"
            )
        self.policy = policy
        self._report = Report()
        self._layer = Layer(policy, self._report)

    def __enter__(self) -> Sandbox:
        if not _installed or sys.meta_path[0] is not imports.GATE or (
            builtins.__import__ is not imports.gated_import
        ):
            install()
        scope = Scope(self._layer, _ACTIVE.get(), self)
        scope.extras["token"] = _ACTIVE.set(scope)
        _count(1)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        scope = _ACTIVE.get()
        if scope is None or scope.owner is not self:
            raise RuntimeError(
                "Sandbox exited out of order: leave nested sandboxes innermost first, "
                "in the thread or task that entered them"
            )
        _ACTIVE.reset(scope.extras["token"])
        _count(-1)

    @property
    def violations(self) -> list[Violation]:
        """Every distinct violation seen by this sandbox's entries, with counts."""
        return self._report.violations

    @property
    def report(self) -> Report:
        return self._report

    def __repr__(self) -> str:
        return f"Sandbox({self.policy!r})"


def current_sandbox() -> Any:
    """The innermost active ``Sandbox`` in this context, or ``None``."""
    scope = _ACTIVE.get()
    return scope.owner if scope is not None else None


def active_scope() -> Scope | None:
    return _ACTIVE.get()
