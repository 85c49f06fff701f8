"""A client that may not write gains nothing: huge messages, circuit, channel and monitor floods, a client that
never reads, garbage, through the installed IOC.

The hostile clients leave from other loopback addresses (127.0.0.2 and up: Linux routes all of 127.0.0.0/8 on
lo); only 127.0.0.1 may write. Each test checks what the attack did to the IOC (its memory from
/proc/PID/status, its open files, its log) and that the address allowed to write still writes.
"""

from __future__ import annotations

import logging
import os
import resource
import select
import socket
import struct
import threading
from collections import deque
from contextlib import ExitStack
from weakref import ref

import caproto as ca
import epics
import pytest
from caproto.server import PVGroup, pvproperty
from dmagic_ioc.ioc.epics.access import restrict_writes
from dmagic_ioc.ioc.epics.caserver.backlog import UPDATE_BACKLOG, Backlogs, UpdateQueue
from dmagic_ioc.ioc.epics.caserver.context import Context
from dmagic_ioc.ioc.epics.caserver.limits import SUBSCRIPTIONS_PER_CIRCUIT, CircuitLimits, Verdict, circuit_budget
from dmagic_ioc.ioc.epics.logs import CircuitChatter, RateLimitedLog
from dmagic_ioc.ioc.settings.load import ConfigError, settings_from_dict
from dmagic_ioc.ioc.settings.schema import AccessSettings

from ..e2e.fixtures import IN_SECOND
from ..e2e.harness import IOC
from ..helpers import wait_for
from .test_access import BareClient, restricted, search_port, second_loopback_address_works

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not second_loopback_address_works(), reason="cannot bind 127.0.0.2 here"),
]

WRITER = "127.0.0.1"
HOSTILE = "127.0.0.2"
VERSION = struct.pack(">HHHHII", 0, 0, 0, ca.DEFAULT_PROTOCOL_VERSION, 0, 0)  # CA_PROTO_VERSION, priority 0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        (line,) = [line for line in status if line.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_address(ioc: IOC) -> tuple[str, int]:
    """The IOC's CA server (TCP) address, found by a name search."""
    return BareClient.search(ioc.prefix + "Heartbeat", ("127.0.0.1", search_port(ioc)), WRITER)


def circuit(server: tuple[str, int], source: str) -> socket.socket:
    return socket.create_connection(server, timeout=5, source_address=(source, 0))


def closed_by_the_ioc(sock: socket.socket) -> bool:
    """Whether the IOC has closed this circuit (end of stream or reset); reads what waits, never blocks."""
    while select.select([sock], [], [], 0)[0]:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionError:
            return True
    return False


def answers(sock: socket.socket) -> bool:
    """Whether the IOC still serves this circuit: a version request gets its reply."""
    sock.sendall(VERSION)
    try:
        return sock.recv(16)[:2] == b"\x00\x00"
    except OSError:
        return False


def writer_writes(ioc: IOC, name: str) -> None:
    """A new circuit from the address allowed to write: the write succeeds."""
    client = BareClient(ioc.prefix + "SelectName", search_port(ioc), source=WRITER)
    try:
        channel, rights = client.connect(ioc.prefix + "SelectName")
        assert rights == ca.AccessRights.READ | ca.AccessRights.WRITE
        assert client.put(channel, name) == ca.CAStatus.ECA_NORMAL.value
    finally:
        client.close()
    assert ioc.get("SelectName") == name


def log_lines(ioc: IOC, text: str) -> list[str]:
    return [line for line in ioc.log().splitlines() if text in line]


def client_lines(ioc: IOC) -> list[str]:
    """What the server said about clients (its warnings)."""
    return log_lines(ioc, " WARNING dmagic_ioc.ioc.epics.caserver.")  # any of its modules


@pytest.fixture
def guarded_ioc(config, tmp_path):
    """An IOC where only 127.0.0.1 may write and an address holds at most 8 circuits."""
    with IOC(restricted(config, write_hosts=[f"{WRITER}/32"], max_circuits_per_host=8), tmp_path) as running:
        yield running


