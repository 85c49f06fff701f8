"""Failures half-way through a command: what was done is kept, and a rerun completes the job (docs/interface.md
section 8)."""

from __future__ import annotations

from dataclasses import replace

from dmagic_ioc.ioc.domain.errors import DMError
from dmagic_ioc.ioc.domain.ports import TransferProgress, TransferState

from ..fakes.ports import EXPERIMENT, FlakyAccess
from .rig import MAJOR, MINOR, NO, fails, run, status


async def test_globus_failing_half_way_records_the_rules_made_and_a_rerun_completes(rig):
    access = FlakyAccess(failing={"d310002"})
    rig.services.adapters.access = access
    await run(rig.ioc.proposal.refresh)
    error = await fails(rig.ioc.experiment.create)
    assert "no Globus identity for d310002" in error and status(rig)[1] == MAJOR
    # the experiment exists and is selected; the rules that were made are recorded for RemoveUser/Delete
    assert rig.ioc.experiment.experiment_name.value == EXPERIMENT
    assert set(rig.fakes.state.rules(EXPERIMENT)) == {"d310001", "d310009"}
    assert rig.supervisor.report.health["Globus"] == "Error"

    access.failing.clear()
    await run(rig.ioc.experiment.create)
    assert set(rig.fakes.state.rules(EXPERIMENT)) == {"d310001", "d310002", "d310009"}
    assert rig.supervisor.report.health["Globus"] == "OK"


async def test_add_user_rerun_after_a_globus_failure_grants_access(rig):
    await run(rig.ioc.proposal.refresh)
    await run(rig.ioc.experiment.create)
    access = FlakyAccess(failing={"d310002"})
    rig.services.adapters.access = access
    rig.fakes.state.forget_rules(EXPERIMENT, ["d310002"])
    await rig.ioc.experiment.badges.write("310002")
    await fails(rig.ioc.experiment.add_user)  # DM already has the user; Globus fails
    access.failing.clear()
    await run(rig.ioc.experiment.add_user)  # DM: nothing new, but Globus is asked again
    assert "d310002" in rig.fakes.state.rules(EXPERIMENT)
    assert status(rig)[1] == NO


async def test_users_dm_refuses_are_a_warning_and_the_others_get_access(rig):
    dm = rig.fakes.dm
    real_add = dm.add_users

    def add_users_refusing_one(name, users):
        added = real_add(name, [u for u in users if u.username != "d310009"])
        raise DMError("d310009 is not a DM user", done=added)

    dm.add_users = add_users_refusing_one
    await run(rig.ioc.proposal.refresh)
    await run(rig.ioc.experiment.create)
    message, severity = status(rig)
    assert severity == MINOR and "d310009 is not a DM user" in message
    assert "d310009" not in dm.experiments[EXPERIMENT].usernames
    assert "d310001" in dm.experiments[EXPERIMENT].usernames
    assert "d310009" not in rig.fakes.state.rules(EXPERIMENT)  # no Globus rule without DM access


async def test_delete_is_refused_while_a_transfer_retries_and_forgets_the_transfer_after(rig):
    await run(rig.ioc.proposal.refresh)
    await run(rig.ioc.experiment.create)
    rig.fakes.transfer.state = TransferProgress(state=TransferState.ERROR, message="disk full")
    await rig.ioc.experiment.delete_confirm.write(EXPERIMENT)
    assert "DaqStop first" in await fails(rig.ioc.experiment.delete)
    assert EXPERIMENT in rig.fakes.dm.experiments

    rig.fakes.transfer.state = TransferProgress(state=TransferState.STOPPED)
    await rig.ioc.experiment.delete_confirm.write(EXPERIMENT)
    await run(rig.ioc.experiment.delete)
    assert len(rig.fakes.transfer.forgotten) == 1
    assert {dest.rsplit("/", 1)[-1] for dest in rig.fakes.transfer.forgotten[0].values()} == {"data", "analysis"}


async def test_a_selection_dm_could_not_read_at_startup_is_read_when_needed(rig):
    await run(rig.ioc.proposal.refresh)
    await run(rig.ioc.experiment.create)
    rig.supervisor.state = replace(rig.supervisor.state, experiment=None)  # as after a startup with DM unreachable
    await run(rig.ioc.daq.daq_start)
    assert rig.fakes.transfer.starts[-1][0] == EXPERIMENT


async def test_an_unreadable_transfer_status_is_an_error_not_a_crash(rig):
    def broken():
        raise DMError("DM service did not answer within 10 s")

    rig.fakes.transfer.progress = broken
    settings = rig.services.settings  # the APS DM backend's DAQ: reading its status is a contact with DM
    rig.services.settings = replace(settings, dm=replace(settings.dm, backend="aps"))
    await rig.supervisor.poll_transfer()
    progress = rig.supervisor.progress
    assert progress.state == TransferState.ERROR and "did not answer" in progress.message
    assert rig.supervisor.report.health["DM"] == "Error"
