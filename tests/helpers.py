"""Helpers every tier shares: the repository's paths, free loopback ports, polling until a condition holds.

Importing this module changes nothing (no environment variable, no socket left open): the loopback
EPICS environment of the test session is `tests/loopback.py`'s, set up by `tests/conftest.py`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
APS_FIXTURES = TEST_DATA / "aps-scheduling"
CONTRACT_PVS = TEST_DATA / "contract-pvs.txt"
# Seconds a test's CA client waits to find a PV (its UDP search, retried) and for a reply. An idle machine answers
# in milliseconds; a loaded one (2 cores, several suites) answered a search after more than 5 s.
CA_TIMEOUT = 20.0


def contract_pvs() -> list[tuple[str, str, str, str]]:
    """(name, kind, type, access) of every PV of the contract (docs/interface.md section 4)."""
    lines = CONTRACT_PVS.read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
    return [(name, kind, type_, access) for name, kind, type_, access in rows]


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


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `condition()` until it returns something truthy and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def until(
    condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.005, what: str = "condition"
) -> None:
    """`wait_for` on the event loop: poll `condition()` without blocking the loop; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