def test_a_message_larger_than_any_pv_closes_the_circuit_before_it_is_read(guarded_ioc):
    ioc = guarded_ioc
    pid, server = ioc.process.pid, tcp_address(ioc)
    before = rss_mb(pid)
    # An extended header (payload size 0xFFFF, count 0, then 32-bit size and count) announcing ~4 GB.
    huge = struct.pack(">HHHHII", ca.WriteRequest.ID, 0xFFFF, 6, 0, 1, 1) + struct.pack(">II", 0xFFFFFFF0, 1)
    chunk = bytes(1 << 16)
    for _ in range(3):
        sent = 0
        with circuit(server, HOSTILE) as sock:
            sock.sendall(VERSION + huge)
            with pytest.raises(OSError):  # reset or broken pipe: the IOC hung up on us
                while sent < 256 << 20:
                    sock.sendall(chunk)
                    sent += len(chunk)
        assert sent < 64 << 20, f"the IOC read {sent >> 20} MB of a message larger than any PV"
    assert rss_mb(pid) < before + 32, f"RSS grew from {before:.0f} MB to {rss_mb(pid):.0f} MB"
    (line,) = wait_for(lambda: log_lines(ioc, f"closed the circuit of the client at {HOSTILE}"), what="the line")
    assert "announced a message of more than" in line and "the largest this IOC takes is" in line
    assert "Traceback" not in ioc.log()
    writer_writes(ioc, "2026-11-Huge-1")


def test_idle_circuits_past_the_limit_are_closed_and_the_writer_still_creates(guarded_ioc):
    ioc = guarded_ioc
    server = tcp_address(ioc)
    with ExitStack() as stack:
        flood = [stack.enter_context(circuit(server, HOSTILE)) for _ in range(240)]
        wait_for(lambda: sum(map(closed_by_the_ioc, flood)) >= 240 - 8, what="the circuits past 8 closed")
        kept = [sock for sock in flood if not closed_by_the_ioc(sock)]
        assert len(kept) == 8 and all(map(answers, kept))
        assert open_files(ioc.process.pid) < 60
        writer_writes(ioc, "2026-11-Flood-1")
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        status, _ = ioc.command("Create")  # pyepics: the writer's own circuit
        assert status.startswith("created experiment"), status
    refused = log_lines(ioc, f"refused a circuit from {HOSTILE}")
    assert len(refused) == 1 and "max_circuits_per_host" in refused[0]  # then one line a minute at most
    log = ioc.log()
    assert "Traceback" not in log and "Connected to new client" not in log  # caproto's chatter is debug output


def test_a_flood_from_many_addresses_near_the_open_file_limit_spares_the_writer(config, tmp_path):
    with IOC(restricted(config, write_hosts=[f"{WRITER}/32"], max_circuits_per_host=16), tmp_path) as ioc:
        pid, server = ioc.process.pid, tcp_address(ioc)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (512, 512))  # the IOC keeps 284 circuits at most
        with ExitStack() as stack:
            flood = [stack.enter_context(circuit(server, f"127.0.0.{host}"))
                     for host in range(2, 32) for _ in range(16)]  # fmt: skip
            wait_for(lambda: len(flood) - sum(map(closed_by_the_ioc, flood)) <= 284, what="the flood shed to 284")
            assert open_files(pid) < 512
            writer_writes(ioc, "2026-11-Crowd-1")
            writer_writes(ioc, "2026-11-Crowd-2")
        log = ioc.log()
        assert "to make room" in log
        assert len(client_lines(ioc)) <= 22  # one a minute per address, twenty in all, and what was held back
        assert "Too many open files" not in log and "Traceback" not in log


