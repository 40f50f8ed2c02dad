"""Network: outbound connections only to ``Policy.allowed_hosts``; never a server.

Every case runs against a real listener on 127.0.0.1 that counts accepted connections: a
refused connection must leave the count at zero, an allowed one must raise it.
"""

from __future__ import annotations

import errno
import http.client
import socket
import urllib.request
from collections.abc import Callable, Iterator
from urllib.error import URLError

import pytest

from gae_sandbox import NetworkRefused, Policy, Sandbox, SandboxViolation
from loopback import free_port

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib must connect straight to the listener, never to a proxy from the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# --- ways of connecting to 127.0.0.1:port -------------------------------------------------------


def via_create_connection(port: int) -> None:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()


def via_socket_connect(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
    finally:
        sock.close()


def via_connect_ex(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", port)) == 0
    finally:
        sock.close()


def via_http_client(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        connection.getresponse()
    finally:
        connection.close()


def via_urlopen(port: int) -> None:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()


CONNECTORS: dict[str, Callable[[int], None]] = {
    "socket.create_connection": via_create_connection,
    "socket.socket().connect": via_socket_connect,
    "socket.socket().connect_ex": via_connect_ex,
    "http.client.HTTPConnection.request": via_http_client,
    "urllib.request.urlopen": via_urlopen,
}


def refusal_in(error: BaseException) -> BaseException:
    """urllib wraps the OSError of the connection in URLError.reason."""
    if isinstance(error, URLError) and isinstance(error.reason, BaseException):
        return error.reason
    return error


def connect_and_catch(connect: Callable[[int], None], port: int,
                      sandbox: Sandbox | None) -> BaseException | None:
    """Run ``connect`` (inside ``sandbox`` if given); the error it raised, if any."""
    try:
        if sandbox is None:
            connect(port)
        else:
            with sandbox:
                connect(port)
    except (OSError, http.client.HTTPException) as error:
        return error
    return None


def assert_network_refusal(error: BaseException | None, port: int) -> NetworkRefused:
    assert error is not None, "the connection was not refused"
    error = refusal_in(error)
    assert isinstance(error, NetworkRefused), repr(error)
    assert isinstance(error, PermissionError)
    assert isinstance(error, SandboxViolation)
    assert error.errno == errno.EACCES
    assert f"127.0.0.1:{port}" in str(error)
    assert "allowed_hosts" in str(error)
    return error


@pytest.mark.parametrize("name", list(CONNECTORS))
def test_connect_refused_without_allowed_hosts(name: str, policy: Policy, listener) -> None:
    error = connect_and_catch(CONNECTORS[name], listener.port, Sandbox(policy))
    assert_network_refusal(error, listener.port)
    assert listener.settle() == 0


@pytest.mark.parametrize("name", list(CONNECTORS))
def test_control_connect_outside_sandbox(name: str, listener) -> None:
    # The listener closes at once, so the HTTP clients may fail after connecting; the count
    # is what matters.
    connect_and_catch(CONNECTORS[name], listener.port, None)
    assert listener.settle() == 1


@pytest.mark.parametrize("rule", ["127.0.0.1:{port}", "127.0.0.1:*"])
@pytest.mark.parametrize("name", ["socket.create_connection", "socket.socket().connect",
                                  "socket.socket().connect_ex"])
def test_allowed_host_is_accepted(name: str, rule: str, policy: Policy, listener) -> None:
    allowed = policy.replace(allowed_hosts=(rule.format(port=listener.port),))
    box = Sandbox(allowed)
    assert connect_and_catch(CONNECTORS[name], listener.port, box) is None
    assert listener.settle() == 1
    assert box.violations == []


def test_other_port_only_is_refused(policy: Policy, listener) -> None:
    other = listener.port + 1 if listener.port < 65535 else listener.port - 1
    box = Sandbox(policy.replace(allowed_hosts=(f"127.0.0.1:{other}",)))
    for name in ("socket.create_connection", "socket.socket().connect"):
        assert_network_refusal(connect_and_catch(CONNECTORS[name], listener.port, box),
                               listener.port)
    assert listener.settle() == 0
    assert {v.kind for v in box.violations} == {"network"}
    assert all(v.enforced for v in box.violations)


def test_hostname_rule_allows_connecting_by_that_name(policy: Policy, listener) -> None:
    box = Sandbox(policy.replace(allowed_hosts=(f"localhost:{listener.port}",)))
    with box:
        socket.create_connection(("localhost", listener.port), timeout=2).close()
    assert listener.settle() == 1
    assert box.violations == []


def test_hostname_rule_allows_the_resolved_address_only_after_lookup(policy: Policy,
                                                                     listener) -> None:
    box = Sandbox(policy.replace(allowed_hosts=(f"localhost:{listener.port}",)))
    with box:
        # an address nobody looked up is not allowed by a host-name rule
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            with pytest.raises(NetworkRefused):
                sock.connect(("127.0.0.1", listener.port))
        finally:
            sock.close()
        assert listener.settle() == 0
        # looking the name up records its addresses for the rest of the request
        addresses = {info[4][0] for info in socket.getaddrinfo(
            "localhost", listener.port, socket.AF_INET, socket.SOCK_STREAM)}
        assert "127.0.0.1" in addresses
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(2)
            sock.connect(("127.0.0.1", listener.port))
        finally:
            sock.close()
    assert listener.settle() == 1
    # the recorded addresses do not outlive the request
    with box:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            with pytest.raises(NetworkRefused):
                sock.connect(("127.0.0.1", listener.port))
        finally:
            sock.close()
    assert listener.settle() == 1


def test_lookup_of_other_host_refused_with_hostname_rule(policy: Policy, listener) -> None:
    with Sandbox(policy.replace(allowed_hosts=(f"localhost:{listener.port}",))):
        with pytest.raises(NetworkRefused):
            socket.getaddrinfo("localhost", listener.port + 1 if listener.port < 65535 else 1)


# --- UDP ------------------------------------------------------------------------------------------


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.3)
    yield receiver
    receiver.close()


def test_udp_sendto_refused_and_nothing_received(policy: Policy,
                                                 udp_receiver: socket.socket) -> None:
    address = udp_receiver.getsockname()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with Sandbox(policy):
            with pytest.raises(NetworkRefused) as info:
                sender.sendto(b"from the sandbox", address)
    finally:
        sender.close()
    assert f"127.0.0.1:{address[1]}" in str(info.value)
    with pytest.raises(socket.timeout):
        udp_receiver.recv(100)


def test_control_udp_sendto_outside_sandbox(udp_receiver: socket.socket) -> None:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"from the host", udp_receiver.getsockname())
    finally:
        sender.close()
    assert udp_receiver.recv(100) == b"from the host"


# --- servers: bind and listen are refused even with allowed_hosts -----------------------------


def nothing_listens_on(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        return probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        probe.close()


@pytest.fixture
def open_policy(policy: Policy) -> Policy:
    return policy.replace(allowed_hosts=("127.0.0.1:*", "localhost:*"))


def test_bind_refused_even_with_allowed_hosts(open_policy: Policy) -> None:
    port = free_port()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with Sandbox(open_policy):
            with pytest.raises(NetworkRefused) as info:
                sock.bind(("127.0.0.1", port))
        assert sock.getsockname() == ("0.0.0.0", 0)  # never bound
        assert nothing_listens_on(port)
    finally:
        sock.close()
    assert isinstance(info.value, PermissionError)


def test_bind_udp_refused_even_with_allowed_hosts(open_policy: Policy) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with Sandbox(open_policy):
            with pytest.raises(NetworkRefused):
                sock.bind(("127.0.0.1", 0))
        assert sock.getsockname() == ("0.0.0.0", 0)
    finally:
        sock.close()


def test_listen_refused_even_with_allowed_hosts(open_policy: Policy) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))  # bound by the host, not listening
        port = sock.getsockname()[1]
        with Sandbox(open_policy):
            with pytest.raises(NetworkRefused) as info:
                sock.listen(5)
        assert nothing_listens_on(port)
    finally:
        sock.close()
    assert isinstance(info.value, PermissionError)


def test_listen_on_unbound_socket_refused(open_policy: Policy) -> None:
    # listen() on an unbound socket binds an ephemeral port by itself
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with Sandbox(open_policy):
            with pytest.raises(NetworkRefused):
                sock.listen(5)
        assert sock.getsockname()[1] == 0
    finally:
        sock.close()


def test_control_bind_and_listen_outside_sandbox() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        assert not nothing_listens_on(sock.getsockname()[1])
    finally:
        sock.close()
