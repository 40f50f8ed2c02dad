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
* **seccomp** (a filter built here, no library): an allow-list, failing closed. A system call
  not on confine.py's system-call allow-list (``_ALLOWED``, grouped by purpose; see
  :func:`allowed_system_calls`) is refused: the kernel answers ``EPERM``, so Python raises
  ``PermissionError`` and the worker keeps serving. ``clone3`` and calls numbered above every
  call the table knows answer ``ENOSYS`` instead (the C library falls back: to ``clone``,
  whose flags the filter can see). Some calls are allowed with certain arguments only
  (``_CHECKED``): ``clone`` for threads (and, with ``fork=True``, a child process; never new
  namespaces); ``socket`` for IPv4/IPv6 TCP (UDP only when the policy allows a host);
  ``kill``/``tgkill``/``rt_*sigqueueinfo`` to itself (with ``fork=True``, ``SIGKILL`` to a
  child); ``ioctl`` with the requests of ``_IOCTLS`` (non-blocking mode, close-on-exec,
  ``isatty``, terminal size, bytes waiting; not ``FS_IOC_SETFLAGS`` nor any other that changes
  a file); ``prctl`` with the options of ``_PRCTLS``; ``sendto``/``sendmsg``/``sendmmsg``
  without ``MSG_FASTOPEN`` (TCP Fast Open connects inside ``sendto``, where Landlock's connect
  rule never looks); ``setpriority``, ``sched_setaffinity``/``setscheduler``/``setparam``/
  ``setattr``, ``ioprio_set`` and ``prlimit64`` with a new limit for the worker itself only
  (0 or its own pid; new limits only with ``fork=True``); ``utimensat`` without a path
  (``futimens``), on ``heartbeat_fd`` only when it is given; ``truncate``/``ftruncate``/
  ``fallocate`` only while ``RLIMIT_FSIZE`` is not 0. Off the list, among others: ``execve``,
  ``fork``/``vfork``, ``ptrace``/``process_vm_*``, ``listen``, SysV IPC (``shmget``,
  ``semget``, ``msgget``...), ``chmod``/``chown``/xattr changes and path-based ``utime``
  (Landlock does not cover file metadata), ``memfd_create``, ``mount``, namespaces, ``bpf``,
  ``io_uring``, keyrings, modules, clocks, ``seccomp`` (``prctl`` adds filters). Only a system
  call made through another architecture's ABI (x32, ``int 0x80``) kills the process: nothing
  legitimate does that, and it is how filters get bypassed.
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

__all__ = ["Confinement", "allowed_system_calls", "confine_child", "confine_process",
           "landlock_abi", "missing_layers", "prepare_child", "seccomp_available"]

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
_JA = 0x05  # BPF_JMP | BPF_JA: unconditional, 32-bit offset
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
_MSG_FASTOPEN = 0x20000000
_PRIO_PROCESS = 0
_IOPRIO_WHO_PROCESS = 1