def test_an_accept_that_finds_no_file_left_is_one_line_and_the_ioc_recovers(guarded_ioc):
    ioc = guarded_ioc
    pid, server = ioc.process.pid, tcp_address(ioc)
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_files(pid) + 2, limits[1]))
    with ExitStack() as stack:
        for host in range(2, 12):
            for _ in range(3):
                stack.enter_context(circuit(server, f"127.0.0.{host}"))  # the kernel queues what is not accepted
        wait_for(lambda: log_lines(ioc, "cannot accept"), what="the accept failure in the log")
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        writer_writes(ioc, "2026-11-Files-1")
    (line,) = log_lines(ioc, "cannot accept")
    assert "Too many open files" in line
    assert "Traceback" not in ioc.log()


def test_bad_command_ids_and_garbage_are_a_few_lines_without_traceback(guarded_ioc):
    ioc = guarded_ioc
    server = tcp_address(ioc)
    garbage = [
        struct.pack(">HHHHII", 0x7777, 0, 0, 0, 0, 0),  # a command id CA does not have
        struct.pack(">HHHHII", ca.ReadNotifyRequest.ID, 0, 6, 1, 0xFFFFFFFF, 1),  # a channel never created
        struct.pack(">HHHHII", ca.WriteRequest.ID, 8, 99, 1, 1, 1) + bytes(8),  # a data type CA does not have
        struct.pack(">HHHHII", ca.EventAddRequest.ID, 16, 6, 1, 7, 1) + bytes(16),  # no channel either
    ]
    for source in (HOSTILE, "127.0.0.3"):
        for round_ in range(60):
            with circuit(server, source) as sock:
                sock.sendall(VERSION + garbage[round_ % len(garbage)])
                wait_for(lambda sock=sock: closed_by_the_ioc(sock), what="the circuit closed")
    lines = client_lines(ioc)
    assert len(lines) == 2, lines  # one line an address a minute
    assert all("closed the circuit of the client at" in line for line in lines), lines
    assert "Traceback" not in ioc.log()
    writer_writes(ioc, "2026-11-Garbage-1")


class RawCircuit:
    """A circuit from `source` on caproto's protocol layer, its receive buffer `receive_buffer` bytes if given."""

    def __init__(self, ioc: IOC, source: str, receive_buffer: int | None = None):
        server = tcp_address(ioc)
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before the window is agreed
        self.sock.settimeout(5)
        self.sock.bind((source, 0))
        self.sock.connect(server)
        self.circuit = ca.VirtualCircuit(ca.CLIENT, server, 0)
        self.send(ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION), ca.HostNameRequest("flood"),
                  ca.ClientNameRequest("flood"))  # fmt: skip
        self.channel = ca.ClientChannel(ioc.prefix + "Heartbeat", self.circuit)
        self.send(self.channel.create())
        while self.channel.states[ca.CLIENT] is not ca.CONNECTED:
            commands, _ = self.circuit.recv(self.sock.recv(65536))
            for command in commands:
                self.circuit.process_command(command)
        self.received = 0
        self.ended = threading.Event()

    def send(self, *commands) -> None:
        self.sock.sendall(b"".join(self.circuit.send(*commands)))

    def flood(self, messages: list[bytes], batch: int = 1000) -> None:
        """Send raw `messages` in batches until all are sent (the kernel takes them) or the IOC hangs up."""
        for start in range(0, len(messages), batch):
            try:
                self.sock.sendall(b"".join(messages[start : start + batch]))
            except OSError:  # reset or broken pipe: the IOC hung up
                return

    def read_in_background(self) -> None:
        """Read (and count) whatever the IOC sends until it closes the circuit; `ended` is set then."""

        def read():
            try:
                while data := self.sock.recv(1 << 20):
                    self.received += len(data)
            except OSError:
                pass
            self.ended.set()

        self.sock.settimeout(None)
        threading.Thread(target=read, daemon=True).start()

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_never_reads_hurts_no_other_monitor_and_is_hung_up(guarded_ioc):
    ioc = guarded_ioc
    heartbeats: list[int] = []
    good = epics.PV(ioc.prefix + "Heartbeat", callback=lambda value=None, **_: heartbeats.append(value))
    try:
        wait_for(lambda: heartbeats, what="the good client's first Heartbeat update")
        slow = RawCircuit(ioc, HOSTILE, receive_buffer=4096)
        try:  # ~100 bytes a reply (DBR_CTRL_DOUBLE): 3,000 monitors, then 40,000 reads fill the socket's 4 MB
            double = ca.ChannelType.CTRL_DOUBLE
            slow.send(*(slow.channel.subscribe(data_type=double) for _ in range(3000)))
            reads = [bytes(slow.channel.read(data_type=double, ioid=ioid)) for ioid in range(40_000)]
            flooding = threading.Thread(target=slow.flood, args=(reads,), daemon=True)
            flooding.start()
            flooding.join(15)  # sent: the replies fill the socket, the monitors' updates pile up
            seen = len(heartbeats)  # caproto stopped every monitor a few seconds on, for good
            wait_for(lambda: len(heartbeats) >= seen + 10, timeout=20, what="10 more Heartbeat updates, good client")
            (line,) = wait_for(lambda: log_lines(ioc, f"closed the circuit of the client at {HOSTILE}"),
                               what="the slow client hung up")  # fmt: skip
            assert "reads nothing" in line
        finally:
            slow.close()
        writer_writes(ioc, "2026-11-Slow-1")
    finally:
        good.disconnect()
    assert "Traceback" not in ioc.log()


