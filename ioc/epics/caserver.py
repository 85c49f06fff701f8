"""caproto's asyncio Channel Access server with the changes the IOC needs; `serve` runs it.

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
   Circuits send without Nagle's delay, as EPICS base's do (asyncio leaves
   it on for caproto's sockets: the second of two replies waited 40 ms).
3. The UDP name-search socket is read until empty at each wake-up, with a
   large receive buffer. asyncio's datagram transport reads one datagram per
   turn of the event loop; with many clients busy each turn is long, searches
   queue up in the kernel, are answered seconds late and, once the socket
   buffer is full, dropped.
4. A client that may not write gains nothing. A message announcing more bytes
   than the largest PV takes (with its headers) closes the circuit before its
   payload is read, as EPICS base does past EPICS_CA_MAX_ARRAY_BYTES (caproto
   would buffer up to 4 GB); so does a message that is not Channel Access.
   An address holds at most `ioc.access.max_circuits_per_host` circuits; near
   the open-file limit (raised to its hard limit at start) the newest circuit
   of the busiest address that may not write is closed, so the consoles that
   may write always get theirs (`CircuitLimits`). What clients cause is logged
   at a bounded rate, one line, no traceback; an accept that fails (EMFILE)
   pauses accepting for a second, said the same way.
5. The audit log (`ioc.audit`): every write, admitted or refused, with the
   client's address, claimed names and outcome, known when the put ends.
6. A client that does not read hurts only itself. caproto's one loop that
   hands every circuit its monitor updates waited for room in a full circuit
   queue: one such client stopped every monitor of every client. A circuit's
   queue (`UpdateQueue`) takes an update without waiting; past its limit an
   update replaces the newest of its monitor still waiting (EPICS base
   coalesces a slow client's updates too). A send still waiting after
   `SEND_SECONDS` (the socket's buffers full: the client reads nothing)
   closes the circuit. A circuit takes what waits in its queue at once
   (caproto's costs two turns of the event loop an update, a few dozen a
   second on a busy IOC) and keeps `UPDATE_BACKLOG` updates per monitor
   (caproto 1,000, sent or not, as long as the monitor lives).
7. A circuit holds at most `Context.max_channels` channels and
   `SUBSCRIPTIONS_PER_CIRCUIT` monitors: asking for more closes it, said in
   one line (each channel or monitor costs ~0.5 kB and the monitors CPU). It
   reads `COMMANDS_QUEUED` commands ahead of those it answers (caproto
   10,000, ~3 kB each): the client waits, as TCP makes it.

These are subclasses of caproto's `VirtualCircuit` and `Context`
(`caproto.asyncio.server`); they override `recv`, `_process_command`,
`_command_queue_iteration`, `_start_write_task`, `send`, `_send_buffers`,
`get_from_sub_queue`, `subscription_queue_loop`, `_on_disconnect`,
`tcp_handler`, `run` and `_create_broadcaster_transport`, as of caproto 1.3,
and set no private attribute. A circuit replaces three objects caproto's
constructor makes, as caproto's server expects of its subclasses:
`command_queue` (shorter: each command read holds ~3 kB of what was read
with it, and caproto reads up to 10,000 ahead), `subscription_queue`
(caproto's asyncio queue waits when full: there is no other way to take an
update without waiting) and `unexpired_updates` (`Backlogs`: caproto sizes
each monitor's backlog from its PV, 1,000 by default).
`tests/faults/test_access.py`, `test_flood.py` and `test_audit.py` exercise
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import logging
import resource
import socket
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import caproto as ca
from caproto import AccessRights
from caproto.asyncio import server as caproto_server
from caproto.server.common import DisconnectedCircuit, LoopExit
from caproto.server.common import VirtualCircuit as CommonCircuit

from ..config import AccessSettings
from .access import ClientHost, WriteAccess
from .audit import AuditLog, Write, write_of
from .logs import Held, RateLimit, RateLimitedLog, flush_rate_limits, held_text

log = logging.getLogger(__name__)

REFUSAL_LOG_SECONDS = 60.0  # after a refused write is logged, the same address is logged again after this
SEARCH_RECEIVE_BUFFER = 4 << 20  # bytes asked for the search socket (Linux caps it at net.core.rmem_max)
SEARCH_BATCH = 256  # datagrams read per wake-up at most, so that other work keeps its turn
RECEIVE_BYTES = 4096  # read from a circuit at a time, as caproto does
HEADER_BYTES = 24  # a CA header with its extension (payload size 0xFFFF, then 8 bytes: size and count)
MESSAGE_MARGIN = 16384  # bytes over the largest PV a message may carry (EPICS base's default array size)
OWN_FILES = 128  # open files kept for the IOC's own work (logs, state files, services) besides circuits
ACCEPT_BURST = 100  # connections asyncio accepts at one wake-up (start_server's backlog), before any is admitted
MAX_CIRCUITS = 10_000  # circuits in all at most, whatever the open-file limit (each holds ~20 kB)
HELD_BACK_SECONDS = 10.0  # how often the lines held back by rate limits are counted in the log
COMMANDS_QUEUED = 256  # commands a circuit reads ahead of those it has answered
SEND_SECONDS = 5.0  # a send to a circuit that waits longer (its client reads nothing) closes the circuit
UPDATES_QUEUED = ca.MAX_TOTAL_SUBSCRIPTION_BACKLOG  # a circuit's monitor updates waiting, past which they coalesce
UPDATE_BACKLOG = 10  # updates a monitor keeps, the oldest dropped first (caproto's floor for large PVs)
CHANNELS_PER_PV = 4  # a circuit holds at most this many channels per PV served ...
MIN_CHANNELS = 1024  # ... and this many at least (~0.5 kB each)
SUBSCRIPTIONS_PER_CIRCUIT = 4096  # monitors a circuit holds at most (each keeps up to UPDATE_BACKLOG updates, ~0.5 kB)

_AUDITED: contextvars.ContextVar[Write | None] = contextvars.ContextVar("audited_write", default=None)


class Circuit(caproto_server.VirtualCircuit):
    """A client's TCP circuit whose access checks see the client's address, bounded and audited."""

    context: Context

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.write_to_audit: Write | None = None  # the write caproto is about to start (see _start_write_task)
        self.subscription_task: asyncio.Task | None = None  # the task of `subscription_queue_loop`
        self.command_queue: asyncio.Queue = asyncio.Queue(COMMANDS_QUEUED)  # see the module's notes 6 and 7
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
        """caproto's, but a send still waiting after SEND_SECONDS (the client reads nothing) closes the circuit."""
        try:
            await asyncio.wait_for(super()._send_buffers(*buffers), SEND_SECONDS)
        except asyncio.TimeoutError:
            why = f"it reads nothing: what it was sent waited more than {SEND_SECONDS:g} s"
            self.drop("not reading", why)
            raise DisconnectedCircuit(why) from None

    async def get_from_sub_queue(self, timeout=None):
        """caproto's, but an update waiting is taken at once: caproto's wait costs a task and two turns of the
        event loop each, so a busy loop sent a circuit a few dozen updates a second, whatever came."""
        if not self.subscription_queue.empty():
            return self.subscription_queue.get_nowait()
        return await super().get_from_sub_queue(timeout)

    async def subscription_queue_loop(self):
        """caproto's, ending quietly when cancelled as the circuit closes, whether it waits or sends.

        caproto's loop ends cancelled when that happens during a send, and the task
        that closes the circuit, which awaits it, gets the CancelledError: it stops
        half way through forgetting the circuit.
        """
        self.subscription_task = asyncio.current_task()
        try:
            await super().subscription_queue_loop()
        except asyncio.CancelledError:
            if self.connected:  # the server stops
                raise

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
        if write is not None:
            for command in commands:
                write.saw(command)
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


