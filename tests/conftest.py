"""Shared fixtures: loopback-only EPICS networking, free ports, the fixture paths."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
APS_FIXTURES = TEST_DATA / "aps-scheduling"
CONTRACT_PVS = TEST_DATA / "contract-pvs.txt"


def contract_pvs() -> list[tuple[str, str, str, str]]:
    """(name, kind, type, access) of every PV of the contract (docs/interface.md section 4)."""
    lines = CONTRACT_PVS.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")) for line in lines if line and not line.startswith("#")]


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses the same number for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


EPICS_PORTS = (free_port(), free_port())  # the IOC under test, a second IOC (Tag target)

# IOCs send beacons; one socket here takes them so no IOC logs "connection refused".
_BEACON_SINK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_BEACON_SINK.bind(("127.0.0.1", 0))
BEACON_PORT = _BEACON_SINK.getsockname()[1]


def epics_env(server_port: int) -> dict[str, str]:
    """Every EPICS_CA_*/EPICS_CAS_* address variable pinned to 127.0.0.1."""
    addr_list = " ".join(f"127.0.0.1:{p}" for p in EPICS_PORTS)
    return {
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": addr_list,
        "EPICS_CA_NAME_SERVERS": "",
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(BEACON_PORT),
        "EPICS_CAS_BEACON_PORT": str(BEACON_PORT),
        "EPICS_CAS_SERVER_PORT": str(server_port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_IGNORE_ADDR_LIST": "",
        "EPICS_CA_MAX_ARRAY_BYTES": "1000000",
    }


# Set before any CA client library (pyepics' libca, caproto) reads them.
os.environ.update(epics_env(EPICS_PORTS[0]))


@pytest.fixture(scope="session")
def aps_fixtures() -> Path:
    return APS_FIXTURES