def test_a_flood_of_channels_closes_the_circuit_and_memory_stays_bounded(guarded_ioc):
    ioc = guarded_ioc
    pid = ioc.process.pid
    before = rss_mb(pid)
    flood = RawCircuit(ioc, HOSTILE)
    try:
        flood.read_in_background()  # it reads every reply: only the cap stops it
        name = ioc.prefix + "Heartbeat"
        requests = [bytes(ca.CreateChanRequest(name, cid, ca.DEFAULT_PROTOCOL_VERSION)) for cid in range(2, 100_002)]
        flood.flood(requests)
        assert flood.ended.wait(10), "the IOC kept the circuit open"
    finally:
        flood.close()
    assert rss_mb(pid) < before + 16, f"RSS grew from {before:.0f} MB to {rss_mb(pid):.0f} MB"
    (line,) = wait_for(lambda: log_lines(ioc, f"closed the circuit of the client at {HOSTILE}"), what="the line")
    assert "channels" in line and "the most a circuit may hold" in line
    writer_writes(ioc, "2026-11-Channels-1")
    assert "Traceback" not in ioc.log()


def test_a_flood_of_monitors_closes_the_circuit(guarded_ioc):
    ioc = guarded_ioc
    flood = RawCircuit(ioc, HOSTILE)
    try:
        flood.read_in_background()
        commands = [flood.channel.subscribe() for _ in range(SUBSCRIPTIONS_PER_CIRCUIT + 1000)]
        flood.flood([bytes(command) for command in commands], batch=100)
        assert flood.ended.wait(10), "the IOC kept the circuit open"
    finally:
        flood.close()
    (line,) = wait_for(lambda: log_lines(ioc, f"closed the circuit of the client at {HOSTILE}"), what="the line")
    assert f"{SUBSCRIPTIONS_PER_CIRCUIT:,} monitors" in line
    writer_writes(ioc, "2026-11-Monitors-1")
    assert "Traceback" not in ioc.log()


# --------------------------------------------------------------------------- the rules alone, in process


def limits(per_host: int = 3, budget: int = 100, writers: tuple[str, ...] = ()) -> CircuitLimits:
    return CircuitLimits(per_host, lambda address: address in writers, budget=lambda: budget)


