"""Refusals raised by the sandbox.

Every refusal is a :class:`SandboxViolation` *and* the built-in error the App Engine runtime
raised for the same operation, so an app's existing ``except OSError:`` or ``except
ImportError:`` behaves as it would have there.
"""

from __future__ import annotations

import errno as _errno


class SandboxViolation(Exception):
    """Base class of every refusal.

    ``kind`` is the family of the operation (``import``, ``c_extension``, ``file_read``,
    ``file_write``, ``tempfile``, ``process``, ``network``, ``system``), ``target`` what was
    refused (a module, path, host:port or command), ``rule`` why, and ``setting`` the policy
    field that would allow it (``None`` when no setting allows it).
    """

    kind = "violation"

    def __init__(self, target: str, rule: str, setting: str | None = None) -> None:
        self.target = target
        self.rule = rule
        self.setting = setting
        self.message = format_refusal(self.kind, target, rule, setting)
        self._init_builtin()

    def _init_builtin(self) -> None:
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep refusals picklable (pytest-xdist, multiprocessing hosts)
        return (_rebuild, (type(self), self.target, self.rule, self.setting))


def _rebuild(cls, target, rule, setting):
    return cls(target, rule, setting)


def format_refusal(kind: str, target: str, rule: str, setting: str | None) -> str:
    """One message shape for every refusal: what, why, and what would allow it."""
    how = f"the setting that allows it: Policy.{setting}" if setting else (
        "no policy setting allows it"
    )
    return f"gae_sandbox refused {kind.replace('_', ' ')} {target}: {rule}; {how}"


class ImportRefused(SandboxViolation, ImportError):
    """A module outside the policy's allow-list (the runtime raised ImportError)."""

    kind = "import"

    def _init_builtin(self) -> None:
        ImportError.__init__(self, self.message, name=self.target.split(" ")[0])


class CExtensionRefused(ImportRefused):
    """A C extension module the runtime did not offer (enable it like app.yaml ``libraries:``)."""

    kind = "c_extension"


class _OSRefusal(SandboxViolation, PermissionError):
    errno_code = _errno.EACCES

    def _init_builtin(self) -> None:
        PermissionError.__init__(self, self.errno_code, self.message)

    def __str__(self) -> str:
        return self.message


class FileReadRefused(_OSRefusal):
    """Reading (or listing, or stat-ing) a path outside the readable set."""

    kind = "file_read"


class FileWriteRefused(_OSRefusal):
    """Any write to the filesystem: the runtime's files were read-only (errno EROFS)."""

    kind = "file_write"
    errno_code = _errno.EROFS


class ProcessRefused(_OSRefusal):
    """Starting, signalling or replacing a process."""

    kind = "process"


class NetworkRefused(_OSRefusal):
    """A connection or a listening socket the policy does not allow."""

    kind = "network"


class SystemCallRefused(_OSRefusal):
    """Other process-wide operations: ctypes, mmap, chdir, environment changes, fd writes."""

    kind = "system"


class TempfileRefused(SandboxViolation, NotImplementedError):
    """The runtime's ``tempfile`` offered only ``TemporaryFile``, in memory."""

    kind = "tempfile"


class NotAvailableRefused(SandboxViolation, NotImplementedError):
    """A function the runtime removed (``signal`` handlers, say)."""

    kind = "system"


class ConfinementUnavailable(SandboxViolation, RuntimeError):
    """The kernel lacks an OS-level layer :func:`~gae_sandbox.confine_process` needs (Landlock,
    its TCP rules, seccomp). Raised before anything is applied, so a host fails closed instead
    of serving unconfined; ``Policy.os_confinement="best_effort"`` warns and degrades."""

    kind = "os_confinement"


class DeadlineExceededError(BaseException):
    """The request ran past its deadline.

    A ``BaseException``, as in the runtime, so a bare ``except Exception:`` in the app does not
    swallow it.
    """


class HardDeadlineExceeded(BaseException):
    """The request carried on past its deadline plus the grace period.

    Deliberately *not* a subclass of :class:`DeadlineExceededError`, so code that catches
    that error and carries on is interrupted again. Raised repeatedly until the request ends.
    """


class ThreadRefused(SandboxViolation, RuntimeError):
    """Starting a thread when ``Policy.allow_threads`` is False (the runtime raised
    ``thread.error``, a RuntimeError)."""

    kind = "thread"


class RestrictedCodeError(SandboxViolation, SyntaxError):
    """Code that restricted mode (RestrictedPython) rejects when compiling it: one error that
    lists every rejected construct with its line, so the author fixes them all at once."""

    kind = "restricted"

    def _init_builtin(self) -> None:
        SyntaxError.__init__(self, self.message)
        self.msg = self.message
        self.filename = self.target.removeprefix("code in ")
        first = self.errors[0] if self.errors else ""
        number = first[5:].partition(":")[0] if first.startswith("Line ") else ""
        self.lineno = int(number) if number.isdigit() else None

    @property
    def errors(self) -> tuple[str, ...]:
        """The rejected constructs, one ``"Line N: ..."`` string each."""
        return tuple(line.strip() for line in self.rule.splitlines()[1:] if line.strip())
