"""Plan stubs for the IOC's commands, for the ophyd-async device and the classic one alike.

Each command completes when the IOC has done it (put completion). A command the IOC fails raises
`CommandFailed` with the IOC's `Status` text, in the plan (which may catch it) and out of the RunEngine.
A stub that takes arguments writes them to their PVs first and reads them back. `run_command(dm.refresh)`
runs any command the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
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


def create_manual(
    dm: Any,
    *,
    last_name: str = "",
    first_name: str = "",
    institution: str = "",
    email: str = "",
    title: str = "",
    gup: int = 0,
    badges: str | Iterable[int | str] = "",
    start: str = "",
    end: str = "",
) -> Plan:
    """Create an experiment outside the schedule (staff time, a test) and select it.

    Every `Manual:*` PV is written, so nothing of an earlier manual experiment is reused; an empty value
    takes the IOC's default (last name Staff, no GUP, start the first of this month, end 14 days later).
    `start` and `end` are YYYY-MM-DD; `badges` lists the users, the first being this person.
    """
    arguments = [
        (dm.manual_last_name, last_name),
        (dm.manual_first_name, first_name),
        (dm.manual_institution, institution),
        (dm.manual_email, email),
        (dm.manual_title, title),
        (dm.manual_gup, gup),
        (dm.manual_badges, badges_text(badges)),
        (dm.manual_start, start),
        (dm.manual_end, end),
    ]
    for signal, value in arguments:
        yield from _write(dm, signal, value)
    yield from run_command(dm.create_manual)


def select(dm: Any, name: str) -> Plan:
    """Select the existing experiment `name`; the proposal PVs then show its proposal."""
    yield from _write(dm, dm.select_name, name)
    yield from run_command(dm.select)


def add_users(dm: Any, badges: str | Iterable[int | str]) -> Plan:
    """Give the people with these badges access to the selected experiment."""
    yield from _write(dm, dm.badges, badges_text(badges))
    yield from run_command(dm.add_user)


def remove_users(dm: Any, badges: str | Iterable[int | str]) -> Plan:
    """Take access to the selected experiment from the people with these badges."""
    yield from _write(dm, dm.badges, badges_text(badges))
    yield from run_command(dm.remove_user)


def email(dm: Any, all_users: bool = False) -> Plan:
    """Send the data-access message to the users of the selected experiment not e-mailed yet, or to all."""
    yield from _write(dm, dm.email_mode, "All users" if all_users else "New users")
    yield from run_command(dm.email)


def delete(dm: Any, name: str | None = None) -> Plan:
    """Delete the selected experiment: its DM experiment, its Globus rules and what the IOC knows of it.

    The IOC deletes only when DeleteConfirm equals ExperimentName, and clears DeleteConfirm after each
    attempt. With `name`, DeleteConfirm is written first (a name that is not the selected experiment's
    deletes nothing); without, DeleteConfirm is used as an operator typed it. ExperimentName is never read
    to fill it in: a plan deletes only the experiment it names.
    """
    if name is not None:
        yield from _write(dm, dm.delete_confirm, name)
    yield from run_command(dm.delete)


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


def catalog(dm: Any) -> Plan:
    """Make a dataset now of the files sent since the last one (the IOC makes one at each DaqStop or Upload)."""
    yield from run_command(dm.catalog)


def tag(dm: Any, prefix: str | None = None) -> Plan:
    """Write the user-info PVs into the IOC at `prefix` (by default the IOC's TagPrefix, as it is)."""
    if prefix is not None:
        yield from _write(dm, dm.tag_prefix, prefix)
    yield from run_command(dm.tag)


def badges_text(badges: str | Iterable[int | str]) -> str:
    """Badges as the IOC reads them: comma-separated (a text is taken as it is)."""
    return badges if isinstance(badges, str) else ",".join(str(badge) for badge in badges)


def _write(dm: Any, signal: Any, value: Any) -> Plan:
    """Write a command's argument and read it back: neither pyepics nor ophyd-async's `set` report a refused
    put, and a command must not run on the value that was there before."""
    yield from bps.mv(signal, value)
    if (yield from bps.rd(signal)) != value:
        raise CommandFailed(signal.name, (yield from bps.rd(dm.status)))
