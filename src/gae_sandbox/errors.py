"""Refusals raised by the sandbox.

Every refusal is a :class:`SandboxViolation` *and* the built-in error the App Engine runtime
raised for the same operation, so an app's existing ``except OSError:`` or ``except
ImportError:`` behaves as it would have there.
"""

from __future__ import annotations

import errno as _errno
from locale import Error as _LocaleError


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


#: The command-line flag of each Policy field a refusal can name (the policy file and
#: ``[tool.gae-sandbox]`` use the field name itself as the key).
SETTING_FLAGS: dict[str, str] = {
    "allowed_hosts": "--allow-host HOST:PORT",
    "readable_paths": "--readable-path DIR",
    "skip_files": "--skip-files REGEX",
    "unreadable_paths": "--unreadable-path PATH",
    "allowed_modules": "--allow-module NAME",
    "blocked_modules": "--unblock-module NAME",
    "allowed_c_extensions": "--allow-c-extension NAME",
    "filesystem": "--filesystem memory",
    "allow_processes": "--allow-processes",
    "allow_threads": "--allow-threads",
    "allow_background_threads": "--allow-background-threads",
    "join_threads": "--join-threads / --no-join-threads",
    "env_variables": "--env NAME=VALUE",
    "deadline": "--deadline SECONDS",
    "restricted_modules": "--restricted-module NAME",
    "working_directory": "--working-directory",
    "request_environ": "--request-environ / --no-request-environ",
}


def describe_setting(setting: str | None) -> str:
    """``Policy.x`` with the flag and policy-file key that set it without writing Python."""
    if not setting:
        return "no policy setting allows it"
    flag = SETTING_FLAGS.get(setting)
    where = f" (command line {flag}; policy file key {setting})" if flag else ""
    return f"the setting that allows it: Policy.{setting}{where}"


def format_refusal(kind: str, target: str, rule: str, setting: str | None) -> str:
    """One message shape for every refusal: what, why, and what would allow it."""
    return f"gae_sandbox refused {kind.replace('_', ' ')} {target}: {rule}; " \
        f"{describe_setting(setting)}"


class ImportRefused(SandboxViolation, ModuleNotFoundError):
    """A module outside the policy's allow-list. On the runtime such a module was absent:
    a ``ModuleNotFoundError`` (an ``ImportError``), which optional imports guard against
    (``except ModuleNotFoundError:``)."""

    kind = "import"

    def _init_builtin(self) -> None:
        ModuleNotFoundError.__init__(self, self.message, name=self.target.split(" ")[0])


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


class NotAvailableRefused(SandboxViolation, NotImplementedError, ValueError):
    """A function the runtime removed (``signal`` handlers, say). Also a ``ValueError``: what
    ``signal.signal`` raises where signals cannot be set (off the main thread), which the
    standard library falls back on (``asyncio.run`` then runs without its SIGINT handler)."""

    kind = "system"


class FunctionNotImplementedRefused(SandboxViolation, OSError):
    """A process-wide ``os`` call the runtime replaced by a stub (``setuid``, ``nice``,
    ``chroot``, ...): ``OSError`` with errno ``ENOSYS``, as there."""

    kind = "system"

    def _init_builtin(self) -> None:
        OSError.__init__(self, _errno.ENOSYS, self.message)

    def __str__(self) -> str:
        return self.message


class LocaleRefused(SandboxViolation, _LocaleError):
    """``locale.setlocale`` with a locale other than C: the locale is process-wide, and the
    runtime offered only C (it raised ``locale.Error``)."""

    kind = "system"


class ConfinementUnavailable(SandboxViolation, RuntimeError):
    """The kernel lacks an OS-level layer :func:`~gae_sandbox.confine_process` needs (Landlock,
    its TCP rules, seccomp). Raised before anything is applied, so a host fails closed instead
    of serving unconfined; ``Policy.os_confinement="best_effort"`` warns and degrades."""

    kind = "os_confinement"


class DeadlineExceededError(BaseException):
    """The request ran past its deadline.

    A ``BaseException``, as in the runtime, so a bare ``except Exception:`` in the app does not
    swallow it. The timer raises the class itself in the request's thread, so an error made
    without arguments still says what happened.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("the request ran past its deadline (Policy.deadline)",)))


class HardDeadlineExceeded(BaseException):
    """The request carried on past its deadline plus the grace period.

    Deliberately *not* a subclass of :class:`DeadlineExceededError`, so code that catches
    that error and carries on is interrupted again. Raised repeatedly until the request ends.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("the request carried on past its deadline and "
                                    "Policy.hard_deadline_grace; recycle the worker",)))


class ThreadRefused(SandboxViolation, RuntimeError):
    """Starting a thread when ``Policy.allow_threads`` is False (the runtime raised
    ``thread.error``, a RuntimeError)."""

    kind = "thread"


class AppFailedError(RuntimeError):
    """What a server gets instead of the app's own exception (``SandboxMiddleware``): when
    the app fails after its response started, and as the ``exc_info`` of an error response.
    Its message is the app error's text, made inside the request's sandbox; the app's
    exception object, whose methods are app code, never reaches host code."""


class SandboxStateRefused(SandboxViolation, RuntimeError):
    """App code changed the sandbox's own state (its context variable): nothing it does in
    that context is allowed any more."""

    kind = "sandbox_state"


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


#: The refusal classes defined here, captured as the module is made (never looked up by
#: name or module later: an app class can claim any ``__module__``).
REFUSAL_CLASSES: frozenset[type[SandboxViolation]] = frozenset(
    value for value in list(globals().values())
    if isinstance(value, type) and issubclass(value, SandboxViolation))
