"""What the supervisor queues and publishes: jobs, what they end with, the View of the state, its phase."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum

from ..domain.catalog_ports import CatalogStatus
from ..domain.ports import TransferProgress
from .messages import Command
from .reporting import CommandFailed, Report, Severity
from .state import BeamlineState, Outcome


class Phase(Enum):
    STARTING = "Starting"  # until the selection is read and the start said
    IDLE = "Idle"
    RUNNING = "Running"  # a command runs (a client's, or the IOC's own Create)
    WORKING = "Working"  # the IOC's own background work runs


class CommandRefused(CommandFailed):
    """A command put while another runs: refused, nothing done."""


@dataclass(frozen=True)
class View:
    """What the PVs show, published after every change."""

    state: BeamlineState
    report: Report
    progress: TransferProgress | None
    catalog: CatalogStatus | None
    phase: Phase


@dataclass(frozen=True)
class Inputs:
    """The settings PVs the timers read (clients change them at any time)."""

    offset_days: float = 0.0
    refresh_period: float = 0.0


@dataclass
class Job:
    """A command in the queue, and how its outcome is said.

    `shown`: a command (Busy, LastCommand, its outcome on Status, refuses a client's command meanwhile);
    else background work, whose failure is said when `say_failure` and outcome when `say_outcome` (with
    at least `at_least`), as news (`Report.news`, `of_command`)."""

    command: Command
    shown: bool
    say_failure: bool = True
    say_outcome: bool = False
    of_command: str = ""
    at_least: Severity = Severity.NO_ALARM
    submitted: bool = False  # a client's command: `submit` has said it started
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class Done:
    """What a job ended with: its outcome, or why it failed."""

    outcome: Outcome | None
    failure: str = ""