#: System-call numbers of every call this file names (allowed, checked, or refused by name in
#: tests), by architecture; a call an architecture lacks is absent from its table.
_X86_64 = {
    "accept": 43, "accept4": 288, "access": 21, "acct": 163, "add_key": 248, "adjtimex": 159,
    "alarm": 37, "arch_prctl": 158, "bind": 49, "bpf": 321, "brk": 12, "chdir": 80, "chmod": 90,
    "chown": 92, "chroot": 161, "clock_adjtime": 305, "clock_getres": 229, "clock_gettime": 228,
    "clock_nanosleep": 230, "clock_settime": 227, "clone": 56, "clone3": 435, "close": 3,
    "close_range": 436, "connect": 42, "copy_file_range": 326, "delete_module": 176, "dup": 32,
    "dup2": 33, "dup3": 292, "epoll_create": 213, "epoll_create1": 291, "epoll_ctl": 233,
    "epoll_pwait": 281, "epoll_pwait2": 441, "epoll_wait": 232, "execve": 59, "execveat": 322,
    "exit": 60, "exit_group": 231, "faccessat": 269, "faccessat2": 439, "fadvise64": 221,
    "fallocate": 285, "fanotify_init": 300, "fchdir": 81, "fchmod": 91, "fchmodat": 268,
    "fchmodat2": 452, "fchown": 93, "fchownat": 260, "fcntl": 72, "fdatasync": 75,
    "fgetxattr": 193, "finit_module": 313, "flistxattr": 196, "flock": 73, "fork": 57,
    "fremovexattr": 199, "fsconfig": 431, "fsetxattr": 190, "fsmount": 432, "fsopen": 430,
    "fspick": 433, "fstat": 5, "fstatfs": 138, "fsync": 74, "ftruncate": 77, "futex": 202,
    "futex_requeue": 456, "futex_wait": 455, "futex_waitv": 449, "futex_wake": 454,
    "futimesat": 261, "getcpu": 309, "getcwd": 79, "getdents": 78, "getdents64": 217,
    "getegid": 108, "geteuid": 107, "getgid": 104, "getgroups": 115, "getitimer": 36,
    "getpeername": 52, "getpgid": 121, "getpgrp": 111, "getpid": 39, "getppid": 110,
    "getpriority": 140, "getrandom": 318, "getresgid": 120, "getresuid": 118, "getrlimit": 97,
    "getrusage": 98, "getsid": 124, "getsockname": 51, "getsockopt": 55, "gettid": 186,
    "gettimeofday": 96, "getuid": 102, "getxattr": 191, "getxattrat": 464, "init_module": 175,
    "io_uring_enter": 426, "io_uring_register": 427, "io_uring_setup": 425, "ioctl": 16,
    "ioperm": 173, "iopl": 172, "ioprio_get": 252, "ioprio_set": 251, "kcmp": 312,
    "kexec_file_load": 320, "kexec_load": 246, "keyctl": 250, "kill": 62,
    "landlock_add_rule": 445, "landlock_create_ruleset": 444, "landlock_restrict_self": 446,
    "lchown": 94, "lgetxattr": 192, "link": 86, "linkat": 265, "listen": 50, "listxattr": 194,
    "listxattrat": 465, "llistxattr": 195, "lookup_dcookie": 212, "lremovexattr": 198,
    "lseek": 8, "lsetxattr": 189, "lstat": 6, "madvise": 28, "map_shadow_stack": 453,
    "membarrier": 324, "memfd_create": 319, "memfd_secret": 447, "mincore": 27, "mkdir": 83,
    "mkdirat": 258, "mmap": 9, "modify_ldt": 154, "mount": 165, "mount_setattr": 442,
    "move_mount": 429, "mprotect": 10, "mremap": 25, "mseal": 462, "msgctl": 71, "msgget": 68,
    "msgrcv": 70, "msgsnd": 69, "msync": 26, "munmap": 11, "name_to_handle_at": 303,
    "nanosleep": 35, "newfstatat": 262, "nfsservctl": 180, "open": 2, "open_by_handle_at": 304,
    "open_tree": 428, "open_tree_attr": 467, "openat": 257, "openat2": 437, "pause": 34,
    "perf_event_open": 298, "personality": 135, "pidfd_getfd": 438, "pidfd_open": 434,
    "pidfd_send_signal": 424, "pipe": 22, "pipe2": 293, "pivot_root": 155, "poll": 7,
    "ppoll": 271, "prctl": 157, "pread64": 17, "preadv": 295, "preadv2": 327, "prlimit64": 302,
    "process_vm_readv": 310, "process_vm_writev": 311, "pselect6": 270, "ptrace": 101,
    "pwrite64": 18, "pwritev": 296, "pwritev2": 328, "quotactl": 179, "quotactl_fd": 443,
    "read": 0, "readlink": 89, "readlinkat": 267, "readv": 19, "reboot": 169, "recvfrom": 45,
    "recvmmsg": 299, "recvmsg": 47, "removexattr": 197, "removexattrat": 466, "rename": 82,
    "renameat": 264, "renameat2": 316, "request_key": 249, "restart_syscall": 219, "rmdir": 84,
    "rseq": 334, "rt_sigaction": 13, "rt_sigpending": 127, "rt_sigprocmask": 14,
    "rt_sigqueueinfo": 129, "rt_sigreturn": 15, "rt_sigsuspend": 130, "rt_sigtimedwait": 128,
    "rt_tgsigqueueinfo": 297, "sched_get_priority_max": 146, "sched_get_priority_min": 147,
    "sched_getaffinity": 204, "sched_getattr": 315, "sched_getparam": 143,
    "sched_getscheduler": 145, "sched_rr_get_interval": 148, "sched_setaffinity": 203,
    "sched_setattr": 314, "sched_setparam": 142, "sched_setscheduler": 144, "sched_yield": 24,
    "select": 23, "semctl": 66, "semget": 64, "semop": 65, "semtimedop": 220, "sendfile": 40,
    "sendmmsg": 307, "sendmsg": 46, "sendto": 44, "set_robust_list": 273,
    "set_tid_address": 218, "setdomainname": 171, "sethostname": 170, "setitimer": 38,
    "setns": 308, "setpriority": 141, "setrlimit": 160, "setsockopt": 54, "settimeofday": 164,
    "setxattr": 188, "setxattrat": 463, "shmat": 30, "shmctl": 31, "shmdt": 67, "shmget": 29,
    "shutdown": 48, "sigaltstack": 131, "socket": 41, "socketpair": 53, "stat": 4,
    "statfs": 137, "statx": 332, "swapoff": 168, "swapon": 167, "symlink": 88, "symlinkat": 266,
    "sysinfo": 99, "syslog": 103, "tgkill": 234, "time": 201, "times": 100, "tkill": 200,
    "truncate": 76, "umask": 95, "umount2": 166, "uname": 63, "unlink": 87, "unlinkat": 263,
    "unshare": 272, "uselib": 134, "userfaultfd": 323, "utime": 132, "utimensat": 280,
    "utimes": 235, "vfork": 58, "vhangup": 153, "wait4": 61, "waitid": 247, "write": 1,
    "writev": 20,
}
_AARCH64 = {
    "accept": 202, "accept4": 242, "acct": 89, "add_key": 217, "adjtimex": 171, "bind": 200,
    "bpf": 280, "brk": 214, "chdir": 49, "chroot": 51, "clock_adjtime": 266,
    "clock_getres": 114, "clock_gettime": 113, "clock_nanosleep": 115, "clock_settime": 112,
    "clone": 220, "clone3": 435, "close": 57, "close_range": 436, "connect": 203,
    "copy_file_range": 285, "delete_module": 106, "dup": 23, "dup3": 24, "epoll_create1": 20,
    "epoll_ctl": 21, "epoll_pwait": 22, "epoll_pwait2": 441, "execve": 221, "execveat": 281,
    "exit": 93, "exit_group": 94, "faccessat": 48, "faccessat2": 439, "fadvise64": 223,
    "fallocate": 47, "fanotify_init": 262, "fchdir": 50, "fchmod": 52, "fchmodat": 53,
    "fchmodat2": 452, "fchown": 55, "fchownat": 54, "fcntl": 25, "fdatasync": 83,
    "fgetxattr": 10, "finit_module": 273, "flistxattr": 13, "flock": 32, "fremovexattr": 16,
    "fsconfig": 431, "fsetxattr": 7, "fsmount": 432, "fsopen": 430, "fspick": 433, "fstat": 80,
    "fstatfs": 44, "fsync": 82, "ftruncate": 46, "futex": 98, "futex_requeue": 456,
    "futex_wait": 455, "futex_waitv": 449, "futex_wake": 454, "getcpu": 168, "getcwd": 17,
    "getdents64": 61, "getegid": 177, "geteuid": 175, "getgid": 176, "getgroups": 158,
    "getitimer": 102, "getpeername": 205, "getpgid": 155, "getpid": 172, "getppid": 173,
    "getpriority": 141, "getrandom": 278, "getresgid": 150, "getresuid": 148, "getrlimit": 163,
    "getrusage": 165, "getsid": 156, "getsockname": 204, "getsockopt": 209, "gettid": 178,
    "gettimeofday": 169, "getuid": 174, "getxattr": 8, "getxattrat": 464, "init_module": 105,
    "io_uring_enter": 426, "io_uring_register": 427, "io_uring_setup": 425, "ioctl": 29,
    "ioprio_get": 31, "ioprio_set": 30, "kcmp": 272, "kexec_file_load": 294, "kexec_load": 104,
    "keyctl": 219, "kill": 129, "landlock_add_rule": 445, "landlock_create_ruleset": 444,
    "landlock_restrict_self": 446, "lgetxattr": 9, "linkat": 37, "listen": 201, "listxattr": 11,
    "listxattrat": 465, "llistxattr": 12, "lookup_dcookie": 18, "lremovexattr": 15, "lseek": 62,
    "lsetxattr": 6, "madvise": 233, "map_shadow_stack": 453, "membarrier": 283,
    "memfd_create": 279, "memfd_secret": 447, "mincore": 232, "mkdirat": 34, "mmap": 222,
    "mount": 40, "mount_setattr": 442, "move_mount": 429, "mprotect": 226, "mremap": 216,
    "mseal": 462, "msgctl": 187, "msgget": 186, "msgrcv": 188, "msgsnd": 189, "msync": 227,
    "munmap": 215, "name_to_handle_at": 264, "nanosleep": 101, "newfstatat": 79,
    "nfsservctl": 42, "open_by_handle_at": 265, "open_tree": 428, "open_tree_attr": 467,
    "openat": 56, "openat2": 437, "perf_event_open": 241, "personality": 92, "pidfd_getfd": 438,
    "pidfd_open": 434, "pidfd_send_signal": 424, "pipe2": 59, "pivot_root": 41, "ppoll": 73,
    "prctl": 167, "pread64": 67, "preadv": 69, "preadv2": 286, "prlimit64": 261,
    "process_vm_readv": 270, "process_vm_writev": 271, "pselect6": 72, "ptrace": 117,
    "pwrite64": 68, "pwritev": 70, "pwritev2": 287, "quotactl": 60, "quotactl_fd": 443,
    "read": 63, "readlinkat": 78, "readv": 65, "reboot": 142, "recvfrom": 207, "recvmmsg": 243,
    "recvmsg": 212, "removexattr": 14, "removexattrat": 466, "renameat": 38, "renameat2": 276,
    "request_key": 218, "restart_syscall": 128, "rseq": 293, "rt_sigaction": 134,
    "rt_sigpending": 136, "rt_sigprocmask": 135, "rt_sigqueueinfo": 138, "rt_sigreturn": 139,
    "rt_sigsuspend": 133, "rt_sigtimedwait": 137, "rt_tgsigqueueinfo": 240,
    "sched_get_priority_max": 125, "sched_get_priority_min": 126, "sched_getaffinity": 123,
    "sched_getattr": 275, "sched_getparam": 121, "sched_getscheduler": 120,
    "sched_rr_get_interval": 127, "sched_setaffinity": 122, "sched_setattr": 274,
    "sched_setparam": 118, "sched_setscheduler": 119, "sched_yield": 124, "semctl": 191,
    "semget": 190, "semop": 193, "semtimedop": 192, "sendfile": 71, "sendmmsg": 269,
    "sendmsg": 211, "sendto": 206, "set_robust_list": 99, "set_tid_address": 96,
    "setdomainname": 162, "sethostname": 161, "setitimer": 103, "setns": 268,
    "setpriority": 140, "setrlimit": 164, "setsockopt": 208, "settimeofday": 170, "setxattr": 5,
    "setxattrat": 463, "shmat": 196, "shmctl": 195, "shmdt": 197, "shmget": 194,
    "shutdown": 210, "sigaltstack": 132, "socket": 198, "socketpair": 199, "statfs": 43,
    "statx": 291, "swapoff": 225, "swapon": 224, "symlinkat": 36, "sysinfo": 179, "syslog": 116,
    "tgkill": 131, "times": 153, "tkill": 130, "truncate": 45, "umask": 166, "umount2": 39,
    "uname": 160, "unlinkat": 35, "unshare": 97, "userfaultfd": 282, "utimensat": 88,
    "vhangup": 58, "wait4": 260, "waitid": 95, "write": 64, "writev": 66,
}
_ARCHES = {
    "x86_64": (0xC000003E, 0x40000000, _X86_64, 317),
    "aarch64": (0xC00000B7, None, _AARCH64, 277),
}
#: numbers above every system call this table knows answer ENOSYS (a kernel newer than the
#: filter has calls nobody reviewed; the C library treats ENOSYS as "not there")
_FIRST_UNKNOWN_SYSCALL = 468

