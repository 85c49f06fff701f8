"""The experiment's storage a transfer writes into, known by the marker Create wrote in it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ...ioc.domain.errors import InputError
from ...ioc.domain.experiment import Experiment
from ..dm.marker import STORAGE_MARKER, read_storage_marker
from .folders import is_inside, open_child, open_folder, reason_for, shown


class StorageUnavailable(Exception):
    """The experiment's storage is not the one Create made (missing, unmarked, marked anew): nothing is written."""


@dataclass
class Storage:
    """The storage folder Create made for `experiment`, known by the id in its marker."""

    path: str
    experiment: str
    marker: str = ""  # '' for a transfer recorded without it (schema 1): the first marker seen is taken

    @classmethod
    def of(cls, experiment: Experiment, sources: Mapping[str, str]) -> Storage:
        """The storage the destinations are in: the experiment's, else the folder holding them all."""
        dests = list(sources.values())
        if experiment.storage_directory:
            path = os.path.normpath(experiment.storage_directory)
        else:
            path = os.path.commonpath([os.path.dirname(dest) for dest in dests])
        outside = [dest for dest in dests if not is_inside(dest, path)]
        if outside:
            raise InputError(f"transfer destination {outside[0]} is not inside the storage {path} of {experiment.name}")
        return cls(path, experiment.name)

    def open(self) -> int:
        """A descriptor of the storage folder, once its marker says it is the one; else StorageUnavailable."""
        where = shown(self.path)
        try:
            fd = open_folder(self.path)
        except FileNotFoundError:
            raise StorageUnavailable(
                f"the storage {where} of {self.experiment} is missing (deleted, or its disk not mounted?): "
                "nothing written, the files wait for it"
            ) from None
        except OSError as error:
            raise StorageUnavailable(f"cannot open the storage {where}: {reason_for(error, self.path)}") from None
        try:
            marker = read_storage_marker(fd)
        except FileNotFoundError:
            os.close(fd)
            raise StorageUnavailable(
                f"the storage {where} has no {STORAGE_MARKER}: not the folder Create made for {self.experiment} "
                "(made again by hand, or a disk not mounted?); nothing written. If Create made it before this "
                "version, run Create again to mark it"
            ) from None
        except (OSError, ValueError) as error:
            os.close(fd)
            why = reason_for(error) if isinstance(error, OSError) else str(error)
            raise StorageUnavailable(
                f"the marker of the storage {where} cannot be read ({why}): nothing written"
            ) from None
        if marker["experiment"] != self.experiment:
            os.close(fd)
            raise StorageUnavailable(
                f"the storage {where} belongs to experiment {marker['experiment']} (its {STORAGE_MARKER} says so), "
                f"not {self.experiment}: nothing written"
            )
        if self.marker and marker["id"] != self.marker:
            os.close(fd)
            raise StorageUnavailable(
                f"the storage {where} was made again since the transfer started (its {STORAGE_MARKER} changed): "
                "nothing written; DaqStop, then DaqStart to send every file into the new one"
            )
        self.marker = self.marker or marker["id"]
        return fd

    def open_dest(self, dest: str) -> int:
        """A descriptor of destination folder `dest`, reached from the checked storage; never made here."""
        fd = self.open()
        walked = self.path
        try:
            for name in os.path.relpath(dest, self.path).split(os.sep):
                walked = os.path.join(walked, name)
                child = open_child(fd, name, walked)
                os.close(fd)
                fd = child
        except OSError as error:
            os.close(fd)
            if isinstance(error, FileNotFoundError):
                raise StorageUnavailable(
                    f"{shown(walked)} is missing from the storage of {self.experiment}: not made by the transfer "
                    "(Create makes it); nothing written"
                ) from None
            why = reason_for(error, walked)
            raise StorageUnavailable(f"cannot open {shown(walked)}: {why}; nothing written") from None
        return fd

    def check(self, dests: Sequence[str]) -> None:
        """Raise StorageUnavailable unless the storage and every destination folder in it are there."""
        for dest in dests:
            os.close(self.open_dest(dest))
