"""Figure 4: importing a large pure-Python tree fresh, inside a sandbox versus outside.

One child process imports gae_sandbox (without installing it) and then forks one grandchild
per tree, arm and round, alternating outside/inside. Each grandchild drops the tree's
top-level package and its submodules from ``sys.modules`` (gae_sandbox itself imports ``json``
and ``email``), so the import is fresh; bytecode caches are warm, written by a first untimed
outside import. The inside grandchild installs the hooks and makes one warm-up request (a
cached import in the sandbox), the outside one the same call without a sandbox; both outside
the timed region. Timed: the import, in CPU time of the thread (``thread_time_ns``).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

from ._common import (
    MIN_ROUNDS,
    Row,
    Target,
    cpu_ns,
    in_fork,
    make_app_dir,
    paired_row,
    progress,
    run_child,
    schedule,
)

TREES = ("email.mime.text", "http.server", "json", "xml.dom.minidom", "flask", "django.template")


def run(quick: bool) -> list[Row]:
    app = make_app_dir()
    rounds = MIN_ROUNDS if quick else 12
    trees = [t for t in TREES if importlib.util.find_spec(t.split(".")[0]) is not None]
    rows = []
    try:
        progress(f"fig4: {len(trees)} trees, {rounds} rounds, one fork per arm")
        result = run_child("fig4_imports", app, str(rounds), *trees, timeout=900)
    finally:
        shutil.rmtree(app, ignore_errors=True)
    for tree in trees:
        per = result[tree]
        if "error" in per:
            rows.append(Row("4", f"fresh import {tree}", None, "ms", "outside", None, None,
                            "<= 1.3x", False, f"inside failed: {per['error'][:80]}"))
            continue
        loaded = per["modules"]
        note = "CPU of the import"
        if loaded["inside"] != loaded["outside"]:
            note += f"; modules loaded: inside {loaded['inside']}, outside {loaded['outside']}"
        rows.append(paired_row("4", f"fresh import {tree} ({loaded['outside']} modules)",
                               unit="ms", baseline_name="outside, same parent",
                               baseline=per["outside"], candidate=per["inside"],
                               target=Target("<=", 1.3), scale=1e-6, note=note))
    return rows


def _fresh(mode: str, app: str, tree: str) -> dict[str, int]:
    root = tree.split(".")[0]
    for name in [m for m in sys.modules if m == root or m.startswith(root + ".")]:
        del sys.modules[name]
    if mode == "inside":
        import gae_sandbox
        from gae_sandbox import Policy, Sandbox

        gae_sandbox.install()
        sandbox = Sandbox(Policy.python27(app_root=app))
        sandbox.call(__import__, "os")  # warm-up request: a cached import
        before = len(sys.modules)
        t0 = cpu_ns()
        sandbox.call(__import__, tree)
        elapsed = cpu_ns() - t0
    else:
        __import__("os")  # the same warm-up call, no sandbox
        before = len(sys.modules)
        t0 = cpu_ns()
        __import__(tree)
        elapsed = cpu_ns() - t0
    return {"ns": elapsed, "modules": len(sys.modules) - before}


def child(app: str, rounds: int, trees: list[str]) -> dict[str, object]:
    import gae_sandbox  # noqa: F401  (both arms: the same modules loaded before the tree)

    out: dict[str, object] = {}
    for tree in trees:
        in_fork(lambda tree=tree: _fresh("outside", app, tree))  # write the bytecode caches
        per: dict[str, object] = {"outside": [], "inside": [], "modules": {}}
        try:
            for _, mode in schedule(rounds, ("outside", "inside")):
                result = in_fork(lambda mode=mode, tree=tree: _fresh(mode, app, tree))
                per[mode].append(result["ns"])  # type: ignore[union-attr]
                per["modules"][mode] = result["modules"]  # type: ignore[index]
        except RuntimeError as error:  # a refusal inside: report it, keep the other trees
            per = {"error": str(error)}
        out[tree] = per
    return out


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(child(sys.argv[2], int(sys.argv[3]), sys.argv[4:])))