#: confine.py's system-call allow-list: what a confined worker (CPython 3.10-3.13, gunicorn's
#: sync and gthread workers, gae_sandbox.worker) calls, by purpose; measured with strace over
#: the confinement tests. A call on no list here answers EPERM. Path-based calls are listed
#: because Landlock decides which paths they reach; what Landlock does not see (metadata
#: changes, SysV IPC, TCP Fast Open, listen's implicit bind) is not.
_ALLOWED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("I/O on descriptors already open (RLIMIT_FSIZE bounds file data)", (
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
        "preadv2", "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3", "fcntl",
        "fstat", "fstatfs", "fsync", "fdatasync", "flock", "fadvise64", "sendfile",
        "copy_file_range", "getdents", "getdents64", "fgetxattr", "flistxattr")),
    ("paths: Landlock decides which ones (openat2: filesystem.py's race-free reads)", (
        "open", "openat", "openat2", "stat", "lstat", "newfstatat", "statx", "access",
        "faccessat", "faccessat2", "readlink", "readlinkat", "getcwd", "chdir", "fchdir",
        "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
        "link", "linkat", "symlink", "symlinkat", "statfs", "getxattr", "lgetxattr",
        "listxattr", "llistxattr", "getxattrat", "listxattrat", "umask")),
    ("the process's own memory (RLIMIT_AS bounds it)", (
        "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "msync", "mincore",
        "membarrier", "mseal", "map_shadow_stack")),
    ("threads (clone is checked), locks, reading scheduling state", (
        "set_tid_address", "set_robust_list", "rseq", "futex", "futex_waitv", "futex_wake",
        "futex_wait", "futex_requeue", "sched_yield", "sched_getaffinity", "sched_getparam",
        "sched_getscheduler", "sched_getattr", "sched_get_priority_max",
        "sched_get_priority_min", "sched_rr_get_interval", "getpriority", "ioprio_get",
        "getcpu", "arch_prctl")),
    ("signal handling (sending one is checked)", (
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
        "rt_sigsuspend", "sigaltstack", "pause", "restart_syscall")),
    ("time, sleeping, the process's own interval timers", (
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time",
        "getitimer", "setitimer", "alarm")),
    ("waiting on descriptors: selectors, asyncio, server loops", (
        "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
        "epoll_wait", "epoll_pwait", "epoll_pwait2", "pipe", "pipe2")),
    ("sockets (socket() and send* are checked; Landlock decides TCP bind and connect)", (
        "socketpair", "connect", "accept", "accept4", "bind", "getsockname", "getpeername",
        "setsockopt", "getsockopt", "shutdown", "recvfrom", "recvmsg", "recvmmsg")),
    ("randomness, identity, limits and usage: reading them", (
        "getrandom", "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
        "getgroups", "getpid", "getppid", "gettid", "getpgrp", "getpgid", "getsid", "getrlimit",
        "getrusage", "times", "uname", "sysinfo")),
    ("children of a fork=True worker: waiting for them (only its own children can be reaped)", (
        "wait4", "waitid", "pidfd_open")),
    ("adding confinement (confine_child): it can only take more away", (
        "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self")),
    ("exit", ("exit", "exit_group")),
)
#: writing file data other than through write(): only while RLIMIT_FSIZE is not 0
_FILE_SIZE_CALLS = ("truncate", "ftruncate", "fallocate")
#: answered ENOSYS, so the C library falls back to a call the filter can check (clone)
_ENOSYS_CALLS = ("clone3",)
#: allowed when their arguments pass a check (one block each in _seccomp_program)
_CHECKED = ("clone", "socket", "kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
            "prlimit64", "utimensat", "ioctl", "prctl", "sendto", "sendmsg", "sendmmsg",
            "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam",
            "sched_setattr", "ioprio_set")
