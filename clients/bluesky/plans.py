"""Plan stubs for the IOC's commands, for the ophyd-async device and the classic one alike.

Each command completes when the IOC has done it (put completion). A command the IOC fails raises
`CommandFailed` with the IOC's `Status` text, in the plan (which may catch it) and out of the RunEngine.
`run_command(dm.refresh)` runs any command the same way.
"""

from __future__ import annotations

import time
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import FailedStatus

from .commands import CommandFailed, TransferFailed
from .metadata import Plan

UPLOAD_TIMEOUT = 3600.0  # seconds upload_and_wait waits for the upload to end
POLL_SECONDS = 0.2  # how often upload_and_wait reads DaqState
STATUS_WAIT = 2.0  # seconds upload_and_wait waits for the IOC to say how the upload ended


def run_command(command: Any) -> Plan:
    """Run one command (a device's `dm.create`, `dm.refresh`, ...) and wait until it ends."""
    try:
        yield from bps.mv(command, 1)
    except FailedStatus as failure:  # the RunEngine's wrapper around the status's own exception
        if isinstance(failure.__cause__, CommandFailed):
            raise failure.__cause__ from None
        raise


def create(dm: Any) -> Plan:
    """Create the DM experiment of the current proposal (or select it when it exists) and select it."""
    yield from run_command(dm.create)


def select(dm: Any, name: str) -> Plan:
    """Select the existing experiment `name`; the proposal PVs then show its proposal."""
    yield from _write_text(dm, dm.select_name, name)
    yield from run_command(dm.select)


def daq_start(dm: Any) -> Plan:
    """Start the continuous transfer of the selected experiment's DataDirectory (and its `_rec`) into storage."""
    yield from run_command(dm.daq_start)


def daq_stop(dm: Any) -> Plan:
    """Stop the continuous transfer."""
    yield from run_command(dm.daq_stop)


def upload_and_wait(dm: Any, timeout: float = UPLOAD_TIMEOUT) -> Plan:
    """Send the files present now into storage and wait until they are there; return the IOC's summary.

    Raises `TransferFailed` (the IOC's Status) when the transfer ends in Error, `TimeoutError` when it
    still runs after `timeout` seconds (it goes on in the IOC: DaqStop stops it).
    """
    yield from run_command(dm.upload)  # completes once the upload runs: DaqState reads Running from then on
    started = yield from bps.rd(dm.status)
    deadline = time.monotonic() + timeout
    while (state := (yield from bps.rd(dm.daq_state))) == "Running":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the upload still runs after {timeout} s")
        yield from bps.sleep(POLL_SECONDS)
    status = yield from _next_status(dm, started)
    if state == "Error":
        raise TransferFailed(status)
    return status


def _next_status(dm: Any, before: str) -> Plan:
    """Status once it says something else than `before`: the IOC writes the end of a transfer just after
    DaqState (later while a command runs); after STATUS_WAIT seconds, Status as it is."""
    deadline = time.monotonic() + STATUS_WAIT
    while (status := (yield from bps.rd(dm.status))) == before and time.monotonic() < deadline:
        yield from bps.sleep(POLL_SECONDS / 4)
    return status


def tag(dm: Any, prefix: str | None = None) -> Plan:
    """Write the user-info PVs into the IOC at `prefix` (by default the IOC's TagPrefix, as it is)."""
    if prefix is not None:
        yield from _write_text(dm, dm.tag_prefix, prefix)
    yield from run_command(dm.tag)


def _write_text(dm: Any, signal: Any, text: str) -> Plan:
    """Write a command's argument and read it back: neither pyepics nor ophyd-async's `set` report a refused
    put, and a command must not run on the value that was there before."""
    yield from bps.mv(signal, text)
    if (yield from bps.rd(signal)) != text:
        raise CommandFailed(signal.name, (yield from bps.rd(dm.status)))