class UpdateQueue(asyncio.Queue):
    """A circuit's monitor updates waiting to be sent; putting one never waits (see the module's note 6).

    Items are caproto's weak references to its EventAddResponses. Up to `limit`
    updates every one is kept; past it an update replaces the newest one of its
    subscription still waiting here, else joins the queue: it holds at most
    `limit` updates plus one per subscription. It overrides the hooks asyncio's
    own LifoQueue and PriorityQueue override.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.newest: dict[int, list] = {}  # subscription id -> its newest [subscription id, update] waiting
        super().__init__()  # without a maxsize: `put` never waits

    def _init(self, maxsize: int) -> None:
        self._queue: deque[list] = deque()  # [subscription id, update], oldest first

    def _put(self, update) -> None:
        command = update()
        if command is None:  # dropped already from its subscription's backlog
            return
        waiting = self.newest.get(command.subscriptionid)
        if waiting is not None and len(self._queue) >= self.limit:
            waiting[1] = update
            return
        entry = [command.subscriptionid, update]
        self._queue.append(entry)
        self.newest[command.subscriptionid] = entry

    def _get(self):
        """The oldest update its subscription's backlog still holds (skipping those it dropped), held until sent.

        caproto reads a weak reference only after a turn or two of the event loop;
        with a busy loop, updates coming faster than that would all be dropped by then.
        """
        while True:
            entry = self._queue.popleft()
            if self.newest.get(entry[0]) is entry:
                del self.newest[entry[0]]
            command = entry[1]()
            if command is not None:
                return Taken(command)
            if not self._queue:
                return entry[1]  # dropped: caproto counts it


class Taken:
    """An update taken from an `UpdateQueue`, called as caproto calls its weak reference."""

    __slots__ = ("command",)

    def __init__(self, command):
        self.command = command

    def __call__(self):
        return self.command


class Backlogs(dict):
    """A circuit's backlog of updates per monitor (caproto's `unexpired_updates`), each at most UPDATE_BACKLOG long.

    caproto keeps each monitor's last updates, sent or not, as many as its PV's
    `max_subscription_backlog` (1,000 by default, ~0.5 kB each): 2,000
    monitors of a PV that changes ten times a second grew the IOC by 250 MB in
    30 s.
    """

    def __setitem__(self, subscription_id, backlog: deque) -> None:
        longest = min(backlog.maxlen or UPDATE_BACKLOG, UPDATE_BACKLOG)
        super().__setitem__(subscription_id, deque(backlog, maxlen=longest))


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


class RefusalLog:
    """Log a refused write naming the client's address: the first at once, then one line a minute per address."""

    def __init__(self, period: float = REFUSAL_LOG_SECONDS):
        self.limit = RateLimit(self._report, per_key=1, total=30, period=period)

    @property
    def period(self) -> float:
        return self.limit.period

    @period.setter
    def period(self, seconds: float) -> None:
        self.limit.period = seconds

    def note(self, pv: str, address: str, user: str | None, claimed_host: str | None, why: str) -> None:
        held = self.limit.admit(address, pv)
        if held is None:
            return
        self.limit.flush()  # what other addresses had held back, first
        more = f"; {sum(held.values())} more writes from {address} refused since its last line" if held else ""
        log.warning(
            "write to %s refused: client at %s (user %r, host name %r as it claims): %s%s",
            pv, address, user, claimed_host, why, more,
        )  # fmt: skip

    def _report(self, held: Held) -> None:
        log.warning("refused writes not logged in the last %g s, by address: %s", self.period, held_text(held))


