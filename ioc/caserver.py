"""caproto's asyncio Channel Access server with three changes the IOC needs; `serve` runs it.

1. Access by address. Each circuit hands `check_access` a `ClientHost`: the
   host name the client claims, carrying the circuit's peer address, which the
   access rules (`ioc.access`) trust. A write the rules refuse is answered as
   EPICS base answers it (ECA_NOWTACCESS) and leaves one log line naming the
   address (then at most one a minute per address), not a traceback. When
   the host names of the rules resolve to new addresses, every client is sent
   its new access rights.
2. A failed put with completion is answered at once for every client.
   caproto answers it with a CA_PROTO_ERROR message only; libca and caproto's
   sync client take that as the put's failure, but caproto's threading and
   asyncio clients ignore it and wait for their whole timeout. The circuit
   also sends the WRITE_NOTIFY reply carrying the failure status, as EPICS
   base's server does (libca ignores it once the error has closed the put).
3. The UDP name-search socket is read until empty at each wake-up, with a
   large receive buffer. asyncio's datagram transport reads one datagram per
   turn of the event loop; with many clients busy each turn is long, searches
   queue up in the kernel, are answered seconds late and, once the socket
   buffer is full, dropped.

These are subclasses of caproto's `VirtualCircuit` and `Context`
(`caproto.asyncio.server`); they override `_process_command`, `send`, `run`
and `_create_broadcaster_transport`, as of caproto 1.3, and set no private
attribute. `tests/faults/test_access.py` exercises each change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time

import caproto as ca
from caproto import AccessRights
from caproto.asyncio import server as caproto_server

from .access import ClientHost, WriteAccess

log = logging.getLogger(__name__)

REFUSAL_LOG_SECONDS = 60.0  # after a refused write is logged, the same address is logged again after this
SEARCH_RECEIVE_BUFFER = 4 << 20  # bytes asked for the search socket (Linux caps it at net.core.rmem_max)
SEARCH_BATCH = 256  # datagrams read per wake-up at most, so that other work keeps its turn


class Circuit(caproto_server.VirtualCircuit):
    """A client's TCP circuit whose access checks see the client's address."""

    context: Context

    @property
    def client_hostname(self) -> ClientHost:
        """The host name the client claims, carrying its peer address (what `check_access` trusts)."""
        return ClientHost(self.claimed_hostname or "", self.circuit.address[0])

    @client_hostname.setter
    def client_hostname(self, claimed: str | None) -> None:
        self.claimed_hostname = claimed

    async def _process_command(self, command):
        if isinstance(command, (ca.WriteRequest, ca.WriteNotifyRequest)):
            refused = self._refused_write(command)
            if refused is not None:
                return refused
        replies = await super()._process_command(command)
        if isinstance(command, (ca.HostNameRequest, ca.ClientNameRequest)) and self.circuit.channels:
            await self.resend_access_rights()  # a new user name may change them, as in EPICS base
        return replies

    def _refused_write(self, command) -> list | None:
        """The reply to a write the client has no access for (EPICS base's), or None to let caproto handle it."""
        channel = self.circuit.channels_sid.get(command.sid)
        if channel is None:
            return None
        try:
            entry = self.context[channel.name]
        except KeyError:
            return None
        if AccessRights.WRITE in entry.check_access(self.client_hostname, self.client_username):
            return None
        access = self.context.write_access
        if access is not None and entry.check_access == access.check_access:
            why = access.refusal(self.circuit.address[0], self.client_username) or "ioc.access refuses it"
        else:
            why = "the PV is read-only"
        self.context.refusals.note(channel.name, self.circuit.address[0], self.client_username,
                                   self.claimed_hostname, why)  # fmt: skip
        refusal = ca.ErrorResponse(command, channel.cid, ca.CAStatus.ECA_NOWTACCESS, f"no write access: {why}")
        return [refusal]

    async def send(self, *commands):
        await super().send(*commands)
        for command in commands:
            reply = _write_notify_failure(command)
            if reply is None:
                continue
            with contextlib.suppress(ca.LocalProtocolError):  # the client cleared the channel meanwhile
                await super().send(reply)

    async def resend_access_rights(self) -> None:
        """Tell the client its access rights to every channel again (after the access rules changed)."""
        replies = []
        for channel in list(self.circuit.channels.values()):
            try:
                entry = self.context[channel.name]
            except KeyError:
                continue
            rights = entry.check_access(self.client_hostname, self.client_username)
            replies.append(ca.AccessRightsResponse(cid=channel.cid, access_rights=rights))
        for reply in replies:
            with contextlib.suppress(ca.LocalProtocolError):  # that channel is closing
                await self.send(reply)


def _write_notify_failure(command):
    """For caproto's error reply to a put with completion: the WRITE_NOTIFY reply carrying its status."""
    if not isinstance(command, ca.ErrorResponse):
        return None
    request = command.original_request
    if request.command != ca.WriteNotifyRequest.ID:
        return None
    return ca.WriteNotifyResponse(
        data_type=request.data_type, data_count=request.data_count, status=command.status, ioid=request.parameter2
    )


class RefusalLog:
    """Log a refused write naming the client's address: the first at once, then one line a minute per address."""

    def __init__(self, period: float = REFUSAL_LOG_SECONDS):
        self.period = period
        self._last: dict[str, tuple[float, int]] = {}  # address -> (time of its last line, refusals since)

    def note(self, pv: str, address: str, user: str | None, claimed_host: str | None, why: str) -> None:
        now = time.monotonic()
        if len(self._last) > 1024:  # forget the addresses not refused lately
            self._last = {a: seen for a, seen in self._last.items() if now - seen[0] < self.period}
        last, since = self._last.get(address, (None, 0))
        if last is not None and now - last < self.period:
            self._last[address] = (last, since + 1)
            return
        self._last[address] = (now, 0)
        more = f"; {since} more writes from {address} refused since its last line" if since else ""
        log.warning(
            "write to %s refused: client at %s (user %r, host name %r as it claims): %s%s",
            pv, address, user, claimed_host, why, more,
        )  # fmt: skip


class Context(caproto_server.Context):
    """caproto's asyncio server context with address-aware circuits and a search socket read until empty."""

    CircuitClass = Circuit

    def __init__(self, pvdb, interfaces=None, *, write_access: WriteAccess | None = None):
        super().__init__(pvdb, interfaces)
        self.write_access = write_access
        self.refusals = RefusalLog()

    async def run(self, *, log_pv_names=False, startup_hook=None):
        """Resolve the access rules' host names before serving, then keep them resolved while serving."""
        keeper = None
        if self.write_access is not None:
            await asyncio.to_thread(self.write_access.resolve)
            keeper = asyncio.create_task(self.write_access.keep_resolved(on_change=self.resend_access_rights))
        try:
            return await super().run(log_pv_names=log_pv_names, startup_hook=startup_hook)
        finally:
            if keeper is not None:
                keeper.cancel()

    async def resend_access_rights(self) -> None:
        for circuit in list(self.circuits):
            try:
                await circuit.resend_access_rights()
            except Exception as error:  # a client that went away meanwhile
                log.debug("access rights not sent to %s: %s", circuit.circuit.address, error)

    async def _create_broadcaster_transport(self, interface):
        """The UDP search socket of `interface`, read until empty at each wake-up (see the module's note 3)."""
        old = self.udp_socks.pop(interface, None)
        if old is not None:
            old.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        # The options of caproto's own search socket: several servers may share the port on one host.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sys.platform != "win32" and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SEARCH_RECEIVE_BUFFER)
        except OSError as error:
            log.debug("search socket keeps its receive buffer: %s", error)
        sock.setblocking(False)
        try:
            sock.bind((interface, self.ca_server_port))
        except OSError:
            sock.close()
            raise
        self.udp_socks[interface] = SearchSocket(sock, interface, self.broadcaster_datagram_queue)


class SearchSocket:
    """A UDP search socket read until empty (at most SEARCH_BATCH datagrams) each time it is readable.

    It feeds caproto's broadcaster queue as caproto's own datagram protocol
    does, and offers what caproto uses of its socket wrapper: `sendto`, `close`.
    """

    batch = SEARCH_BATCH

    def __init__(self, sock: socket.socket, interface: str, queue):
        self.sock = sock
        self.interface = interface
        self.queue = queue
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        for _ in range(self.batch):
            try:
                data, address = self.sock.recvfrom(ca.MAX_UDP_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # caproto's receive loop decides what to do (it re-creates the socket)
                self.queue.put((self.interface, error, None))
                return
            if data:
                self.queue.put((self.interface, data, address))

    async def sendto(self, data: bytes, address) -> None:
        try:
            self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            log.debug("search reply to %s:%d dropped: socket buffer full (the client searches again)", *address)
        except OSError as error:
            raise ca.CaprotoNetworkError(f"Failed to send to {address[0]}:{address[1]}") from error

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


def serve(pvdb, *, write_access: WriteAccess | None = None, interfaces=None, log_pv_names=False,
          startup_hook=None) -> None:  # fmt: skip
    """Run the IOC until interrupted, as `caproto.asyncio.server.run` does, on the `Context` above."""

    async def main():
        context = Context(pvdb, interfaces, write_access=write_access)
        await context.run(log_pv_names=log_pv_names, startup_hook=startup_hook)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
