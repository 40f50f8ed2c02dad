"""Network decisions: outbound connections only to ``Policy.allowed_hosts``; never a server.

Host names in the policy are matched when the app resolves them; the addresses a lookup of an
allowed name returns are then allowed for the rest of the request, so a name that resolves to
a new address keeps working and an address nobody looked up does not.
"""

from __future__ import annotations

import ipaddress
import socket
from _thread import get_ident as _get_ident
from typing import Any

from .context import Layer, Scope
from .errors import NetworkRefused, SandboxViolation

_CONNECT_RULE = "destination is not in the allowed hosts"
_SERVER_RULE = "sandboxed code may not accept connections"


def exact_host(host: Any) -> str | None:
    """The host as the C socket code reads it: the characters of a ``str`` (or bytes) held,
    never what a subclass's methods (``lower``, ``__str__``, ...) would answer."""
    if isinstance(host, str):
        return str.__str__(host)
    if isinstance(host, (bytes, bytearray)):
        return bytes(memoryview(host)).decode("ascii", "replace")
    return None


def address_parts(address: Any) -> tuple[str, int | None] | None:
    """``(host, port)`` from a socket address, read as the C code reads it (a tuple's items,
    an int's value), so that what is judged is what is used; ``None`` for non-IP (unix)
    addresses."""
    if isinstance(address, tuple) and tuple.__len__(address) >= 2:
        host = exact_host(tuple.__getitem__(address, 0))
        port = tuple.__getitem__(address, 1)
        if host is not None and isinstance(port, int) and not isinstance(port, bool):
            return host, int.__index__(port)
    return None


def format_target(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{'*' if port is None else port}"


def _rule_allows(layer: Layer, host: str, port: int | None) -> bool:
    host = host.lower().rstrip(".")
    return any(rule.matches(host, port) for rule in layer.policy.host_rules)


def host_allowed(layer: Layer, scope: Scope, host: str, port: int | None) -> bool:
    """Whether ``host:port`` matches the layer's rules, directly or as an address that a
    lookup of an allowed name returned in this request."""
    if not layer.policy.host_rules:
        return False
    if _rule_allows(layer, host, port):
        return True
    names = scope.resolved_hosts.get(host)
    return bool(names) and any(_rule_allows(layer, name, port) for name in names)


def check_connect(layer: Layer, scope: Scope, address: Any) -> SandboxViolation | None:
    parts = address_parts(address)
    if parts is None:
        return NetworkRefused(
            f"connect to {address!r}",
            "only TCP/UDP destinations in the allowed hosts are reachable",
            "allowed_hosts",
        )
    host, port = parts
    if host_allowed(layer, scope, host, port):
        return None
    return NetworkRefused(f"connect to {format_target(host, port)}", _CONNECT_RULE,
                          "allowed_hosts")


def check_lookup(layer: Layer, scope: Scope, host: Any, port: Any) -> SandboxViolation | None:
    """Name lookups: only for hosts the app may connect to (a lookup is itself traffic)."""
    if host is None:
        return None
    exact = exact_host(host)
    if exact is None:
        return NetworkRefused(f"lookup of {type(host).__name__} host",
                              "host names are str or bytes", "allowed_hosts")
    host = exact
    if isinstance(port, int) and not isinstance(port, bool):
        port = int.__index__(port)
    elif isinstance(port, str):
        port = str.__str__(port)
    elif isinstance(port, (bytes, bytearray)):
        port = bytes(memoryview(port)).decode("ascii", "replace")
    try:
        ipaddress.ip_address(host.partition("%")[0])
        return None  # an address, not a name: no lookup traffic; connect() is judged
    except ValueError:
        pass
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    elif isinstance(port, str):
        try:
            port = socket.getservbyname(port)
        except OSError:
            port = None
    if not isinstance(port, int) or port == 0:
        port = None
    name = host.lower().rstrip(".")
    for rule in layer.policy.host_rules:
        if (port is None or rule.port is None or rule.port == port) and rule.matches(
            name, rule.port
        ):
            return None
    if port is not None and host_allowed(layer, scope, host, port):
        return None
    return NetworkRefused(f"lookup of {format_target(host, port)}", _CONNECT_RULE,
                          "allowed_hosts")


#: Thread ident -> the socket that ``socket.socket.__init__`` (allowlist.py) is initializing,
#: having judged its ``fileno``: the C initializer's audit event is expected for it alone.
SOCKET_INITS: dict[int, Any] = {}
#: The address families sandboxed code may make sockets of (-1: taken from an adopted
#: descriptor, which ``socket.socket.__init__`` judged as the request's own).
SOCKET_FAMILIES = frozenset({-1, socket.AF_INET, socket.AF_INET6,
                             getattr(socket, "AF_UNIX", socket.AF_INET)})
_FAMILY_RULE = ("sandboxed code may make IPv4, IPv6 and UNIX sockets only (other families "
                "reach the kernel's routing, devices and processes with no address check)")


def on_socket_new(scope: Scope, args: tuple[Any, ...]) -> None:
    """The ``socket.__new__`` audit event (raised by the C initializer)."""
    sock = args[0]
    expected = SOCKET_INITS.pop(_get_ident(), None) is sock  # once: no re-entered initializer
    family = args[1] if len(args) > 1 else -1
    scope.judge(check_raw_socket, sock, expected, family)


def check_raw_socket(layer: Layer, sock: Any, expected: bool = True,
                     family: Any = -1) -> SandboxViolation | None:
    """``_socket.socket`` objects bypass the socket module's checks (``listen`` has no audit
    event); app code gets ``socket.socket``, made through its ``__init__``."""
    if not isinstance(sock, socket.socket):
        return NetworkRefused(
            f"creation of a raw {type(sock).__module__}.{type(sock).__name__}",
            "sandboxed code uses socket.socket, not the private _socket module", None)
    if not expected:
        return NetworkRefused(
            "a socket initialized by _socket.socket.__init__ directly",
            "it adopts any descriptor unchecked: sandboxed code makes sockets with "
            "socket.socket(...)", None)
    if type(family) is not int or family not in SOCKET_FAMILIES:
        return NetworkRefused(f"a socket of address family {family!r}", _FAMILY_RULE, None)
    return None


def check_server(layer: Layer, what: str) -> SandboxViolation | None:
    return NetworkRefused(what, _SERVER_RULE, None)
