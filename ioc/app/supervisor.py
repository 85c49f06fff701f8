"""The supervisor: one owner of what happens next.

Every piece of work goes through one queue to one worker: the commands clients put (`submit`), and
the IOC's own (`work`): the startup's read of the selection, the automatic refresh, resuming a
transfer, an upload's dataset, a new beamtime's experiment. The worker runs their handlers one at a
time in a worker thread (the handlers need no locks), replaces the state with what each left, turns
its outcome into the status `Report`, acts on the events it raised, and publishes: the subscribers
(the PV groups) are called with a `View`; nothing calls up into the supervisor but `submit`.

Beside the worker, timers read what changes by itself (the transfer's progress, the catalogue's
queue) through `Queries`, publish it, and decide what it calls for: an upload that ended is due for
its dataset, an error is news.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from ..domain.catalog_ports import CatalogStatus
from ..domain.ports import TransferProgress, TransferState
from .commands import HANDLERS
from .handling import Handler, handle
from .jobs import CommandRefused, Done, Inputs, Job, Phase, View
from .messages import (
    BeamtimeToFollow,
    Command,
    DaqStart,
    DaqStop,
    Delete,
    Event,
    FollowSchedule,
    ReadSelection,
    RefreshAutomatic,
    ResumeTransfer,
    Upload,
    UploadEnded,
)
from .queries import Queries
from .reporting import TRANSFER_SEVERITY, CommandFailed, Report, Severity, failure_text, first_health
from .services import Services
from .state import BeamlineState, Outcome

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_SECONDS = 0.5  # the transfer's progress and the catalogue's queue are read twice a second
WALK_NEWS_SECONDS = 5.0  # a storage walk's progress is said this often at most, once it has run as long
FIRST_RETRY = 10.0  # after a failed automatic refresh: 10 s, 20 s, 40 s, ... up to RefreshPeriod
# The commands that start, stop, resume or forget the transfer: its progress is read when they end (DaqState
# reads Running when DaqStart's put completes); after the others the poll shows it, as it does anyway.
MOVES_TRANSFER = (DaqStart, DaqStop, Upload, ResumeTransfer, Delete)


def retry_delay(period: float, failures: int) -> float:
    """Seconds until the next automatic refresh: the period, or after failures 10 s, 20 s, 40 s, ...
    up to the period (the exponent is capped: a week-long outage never overflows)."""
    if not failures:
        return period
    return min(period, FIRST_RETRY * 2.0 ** min(failures - 1, 30))


class Supervisor:
    """The one owner of the state, of the order of work, and of what the status PVs say."""

    def __init__(self, services: Services, handlers: dict[type[Command], Handler] | None = None,
                 inputs: Callable[[], Inputs] = Inputs):  # fmt: skip
        self.services = services
        self.handlers = HANDLERS if handlers is None else handlers
        self.inputs = inputs  # the settings PVs as they are now (the server wires them)
        self.queries = Queries(services)
        self.state = BeamlineState()
        self.report = Report(first_health(services.settings))
        self.progress: TransferProgress | None = None
        self.catalog: CatalogStatus | None = None
        self.ready = asyncio.Event()  # the selection read and the start said: the timers run
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._commanding = ""  # the command accepted and not ended: a client's command is refused meanwhile
        self._working = False  # the IOC's own background work runs
        self._subscribers: list[Callable[[View], Awaitable[None]]] = []
        self._transfer_said = ""  # the transfer's last message said (its news are said once)
        self._transfer_by = ""  # the transfer command that ran last: the transfer's news are news of it
        self._catalog_said = ""
        self._query_failed = ""  # the last query's unexpected error (said once)
        self._walk_said, self._walk_progress_at = 0, 0.0  # the last walk's end said (its number); progress said at

    @property
    def phase(self) -> Phase:
        """What the supervisor does now: a command accepted (queued or running) refuses another."""
        if self._commanding:
            return Phase.RUNNING
        if not self.ready.is_set():
            return Phase.STARTING
        return Phase.WORKING if self._working else Phase.IDLE

    # ------------------------------------------------------------------ ways in

    def subscribe(self, show: Callable[[View], Awaitable[None]]) -> None:
        """`show` is called with every new View, in the order of subscription."""
        self._subscribers.append(show)

    async def submit(self, command: Command, started: Callable[[], Awaitable[None]] | None = None) -> Outcome:
        """A client's command: refused (CommandRefused) while another runs; else `started` is awaited, it
        runs after the work queued before it, and its outcome returned (CommandFailed: Status says why)."""
        if self.phase is Phase.RUNNING:
            message = f"{command.name} refused: {self._commanding} is running; try again when it ends"
            await self.say(message, Severity.MAJOR)
            raise CommandRefused(message)
        self._commanding = command.name
        try:
            if started is not None:
                await started()
            if isinstance(command, (DaqStart, DaqStop, Upload)):
                # a new transfer's messages are news even when worded as the last ones; its news are its own
                self._transfer_said, self._transfer_by = "", command.name
            self.report.start(command.name)
            await self._publish()
            done = await self._queued(Job(command, shown=True, submitted=True))
        finally:
            self._commanding = ""
        if done.outcome is None:
            raise CommandFailed(done.failure)
        return done.outcome

    async def work(self, command: Command, **how) -> Done:
        """The IOC's own work (`Job`'s options), after what is queued; never raises."""
        return await self._queued(Job(command, **how))

    async def say(self, message: str, severity: Severity) -> None:
        """Say `message` on Status now (a refused put)."""
        self.report.say(message, severity)
        await self._publish()

    async def tell(self, message: str, severity: Severity) -> bool:
        """News (autosave could not save): on Status unless a command runs. False when not said now."""
        said = self.report.news(message, severity)
        if said:
            await self._publish()
        return said

    # ------------------------------------------------------------------ the loops

    def start(self) -> None:
        """Start the worker (idempotent): queued work runs from now on."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="supervisor")

    async def run(self, started: str, problems: Sequence[tuple[str, str]] = ()) -> None:
        """Read the selection, say the start (`problems`: (message, system whose Health stays Error)),
        then run the timers for ever."""
        self.start()
        messages = []
        for message, system in problems:
            log.error("%s", message)
            messages.append(message)
            if system:
                self.report.hold_error(system)
        done = await self.work(ReadSelection(), shown=False, say_failure=False)
        if done.failure:
            messages.append(done.failure)
        if messages:
            self.report.say(f"{started}, but {'; '.join(messages)}", Severity.MAJOR)
        else:
            self.report.say(started, Severity.NO_ALARM)
        await self._publish()
        self.ready.set()
        await asyncio.gather(self._refresh_timer(), self._transfer_timer(), self._catalog_timer(), self._walk_timer())

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                done = await self._execute(job)
            except Exception as error:  # a bug here must not stop the worker: the job fails, said as a bug
                failure, _ = failure_text(job.command.name, error, self.services.settings)
                done = Done(None, failure)
                self._say(job, None, failure)
                await self._publish()
            if not job.done.done():
                job.done.set_result(done)

    async def _queued(self, job: Job) -> Done:
        self.start()
        await self._queue.put(job)
        return await job.done

    async def _execute(self, job: Job) -> Done:
        """Run one job's handler off the loop; take its state, contacts and outcome; act on its events."""
        command, settings = job.command, self.services.settings
        own_command = job.shown and not job.submitted  # the IOC's own (a new beamtime's Create): shown as a client's
        accepted = self._commanding  # the client's command this one runs for, if any
        if own_command:
            self._commanding = command.name  # a client's command is refused meanwhile, naming this one
            self.report.start(command.name)
            await self._publish()
        self._working = not job.shown
        try:
            result = await asyncio.to_thread(handle, self.handlers, self.services, self.state, command)
            self.state = result.state
            failure, full = "", False
            if result.error is not None:
                failure, full = failure_text(command.name, result.error, settings)
            elif result.outcome is not None and result.outcome.message:
                log.info("%s: %s", command.name, result.outcome.message)  # work with nothing to say says nothing
            self.report.take(self.services.contacts())
            if full:  # after the contacts: a DM call that worked before the disk filled says OK
                self.report.health["DM"] = "Error"
            if isinstance(command, MOVES_TRANSFER):
                progress = await self._read("reading the transfer's progress", self.queries.transfer_progress)
                self.progress = progress or self.progress
            self._say(job, result.outcome, failure)
            await self._publish()
        finally:
            if own_command:
                self._commanding = accepted
            self._working = False
        said = self.report.said
        follow_ups = self._follow_ups(job, result.events)
        if self.report.said != said:  # a follow-up refused
            await self._publish()
        for follow_up in follow_ups:  # before a client's put completes
            await self._execute(follow_up)
        return Done(result.outcome, failure)

    def _follow_ups(self, job: Job, events: Sequence[Event]) -> list[Job]:
        """What a job's end calls for: a new beamtime's experiment (dm.follow_schedule); the dataset of
        an upload that ended while the job ran."""
        jobs = []
        for event in events:
            if not isinstance(event, BeamtimeToFollow):
                continue
            if self._commanding and not job.submitted:  # a client's command waits: it goes first; next refresh
                name = FollowSchedule.name
                self.report.say(f"{name} refused: {self._commanding} is running; try again when it ends",
                                Severity.MAJOR)  # fmt: skip
                continue
            jobs.append(Job(FollowSchedule(event.beamtime), shown=True))
        progress = self.progress
        if not isinstance(job.command, UploadEnded) and progress is not None and self._upload_ended(progress):
            jobs.append(self._cataloguing(progress))
        return jobs

    def _upload_ended(self, progress: TransferProgress) -> bool:
        return progress.state != TransferState.RUNNING and self.state.uploading

    def _cataloguing(self, progress: TransferProgress) -> Job:
        """The dataset of an upload that ended: said with its summary, at least MAJOR after an error and
        at least what the Upload raised; its summary said first, as DaqState shows the end."""
        self._tell_transfer(progress)
        self._transfer_said = progress.message
        return Job(UploadEnded(), shown=False, say_outcome=True, of_command=self._transfer_by,
                   at_least=TRANSFER_SEVERITY[progress.state])  # fmt: skip

    def _say(self, job: Job, outcome: Outcome | None, failure: str) -> None:
        report = self.report
        if job.shown:
            report.busy = False
            severity = Severity.MAJOR if outcome is None else _severity(outcome)
            report.command_severity = severity
            report.say(failure if outcome is None else outcome.message, severity)
        elif outcome is None:
            if job.say_failure:
                report.news(failure, Severity.MAJOR, of_command=job.of_command)
        elif job.say_outcome and outcome.message:
            severity = max(_severity(outcome), job.at_least)
            # news never hides a failure still on Status (the startup's, say): LastError would keep it alone
            if severity == Severity.MAJOR or report.severity != Severity.MAJOR:
                report.news(outcome.message, severity, of_command=job.of_command)

    async def _publish(self) -> None:
        view = View(self.state, replace(self.report, health=dict(self.report.health)), self.progress, self.catalog,
                    self.phase)  # fmt: skip
        for show in self._subscribers:
            await show(view)

    async def _read(self, name: str, query: Callable[[], T]) -> T | None:
        """A query beside the work (it changes nothing the handlers change). None when it failed
        unexpectedly (a bug): said once on Status and in the log, not at every poll."""
        try:
            result = await asyncio.to_thread(query)
        except Exception as error:
            if repr(error) != self._query_failed:
                self._query_failed = repr(error)
                message, _ = failure_text(name, error, self.services.settings)
                self.report.say(message, Severity.MAJOR)
            return None
        finally:
            self.report.take(self.services.contacts())
        self._query_failed = ""
        return result

    # ------------------------------------------------------------------ timers

    async def _refresh_timer(self) -> None:
        """Refresh every RefreshPeriod seconds; back off after failures, never stop."""
        failures = 0
        while True:
            command = RefreshAutomatic(self.inputs().offset_days)
            # news and a failure are said once; Scheduling:Health shows a failure meanwhile
            done = await self.work(command, shown=False, say_failure=failures == 0, say_outcome=True)
            failures = failures + 1 if done.failure else 0
            waited_since = time.monotonic()
            while True:  # RefreshPeriod may change while we wait; 0 = off
                period = self.inputs().refresh_period
                if period > 0 and time.monotonic() - waited_since >= retry_delay(period, failures):
                    break
                await asyncio.sleep(0.5)

    async def _transfer_timer(self) -> None:
        """Resume a transfer that was running before a restart, then follow its progress."""
        await self.work(ResumeTransfer(), shown=False, say_outcome=True)
        while True:
            await self.poll_transfer()
            await asyncio.sleep(POLL_SECONDS)

    async def poll_transfer(self) -> None:
        """Show the transfer's progress; say an error or its end once; an upload that ended is due for
        its dataset."""
        progress = await self._read("reading the transfer's progress", self.queries.transfer_progress)
        if progress is None:
            return
        self.progress = progress
        cataloguing = self._cataloguing(progress) if self._upload_ended(progress) else None
        if cataloguing is None:
            self._tell_transfer(progress)
        await self._publish()
        if cataloguing is not None:
            await self._queued(cataloguing)

    def _tell_transfer(self, progress: TransferProgress) -> None:
        """An error or the end of a transfer, said once, unless Status says it already (DaqStop's outcome);
        while a command runs it waits."""
        if progress.message == self._transfer_said:
            return
        severity = TRANSFER_SEVERITY[progress.state]
        report = self.report
        if (not progress.message or report.shows(progress.message)
                or report.news(progress.message, severity, of_command=self._transfer_by)):  # fmt: skip
            self._transfer_said = progress.message

    async def _walk_timer(self) -> None:
        """Resume the DM backend's walks of storage trees a restart interrupted, then say how they go."""
        walks = self.services.adapters.walks
        if walks is not None and (resumed := await self._read("resuming the storage walks", walks.resume)):
            await self.tell(resumed, Severity.NO_ALARM)
        while True:
            await self.poll_walks()
            await asyncio.sleep(POLL_SECONDS)

    async def poll_walks(self) -> None:
        """Say each walk's end once (failed MAJOR, files left alone MINOR): news of its command while that is
        the last, else its own, never over a failure Status shows; while one runs, its progress now and then."""
        progress = await self._read("reading the storage walks", self.queries.walk_progress)
        if progress is None:
            return
        report, now = self.report, time.monotonic()
        for end in (end for end in progress.ended if end.number > self._walk_said):
            severity = Severity.MAJOR if end.failed else Severity.MINOR if end.warning else Severity.NO_ALARM
            its_command = end.by and end.by == report.last_command
            if not its_command and severity < Severity.MAJOR == report.severity and not report.busy:
                log.info("%s (not on Status: it shows a failure)", end.message)
            elif not report.news(end.message, severity, of_command=end.by if its_command else ""):
                break  # a command runs: said when it ends
            self._walk_said = end.number
        if (progress.doing and progress.by == report.last_command and progress.seconds >= WALK_NEWS_SECONDS
                and now - self._walk_progress_at >= WALK_NEWS_SECONDS):  # fmt: skip
            report.news(progress.sentence, Severity.NO_ALARM, of_command=progress.by)
            self._walk_progress_at = now
        await self._publish()

    async def _catalog_timer(self) -> None:
        while True:
            await self.poll_catalog()
            await asyncio.sleep(POLL_SECONDS)

    async def poll_catalog(self) -> None:
        """Show the catalogue's queue (it sends in its own thread); a failure said once, MAJOR."""
        status = await self._read("reading the catalogue's queue", self.queries.catalog_status)
        if status is None:
            return
        self.catalog = status
        failure = f"catalogue: {status.message}" if status.answered is False and status.message else ""
        if failure != self._catalog_said and (not failure or self.report.news(failure, Severity.MAJOR)):
            self._catalog_said = failure
        await self._publish()


def _severity(outcome: Outcome) -> Severity:
    """How an outcome is said on Status: MINOR when it warns."""
    return Severity.MINOR if outcome.warning else Severity.NO_ALARM