#: ioctl requests a worker makes: Python's socket.setblocking (FIONBIO), os.set_inheritable
#: (FIOCLEX/FIONCLEX), isatty (TCGETS, TCGETS2 with newer C libraries),
#: os.get_terminal_size (TIOCGWINSZ), bytes waiting on a socket (FIONREAD). Nothing that
#: changes a file (FS_IOC_SETFLAGS, FS_IOC_SETVERSION) or a terminal.
_IOCTLS = {"FIONBIO": 0x5421, "FIOCLEX": 0x5451, "FIONCLEX": 0x5450, "FIONREAD": 0x541B,
           "TCGETS": 0x5401, "TCGETS2": 0x802C542A, "TIOCGWINSZ": 0x5413}
#: prctl options: the parent-death signal (gae_sandbox.worker's children), thread names,
#: reading state, and adding confinement (no_new_privs, a seccomp filter, which only restrict)
_PRCTLS = {"PR_SET_PDEATHSIG": 1, "PR_GET_PDEATHSIG": 2, "PR_GET_DUMPABLE": 3,
           "PR_GET_KEEPCAPS": 7, "PR_SET_NAME": 15, "PR_GET_NAME": 16, "PR_GET_SECCOMP": 21,
           "PR_SET_SECCOMP": 22, "PR_CAPBSET_READ": 23, "PR_GET_TIMERSLACK": 30,
           "PR_SET_NO_NEW_PRIVS": 38, "PR_GET_NO_NEW_PRIVS": 39, "PR_GET_THP_DISABLE": 42,
           "PR_SET_VMA": 0x53564D41}