@dataclass(frozen=True)
class Verdict:
    """What to do with a new circuit: refuse it (why), and/or close another one to make room (address, circuit)."""

    refused: str | None = None
    shed: tuple[str, Any] | None = None


class CircuitLimits:
    """Which circuits each address holds; which new one to refuse and which old one to close so none locks out another.

    An address holds at most `per_host` circuits: a new one past that is refused.
    Once `budget()` circuits are open in all (what the open-file limit leaves),
    the newest circuit of the address holding the most among those that may not
    write is closed (the new one itself when its address is that one): the
    addresses that may write are never locked out by the others.
    """

    def __init__(self, per_host: int, may_write: Callable[[str], bool], budget: Callable[[], int] | None = None):
        self.per_host = per_host
        self.may_write = may_write
        self.budget = budget or circuit_budget
        self.held: dict[str, dict[Any, None]] = {}  # address -> its circuits, oldest first
        self.total = 0

    def admit(self, address: str, circuit) -> Verdict:
        """Count `circuit` in for `address`, unless the verdict refuses it; a circuit shed is counted out."""
        count = len(self.held.get(address, ()))
        if count >= self.per_host:
            return Verdict(refused=f"it holds {count} circuits, the most ioc.access.max_circuits_per_host allows")
        shed = None
        budget = self.budget()
        if self.total >= budget:
            busiest = self._busiest_not_writing(address)
            if busiest == address:
                return Verdict(refused=f"the IOC holds {self.total} circuits, all the open-file limit leaves, and "
                                       f"this address the most ({count}) of those that may not write")  # fmt: skip
            if busiest is not None:
                shed = (busiest, next(reversed(self.held[busiest])))
                self.release(*shed)
        self.held.setdefault(address, {})[circuit] = None
        self.total += 1
        return Verdict(shed=shed)

    def release(self, address: str, circuit) -> None:
        """Count `circuit` out (again is harmless)."""
        circuits = self.held.get(address, {})
        if circuit in circuits:
            del circuits[circuit]
            self.total -= 1
            if not circuits:
                del self.held[address]

    def _busiest_not_writing(self, newcomer: str) -> str | None:
        """The address that may not write holding the most circuits, counting the newcomer's; it wins ties."""
        counts = {address: len(circuits) for address, circuits in self.held.items() if not self.may_write(address)}
        if not self.may_write(newcomer):
            counts[newcomer] = counts.get(newcomer, 0) + 1
        if not counts:
            return None
        return max(counts, key=lambda address: (counts[address], address == newcomer))


