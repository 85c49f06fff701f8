"""Autosave: the RW PVs that are settings survive a restart, in a JSON file written aside and renamed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from caproto import AlarmSeverity

from ..statefiles import disk_full, keep_aside
from .declarations import every_pv

log = logging.getLogger(__name__)

AUTOSAVE_SECONDS = 0.5


def settings_channels(pvdb: dict) -> dict:
    """The RW PVs that are settings (not commands, not confirmations): what autosave keeps."""
    settings = {pv.name for pv in every_pv() if pv.rw and pv.kind != "command" and pv.autosave}
    return {name: channel for name, channel in pvdb.items() if channel.pvspec.name in settings}


class Autosave:
    """RW PVs survive a restart: their values in a JSON file, written aside and renamed.

    A file that cannot be read is kept aside (`autosave.json.corrupt-<time>`),
    never overwritten: the PVs start from their defaults and `restore` returns
    a sentence for Status. When it cannot even be renamed, nothing is saved
    until the next start. A save that fails (a full state_dir) is said with
    `say` (MAJOR) once, and again only after a save worked in between; it is
    tried again at each change meanwhile.
    """

    def __init__(self, path: Path, channels: dict, say: Callable[[str, AlarmSeverity], Awaitable[bool]] | None = None):
        self.path = path
        self.channels = channels  # full PV name -> channel
        self._saved: dict | None = None
        self.enabled = True
        self._say = say  # shows a sentence on Status; False when it could not now (a command runs)
        self._failure = ""  # why saving fails, since it began to ('' while it works)
        self._failure_said = False

    def snapshot(self) -> dict:
        # Keyed without the prefix: an IOC started under a new prefix keeps its settings.
        return {ch.pvspec.name: _plain(ch.value) for ch in self.channels.values()}

    async def restore(self) -> str:
        """Write the saved values into their PVs; '' or, when the file could not be read, what was done."""
        try:
            saved = await asyncio.to_thread(self._read)
        except (OSError, ValueError, RecursionError) as error:
            problem = await asyncio.to_thread(self._keep_aside, _reason(error))
            self._saved = self.snapshot()
            return problem
        for channel in self.channels.values():
            key = channel.pvspec.name
            if key in saved:
                try:  # the same checks as a client's write, putters included: a saved NaN stays out
                    await channel.write(channel.checked(saved[key]))
                except Exception as error:  # a stale or odd value: keep the default
                    log.warning("autosave: %s not restored from %r: %s", key, saved[key], error)
        self._saved = self.snapshot()
        return ""

    def _read(self) -> dict:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        values = json.loads(data.decode("utf-8"))
        if not isinstance(values, dict):
            raise ValueError(f"it holds a JSON {type(values).__name__}, not an object of PV values")
        return values

    def _keep_aside(self, reason: str) -> str:
        """Rename the unreadable file; if even that fails, stop saving so it is never overwritten."""
        try:
            aside = keep_aside(self.path)
        except OSError as error:
            self.enabled = False
            return (
                f"autosave {self.path} could not be read ({reason}) nor kept aside ({error.strerror}): "
                "RW PVs start from defaults and are not saved until the next start"
            )
        return f"autosave {self.path} could not be read ({reason}): kept it as {aside.name}; RW PVs start from defaults"

    async def run(self, async_lib) -> None:
        """Save whenever a setting changed; once more on the way out."""
        if not self.enabled:
            return
        try:
            while True:
                await async_lib.library.sleep(AUTOSAVE_SECONDS)
                await self.save()
        finally:
            if self.snapshot() != self._saved:
                try:
                    self._write(self.snapshot())
                except OSError as error:
                    log.error("autosave to %s failed on the way out: %s", self.path, self._why(error))

    async def save(self) -> None:
        """Write the settings if they changed; a failure is said, never raised (the IOC serves on)."""
        snapshot = self.snapshot()
        if not self.enabled or snapshot == self._saved:
            return
        try:
            await asyncio.to_thread(self._write, snapshot)
        except Exception as error:
            await self._failed(error)
            return
        self._saved = snapshot
        if self._failure:
            log.info("autosave to %s works again", self.path)
            self._failure, self._failure_said = "", False

    async def _failed(self, error: Exception) -> None:
        """Log and say a failed save once; say it later if a command holds Status now."""
        if not self._failure:
            self._failure = (
                f"autosave to {self.path} failed: {self._why(error)}; "
                "RW PV changes are saved when it works again (a restart now would lose them)"
            )
            if isinstance(error, OSError):
                log.error("%s", self._failure)
            else:  # a bug
                log.exception("%s", self._failure)
        if not self._failure_said and self._say is not None:
            self._failure_said = await self._say(self._failure, AlarmSeverity.MAJOR_ALARM)

    @staticmethod
    def _why(error: Exception) -> str:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return f"state_dir full ({reason})" if disk_full(error) else reason

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


def _reason(error: Exception) -> str:
    """Why a state file could not be read, in a few words (never its content)."""
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(error, RecursionError):
        return "nested too deeply"
    if isinstance(error, json.JSONDecodeError):
        return f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
    return str(error)


def _plain(value):
    """caproto hands numeric values as numpy scalars; JSON wants Python ones."""
    return value.item() if hasattr(value, "item") else value
