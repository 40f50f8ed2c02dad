"""OS-level confinement of the current process: Landlock, seccomp, rlimits.

The in-process sandbox stops accidents and known gadgets; code that reaches C (``ctypes``,
memory corruption, interpreter bugs) is out of its reach. :func:`confine_process` puts the
kernel between such code and the machine. It is irreversible and process-wide, so a host calls
it in a worker process it can afford to lose (gunicorn's ``post_fork``), before that worker
starts threads, and keeps the in-process :class:`~gae_sandbox.Sandbox` inside it for the
runtime's semantics (error types, report mode, deadlines).

What each layer enforces:

* **Landlock, filesystem** (ABI >= 1): read-only access to ``policy.app_root``,
  ``policy.readable_paths``, the interpreter's library folders, the ``sys.path`` entries under
  them or holding an imported module, the folders of the shared libraries already loaded (so
  later C-extension imports find their libraries), ``/etc/ld.so.cache``, ``/etc/localtime``,
  ``/dev/urandom``; read-write ``/dev/null``;
  name-resolution and CA files of ``/etc`` only when ``policy.allowed_hosts`` is not empty.
  Everything else, writes included, is refused (``EACCES``), except ``writable_paths``. Files
  opened *before* confinement keep the access they were opened with (Landlock checks at
  ``open``): ``RLIMIT_FSIZE=0`` is what stops writes through them.
* **Landlock, TCP** (ABI >= 4): ``bind`` to any TCP port refused; ``connect`` only to the ports
  named in ``policy.allowed_hosts`` (any port for a ``host:*`` entry). Host names and addresses
  are not the kernel's business: the in-process layer checks them.
* **Landlock, scopes** (ABI >= 6): no signals to processes outside the worker, no abstract UNIX
  sockets outside it.
* **seccomp** (a filter built here, no library): no ``execve``, no new processes (``clone``
  without ``CLONE_THREAD``, ``fork``, ``vfork``; ``clone3`` answers ``ENOSYS`` so the C library
  falls back to ``clone``, whose flags the filter can see), no ``ptrace``/``process_vm_*``,
  ``listen``, ``AF_UNIX``/``AF_PACKET``/raw/non-TCP-or-UDP sockets (UDP only when the policy
  allows a host), no ``kill`` except of itself, no ``chmod``/``chown``/xattr changes or
  path-based ``utime`` (Landlock does not cover file metadata), no ``truncate``/``fallocate``
  while ``RLIMIT_FSIZE`` is 0, no raising of rlimits, no ``memfd_create``, ``mount``,
  namespaces, ``bpf``, ``io_uring``, keyrings, modules, clocks.
  Refusals return ``EPERM`` so Python raises ``PermissionError`` and the worker keeps serving;
  only a system call made through another architecture's ABI (x32, ``int 0x80``) kills the
  process: nothing legitimate does that, and it is how filters get bypassed.
* **rlimits**: address space, open files, ``RLIMIT_FSIZE`` (0: no data written to any regular
  file), ``RLIMIT_CORE=0`` (a core dump is a file the kernel writes past Landlock), an optional
  CPU budget for the worker's lifetime.

A process per request (``--isolation request``, ``gae_sandbox.worker``): the worker is confined
with ``fork=True`` (it may fork, ``SIGKILL`` its children and set its own CPU, file-size and
address-space limits), and each child it forks calls :func:`confine_child`, which adds its own
rlimits, a Landlock layer of scopes and a second seccomp filter that takes those back.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import os
import platform
import resource
import sys
import sysconfig
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import ConfinementUnavailable
from .policy import Policy

logger = logging.getLogger("gae_sandbox.confine")

__all__ = ["Confinement", "confine_child", "confine_process", "landlock_abi", "missing_layers",
           "prepare_child", "seccomp_available"]

# -- Landlock (include/uapi/linux/landlock.h) -------------------------------------------------

_SYS_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_RULE_NET_PORT = 2

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_TRUNCATE = 1 << 14
_FS_IOCTL_DEV = 1 << 15
#: every filesystem right each ABI knows (handled = refused unless a rule allows it)
_FS_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP = 1 << 0
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


# -- seccomp (include/uapi/linux/seccomp.h, filter.h, audit.h) ----------------------------------

_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_SECCOMP = 21
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_LD_ABS_W = 0x20  # BPF_LD | BPF_W | BPF_ABS
_ALU_AND_K = 0x54
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_OFFSET_NR = 0
_OFFSET_ARCH = 4


def _arg_low(index: int) -> int:
    return 16 + 8 * index  # little-endian: the low 32 bits first


def _arg_high(index: int) -> int:
    return 20 + 8 * index


_CLONE_THREAD = 0x00010000
_CLONE_NAMESPACES = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                     | 0x20000000 | 0x40000000)  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
#                                                  NEWPID, NEWNET
_AF_INET, _AF_INET6 = 2, 10
_SOCK_STREAM, _SOCK_DGRAM = 1, 2
_IPPROTO_TCP, _IPPROTO_UDP = 6, 17
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

#: (AUDIT_ARCH, x32 bit or None, syscall numbers) for the architectures the filter knows.
_X86_64 = {
    "execve": 59, "execveat": 322, "fork": 57, "vfork": 58, "clone": 56, "clone3": 435,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
    "kcmp": 312, "memfd_create": 319, "memfd_secret": 447, "mount": 165, "umount2": 166,
    "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248,
    "request_key": 249, "personality": 135, "acct": 163, "swapon": 167, "swapoff": 168,
    "reboot": 169, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "settimeofday": 164, "clock_settime": 227,
    "adjtimex": 159, "clock_adjtime": 305, "sethostname": 170, "setdomainname": 171,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "fanotify_init": 300, "quotactl": 179,
    "quotactl_fd": 443, "syslog": 103, "vhangup": 153, "iopl": 172, "ioperm": 173,
    "modify_ldt": 154, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "move_mount": 429, "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442, "open_tree_attr": 467, "setrlimit": 160,
    "prlimit64": 302, "socket": 41, "listen": 50, "kill": 62, "tkill": 200, "tgkill": 234,
    "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "pidfd_send_signal": 424, "chmod": 90,
    "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92, "fchown": 93, "lchown": 94,
    "fchownat": 260, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
    "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197,
    "lremovexattr": 198, "fremovexattr": 199, "setxattrat": 463, "removexattrat": 466,
    "ioctl": 16, "truncate": 76, "ftruncate": 77, "fallocate": 285, "uselib": 134,
    "nfsservctl": 180, "lookup_dcookie": 212,
}
_AARCH64 = {
    "execve": 221, "execveat": 281, "clone": 220, "clone3": 435, "ptrace": 117,
    "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438, "kcmp": 272,
    "memfd_create": 279, "memfd_secret": 447, "mount": 40, "umount2": 39, "pivot_root": 41,
    "chroot": 51, "unshare": 97, "setns": 268, "bpf": 280, "perf_event_open": 241,
    "userfaultfd": 282, "keyctl": 219, "add_key": 217, "request_key": 218, "personality": 92,
    "acct": 89, "swapon": 224, "swapoff": 225, "reboot": 142, "kexec_load": 104,
    "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
    "settimeofday": 170, "clock_settime": 112, "adjtimex": 171, "clock_adjtime": 266,
    "sethostname": 161, "setdomainname": 162, "open_by_handle_at": 265,
    "name_to_handle_at": 264, "fanotify_init": 262, "quotactl": 60, "quotactl_fd": 443,
    "syslog": 116, "vhangup": 58, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "move_mount": 429, "open_tree": 428, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "open_tree_attr": 467, "setrlimit": 164, "prlimit64": 261, "socket": 198, "listen": 201,
    "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138,
    "rt_tgsigqueueinfo": 240, "pidfd_send_signal": 424, "fchmod": 52, "fchmodat": 53,
    "fchmodat2": 452, "fchown": 55, "fchownat": 54, "utimensat": 88, "setxattr": 5,
    "lsetxattr": 6, "fsetxattr": 7, "removexattr": 14, "lremovexattr": 15, "fremovexattr": 16,
    "setxattrat": 463, "removexattrat": 466, "ioctl": 29, "truncate": 45,
    "ftruncate": 46, "fallocate": 47, "nfsservctl": 42,
    "lookup_dcookie": 18,
}
_ARCHES = {
    "x86_64": (0xC000003E, 0x40000000, _X86_64, 317),
    "aarch64": (0xC00000B7, None, _AARCH64, 277),
}
#: numbers above every system call this table knows answer ENOSYS (a kernel newer than the
#: filter has calls nobody reviewed; the C library treats ENOSYS as "not there")
_FIRST_UNKNOWN_SYSCALL = 468

#: refused outright with EPERM
_DENIED = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "pidfd_getfd", "kcmp", "memfd_create", "memfd_secret", "mount", "umount2", "pivot_root",
    "chroot", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "keyctl",
    "add_key", "request_key", "personality", "acct", "swapon", "swapoff", "reboot",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "settimeofday", "clock_settime", "adjtimex", "clock_adjtime", "sethostname",
    "setdomainname", "open_by_handle_at", "name_to_handle_at", "fanotify_init", "quotactl",
    "quotactl_fd", "syslog", "vhangup", "iopl", "ioperm", "modify_ldt", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "open_tree_attr", "setrlimit", "listen", "tkill",
    "pidfd_send_signal", "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown",
    "lchown", "fchownat", "utime", "utimes", "futimesat", "setxattr", "lsetxattr",
    "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "setxattrat", "removexattrat",
    "uselib", "nfsservctl", "lookup_dcookie",
)


@dataclass(frozen=True)
class Confinement:
    """What :func:`confine_process` applied (for logs and tests)."""

    landlock_abi: int
    #: layers applied, like ``"landlock-fs"``, ``"landlock-tcp"``, ``"seccomp"``
    applied: tuple[str, ...]
    #: layers the kernel lacked (only with ``Policy.os_confinement="best_effort"``)
    missing: tuple[str, ...]
    readable: tuple[str, ...]
    writable: tuple[str, ...]
    #: ``None`` when every TCP port may be connected to (a ``host:*`` entry)
    connect_ports: tuple[int, ...] | None
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    if sys.platform != "linux":
        return 0
    version = _syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    return max(int(version), 0)


def seccomp_available() -> bool:
    """Whether this kernel and architecture can load the seccomp filter built here."""
    if sys.platform != "linux" or platform.machine() not in _ARCHES:
        return False
    return _prctl(ctypes.c_int(_PR_GET_SECCOMP), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) in (0, 2)


def missing_layers(policy: Policy) -> list[str]:
    """The layers :func:`confine_process` needs for ``policy`` that this kernel lacks."""
    abi = landlock_abi()
    missing = []
    if abi < 1:
        missing.append("Landlock (filesystem rules: Linux >= 5.13 with Landlock enabled in "
                       "the lsm= boot list)")
    elif abi < 4 and _connect_ports(policy) != ():
        missing.append(f"Landlock TCP port rules (ABI >= 4, Linux >= 6.7; this kernel has ABI "
                       f"{abi}) for Policy.allowed_hosts {policy.allowed_hosts!r}")
    if not seccomp_available():
        missing.append(f"seccomp filters (CONFIG_SECCOMP_FILTER on x86_64 or aarch64; this is "
                       f"{platform.machine()})")
    return missing


def unavailable_error(missing: list[str]) -> ConfinementUnavailable:
    return ConfinementUnavailable(
        "without " + "; ".join(missing),
        "this kernel lacks it ('best_effort' applies what the kernel has and warns)",
        "os_confinement")


def confine_process(
    policy: Policy,
    *,
    writable_paths: Iterable[str | os.PathLike[str]] = (),
    threads: bool = True,
    address_space_mb: int | None = 2048,
    open_files: int | None = 1024,
    max_file_size: int | None = 0,
    cpu_seconds: int | None = None,
    fork: bool = False,
) -> Confinement:
    """Confine the current process, irreversibly, to what ``policy`` allows (see the module
    docstring for the exact rules).

    ``writable_paths`` are folders or files the host itself needs to change after confinement;
    ``threads`` keeps thread creation possible (a threaded server needs it even when the app's
    ``Policy.allow_threads`` is False: that rule is the in-process layer's); the limits are
    per process, ``None`` leaves one as it is. Must be called while the process has a single
    thread: Landlock applies to the calling thread and the threads it starts later.

    ``fork=True`` is for the worker of ``--isolation request`` (``gae_sandbox.worker``), which
    forks a child per request: it may ``clone`` without ``CLONE_THREAD`` (never with new
    namespaces), send ``SIGKILL`` to a process (Landlock scopes, ABI >= 6, keep signals inside
    its own domain: its children), and set its own ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` and
    ``RLIMIT_AS`` (as root, with ``CAP_SYS_RESOURCE``, that includes raising them). Each child
    takes these back with :func:`confine_child` before it runs app code.

    Raises :class:`~gae_sandbox.ConfinementUnavailable` naming what the kernel lacks, unless
    ``policy.os_confinement == "best_effort"``, which warns and applies the rest.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"confine_process needs a Policy, got {type(policy).__name__}")
    for name, value in (("address_space_mb", address_space_mb), ("open_files", open_files),
                        ("max_file_size", max_file_size), ("cpu_seconds", cpu_seconds)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise ValueError(f"confine_process {name} must be a non-negative int or None, "
                             f"got {value!r}")
    task_count = _thread_count()
    if task_count != 1:
        raise RuntimeError(
            f"confine_process must run while the process has one thread (it has {task_count}): "
            "Landlock confines only the calling thread and those it starts later; call it "
            "before starting threads (in a gunicorn worker: post_fork)"
        )
    abi = landlock_abi()
    seccomp_ok = seccomp_available()
    ports = _connect_ports(policy)
    missing = missing_layers(policy)
    if missing:
        error = unavailable_error(missing)
        if policy.os_confinement == "required":
            raise error
        warnings.warn(str(error), RuntimeWarning, stacklevel=2)
        logger.warning("%s", error)

    limits = _set_rlimits(address_space_mb, open_files, max_file_size, cpu_seconds)
    if _prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0),
              ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        _raise_os("prctl(PR_SET_NO_NEW_PRIVS)")
    applied = ["rlimits", "no_new_privs"]
    readable, writable = _paths(policy, writable_paths)
    if abi >= 1:
        applied += _landlock(abi, readable, writable, ports)
    if seccomp_ok:
        _load_seccomp(_seccomp_program(policy, threads, max_file_size == 0, fork))
        applied.append("seccomp")
    result = Confinement(abi, tuple(applied), tuple(missing), readable, writable,
                         None if ports is None else ports, limits)
    logger.debug("confined process %d: %s", os.getpid(), result)
    return result


def confine_child(*, cpu_seconds: float | None = None, address_space_mb: int | None = None,
                  max_file_size: int | None = 0) -> tuple[str, ...]:
    """Confine a child forked by a process confined with ``confine_process(..., fork=True)``
    (a request of ``--isolation request``), irreversibly, on top of what it inherited.

    In this order: its own rlimits (``RLIMIT_CPU`` ``cpu_seconds`` rounded up, then
    ``SIGKILL`` a second later; ``RLIMIT_AS``; ``RLIMIT_FSIZE``, 0 by default; ``None`` keeps
    the inherited one), a Landlock layer of its own with only scopes (ABI >= 6: no signals to,
    no abstract UNIX sockets of, its parent or its siblings), and a second seccomp filter
    (filters stack; the strictest answer wins): no ``fork``/``vfork``/``clone`` without
    ``CLONE_THREAD`` (no new processes), signals only to itself, no more changes to rlimits.
    Must run while the process has one thread. Returns the layers applied.
    """
    for name, value in (("cpu_seconds", cpu_seconds), ("address_space_mb", address_space_mb),
                        ("max_file_size", max_file_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < 0):
            raise ValueError(f"confine_child {name} must be a non-negative number or None, "
                             f"got {value!r}")
    task_count = _thread_count()
    if task_count != 1:
        raise RuntimeError(f"confine_child must run while the process has one thread (it has "
                           f"{task_count})")
    applied = ["rlimits"]
    if cpu_seconds is not None:
        seconds = max(1, math.ceil(cpu_seconds))
        _lower_rlimit(resource.RLIMIT_CPU, seconds, seconds + 1)
    if address_space_mb is not None:
        size = address_space_mb * 1024 * 1024
        _lower_rlimit(resource.RLIMIT_AS, size, size)
    if max_file_size is not None:
        _lower_rlimit(resource.RLIMIT_FSIZE, int(max_file_size), int(max_file_size))
    if _prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), ctypes.c_ulong(1), ctypes.c_ulong(0),
              ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        _raise_os("prctl(PR_SET_NO_NEW_PRIVS)")
    if _child_prepared is None:
        prepare_child()
    assert _child_prepared is not None
    abi, filters, pid_index = _child_prepared
    if abi >= 6:
        attr = _RulesetAttr(0, 0, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
        ruleset = _syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                           ctypes.c_size_t(24), ctypes.c_uint32(0))
        if ruleset < 0:
            _raise_os("landlock_create_ruleset (scopes)")
        try:
            if _syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset),
                        ctypes.c_uint32(0)) != 0:
                _raise_os("landlock_restrict_self (scopes)")
        finally:
            os.close(ruleset)
        applied.append("landlock-scopes")
    if filters is not None:
        filters[pid_index].k = os.getpid()  # signals only to itself
        fprog = _SockFprog(len(filters), filters)
        if _prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER),
                  ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            _raise_os("prctl(PR_SET_SECCOMP) (child)")
        applied.append("seccomp-child")
    return tuple(applied)


#: what confine_child loads: (Landlock ABI, the child filter as a ctypes array, the index of
#: its pid instruction); built once by prepare_child, inherited by every fork
_child_prepared: tuple[int, ctypes.Array[ctypes.Structure] | None, int] | None = None
_PID_PLACEHOLDER = 0xFFFFFFFF


def prepare_child() -> None:
    """Build what :func:`confine_child` loads (its seccomp filter; the kernel's Landlock ABI)
    in the parent, so that each forked child only patches in its pid and loads it."""
    global _child_prepared
    abi = landlock_abi()
    if not seccomp_available():
        _child_prepared = (abi, None, -1)
        return
    program = _child_seccomp_program()
    index = next(i for i, insn in enumerate(program) if insn[3] == _PID_PLACEHOLDER)
    filters = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    _child_prepared = (abi, filters, index)


def _lower_rlimit(which: int, soft: int, hard: int) -> None:
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (min(soft, hard), hard))


def _child_seccomp_program() -> list[tuple[int, int, int, int]]:
    """The second filter of :func:`confine_child` (the first, inherited, stays in force)."""
    audit_arch, _, numbers, _ = _ARCHES[platform.machine()]
    deny = _RET_ERRNO | errno.EPERM
    program = _Program()
    program.load(_OFFSET_ARCH)
    program.jump(_JEQ_K, audit_arch, "nr", None)
    program.ret(_RET_KILL_PROCESS)
    program.label("nr")
    program.load(_OFFSET_NR)
    for name in ("fork", "vfork", "setrlimit", "pidfd_send_signal"):
        if name in numbers:
            program.jump(_JEQ_K, numbers[name], "deny", None)
    program.jump(_JEQ_K, numbers["clone3"], "enosys", None)
    program.jump(_JEQ_K, numbers["clone"], "clone", None)
    program.jump(_JEQ_K, numbers["prlimit64"], "prlimit64", None)
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        program.jump(_JEQ_K, numbers[name], "signal", None)
    program.ret(_RET_ALLOW)
    program.label("clone")  # threads only
    program.load(_arg_low(0))
    program.jump(_JSET_K, _CLONE_THREAD, "allow", "deny")
    program.label("prlimit64")  # reading only
    program.load(_arg_low(2))
    program.jump(_JEQ_K, 0, None, "deny")
    program.load(_arg_high(2))
    program.jump(_JEQ_K, 0, "allow", "deny")
    program.label("signal")  # only this process: confine_child writes its pid here
    program.load(_arg_low(0))
    program.jump(_JEQ_K, _PID_PLACEHOLDER, "allow", "deny")
    program.label("allow")
    program.ret(_RET_ALLOW)
    program.label("deny")
    program.ret(deny)
    program.label("enosys")
    program.ret(_RET_ERRNO | errno.ENOSYS)
    return program.assemble()


# -- pieces -------------------------------------------------------------------------------------


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _raise_os(what: str) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what} failed: {os.strerror(code)}")


def _connect_ports(policy: Policy) -> tuple[int, ...] | None:
    """TCP ports the process may connect to; ``None`` for any (a ``host:*`` rule)."""
    ports = set()
    for rule in policy.host_rules:
        if rule.port is None:
            return None
        ports.add(rule.port)
    return tuple(sorted(ports))


def _set_rlimits(address_space_mb: int | None, open_files: int | None,
                 max_file_size: int | None, cpu_seconds: int | None) -> dict[str, tuple[int, int]]:
    wanted = {"RLIMIT_CORE": 0}
    if address_space_mb is not None:
        wanted["RLIMIT_AS"] = address_space_mb * 1024 * 1024
    if open_files is not None:
        wanted["RLIMIT_NOFILE"] = open_files
    if max_file_size is not None:
        wanted["RLIMIT_FSIZE"] = max_file_size
    if cpu_seconds is not None:
        wanted["RLIMIT_CPU"] = cpu_seconds
    applied = {}
    for name, value in wanted.items():
        which = getattr(resource, name)
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)  # a limit can only be lowered
        resource.setrlimit(which, (value, value))
        applied[name] = (value, value)
    return applied


def _paths(policy: Policy, writable_paths: Iterable[str | os.PathLike[str]]
           ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The read-only and read-write sets, resolved, existing, without duplicates."""
    readable: list[str] = [policy.app_root, *policy.readable_paths]
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for prefix in prefixes:
        readable += [os.path.join(prefix, "lib"), os.path.join(prefix, "lib64")]
    readable += _library_path_entries(prefixes)
    readable += [p for key, p in sysconfig.get_paths().items()
                 if key in ("stdlib", "platstdlib", "purelib", "platlib")]
    readable += _loaded_library_folders()
    readable += ["/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/random"]
    if policy.allowed_hosts:  # name resolution and TLS need these
        readable += ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
                     "/etc/host.conf", "/etc/services", "/etc/protocols"]
        import ssl

        verify = ssl.get_default_verify_paths()
        readable += [p for p in (verify.cafile, verify.capath) if p]
    writable = ["/dev/null", *(os.fspath(p) for p in writable_paths)]
    return _existing(readable), _existing(writable)


def _library_path_entries(prefixes: set[str]) -> list[str]:
    """``sys.path`` entries under the interpreter's prefixes or holding an imported module
    (an editable install, say), not the folder the host was started from."""
    # a module's __file__ is its sys.path entry joined with its name: no need to resolve it
    files = [f for m in list(sys.modules.values())
             if isinstance(f := getattr(m, "__file__", None), str)]
    roots = [os.path.realpath(p) + os.sep for p in prefixes]
    entries = []
    for entry in sys.path:
        if not entry:
            continue
        real = os.path.realpath(entry)
        given = os.path.abspath(entry) + os.sep
        if any(real.startswith(root) for root in roots) or any(
                f.startswith(given) for f in files):
            entries.append(real)
    return entries


def _loaded_library_folders() -> list[str]:
    """Folders of the shared objects mapped now: a C extension imported later links against
    the same libraries (libpython, libc, libssl)."""
    folders = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(None, 5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith("/") and ".so" in os.path.basename(path):
                    folders.add(os.path.dirname(path))
    except OSError:
        pass
    return sorted(folders)


def _existing(paths: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for path in paths:
        resolved = os.path.realpath(path)
        if os.path.exists(resolved) and resolved != "/":
            seen.setdefault(resolved, None)
    return tuple(seen)


def _landlock(abi: int, readable: tuple[str, ...], writable: tuple[str, ...],
              ports: tuple[int, ...] | None) -> list[str]:
    fs_all = _FS_ALL_BY_ABI[max(k for k in _FS_ALL_BY_ABI if k <= abi)]
    attr = _RulesetAttr(fs_all, 0, 0)
    size = 8
    applied = ["landlock-fs"]
    if abi >= 4:
        attr.handled_access_net = _NET_BIND_TCP | (_NET_CONNECT_TCP if ports is not None else 0)
        size = 16
        applied.append("landlock-tcp")
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
        applied.append("landlock-scopes")
    ruleset = _syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                       ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        _raise_os("landlock_create_ruleset")
    try:
        read_dir = _FS_READ_FILE | _FS_READ_DIR
        for paths, rights in ((readable, read_dir), (writable, fs_all)):
            for path in paths:
                allowed = rights if os.path.isdir(path) else rights & _FS_FILE_RIGHTS & fs_all
                _add_path_rule(ruleset, path, allowed)
        for port in ports or ():
            rule = _NetPortAttr(_NET_CONNECT_TCP, port)
            if _syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                        ctypes.c_int(_LANDLOCK_RULE_NET_PORT), ctypes.byref(rule),
                        ctypes.c_uint32(0)) != 0:
                _raise_os(f"landlock_add_rule(TCP port {port})")
        if _syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset),
                    ctypes.c_uint32(0)) != 0:
            _raise_os("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return applied


def _add_path_rule(ruleset: int, path: str, allowed: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # vanished or unreadable to us: nothing to allow
    try:
        rule = _PathBeneathAttr(allowed, fd)
        if _syscall(ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                    ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                    ctypes.c_uint32(0)) != 0:
            _raise_os(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


# -- the seccomp filter -------------------------------------------------------------------------


def _seccomp_program(policy: Policy, threads: bool, no_file_data: bool, fork: bool = False
                     ) -> list[tuple[int, int, int, int]]:
    """A classic-BPF program: check the architecture, then one block per filtered call."""
    audit_arch, x32_bit, numbers, _ = _ARCHES[platform.machine()]
    deny = _RET_ERRNO | errno.EPERM
    program = _Program()
    program.load(_OFFSET_ARCH)
    program.jump(_JEQ_K, audit_arch, "nr", None)
    program.ret(_RET_KILL_PROCESS)  # another ABI's numbers mean other calls
    program.label("nr")
    program.load(_OFFSET_NR)
    if x32_bit is not None:
        program.jump(_JSET_K, x32_bit, "kill_process", None)
    program.jump(_JGE_K, _FIRST_UNKNOWN_SYSCALL, "enosys", None)
    denied = _DENIED + (("truncate", "ftruncate", "fallocate") if no_file_data else ())
    for name in denied:
        if name in numbers:
            program.jump(_JEQ_K, numbers[name], "deny", None)
    program.jump(_JEQ_K, numbers["clone3"], "enosys", None)
    blocks = ["clone", "socket", "kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
              "prlimit64", "utimensat", "ioctl"]
    for name in blocks:
        program.jump(_JEQ_K, numbers[name], name, None)
    program.ret(_RET_ALLOW)

    program.label("clone")  # threads only: CLONE_THREAD set, no new namespaces
    if threads or fork:  # fork: also a child process (--isolation request's worker)
        program.load(_arg_low(0))
        program.jump(_JSET_K, _CLONE_NAMESPACES, "deny", None)
        program.jump(_JSET_K, _CLONE_THREAD, "allow" if threads else "deny",
                     "allow" if fork else "deny")
    else:
        program.ret(deny)

    program.label("socket")  # IPv4/IPv6 TCP, and UDP when a host is allowed
    program.load(_arg_low(0))
    program.jump(_JEQ_K, _AF_INET, "socket_type", None)
    program.jump(_JEQ_K, _AF_INET6, "socket_type", "deny")
    program.label("socket_type")
    program.load(_arg_low(1))
    program.alu_and(0xF)  # SOCK_TYPE_MASK: SOCK_NONBLOCK and SOCK_CLOEXEC are above it
    program.jump(_JEQ_K, _SOCK_STREAM, "tcp", None)
    if policy.allowed_hosts:
        program.jump(_JEQ_K, _SOCK_DGRAM, "udp", "deny")
    else:
        program.ret(deny)
    program.label("tcp")
    program.load(_arg_low(2))
    program.jump(_JEQ_K, 0, "allow", None)
    program.jump(_JEQ_K, _IPPROTO_TCP, "allow", "deny")
    program.label("udp")
    program.load(_arg_low(2))
    program.jump(_JEQ_K, 0, "allow", None)
    program.jump(_JEQ_K, _IPPROTO_UDP, "allow", "deny")

    pid = os.getpid()
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        program.label(name)  # only this process (its pid is its thread group id)
        program.load(_arg_low(0))
        program.jump(_JEQ_K, pid, "allow", "kill_child" if fork and name == "kill" else "deny")
    if fork:  # SIGKILL to one process (pid > 0): Landlock scopes keep it to the children
        program.label("kill_child")
        program.jump(_JEQ_K, 0, "deny", None)
        program.jump(_JGE_K, 0x80000000, "deny", None)
        program.load(_arg_low(1))
        program.jump(_JEQ_K, 9, "allow", "deny")  # SIGKILL

    program.label("prlimit64")  # reading limits is fine, setting them is not
    program.load(_arg_low(2))
    program.jump(_JEQ_K, 0, None, "own_limit" if fork else "deny")
    program.load(_arg_high(2))
    program.jump(_JEQ_K, 0, "allow", "own_limit" if fork else "deny")
    if fork:  # its own RLIMIT_CPU (0), RLIMIT_FSIZE (1), RLIMIT_AS (9): for confine_child
        program.label("own_limit")
        program.load(_arg_low(0))
        program.jump(_JEQ_K, 0, None, "deny")
        program.load(_arg_high(0))
        program.jump(_JEQ_K, 0, None, "deny")
        program.load(_arg_low(1))
        program.jump(_JEQ_K, 0, "allow", None)
        program.jump(_JEQ_K, 1, "allow", None)
        program.jump(_JEQ_K, 9, "allow", "deny")

    program.label("utimensat")  # futimens(fd) only (gunicorn's heartbeat), not paths
    program.load(_arg_low(1))
    program.jump(_JEQ_K, 0, None, "deny")
    program.load(_arg_high(1))
    program.jump(_JEQ_K, 0, "allow", "deny")

    program.label("ioctl")  # no typing into the host's terminal
    program.load(_arg_low(1))
    program.jump(_JEQ_K, _TIOCSTI, "deny", None)
    program.jump(_JEQ_K, _TIOCLINUX, "deny", "allow")

    program.label("allow")
    program.ret(_RET_ALLOW)
    program.label("deny")
    program.ret(deny)
    program.label("enosys")
    program.ret(_RET_ERRNO | errno.ENOSYS)
    program.label("kill_process")
    program.ret(_RET_KILL_PROCESS)
    return program.assemble()


class _Program:
    """A tiny classic-BPF assembler: forward jumps to labels, ``None`` = the next one."""

    def __init__(self) -> None:
        self.items: list[tuple[str, tuple[object, ...]]] = []

    def load(self, offset: int) -> None:
        self.items.append(("insn", (_LD_ABS_W, None, None, offset)))

    def alu_and(self, value: int) -> None:
        self.items.append(("insn", (_ALU_AND_K, None, None, value)))

    def jump(self, code: int, value: int, true: str | None, false: str | None) -> None:
        self.items.append(("insn", (code, true, false, value)))

    def ret(self, value: int) -> None:
        self.items.append(("insn", (_RET_K, None, None, value)))

    def label(self, name: str) -> None:
        self.items.append(("label", (name,)))

    def assemble(self) -> list[tuple[int, int, int, int]]:
        labels: dict[object, int] = {}
        count = 0
        for kind, data in self.items:
            if kind == "label":
                labels[data[0]] = count
            else:
                count += 1
        out: list[tuple[int, int, int, int]] = []
        for kind, data in self.items:
            if kind == "label":
                continue
            code, true, false, value = data
            here = len(out) + 1
            offsets = []
            for target in (true, false):
                if target is None or code in (_LD_ABS_W, _ALU_AND_K, _RET_K):
                    offsets.append(0)
                    continue
                distance = labels[target] - here
                if not 0 <= distance <= 255:
                    raise AssertionError(f"seccomp jump to {target} out of range: {distance}")
                offsets.append(distance)
            out.append((int(code), offsets[0], offsets[1], int(value)))  # type: ignore[call-overload]
        return out


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _load_seccomp(program: list[tuple[int, int, int, int]]) -> None:
    filters = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    fprog = _SockFprog(len(program), filters)
    if _prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER),
              ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        _raise_os("prctl(PR_SET_SECCOMP)")
