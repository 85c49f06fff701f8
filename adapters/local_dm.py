"""The embedded DM backend: the registry plus experiment directories on disk.

An experiment is a registry row, a storage directory
`{storage_root}/{year_month}/{name}` with `data/` and `analysis/`, and, when the
detectors write on this machine, the raw folders `{data_top_dir}/{name}` and
`{name}_rec`. Directories are made before the registry row, so a failure half-way
leaves no row and a rerun completes the job. Raw data is never deleted.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import logging
import os
import re
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from ..ioc.model import DMError, Experiment, ExperimentUser, InputError, Person, check_name
from .registry import Registry

log = logging.getLogger(__name__)

# rwx for owner and group, nothing for others: proposals can be proprietary, and
# users reach their data through Globus sharing, not through local accounts.
# The setgid bit makes files and subfolders inherit the group, so the beamline
# group (dm.group) keeps access to whatever the transfer engine or staff write.
DIR_MODE = 0o2770

_YEAR_MONTH = re.compile(r"\d{4}-\d{2}")

LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")


def is_this_host(host: str) -> bool:
    """True when `host` names the machine this IOC runs on."""
    host = host.strip().lower()
    if not host:
        return True
    fqdn = socket.getfqdn().lower()
    names = {*LOCAL_HOST_NAMES, socket.gethostname().lower(), fqdn, fqdn.split(".")[0]}
    return host in names or host.split(".")[0] == socket.gethostname().lower().split(".")[0]


def _disk_error(action: str, path: Path, error: OSError) -> DMError:
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason += " (the disk is full)"
    return DMError(f"cannot {action} {path}: {reason}")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class LocalDM:
    """`ports.DataManagement` on this machine's disks, with the registry as the list of experiments."""

    def __init__(
        self,
        registry: Registry,
        storage_root: Path,
        data_top_dir: Path,
        data_host: str,
        group: str | None = None,
    ):
        self.registry = registry
        self.storage_root = Path(storage_root)
        self.data_top_dir = Path(data_top_dir)
        self.data_host = data_host
        self.group = group or None

    # ------------------------------------------------------------------ paths

    def storage_directory(self, name: str, year_month: str) -> Path:
        return self.storage_root / year_month / name

    def data_directory(self, name: str) -> Path:
        return self.data_top_dir / name

    @property
    def raw_is_local(self) -> bool:
        """The detectors write on this machine, so the raw folders can be made here."""
        return is_this_host(self.data_host)

    # ------------------------------------------------------------------ ports.DataManagement

    def create_experiment(self, experiment: Experiment) -> tuple[Experiment, bool]:
        """Make the directories, then the registry row; on an existing one, complete what is missing."""
        name = check_name(experiment.name, "experiment name")
        gid = self._group_id()
        existing = self.registry.get_experiment(name)
        if existing is not None and existing.storage_directory:
            storage = Path(existing.storage_directory)
        else:
            source = existing if existing is not None and existing.year_month else experiment
            storage = self.storage_directory(name, self._year_month(source))
        self._require_root(self.storage_root, "dm.storage_root")
        # The year-month folder is shared with other experiments: made if missing, else left as it is.
        self._make_dir(storage.parent, gid, adopt_existing=False)
        for path in (storage, storage / "data", storage / "analysis"):
            self._make_dir(path, gid)
        if existing is not None and existing.data_directory:
            data_directory = Path(existing.data_directory)
        else:
            data_directory = self.data_directory(name)
        if self.raw_is_local:
            self._require_root(self.data_top_dir, "dm.data_top_dir")
            for path in (data_directory, data_directory.with_name(data_directory.name + "_rec")):
                self._make_dir(path, gid, adopt_existing=False)

        if existing is not None:
            completed = dataclasses.replace(
                existing, storage_directory=str(storage), data_directory=str(data_directory)
            )
            if completed != existing:
                self.registry.put_experiment(dataclasses.replace(completed, users=()))
            log.info("experiment %s exists; directories checked", name)
            return completed, False

        created = dataclasses.replace(
            experiment,
            name=name,
            year_month=self._year_month(experiment),
            storage_directory=str(storage),
            data_directory=str(data_directory),
            users=(),  # users come through add_users
        )
        self.registry.put_experiment(created)
        log.info("experiment %s created: storage %s, raw data %s", name, storage, data_directory)
        return created, True

    def get_experiment(self, name: str) -> Experiment | None:
        return self.registry.get_experiment(check_name(name, "experiment name"))

    def list_experiments(self) -> list[str]:
        """Every registered experiment, newest first."""
        return self.registry.experiment_names()

    def add_users(self, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        """Record access for `users`; return the usernames that did not have it."""
        return self.registry.add_users(check_name(name, "experiment name"), users)

    def remove_users(self, name: str, usernames: Sequence[str]) -> list[str]:
        """Drop access for `usernames`; return those that had it."""
        return self.registry.remove_users(check_name(name, "experiment name"), usernames)

    def delete_experiment(self, name: str) -> str:
        """Remove the storage tree, then the registry row; never the raw folders on the data host."""
        name = check_name(name, "experiment name")
        experiment = self.registry.get_experiment(name)
        if experiment is None:
            raise InputError(f"no experiment named {name!r} in the registry; nothing deleted")
        storage = Path(experiment.storage_directory) if experiment.storage_directory else None
        raw = experiment.data_directory or str(self.data_directory(name))
        if storage is None:
            removed = "no storage directory was recorded"
        elif not storage.exists():
            removed = f"storage {storage} was already gone"
        else:
            self._check_inside_storage_root(storage)
            files = self._count_files(storage)
            try:
                shutil.rmtree(storage)
            except OSError as error:
                raise _disk_error("delete", Path(error.filename or storage), error) from error
            removed = f"storage {storage} ({_plural(files, 'file')})"
        self.registry.delete_experiment(name)
        sentence = f"deleted experiment {name}: registry entry and {removed}; raw data in {raw} kept"
        log.info("%s", sentence)
        return sentence

    def esaf(self, esaf: str) -> tuple[list[Person], str]:
        """The local backend has no ESAF data."""
        return [], ""

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _year_month(experiment: Experiment) -> str:
        year_month = experiment.year_month
        if not year_month and experiment.start is not None:
            year_month = f"{experiment.start.year:04d}-{experiment.start.month:02d}"
        if not _YEAR_MONTH.fullmatch(year_month):
            raise InputError(f"experiment {experiment.name}: year-month {year_month!r} is not YYYY-MM; nothing created")
        return year_month

    def _group_id(self) -> int | None:
        if self.group is None:
            return None
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise DMError(
                f"dm.group: unix group {self.group!r} does not exist on this host; create it or set dm.group: null"
            ) from None

    @staticmethod
    def _require_root(root: Path, key: str) -> None:
        # Creating a missing root would write onto the system disk under an unmounted share.
        if not root.is_dir():
            raise DMError(f"{key}: {root} does not exist or is not a folder (is the disk mounted?); nothing created")

    def _make_dir(self, path: Path, gid: int | None, *, adopt_existing: bool = True) -> None:
        """Create `path` with DIR_MODE and the group; an existing folder is fixed up when `adopt_existing`."""
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise DMError(f"cannot create folder {path}: a file of that name is in the way") from None
            if not adopt_existing:
                return
        except OSError as error:
            raise _disk_error("create folder", path, error) from error
        if gid is not None:
            try:
                os.chown(path, -1, gid)
            except OSError as error:
                raise DMError(
                    f"cannot give {path} to group {self.group!r}: {error.strerror} "
                    f"(the IOC's user must be a member of {self.group!r})"
                ) from error
        try:
            # chmod, not mkdir's mode: mkdir applies the umask and may drop the setgid bit.
            os.chmod(path, DIR_MODE)
        except OSError as error:
            raise _disk_error("set permissions on", path, error) from error

    def _check_inside_storage_root(self, storage: Path) -> None:
        root = self.storage_root.resolve()
        resolved = storage.resolve()
        if resolved == root or root not in resolved.parents:
            raise DMError(f"refusing to delete {storage}: it is not inside dm.storage_root {self.storage_root}")

    @staticmethod
    def _count_files(top: Path) -> int:
        count = 0
        for _, _, files in os.walk(top):
            count += len(files)
        return count
