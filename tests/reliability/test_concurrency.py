"""Many threads alternating sandboxed and host work, each with its own policy.

The sandbox is one ContextVar per execution context: a bug in carrying, resetting or sharing
it shows up as a leak in one direction or the other (the host refused, a request let through,
a request judged by another's policy) only when many threads interleave. Every iteration
checks both directions; the end checks that nothing is left behind.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import gae_sandbox.sandbox as sandbox_module
from gae_sandbox import Policy, Sandbox
from gae_sandbox.context import active_scope
from gae_sandbox.deadline import TIMER
from gae_sandbox.errors import FileReadRefused, FileWriteRefused, NetworkRefused

THREADS = 16
ITERATIONS = 2_000


def _active_deadlines() -> int:
    with TIMER._lock:
        return sum(1 for _, _, deadline in TIMER._heap if deadline.active)


def test_sixteen_threads_alternating_sandboxed_and_host_work(tmp_path: Path,
                                                             listener) -> None:
    roots = []
    for i in range(THREADS):
        root = tmp_path / f"app{i}"
        root.mkdir()
        (root / "data.txt").write_text(f"app {i}\n")
        roots.append(root)
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n")
    allowed = f"127.0.0.1:{listener.port}"
    # Policies differ by app root, the listener allowed or not, a deadline or none, and mode:
    # every fourth app reports instead of refusing (its reads outside go through, recorded).
    policies = [
        Policy.python27(app_root=root, allowed_hosts=(allowed,) if i % 2 == 0 else (),
                        deadline=30.0 if i % 4 < 2 else None,
                        mode="report" if i % 4 == 3 else "enforce")
        for i, root in enumerate(roots)
    ]
    reporting = {i for i in range(THREADS) if i % 4 == 3}
    sandboxes = [Sandbox(policy) for policy in policies]
    connects = [0] * THREADS
    failures: list[str] = []
    baseline_threads = set(threading.enumerate())
    baseline_scopes = sandbox_module.active_scope_count()
    start = threading.Barrier(THREADS)

    def sandboxed(i: int, n: int) -> None:
        scope = active_scope()
        assert scope is not None and scope.owner is sandboxes[i], "another request's scope"
        assert scope.policy is policies[i], "another request's policy"
        step = n // 2 % 3  # the reads take turns, so 32,000 iterations stay quick
        if step == 0:
            with open(roots[i] / "data.txt") as f:
                assert f.read() == f"app {i}\n"
        elif step == 1:
            neighbour = roots[(i + 1) % THREADS] / "data.txt"
            try:
                with open(neighbour) as f:
                    assert f.read() == f"app {(i + 1) % THREADS}\n"
            except FileReadRefused as refusal:
                assert i not in reporting, f"report-mode app {i} was refused: {refusal}"
                assert str(neighbour) in str(refusal)
            else:
                assert i in reporting, f"app {i} read {neighbour}"
        else:
            try:
                os.stat(secret)
            except FileReadRefused:
                assert i not in reporting, f"report-mode app {i} was refused"
            else:
                assert i in reporting, f"app {i} stat the host's {secret}"
        if i in reporting:
            return  # a write would go through: report mode records, it does not refuse
        target = roots[i] / f"written-{n}.txt"
        try:
            with open(target, "w") as f:
                f.write("never")
        except FileWriteRefused as refusal:
            assert str(target) in str(refusal) and "read-only" in str(refusal)
        else:
            raise AssertionError(f"app {i} wrote {target}")
        if n % 100 == 0:  # sometimes: the network decision and a carried thread
            seen = []
            worker = threading.Thread(target=lambda: seen.append(active_scope()))
            worker.start()
            worker.join()
            assert seen == [scope], "a thread did not carry its starter's sandbox"
            try:
                with socket.create_connection(("127.0.0.1", listener.port), timeout=5):
                    connects[i] += 1
            except NetworkRefused as refusal:
                assert i % 2 == 1, f"app {i} was refused its allowed host: {refusal}"
                assert f"127.0.0.1:{listener.port}" in str(refusal)
            else:
                assert i % 2 == 0, f"app {i} connected without allowed_hosts"

    def host(i: int, n: int) -> None:
        assert active_scope() is None, "a scope stayed active in host code"
        own = host_dir / f"host-{i}.txt"
        with open(own, "w") as f:  # the host writes while other threads are sandboxed
            f.write(f"{i}:{n}")
        if n // 2 % 2 == 0:
            assert secret.read_text() == "host secret\n"  # outside every app root
        else:
            os.stat(roots[(i + 1) % THREADS] / "data.txt")

    def worker(i: int) -> None:
        try:
            start.wait(30)
            for n in range(ITERATIONS):
                if n % 2 == 0:
                    with sandboxes[i]:
                        sandboxed(i, n)
                else:
                    sandboxes[i].call(sandboxed, i, n)
                host(i, n)
        except BaseException as error:  # reported by the main thread
            failures.append(f"thread {i}: {type(error).__name__}: {error}")

    workers = [threading.Thread(target=worker, args=(i,), name=f"conc-{i}")
               for i in range(THREADS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    assert not [t.name for t in workers if t.is_alive()], "a worker thread did not finish"
    assert failures == []

    # Nothing got through, in either direction.
    for root in roots:
        assert sorted(p.name for p in root.iterdir()) == ["data.txt"]
    assert {p.name for p in host_dir.iterdir()} == {f"host-{i}.txt" for i in range(THREADS)}
    per_thread = ITERATIONS // 100
    assert connects == [per_thread if i % 2 == 0 else 0 for i in range(THREADS)]
    assert listener.settle() == per_thread * THREADS // 2

    # Each report holds only its own app's refusals, recorded in its own mode.
    for i, sandbox in enumerate(sandboxes):
        assert {v.enforced for v in sandbox.violations} == {i not in reporting}
        targets = " ".join(v.target for v in sandbox.violations)
        for j, root in enumerate(roots):
            if j not in (i, (i + 1) % THREADS):
                assert str(root) + "/" not in targets, f"app {j}'s path in app {i}'s report"

    # Nothing left behind.
    assert active_scope() is None
    assert sandbox_module.active_scope_count() == baseline_scopes
    assert _active_deadlines() == 0
    left = set(threading.enumerate()) - baseline_threads
    assert {t.name for t in left} <= {"gae_sandbox-deadline"}, left
