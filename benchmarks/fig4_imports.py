"""Figure 4: importing a large pure-Python tree fresh, inside a sandbox versus outside.

Every measurement is its own child process, so the modules are fresh (not in
``sys.modules``; bytecode caches are warm, written by a first unsandboxed child). Both
children import gae_sandbox first, so the same modules are already loaded, then drop the
tree's top-level package and its submodules from ``sys.modules`` (gae_sandbox itself imports
``json`` and ``email``); only the sandboxed child installs the hooks and enters a sandbox
around the timed import.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

from ._common import Row, make_app_dir, median, now_ns, progress, run_child

TREES = ("email.mime.text", "http.server", "json", "xml.dom.minidom", "flask", "django.template")


def run(quick: bool) -> list[Row]:
    app = make_app_dir()
    rounds = 2 if quick else 5
    rows = []
    try:
        for tree in TREES:
            if importlib.util.find_spec(tree.split(".")[0]) is None:
                continue
            progress(f"fig4: import {tree}")
            run_child("fig4_imports", "outside", app, tree)  # write the bytecode caches
            per: dict[str, list[float]] = {"outside": [], "inside": []}
            loaded: dict[str, int] = {}
            error = ""
            for r in range(rounds):
                for mode in (("outside", "inside") if r % 2 == 0 else ("inside", "outside")):
                    result = run_child("fig4_imports", mode, app, tree)
                    if "error" in result:
                        error = result["error"]
                        break
                    per[mode].append(result["ns"])
                    loaded[mode] = result["modules"]
                if error:
                    break
            if error:
                rows.append(Row("4", f"import {tree}", None, "ms", "outside", None, None,
                                "<= 1.3x", False, f"inside failed: {error[:80]}"))
                continue
            value, base = median(per["inside"]) / 1e6, median(per["outside"]) / 1e6
            note = ""
            if loaded["inside"] != loaded["outside"]:
                note = f"modules loaded: inside {loaded['inside']}, outside {loaded['outside']}"
            rows.append(Row("4", f"fresh import {tree} ({loaded['outside']} modules)", value,
                            "ms", "outside, own child", base, value / base, "<= 1.3x",
                            value / base <= 1.3, note))
    finally:
        shutil.rmtree(app, ignore_errors=True)
    return rows


def child(mode: str, app: str, tree: str) -> dict[str, object]:
    import gae_sandbox
    from gae_sandbox import Policy, Sandbox

    # gae_sandbox itself uses some of these (json, email): drop the tree so it is fresh
    root = tree.split(".")[0]
    for name in [m for m in sys.modules if m == root or m.startswith(root + ".")]:
        del sys.modules[name]
    before = len(sys.modules)
    if mode == "inside":
        gae_sandbox.install()
        sandbox = Sandbox(Policy.python27(app_root=app))
        before = len(sys.modules)
        try:
            t0 = now_ns()
            sandbox.call(__import__, tree)
            elapsed = now_ns() - t0
        except BaseException as error:  # a refusal: report it, do not crash the suite
            return {"error": f"{type(error).__name__}: {error}"}
    else:
        t0 = now_ns()
        __import__(tree)
        elapsed = now_ns() - t0
    return {"ns": elapsed, "modules": len(sys.modules) - before}


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4])))
