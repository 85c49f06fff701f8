"""Write access by address through the installed IOC: claimed host names never admit, addresses do.

Clients: caproto's threading client with a claimed host and user name; a bare
CA client built on caproto's protocol layer whose TCP socket is bound to
another loopback address (127.0.0.2: Linux routes all of 127.0.0.0/8 on lo);
stock libca (pyepics) in a UTS namespace whose host name is changed (root only).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import caproto as ca
import pytest
from caproto import AccessRights, ChannelType
from caproto.server import PVGroup, pvproperty
from caproto.threading.client import Context, SharedBroadcaster
from dmagic_ioc.ioc.epics.access import WriteAccess
from dmagic_ioc.ioc.epics.caserver.context import Context as IocServer

from ..e2e.harness import IOC
from ..helpers import CA_TIMEOUT, free_port, wait_for

pytestmark = pytest.mark.faults

CLAIMED_HOSTS = ("opi-allowed", "OPI-ALLOWED.attacker.example", "localhost.")


@pytest.fixture
def clients():
    """caproto threading clients, each with its own claimed host and user name; disconnected at the end."""
    made: list[Context] = []

    def client(host_name: str | None = None, client_name: str | None = None) -> Context:
        context = Context(SharedBroadcaster(), host_name=host_name, client_name=client_name)
        made.append(context)
        return context

    yield client
    for context in made:
        context.disconnect()
        context.broadcaster.disconnect()


def restricted(config: dict, **access) -> dict:
    return {**config, "ioc": {**config["ioc"], "access": access}}


def connect(context: Context, name: str):
    (pv,) = context.get_pvs(name, timeout=CA_TIMEOUT)
    pv.wait_for_connection(timeout=CA_TIMEOUT)
    wait_for(lambda: pv.access_rights is not None, what=f"access rights of {name}")
    return pv


def put(pv, value) -> tuple[ca.CAStatusCode, float]:
    """A put with completion (text as UTF-8 bytes): its status and how long the answer took."""
    if isinstance(value, str):
        value = list(value.encode("utf-8")) + [0]
    started = time.monotonic()
    response = pv.write(value, wait=True, timeout=CA_TIMEOUT)
    return response.status, time.monotonic() - started


def search_port(ioc: IOC) -> int:
    return int(ioc.env["EPICS_CA_SERVER_PORT"])


def refusal_lines(ioc: IOC, address: str) -> list[str]:
    return [line for line in ioc.log().splitlines() if "refused: client at " + address in line]


# --------------------------------------------------------------------------- claimed names


@pytest.fixture
def opi_allowed_ioc(config, tmp_path):
    with IOC(restricted(config, write_hosts=["opi-allowed"]), tmp_path) as running:
        yield running


def test_a_claimed_host_name_never_admits(opi_allowed_ioc, clients):
    ioc = opi_allowed_ioc
    before = ioc.get("SelectName")
    for claimed in CLAIMED_HOSTS:
        pv = connect(clients(host_name=claimed), ioc.prefix + "SelectName")
        assert pv.access_rights == AccessRights.READ, claimed
        status, seconds = put(pv, "2026-01-Claimed-1")
        assert status == ca.CAStatus.ECA_NOWTACCESS.value, claimed
        assert seconds < 2, f"the refusal took {seconds:.1f} s"  # answered at once, not at the put timeout
    assert ioc.get("SelectName") == before
    lines = wait_for(lambda: refusal_lines(ioc, "127.0.0.1"), what="the refusal in the log")
    assert len(lines) == 1, lines  # one line for that address, not one per write
    assert "SelectName" in lines[0] and "opi-allowed" in lines[0]
    assert "Traceback" not in ioc.log()


def libca_in_uts_namespace_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0


LIBCA_CLIENT = """
import json, socket, sys
import epics
pv = epics.PV(sys.argv[1], auto_monitor=False)
connected = pv.wait_for_connection(20)
try:
    pv.put(list("2026-01-Libca-1".encode()) + [0], wait=True, timeout=20)
    put = "sent"
except Exception as error:
    put = f"{type(error).__name__}: {error}"
