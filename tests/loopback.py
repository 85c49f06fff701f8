"""The test session's loopback-only EPICS network (CA and PVA): its ports and its EPICS environment.

Importing this module allocates free ports (CA and PVA, for two IOCs) and opens the socket that takes
the IOCs' beacons; `tests/conftest.py` imports it and pins `os.environ` to `epics_env(EPICS_PORTS[0])`
before any CA or PVA client library reads it. Tools and benchmarks should not import it (they would share the session's
ports); `tests/helpers.py` has the side-effect-free helpers.
"""

from __future__ import annotations

import socket

from .helpers import free_port

EPICS_PORTS = (free_port(), free_port())  # the IOC under test, a second IOC (Tag target)
PVA_PORTS = (free_port(), free_port())  # their PV Access ports (TCP server and UDP search, one number each)

# IOCs send beacons; one socket here takes them so no IOC logs "connection refused".
_BEACON_SINK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_BEACON_SINK.bind(("127.0.0.1", 0))
BEACON_PORT = _BEACON_SINK.getsockname()[1]


def epics_env(server_port: int) -> dict[str, str]:
    """Every EPICS_CA_*/EPICS_CAS_* and EPICS_PVA_*/EPICS_PVAS_* address variable pinned to 127.0.0.1."""
    addr_list = " ".join(f"127.0.0.1:{p}" for p in EPICS_PORTS)
    pva_port = dict(zip(EPICS_PORTS, PVA_PORTS, strict=True)).get(server_port, PVA_PORTS[0])
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
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_ADDR_LIST": " ".join(f"127.0.0.1:{p}" for p in PVA_PORTS),
        "EPICS_PVA_NAME_SERVERS": "",
        "EPICS_PVA_BROADCAST_PORT": str(pva_port),
        "EPICS_PVA_SERVER_PORT": str(pva_port),
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_SERVER_PORT": str(pva_port),
        "EPICS_PVAS_BROADCAST_PORT": str(pva_port),
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": f"127.0.0.1:{BEACON_PORT}",
        "EPICS_PVAS_IGNORE_ADDR_LIST": "",
    }
