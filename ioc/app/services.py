"""What every handler is given: the settings, the adapters (through the ports), the clock, the contacts."""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

from ..domain.catalog_ports import Catalogue, Records
from ..domain.errors import ServiceError
from ..domain.ports import (
    Access,
    DataManagement,
    Mailer,
    MetadataSource,
    SchedulingSource,
    StateStore,
    TagTarget,
    Transfer,
    Walks,
)
from ..settings.schema import Settings

T = TypeVar("T")

SYSTEMS = ("Scheduling", "DM", "Globus", "Email", "Catalog")  # the outside systems, each with a Health PV


@dataclass
class Adapters:
    """One adapter per port; the optional ones are None when the config turns their system off."""

    scheduling: SchedulingSource
    dm: DataManagement
    state: StateStore
    transfer: Transfer
    tag: TagTarget
    access: Access | None = None
    mailer: Mailer | None = None
    metadata: MetadataSource | None = None
    catalogue: Catalogue | None = None
    records: Records | None = None  # the acquisitions' records next to their data; None: no dataset can be made
    walks: Walks | None = None  # the DM backend's long walks of storage trees; None: it has none (they run inline)


class Services:
    """The settings, the adapters and the clock, and a record of every contact with an outside system.

    `contact` calls an adapter and notes whether its system answered; the supervisor takes the notes
    (`contacts`) after each handler and query, for the Health PVs. Handlers run one at a time, queries
    beside them: the notes are a thread-safe queue.
    """

    def __init__(self, settings: Settings, adapters: Adapters | None, clock: Callable[[], datetime] | None = None):
        """`adapters` None: services that only describe the PVs (`--print-pvs`): no handler can run."""
        self.settings = settings
        self._adapters = adapters
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._contacts: queue.SimpleQueue[tuple[str, bool]] = queue.SimpleQueue()  # (system, answered)

    @property
    def adapters(self) -> Adapters:
        if self._adapters is None:
            raise RuntimeError("these services only describe the PVs: they have no adapters")
        return self._adapters

    @property
    def tz(self):
        return self.settings.beamline.tz

    def contact(self, system: str | None, call: Callable[..., T], *args, **kwargs) -> T:
        """Call an adapter of `system` and note the contact for its Health PV (None: no outside system)."""
        try:
            result = call(*args, **kwargs)
        except ServiceError as error:
            failed = error.system or system
            if failed:
                self._contacts.put((failed, False))
            raise
        if system:
            self._contacts.put((system, True))
        return result

    def noted(self, system: str, answered: bool) -> None:
        """Note a contact the adapter reported itself (the catalogue's queue, which sends in its own thread)."""
        self._contacts.put((system, answered))

    def contacts(self) -> list[tuple[str, bool]]:
        """The contacts with outside systems since the last call: (system, answered), oldest first."""
        taken = []
        while not self._contacts.empty():
            taken.append(self._contacts.get_nowait())
        return taken

    @property
    def transfer_system(self) -> str | None:
        """The system a transfer call contacts; None for the built-in engine, which is no outside system."""
        if self.settings.dm.transfer == "globus":
            return "Globus"
        return "DM" if self.settings.dm.backend == "aps" else None
