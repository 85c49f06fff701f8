"""The PV groups in-process, with fake adapters: no network, no subprocess, no CA server.

Each test gets `rig` (tests/ioc/conftest.py): `Beamline` on the fakes of tests/fakes/ports.py and a
`DMagicIOC` around it; it writes the command PVs directly (caproto runs the putter inside `write`; a
failed command raises `CommandFailed` out of it) and reads `channel.value` and `channel.alarm.severity`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from dmagic_ioc.ioc.domain.errors import DMError
from dmagic_ioc.ioc.domain.experiment import Experiment
from dmagic_ioc.ioc.domain.ports import TransferProgress, TransferState

from ..fakes.ports import EXPERIMENT, LATER, TITLE, FailingSchedule, FakeSchedule
from ..helpers import until
from .rig import (
    MAJOR,
    MINOR,
    NO,
    WAIT_SECONDS,
    assert_idle,
    blocking_schedule,
    fails,
    refreshed_and_created,
    run,
    status,
)

# --------------------------------------------------------------------------- command engine


async def test_command_reads_busy_while_running_and_done_after(rig):
    ioc = rig.ioc
    schedule = blocking_schedule(rig)
    task = asyncio.create_task(run(ioc.proposal.refresh))
    await until(schedule.entered.is_set, what="the refresh to reach the scheduling source")
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
    assert message.startswith("Create failed: no beamtime is scheduled now")
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

    rig.services.adapters.scheduling = Broken()
    await fails(rig.ioc.proposal.refresh)
    message, severity = status(rig)
    assert severity == MAJOR
    assert "internal error" in message and "KeyError" in message
    assert_idle(rig, rig.ioc.proposal.refresh)
    rig.services.adapters.scheduling = FakeSchedule()
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
    rig.services.adapters.scheduling = FailingSchedule()
    error = await fails(ioc.proposal.refresh)
    assert "503" in error
    assert status(rig) == (error, MAJOR)
    assert ioc.status.last_error.value == error
    assert ioc.proposal.proposal_number.value == "1012039"
    assert ioc.proposal.proposal_title.value == TITLE
    assert ioc.proposal.proposal_active.value == "Yes"
    assert ioc.proposal.users_names.value == "Mei Müller-Łukasiewicz,Bo Li"
    assert ioc.status.scheduling_health.value == "Error"
    assert ioc.status.scheduling_health.alarm.severity == MAJOR
    assert ioc.status.dm_health.value == "OK"

    rig.services.adapters.scheduling = FakeSchedule()  # the service is back: the next refresh recovers
    await run(ioc.proposal.refresh)
    assert ioc.status.scheduling_health.value == "OK"
    assert ioc.status.scheduling_health.alarm.severity == NO


async def test_scheduling_failure_before_any_proposal(rig):
    rig.services.adapters.scheduling = FailingSchedule()
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


@pytest.mark.parametrize("badges", ["12a", "310011,12a", "", " , ", "d310011"])
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
    assert "no proposal is shown to tag" in await fails(p.tag)
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
    rig.fakes.transfer.state = progress
    await rig.supervisor.poll_transfer()
    assert (ioc.daq.daq_state.value, ioc.daq.files_done.value, ioc.daq.percent.value) == ("Running", 1, 25.0)
    failed = replace(progress, state=TransferState.ERROR, message="copy of b.h5 failed: disk full")
    rig.fakes.transfer.state = failed
    await rig.supervisor.poll_transfer()
    assert status(rig) == (failed.message, MAJOR)
    assert ioc.daq.daq_state.alarm.severity == MAJOR
    assert status(rig) == ("copy of b.h5 failed: disk full", MAJOR)
