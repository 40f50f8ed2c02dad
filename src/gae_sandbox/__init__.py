"""gae_sandbox: the App Engine python27 runtime's sandbox, in process, around any WSGI app.

    from gae_sandbox import Policy, Sandbox

    with Sandbox(Policy.python27(app_root="path/to/app")):
        body = app(environ, start_response)
"""

from __future__ import annotations

import logging
import sys as _sys

from .confine import Confinement, confine_process
from .errors import (
    AppFailedError,
    CExtensionRefused,
    ConfinementUnavailable,
    DeadlineExceededError,
    FileReadRefused,
    FileWriteRefused,
    FunctionNotImplementedRefused,
    HardDeadlineExceeded,
    ImportRefused,
    LocaleRefused,
    NetworkRefused,
    NotAvailableRefused,
    ProcessRefused,
    RestrictedCodeError,
    SandboxStateRefused,
    SandboxViolation,
    SystemCallRefused,
    TempfileRefused,
    ThreadRefused,
)
from .loaders import PolicyConfigError, build_policy, policy_from_app_yaml, read_policy_file
from .middleware import SandboxMiddleware
from .policy import Policy
from .report import Violation
from .restricted import AttributeRefused, BuiltinRefused
from .sandbox import Sandbox, current_sandbox, install, is_installed, uninstall
from .threads import start_background_thread

logging.getLogger("gae_sandbox").addHandler(logging.NullHandler())


class _PublicPackage(type(logging)):  # type: ignore[misc]
    """The package as app code sees it: the public API only. Inside a sandbox, the private
    submodules and names (``gae_sandbox.context``, ``gae_sandbox.audit``, ...), which hold
    the sandbox's own state, are not attributes of the package."""

    def __getattribute__(self, name: str) -> object:
        if not (name.startswith("__") or name in _PUBLIC) and _active_scope() is not None:
            raise AttributeError(
                f"gae_sandbox.{name} is the sandbox's own state, not the app's to reach "
                "(its public API is gae_sandbox.__all__)")
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value: object) -> None:
        if _active_scope() is not None:
            raise AttributeError(f"gae_sandbox.{name} cannot be changed from inside a sandbox")
        super().__setattr__(name, value)


from .context import active_scope as _active_scope  # noqa: E402

__all__ = [
    "AppFailedError",
    "AttributeRefused",
    "BuiltinRefused",
    "CExtensionRefused",
    "Confinement",
    "ConfinementUnavailable",
    "DeadlineExceededError",
    "FileReadRefused",
    "FileWriteRefused",
    "FunctionNotImplementedRefused",
    "HardDeadlineExceeded",
    "ImportRefused",
    "LocaleRefused",
    "NetworkRefused",
    "NotAvailableRefused",
    "Policy",
    "PolicyConfigError",
    "ProcessRefused",
    "RestrictedCodeError",
    "Sandbox",
    "SandboxMiddleware",
    "SandboxStateRefused",
    "SandboxViolation",
    "SystemCallRefused",
    "TempfileRefused",
    "ThreadRefused",
    "Violation",
    "build_policy",
    "confine_process",
    "current_sandbox",
    "install",
    "is_installed",
    "policy_from_app_yaml",
    "read_policy_file",
    "start_background_thread",
    "uninstall",
]

_PUBLIC = frozenset((*__all__, "errors"))
_sys.modules[__name__].__class__ = _PublicPackage
