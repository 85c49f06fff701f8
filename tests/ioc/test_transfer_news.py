"""The transfer's news on Status: the end of an upload keeps the warning its Upload raised, with its text and
its dataset; what a command's outcome already said is not said again; background work with nothing to say
logs nothing."""

from __future__ import annotations

import asyncio
import logging
import threading

from dmagic_ioc.ioc.app.messages import Delete, RefreshAutomatic, ResumeTransfer
from dmagic_ioc.ioc.domain.ports import SentFile, TransferProgress, TransferState

from ..fakes.ports import EXPERIMENT
from ..helpers import until
from ..usecases.test_catalog import ENERGY, GONE, with_metadata
from .rig import MAJOR, MINOR, NO, WAIT_SECONDS, refreshed_and_created, run, status

SUMMARY = f"upload of {EXPERIMENT} finished: 1 files, 0.0 MB in 0.5 s"
DATASET = f"dataset {EXPERIMENT}-1.json: 1 file, 7 bytes"
MISSING = "metadata: bl:Gone did not answer, recorded as missing"


def upload_finished(rig, state: TransferState = TransferState.STOPPED, message: str = SUMMARY) -> None:
    """The fake transfer sent one file and ended, saying `message`, as the local transfer does."""
    storage = rig.tmp / "storage" / "2026-10" / EXPERIMENT
    rig.fakes.transfer.sent.append(SentFile(f"{storage}/data/a.h5", 7, 1_760_000_000.0, 10.0))
    rig.fakes.transfer.state = TransferProgress(state=state, files_done=1, files_total=1, message=message)


class EndsDuringTheStartSnapshot:
    """Metadata whose first read (the Upload's start snapshot) waits until released, the upload ending
    meanwhile: what an unanswered PV's 2 s timeout does to a short upload."""

    def __init__(self, rig):
        self.rig, self.reads = rig, 0
        self.reading, self.release = threading.Event(), threading.Event()
        rig.released.append(self.release)

    def read(self, pvs):
        self.reads += 1
        if self.reads == 1:
            upload_finished(self.rig)
            self.reading.set()
            self.release.wait(WAIT_SECONDS)
        return {key: GONE if key == "gone" else ENERGY for key in pvs}


async def test_an_upload_that_ends_while_its_command_runs_keeps_the_warning_and_says_the_dataset(rig):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    with_metadata(rig, rig.fakes, {"energy": ENERGY, "gone": GONE})
    metadata = rig.services.adapters.metadata = EndsDuringTheStartSnapshot(rig)
    upload = asyncio.create_task(run(ioc.daq.upload))
    await until(metadata.reading.is_set, WAIT_SECONDS, what="the start snapshot")
    poll = asyncio.create_task(rig.supervisor.poll_transfer())  # the transfer has ended; the Upload still runs
    await until(lambda: ioc.daq.daq_state.value == "Stopped", WAIT_SECONDS, what="the end shown")
    metadata.release.set()
    await upload
    await poll
    said = status(rig)
    assert said[1] == MINOR and said[0].startswith(SUMMARY), said
    assert MISSING in said[0] and DATASET in said[0]
    for _ in range(3):  # the next polls say nothing more: the summary was said with its dataset
        await rig.supervisor.poll_transfer()
    assert status(rig) == said


async def test_the_end_of_an_upload_never_lowers_the_warning_of_its_upload(rig):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    metadata = with_metadata(rig, rig.fakes, {"energy": ENERGY, "gone": GONE})
    await run(ioc.daq.upload)
    assert status(rig)[1] == MINOR and "bl:Gone" in status(rig)[0]
    metadata.answers["gone"] = ENERGY  # it answers at the end: the dataset still names it (missing at the start)
    upload_finished(rig)
    await rig.supervisor.poll_transfer()
    assert status(rig) == (f"{SUMMARY}; {DATASET}; {MISSING}", MINOR)


