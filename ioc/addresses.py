"""The hosts and networks of `ioc.access.write_hosts`: parsed, checked and resolved.

Plain Python: the config checks `write_hosts` here without loading caproto, and
`ioc.access` matches a client's address against what these rules resolve to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 1123 host names: labels of letters, digits and inner hyphens, dot-separated; a trailing dot is allowed.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_LOOKS_NUMERIC = re.compile(r"[0-9.]+")


@dataclass(frozen=True)
class HostRules:
    """`write_hosts` parsed: host names to resolve, networks to match addresses against."""

    names: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()


def parse_hosts(entries: Iterable[str]) -> tuple[HostRules, list[str]]:
    """Split `write_hosts` into names and networks; the problems name each entry that is neither."""
    names: list[str] = []
    networks: list[IPNetwork] = []
    problems: list[str] = []
    for entry in entries:
        text = entry.strip()
        if "/" in text or ":" in text or _LOOKS_NUMERIC.fullmatch(text):
            try:
                networks.append(_network(text))
            except ValueError as error:
                problems.append(f"ioc.access.write_hosts: {entry!r} {error}")
        elif _HOST_NAME.fullmatch(text) and len(text) <= 254:
            names.append(text.rstrip(".").lower())
        else:
            problems.append(f"ioc.access.write_hosts: {entry!r} is not a host name, an address or a network")
    return HostRules(tuple(dict.fromkeys(names)), tuple(dict.fromkeys(networks))), problems


def _network(text: str) -> IPNetwork:
    """`10.54.1.0/24`, `2001:db8::/64` or one address (a network of one)."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        if "host bits set" in str(error):
            suggested = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"has host bits set: the network is {suggested}") from None
        example = "2001:db8::/64" if ":" in text else "10.54.1.0/24"
        raise ValueError(f"is not an IP address or network (address/prefix length, e.g. {example})") from None
    if network.num_addresses == 1:
        return ipaddress.ip_network(plain_address(network.network_address))
    return network


def plain_address(address: IPAddress | str) -> IPAddress:
    """An address as access rules compare it: an IPv4-mapped IPv6 address is its IPv4 address."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def resolve_host(name: str) -> frozenset[IPAddress]:
    """Every address `name` resolves to (IPv4 and IPv6); blocking, raises OSError when it does not resolve."""
    infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    return frozenset(plain_address(str(info[4][0])) for info in infos)


def host_problems(entries: Iterable[str]) -> list[str]:
    """The entries of `write_hosts` that are neither a host name nor a network, each named."""
    return parse_hosts(entries)[1]


def resolution_problems(entries: Iterable[str]) -> list[str]:
    """The host names of `write_hosts` that do not resolve here and now (blocking: for `--check`)."""
    problems = []
    for name in parse_hosts(entries)[0].names:
        try:
            resolve_host(name)
        except OSError as error:
            problems.append(
                f"ioc.access.write_hosts: host name {name!r} does not resolve ({os_reason(error)}); "
                "fix the name or list the host's address"
            )
    return problems


def os_reason(error: OSError) -> str:
    return error.strerror or str(error)
