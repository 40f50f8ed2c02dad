"""A gunicorn worker that runs each request in a fresh confined process (``--isolation request``).

``gae-sandbox serve APP --isolation request`` uses it, and so can any gunicorn::

    gunicorn -k gae_sandbox.worker.RequestWorker --workers 2 --threads 8 wsgi:application

where ``application`` is a :class:`~gae_sandbox.SandboxMiddleware` (its ``policy`` drives the
confinement) or a ``gunicorn.conf.py`` sets ``worker_class`` to a subclass with ``policy``
set (then the worker is confined before it imports anything; see ``RequestWorker.configured``).

The worker (one per gunicorn worker process, gunicorn's arbiter starts and replaces them):

* confines itself with :func:`~gae_sandbox.confine_process` (``fork=True``: it may fork children
  and ``SIGKILL`` them, nothing else new), imports the app once (inside the in-process
  sandbox) and freezes the garbage collector's view of it, so children share its pages;
* keeps ``spare_children`` children forked ahead; each spare closes every descriptor but its
  control socket and the standard streams, dies with the worker (``PR_SET_PDEATHSIG``), sets
  its own rlimits and adds its own seccomp and Landlock layers
  (:func:`~gae_sandbox.confine.confine_child`: no new processes, no signals out, no more rlimit
  changes), then waits;
* accepts connections (at most ``--threads`` running, ``--worker-connections`` minus that
  waiting; more are answered ``503``), hands each connection to a spare over a UNIX socket
  (``SCM_RIGHTS``), and keeps a copy only to answer ``500`` if the child dies;
* kills a child with ``SIGKILL`` at deadline + grace (``Policy.deadline`` +
  ``Policy.hard_deadline_grace``), answers ``500`` (or closes the connection if the response
  had started) and logs the request; a child that dies by itself is treated the same way.

A child serves exactly one request (``Connection: close``: no keep-alive) inside the app's
in-process sandbox as before (same errors, same logs), sends its report records back to the
worker, and exits. Nothing it does reaches the worker or the next request.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import json
import mimetypes
import mmap
import os
import selectors
import signal
import socket
import stat
import statistics
import struct
import sys
import time
import warnings
from collections import deque
from datetime import datetime
from typing import Any, NoReturn

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers import base

from .confine import confine_child, confine_process, prepare_child
from .policy import Policy
from .report import Report, Violation
from .sandbox import Sandbox, install

__all__ = ["RequestWorker"]

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

#: messages on a child's UNIX socket: the request (worker -> child, with the connection's
#: descriptor) and report records (child -> worker, JSON), only when there are some
_REQUEST, _RECORDS = b"R", b"V"
_MAX_MESSAGE = 65536
_MAX_RECORD_BYTES = 1 << 20  # report records accepted from one child
_MAX_MESSAGES = 512  # messages read from one child
#: a child's progress, in a page it shares with the worker (no message, no wakeup): flags,
#: then the request line's length and text (for the worker's log if the child dies)
_READY, _BEGAN, _STARTED, _DONE = 0, 1, 2, 3
_LINE_LENGTH, _LINE, _LINE_MAX = 8, 16, 400
_PATH_CPU = 504  # a double: the child's CPU seconds from the hand-over to the response

#: signals with a handler in a gunicorn worker: blocked while it forks
_HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGWINCH, signal.SIGABRT, signal.SIGCHLD}

_HEALTHY = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nok\n")
_ERROR_500 = b"500 Internal Server Error\n"
_ERROR_503 = b"503 Service Unavailable: the server is busy, retry later\n"

_get_parser = getattr(http, "get_parser", None) or http.RequestParser
#: captured at import: an app may patch the json module in its own process
_dumps, _loads = json.dumps, json.loads
_close_graceful = getattr(util, "close_graceful", None)


class _Child:
    """One forked process, spare or serving: its control socket, pidfd and request."""

    __slots__ = ("pid", "channel", "pidfd", "state", "conn", "dispatched", "kill_at",
                 "killed", "peer", "records", "record_bytes", "messages", "channel_open")

    def __init__(self, pid: int, channel: socket.socket, pidfd: int | None,
                 state: mmap.mmap) -> None:
        self.pid = pid
        self.channel = channel
        self.pidfd = pidfd
        self.state = state  # shared with the child: written by it, only read here
        self.conn: socket.socket | None = None
        self.dispatched = 0.0
        self.kill_at: float | None = None
        self.killed: float | None = None
        self.peer = "-"
        self.records: list[dict[str, Any]] = []
        self.record_bytes = 0
        self.messages = 0
        self.channel_open = True

    def flag(self, index: int) -> bool:
        return not self.state.closed and self.state[index] == 1

    def request_line(self) -> str:
        """What the child said it is serving (its own words: for the log only)."""
        length = min(int.from_bytes(self.state[_LINE_LENGTH:_LINE_LENGTH + 2], "little"),
                     _LINE_MAX)
        text = self.state[_LINE:_LINE + length].decode("utf-8", "replace")
        return "".join(c if c.isprintable() else "?" for c in text) or "-"


class RequestWorker(base.Worker):
    """gunicorn worker: one fresh, confined child process per request (see the module doc).

    Settings are class attributes; set them in a subclass (``RequestWorker.configured(...)``
    makes one). gunicorn's own settings keep their meaning: ``--threads`` is the number of
    requests one worker runs at once (children), ``--worker-connections`` caps running plus
    waiting connections, ``--timeout`` is the worker's heartbeat timeout (a worker never
    runs app code while serving, so it only fires if the worker itself hangs),
    ``--graceful-timeout`` bounds how long SIGTERM waits for running requests.
    """

    #: the policy to confine with, before the app is imported; ``None``: the served app's
    #: ``policy`` (a SandboxMiddleware or DevServerApp), after it is loaded
    policy: Policy | None = None
    #: ``RLIMIT_AS`` of the worker and of each child, MB
    memory_limit_mb: int | None = 2048
    #: a cap on each child's CPU seconds besides deadline + grace (``None``: that only)
    cpu_limit: float | None = None
    #: paths the worker may write (the report spool of ``serve``)
    writable_paths: tuple[str, ...] = ()
    #: the worker's ``RLIMIT_FSIZE`` (``None`` to write report files); children always get 0
    worker_file_size: int | None = 0
    #: children forked ahead of requests, so the fork is off the request's path: one is forked
    #: at once whenever none is left, the others while no request is being served
    spare_children: int = 2
    #: a path answered ``200 ok`` by a fresh confined child without calling the app (probes
    #: of load balancers and Kubernetes: it checks the whole path but the app), or ``None``
    health_path: str | None = None
    #: descriptors the worker may spend on children and waiting connections (a confined
    #: worker's RLIMIT_NOFILE is 1024)
    max_fds: int = 960

    @classmethod
    def configured(cls, **settings: Any) -> type[RequestWorker]:
        """A subclass with these class attributes (``policy=``, ``memory_limit_mb=``, ...)."""
        unknown = [name for name in settings if name.startswith("_") or not hasattr(cls, name)]
        if unknown:
            raise TypeError(f"RequestWorker.configured: unknown setting(s) {unknown}")
        return type(cls.__name__, (cls,), {"__module__": cls.__module__, **settings})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._policy: Policy | None = None
        self._confined = False
        self._report: Report | None = None
        self._running: dict[int, _Child] = {}
        self._spares: deque[_Child] = deque()
        self._queue: deque[tuple[socket.socket, Any, Any]] = deque()
        self._selector: selectors.BaseSelector | None = None
        self._listening = False
        self._stopping = False
        self._looping = False
        self._quitting = False
        self._fork_failed_at = 0.0
        self._early_deaths = 0
        self._fork_ms: deque[float] = deque(maxlen=2000)  # CPU per fork, the worker's
        self._child_ms: deque[float] = deque(maxlen=2000)  # CPU per child, all of it
        self._path_ms: deque[float] = deque(maxlen=2000)  # of which after the hand-over
        self._counts = {"requests": 0, "killed": 0, "died": 0, "busy": 0}
        self._concurrency = 1
        self._queue_size = 0
        self._worker_pid = 0
        self._state: mmap.mmap | None = None  # a child's shared page (in the child)

    # -- boot (in the worker process) ------------------------------------------------------

    def init_process(self) -> None:
        self._worker_pid = os.getpid()
        if self.cfg.is_ssl:
            raise RuntimeError(
                "gae_sandbox RequestWorker does not terminate TLS: every request's process "
                "would hold the private key; terminate TLS at a proxy or load balancer")
        if self.worker_file_size == 0:
            for fd, name in ((1, "stdout"), (2, "stderr")):
                try:
                    regular = stat.S_ISREG(os.fstat(fd).st_mode)
                except OSError:
                    continue
                if regular:  # said while it still can be
                    self.log.warning("gae_sandbox: %s is a regular file; confined processes "
                                     "write no file data (RLIMIT_FSIZE=0), so what they log "
                                     "there is lost: send it to a pipe", name)
        if self.policy is not None:
            self._confine(self.policy)  # before anything of the app is imported
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        policy = self.policy or getattr(self.wsgi, "policy", None)
        if not isinstance(policy, Policy):
            raise RuntimeError(
                "gae_sandbox RequestWorker needs a Policy: serve a SandboxMiddleware (or a "
                "gae_sandbox DevServerApp), or set RequestWorker.policy in a subclass "
                "(RequestWorker.configured(policy=...))")
        self._policy = policy
        if not self._confined:
            self.log.info("gae_sandbox: the app module was imported before confinement (set "
                          "RequestWorker.policy to confine first)")
            self._confine(policy)
        sandbox = getattr(self.wsgi, "sandbox", None)
        self._report = sandbox.report if isinstance(sandbox, Sandbox) else None
        for middleware in (self.wsgi, getattr(self.wsgi, "scripts", None)):
            if hasattr(middleware, "recycle_worker"):
                middleware.recycle_worker = False  # the worker kills a child past its deadline
        self._preload()
        self._prepare_loop()
        self._first_spare()  # before gunicorn counts the worker as booted

    def _confine(self, policy: Policy) -> None:
        mimetypes.init()  # reads /etc/mime.types, outside what the worker may read afterwards
        confinement = confine_process(policy, writable_paths=self.writable_paths,
                                      address_space_mb=self.memory_limit_mb,
                                      max_file_size=self.worker_file_size, fork=True,
                                      heartbeat_fd=self.tmp.fileno())  # gunicorn's heartbeat
        self._confined = True
        self.log.info("worker %s confined: %s (Landlock ABI %s); a confined child per request",
                      os.getpid(), ", ".join(confinement.applied), confinement.landlock_abi)

    def _preload(self) -> None:
        """Import the app's scripts once, here, in the in-process sandbox, so children start
        with them imported. A script that fails to import is left to each request (which
        then fails the same way, with its 500 and its report records)."""
        install()  # the sandbox's process-wide hooks: installed once, before any fork
        app = self.wsgi
        load, config = getattr(app, "_load", None), getattr(app, "config", None)
        if callable(load) and config is not None:  # a gae_sandbox DevServerApp
            assert self._policy is not None
            scripts = []
            for handler in getattr(config, "handlers", ()):
                if handler.script is not None:
                    scripts.append(app._script_of(handler))
            if getattr(config, "wsgi_app", None):
                scripts.append(config.wsgi_app)
            # no deadline here: no timer thread, so the worker forks as a single thread (a
            # stuck import is ended by gunicorn's worker timeout, which covers boot)
            preload = self._policy.replace(deadline=None)
            for script in dict.fromkeys(scripts):
                sandbox = Sandbox(preload)
                try:
                    sandbox.call(load, script)
                except BaseException as error:  # noqa: BLE001 - app code; its request retries
                    self.log.info("gae_sandbox: preloading %s failed (each request imports "
                                  "it): %s: %s", script, type(error).__name__, error)
                    continue
                if self._report is not None:
                    _absorb(self._report, sandbox.violations)
        self._warm_up()  # lazy imports and caches of the request path, once, here
        prepare_child()  # the children's seccomp filter, built once here
        gc.collect()
        gc.freeze()  # children do not copy the app's pages to scan them
        # a thread the app's import started holds nothing a child needs
        warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                                category=DeprecationWarning)

    def _warm_up(self) -> None:
        """Run what every request runs that is not app code: gunicorn's parser and environ
        on a made-up request, and an empty scope of the app's sandbox (which starts the
        deadline timer thread). In the worker this does lazy imports once; in a spare child
        it copies the pages those paths write to before the request needs them."""
        try:
            parser = _get_parser(self.cfg, iter([_WARM_REQUEST]), ("127.0.0.1", 0))
            req = next(parser)
            resp, environ = wsgi.create(req, _NullSocket(), ("127.0.0.1", 0),
                                        ("127.0.0.1", 80), self.cfg)
            resp.start_response("200 OK", [("Content-Length", "0")])
            resp.default_headers()
        except Exception as error:  # an optimisation only
            self.log.debug("gae_sandbox: warm-up of the request path failed: %s", error)
        sandbox = getattr(self.wsgi, "sandbox", None)
        if isinstance(sandbox, Sandbox) and os.getpid() != self._worker_pid:
            sandbox.call(_nothing)

    # -- the worker's loop -----------------------------------------------------------------

    def _prepare_loop(self) -> None:
        self._concurrency = max(1, int(self.cfg.threads))
        spares = max(0, int(self.spare_children))
        room = self.max_fds - 3 * self._concurrency - 2 * spares
        if room < 1:
            raise RuntimeError(f"gae_sandbox RequestWorker: --threads {self._concurrency} "
                               f"needs more descriptors than a confined worker has")
        self._queue_size = max(0, min(int(self.cfg.worker_connections) - self._concurrency,
                                      room))
        for listener in self.sockets:
            listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.PIPE[0], selectors.EVENT_READ, "pipe")

    def run(self) -> None:
        try:
            self._loop()
        finally:
            self._end_children()
            self._log_totals()

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGQUIT/SIGINT: a quick stop. gunicorn's handler raises ``SystemExit`` wherever the
        worker is, which could drop a child's report records between reading and keeping them;
        once the loop runs, it ends at its next turn instead (the signal wakes its select)."""
        if not self._looping:
            super().handle_quit(sig, frame)
            return
        self.alive = False
        self._quitting = True
        self.cfg.worker_int(self)

    def _first_spare(self) -> None:
        """Fork the first child and wait until it is confined: a kernel or policy that cannot
        confine a child stops the worker at boot (gunicorn reports it), not at a request."""
        if self.spare_children < 1:
            return
        child = self._fork()
        if child is None:
            raise RuntimeError("gae_sandbox RequestWorker: cannot fork a child")
        self._spares.append(child)
        try:
            self._wait_ready(child)
        except BaseException:
            self._end_children()
            raise

    def _wait_ready(self, child: _Child) -> None:
        limit = time.monotonic() + 30
        while not child.flag(_READY) and time.monotonic() < limit:
            self.notify()
            assert self._selector is not None
            for key, _ in self._selector.select(0.01):
                if isinstance(key.data, _Child):
                    self._child_event(key.data, key.fileobj)
            if child not in self._spares:
                break
        if not child.flag(_READY):
            raise RuntimeError("gae_sandbox RequestWorker: the first child could not confine "
                               "itself (see the log above)")

    def _loop(self) -> None:
        heartbeat = max(0.05, min(1.0, (self.timeout or 2) / 4))
        assert self._selector is not None
        self._looping = True
        while (self.alive or self._running) and not self._quitting:
            self.notify()
            if self.alive:
                self._fill_spares()
                self._listen(len(self._running) < self._concurrency)
            elif not self._stopping:
                self._stop_accepting()
            timeout = heartbeat
            kills = [c.kill_at for c in self._running.values() if c.kill_at and not c.killed]
            if kills:
                timeout = min(timeout, max(0.0, min(kills) - time.monotonic()))
            if self.alive and not self._listening:
                timeout = min(timeout, 0.02)  # busy: look at the listeners a little later
            for key, _ in self._selector.select(timeout):
                data = key.data
                if data == "pipe":
                    _drain(self.PIPE[0])
                elif data == "listener":
                    self._accept(key.fileobj, greedy=False)
                elif isinstance(data, _Child):
                    self._child_event(data, key.fileobj)
            if self.alive and not self._listening:
                for listener in self.sockets:
                    self._accept(listener, greedy=True)
            self._kill_overdue()
            self._poll_without_pidfd()
            self._start_queued()
            if self.alive and self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.alive = False
            if self.alive and self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current requests (max_requests).")
                self.alive = False

    def _listen(self, on: bool) -> None:
        if on == self._listening:
            return
        assert self._selector is not None
        for listener in self.sockets:
            if on:
                self._selector.register(listener, selectors.EVENT_READ, "listener")
            else:
                self._selector.unregister(listener)
        self._listening = on

    def _accept(self, listener: Any, greedy: bool) -> None:
        """Accept what is waiting: run it, queue it, or answer 503 when the queue is full.
        A worker with a free slot listens all the time and takes what it can run now; a busy
        one looks every 20 ms (``greedy``), so free workers take new connections first."""
        for _ in range(64):
            if not greedy and len(self._running) >= self._concurrency:
                return
            try:
                conn, client = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log.error("gae_sandbox: accept failed: %s", error)
                    return
                raise
            server = listener.getsockname()
            if len(self._running) < self._concurrency and not self._queue:
                self._dispatch(conn, client, server)
            elif len(self._queue) < self._queue_size:
                self._queue.append((conn, client, server))
            else:
                self._counts["busy"] += 1
                self.log.warning("gae_sandbox: %s: %d running, %d waiting: answered 503",
                                 _peer(client), len(self._running), len(self._queue))
                _answer(conn, "503 Service Unavailable", _ERROR_503, retry=True)

    def _start_queued(self) -> None:
        while self._queue and len(self._running) < self._concurrency:
            conn, client, server = self._queue.popleft()
            self._dispatch(conn, client, server)

    def _dispatch(self, conn: socket.socket, client: Any, server: Any) -> None:
        message = _REQUEST + _dumps({"client": _jsonable(client),
                                         "server": _jsonable(server)}).encode()
        for _ in range(3):
            child = self._spares.popleft() if self._spares else self._fork()
            if child is None:
                break
            try:
                socket.send_fds(child.channel, [message], [conn.fileno()])
            except OSError as error:  # it died meanwhile: reaped by its pidfd event
                self.log.debug("gae_sandbox: child %d did not take a request: %s", child.pid,
                               error)
                _kill(child.pid)
                self._running[child.pid] = child  # reaped (and forgotten) like a running one
                continue
            child.conn = conn
            child.peer = _peer(client)
            child.dispatched = time.monotonic()
            grace = self._kill_after()
            child.kill_at = None if grace is None else child.dispatched + grace
            self._running[child.pid] = child
            self.nr += 1
            self._counts["requests"] += 1
            self._fill_spares()  # if that was the last spare: the next one now, off its path
            return
        self._counts["busy"] += 1
        self.log.error("gae_sandbox: no child to run a request from %s: answered 503",
                       _peer(client))
        _answer(conn, "503 Service Unavailable", _ERROR_503, retry=True)

    def _kill_after(self) -> float | None:
        policy = self._policy
        if policy is None or policy.deadline is None:
            return None
        return float(policy.deadline) + float(policy.hard_deadline_grace)

    def _fill_spares(self) -> None:
        """Keep ``spare_children`` children ready: one at once whenever none is left, the
        others while no request is being served, so that forking and setting up the next
        children does not take the CPU from a request."""
        while (self.alive and len(self._spares) < self.spare_children
               and (not self._spares or not self._serving())
               and time.monotonic() - self._fork_failed_at > 1.0):
            child = self._fork()
            if child is None:
                return
            self._spares.append(child)

    def _serving(self) -> bool:
        return any(child.conn is not None for child in self._running.values())

    # -- children: fork, events, end -------------------------------------------------------

    def _fork(self) -> _Child | None:
        try:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as error:
            self._fork_failed_at = time.monotonic()
            self.log.error("gae_sandbox: cannot make a child's socket: %s", error)
            return None
        try:
            state = mmap.mmap(-1, mmap.PAGESIZE)  # MAP_SHARED | MAP_ANONYMOUS
        except OSError as error:
            mine.close()
            theirs.close()
            self._fork_failed_at = time.monotonic()
            self.log.error("gae_sandbox: cannot map a child's state page: %s", error)
            return None
        started = time.thread_time()  # CPU: what the fork costs the worker
        # no Python signal handler of the worker's may run in the child before it has its own
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
            mine.close()
            theirs.close()
            state.close()
            self._fork_failed_at = time.monotonic()
            self.log.error("gae_sandbox: fork failed: %s", error)
            return None
        if pid == 0:
            self._child_main(theirs, state)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        self._fork_ms.append((time.thread_time() - started) * 1000)
        theirs.close()
        mine.setblocking(False)
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None  # polled with waitpid instead
        child = _Child(pid, mine, pidfd, state)
        assert self._selector is not None
        self._selector.register(mine, selectors.EVENT_READ, child)
        if pidfd is not None:
            self._selector.register(pidfd, selectors.EVENT_READ, child)
        return child

    def _child_event(self, child: _Child, fileobj: Any) -> None:
        if fileobj is child.channel:
            self._read_messages(child)
        else:
            self._reap(child)

    def _read_messages(self, child: _Child) -> None:
        for _ in range(64):
            if not child.channel_open:
                return
            try:
                data = child.channel.recv(_MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._close_channel(child)
                return
            child.messages += 1
            if child.messages > _MAX_MESSAGES:  # a child that floods the worker: not heard
                self.log.warning("gae_sandbox: child %d sent too many messages; ignoring it "
                                 "until it ends", child.pid)
                self._close_channel(child)
                return
            kind, payload = data[:1], data[1:]
            if kind == _RECORDS and child.record_bytes + len(payload) <= _MAX_RECORD_BYTES:
                child.record_bytes += len(payload)
                try:
                    records = _loads(payload)
                except ValueError:
                    continue
                if isinstance(records, list):
                    child.records.extend(r for r in records if isinstance(r, dict))

    def _close_channel(self, child: _Child) -> None:
        if child.channel_open:
            child.channel_open = False
            assert self._selector is not None
            self._selector.unregister(child.channel)

    def _reap(self, child: _Child) -> None:
        try:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, usage = child.pid, 0, None
        if pid == 0:
            return  # not yet
        self._read_messages(child)
        try:
            self._settle(child, status)
            if usage is not None and child.flag(_DONE):
                self._child_ms.append((usage.ru_utime + usage.ru_stime) * 1000)
                self._path_ms.append(struct.unpack_from("d", child.state, _PATH_CPU)[0] * 1000)
        finally:
            self._forget(child)

    def _settle(self, child: _Child, status: int) -> None:
        if self._running.pop(child.pid, None) is None:
            if child in self._spares:
                self._spares.remove(child)
            if not self._stopping:
                self._early_deaths += 1
                self.log.error("gae_sandbox: spare child %d ended before a request (%s)",
                               child.pid, _describe(status))
                if self._early_deaths >= 5:
                    self.log.critical("gae_sandbox: children keep dying before any request; "
                                      "stopping this worker")
                    self.alive = False
            return
        self._early_deaths = 0
        self._finish(child, status)

    def _forget(self, child: _Child) -> None:
        assert self._selector is not None
        self._close_channel(child)
        child.channel.close()
        if child.pidfd is not None:
            self._selector.unregister(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = None
        if not child.state.closed:
            child.state.close()

    def _finish(self, child: _Child, status: int) -> None:
        conn = child.conn
        if child.records and self._report is not None:
            _absorb(self._report, _violations(child.records))
            child.records = []
        if conn is None:
            return
        elapsed = time.monotonic() - child.dispatched
        clean = child.flag(_DONE) and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if not clean:
            if child.killed is not None:
                self._counts["killed"] += 1
                policy = self._policy
                assert policy is not None
                why = (f"killed at its hard deadline ({elapsed:.2f} s; deadline "
                       f"{policy.deadline:g} s + grace {policy.hard_deadline_grace:g} s)")
            else:
                self._counts["died"] += 1
                why = f"ended abnormally after {elapsed:.2f} s ({_describe(status)})"
            if child.flag(_STARTED):
                what = "connection closed (the response had started)"
            else:
                what = "answered 500"
                _answer(conn, "500 Internal Server Error", _ERROR_500)
            self.log.error('gae_sandbox: request "%s" from %s (child %d) %s: %s',
                           child.request_line(), child.peer, child.pid, why, what)
        _close(conn)
        child.conn = None

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for child in list(self._running.values()):
            if child.kill_at is not None and child.killed is None and now >= child.kill_at:
                child.killed = now
                _kill(child.pid)

    def _poll_without_pidfd(self) -> None:
        for child in [*self._running.values(), *self._spares]:
            if child.pidfd is None:
                self._reap(child)

    def _stop_accepting(self) -> None:
        """SIGTERM (or max_requests, or the arbiter gone): take no new connection, answer
        the waiting ones 503, let the spares go; running requests finish."""
        self._stopping = True
        self._listen(False)
        while self._queue:
            conn, client, _ = self._queue.popleft()
            self._counts["busy"] += 1
            _answer(conn, "503 Service Unavailable", _ERROR_503, retry=True)
        while self._spares:
            spare = self._spares.popleft()
            self._running[spare.pid] = spare  # reaped on exit, then forgotten (no conn)
            self._close_channel(spare)
            spare.channel.close()  # its wait ends: it exits

    def _end_children(self) -> None:
        """On the way out (also after SIGQUIT/SIGINT): no child outlives the worker."""
        self._stopping = True
        children = [*self._running.values(), *self._spares]
        for child in children:  # what finished children sent (a quick stop comes any time)
            self._read_messages(child)
        for child in children:
            _kill(child.pid)
        for child in children:
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
            if child.conn is not None:
                _close(child.conn)
                child.conn = None
            if child.records and child.flag(_DONE) and self._report is not None:
                _absorb(self._report, _violations(child.records))  # not reaped in time
                child.records = []
            try:
                self._forget(child)
            except (KeyError, ValueError, OSError):
                pass
        self._running.clear()
        self._spares.clear()
        for conn, _, _ in self._queue:
            _close(conn)
        self._queue.clear()

    def _log_totals(self) -> None:
        counts = self._counts

        def typical(values: deque[float]) -> float:
            return statistics.median(values) if values else 0.0

        self.log.info("worker %s: %d request(s) in their own process; CPU per request "
                      "(medians): fork %.2f ms in the worker, %.2f ms in the child, %.2f ms "
                      "of it after the hand-over; %d killed at the hard deadline, %d ended "
                      "abnormally, %d answered 503", self._worker_pid or os.getpid(),
                      counts["requests"], typical(self._fork_ms), typical(self._child_ms),
                      typical(self._path_ms), counts["killed"], counts["died"],
                      counts["busy"])

    # -- the child (never returns) ---------------------------------------------------------

    def _child_main(self, channel: socket.socket, state: mmap.mmap) -> NoReturn:
        code = 70
        try:
            self._state = state
            self._become_child(channel)
            code = self._serve_one(channel)
        except BaseException:  # noqa: BLE001 - the child must never return into gunicorn
            try:
                self.log.exception("gae_sandbox: request child %d failed", os.getpid())
            except BaseException:  # noqa: BLE001
                pass
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:  # noqa: BLE001
                    pass
            os._exit(code)

    def _become_child(self, channel: socket.socket) -> None:
        """Everything but the request: off the request's path when this child is a spare."""
        keep = channel.fileno()
        # forget the other requests (their descriptors are closed just below)
        for other in [*self._running.values(), *self._spares]:
            for sock in (other.conn, other.channel):
                if sock is not None:
                    sock.detach()
            other.state.close()  # their shared pages: unmapped here
        for conn, _, _ in self._queue:
            conn.detach()
        self._running.clear()
        self._spares.clear()
        self._queue.clear()
        self._selector = None
        soft, hard = _nofile()
        os.closerange(3, keep)
        os.closerange(keep + 1, hard)
        signal.set_wakeup_fd(-1)
        # the worker decides when a child ends (SIGKILL); a signal to the process group
        # (Ctrl-C, a container stop) stops the server gracefully, requests included
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                       signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGPIPE):
            signal.signal(number, signal.SIG_IGN)
        for number in (signal.SIGABRT, signal.SIGCHLD, signal.SIGXCPU):
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
        if _libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL),
                       ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != self._worker_pid:
            os._exit(0)  # the worker is already gone
        kill_after = self._kill_after()
        cpu = [s for s in (kill_after, self.cpu_limit) if s is not None]
        confine_child(cpu_seconds=min(cpu) if cpu else None,
                      address_space_mb=self.memory_limit_mb, max_file_size=0)
        self._warm_up()  # the deadline timer thread, and the request path's pages, copied now
        channel.setblocking(True)
        self._state[_READY] = 1

    def _serve_one(self, channel: socket.socket) -> int:
        try:
            data, fds, _, _ = socket.recv_fds(channel, _MAX_MESSAGE, 1)
        except OSError:
            return 0
        if not data or not fds or data[:1] != _REQUEST:
            for fd in fds:
                os.close(fd)
            return 0  # the worker let this spare go
        meta = _loads(data[1:])
        client, server = _address(meta["client"]), _address(meta["server"])
        conn = socket.socket(fileno=fds[0])
        for fd in fds[1:]:
            os.close(fd)
        before = _counts(self._report)
        cpu = time.process_time()
        conn.settimeout(self.cfg.timeout or None)
        watched = _Watched(conn, self._state)
        try:
            self._handle(watched, client, server, channel)
        finally:
            struct.pack_into("d", self._state, _PATH_CPU, time.process_time() - cpu)
            try:
                self._send_records(channel, before)
            except Exception as error:  # the response is out: the records are lost, logged
                self.log.error("gae_sandbox: request child %d could not send its report "
                               "records: %s", os.getpid(), error)
            self._state[_DONE] = 1  # after the records: done means they were sent
            if _close_graceful is not None:
                try:
                    _close_graceful(conn, timeout=1.0)
                except TypeError:
                    _close_graceful(conn)
            else:
                _close(conn)
        return 0

    def _handle(self, sock: _Watched, client: Any, server: Any, channel: socket.socket) -> None:
        """One request, as gunicorn's sync worker handles it, with the connection closed
        after the response."""
        req = None
        try:
            parser = _get_parser(self.cfg, sock, client)
            req = next(parser)
            line = f"{req.method} {req.uri}".encode("utf-8", "replace")[:_LINE_MAX]
            self._state[_LINE:_LINE + len(line)] = line
            self._state[_LINE_LENGTH:_LINE_LENGTH + 2] = len(line).to_bytes(2, "little")
            self._state[_BEGAN] = 1
            if self.health_path is not None and req.path == self.health_path:
                sock.sendall(_HEALTHY)
                return
            self._handle_request(req, sock, client, server)
        except http.errors.NoMoreData as error:
            self.log.debug("Ignored premature client disconnection. %s", error)
        except StopIteration as error:
            self.log.debug("Closing connection. %s", error)
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except BaseException as error:  # noqa: BLE001 - as gunicorn's sync worker
            self.handle_error(req, sock, client, error)

    def _handle_request(self, req: Any, sock: _Watched, client: Any, server: Any) -> None:
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, sock, client, server, self.cfg)
            resp.force_close()  # one request per process: no keep-alive
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp is not None and resp.headers_sent:
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def _send_records(self, channel: socket.socket, before: dict[tuple[str, str, str], int]
                      ) -> None:
        """This request's report records (what the app's sandbox recorded since the fork)."""
        if self._report is None:
            return
        batch: list[str] = []
        size = 0
        for violation in self._report.violations:
            key = (violation.kind, violation.target, violation.location)
            count = violation.count - before.get(key, 0)
            if count <= 0:
                continue
            record = dict(violation.to_dict(), count=count)
            text = _dumps(record)
            if len(text) > _MAX_MESSAGE - 16:
                continue
            if size + len(text) > _MAX_MESSAGE - 16:
                _send(channel, _RECORDS + f"[{','.join(batch)}]".encode())
                batch, size = [], 0
            batch.append(text)
            size += len(text) + 1
        if batch:
            _send(channel, _RECORDS + f"[{','.join(batch)}]".encode())


