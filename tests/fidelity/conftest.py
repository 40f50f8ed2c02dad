"""A port of the python27 development server's own tests of its sandbox.

The SDK (final release 1.9.90/91) shipped ``sandbox_test.py`` (45 tests), ``stubs_test.py``
(42) and ``request_state_test.py`` (6) under
``google/appengine/tools/devappserver2/python/runtime/``. Their behaviours are ported here, one
test per SDK test, named ``test_<file>_<SDK test name>`` (``test_stubs_fake_access_write``
ports ``StubsTest.test_fake_access_write``): ``test_sdk_sandbox.py``, ``test_sdk_stubs.py``,
``test_sdk_request_state.py``. They test the behaviour, not the SDK's mocks: Python 2 import
hooks (``find_module``/``load_module``) become the import gate's decision (the import is
refused or allowed, the module is the one the host would load), ``distutils`` (gone in 3.12)
becomes the app's own package, ``thread``/``__builtin__``/``httplib`` become ``_thread``, a
built-in module off the list and ``http.client``, and ``lxml`` becomes ``markupsafe`` (a
package with an optional C extension that is installed with the test extra).
``test_differences.py`` tests the behaviours the issue named beyond those tests and each row of
README's "Differences from the python27 runtime" table.

Every test in this folder also checks, through the autouse ``host_process_unchanged`` fixture,
that the process the host runs in is as it was: working directory, locale, user and group ids,
priority, ``uname`` and ``platform.uname()``.

Not ported, and why:

- ``sandbox_test.ModuleOverrideImportHookTest.test_load_builtin_no_pass_through``: the SDK
  built a module holding only the names a policy allowed. Modules here are the host's own
  (shared, never copied); a function the runtime removed is refused when called (``signal``,
  ``os`` stubs; tested in ``test_processes.py`` and ``test_sdk_stubs.py``).
- ``sandbox_test.PathOverrideImportHookTest.test_package_success_pil_in_sys_path``: old PIL's
  top-level modules (``import Image``) needed PIL's own folder on ``sys.path``; Pillow has no
  such layout, and libraries are imported from where the host installed them, without changing
  ``sys.path`` (``test_sandbox_package_success`` checks the import and its readable folder).
- ``sandbox_test.PyCryptoRandomImportHookTest.test_find_module``: a replacement for
  PyCrypto's ``OSRNG.posix``, which read ``/dev/urandom`` through a file the runtime did not
  have; PyCrypto does not exist for Python 3 and ``os.urandom`` works in a sandbox.
- ``stubs_test.StubsTest.test_fake_get_platform_darwin``: it set ``sys.platform`` to
  ``'darwin'``; in a shared process that would change the host too. The Linux case is ported
  (``test_stubs_fake_get_platform``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sdk_helpers import host_state


@pytest.fixture(autouse=True)
def host_process_unchanged() -> Iterator[dict[str, Any]]:
    before = host_state()
    yield before
    assert host_state() == before


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    """A file beside the app that the host (this process) can write: the sandbox must not."""
    path = tmp_path / "app2" / "host.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("host\n")
    return path