def circuit_budget() -> int:
    """How many circuits may be open in all: the open-file limit less what the IOC keeps for itself."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CIRCUITS
    return max(1, min(MAX_CIRCUITS, soft - OWN_FILES - ACCEPT_BURST))


def raise_open_file_limit() -> None:
    """Raise the soft open-file limit to the hard one: clients get more circuits before any is shed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as error:
            log.warning("open-file limit stays %d (hard limit %d): %s", soft, hard, error)
    log.info("circuits: at most %d in all (open-file limit %d)", circuit_budget(),
             resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # fmt: skip


def largest_message(pvdb: Mapping[str, Any]) -> int:
    """The most bytes a client's message may announce: the largest PV as the widest DBR type, with headers."""
    elements = max((max(getattr(channel, "max_length", 1), getattr(channel, "long_string_max_length", 0))
                    for channel in pvdb.values()), default=1)  # fmt: skip
    metadata = max(ctypes.sizeof(kind) for kind in ca.DBR_TYPES.values() if hasattr(kind, "_fields_"))
    return HEADER_BYTES + metadata + elements * ca.MAX_STRING_SIZE + MESSAGE_MARGIN


class Context(caproto_server.Context):
    """caproto's asyncio server context: address-aware, bounded, audited circuits; a search socket read until empty."""

    CircuitClass = Circuit

    def __init__(self, pvdb, interfaces=None, *, write_access: WriteAccess | None = None,
                 max_circuits_per_host: int = AccessSettings.max_circuits_per_host):  # fmt: skip
        super().__init__(pvdb, interfaces)
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


def _nobody(address: str) -> bool:
    """Without access rules every address may write, so none is spared when circuits are shed."""
    return False


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
