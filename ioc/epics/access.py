"""Write access by the client's address: EPICS access security with `asCheckClientIP` on.

A client's host is the peer address of its circuit, never the host name it
claims in its CA messages: any client can claim any name. `write_hosts` lists
host names, resolved to addresses at start and again every few minutes (off
the event loop), and networks (`10.54.1.0/24`, `2001:db8::/64`, or one
address). A user name is only the client's claim too, so `write_users`
narrows the hosts (both must admit) and never protects anything alone: a
users-only list is accepted with a warning at start.

The address reaches `check_access(hostname, username)` through the host
name argument: the IOC's circuits (`ioc/epics/caserver/`) pass a `ClientHost`, the
claimed name carrying the circuit's peer address. A plain `str` is only a
claim, so a server that does not pass the address gets no write access.
The server (`ioc/epics/caserver/`) also asks `admits_address` which circuits to
spare when it must close some.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caproto import AccessRights

from ..addresses import IPAddress, os_reason, parse_hosts, plain_address, resolve_host

if TYPE_CHECKING:
    from ..settings.schema import AccessSettings

log = logging.getLogger(__name__)

RESOLVE_SECONDS = 300.0  # host names are resolved again this often

WRITE = AccessRights.READ | AccessRights.WRITE
READ = AccessRights.READ


class ClientHost(str):
    """The host name a client claims, carrying the peer address of its circuit: the one access trusts."""

    address: str

    def __new__(cls, claimed: str, address: str) -> ClientHost:
        host = super().__new__(cls, claimed)
        host.address = address
        return host


@dataclass(frozen=True)
class _Resolved:
    """Addresses of the host names, as last resolved; replaced whole, so readers never see half an update."""

    by_name: Mapping[str, frozenset[IPAddress]]
    addresses: frozenset[IPAddress]


class WriteAccess:
    """Who may write: a client whose address `write_hosts` admits and, when listed, whose user `write_users` admits."""

    def __init__(
        self,
        write_hosts: Iterable[str],
        write_users: Iterable[str],
        *,
        resolver: Callable[[str], frozenset[IPAddress]] = resolve_host,
    ):
        write_hosts = tuple(write_hosts)
        self.rules, problems = parse_hosts(write_hosts)
        for problem in problems:  # the config refuses these; a rule that cannot be read admits nobody
            log.error("%s: that entry admits nobody", problem)
        self.hosts_listed = bool(write_hosts)
        self.users = frozenset(write_users)
        self._resolver = resolver
        self._resolved = _Resolved({}, frozenset())
        self._unresolved: set[str] = set()
        self._unknown_said = False
        if self.users and not self.hosts_listed:
            log.warning(
                "ioc.access: write_users without write_hosts: a user name is only what the client claims, so any "
                "client can write by claiming %s; list the consoles' hosts or networks in ioc.access.write_hosts",
                ", ".join(sorted(self.users)),
            )

    # ------------------------------------------------------------------ resolving host names

    def resolve(self) -> bool:
        """Resolve every host name again (blocking: run it off the event loop); True when an address changed.

        A name that does not resolve keeps its last addresses (a DNS outage must
        not lock the consoles out); at start it has none and admits nobody.
        """
        previous = self._resolved.by_name
        by_name: dict[str, frozenset[IPAddress]] = {}
        for name in self.rules.names:
            try:
                by_name[name] = self._resolver(name)
            except OSError as error:
                by_name[name] = previous.get(name, frozenset())
                if name not in self._unresolved:
                    self._unresolved.add(name)
                    kept = ", ".join(sorted(map(str, by_name[name]))) or "no address: it admits nobody"
                    log.warning(
                        "ioc.access.write_hosts: %s does not resolve (%s); kept %s; tried again every %g s",
                        name, os_reason(error), kept, RESOLVE_SECONDS,
                    )  # fmt: skip
                continue
            if name in self._unresolved:
                self._unresolved.discard(name)
                log.info("ioc.access.write_hosts: %s resolves again", name)
            if name in previous and by_name[name] != previous[name]:
                log.info(
                    "ioc.access.write_hosts: %s now resolves to %s (was %s)",
                    name, _listed(by_name[name]), _listed(previous[name]),
                )  # fmt: skip
        addresses = frozenset().union(*by_name.values())
        changed = addresses != self._resolved.addresses
        self._resolved = _Resolved(by_name, addresses)
        return changed

    async def keep_resolved(
        self, on_change: Callable[[], Awaitable[None]] | None = None, period: float = RESOLVE_SECONDS
    ) -> None:
        """Resolve the host names every `period` s in a worker thread; call `on_change` when an address changed."""
        while True:
            await asyncio.sleep(period)
            try:
                changed = await asyncio.to_thread(self.resolve)
                if changed and on_change is not None:
                    await on_change()
            except Exception:  # a bug: keep the last addresses and try again next time
                log.exception("ioc.access: resolving %s failed", ", ".join(self.rules.names))

    # ------------------------------------------------------------------ deciding

    def admits_address(self, address: str) -> bool:
        """Whether `write_hosts` admits `address`: never without `write_hosts` (a user name alone is a claim)."""
        return self.hosts_listed and self._host_admitted(address)

    def refusal(self, address: str | None, user: str | None) -> str | None:
        """Why a client at `address` claiming `user` may not write, or None when it may."""
        if address is None:
            return "its address is unknown (not served through the IOC's CA server)"
        if self.hosts_listed and not self._host_admitted(address):
            return "its address is not in ioc.access.write_hosts"
        if self.users and user not in self.users:
            return f"user {user!r} is not in ioc.access.write_users"
        return None

    def _host_admitted(self, address: str) -> bool:
        try:
            ip = plain_address(address)
        except ValueError:
            return False
        return ip in self._resolved.addresses or any(ip in network for network in self.rules.networks)

    def check_access(self, hostname: str, username: str) -> AccessRights:
        """caproto's hook on every writable PV: the circuit's peer address decides, never the claimed name."""
        address = getattr(hostname, "address", None)
        if address is None and not self._unknown_said:
            self._unknown_said = True
            log.warning("ioc.access: a client's address is unknown (not the IOC's CA server): writes refused")
        return WRITE if self.refusal(address, username) is None else READ


def _listed(addresses: Iterable[IPAddress]) -> str:
    return ", ".join(sorted(map(str, addresses))) or "nothing"


def restrict_writes(pvdb: Mapping[str, Any], settings: AccessSettings) -> WriteAccess | None:
    """Put the access rules (`ioc.access`) on every writable PV of `pvdb`; None when they restrict nothing."""
    if not settings.restricted:
        return None
    access = WriteAccess(settings.write_hosts, settings.write_users)
    for channel in pvdb.values():
        if not channel.pvspec.read_only:
            channel.check_access = access.check_access
    return access