def allowed_system_calls(*, no_file_data: bool = True) -> tuple[str, ...]:
    """confine.py's system-call allow-list, by name: the calls allowed whatever their arguments
    (``_CHECKED`` calls are allowed with some arguments only; every other call is refused)."""
    names = [name for _, group in _ALLOWED for name in group]
    if not no_file_data:
        names += _FILE_SIZE_CALLS
    return tuple(names)


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
    heartbeat_fd: int | None = None,
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

    ``heartbeat_fd`` is the one descriptor whose times the process may set (``futimens``):
    gunicorn's heartbeat file (``worker.tmp.fileno()``). ``None`` leaves ``futimens`` on any
    descriptor (never a path), for callers that do not pass it yet.

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
    if heartbeat_fd is not None and (isinstance(heartbeat_fd, bool)
                                     or not isinstance(heartbeat_fd, int) or heartbeat_fd < 0):
        raise ValueError(f"confine_process heartbeat_fd must be a descriptor (an int >= 0) or "
                         f"None, got {heartbeat_fd!r}")
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
        _load_seccomp(_seccomp_program(policy, threads, max_file_size == 0, fork,
                                       heartbeat_fd))
        applied.append("seccomp")
        logger.debug("process %d: a system call not on confine.py's system-call allow-list "
                     "now answers EPERM (PermissionError)", os.getpid())
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
    ``CLONE_THREAD`` (no new processes), signals only to itself, no more changes to rlimits,
    priorities and affinity of itself only (pid 0), no ``futimens`` (the worker's heartbeat
    descriptor is closed in the child; its number may be reused). Must run while the process
    has one thread. Returns the layers applied.
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
    abi, filters, pid_indexes = _child_prepared
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
        for index in pid_indexes:  # signals and priorities: only to itself
            filters[index].k = os.getpid()
        fprog = _SockFprog(len(filters), filters)
        if _prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER),
                  ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            _raise_os("prctl(PR_SET_SECCOMP) (child)")
        applied.append("seccomp-child")
    return tuple(applied)


