"""Catalogue PVs: the Catalog command, the last dataset, what waits to be sent, the last metadata snapshot."""

from __future__ import annotations

from ..pvs import command, long, text, update
from ..usecases import BeamlineState
from .base import CommandGroup


class CatalogGroup(CommandGroup):
    """Each acquisition as a dataset: its metadata snapshots and files (SPEC section 10)."""

    last_dataset = text("Catalog:LastDataset", 256, "pid of the last dataset created")
    pending = long("Catalog:Pending", "Datasets waiting to be sent to the catalogue")
    metadata_last = text("Metadata:Last", 16384, "JSON of the last metadata snapshot")

    catalog = command("Catalog", "Make a dataset now of the files sent since the last one")

    @catalog.putter
    async def catalog(self, instance, value):
        return await self.run_command(instance, value, self.beamline.catalog)

    async def show(self, state: BeamlineState) -> None:
        await update(self.last_dataset, state.catalog_last)
        await update(self.pending, state.catalog_pending)
        await update(self.metadata_last, state.metadata_last)
