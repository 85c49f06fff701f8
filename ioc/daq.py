"""Data transfer PVs: DaqStart/DaqStop/Upload and the progress of the running transfer."""

from __future__ import annotations

import asyncio
import logging

from caproto import AlarmSeverity

from .commands import CommandGroup
from .ports import TransferProgress
from .pvs import command, double, enum, long, publish, text

log = logging.getLogger(__name__)

DAQ_STATES = ("Stopped", "Running", "Error")
DAQ_SEVERITY = {
    "Stopped": AlarmSeverity.NO_ALARM,
    "Running": AlarmSeverity.NO_ALARM,
    "Error": AlarmSeverity.MAJOR_ALARM,
}
POLL_SECONDS = 0.5


class DaqGroup(CommandGroup):
    """Continuous transfer (DAQ) and one-shot upload of the raw and _rec folders into DM storage."""

    daq_state = enum("DaqState", DAQ_STATES, "Transfer state; Error carries MAJOR")
    files_done = long("Daq:FilesDone", "Files transferred")
    files_total = long("Daq:FilesTotal", "Files seen")
    bytes_done = double("Daq:Bytes", "Bytes transferred", precision=0)
    percent = double("Daq:Percent", "0 to 100", precision=1)
    rate = double("Daq:Rate", "MB/s over the last few seconds", precision=1)
    last_file = text("Daq:LastFile", 1024, "Last file transferred")

    daq_start = command("DaqStart", "Start continuous transfer of the raw and _rec directories")
    daq_stop = command("DaqStop", "Stop the continuous transfer")
    upload = command("Upload", "One-shot transfer of the files present now")

    @daq_start.putter
    async def daq_start(self, instance, value):
        return await self.run_transfer_command(instance, value, self.app.daq_start)

    @daq_stop.putter
    async def daq_stop(self, instance, value):
        return await self.run_transfer_command(instance, value, self.app.daq_stop)

    @upload.putter
    async def upload(self, instance, value):
        return await self.run_transfer_command(instance, value, self.app.upload)

    @daq_state.startup
    async def daq_state(self, instance, async_lib):
        """Resume a transfer that was running before a restart, then publish progress twice a second."""
        transfer = self.app.adapters.transfer
        await self.root.ready.wait()
        try:
            resumed = await asyncio.to_thread(transfer.resume)
        except Exception as error:  # a failed resume is reported, the IOC still serves
            log.exception("resuming the transfer failed")
            resumed = None
            await self.root.engine.report(f"resuming the transfer failed: {error}", AlarmSeverity.MAJOR_ALARM)
        if resumed:
            await self.root.engine.report(resumed, AlarmSeverity.NO_ALARM)
        failure = ""  # the last unexpected error: said once, not every poll
        while True:
            try:
                progress = await asyncio.to_thread(self.app.transfer_progress)  # may ask a remote DM service
                await self.show(progress)
                await self.report(progress)
                failure = ""
            except Exception as error:
                if repr(error) != failure:
                    failure = repr(error)
                    log.exception("publishing transfer progress failed")
                    message = f"transfer progress not published: internal error ({error}); see the IOC log"
                    await self.root.engine.report(message, AlarmSeverity.MAJOR_ALARM)
            await async_lib.library.sleep(POLL_SECONDS)

    shown = ""  # the transfer message last shown on Status

    async def run_transfer_command(self, instance, value, use_case):
        self.shown = ""  # a new transfer's messages are news even when worded as the last ones
        return await self.run_command(instance, value, use_case)

    async def report(self, progress: TransferProgress) -> None:
        """An error or the end of an upload goes to Status once, never over a running command's
        outcome (it waits for the command to end)."""
        if progress.message == self.shown or self.root.engine.running is not None:
            return
        if progress.message:
            severity = AlarmSeverity.MAJOR_ALARM if progress.state == "Error" else AlarmSeverity.NO_ALARM
            await self.root.engine.report(progress.message, severity)
        self.shown = progress.message

    async def show(self, progress: TransferProgress) -> None:
        """Publish a progress snapshot."""
        await publish(self.daq_state, progress.state, DAQ_SEVERITY.get(progress.state, AlarmSeverity.MAJOR_ALARM))
        await publish(self.files_done, progress.files_done)
        await publish(self.files_total, progress.files_total)
        await publish(self.bytes_done, float(progress.bytes_done))
        await publish(self.percent, round(progress.percent, 1))
        await publish(self.rate, round(progress.rate_mb_s, 2))
        await publish(self.last_file, progress.last_file)