print(json.dumps({"host": socket.gethostname(), "connected": connected, "write_access": pv.write_access, "put": put}))
"""


@pytest.mark.skipif(not libca_in_uts_namespace_works(), reason="needs root and unshare to change the host name")
def test_libca_with_the_listed_host_name_is_refused(opi_allowed_ioc):
    ioc = opi_allowed_ioc
    before = ioc.get("SelectName")
    script = 'hostname opi-allowed && exec "$0" -c "$1" "$2"'
    command = ["unshare", "--uts", "sh", "-c", script, sys.executable, LIBCA_CLIENT, ioc.prefix + "SelectName"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=ioc.env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["host"] == "opi-allowed" and seen["connected"]
    assert seen["write_access"] is False  # libca was told read-only and refuses the put itself
    assert seen["put"] != "sent"
    assert ioc.get("SelectName") == before


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("write_hosts", [["127.0.0.1"], ["127.0.0.0/8"], ["localhost"]])
def test_a_listed_address_writes(config, tmp_path, clients, write_hosts):
    with IOC(restricted(config, write_hosts=write_hosts), tmp_path) as ioc:
        pv = connect(clients(host_name="any-name-at-all"), ioc.prefix + "SelectName")
        assert pv.access_rights == AccessRights.READ | AccessRights.WRITE
        status, _ = put(pv, "2026-01-Listed-1")
        assert status == ca.CAStatus.ECA_NORMAL.value
        assert ioc.get("SelectName") == "2026-01-Listed-1"
        assert ioc.pv("SelectName").write_access  # libca too
        ioc.put("SelectName", "2026-01-Libca-2")
        assert ioc.get("SelectName") == "2026-01-Libca-2"


class BareClient:
    """A CA client on caproto's protocol layer whose UDP search and TCP circuit leave from address `source`."""

    def __init__(self, name: str, search_port: int, source: str, host_name: str = "bare", user: str = "bare"):
        server = self.search(name, ("127.0.0.1", search_port), source)
        self.sock = socket.create_connection(server, timeout=5, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as libca: no 40 ms wait per put
        self.circuit = ca.VirtualCircuit(our_role=ca.CLIENT, address=server, priority=0)
        self.send(ca.VersionRequest(priority=0, version=ca.DEFAULT_PROTOCOL_VERSION),
                  ca.HostNameRequest(host_name), ca.ClientNameRequest(user))  # fmt: skip

    @staticmethod
    def search(name: str, destination: tuple[str, int], source: str) -> tuple[str, int]:
        broadcaster = ca.Broadcaster(our_role=ca.CLIENT)
        request = broadcaster.send(ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION),
                                   ca.SearchRequest(name, 1, ca.DEFAULT_PROTOCOL_VERSION))  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((source, 0))
            udp.settimeout(0.5)
            deadline = time.monotonic() + CA_TIMEOUT
            while time.monotonic() < deadline:  # searched again every 0.5 s, as a client does
                udp.sendto(request, destination)
                try:
                    data, sender = udp.recvfrom(65536)
                except TimeoutError:
                    continue
                for command in broadcaster.recv(data, sender):
                    if isinstance(command, ca.SearchResponse):
                        return ca.extract_address(command)
        raise AssertionError(f"no answer to a search for {name} from {source}")

    def send(self, *commands) -> None:
        self.sock.sendall(b"".join(self.circuit.send(*commands)))

    def until(self, wanted):
        """Read until a command of type `wanted` arrives; return it and everything read."""
        seen = []
        while True:
            data = self.sock.recv(65536)
            assert data, "the IOC closed the circuit"
            commands, _ = self.circuit.recv(data)
            for command in commands:
                self.circuit.process_command(command)
                seen.append(command)
                if isinstance(command, wanted):
                    return command, seen

    def connect(self, name: str) -> tuple[ca.ClientChannel, AccessRights]:
        channel = ca.ClientChannel(name, self.circuit)
        self.send(channel.create())
        _, seen = self.until(ca.CreateChanResponse)
        (rights,) = [c.access_rights for c in seen if isinstance(c, ca.AccessRightsResponse)]
        return channel, rights

    def put(self, channel: ca.ClientChannel, text: str):
        data = list(text.encode()) + [0]
        self.send(channel.write(data, ioid=self.circuit.new_ioid(), notify=True, data_type=ca.ChannelType.CHAR,
                                data_count=len(data)))  # fmt: skip
        reply, _ = self.until(ca.WriteNotifyResponse)
        return reply.status

    def close(self) -> None:
        self.sock.close()


def second_loopback_address_works() -> bool:
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not second_loopback_address_works(), reason="cannot bind 127.0.0.2 here")
def test_only_the_listed_loopback_address_writes(config, tmp_path, clients):
    with IOC(restricted(config, write_hosts=["127.0.0.2"]), tmp_path) as ioc:
        pv = connect(clients(host_name="127.0.0.2"), ioc.prefix + "SelectName")  # from 127.0.0.1, claiming .2
        assert pv.access_rights == AccessRights.READ
        assert put(pv, "2026-01-Claimed-2")[0] == ca.CAStatus.ECA_NOWTACCESS.value
        assert not ioc.pv("SelectName").write_access

        listed = BareClient(ioc.prefix + "SelectName", search_port(ioc), source="127.0.0.2")
        try:
            channel, rights = listed.connect(ioc.prefix + "SelectName")
            assert rights == AccessRights.READ | AccessRights.WRITE
            assert listed.put(channel, "2026-01-Bound-2") == ca.CAStatus.ECA_NORMAL.value
        finally:
            listed.close()
        assert ioc.get("SelectName") == "2026-01-Bound-2"
        assert refusal_lines(ioc, "127.0.0.1") and not refusal_lines(ioc, "127.0.0.2")


