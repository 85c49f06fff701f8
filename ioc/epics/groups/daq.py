"""Data transfer PVs: DaqStart/DaqStop/Upload and the progress of the running transfer."""

from __future__ import annotations

import logging

from caproto import AlarmSeverity

from ...domain.ports import TransferProgress, TransferState
from ..pvs import COMMAND_STATES, command, double, enum, long, text, update
from .base import CommandGroup

log = logging.getLogger(__name__)

DAQ_STATES = tuple(state.value for state in TransferState)  # Stopped, Running, Error
DAQ_SEVERITY = {
    TransferState.STOPPED: AlarmSeverity.NO_ALARM,
    TransferState.RUNNING: AlarmSeverity.NO_ALARM,
    TransferState.ERROR: AlarmSeverity.MAJOR_ALARM,
}
POLL_SECONDS = 0.5


class DaqGroup(CommandGroup):
    """Continuous transfer (DAQ) and one-shot upload of the raw and _rec folders into DM storage."""

    daq_state = enum("DaqState", DAQ_STATES, "Transfer state; Error carries MAJOR")
    files_done = long("Daq:FilesDone", "Files transferred")
    files_total = long("Daq:FilesTotal", "Files seen")
    bytes_done = double("Daq:Bytes", "Bytes sent, counted during each copy", precision=0)
    percent = double("Daq:Percent", "% of ready bytes sent (100: caught up)", precision=1)
    rate = double("Daq:Rate", "MB/s over the last few seconds", precision=1)
    last_file = text("Daq:LastFile", 1024, "Last file transferred")

    daq_start = command("DaqStart", "Start continuous transfer of the raw and _rec directories")
    daq_stop = command("DaqStop", "Stop the continuous transfer")
    upload = command("Upload", "One-shot transfer of the files present now")

    said = ""  # the transfer's last message shown on Status
    started_by = ""  # the transfer command that ran last: the transfer's news is news of it

    @daq_start.putter
    async def daq_start(self, instance, value):
        return await self.run_transfer_command(instance, value, self.beamline.daq_start)

    @daq_stop.putter
    async def daq_stop(self, instance, value):
        return await self.run_transfer_command(instance, value, self.beamline.daq_stop)

    @upload.putter
    async def upload(self, instance, value):
        return await self.run_transfer_command(instance, value, self.beamline.upload)

    async def run_transfer_command(self, instance, value, use_case):
        if value == COMMAND_STATES[1]:
            self.said = ""  # a new transfer's messages are news even when worded as the last ones
            self.started_by = instance.pvspec.name  # before it runs: its news may come as soon as it ends
        return await self.run_command(instance, value, use_case)

    @daq_state.startup
    async def daq_state(self, instance, async_lib):
        """Resume a transfer that was running before a restart, then show its progress twice a second."""
        await self.engine.ready.wait()
        await self.engine.background("resuming the transfer", self.beamline.resume_transfer, say_outcome=True)
        while True:
            await self.poll()
            await async_lib.library.sleep(POLL_SECONDS)

    async def poll(self) -> None:
        """Show the transfer's progress; say an error or its end once (an upload's end with its dataset)."""
        progress = await self.engine.query("reading the transfer's progress", self.beamline.transfer_progress)
        if progress is None:
            return
        await self.show(progress)
        if progress.state != TransferState.RUNNING and self.beamline.uploading:
            await self.catalogue_upload(progress)
        else:
            await self.tell(progress)

    async def catalogue_upload(self, progress: TransferProgress) -> None:
        """An upload ended: its summary (or error) is said at once, as DaqState shows the end, then again
        with its dataset, at least MAJOR after an error and at least what the Upload raised."""
        await self.tell(progress)
        await self.engine.background("cataloguing the upload", self.beamline.upload_ended, say_outcome=True,
                                     of_command=self.started_by, at_least=DAQ_SEVERITY[progress.state])  # fmt: skip
        self.said = progress.message

    async def tell(self, progress: TransferProgress) -> None:
        """An error or the end of a transfer goes to Status once, unless Status says it already (DaqStop's
        outcome); while a command runs it waits."""
        if progress.message == self.said:
            return
        severity = DAQ_SEVERITY[progress.state]
        if (not progress.message or self.engine.shows(progress.message)
                or await self.engine.notify(progress.message, severity, of_command=self.started_by)):  # fmt: skip
            self.said = progress.message

    async def show(self, progress: TransferProgress) -> None:
        """Show a progress snapshot."""
        await update(self.daq_state, progress.state.value, DAQ_SEVERITY[progress.state])
        await update(self.files_done, progress.files_done)
        await update(self.files_total, progress.files_total)
        await update(self.bytes_done, float(progress.bytes_done))
        await update(self.percent, round(progress.percent, 1))
        await update(self.rate, round(progress.rate_mb_s, 2))
        await update(self.last_file, progress.last_file)
