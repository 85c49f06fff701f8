"""The PV groups in-process, with fake adapters: no network, no subprocess, no CA server.

Each test builds `Beamline` on fakes and a `DMagicIOC` around it, then writes
the command PVs directly (caproto runs the putter inside `write`; a failed
command raises `CommandFailed` out of it) and reads `channel.value` and
`channel.alarm.severity`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from caproto import AlarmSeverity
from dmagic_ioc.ioc.usecases import Adapters, Beamline
from dmagic_ioc.ioc.engine import CommandFailed
from dmagic_ioc.ioc.config import BeamlineSettings, DMSettings, GlobusSettings, IocSettings, Settings
from dmagic_ioc.ioc.domain.model import Beamtime, DMError, Experiment, Person, Run, SchedulingError, parse_time
from dmagic_ioc.ioc.domain.ports import TransferProgress, TransferState
from dmagic_ioc.ioc.server import DMagicIOC

CHICAGO = ZoneInfo("America/Chicago")
NOW = datetime(2026, 10, 15, 15, 0, tzinfo=timezone.utc)  # 10:00 CDT, inside beamtime 1012039
NO, MINOR, MAJOR = AlarmSeverity.NO_ALARM, AlarmSeverity.MINOR_ALARM, AlarmSeverity.MAJOR_ALARM
WAIT_SECONDS = 5.0

TITLE = (
    "Operando X-ray micro-tomography of lithium-metal anodes: dendrite nucleation, growth and dissolution "
    "under fast charging in solid-state and liquid electrolytes — a multi-scale study of the interphase "
    "with in-situ mechanical loading, variable temperature and ünïcødé in the title, well past forty bytes"
)
MEI = Person("310001", "Mei", "Müller-Łukasiewicz", "mei@example.edu", "Example State University", is_pi=True)
BO = Person("310002", "Bo", "Li", "bo@example.org", "UChicago")
ESAF_PERSON = Person("310009", "Eva", "Sá", "eva@example.org", "Argonne")
RUN = Run("2026-3", parse_time("2026-09-29 08:00", CHICAGO), parse_time("2026-12-22 08:00", CHICAGO))
BEAMTIME = Beamtime(
    gup="1012039",
    title=TITLE,
    start=parse_time("2026-10-14 08:00", CHICAGO),
    end=parse_time("2026-10-17 08:00", CHICAGO),
    people=(BO, MEI),  # the PI is listed second
    proposal_type="General User",
    esaf="281001",
    mail_in=True,
)
LATER = Beamtime(
    gup="1012040",
    title="Later proposal",
    start=parse_time("2026-10-20 08:00", CHICAGO),
    end=parse_time("2026-10-22 08:00", CHICAGO),
    people=(Person("310003", "Cy", "Ngo", "cy@example.org", "MIT"),),
)
EXPERIMENT = "2026-10-MullerLukasiewicz-1012039"


# --------------------------------------------------------------------------- fakes


class FakeSchedule:
    def __init__(self, runs=(RUN,), beamtimes=(BEAMTIME, LATER)):
        self._runs, self._beamtimes = list(runs), list(beamtimes)
        self.calls = 0

    def runs(self) -> list[Run]:
        self.calls += 1
        return list(self._runs)

    def beamtimes(self, run: Run) -> list[Beamtime]:
        return [b for b in self._beamtimes if run.start <= b.start < run.end]


class FailingSchedule:
    def runs(self):
        raise SchedulingError("the scheduling service answered 503 Service Unavailable")

    def beamtimes(self, run):
        raise SchedulingError("the scheduling service answered 503 Service Unavailable")


class BlockingSchedule(FakeSchedule):
    """`runs()` waits until the test releases it, so a command stays running."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def runs(self):
        self.entered.set()
        self.release.wait(WAIT_SECONDS)
        return super().runs()


