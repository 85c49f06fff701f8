"""The test session's loopback-only Channel Access network: its ports and its EPICS environment.

Importing this module allocates two free ports and opens the socket that takes the IOCs' beacons;
`tests/conftest.py` imports it and pins `os.environ` to `epics_env(EPICS_PORTS[0])` before any CA
client library reads it. Tools and benchmarks should not import it (they would share the session's
ports); `tests/helpers.py` has the side-effect-free helpers.
"""

from __future__ import annotations

import socket

from .helpers import free_port

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
