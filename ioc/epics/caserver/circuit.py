"""A client's TCP circuit: access by address, refusals in EPICS base's words, bounded, audited.

See the package's notes 1, 2, 4, 5 and 7 (`ioc.epics.caserver`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Any, NoReturn, Protocol

import caproto as ca
from caproto import AccessRights
from caproto.asyncio import server as caproto_server
from caproto.server.common import DisconnectedCircuit, LoopExit
from caproto.server.common import VirtualCircuit as CommonCircuit

from ..access import ClientHost, WriteAccess
from ..audit import AuditLog, Write, write_of
from ..logs import RateLimitedLog
from .backlog import UPDATES_QUEUED, Backlogs, UpdateQueue
from .limits import SUBSCRIPTIONS_PER_CIRCUIT
from .refusals import RefusalLog

RECEIVE_BYTES = 4096  # read from a circuit at a time, as caproto does
COMMANDS_QUEUED = 256  # commands a circuit reads ahead of those it has answered
SEND_SECONDS = 5.0  # a send to a circuit that waits longer (its client reads nothing) closes the circuit

_AUDITED: contextvars.ContextVar[Write | None] = contextvars.ContextVar("audited_write", default=None)


class CircuitContext(Protocol):
    """What a circuit uses of the server that made it (`context.Context`, which imports this module)."""

    write_access: WriteAccess | None
    refusals: RefusalLog
    audit: AuditLog
    client_errors: RateLimitedLog
    largest_message: int
    max_channels: int

    def __getitem__(self, name: str) -> Any: ...

    async def circuit_disconnected(self, circuit: Any) -> None: ...

    async def flush_to(self, circuit: Any) -> None: ...


class Circuit(caproto_server.VirtualCircuit):
    """A client's TCP circuit whose access checks see the client's address, bounded and audited."""

    context: CircuitContext

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.write_to_audit: Write | None = None  # the write caproto is about to start (see _start_write_task)
        self.subscription_task: asyncio.Task | None = None  # the task of `subscription_queue_loop`
        self.command_queue: asyncio.Queue = asyncio.Queue(COMMANDS_QUEUED)  # see the package's notes 6 and 7
        self.subscription_queue = UpdateQueue(UPDATES_QUEUED)
        self.unexpired_updates = Backlogs()

    @property
    def client_hostname(self) -> ClientHost:
        """The host name the client claims, carrying its peer address (what `check_access` trusts)."""
        return ClientHost(self.claimed_hostname or "", self.circuit.address[0])

    @client_hostname.setter
    def client_hostname(self, claimed: str | None) -> None:
        self.claimed_hostname = claimed

    async def recv(self):
        """caproto's, but a message too large for any PV, or not Channel Access, closes the circuit unread."""
        try:
            received = await self.client.recv(RECEIVE_BYTES)
        except OSError:
            received = b""
        if not self.connected:  # closed here (`hang_up`): the command loop has ended or been told to
            raise DisconnectedCircuit()
        try:
            commands, needed = self.circuit.recv(received)
        except Exception as error:  # the parser reads only the client's bytes: they are at fault
            await self.hang_up("malformed message", f"it sent what is not Channel Access: {_first_line(error)}")
        if needed > self.context.largest_message:
            await self.hang_up("message too large", f"it announced a message of more than {needed:,} bytes; "
                               f"the largest this IOC takes is {self.context.largest_message:,}")  # fmt: skip
        for command in commands:
            await self.command_queue.put(command)
        if not received:
            await self._on_disconnect()
            raise DisconnectedCircuit()

    async def _command_queue_iteration(self, command):
        """caproto's, but a client that breaks the protocol loses its circuit, said in one line.

        caproto logs a traceback for each, and for some keeps the circuit open
        with no one reading its commands (or its command loop dead). The replies
        are sent here: one the protocol does not allow in the circuit's state
        (the client skipped a step) is the client's fault too.
        """
        try:
            self.circuit.process_command(command)
        except Exception as error:  # caproto's protocol state machine refuses what the client sent
            await self.hang_up("protocol broken", f"it broke the protocol: {_first_line(error)}")
        if command is ca.DISCONNECTED:
            raise DisconnectedCircuit()
        replies = await self._replies_to(command)
        if replies:
            try:
                await self.send(*replies)
            except ca.LocalProtocolError as error:
                await self.hang_up("protocol broken", f"it broke the protocol: {_first_line(error)}")

    async def _replies_to(self, command) -> list | None:
        """What the server answers to `command`; an exception of the server's is said at a bounded rate."""
        try:
            return await self._process_command(command)
        except ca.RemoteProtocolError as error:  # a read of a data type that does not exist, say
            await self.hang_up("protocol broken", f"it broke the protocol: {_first_line(error)}")
        except (DisconnectedCircuit, LoopExit):
            raise
        except Exception as error:
            if not self.connected:
                raise LoopExit("server error after the client disconnected") from error
            address = self.circuit.address[0]
            self.context.client_errors.say(address, type(error).__name__, "a command from %s failed: %r",
                                           address, command, exc_info=error)  # fmt: skip
            channel = self.circuit.channels_sid.get(getattr(command, "sid", None))
            if channel is None:
                return None
            message = f"Python exception: {type(error).__name__} {error}"
            return [ca.ErrorResponse(command, channel.cid, status=ca.CAStatus.ECA_INTERNAL, error_message=message)]

    async def hang_up(self, about: str, why: str) -> NoReturn:
        """Close this circuit for what its client did (said at a bounded rate); the server forgets it."""
        self.drop(about, why)
        await self._on_disconnect()
        raise DisconnectedCircuit(why)

    def drop(self, about: str, why: str) -> None:
        """Say why this circuit closes (at a bounded rate), close its socket and tell its command loop to end.

        What the client sent and waits in the command queue is dropped, and so is
        what waits to be sent to it (asyncio would keep the socket open until the
        client took it). caproto's loops end on the closed socket, the command
        loop on the DISCONNECTED queued here.
        """
        address = self.circuit.address[0]
        self.context.client_errors.say(address, about, "closed the circuit of the client at %s: %s", address, why)
        close_for_good(self.client.writer.transport)
        while not self.command_queue.empty():  # the reader may wait for room: it gets it, then finds the end
            self.command_queue.get_nowait()
        self.command_queue.put_nowait(ca.DISCONNECTED)

    async def _process_command(self, command):
        if isinstance(command, (ca.WriteRequest, ca.WriteNotifyRequest)):
            return await self._process_write(command)
        if isinstance(command, ca.CreateChanRequest) and len(self.circuit.channels) > self.context.max_channels:
            await self.hang_up("too many channels", f"it asked for more than {self.context.max_channels:,} "
                               "channels, the most a circuit may hold")  # fmt: skip
        if isinstance(command, ca.EventAddRequest) and self.subscription_count() >= SUBSCRIPTIONS_PER_CIRCUIT:
            await self.hang_up("too many monitors", f"it asked for more than {SUBSCRIPTIONS_PER_CIRCUIT:,} "
                               "monitors, the most a circuit may hold")  # fmt: skip
        replies = await super()._process_command(command)
        if isinstance(command, (ca.HostNameRequest, ca.ClientNameRequest)) and self.circuit.channels:
            await self.resend_access_rights()  # a new user name may change them, as in EPICS base
        return replies

    async def _process_write(self, command):
        """Refuse a write the client has no access for (EPICS base's reply), else let caproto start it, audited."""
        channel = self.circuit.channels_sid.get(command.sid)
        try:
            entry = self.context[channel.name] if channel is not None else None
        except KeyError:
            entry = None
        if channel is None or entry is None:
            return await super()._process_command(command)  # caproto answers what makes no sense
        address = self.circuit.address[0]
        write = write_of(command, channel.name, address, self.client_username, self.claimed_hostname)
        why = self._refusal(entry)
        if why is not None:
            self.context.refusals.note(channel.name, address, self.client_username, self.claimed_hostname, why)
            self.context.audit.refused(write, why)
            return [ca.ErrorResponse(command, channel.cid, ca.CAStatus.ECA_NOWTACCESS, f"no write access: {why}")]
        self.write_to_audit = write
        try:
            return await super()._process_command(command)
        finally:
            self.write_to_audit = None

    def _refusal(self, entry) -> str | None:
        """Why this client may not write `entry`, or None when it may."""
        if AccessRights.WRITE in entry.check_access(self.client_hostname, self.client_username):
            return None
        access = self.context.write_access
        if access is not None and entry.check_access == access.check_access:
            return access.refusal(self.circuit.address[0], self.client_username) or "ioc.access refuses it"
        return "the PV is read-only"

    async def _start_write_task(self, handle_write):
        """caproto's, the write's outcome (what `send` sees of it) recorded in the audit log when it ends.

        A client gone before its write's reply could be sent is no error (caproto's task would end with one).
        """
        write, self.write_to_audit = self.write_to_audit, None

        async def audited():
            _AUDITED.set(write)  # this task's own context: `send` sees it only for this write's replies
            try:
                await handle_write()
            except DisconnectedCircuit:
                pass
            except asyncio.CancelledError:
                if write is not None:
                    write.outcome = "failed: interrupted, the IOC is stopping"
                raise
            finally:
                if write is not None:
                    self.context.audit.finished(write)

        await super()._start_write_task(audited)

    def subscription_count(self) -> int:
        """The monitors this circuit holds."""
        return sum(len(subscriptions) for subscriptions in self.subscriptions.values())

    async def _send_buffers(self, *buffers):
        """caproto's, written at once when the socket has room (caproto's wait for room costs a task and two turns
        of the event loop each send); a send still waiting for room after SEND_SECONDS (the client reads
        nothing) closes the circuit."""
        client = self.client
        transport = client.writer.transport
        if client.send_lock.locked() or transport.is_closing():  # a send waits for room: this one waits behind it
            await self._send_waiting(super()._send_buffers(*buffers))
            return
        async with client.send_lock:  # free: taken without a turn of the loop, held while room is awaited
            client.writer.write(b"".join(buffers))
            if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
                await self._send_waiting(client.writer.drain())

    async def _send_waiting(self, send) -> None:
        try:
            await asyncio.wait_for(send, SEND_SECONDS)
        except asyncio.TimeoutError:
            why = f"it reads nothing: what it was sent waited more than {SEND_SECONDS:g} s"
            self.drop("not reading", why)
            raise DisconnectedCircuit(why) from None
        except OSError as error:
            raise DisconnectedCircuit(f"Circuit disconnected: {error}") from error

    async def subscription_queue_loop(self):
        """caproto's, but what waits in the queue is sent at once, all of it in one write, and the loop ends
        quietly when cancelled as the circuit closes, whether it waits or sends.

        caproto's waits up to 10 ms after each update for more (a task and a timer
        each), sends a batch later the longer it is behind, and says so in a line
        each time ("High load"): a thousand clients filled the log. caproto's loop
        ends cancelled when the circuit closes during a send, and the task that
        closes the circuit, which awaits it, gets the CancelledError: it stops half
        way through forgetting the circuit. Updates come here only from a client
        that lags (note 8); an update whose subscription was cancelled meanwhile
        is not sent (caproto's rule: none after the cancel's reply).
        """
        self.subscription_task = asyncio.current_task()
        self.events_on.set()
        try:
            while True:
                await self.send_queued_updates(await self.subscription_queue.get())
        except DisconnectedCircuit:
            await self._on_disconnect()
            self.circuit.disconnect()
            await self.context.circuit_disconnected(self)
        except asyncio.CancelledError:
            if self.connected:  # the server stops
                raise

    async def send_queued_updates(self, first=None) -> None:
        """Send what waits in the subscription queue (after `first`, taken from it already), in one write."""
        queue = self.subscription_queue
        updates = [] if first is None else [first]
        while not queue.empty():
            updates.append(queue.get_nowait())
        live = {sub.subscriptionid for subs in self.subscriptions.values() for sub in subs}
        commands = [command for update in updates
                    if (command := update()) is not None and command.subscriptionid in live]  # fmt: skip
        if commands:
            await self.send(*commands)

    async def _on_disconnect(self):
        """caproto's, but from the task sending monitor updates (its send failed) that task is not cancelled.

        caproto's cancels and awaits it: a task awaiting itself, which breaks the next
        task to await it ("await wasn't used with future").
        """
        if asyncio.current_task() is not self.subscription_task:
            await super()._on_disconnect()
            return
        await CommonCircuit._on_disconnect(self)  # forgets the subscriptions; caproto's loop then ends
        self.client.close()

    async def send(self, *commands):
        write = _AUDITED.get()
        if write is not None:  # a write's reply: the monitor updates of what it changed go first (note 8)
            for command in commands:
                write.saw(command)
            await self.context.flush_to(self)
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


def close_for_good(transport: asyncio.BaseTransport) -> None:
    """Close a circuit's socket; at once when bytes wait to be sent (asyncio would wait until the client takes them)."""
    if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


def _first_line(error: Exception) -> str:
    return str(error).split("\n", 1)[0] or type(error).__name__


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
