"""Weakness 1 of the security review: trust by the caller's file name.

The import machinery used to read any file when the call came from its own frames, so
``SourceFileLoader(...).get_data(path)`` and ``pkgutil.get_data(pkg, "../..")`` read files the
app may not (outside the readable folders, or hidden by ``skip_files``). Now it may read only
the files of the modules the import gate judged and is loading, and list only the folders it
searches for modules. Each attempt has a plain-Python control that reads the file.
"""

from __future__ import annotations

import importlib.machinery
import pkgutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gae_sandbox import Policy, Sandbox


@pytest.fixture
def layout(app_root: Path, outside: Path) -> Iterator[dict[str, Path]]:
    (app_root / "hidden").mkdir()
    (app_root / "hidden" / "keys.txt").write_text("skipped secret\n")
    sys.path.insert(0, str(app_root))
    try:
        yield {"app": app_root, "outside": outside / "secret.txt",
               "skipped": app_root / "hidden" / "keys.txt"}
    finally:
        sys.path.remove(str(app_root))
        for name in [n for n in sys.modules if n == "pkg" or n.startswith("pkg.")]:
            del sys.modules[name]


def _attempts(paths: dict[str, Path]) -> dict[str, Callable[[], bytes]]:
    loader = importlib.machinery.SourceFileLoader("pkg.helpers",
                                                  str(paths["app"] / "pkg" / "helpers.py"))
    relative_outside = "../../app2/secret.txt"
    return {
        "loader_get_data_outside": lambda: loader.get_data(str(paths["outside"])),
        "loader_get_data_skipped": lambda: loader.get_data(str(paths["skipped"])),
        "pkgutil_get_data_dotdot": lambda: pkgutil.get_data("pkg", relative_outside) or b"",
        "file_loader_of_outside_file": lambda: importlib.machinery.SourceFileLoader(
            "secret", str(paths["outside"])).get_data(str(paths["outside"])),
    }


CASES = ["loader_get_data_outside", "loader_get_data_skipped", "pkgutil_get_data_dotdot",
         "file_loader_of_outside_file"]


@pytest.mark.parametrize("case", CASES)
def test_plain_python_reads_it(layout: dict[str, Path], case: str) -> None:
    assert b"secret" in _attempts(layout)[case]()


@pytest.mark.parametrize("case", CASES)
def test_sandbox_refuses_the_read(layout: dict[str, Path], case: str) -> None:
    policy = Policy.python27(app_root=layout["app"], skip_files=(r"^hidden/.*",),
                             deadline=None)
    attempt = _attempts(layout)[case]
    with Sandbox(policy):
        import pkg  # noqa: F401 - the package's own files are read as it is imported

        with pytest.raises(PermissionError):
            attempt()


def test_imports_still_read_their_own_files_outside_the_readable_folders(
        tmp_path: Path, app_root: Path) -> None:
    """A module on sys.path outside the readable folders (a host folder) is imported: the
    import machinery reads that module's file (and so may the app: it is the source of a
    module it imported), but not the folder's other files."""
    host = tmp_path / "hostlib"
    host.mkdir()
    (host / "hostmod_trust.py").write_text("VALUE = 'host module'\n")
    (host / "credentials.txt").write_text("host secret\n")
    sys.path.insert(0, str(host))
    try:
        with Sandbox(Policy.python27(app_root=app_root, deadline=None)):
            import hostmod_trust

            assert hostmod_trust.VALUE == "host module"
            with pytest.raises(PermissionError):
                open(host / "credentials.txt").close()  # noqa: SIM115
    finally:
        sys.path.remove(str(host))
        sys.modules.pop("hostmod_trust", None)