class FakeDM:
    def __init__(self, storage_root: Path):
        self.storage_root = storage_root
        self.experiments: dict[str, Experiment] = {}
        self.fail: Exception | None = None  # raised by the next mutating call
        self.esaf_calls: list[str] = []

    def _check(self):
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error

    def create_experiment(self, experiment: Experiment) -> tuple[Experiment, bool]:
        self._check()
        if experiment.name in self.experiments:
            return self.experiments[experiment.name], False
        stored = replace(
            experiment, users=(), storage_directory=str(self.storage_root / experiment.year_month / experiment.name)
        )
        self.experiments[experiment.name] = stored
        return stored, True

    def get_experiment(self, name: str) -> Experiment | None:
        return self.experiments.get(name)

    def list_experiments(self) -> list[str]:
        return list(reversed(self.experiments))

    def add_users(self, name, users) -> list[str]:
        self._check()
        experiment = self.experiments[name]
        have = set(experiment.usernames)
        new = [u for u in users if u.username not in have]
        self.experiments[name] = replace(experiment, users=experiment.users + tuple(new))
        return [u.username for u in new]

    def remove_users(self, name, usernames) -> list[str]:
        self._check()
        experiment = self.experiments[name]
        removed = [u for u in experiment.usernames if u in usernames]
        self.experiments[name] = replace(
            experiment, users=tuple(u for u in experiment.users if u.username not in removed)
        )
        return removed

    def delete_experiment(self, name: str) -> str:
        self._check()
        del self.experiments[name]
        return f"deleted experiment {name}"

    def esaf(self, esaf: str):
        self.esaf_calls.append(esaf)
        return [ESAF_PERSON, BO], "10.11578/esaf/281001"


@dataclass
class FakeState:
    selection: str = ""
    emailed_users: dict = field(default_factory=dict)
    rule_ids: dict = field(default_factory=dict)

    def selected(self) -> str:
        return self.selection

    def select(self, name: str) -> None:
        self.selection = name

    def emailed(self, experiment):
        return list(self.emailed_users.get(experiment, []))

    def mark_emailed(self, experiment, usernames):
        self.emailed_users.setdefault(experiment, []).extend(usernames)

    def rules(self, experiment):
        return dict(self.rule_ids.get(experiment, {}))

    def record_rules(self, experiment, rules):
        self.rule_ids.setdefault(experiment, {}).update(rules)

    def forget_rules(self, experiment, usernames):
        for username in usernames:
            self.rule_ids.get(experiment, {}).pop(username, None)

    def forget_experiment(self, experiment):
        self.rule_ids.pop(experiment, None)
        self.emailed_users.pop(experiment, None)


class FakeTransfer:
    def __init__(self):
        self.state = TransferProgress()
        self.starts: list[tuple] = []
        self.forgotten: list[dict] = []

    def start(self, experiment, sources, *, once):
        self.starts.append((experiment.name, dict(sources), once))
        self.state = TransferProgress(state=TransferState.RUNNING)
        return f"transfer of {experiment.name} started"

    def stop(self):
        self.state = TransferProgress(state=TransferState.STOPPED)
        return "transfer stopped"

    def progress(self):
        return self.state

    def resume(self):
        return None

    def forget(self, sources):
        self.forgotten.append(dict(sources))


class FakeTag:
    def __init__(self):
        self.writes: list[tuple[str, dict]] = []
        self.cut: list[str] = []

    def write(self, prefix, values):
        self.writes.append((prefix, dict(values)))
        return list(self.cut)


class FakeAccess:
    def __init__(self):
        self.grants: list[tuple[str, str]] = []
        self.revoked: list[tuple[str, str]] = []

    def grant(self, experiment, users):
        rules = {u.username: f"rule-{u.username}" for u in users if u.email}
        self.grants += [(experiment.name, username) for username in rules]
        return rules

    def revoke(self, experiment, rules):
        self.revoked += [(experiment.name, username) for username in rules]
        return list(rules)

    def url(self, experiment):
        return f"https://app.globus.org/file-manager?path=/{experiment.name}/"


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
async def rig(tmp_path):
    """A DMagicIOC on fakes, shown once as `startup` would, without a server or autosave loop."""
    settings = Settings(
        ioc=IocSettings(prefix="test:", state_dir=tmp_path / "state"),
        beamline=BeamlineSettings(name="2-BM-A,B", station="2BM", contacts=("100001",)),
        dm=DMSettings(data_top_dir=tmp_path / "data", storage_root=tmp_path / "storage"),
        globus=GlobusSettings(enabled=True, collection_id="c", client_id="i"),
    )
    fakes = SimpleNamespace(
        scheduling=FakeSchedule(),
        dm=FakeDM(tmp_path / "storage"),
        state=FakeState(),
        transfer=FakeTransfer(),
        tag=FakeTag(),
        access=FakeAccess(),
    )
    beamline = Beamline(settings, Adapters(**vars(fakes)), clock=lambda: NOW)
    ioc = DMagicIOC("test:", beamline=beamline)
    assert await ioc.engine.background("reading the selected experiment", beamline.read_selection) == ""
    released: list[threading.Event] = []
    yield SimpleNamespace(ioc=ioc, beamline=beamline, settings=settings, fakes=fakes, tmp=tmp_path, released=released)
    for event in released:  # never leave a worker thread waiting
        event.set()