async def test_after_another_command_the_end_of_an_upload_says_its_own_severity(rig):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    metadata = with_metadata(rig, rig.fakes, {"energy": ENERGY, "gone": GONE})
    await run(ioc.daq.upload)
    await run(ioc.proposal.refresh)  # the next command says otherwise
    assert status(rig)[1] == NO
    metadata.answers["gone"] = ENERGY
    upload_finished(rig)
    await rig.supervisor.poll_transfer()
    assert status(rig) == (f"{SUMMARY}; {DATASET}; {MISSING}", MINOR)  # its dataset's own warning


async def test_the_quiet_end_of_an_earlier_upload_never_replaces_a_later_commands_outcome(rig):
    """A script that ran a command after Upload reads that command's outcome, not the upload's late news."""
    ioc = rig.ioc
    await refreshed_and_created(rig)
    await run(ioc.daq.upload)
    await run(ioc.proposal.refresh)
    said = status(rig)
    assert said[1] == NO and said[0].startswith("proposal "), said
    upload_finished(rig)
    await rig.supervisor.poll_transfer()
    assert status(rig) == said
    assert ioc.daq.daq_state.value == "Stopped"  # the end shows where it belongs


async def test_an_upload_that_ends_in_error_says_it_major_with_its_dataset(rig):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    await run(ioc.daq.upload)
    upload_finished(rig, TransferState.ERROR, "copy of b.h5 failed: Permission denied")
    await rig.supervisor.poll_transfer()
    text, severity = status(rig)
    assert severity == MAJOR and text.startswith("copy of b.h5 failed: Permission denied") and DATASET in text
    assert ioc.daq.daq_state.value == "Error"


async def test_daq_stop_keeps_its_warning_and_dataset_and_a_later_error_is_still_said(rig):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    with_metadata(rig, rig.fakes, {"energy": ENERGY, "gone": GONE})
    await run(ioc.daq.daq_start)
    assert status(rig)[1] == MINOR
    await rig.supervisor.poll_transfer()
    upload_finished(rig, TransferState.RUNNING, "")
    await run(ioc.daq.daq_stop)
    stopped = status(rig)
    assert stopped[1] == MINOR and MISSING in stopped[0] and DATASET in stopped[0], stopped
    rig.fakes.transfer.state = TransferProgress(message="transfer stopped")  # the stop, as the transfer shows it
    await rig.supervisor.poll_transfer()
    assert status(rig) == stopped  # DaqStop's outcome said it already
    await run(ioc.daq.daq_start)
    rig.fakes.transfer.state = TransferProgress(state=TransferState.ERROR, message="storage gone")
    await rig.supervisor.poll_transfer()
    assert status(rig) == ("storage gone", MAJOR)  # news raises a warning, never lowers it


async def test_an_upload_whose_experiment_is_deleted_before_its_end_is_seen_says_so_once(rig):
    ioc = rig.ioc
    await refreshed_and_created(rig)
    await run(ioc.daq.upload)
    upload_finished(rig)
    await rig.supervisor.work(Delete(EXPERIMENT), shown=False)  # a Delete before the poll that sees the end
    await rig.supervisor.poll_transfer()
    said = status(rig)
    assert said == (f"{SUMMARY}; experiment {EXPERIMENT} was deleted before its upload was catalogued: no dataset "
                    "made", MINOR)  # fmt: skip
    for _ in range(3):  # the next polls say nothing more (no "cataloguing the upload failed" twice a second)
        await rig.supervisor.poll_transfer()
    assert status(rig) == said and not rig.supervisor.state.uploading


async def test_background_work_with_nothing_to_say_logs_nothing(rig, caplog):
    with caplog.at_level(logging.INFO, "dmagic_ioc.ioc.app.supervisor"):
        assert (await rig.supervisor.work(ResumeTransfer(), shown=False)).failure == ""
        await rig.supervisor.work(RefreshAutomatic(0.0), shown=False)
    assert not [m for m in caplog.messages if m.endswith(": ")], caplog.messages
