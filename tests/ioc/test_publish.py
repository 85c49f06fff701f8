"""What a command's end costs: the transfer's progress is read after the commands that move the transfer only
(the poll shows it after the others, as it does anyway); a group shows a View whose part changed."""

from __future__ import annotations

from dmagic_ioc.ioc.domain.ports import TransferProgress, TransferState

from .rig import fails, refreshed_and_created, run


def counting_progress_reads(rig, monkeypatch) -> list[TransferProgress]:
    """The transfer's progress as each read returned it."""
    transfer, reads = rig.fakes.transfer, []
    read = transfer.progress

    def counted() -> TransferProgress:
        reads.append(read())
        return reads[-1]

    monkeypatch.setattr(transfer, "progress", counted)
    return reads


async def test_a_command_that_cannot_move_the_transfer_does_not_read_its_progress(rig, monkeypatch):
    reads = counting_progress_reads(rig, monkeypatch)
    await rig.ioc.proposal.tag_prefix.write("")
    await fails(rig.ioc.proposal.tag)  # refused before any I/O
    await run(rig.ioc.proposal.refresh)
    assert reads == []


async def test_daq_start_shows_the_transfer_running_when_its_put_completes(rig, monkeypatch):
    await refreshed_and_created(rig)
    reads = counting_progress_reads(rig, monkeypatch)
    await run(rig.ioc.daq.daq_start)
    assert rig.ioc.daq.daq_state.value == "Running" and reads[-1].state == TransferState.RUNNING
    await run(rig.ioc.daq.daq_stop)
    assert rig.ioc.daq.daq_state.value == "Stopped"


async def test_a_view_is_shown_by_the_groups_whose_part_changed(rig):
    ioc = rig.ioc
    await run(ioc.proposal.refresh)
    proposal = ioc.proposal.proposal_number.value
    rig.fakes.transfer.state = TransferProgress(state=TransferState.RUNNING, files_done=3, files_total=4)
    await rig.supervisor.poll_transfer()  # only the progress changed: the DAQ group shows it
    assert (ioc.daq.daq_state.value, ioc.daq.files_done.value) == ("Running", 3)
    assert ioc.proposal.proposal_number.value == proposal
    rig.fakes.transfer.state = TransferProgress()
    await rig.supervisor.poll_transfer()
    assert (ioc.daq.daq_state.value, ioc.daq.files_done.value) == ("Stopped", 0)