#: what confine_child loads: (Landlock ABI, the child filter as a ctypes array, the indexes of
#: its pid instructions); built once by prepare_child, inherited by every fork
_child_prepared: tuple[int, ctypes.Array[ctypes.Structure] | None, tuple[int, ...]] | None = None
_PID_PLACEHOLDER = 0xFFFFFFFF


def prepare_child() -> None:
    """Build what :func:`confine_child` loads (its seccomp filter; the kernel's Landlock ABI)
    in the parent, so that each forked child only patches in its pid and loads it."""
    global _child_prepared
    abi = landlock_abi()
    if not seccomp_available():
        _child_prepared = (abi, None, ())
        return
    program = _child_seccomp_program()
    indexes = tuple(i for i, insn in enumerate(program) if insn[3] == _PID_PLACEHOLDER)
    filters = (_SockFilter * len(program))(*(_SockFilter(*insn) for insn in program))
    _child_prepared = (abi, filters, indexes)


def _lower_rlimit(which: int, soft: int, hard: int) -> None:
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (min(soft, hard), hard))


def _child_seccomp_program() -> list[tuple[int, int, int, int]]:
    """The second filter of :func:`confine_child`. The first, inherited from the worker, stays
    in force (the allow-list); this one takes back what only the worker needs."""
    audit_arch, _, numbers, _ = _ARCHES[platform.machine()]
    deny = _RET_ERRNO | errno.EPERM
    program = _Program()
    program.load(_OFFSET_ARCH)
    program.jump(_JEQ_K, audit_arch, "nr", None)
    program.ret(_RET_KILL_PROCESS)
    program.label("nr")
    program.load(_OFFSET_NR)
    # utimensat: the child closed the worker's heartbeat descriptor; its number may be reused
    for name in ("fork", "vfork", "setrlimit", "pidfd_send_signal", "utimensat"):
        if name in numbers:
            program.jump(_JEQ_K, numbers[name], "deny", None)
    program.jump(_JEQ_K, numbers["clone3"], "enosys", None)
    program.jump(_JEQ_K, numbers["clone"], "clone", None)
    program.jump(_JEQ_K, numbers["prlimit64"], "prlimit64", None)
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        program.jump(_JEQ_K, numbers[name], "signal", None)
    program.jump(_JEQ_K, numbers["setpriority"], "setpriority", None)
    program.jump(_JEQ_K, numbers["ioprio_set"], "ioprio_set", None)
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
        program.jump(_JEQ_K, numbers[name], "self_arg0", None)
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
    # priorities: of the child itself (0; the worker's filter refuses the child's pid)
    program.label("setpriority")
    program.load(_arg_low(0))
    program.jump(_JEQ_K, _PRIO_PROCESS, "self_arg1", "deny")
    program.label("ioprio_set")
    program.load(_arg_low(0))
    program.jump(_JEQ_K, _IOPRIO_WHO_PROCESS, "self_arg1", "deny")
    program.label("self_arg1")
    program.load(_arg_low(1))
    program.jump(_JEQ_K, 0, "allow", None)
    program.jump(_JEQ_K, _PID_PLACEHOLDER, "allow", "deny")
    program.label("self_arg0")
    program.load(_arg_low(0))
    program.jump(_JEQ_K, 0, "allow", None)
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
    readable += ["/etc/ld.so.cache", "/dev/urandom", "/dev/random"]
    readable += _time_zone_paths()
    if policy.allowed_hosts:  # name resolution and TLS need these
        readable += ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
                     "/etc/host.conf", "/etc/services", "/etc/protocols"]
        import ssl

        verify = ssl.get_default_verify_paths()
        readable += [p for p in (verify.cafile, verify.capath) if p]
    writable = ["/dev/null", *(os.fspath(p) for p in writable_paths)]
    return _existing(readable), _existing(writable)


