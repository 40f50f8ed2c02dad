"""gae_sandbox: the App Engine python27 runtime's sandbox, in process, around any WSGI app.

    from gae_sandbox import Policy, Sandbox

    with Sandbox(Policy.python27(app_root="path/to/app")):
        body = app(environ, start_response)
"""

from __future__ import annotations

import logging

from .confine import Confinement, confine_process
from .errors import (
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

__all__ = [
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