async def until(condition, what: str = "condition") -> None:
    """Poll `condition()` on the event loop until it holds; fail after WAIT_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def blocking_schedule(rig) -> BlockingSchedule:
    schedule = BlockingSchedule()
    rig.released.append(schedule.release)
    rig.beamline.adapters.scheduling = schedule
    return schedule


def status(rig) -> tuple[str, AlarmSeverity]:
    channel = rig.ioc.status.status
    return channel.value, channel.alarm.severity


async def run(channel) -> None:
    await channel.write("Busy")


async def fails(channel) -> str:
    with pytest.raises(CommandFailed) as error:
        await channel.write("Busy")
    return str(error.value)


def assert_idle(rig, command) -> None:
    assert command.value == "Done"
    assert rig.ioc.status.busy.value == "Idle"


async def refreshed_and_created(rig) -> None:
    await run(rig.ioc.proposal.refresh)
    await run(rig.ioc.experiment.create)
    assert rig.ioc.experiment.experiment_name.value == EXPERIMENT


# --------------------------------------------------------------------------- command engine


async def test_command_reads_busy_while_running_and_done_after(rig):
    ioc = rig.ioc
    schedule = blocking_schedule(rig)
    task = asyncio.create_task(run(ioc.proposal.refresh))
    await until(schedule.entered.is_set, "the refresh to reach the scheduling source")
    assert ioc.proposal.refresh.value == "Busy"
    assert ioc.status.busy.value == "Busy"
    assert ioc.status.last_command.value == "Refresh"
    assert status(rig) == ("Refresh running", NO)
    assert not task.done()
    schedule.release.set()
    await asyncio.wait_for(task, WAIT_SECONDS)
    assert_idle(rig, ioc.proposal.refresh)
    assert ioc.proposal.proposal_number.value == "1012039"


async def test_other_pvs_are_served_while_a_command_runs(rig):
    """The use case runs off the event loop: other coroutines go on meanwhile."""
    schedule = blocking_schedule(rig)
    task = asyncio.create_task(run(rig.ioc.proposal.refresh))
    await until(schedule.entered.is_set)
    await rig.ioc.experiment.badges.write("310011")
    assert rig.ioc.experiment.badges.value == "310011"
    schedule.release.set()
    await asyncio.wait_for(task, WAIT_SECONDS)


async def test_success_status(rig):
    await run(rig.ioc.proposal.refresh)
    message, severity = status(rig)
    assert severity == NO
    assert "proposal 1012039" in message and "Müller-Łukasiewicz" in message and "2026-3" in message
    assert rig.ioc.status.last_command.value == "Refresh"
    assert rig.ioc.status.last_error.value == ""
    assert_idle(rig, rig.ioc.proposal.refresh)


async def test_warning_status(rig):
    await rig.ioc.proposal.time_offset_days.write(-10.0)  # 2026-10-05: in the run, nothing scheduled
    await run(rig.ioc.proposal.refresh)
    message, severity = status(rig)
    assert severity == MINOR
    assert "no beamtime scheduled" in message
    assert rig.ioc.status.last_error.value == ""
    assert_idle(rig, rig.ioc.proposal.refresh)


async def test_failure_status_and_last_error_kept(rig):
    ioc = rig.ioc
    error = await fails(ioc.experiment.create)  # nothing refreshed: no active proposal
    message, severity = status(rig)
    assert severity == MAJOR
    assert message.startswith("Create failed: no proposal is active")
    assert error == message
    assert ioc.status.last_error.value == message
    assert ioc.status.last_command.value == "Create"
    assert_idle(rig, ioc.experiment.create)
    assert rig.fakes.dm.experiments == {}

    await run(ioc.proposal.refresh)
    assert status(rig)[1] == NO
    assert ioc.status.last_error.value == message  # kept until the next failure
    assert ioc.status.last_error.alarm.severity == NO  # LastError has its own alarm, not Status's


async def test_status_severity_does_not_spread_to_siblings(rig):
    await fails(rig.ioc.experiment.create)
    assert rig.ioc.status.status.alarm.severity == MAJOR
    for channel in (rig.ioc.status.busy, rig.ioc.status.heartbeat, rig.ioc.experiment.badges):
        assert channel.alarm.severity == NO


async def test_unexpected_exception_is_reported_and_the_ioc_goes_on(rig):
    class Broken(FakeSchedule):
        def runs(self):
            raise KeyError("oops")

    rig.beamline.adapters.scheduling = Broken()
    await fails(rig.ioc.proposal.refresh)
    message, severity = status(rig)
    assert severity == MAJOR
    assert "internal error" in message and "KeyError" in message
    assert_idle(rig, rig.ioc.proposal.refresh)
    rig.beamline.adapters.scheduling = FakeSchedule()
    await run(rig.ioc.proposal.refresh)
    assert status(rig)[1] == NO


async def test_a_second_command_while_one_runs_is_refused_and_changes_nothing(rig):
    ioc = rig.ioc
    schedule = blocking_schedule(rig)
    task = asyncio.create_task(run(ioc.proposal.refresh))
    await until(schedule.entered.is_set)

    error = await fails(ioc.experiment.create)
    message, severity = status(rig)
    assert message == error
    assert "Create refused" in message and "Refresh is running" in message
    assert severity == MAJOR
    assert ioc.status.last_command.value == "Refresh"
    assert ioc.status.busy.value == "Busy"
    assert ioc.proposal.refresh.value == "Busy"
    assert ioc.experiment.create.value == "Done"
    assert rig.fakes.dm.experiments == {}
    assert rig.fakes.state.selection == ""

    # The same command again is refused too, and the running one is untouched.
    await fails(ioc.proposal.refresh)
    assert ioc.proposal.refresh.value == "Busy"
    assert schedule.calls == 0

    schedule.release.set()
    await asyncio.wait_for(task, WAIT_SECONDS)
    assert_idle(rig, ioc.proposal.refresh)
    assert schedule.calls == 1
    assert status(rig)[1] == NO
    assert ioc.proposal.proposal_number.value == "1012039"


async def test_writing_done_to_a_command_does_nothing(rig):
    await rig.ioc.proposal.refresh.write("Done")
    assert rig.fakes.scheduling.calls == 0
    assert rig.ioc.status.last_command.value == ""


# --------------------------------------------------------------------------- proposal


async def test_refresh_publishes_the_proposal(rig):
    p = rig.ioc.proposal
    await run(p.refresh)
    assert p.run.value == "2026-3"
    assert p.proposal_active.value == "Yes"
    assert p.proposal_active.alarm.severity == NO
    assert p.proposal_number.value == "1012039"
    assert p.proposal_title.value == TITLE  # full title, never cut
    assert p.proposal_type.value == "General User"
    assert p.proposal_start.value == "2026-10-14T08:00:00-05:00"
    assert p.proposal_end.value == "2026-10-17T08:00:00-05:00"
    assert (p.proprietary.value, p.mail_in.value) == ("No", "Yes")
    assert p.esaf_number.value == "281001"
    assert p.esaf_doi_number.value == "10.11578/esaf/281001"
    assert p.experiment_year_month.value == "2026-10"
    assert p.user_name.value == "Mei"
    assert p.user_last_name.value == "Müller-Łukasiewicz"
    assert p.user_email.value == "mei@example.edu"
    assert p.user_institution.value == "Example State University"
    assert p.user_badge.value == "310001"
    assert p.user_info_update.value == "2026-10-15T10:00:00-05:00"
    assert p.users_count.value == 2
    assert p.users_names.value == "Mei Müller-Łukasiewicz,Bo Li"  # PI first
    assert p.users_badges.value == "310001,310002"
    assert p.users_emails.value == "mei@example.edu,bo@example.org"
    assert rig.fakes.dm.esaf_calls == ["281001"]
    assert rig.ioc.status.scheduling_health.value == "OK"


async def test_refresh_with_nothing_scheduled(rig):
    p = rig.ioc.proposal
    await run(p.refresh)
    await p.time_offset_days.write(-10.0)
    await run(p.refresh)
    assert p.proposal_active.value == "No"
    assert p.proposal_active.alarm.severity == MINOR
    assert p.run.value == "2026-3"
    for channel in (p.proposal_number, p.proposal_title, p.user_name, p.user_badge, p.users_names, p.esaf_number):
        assert channel.value == ""
    assert p.users_count.value == 0
    assert p.user_info_update.value == "2026-10-15T10:00:00-05:00"
    assert status(rig)[1] == MINOR


async def test_refresh_outside_every_run(rig):
    p = rig.ioc.proposal
    await p.time_offset_days.write(100.0)
    await run(p.refresh)
    assert (p.run.value, p.proposal_active.value) == ("", "No")
    assert p.proposal_active.alarm.severity == MINOR
    assert "no run" in status(rig)[0]


async def test_time_offset_looks_ahead(rig):
    await rig.ioc.proposal.time_offset_days.write(5.0)  # 2026-10-20 10:00 CDT
    await run(rig.ioc.proposal.refresh)
    assert rig.ioc.proposal.proposal_number.value == "1012040"
    assert rig.ioc.proposal.users_names.value == "Cy Ngo"


async def test_scheduling_failure_keeps_the_last_proposal(rig):
    ioc = rig.ioc
    await run(ioc.proposal.refresh)
    rig.beamline.adapters.scheduling = FailingSchedule()
    error = await fails(ioc.proposal.refresh)
    assert "503" in error
    assert status(rig) == (error, MAJOR)
    assert ioc.status.last_error.value == error
    assert ioc.proposal.proposal_number.value == "1012039"
    assert ioc.proposal.proposal_title.value == TITLE
    assert ioc.proposal.proposal_active.value == "Yes"
    assert ioc.proposal.users_names.value == "Mei Müller-Łukasiewicz,Bo Li"
    await ioc.status.show()
    assert ioc.status.scheduling_health.value == "Error"
    assert ioc.status.scheduling_health.alarm.severity == MAJOR
    assert ioc.status.dm_health.value == "OK"

    rig.beamline.adapters.scheduling = FakeSchedule()  # the service is back: the next refresh recovers
    await run(ioc.proposal.refresh)
    await ioc.status.show()
    assert ioc.status.scheduling_health.value == "OK"
    assert ioc.status.scheduling_health.alarm.severity == NO


async def test_scheduling_failure_before_any_proposal(rig):
    rig.beamline.adapters.scheduling = FailingSchedule()
    await fails(rig.ioc.proposal.refresh)
    assert rig.ioc.proposal.proposal_number.value == ""
    assert rig.ioc.status.scheduling_health.value == "Error"


async def test_health_pvs_start_ok_or_disabled(rig):
    s = rig.ioc.status
    assert (s.scheduling_health.value, s.dm_health.value, s.globus_health.value, s.email_health.value) == (
        "OK", "OK", "OK", "Disabled")  # fmt: skip


# --------------------------------------------------------------------------- experiment


async def test_create_makes_and_selects_the_experiment(rig):
    ioc, dm = rig.ioc, rig.fakes.dm
    await refreshed_and_created(rig)
    e = ioc.experiment
    assert list(dm.experiments) == [EXPERIMENT]
    assert e.experiment_exists.value == "Yes"
    assert e.data_directory.value == str(rig.tmp / "data" / EXPERIMENT)
    assert e.storage_directory.value == str(rig.tmp / "storage" / "2026-10" / EXPERIMENT)
    assert e.experiment_users.value == "d310001,d310002,d310009,d100001"  # PI, proposal, ESAF, contacts
    assert e.experiments.value == EXPERIMENT
    assert e.globus_url.value == f"https://app.globus.org/file-manager?path=/{EXPERIMENT}/"
    assert rig.fakes.state.selection == EXPERIMENT
    assert sorted(u for _, u in rig.fakes.access.grants) == ["d310001", "d310002", "d310009"]  # those with e-mail
    message, severity = status(rig)
    assert severity == NO
    assert message.startswith(f"created experiment {EXPERIMENT} with 4 users")
    assert_idle(rig, e.create)


async def test_create_again_selects_and_duplicates_nothing(rig):
    await refreshed_and_created(rig)
    await run(rig.ioc.experiment.create)
    assert list(rig.fakes.dm.experiments) == [EXPERIMENT]
    assert rig.fakes.dm.experiments[EXPERIMENT].usernames == ("d310001", "d310002", "d310009", "d100001")
    assert status(rig) == (f"experiment {EXPERIMENT} exists: selected it; users added: none; Globus access for 3 users",
                           NO)  # fmt: skip


async def test_create_dm_failure(rig):
    await run(rig.ioc.proposal.refresh)
    rig.fakes.dm.fail = DMError("DM service unreachable")
    error = await fails(rig.ioc.experiment.create)
    assert "DM service unreachable" in error
    assert rig.ioc.status.dm_health.value == "Error"
    assert rig.ioc.status.dm_health.alarm.severity == MAJOR
    assert rig.ioc.experiment.experiment_name.value == ""
    assert rig.fakes.state.selection == ""
    await run(rig.ioc.experiment.create)  # a rerun completes the job
    assert rig.ioc.experiment.experiment_name.value == EXPERIMENT
    assert rig.ioc.status.dm_health.value == "OK"


async def test_select(rig):
    ioc, dm = rig.ioc, rig.fakes.dm
    await refreshed_and_created(rig)
    other = "2026-10-Ngo-1012040"
    dm.experiments[other] = Experiment(other, title="Later proposal", gup="1012040", start=LATER.start,
                                       year_month="2026-10", storage_directory="/s/" + other)  # fmt: skip
    await ioc.experiment.select_name.write(other)
    await run(ioc.experiment.select)
    assert ioc.experiment.experiment_name.value == other
    assert ioc.experiment.storage_directory.value == "/s/" + other
    assert ioc.experiment.experiments.value == f"{other}\n{EXPERIMENT}"
    assert ioc.proposal.proposal_number.value == "1012040"  # the proposal it belongs to
    assert ioc.proposal.users_names.value == "Cy Ngo"
    assert rig.fakes.state.selection == other
    assert status(rig)[1] == NO
    assert_idle(rig, ioc.experiment.select)


@pytest.mark.parametrize("name", ["2026-01-Nobody-0", "../etc", "", "a/b"])
async def test_select_refusals_change_nothing(rig, name):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    await ioc.experiment.select_name.write(name)
    error = await fails(ioc.experiment.select)
    assert error.startswith("Select failed:")
    assert status(rig) == (error, MAJOR)
    assert ioc.experiment.experiment_name.value == EXPERIMENT
    assert rig.fakes.state.selection == EXPERIMENT
    assert ioc.proposal.proposal_number.value == "1012039"


async def test_add_user(rig):
    ioc, dm, access = rig.ioc, rig.fakes.dm, rig.fakes.access
    await refreshed_and_created(rig)
    grants = len(access.grants)
    await ioc.experiment.badges.write("310011, 310012")
    await run(ioc.experiment.add_user)
    assert dm.experiments[EXPERIMENT].usernames[-2:] == ("d310011", "d310012")
    assert ioc.experiment.experiment_users.value.endswith(",d310011,d310012")
    message, severity = status(rig)
    assert severity == NO and message.startswith(f"gave d310011, d310012 access to {EXPERIMENT}")
    assert len(access.grants) == grants  # no e-mail known for them: no Globus rule

    await run(ioc.experiment.add_user)  # again: reported, nothing changes
    assert status(rig) == (f"d310011, d310012 already had access to {EXPERIMENT}", NO)
    assert dm.experiments[EXPERIMENT].usernames.count("d310011") == 1


async def test_add_user_known_from_the_proposal_gets_globus_access(rig):
    await run(rig.ioc.proposal.refresh)
    await rig.ioc.experiment.manual_badges.write("310050")
    await run(rig.ioc.experiment.create_manual)
    before = list(rig.fakes.access.grants)
    await rig.ioc.experiment.badges.write("310001")
    await run(rig.ioc.experiment.add_user)
    name = rig.ioc.experiment.experiment_name.value
    assert rig.fakes.access.grants == [*before, (name, "d310001")]


@pytest.mark.parametrize("badges", ["12a", "310011,12a", "", " , ", "310011,,310012", "d310011"])
async def test_add_user_bad_badge_changes_nothing(rig, badges):
    ioc, dm = rig.ioc, rig.fakes.dm
    await refreshed_and_created(rig)
    users = dm.experiments[EXPERIMENT].users
    grants = list(rig.fakes.access.grants)
    await ioc.experiment.badges.write(badges)
    error = await fails(ioc.experiment.add_user)
    assert "Badges" in error
    assert status(rig) == (error, MAJOR)
    assert dm.experiments[EXPERIMENT].users == users
    assert rig.fakes.access.grants == grants
    assert ioc.experiment.experiment_users.value == "d310001,d310002,d310009,d100001"
    assert_idle(rig, ioc.experiment.add_user)


async def test_add_user_without_a_selected_experiment(rig):
    await rig.ioc.experiment.badges.write("310011")
    assert "no experiment is selected" in await fails(rig.ioc.experiment.add_user)


async def test_remove_user(rig):
    ioc, dm, access = rig.ioc, rig.fakes.dm, rig.fakes.access
    await refreshed_and_created(rig)
    await ioc.experiment.badges.write("310002")
    await run(ioc.experiment.remove_user)
    assert dm.experiments[EXPERIMENT].usernames == ("d310001", "d310009", "d100001")
    assert ioc.experiment.experiment_users.value == "d310001,d310009,d100001"
    assert access.revoked == [(EXPERIMENT, "d310002")]
    assert rig.fakes.state.rules(EXPERIMENT).keys() == {"d310001", "d310009"}
    message, severity = status(rig)
    assert severity == NO and "removed access of d310002" in message and "1 Globus rules deleted" in message

    await run(ioc.experiment.remove_user)  # again: nobody to remove
    assert status(rig) == (f"none of d310002 had access to {EXPERIMENT}", NO)
    assert access.revoked == [(EXPERIMENT, "d310002")]


async def test_remove_user_bad_badge_changes_nothing(rig):
    await refreshed_and_created(rig)
    await rig.ioc.experiment.badges.write("310002,x")
    await fails(rig.ioc.experiment.remove_user)
    assert "d310002" in rig.fakes.dm.experiments[EXPERIMENT].usernames
    assert rig.fakes.access.revoked == []


async def test_delete_needs_the_exact_confirmation(rig):
    e = rig.ioc.experiment
    await refreshed_and_created(rig)
    for confirm in ("", "wrong", EXPERIMENT + "x", EXPERIMENT.lower()):
        await e.delete_confirm.write(confirm)
        error = await fails(e.delete)
        assert "DeleteConfirm must equal ExperimentName" in error
        assert status(rig) == (error, MAJOR)
        assert e.delete_confirm.value == ""  # good for one attempt only
        assert list(rig.fakes.dm.experiments) == [EXPERIMENT]
        assert e.experiment_name.value == EXPERIMENT
        assert_idle(rig, e.delete)
    assert rig.fakes.access.revoked == []


async def test_delete_refused_while_a_transfer_runs(rig):
    e = rig.ioc.experiment
    await refreshed_and_created(rig)
    rig.fakes.transfer.state = TransferProgress(state=TransferState.RUNNING, files_done=1, files_total=3)
    await e.delete_confirm.write(EXPERIMENT)
    assert "DaqStop first" in await fails(e.delete)
    assert e.delete_confirm.value == ""
    assert list(rig.fakes.dm.experiments) == [EXPERIMENT]


async def test_delete(rig):
    e = rig.ioc.experiment
    await refreshed_and_created(rig)
    await e.delete_confirm.write(f" {EXPERIMENT} ")
    await run(e.delete)
    assert rig.fakes.dm.experiments == {}
    assert e.delete_confirm.value == ""
    assert (e.experiment_name.value, e.experiment_exists.value) == ("", "No")
    assert (e.storage_directory.value, e.experiment_users.value, e.experiments.value) == ("", "", "")
    assert rig.fakes.state.selection == ""
    assert sorted(u for _, u in rig.fakes.access.revoked) == ["d310001", "d310002", "d310009"]
    message, severity = status(rig)
    assert severity == NO and message.startswith(f"deleted experiment {EXPERIMENT}")
    assert "no experiment is selected" in await fails(e.delete)  # nothing left to delete


async def test_create_manual_defaults(rig):
    e = rig.ioc.experiment
    await run(e.create_manual)
    assert e.experiment_name.value == "2026-10-Staff-0"
    assert e.experiment_users.value == "d100001"
    assert status(rig)[1] == NO


async def test_create_manual_bad_date_changes_nothing(rig):
    e = rig.ioc.experiment
    await e.manual_start.write("14/10/2026")
    assert "Manual:Start" in await fails(e.create_manual)
    assert rig.fakes.dm.experiments == {}


# --------------------------------------------------------------------------- tag


EXPECTED_TAG = {
    "UserName": "Mei",
    "UserLastName": "Müller-Łukasiewicz",
    "UserEmail": "mei@example.edu",
    "UserBadge": "310001",
    "UserInstitution": "Example State University",
    "UserInfoUpdate": "2026-10-15T10:00:00-05:00",
    "ProposalNumber": "1012039",
    "ProposalTitle": TITLE,
    "ESAFNumber": "281001",
    "ESAFDOINumber": "10.11578/esaf/281001",
    "ExperimentYearMonth": "2026-10",
}


async def test_tag_writes_the_user_info(rig):
    p = rig.ioc.proposal
    await run(p.refresh)
    await p.tag_prefix.write("2bmb:TomoScan:")
    await run(p.tag)
    assert rig.fakes.tag.writes == [("2bmb:TomoScan:", EXPECTED_TAG)]
    assert status(rig) == ("tagged 2bmb:TomoScan: with proposal 1012039", NO)
    assert_idle(rig, p.tag)


async def test_tag_reports_cut_fields(rig):
    p = rig.ioc.proposal
    await run(p.refresh)
    await p.tag_prefix.write("2bmb:TomoScan:")
    rig.fakes.tag.cut = ["UserLastName", "ProposalTitle"]
    await run(p.tag)
    message, severity = status(rig)
    assert severity == MINOR
    assert "UserLastName" in message and "ProposalTitle" in message


async def test_tag_refusals(rig):
    p = rig.ioc.proposal
    await p.tag_prefix.write("2bmb:TomoScan:")
    assert "no proposal is published" in await fails(p.tag)
    await run(p.refresh)
    await p.tag_prefix.write("  ")
    assert "TagPrefix is empty" in await fails(p.tag)
    assert rig.fakes.tag.writes == []


# --------------------------------------------------------------------------- DAQ


async def test_daq_start_and_progress(rig):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    await run(ioc.daq.daq_start)
    storage = rig.tmp / "storage" / "2026-10" / EXPERIMENT
    raw = str(rig.tmp / "data" / EXPERIMENT)
    assert rig.fakes.transfer.starts == [
        (EXPERIMENT, {raw: str(storage / "data"), f"{raw}_rec": str(storage / "analysis")}, False)
    ]
    progress = TransferProgress(state=TransferState.RUNNING, files_done=1, files_total=4, bytes_done=2e6, rate_mb_s=1.5,
                                last_file="a.h5")  # fmt: skip
    await ioc.daq.show(progress)
    assert (ioc.daq.daq_state.value, ioc.daq.files_done.value, ioc.daq.percent.value) == ("Running", 1, 25.0)
    failed = replace(progress, state=TransferState.ERROR, message="copy of b.h5 failed: disk full")
    await ioc.daq.show(failed)
    await ioc.daq.tell(failed)
    assert ioc.daq.said == failed.message
    assert ioc.daq.daq_state.alarm.severity == MAJOR
    assert status(rig) == ("copy of b.h5 failed: disk full", MAJOR)
