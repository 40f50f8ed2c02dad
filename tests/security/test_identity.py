"""Weakness 3 of the security review: identity by a value the app controls.

A check that reads an app object's methods (a ``str`` subclass's ``lower``, an ``int``
subclass, a tuple subclass's ``__getitem__``) can be told one thing while the C code that
acts reads another: the object's own data. The sandbox judges the data, as C reads it. Each
attempt connects to the test's own loopback listener, which counts what it accepted; the
control makes the same call outside the sandbox and the listener accepts it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gae_sandbox import NetworkRefused, Policy, Sandbox


class LyingHost(str):
    """Says it is an allowed name to Python code; C connects to what it holds."""

    def lower(self) -> str:
        return "api.allowed.example"

    def rstrip(self, *args: Any) -> str:
        return "api.allowed.example"

    def __str__(self) -> str:
        return "api.allowed.example"

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


class LyingPort(int):
    def __index__(self) -> int:
        return 443

    def __int__(self) -> int:
        return 443

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


class LyingAddress(tuple):
    def __getitem__(self, index: Any) -> Any:
        return ("api.allowed.example", 443)[index]


def _attempts(port: int) -> dict[str, Callable[[], None]]:
    def connect(address: Any) -> None:
        with socket.socket() as sock:
            sock.settimeout(5)
            sock.connect(address)

    return {
        "str_subclass_host": lambda: connect((LyingHost("127.0.0.1"), port)),
        "int_subclass_port": lambda: connect(("127.0.0.1", LyingPort(port))),
        "str_and_int_subclasses": lambda: connect((LyingHost("127.0.0.1"), LyingPort(port))),
        "tuple_subclass_address": lambda: connect(LyingAddress(("127.0.0.1", port))),
        "create_connection_str_subclass": lambda: socket.create_connection(
            (LyingHost("127.0.0.1"), port), timeout=5).close(),
    }


CASES = ["str_subclass_host", "int_subclass_port", "str_and_int_subclasses",
         "tuple_subclass_address",
         "create_connection_str_subclass"]


@pytest.mark.parametrize("case", CASES)
def test_plain_python_connects(case: str, listener: Any) -> None:
    _attempts(listener.port)[case]()
    assert listener.settle() == 1


@pytest.mark.parametrize("case", CASES)
def test_sandbox_judges_what_c_uses(case: str, listener: Any, app_root: Path) -> None:
    policy = Policy.python27(app_root=app_root, deadline=None,
                             allowed_hosts=("api.allowed.example:443",))
    with Sandbox(policy):
        with pytest.raises(NetworkRefused) as caught:
            _attempts(listener.port)[case]()
    assert "127.0.0.1" in str(caught.value)
    assert listener.settle() == 0
