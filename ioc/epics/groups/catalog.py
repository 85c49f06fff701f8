"""Catalogue PVs: the Catalog command, the last dataset, what waits to be sent, the last metadata snapshot."""

from __future__ import annotations

from ...app.jobs import View
from ...app.messages import Catalog, Command
from ..declarations import CATALOG
from ..pvs import update
from .base import CommandGroup


class CatalogGroup(CommandGroup, pvs=CATALOG):
    """Each acquisition as a dataset: its metadata snapshots and files, sent to the catalogue (SciCat)."""

    def command(self, name: str) -> Command:
        return Catalog()

    async def show(self, view: View) -> None:
        if self.unchanged((view.state.metadata_last, view.catalog)):
            return
        await update(self.metadata_last, view.state.metadata_last)
        if view.catalog is not None:
            await update(self.pending, view.catalog.pending)
            await update(self.last_dataset, view.catalog.last_pid)
