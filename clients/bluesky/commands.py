"""How a command ends, for both devices: put completion, and the IOC's own words when it fails.

A command PV's put completes when the command ends. The IOC answers a failed command with
ECA_PUTFAIL, and by then `Status` (MAJOR) says why; clients that do not report put failures
(pyepics) read the severity of `Status` instead.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

COMMAND_TIMEOUT = 120.0  # seconds a command may run before its set stops waiting
ECA_PUTFAIL = 160  # EPICS caerr.h: message 20 at warning severity, the reply to a put whose command failed
PVA_NO_WRITE_ACCESS = "no write access"  # how the IOC's error to a PVA put begins when its access rules refuse it
MAJOR = 2  # the alarm severity of Status when a command failed


class CommandFailed(RuntimeError):
    """A command failed; the message is the IOC's `Status` text, which says why."""

    def __init__(self, command: str, status: str):
        super().__init__(f"{command}: {status}")
        self.command = command
        self.status = status


class TransferFailed(RuntimeError):
    """The transfer ended in `DaqState` Error; the message is the IOC's `Status` text."""


async def loud(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` for a caller in another thread: aioca's CANothing is false, and a concurrent future
    takes a false exception for none (its result is then None); it comes out as a RuntimeError."""
    try:
        return await awaitable
    except Exception as error:
        if not error:
            raise RuntimeError(str(error)) from error
        raise
