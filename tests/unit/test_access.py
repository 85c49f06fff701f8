"""Access by address: parsing write_hosts, matching a peer address, resolving names; the server's pure parts."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import caproto as ca
import pytest
from caproto import AccessRights, ChannelType
from caproto.server import PVGroup, pvproperty
from dmagic_ioc.ioc.addresses import host_problems, parse_hosts, plain_address, resolution_problems
from dmagic_ioc.ioc.epics.access import ClientHost, WriteAccess, restrict_writes
from dmagic_ioc.ioc.epics.caserver.circuit import _write_notify_failure
from dmagic_ioc.ioc.epics.caserver.refusals import RefusalLog
from dmagic_ioc.ioc.epics.caserver.search import SearchSocket
from dmagic_ioc.ioc.settings.load import ConfigError, settings_from_dict
from dmagic_ioc.ioc.settings.schema import AccessSettings

WRITE = AccessRights.READ | AccessRights.WRITE
READ = AccessRights.READ
ip = ipaddress.ip_address


class FakeDNS:
    """name -> addresses; a name missing from `table` does not resolve."""

    def __init__(self, **table: str):
        self.table = {name: frozenset(map(ip, addresses.split())) for name, addresses in table.items()}
        self.asked: list[str] = []

    def __call__(self, name: str):
        self.asked.append(name)
        if name not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[name]


def access(hosts=(), users=(), **dns) -> WriteAccess:
    rules = WriteAccess(hosts, users, resolver=FakeDNS(**dns))
    rules.resolve()
    return rules


def rights(rules: WriteAccess, address: str | None, user: str = "anyone", claimed: str = "opi") -> AccessRights:
    host = claimed if address is None else ClientHost(claimed, address)
    return rules.check_access(host, user)


# --------------------------------------------------------------------------- parsing write_hosts


def test_names_and_networks_are_told_apart():
    rules, problems = parse_hosts(["Tomo1", "opi.xray.example.org.", "10.54.1.0/24", "10.54.2.7", "2001:db8::/64",
                                   "::ffff:10.9.9.9", "tomo1"])  # fmt: skip
    assert problems == []
    assert rules.names == ("tomo1", "opi.xray.example.org")  # case-folded, trailing dot dropped, once each
    assert [str(n) for n in rules.networks] == ["10.54.1.0/24", "10.54.2.7/32", "2001:db8::/64", "10.9.9.9/32"]


@pytest.mark.parametrize(
    "entry, words",
    [
        ("10.54.1.7/24", "has host bits set: the network is 10.54.1.0/24"),
        ("10.0.0.0/33", "not an IP address or network"),
        ("300.1.2.3", "not an IP address or network"),
        ("10.54", "not an IP address or network"),
        ("2001:db8::/129", "e.g. 2001:db8::/64"),
        ("tomo_1", "not a host name, an address or a network"),
        ("-tomo", "not a host name"),
        ("", "not a host name"),
    ],
)
def test_an_entry_that_is_neither_is_named(entry, words):
    (problem,) = host_problems([entry])
    assert problem.startswith(f"ioc.access.write_hosts: {entry!r} ")
    assert words in problem


def test_the_config_names_a_bad_network(tmp_path):
    (tmp_path / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    raw = {
        "beamline": {"name": "2-BM-A,B"},
        "scheduling": {"path": "schedule.yaml"},
        "ioc": {"access": {"write_hosts": ["tomo1", "10.54.1.0/33"], "write_users": ["2bmbop"]}},
    }
    with pytest.raises(ConfigError) as error:
        settings_from_dict(raw, base=tmp_path)
    assert error.value.problems == [
        "ioc.access.write_hosts: '10.54.1.0/33' is not an IP address or network (address/prefix length, "
        "e.g. 10.54.1.0/24)"
    ]
    raw["ioc"]["access"]["write_hosts"] = ["tomo1", "10.54.1.0/24"]  # a name need not resolve to load
    assert settings_from_dict(raw, base=tmp_path).ioc.access.write_hosts == ("tomo1", "10.54.1.0/24")


def test_check_names_a_host_that_does_not_resolve():
    # .invalid never resolves (RFC 6761); localhost resolves from the hosts file, without a name server
    assert resolution_problems(["localhost", "10.54.1.0/24"]) == []
    (problem,) = resolution_problems(["localhost", "no-such-console.invalid"])
    assert problem.startswith("ioc.access.write_hosts: host name 'no-such-console.invalid' does not resolve")


def test_addresses_compare_plain():
    assert plain_address("::ffff:10.54.1.7") == ip("10.54.1.7")
    assert plain_address("fe80::1%eth0") == ip("fe80::1")
    assert plain_address(ip("10.1.2.3")) == ip("10.1.2.3")


# --------------------------------------------------------------------------- deciding by address


@pytest.mark.parametrize("claimed", ["opi-allowed", "OPI-ALLOWED.attacker.example", "localhost.", "10.54.1.7"])
def test_a_claimed_host_name_never_admits(claimed):
    rules = access(
        ["opi-allowed", "localhost", "10.54.1.0/24"], **{"opi-allowed": "10.54.2.5", "localhost": "127.0.0.1"}
    )
    assert rights(rules, "192.0.2.9", claimed=claimed) == READ  # from an address not listed
    assert rights(rules, None, claimed=claimed) == READ  # a bare claim, no address: never trusted


def test_the_peer_address_admits_whatever_name_it_claims():
    rules = access(["opi-allowed", "10.54.1.0/24", "2001:db8::/64"], **{"opi-allowed": "10.54.2.5 2001:db8:1::5"})
    for address in ("10.54.2.5", "2001:db8:1::5", "10.54.1.7", "::ffff:10.54.1.200", "2001:db8::42"):
        assert rights(rules, address, claimed="whatever") == WRITE, address
    for address in ("10.54.2.6", "10.54.3.1", "2001:db8:2::1", "127.0.0.1", "not-an-address"):
        assert rights(rules, address) == READ, address


def test_users_narrow_the_hosts():
    rules = access(["10.54.1.0/24"], ["2bmbop"])
    assert rights(rules, "10.54.1.7", user="2bmbop") == WRITE
    assert rights(rules, "10.54.1.7", user="visitor") == READ
    assert rights(rules, "192.0.2.9", user="2bmbop") == READ
    assert rules.refusal("10.54.1.7", "visitor") == "user 'visitor' is not in ioc.access.write_users"
    assert rules.refusal("192.0.2.9", "2bmbop") == "its address is not in ioc.access.write_hosts"


def test_users_alone_are_accepted_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, "dmagic_ioc.ioc.epics.access"):
        rules = access([], ["2bmbop"])
    assert "write_users without write_hosts" in caplog.text and "2bmbop" in caplog.text
    assert rights(rules, "192.0.2.9", user="2bmbop") == WRITE
    assert rights(rules, "192.0.2.9", user="visitor") == READ


def test_a_bad_entry_admits_nobody(caplog):
    with caplog.at_level(logging.ERROR, "dmagic_ioc.ioc.epics.access"):
        rules = access(["10.54.1.7/24"])
    assert "admits nobody" in caplog.text
    assert rights(rules, "10.54.1.7") == READ


# --------------------------------------------------------------------------- resolving


def test_names_resolve_at_start_and_again(caplog):
    dns = FakeDNS()
    rules = WriteAccess(["tomo1", "10.54.1.0/24"], [], resolver=dns)
    with caplog.at_level(logging.INFO, "dmagic_ioc.ioc.epics.access"):
        assert rules.resolve() is False  # tomo1 does not resolve yet: it admits nobody
        assert "tomo1 does not resolve" in caplog.text and "admits nobody" in caplog.text
        assert rights(rules, "10.54.2.5") == READ

        dns.table["tomo1"] = frozenset({ip("10.54.2.5")})
        assert rules.resolve() is True
        assert rights(rules, "10.54.2.5") == WRITE

        del dns.table["tomo1"]  # the name server is down: the last addresses stay
        caplog.clear()
        assert rules.resolve() is False
        assert rights(rules, "10.54.2.5") == WRITE
        assert "kept 10.54.2.5" in caplog.text

        dns.table["tomo1"] = frozenset({ip("10.54.2.6")})  # the console moved
        assert rules.resolve() is True
        assert "tomo1 now resolves to 10.54.2.6 (was 10.54.2.5)" in caplog.text
        assert rights(rules, "10.54.2.5") == READ and rights(rules, "10.54.2.6") == WRITE
    assert dns.asked == ["tomo1"] * 4  # networks are never looked up


async def test_names_are_resolved_off_the_loop_and_changes_are_announced():
    changes = []
    dns = FakeDNS(tomo1="10.54.2.5")
    rules = WriteAccess(["tomo1"], [], resolver=dns)

    async def changed():
        changes.append(rights(rules, "10.54.2.6"))

    keeper = asyncio.create_task(rules.keep_resolved(on_change=changed, period=0))
    try:
        for _ in range(1000):
            if changes:
                break
            await asyncio.sleep(0.001)
        assert changes == [READ]  # the first round found tomo1: a change
        dns.table["tomo1"] = frozenset({ip("10.54.2.6")})
        for _ in range(1000):
            if len(changes) > 1:
                break
            await asyncio.sleep(0.001)
        assert changes[1:] == [WRITE]
    finally:
        keeper.cancel()


# --------------------------------------------------------------------------- installing the rules


class Pair(PVGroup):
    setting = pvproperty(name="Setting", value=0, dtype=ChannelType.LONG)
    reading = pvproperty(name="Reading", value=0, dtype=ChannelType.LONG, read_only=True)


def test_rules_go_on_the_writable_pvs_only():
    assert restrict_writes(Pair("t:").pvdb, AccessSettings()) is None
    pvdb = Pair("t:").pvdb
    before = pvdb["t:Reading"].check_access
    rules = restrict_writes(pvdb, AccessSettings(write_hosts=("10.54.1.0/24",)))
    assert pvdb["t:Setting"].check_access == rules.check_access
    assert pvdb["t:Reading"].check_access == before
    assert pvdb["t:Setting"].check_access(ClientHost("x", "10.54.1.7"), "u") == WRITE
    assert pvdb["t:Setting"].check_access("10.54.1.7", "u") == READ  # a name, even an address-like one


# --------------------------------------------------------------------------- the server's pure parts


def test_a_failed_put_with_completion_also_gets_its_write_notify_reply():
    request = ca.WriteNotifyRequest(data=[1], data_type=ChannelType.ENUM, data_count=1, sid=7, ioid=42)
    error = ca.ErrorResponse(request, cid=3, status=ca.CAStatus.ECA_PUTFAIL, error_message="Select failed")
    reply = _write_notify_failure(error)
    assert isinstance(reply, ca.WriteNotifyResponse)
    assert (reply.ioid, reply.status, reply.data_type) == (42, ca.CAStatus.ECA_PUTFAIL.value, ChannelType.ENUM)
    plain = ca.WriteRequest(data=[1], data_type=ChannelType.ENUM, data_count=1, sid=7, ioid=43)
    assert _write_notify_failure(ca.ErrorResponse(plain, 3, ca.CAStatus.ECA_NOWTACCESS, "no")) is None
    assert _write_notify_failure(reply) is None


def test_refused_writes_are_logged_once_a_minute_per_address(caplog):
    refusals = RefusalLog(period=60)
    with caplog.at_level(logging.WARNING, "dmagic_ioc.ioc.epics.caserver.refusals"):
        for _ in range(5):
            refusals.note("t:Create", "10.54.9.9", "visitor", "opi-allowed", "its address is not in write_hosts")
        refusals.note("t:Create", "10.54.9.8", "visitor", "laptop", "its address is not in write_hosts")
    lines = caplog.messages
    assert len(lines) == 2
    assert lines[0] == ("write to t:Create refused: client at 10.54.9.9 (user 'visitor', host name 'opi-allowed' "
                        "as it claims): its address is not in write_hosts")  # fmt: skip
    assert "client at 10.54.9.8" in lines[1]
    refusals.period = 0
    with caplog.at_level(logging.WARNING, "dmagic_ioc.ioc.epics.caserver.refusals"):
        refusals.note("t:Create", "10.54.9.9", "visitor", "opi-allowed", "its address is not in write_hosts")
    assert caplog.messages[-1].endswith("; 4 more writes from 10.54.9.9 refused since its last line")


class Collected:
    def __init__(self):
        self.items = []

    def put(self, item):
        self.items.append(item)


async def test_the_search_socket_is_read_until_empty():
    """asyncio's datagram transport reads one datagram per loop turn; the search socket reads all waiting."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    queue = Collected()
    searches = SearchSocket(receiver, "127.0.0.1", queue)
    searches.batch = 30
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(40):
                sender.sendto(b"search %d" % i, receiver.getsockname())
        searches._read()  # one wake-up of the loop: up to a batch
        assert [data for _, data, _ in queue.items] == [b"search %d" % i for i in range(30)]
        searches._read()
        assert len(queue.items) == 40
        searches._read()  # nothing waits: returns at once
        assert len(queue.items) == 40
    finally:
        searches.close()
