"""Which host names mean this machine: shared by the DM adapters and the IOC's `--check`."""

from __future__ import annotations

import socket

LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")


def is_this_host(host: str) -> bool:
    """True when `host` names the machine this IOC runs on."""
    host = host.strip().lower()
    if not host:
        return True
    fqdn = socket.getfqdn().lower()
    names = {*LOCAL_HOST_NAMES, socket.gethostname().lower(), fqdn, fqdn.split(".")[0]}
    return host in names or host.split(".")[0] == socket.gethostname().lower().split(".")[0]