@pytest.mark.skipif(not second_loopback_address_works(), reason="cannot bind 127.0.0.3 here")
def test_an_unlisted_loopback_address_is_refused(config, tmp_path):
    with IOC(restricted(config, write_hosts=["127.0.0.1"]), tmp_path) as ioc:
        before = ioc.get("SelectName")
        other = BareClient(ioc.prefix + "SelectName", search_port(ioc), source="127.0.0.3", host_name="localhost")
        try:
            channel, rights = other.connect(ioc.prefix + "SelectName")
            assert rights == AccessRights.READ
            assert other.put(channel, "2026-01-Bound-3") == ca.CAStatus.ECA_NOWTACCESS.value
        finally:
            other.close()
        assert ioc.get("SelectName") == before
        (line,) = wait_for(lambda: refusal_lines(ioc, "127.0.0.3"), what="the refusal in the log")
        assert "write_hosts" in line


def test_write_users_narrow_the_hosts(config, tmp_path, clients):
    with IOC(restricted(config, write_hosts=["127.0.0.1"], write_users=["2bmbop"]), tmp_path) as ioc:
        operator = connect(clients(client_name="2bmbop"), ioc.prefix + "SelectName")
        visitor = connect(clients(client_name="visitor"), ioc.prefix + "SelectName")
        assert operator.access_rights == AccessRights.READ | AccessRights.WRITE
        assert visitor.access_rights == AccessRights.READ
        assert put(visitor, "2026-01-Visitor-1")[0] == ca.CAStatus.ECA_NOWTACCESS.value
        assert put(operator, "2026-01-Operator-1")[0] == ca.CAStatus.ECA_NORMAL.value
        assert ioc.get("SelectName") == "2026-01-Operator-1"
        (line,) = wait_for(lambda: refusal_lines(ioc, "127.0.0.1"), what="the refusal in the log")
        assert "'visitor' is not in ioc.access.write_users" in line


# --------------------------------------------------------------------------- failed puts answer at once


def test_a_failed_command_put_answers_caprotos_threading_client_at_once(ioc, clients):
    """caproto's threading client ignores a CA error message; the WRITE_NOTIFY reply ends its wait."""
    ioc.put("SelectName", "2026-01-Nobody-1")
    pv = connect(clients(), ioc.prefix + "Select")
    status, seconds = put(pv, [1])
    assert status == ca.CAStatus.ECA_PUTFAIL.value
    assert seconds < 2, f"the failure took {seconds:.1f} s"
    assert "no experiment named 2026-01-Nobody-1" in ioc.get("Status")
    status, _ = put(pv, [1])  # the circuit is still in order
    assert status == ca.CAStatus.ECA_PUTFAIL.value


# --------------------------------------------------------------------------- rules that change while clients connect


class OneSetting(PVGroup):
    setting = pvproperty(name="Setting", value=0, dtype=ChannelType.LONG)


async def test_a_console_that_resolves_later_is_told_it_may_write(monkeypatch):
    """In process: the IOC's server, a name that resolves only later, a connected client told the new rights."""
    port = free_port()
    monkeypatch.setenv("EPICS_CA_SERVER_PORT", str(port))
    monkeypatch.setenv("EPICS_CAS_SERVER_PORT", str(port))
    monkeypatch.setenv("EPICS_CA_ADDR_LIST", f"127.0.0.1:{port}")
    table: dict[str, frozenset] = {}

    def resolver(name: str):
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[name]

    prefix = f"t{uuid.uuid4().hex[:8]}:"
    pvdb = OneSetting(prefix).pvdb
    rules = WriteAccess(["console"], [], resolver=resolver)
    for channel in pvdb.values():
        channel.check_access = rules.check_access
    context = IocServer(pvdb, ["127.0.0.1"], write_access=rules)
    server = asyncio.create_task(context.run())
    client = Context(SharedBroadcaster())
    try:
        for _ in range(500):  # serving: caproto's client may not search again for seconds
            if context.udp_socks or server.done():
                break
            await asyncio.sleep(0.01)
        pv = await asyncio.to_thread(connect, client, prefix + "Setting")
        assert pv.access_rights == AccessRights.READ
        table["console"] = frozenset({ipaddress.ip_address("127.0.0.1")})
        assert await asyncio.to_thread(rules.resolve)
        await context.resend_access_rights()
        for _ in range(500):
            if pv.access_rights == AccessRights.READ | AccessRights.WRITE:
                break
            await asyncio.sleep(0.01)
        assert pv.access_rights == AccessRights.READ | AccessRights.WRITE
        status, _ = await asyncio.to_thread(put, pv, [7])
        assert status == ca.CAStatus.ECA_NORMAL.value and pvdb[prefix + "Setting"].value == 7
    finally:
        await asyncio.to_thread(client.disconnect)
        client.broadcaster.disconnect()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
