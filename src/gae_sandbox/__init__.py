"""gae_sandbox: the App Engine python27 runtime's sandbox, in process, around any WSGI app.

    from gae_sandbox import Policy, Sandbox

    with Sandbox(Policy.python27(app_root="path/to/app")):
        body = app(environ, start_response)
"""

from __future__ import annotations

import logging

from .errors import (
    CExtensionRefused,
    DeadlineExceededError,
    FileReadRefused,
    FileWriteRefused,
    ImportRefused,
    NetworkRefused,
    NotAvailableRefused,
    ProcessRefused,
    SandboxViolation,
    SystemCallRefused,
    TempfileRefused,
)
from .policy import Policy
from .report import Violation
from .sandbox import Sandbox, current_sandbox, install, is_installed, uninstall

logging.getLogger("gae_sandbox").addHandler(logging.NullHandler())

__all__ = [
    "CExtensionRefused",
    "DeadlineExceededError",
    "FileReadRefused",
    "FileWriteRefused",
    "ImportRefused",
    "NetworkRefused",
    "NotAvailableRefused",
    "Policy",
    "ProcessRefused",
    "Sandbox",
    "SandboxViolation",
    "SystemCallRefused",
    "TempfileRefused",
    "Violation",
    "current_sandbox",
    "install",
    "is_installed",
    "uninstall",
]
