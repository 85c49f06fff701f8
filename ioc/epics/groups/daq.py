"""Data transfer PVs: DaqStart/DaqStop/Upload and the progress of the running transfer."""

from __future__ import annotations

from ...app.jobs import View
from ...app.messages import Command, DaqStart, DaqStop, Upload
from ...app.reporting import TRANSFER_SEVERITY
from ..declarations import DAQ
from ..pvs import update
from .base import CommandGroup, alarm

COMMANDS = {"DaqStart": DaqStart, "DaqStop": DaqStop, "Upload": Upload}


class DaqGroup(CommandGroup, pvs=DAQ):
    """Continuous transfer (DAQ) and one-shot upload of the raw and _rec folders into DM storage."""

    def command(self, name: str) -> Command:
        return COMMANDS[name]()

    async def show(self, view: View) -> None:
        """Show the last progress read."""
        progress = view.progress
        if progress is None or self.unchanged(progress):
            return
        await update(self.daq_state, progress.state.value, alarm(TRANSFER_SEVERITY[progress.state]))
        await update(self.files_done, progress.files_done)
        await update(self.files_total, progress.files_total)
        await update(self.bytes_done, float(progress.bytes_done))
        await update(self.percent, round(progress.percent, 1))
        await update(self.rate, round(progress.rate_mb_s, 2))
        await update(self.last_file, progress.last_file)
