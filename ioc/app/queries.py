"""The queries: reads of the transfer, of the catalogue's queue and of the DM backend's walks, which the
supervisor runs beside the commands (its polls). They change no state; they remember only their last answer."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..domain.catalog_ports import CatalogStatus
from ..domain.errors import ServiceError
from ..domain.naming import plural
from ..domain.ports import TransferProgress, TransferState, WalkProgress
from .services import Services

log = logging.getLogger(__name__)


class Queries:
    """The reads of one poller at a time; each contact is noted in `services` for the Health PVs."""

    def __init__(self, services: Services):
        self.services = services
        self._progress = TransferProgress()  # the last one read: shown in Error when the next cannot be
        self._stuck_pid = ""  # the dataset last said to wait too long

    def transfer_progress(self) -> TransferProgress:
        """The transfer's progress; when it cannot be read, the last one in Error, saying why."""
        services = self.services
        try:
            self._progress = services.contact(services.transfer_system, services.adapters.transfer.progress)
        except ServiceError as error:
            message = f"transfer status not read: {error}"
            self._progress = replace(self._progress, state=TransferState.ERROR, message=message)
        return self._progress

    def transfer_running(self) -> bool:
        return self.services.adapters.transfer.progress().state == TransferState.RUNNING

    def walk_progress(self) -> WalkProgress:
        """The DM backend's walks of storage trees (none where it has none)."""
        walks = self.services.adapters.walks
        return walks.progress() if walks is not None else WalkProgress()

    def catalog_status(self) -> CatalogStatus:
        """The catalogue's queue; its last contact goes to Catalog:Health, and so does a dataset waiting
        longer than scicat.stuck_after, however SciCat answers meanwhile."""
        catalogue = self.services.adapters.catalogue
        if catalogue is None:
            return CatalogStatus()
        status = self._unless_stuck(catalogue.status())
        if status.answered is not None:
            self.services.noted("Catalog", status.answered)
        return status

    def _unless_stuck(self, status: CatalogStatus) -> CatalogStatus:
        """`status`, or a failure naming the dataset that has waited too long, since when and why."""
        services = self.services
        limit = services.settings.scicat.stuck_after
        if status.waiting_since is None or (services.clock() - status.waiting_since).total_seconds() <= limit:
            return status
        others = f" and {plural(status.pending - 1, 'other')}" if status.pending > 1 else ""
        since = status.waiting_since.astimezone(services.tz).strftime("%Y-%m-%d %H:%M %Z")
        why = status.message or ("SciCat has not answered yet" if status.answered is None else "SciCat answers slowly")
        message = (f"dataset {status.oldest_pid}{others} waiting for SciCat for more than {_duration(limit)} "
                   f"(since {since}, scicat.stuck_after): {why}")  # fmt: skip
        if status.oldest_pid != self._stuck_pid:  # polled twice a second: logged once a dataset
            self._stuck_pid = status.oldest_pid
            log.warning("catalogue: %s", message)
        return replace(status, answered=False, message=message)


def _duration(seconds: float) -> str:
    """A duration in the largest units that say it: '45 s', '15 min', '2 h 30 min', '3 d 4 h'."""
    minutes, hours = int(seconds // 60), int(seconds // 3600)
    if seconds < 120:
        return f"{seconds:g} s"
    if hours < 2:
        return f"{minutes} min"
    if hours < 48:
        return f"{hours} h" + (f" {minutes % 60} min" if minutes % 60 else "")
    return f"{hours // 24} d" + (f" {hours % 24} h" if hours % 24 else "")
