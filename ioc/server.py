"""The IOC: the concerns' PV groups under one prefix, autosave and write access control."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path

from caproto import AccessRights, AlarmSeverity
from caproto.server import PVGroup, SubGroup

from .app import Beamline
from .commands import CommandEngine
from .config import AccessSettings
from .daq import DaqGroup
from .experiment import ExperimentGroup
from .model import DMagicError
from .proposal import ProposalGroup
from .pvs import is_command
from .status import StatusGroup

log = logging.getLogger(__name__)

AUTOSAVE_SECONDS = 0.5


class DMagicIOC(PVGroup):
    """dmagic-ioc: the beamline's scheduling and data management on PVs."""

    status = SubGroup(StatusGroup, prefix="")
    proposal = SubGroup(ProposalGroup, prefix="")
    experiment = SubGroup(ExperimentGroup, prefix="")
    daq = SubGroup(DaqGroup, prefix="")

    def __init__(self, prefix: str, *, app: Beamline, **kwargs):
        self.app = app
        super().__init__(prefix, **kwargs)
        self.engine = CommandEngine(self.status, after_command=self.show)
        self.ready = asyncio.Event()
        self.autosave = Autosave(app.settings.ioc.state_dir / "autosave.json", settings_channels(self.pvdb))
        restrict_writes(self.pvdb, app.settings.ioc.access)

    async def show(self) -> None:
        """Publish what the use cases changed: proposal, experiment, health."""
        await self.proposal.show()
        await self.experiment.show()
        await self.status.show()

    async def startup(self, async_lib) -> None:
        """Config defaults, then autosaved values, then the selected experiment; then autosave runs."""
        settings = self.app.settings
        await self.proposal.refresh_period.write(settings.scheduling.refresh_period, verify_value=False)
        await self.proposal.tag_prefix.write(settings.tag.prefix, verify_value=False)
        await self.autosave.restore()
        try:
            await asyncio.to_thread(self.app.load_selection)
        except DMagicError as error:
            await self.engine.report(f"reading the selected experiment failed: {error}", AlarmSeverity.MAJOR_ALARM)
        await self.show()
        await self.engine.report(f"dmagic-ioc {self.status.version.value} started", AlarmSeverity.NO_ALARM)
        self.ready.set()
        await self.autosave.run(async_lib)


NOT_AUTOSAVED = {"DeleteConfirm"}  # a confirmation is for one attempt, never for after a restart


def settings_channels(pvdb: dict) -> dict:
    """The RW PVs that are settings (not commands, not confirmations): what autosave keeps."""
    return {
        name: ch
        for name, ch in pvdb.items()
        if not ch.pvspec.read_only and not is_command(ch) and ch.pvspec.name not in NOT_AUTOSAVED
    }


class Autosave:
    """RW PVs survive a restart: their values in a JSON file, written aside and renamed."""

    def __init__(self, path: Path, channels: dict):
        self.path = path
        self.channels = channels  # full PV name -> channel
        self._saved: dict | None = None

    def snapshot(self) -> dict:
        # Keyed without the prefix: an IOC started under a new prefix keeps its settings.
        return {ch.pvspec.name: _plain(ch.value) for ch in self.channels.values()}

    async def restore(self) -> None:
        try:
            saved = await asyncio.to_thread(self._read)
        except (OSError, ValueError) as error:
            log.warning("autosave %s not restored: %s", self.path, error)
            return
        for channel in self.channels.values():
            key = channel.pvspec.name
            if key in saved:
                try:
                    await channel.write(saved[key], verify_value=False)
                except Exception as error:  # a stale or odd value: keep the default
                    log.warning("autosave: %s not restored from %r: %s", key, saved[key], error)
        self._saved = self.snapshot()

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    async def run(self, async_lib) -> None:
        """Save whenever a setting changed; once more on the way out."""
        try:
            while True:
                await async_lib.library.sleep(AUTOSAVE_SECONDS)
                try:
                    await self.save()
                except Exception:  # a full disk must not stop the IOC; try again next time
                    log.exception("autosave to %s failed", self.path)
        finally:
            self._write(self.snapshot())

    async def save(self) -> None:
        snapshot = self.snapshot()
        if snapshot != self._saved:
            await asyncio.to_thread(self._write, snapshot)
            self._saved = snapshot

    def _write(self, values: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".autosave-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(values, file, indent=1, ensure_ascii=False)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _plain(value):
    """caproto hands numeric values as numpy scalars; JSON wants Python ones."""
    return value.item() if hasattr(value, "item") else value


def restrict_writes(pvdb: dict, access: AccessSettings) -> None:
    """Only the listed hosts or users may write RW and command PVs; everyone may read."""
    if not access.restricted:
        return
    hosts = {h.lower() for h in access.write_hosts}
    users = set(access.write_users)

    def check_access(hostname: str, username: str) -> AccessRights:
        host = (hostname or "").lower()
        if username in users or host in hosts or host.split(".")[0] in hosts:
            return AccessRights.READ | AccessRights.WRITE
        return AccessRights.READ

    for channel in pvdb.values():
        if not channel.pvspec.read_only:
            channel.check_access = check_access
