"""What the IOC needs from the outside world: one protocol per system.

Adapters in `adapters/` implement these as plain classes; tests pass fakes.
Every method here may block (network, disk, sqlite): the IOC calls them off
the event loop. They raise `errors.ServiceError` subclasses (or `InputError`)
with a message fit for the Status PV.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from .beamtime import Beamtime, Run
from .experiment import Experiment, ExperimentUser
from .people import Person


class SchedulingSource(Protocol):
    """The beamline's schedule: the file backend or the APS scheduling service."""

    def runs(self) -> list[Run]:
        """Every run the source knows."""

    def beamtimes(self, run: Run) -> list[Beamtime]:
        """The beamtimes of this beamline in `run`."""


class DataManagement(Protocol):
    """A DM system: the embedded registry (`local`) or the APS DM system (`aps`)."""

    def create_experiment(self, experiment: Experiment) -> tuple[Experiment, bool]:
        """Create it (directories, registry) or find the existing one: (experiment, created).

        Idempotent: on an existing experiment, completes whatever a failed
        earlier attempt left undone and changes nothing else. Users are added
        separately through `add_users`. Made, but without a unix group it names
        (one that does not exist): `errors.PartialAccess` with the result in `done`.
        """

    def get_experiment(self, name: str) -> Experiment | None: ...

    def list_experiments(self) -> list[str]:
        """The station's experiment names, newest first."""

    def station_experiments(self) -> list[Experiment]:
        """The station's experiments as DM keeps them (name, title, GUP and ESAF where it knows them,
        start, year-month, storage), newest first; users' contact details are not read. Create looks
        there for an experiment made for its beamtime under another name (by DMagic, or by hand)."""

    def add_users(self, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        """Give access; return the usernames that did not have it before.

        When some users cannot be added, the others still are; the DMError raised
        then carries the added usernames in `done`.
        """

    def remove_users(self, name: str, usernames: Sequence[str]) -> list[str]:
        """Take access; return the usernames that had it."""

    def delete_experiment(self, name: str) -> str:
        """Delete it; return a sentence saying exactly what was removed."""

    def esaf(self, esaf: str) -> tuple[list[Person], str]:
        """ESAF experimenters and DOI; ([], '') where the backend has no ESAF data."""


class TransferState(Enum):
    STOPPED = "Stopped"
    RUNNING = "Running"
    ERROR = "Error"


@dataclass(frozen=True)
class TransferProgress:
    """A snapshot of the data transfer for the `Daq:*` PVs."""

    state: TransferState = TransferState.STOPPED
    files_done: int = 0
    files_total: int = 0
    bytes_done: float = 0.0  # in storage, and what is written of the files being copied
    bytes_total: float = 0.0  # of the files sent or ready to send; 0 where the transfer does not know it
    rate_mb_s: float = 0.0  # over the last few seconds (RecentRate)
    last_file: str = ""
    message: str = ""  # an error (which file, why) or the end-of-upload summary

    @property
    def percent(self) -> float:
        """0 to 100: by bytes where the transfer knows the bytes it has to send, else by files.

        During a continuous transfer the total grows as files are written: this is the share of what
        is known now, 100 when the transfer has caught up; it falls when data arrives faster than it
        is sent.
        """
        if self.bytes_total > 0:
            return min(100.0, 100.0 * self.bytes_done / self.bytes_total)
        return 100.0 * self.files_done / self.files_total if self.files_total else 0.0


class RecentRate:
    """MB/s over the last `window` seconds from a running count of the bytes sent: what `Daq:Rate` shows.

    `add(count, now)` records the count (one sample per `spacing` seconds at most) and returns the
    rate since the oldest sample of the window; a count that went down (a new transfer) starts over.
    One caller at a time.
    """

    def __init__(self, window: float = 5.0, spacing: float = 0.25):
        self.window, self.spacing = window, spacing
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, count: float, now: float) -> float:
        samples = self._samples
        if samples and count < samples[-1][1]:
            samples.clear()
        if not samples or now - samples[-1][0] >= self.spacing:
            samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        since, before = samples[0]
        return (count - before) / (now - since) / 1e6 if now > since else 0.0


@dataclass(frozen=True, slots=True)  # slots: made faster (a dataset's end reads a million)
class SentFile:
    """A file the transfer put into storage: where it is there, its size and mtime, when it was sent."""

    path: str  # absolute, in storage
    size: int
    mtime: float  # seconds since the epoch
    sent_at: float  # seconds since the epoch
    checksum: str = ""  # "<algorithm>:<hex>" where the transfer has one: the APS DM file catalogue's md5, the
    # built-in engine's blake2b that each copy was verified against (dm.checksum); Globus gives none


class Transfer(Protocol):
    """Moves an experiment's raw data into DM storage, continuously or once."""

    def start(self, experiment: Experiment, sources: Mapping[str, str], *, once: bool) -> str:
        """Start transferring each source folder into its destination (`{src: dest}`).

        Returns at once with a sentence for Status; the transfer runs in the
        background. `once` makes it an upload: one pass, then it stops by itself.
        """

    def stop(self) -> str: ...

    def progress(self) -> TransferProgress: ...

    def resume(self) -> str | None:
        """After a restart, resume a transfer that was running; a sentence, or None."""

    def forget(self, sources: Mapping[str, str]) -> None:
        """Forget what was transferred from these sources (their storage was deleted)."""

    def sent_since(self, mark: float, storage: str) -> Iterable[SentFile]:
        """The files sent into `storage` (an experiment's folder) after `mark` (seconds since the epoch),
        oldest first, from the transfer's own record (the built-in engine's ledger, the APS DM file catalogue,
        Globus's successful transfers of its tasks): no folder is walked. What the record holds now, nothing
        when nothing: it never waits for files still on their way. Iterated once: the built-in engine reads
        its ledger as the files are iterated, so that a million are never in memory at once."""