def test_an_address_holds_at_most_its_circuits_and_gets_them_back_when_closed():
    rules = limits(per_host=2)
    assert rules.admit("10.0.0.9", "a").refused is None and rules.admit("10.0.0.9", "b").refused is None
    assert "max_circuits_per_host" in rules.admit("10.0.0.9", "c").refused
    assert rules.admit("10.0.0.8", "d").refused is None
    rules.release("10.0.0.9", "a")
    rules.release("10.0.0.9", "a")  # twice is harmless
    assert rules.admit("10.0.0.9", "e").refused is None and rules.total == 3


def test_at_the_budget_the_newest_circuit_of_the_busiest_non_writer_goes():
    rules = limits(per_host=10, budget=5, writers=("10.0.0.1",))
    for name in "abc":
        assert rules.admit("10.0.0.9", name) == Verdict()
    assert rules.admit("10.0.0.8", "d") == Verdict() and rules.admit("10.0.0.1", "w1") == Verdict()
    assert rules.admit("10.0.0.1", "w2").shed == ("10.0.0.9", "c")  # a writer comes in: the newest of the most
    verdict = rules.admit("10.0.0.9", "x")
    assert verdict.refused and "the most" in verdict.refused  # the busiest address itself: refused
    assert rules.admit("10.0.0.7", "y").shed == ("10.0.0.9", "b")  # a quiet address gets in
    assert rules.total == 5


def test_only_writers_at_the_budget_are_admitted_and_without_rules_nobody_is_spared():
    writers_only = limits(per_host=10, budget=1, writers=("10.0.0.1",))
    writers_only.admit("10.0.0.1", "w1")
    assert writers_only.admit("10.0.0.1", "w2") == Verdict() and writers_only.total == 2
    open_to_all = limits(per_host=10, budget=2)
    open_to_all.admit("10.0.0.1", "a")
    open_to_all.admit("10.0.0.1", "b")
    assert open_to_all.admit("10.0.0.2", "c").shed == ("10.0.0.1", "b")


def test_the_budget_leaves_files_for_the_ioc_itself():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 0 < circuit_budget() < soft