_WARM_REQUEST = b"GET /gae-sandbox-warm-up HTTP/1.1\r\nHost: localhost\r\n\r\n"


def _nothing() -> None:
    pass


class _NullSocket:
    def send(self, data: bytes) -> int:
        return len(data)

    def sendall(self, data: bytes) -> None:
        pass


class _Watched:
    """The connection as gunicorn's response writer sees it: the first bytes sent tell the
    worker that the response has started (it then closes instead of answering 500)."""

    def __init__(self, sock: socket.socket, state: mmap.mmap) -> None:
        self._sock = sock
        self._state = state

    def _sending(self) -> None:
        self._state[_STARTED] = 1

    def sendall(self, data: Any, *args: Any) -> Any:
        self._sending()
        return self._sock.sendall(data, *args)

    def send(self, data: Any, *args: Any) -> Any:
        self._sending()
        return self._sock.send(data, *args)

    def sendfile(self, *args: Any, **kwargs: Any) -> Any:
        self._sending()
        return self._sock.sendfile(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# -- helpers ------------------------------------------------------------------------------


def _absorb(report: Report, violations: list[Violation]) -> None:
    """Add records to ``report`` without logging them again (they were logged where they
    happened). Children forked later start with them, so each distinct violation is logged
    once per worker, as in one process."""
    with report._lock:
        for violation in violations:
            key = (violation.kind, violation.target, violation.location)
            known = report._by_key.get(key)
            if known is None:
                report._by_key[key] = violation
            else:
                known.count += violation.count


def _violations(records: list[dict[str, Any]]) -> list[Violation]:
    names = set(Violation.__dataclass_fields__)
    result = []
    for record in records:
        if names <= set(record):
            try:
                violation = Violation(**{name: record[name] for name in names})
            except TypeError:
                continue
            if (all(isinstance(getattr(violation, name), str)
                    for name in ("kind", "target", "location", "rule", "message"))
                    and isinstance(violation.count, int) and 0 < violation.count < 1 << 31):
                result.append(violation)
    return result


def _counts(report: Report | None) -> dict[tuple[str, str, str], int]:
    if report is None:
        return {}
    return {(v.kind, v.target, v.location): v.count for v in report.violations}


def _send(channel: socket.socket, message: bytes) -> None:
    try:
        channel.send(message)
    except OSError:
        pass  # the worker is gone (this process follows it) or stopped listening


def _answer(conn: socket.socket, status: str, body: bytes, retry: bool = False) -> None:
    """Answer from the worker (503, or 500 for a dead child): never blocks, then closes."""
    head = (f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; "
            f"charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            f"{'Retry-After: 1' + chr(13) + chr(10) if retry else ''}\r\n").encode("latin-1")
    try:
        conn.setblocking(False)
        try:
            for _ in range(16):  # what the client sent: left unread, closing would reset
                if not conn.recv(65536):
                    break
        except OSError:
            pass
        conn.send(head + body)
    except OSError:
        pass
    _close(conn)


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass


def _nofile() -> tuple[int, int]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > 1 << 20:
        hard = max(soft if soft != resource.RLIM_INFINITY else 0, 65536)
    return soft, hard


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        hints = {"SIGXCPU": ": its CPU time limit", "SIGKILL": ": killed",
                 "SIGSYS": ": a system call through another ABI", "SIGSEGV": ": a crash"}
        return f"{name}{hints.get(name, '')}"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"status {status}"


def _jsonable(address: Any) -> Any:
    if isinstance(address, tuple):
        return list(address)
    if isinstance(address, bytes):
        return address.decode("latin-1")
    return address


def _address(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _peer(client: Any) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return str(client) or "-"