@dataclass(frozen=True)
class WalkEnd:
    """A walk of an experiment's storage that ended, for one sentence on Status."""

    number: int  # counts the walks ended since the IOC started: each is said once
    message: str  # what it did (how many files, how long) and what it left alone
    failed: bool = False  # it stopped on an error: MAJOR
    warning: bool = False  # it left files alone: MINOR
    by: str = ""  # the command that started it; '' after a restart


@dataclass(frozen=True)
class WalkProgress:
    """The DM backend's walks now: the one running, how far it is, how many wait, the last few that ended."""

    doing: str = ""  # the walk running, e.g. "giving d310001 access to the files of 2026-10-Smith-1234"; '' none
    by: str = ""  # the command that started it
    files_done: int = 0
    files_total: int = 0  # an estimate (what the last walk of its tree found); 0 when none is known
    seconds: float = 0.0  # how long it has run
    waiting: int = 0  # walks queued behind it
    ended: tuple[WalkEnd, ...] = ()  # the last few that ended, oldest first

    @property
    def sentence(self) -> str:
        """How far the running walk is, for Status: '...: 40000 files of about 100000; 1 more waiting'."""
        known = f"of about {self.files_total}" if self.files_total > self.files_done else "so far"
        waiting = f"; {self.waiting} more waiting" if self.waiting else ""
        return f"{self.doing}: {self.files_done} files {known}{waiting}"


class Walks(Protocol):
    """Walks of an experiment's storage too long for a command (ACLs given or taken on every file, the storage
    of a deleted experiment removed): the DM backend does the quick part in the command (the storage folder's
    own ACL, so access starts or ends at once) and queues the rest, run in the background one at a time in the
    order queued, and resumed after a restart."""

    def claim(self, by: str) -> int:
        """How many walks went to the background since the last call (ended or not); their ends are news of
        command `by`, whose handler queued them."""

    def progress(self) -> WalkProgress:
        """Now; cheap and thread-safe."""

    def resume(self) -> str | None:
        """At start: run the walks a restart interrupted; a sentence naming them, or None when there are none."""


class StateStore(Protocol):
    """The IOC's own durable state, whatever the DM backend: the selection,
    who was e-mailed, the Globus rule ids (adapters/registry/, SQLite)."""

    def selected(self) -> str:
        """The selected experiment's name, '' when none."""

    def select(self, name: str) -> None: ...

    def emailed(self, experiment: str) -> list[str]:
        """Usernames already sent the data-access message for `experiment`."""

    def mark_emailed(self, experiment: str, usernames: Sequence[str]) -> None: ...

    def rules(self, experiment: str) -> dict[str, str]:
        """Globus access rule ids of `experiment`, by username."""

    def record_rules(self, experiment: str, rules: Mapping[str, str]) -> None: ...

    def forget_rules(self, experiment: str, usernames: Sequence[str]) -> None: ...

    def proposal(self, experiment: str) -> Beamtime | None:
        """The proposal `experiment` was made for, as kept at Create/CreateManual/Select; None if not kept."""

    def keep_proposal(self, experiment: str, proposal: Beamtime) -> None: ...

    def followed(self) -> str:
        """The key (`beamtime_key`) of the last beamtime whose experiment was selected by itself."""

    def mark_followed(self, key: str) -> None: ...

    def forget_experiment(self, experiment: str) -> None:
        """Drop everything kept about `experiment` (after Delete), the selection too when it is that one."""


class Access(Protocol):
    """Who may reach an experiment's storage from outside (Globus sharing)."""

    def grant(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> dict[str, str]:
        """Ensure one read-only rule per user with an e-mail: {username: rule_id}.

        An existing rule for the same identity and path is reused, never duplicated.
        When some users fail, the GlobusError carries the rules made so far in `done`.
        """

    def revoke(self, experiment: Experiment, rules: Mapping[str, str]) -> list[str]:
        """Delete these rules ({username: rule_id}); return whose were removed."""

    def url(self, experiment: Experiment) -> str:
        """The web link to the experiment's folder."""


@dataclass(frozen=True)
class Delivery:
    """What an e-mail round did: who got it, who had no address, who failed and why."""

    delivered: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: Mapping[str, str] | None = None


class Mailer(Protocol):
    def send(self, recipients: Sequence[tuple[str, str]], values: Mapping[str, str]) -> Delivery:
        """Render the data-access message with `values` (experiment, title, pi, beamline, globus_url,
        storage_directory) and send it to each (username, address) on its own: one without an address is
        skipped, one the server refuses fails alone (`Delivery`); a server that does not answer: EmailError."""


class TagTarget(Protocol):
    def write(self, prefix: str, values: Mapping[str, str]) -> list[str]:
        """Write each value to `prefix + name`; return the names whose value was cut."""


class MetadataSource(Protocol):
    """The beamline's state as PVs of any IOC show it (metadata.pvs), read over Channel Access."""

    def read(self, pvs: Mapping[str, str]) -> dict[str, dict]:
        """{key: {"pv", "value", "units", "severity", "timestamp"}} for each of `pvs` (key -> PV name);
        a PV that does not answer: {"pv", "missing": True}. Never raises for a PV that is absent."""