def test_max_circuits_per_host_is_read_from_the_config_and_checked(tmp_path):
    (tmp_path / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    raw = {"beamline": {"name": "2-BM-A,B"}, "scheduling": {"path": "schedule.yaml"},
           "ioc": {"access": {"max_circuits_per_host": 0}}}  # fmt: skip
    with pytest.raises(ConfigError) as error:
        settings_from_dict(raw, base=tmp_path)
    assert error.value.problems == ["ioc.access.max_circuits_per_host: must be at least 1"]
    raw["ioc"]["access"]["max_circuits_per_host"] = 5
    assert settings_from_dict(raw, base=tmp_path).ioc.access.max_circuits_per_host == 5


class OneSetting(PVGroup):
    setting = pvproperty(name="Setting", value=0)


async def test_the_server_takes_the_limit_with_or_without_write_rules():
    pvdb = OneSetting("t:").pvdb
    assert Context(pvdb, ["127.0.0.1"]).circuit_limits.per_host == 64  # the config's default
    open_to_all = restrict_writes(pvdb, AccessSettings(max_circuits_per_host=5))
    assert open_to_all is None  # a limit is no write rule
    context = Context(pvdb, ["127.0.0.1"], write_access=open_to_all, max_circuits_per_host=5)
    assert context.circuit_limits.per_host == 5
    assert not context.circuit_limits.may_write("127.0.0.1")  # without rules nobody is spared
    assert pvdb["t:Setting"].check_access("anyone", "anybody") == ca.AccessRights.READ | ca.AccessRights.WRITE
    guarded = restrict_writes(pvdb, AccessSettings(write_hosts=("10.54.1.0/24",), max_circuits_per_host=7))
    context = Context(pvdb, ["127.0.0.1"], write_access=guarded, max_circuits_per_host=7)
    assert context.circuit_limits.may_write("10.54.1.7") and not context.circuit_limits.may_write("10.0.0.9")
    assert context.circuit_limits.per_host == 7
    users_only = restrict_writes(pvdb, AccessSettings(write_users=("tomo",)))
    context = Context(pvdb, ["127.0.0.1"], write_access=users_only)
    assert not context.circuit_limits.may_write("10.54.1.7")  # a claimed user name spares no address


async def test_the_largest_message_fits_the_largest_pv_as_strings():
    context = Context(OneSetting("t:").pvdb, ["127.0.0.1"])
    assert 40 + 16384 < context.largest_message < 40 + 16384 + 1024


def test_lines_about_clients_come_once_a_minute_per_address_then_say_what_was_held(caplog):
    now = [0.0]
    lines = RateLimitedLog(logging.getLogger("test.clients"), "lines about clients", clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.clients"):
        for n in range(30):
            lines.say("10.0.0.9", "bad command id", "closed the circuit of the client at %s (%d)", "10.0.0.9", n)
        lines.say("10.0.0.8", "too many circuits", "refused a circuit from %s", "10.0.0.8")
        assert caplog.messages == ["closed the circuit of the client at 10.0.0.9 (0)",
                                   "refused a circuit from 10.0.0.8"]  # fmt: skip
        now[0] = 61.0
        lines.say("10.0.0.9", "bad command id", "closed the circuit of the client at %s (%d)", "10.0.0.9", 99)
    assert caplog.messages[2:] == [
        "lines about clients about 10.0.0.9 not logged since its last line: 29 (bad command id 29)",
        "closed the circuit of the client at 10.0.0.9 (99)",
    ]


def caproto_record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("caproto.ctx", logging.INFO, __file__, 1, msg, args, None)


def test_caprotos_circuit_chatter_is_debug_output():
    chatter, logger = CircuitChatter(), logging.getLogger("caproto.ctx")
    level = logger.level
    try:
        logger.setLevel(logging.INFO)
        connected = caproto_record("Connected to new client at %s:%d (total: %d).", "10.0.0.9", 5064, 1)
        assert not chatter.filter(connected) and connected.levelname == "DEBUG"
        startup = caproto_record("Server startup complete.")
        assert chatter.filter(startup) and startup.levelname == "INFO"
        logger.setLevel(logging.DEBUG)  # -v
        disconnected = caproto_record("Disconnected from client at %s:%d (total: %d).", "10.0.0.9", 5064, 0)
        assert chatter.filter(disconnected) and disconnected.levelname == "DEBUG"
    finally:
        logger.setLevel(level)


class Update:
    """A stand-in for caproto's EventAddResponse: what the update queue reads of it."""

    def __init__(self, subscriptionid: int, value: int):
        self.subscriptionid, self.value = subscriptionid, value


async def test_past_its_limit_the_update_queue_keeps_the_newest_update_of_each_subscription():
    queue = UpdateQueue(limit=3)
    updates = [Update(1, 1), Update(2, 1), Update(1, 2), Update(1, 3), Update(2, 2), Update(3, 1), Update(1, 4)]
    for update in updates:  # caproto queues weak references; it holds the updates themselves (`updates` here)
        await queue.put(ref(update))  # never waits: nothing reads this queue
    assert queue.qsize() == 4  # the limit, and one more for the subscription that had none waiting
    taken = [queue.get_nowait()() for _ in range(queue.qsize())]
    assert [(update.subscriptionid, update.value) for update in taken] == [(1, 1), (2, 2), (1, 4), (3, 1)]
    await queue.put(ref(updates[0]))
    assert queue.get_nowait()() is updates[0]  # below the limit again, every update is kept


def test_a_circuit_keeps_a_short_backlog_of_updates_per_subscription():
    backlogs = Backlogs()
    backlogs[7] = deque(maxlen=1000)  # what caproto gives each subscription, sent or not
    backlogs[7].extend(range(50))
    assert list(backlogs[7]) == list(range(50 - UPDATE_BACKLOG, 50))
    backlogs[8] = deque(maxlen=2)
    assert backlogs[8].maxlen == 2