def _time_zone_paths() -> list[str]:
    """The time-zone database, read by ``zoneinfo`` (and Django, pytz's successors) when an app
    first names a zone: its ``TZPATH`` folders (as built, and ``PYTHONTZPATH``'s), which the
    in-process policy lets the app read too, and ``/etc/localtime`` (its target, resolved by
    ``_existing``). Read-only."""
    import zoneinfo

    built = sysconfig.get_config_var("TZPATH") or ""
    return ["/etc/localtime", "/usr/share/zoneinfo", *zoneinfo.TZPATH,
            *(p for p in built.split(os.pathsep) if os.path.isabs(p))]


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


def _seccomp_program(policy: Policy, threads: bool, no_file_data: bool, fork: bool = False,
                     heartbeat_fd: int | None = None) -> list[tuple[int, int, int, int]]:
    """A classic-BPF program: check the architecture, send each ``_CHECKED`` call to its block,
    allow the calls on the allow-list (``_ALLOWED``), answer ``EPERM`` to everything else."""
    audit_arch, x32_bit, numbers, _ = _ARCHES[platform.machine()]
    deny = _RET_ERRNO | errno.EPERM
    pid = os.getpid()
    program = _Program()
    program.load(_OFFSET_ARCH)
    program.jump(_JEQ_K, audit_arch, "nr", None)
    program.ret(_RET_KILL_PROCESS)  # another ABI's numbers mean other calls
    program.label("nr")
    program.load(_OFFSET_NR)
    if x32_bit is not None:
        program.jump_far(_JSET_K, x32_bit, "kill_process")
    program.jump_far(_JGE_K, _FIRST_UNKNOWN_SYSCALL, "enosys")
    for name in _ENOSYS_CALLS:
        program.jump_far(_JEQ_K, numbers[name], "enosys")
    for name in _CHECKED:
        program.jump_far(_JEQ_K, numbers[name], name)
    for name in allowed_system_calls(no_file_data=no_file_data):
        if name in numbers:
            program.return_if(_JEQ_K, numbers[name], _RET_ALLOW)
    program.ret(deny)  # not on confine.py's system-call allow-list

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
        program.jump(_JEQ_K, 0, "own_resource", None)
        program.jump(_JEQ_K, pid, "own_resource", "deny")
        program.label("own_resource")
        program.load(_arg_low(1))
        program.jump(_JEQ_K, 0, "allow", None)
        program.jump(_JEQ_K, 1, "allow", None)
        program.jump(_JEQ_K, 9, "allow", "deny")

    program.label("utimensat")  # futimens(fd) only (gunicorn's heartbeat), never a path
    program.load(_arg_low(1))
    program.jump(_JEQ_K, 0, None, "deny")
    program.load(_arg_high(1))
    if heartbeat_fd is None:
        program.jump(_JEQ_K, 0, "allow", "deny")
    else:
        program.jump(_JEQ_K, 0, None, "deny")
        program.load(_arg_low(0))
        program.jump(_JEQ_K, heartbeat_fd, "allow", "deny")

    program.label("ioctl")  # the listed requests (the kernel reads an unsigned int)
    program.load(_arg_low(1))
    for request in _IOCTLS.values():
        program.jump(_JEQ_K, request, "allow", None)
    program.ret(deny)

    program.label("prctl")  # the listed options
    program.load(_arg_low(0))
    for option in _PRCTLS.values():
        program.jump(_JEQ_K, option, "allow", None)
    program.ret(deny)

    # TCP Fast Open connects inside sendto/sendmsg, where Landlock's connect rule never looks
    for name, flags in (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)):
        program.label(name)
        program.load(_arg_low(flags))
        program.jump(_JSET_K, _MSG_FASTOPEN, "deny", "allow")

    # scheduling and I/O priority, and limits: of the worker itself (0 or its pid), nobody else
    program.label("setpriority")
    program.load(_arg_low(0))
    program.jump(_JEQ_K, _PRIO_PROCESS, "self_arg1", "deny")
    program.label("ioprio_set")
    program.load(_arg_low(0))
    program.jump(_JEQ_K, _IOPRIO_WHO_PROCESS, "self_arg1", "deny")
    program.label("self_arg1")
    program.load(_arg_low(1))
    program.jump(_JEQ_K, 0, "allow", None)
    program.jump(_JEQ_K, pid, "allow", "deny")
    for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
        program.label(name)
    program.load(_arg_low(0))
    program.jump(_JEQ_K, 0, "allow", None)
    program.jump(_JEQ_K, pid, "allow", "deny")

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
    """A tiny classic-BPF assembler: forward jumps to labels, ``None`` = the next one;
    ``jump_far`` and ``goto`` reach labels more than 255 instructions away."""

    def __init__(self) -> None:
        self.items: list[tuple[str, tuple[object, ...]]] = []
        self.fresh = 0

    def load(self, offset: int) -> None:
        self.items.append(("insn", (_LD_ABS_W, None, None, offset)))

    def alu_and(self, value: int) -> None:
        self.items.append(("insn", (_ALU_AND_K, None, None, value)))

    def jump(self, code: int, value: int, true: str | None, false: str | None) -> None:
        self.items.append(("insn", (code, true, false, value)))

    def goto(self, target: str) -> None:
        self.items.append(("insn", (_JA, target, None, 0)))

    def jump_far(self, code: int, value: int, target: str) -> None:
        """To ``target`` when the test holds (however far), on to the next one otherwise."""
        past = self._label()
        self.jump(code, value, None, past)
        self.goto(target)
        self.label(past)

    def return_if(self, code: int, value: int, result: int) -> None:
        past = self._label()
        self.jump(code, value, None, past)
        self.ret(result)
        self.label(past)

    def ret(self, value: int) -> None:
        self.items.append(("insn", (_RET_K, None, None, value)))

    def label(self, name: str) -> None:
        self.items.append(("label", (name,)))

    def _label(self) -> str:
        self.fresh += 1
        return f".{self.fresh}"

    def assemble(self) -> list[tuple[int, int, int, int]]:
        labels: dict[object, int] = {}
        count = 0
        for kind, data in self.items:
            if kind == "label":
                if data[0] in labels:
                    raise AssertionError(f"seccomp label {data[0]} defined twice")
                labels[data[0]] = count
            else:
                count += 1
        out: list[tuple[int, int, int, int]] = []
        for kind, data in self.items:
            if kind == "label":
                continue
            code, true, false, value = data
            here = len(out) + 1
            if code == _JA:  # 32-bit offset
                out.append((_JA, 0, 0, labels[true] - here))
                continue
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
