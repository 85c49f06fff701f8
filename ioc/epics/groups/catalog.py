"""Catalogue PVs: the Catalog command, the last dataset, what waits to be sent, the last metadata snapshot."""

from __future__ import annotations

from caproto import AlarmSeverity

from ...domain.ports import CatalogStatus
from ...usecases import BeamlineState
from ..pvs import command, long, text, update
from .base import CommandGroup

POLL_SECONDS = 0.5


class CatalogGroup(CommandGroup):
    """Each acquisition as a dataset: its metadata snapshots and files, sent to the catalogue (SciCat)."""

    last_dataset = text("Catalog:LastDataset", 256, "pid of the last dataset created")
    pending = long("Catalog:Pending", "Datasets waiting to be sent to the catalogue")
    metadata_last = text("Metadata:Last", 16384, "JSON of the last metadata snapshot")

    catalog = command("Catalog", "Make a dataset now of the files sent since the last one")

    said = ""  # the catalogue's last failure shown on Status

    @catalog.putter
    async def catalog(self, instance, value):
        return await self.run_command(instance, value, self.beamline.catalog)

    @pending.startup
    async def pending(self, instance, async_lib):
        """Show the catalogue's queue twice a second (its sending runs in the adapter's own thread)."""
        await self.engine.ready.wait()
        while True:
            status = await self.engine.query("reading the catalogue's queue", self.beamline.catalog_status)
            if status is not None:
                await self.show_queue(status)
                await self.tell(status)
            await async_lib.library.sleep(POLL_SECONDS)

    async def tell(self, status: CatalogStatus) -> None:
        """A failure of the catalogue (refused, down, a dataset stuck) goes to Status once, MAJOR; while a
        command runs it waits."""
        failure = f"catalogue: {status.message}" if status.answered is False and status.message else ""
        if failure == self.said:
            return
        if not failure or await self.engine.notify(failure, AlarmSeverity.MAJOR_ALARM):
            self.said = failure

    async def show_queue(self, status: CatalogStatus) -> None:
        await update(self.pending, status.pending)
        await update(self.last_dataset, status.last_pid)

    async def show(self, state: BeamlineState) -> None:
        await update(self.metadata_last, state.metadata_last)
