"""caproto's asyncio server context with the IOC's circuits, circuit limits and search socket; `serve` runs it.

See the package's notes 1, 3, 4 and 8 (`ioc.epics.caserver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys

from caproto.asyncio import server as caproto_server

from ...settings.schema import AccessSettings
from ..access import WriteAccess
from ..audit import AuditLog
from ..logs import RateLimitedLog, flush_rate_limits
from .circuit import Circuit, close_for_good
from .fanout import Fan, FanoutQueue, fan_out, flush
from .limits import CHANNELS_PER_PV, MIN_CHANNELS, CircuitLimits, largest_message, raise_open_file_limit
from .refusals import RefusalLog
from .search import SEARCH_RECEIVE_BUFFER, SearchSocket

log = logging.getLogger(__name__)

HELD_BACK_SECONDS = 10.0  # how often the lines held back by rate limits are counted in the log


class Context(caproto_server.Context):
    """caproto's asyncio server context: address-aware, bounded, audited circuits; a search socket read until empty."""

    CircuitClass = Circuit

    def __init__(self, pvdb, interfaces=None, *, write_access: WriteAccess | None = None,
                 max_circuits_per_host: int = AccessSettings.max_circuits_per_host):  # fmt: skip
        super().__init__(pvdb, interfaces)
        self.subscription_queue = FanoutQueue()  # before any monitor: caproto's channels keep the queue they get
        self.fanning: list[Fan] = []  # the updates being sent (note 8)
        self.write_access = write_access
        self.refusals = RefusalLog()
        self.audit = AuditLog()
        self.client_errors = RateLimitedLog(log, "lines about clients", per_key=1, total=20)
        self.largest_message = largest_message(pvdb)
        self.max_channels = max(MIN_CHANNELS, CHANNELS_PER_PV * len(pvdb))
        may_write = write_access.admits_address if write_access is not None else _nobody
        self.circuit_limits = CircuitLimits(max_circuits_per_host, may_write)

    async def run(self, *, log_pv_names=False, startup_hook=None):
        """caproto's, with the access rules' host names kept resolved, accept errors said at a bounded rate,
        and the lines held back by rate limits counted in the log every few seconds."""
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self.loop_exception)
        helpers = [asyncio.create_task(self.say_held_back())]
        if self.write_access is not None:
            await asyncio.to_thread(self.write_access.resolve)
            helpers.append(asyncio.create_task(self.write_access.keep_resolved(on_change=self.resend_access_rights)))
        try:
            return await super().run(log_pv_names=log_pv_names, startup_hook=startup_hook)
        finally:
            for helper in helpers:
                helper.cancel()
            loop.set_exception_handler(previous_handler)

    async def subscription_queue_loop(self):
        """caproto's, but the updates go out circuit by circuit, a few circuits a turn (`fan_out`, note 8), after
        one turn of the event loop: a put's reply woken with them (the command's outcome) goes first, and the
        updates of one command (Status, Busy) gather into one write per circuit."""
        queue = self.subscription_queue
        while True:
            self.fanning = fans = [await queue.get()]
            try:
                await asyncio.sleep(0)
                while not queue.empty():
                    fans.append(queue.get_nowait())
                await fan_out(self, fans)
            finally:
                self.fanning = []

    async def flush_to(self, circuit: Circuit) -> None:
        """Before a put's reply on `circuit`: the monitor updates for it waiting or on their way, sent first (a
        client monitoring Status on the circuit it puts on has the outcome when the put completes)."""
        await flush(self, circuit, self.fanning + self.subscription_queue.waiting())

    async def tcp_handler(self, client, addr):
        """caproto's, for a circuit `CircuitLimits` admits; one it refuses is closed at once, unread."""
        address = addr[0]
        verdict = self.circuit_limits.admit(address, client)
        if verdict.shed is not None:
            shed_address, shed_client = verdict.shed
            shed_client.close()  # its reader ends: caproto's handler of that circuit cleans up
            self.client_errors.say(shed_address, "circuit closed to make room",
                                   "closed the newest circuit of %s to make room: %d circuits are open, all the "
                                   "open-file limit leaves", shed_address, self.circuit_limits.total)  # fmt: skip
        if verdict.refused is not None:
            client.close()
            self.client_errors.say(address, "circuit refused", "refused a circuit from %s: %s", address,
                                   verdict.refused)  # fmt: skip
            return
        sock = client.writer.get_extra_info("socket")
        if sock is not None:  # asyncio leaves Nagle on here (caproto's socket has proto 0): replies wait 40 ms
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as EPICS base's server does
        try:
            await super().tcp_handler(client, addr)
        finally:
            self.circuit_limits.release(address, client)
            close_for_good(client.writer.transport)  # a client gone that left replies unread keeps no socket

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """An accept failing for lack of files (asyncio retries in a second) is one line; the rest as asyncio says."""
        error = context.get("exception")
        if isinstance(error, OSError) and str(context.get("message", "")).startswith("socket.accept() out of"):
            self.client_errors.say("accept", error.strerror or "", "new circuits wait a second: cannot accept: %s "
                                   "(%d circuits open)", error.strerror, self.circuit_limits.total)  # fmt: skip
            return
        loop.default_exception_handler(context)

    async def say_held_back(self) -> None:
        while True:
            await asyncio.sleep(HELD_BACK_SECONDS)
            flush_rate_limits()

    async def resend_access_rights(self) -> None:
        for circuit in list(self.circuits):
            try:
                await circuit.resend_access_rights()
            except Exception as error:  # a client that went away meanwhile
                log.debug("access rights not sent to %s: %s", circuit.circuit.address, error)

    async def _create_broadcaster_transport(self, interface):
        """The UDP search socket of `interface`, read until empty at each wake-up (see the package's note 3)."""
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


def _nobody(address: str) -> bool:
    """Without access rules every address may write, so none is spared when circuits are shed."""
    return False


def serve(pvdb, *, write_access: WriteAccess | None = None,
          max_circuits_per_host: int = AccessSettings.max_circuits_per_host, interfaces=None, log_pv_names=False,
          startup_hook=None) -> None:  # fmt: skip
    """Run the IOC until interrupted, as `caproto.asyncio.server.run` does, on the `Context` above."""
    raise_open_file_limit()

    async def main():
        context = Context(pvdb, interfaces, write_access=write_access, max_circuits_per_host=max_circuits_per_host)
        await context.run(log_pv_names=log_pv_names, startup_hook=startup_hook)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
