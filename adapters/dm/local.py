"""The embedded DM backend: the registry plus experiment directories on disk.

An experiment is a registry row, a storage directory placed by `dm.layout`
(by default `{storage_root}/{year_month}/{name}`) holding the `dm.subdirs`
(by default `data/` and `analysis/`), and, when the detectors write on this
machine, the raw folders `{data_top_dir}/{name}` and `{name}_rec`. The storage
is recorded in the registry: a later change of layout never moves an
experiment, and experiments are listed from the registry, never by walking
folders. Directories are made before the registry row, so a failure half-way
leaves no row and a rerun completes the job. Raw data is never deleted.

Create writes the storage's marker (`marker`) and makes the folders one name
at a time (`tree`). It never makes `storage_root` (a missing one is an
unmounted disk, not a folder to make), never re-makes the storage of a
registered experiment that has gone, and refuses symbolic links where its
folders must be.

AddUser, RemoveUser and Create change the ACL of the storage folder at once,
Delete renames the storage aside (its name is free for a new Create at once);
the walk of the tree below, of any length, is `walks`'s: in the command when
quick, else in the background.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import logging
import os
import pwd
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from ...ioc.domain.catalog_ports import RECORDS_FOLDER
from ...ioc.domain.errors import DMError, InputError, PartialAccess
from ...ioc.domain.experiment import Experiment, ExperimentUser
from ...ioc.domain.naming import DEFAULT_LAYOUT, DEFAULT_SUBDIRS, check_name, plural, posix_group, storage_location
from ...ioc.domain.people import Person
from ..hosts import is_this_host
from ..registry.store import Registry
from ..transfer.folders import open_folder
from . import acl
from .marker import STORAGE_MARKER, write_storage_marker
from .tree import (
    DIR_MODE,
    SHARED_DIR_MODE,
    Group,
    disk_error,
    make_dir,
    make_storage,
    open_top,
    require_root,
    set_aside,
)
from .walk import GRANT, REMOVE, REVOKE, Walk
from .walks import StorageWalks

log = logging.getLogger(__name__)

T = TypeVar("T")

_YEAR_MONTH = re.compile(r"\d{4}-\d{2}")


def _id(lookup, name: str) -> int | None:
    """The uid or gid of `name` by `lookup` (pwd.getpwnam, grp.getgrnam); None when there is none."""
    try:
        return lookup(name)[2]
    except KeyError:
        return None


def _sentences(*parts: str) -> str:
    """The non-empty `parts`, one Status sentence."""
    return "; ".join(part for part in parts if part)


class LocalDM:
    """`ports.DataManagement` on this machine's disks, with the registry as the list of experiments."""

    def __init__(
        self,
        registry: Registry,
        storage_root: Path,
        data_top_dir: Path,
        data_host: str,
        group: str | None = None,
        *,
        layout: str = DEFAULT_LAYOUT,
        subdirs: Sequence[str] = DEFAULT_SUBDIRS,
        beamline: str = "",
        posix_group: str | None = None,
        user_account: str | None = None,
        staff_groups: Sequence[str] = (),
        walks: StorageWalks | None = None,
    ):
        self.registry = registry
        self.storage_root = Path(os.path.normpath(storage_root))
        self.data_top_dir = Path(data_top_dir)
        self.data_host = data_host
        self.group = group or None
        self.layout = layout
        self.subdirs = tuple(subdirs)
        self.beamline = beamline
        self.posix_group = posix_group or None  # dm.posix.group: the experiment tree's group, a template
        self.user_account = user_account or None  # dm.posix.user_account: "d{badge}", an ACL entry per user
        self.staff_groups = tuple(staff_groups)  # dm.posix.staff_groups: rwx on every tree
        self.walks = walks if walks is not None else StorageWalks()  # none given: every walk in the command

    # ------------------------------------------------------------------ paths

    def storage_directory(self, experiment: Experiment) -> Path:
        """Where `experiment`'s storage goes: the folder the use case placed it in, else `dm.layout` filled
        from what the record has; always strictly inside storage_root."""
        if experiment.storage_directory:
            storage = Path(os.path.normpath(experiment.storage_directory))
        else:
            storage = Path(storage_location(self.layout, str(self.storage_root), experiment, beamline=self.beamline))
        root = self.storage_root
        if root not in storage.parents or ".." in storage.parts:
            raise InputError(f"storage {storage} of {experiment.name} is not inside dm.storage_root {root}; "
                             "nothing created")  # fmt: skip
        return storage

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
        fixed = self._group_id()
        existing = self.registry.get_experiment(name)
        tree, missing = self._tree_group(existing or dataclasses.replace(experiment, name=name), fixed)
        if existing is not None and existing.storage_directory:
            storage = Path(existing.storage_directory)
        else:
            source = existing if existing is not None and existing.year_month else experiment
            self._year_month(source)  # a bad year-month is refused before anything is made
            storage = self.storage_directory(dataclasses.replace(experiment, name=name))
        require_root(self.storage_root, "dm.storage_root")
        if existing is not None and existing.storage_directory and not os.path.lexists(storage):
            # The registry row is written after the folders: they were all made once, then lost.
            raise DMError(
                f"the storage {storage} of experiment {name} is gone (deleted, or its disk not mounted?): "
                "not made again here; mount the disk, or Delete the experiment and Create it anew"
            )
        shared_mode = SHARED_DIR_MODE if self.posix_group or self.user_account or self.staff_groups else DIR_MODE
        base = self.storage_root if self.storage_root in storage.parents else storage.parent  # root changed since
        storage_fd = make_storage(base, storage, self.subdirs, fixed, tree, shared_mode)
        try:
            write_storage_marker(storage, name, folder_fd=storage_fd)
            missing = _sentences(missing, self._give_staff(name, storage_fd, storage))
        finally:
            os.close(storage_fd)
        if existing is not None and existing.data_directory:
            data_directory = Path(existing.data_directory)
        else:
            data_directory = self.data_directory(name)
        if self.raw_is_local:
            require_root(self.data_top_dir, "dm.data_top_dir")
            parent_fd = open_top(data_directory.parent)
            try:
                for path in (data_directory, data_directory.with_name(data_directory.name + "_rec")):
                    os.close(make_dir(parent_fd, path, fixed, adopt_existing=False, place="data_top_dir"))
            finally:
                os.close(parent_fd)

        if existing is not None:
            completed = dataclasses.replace(
                existing, storage_directory=str(storage), data_directory=str(data_directory)
            )
            if completed != existing:
                self.registry.put_experiment(dataclasses.replace(completed, users=()))
            log.info("experiment %s exists; directories checked", name)
            return self._done((completed, False), missing)

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
        return self._done((created, True), missing)

    @staticmethod
    def _done(result: T, missing: str) -> T:
        if missing:
            log.warning("%s", missing)
            raise PartialAccess(missing, done=result)
        return result

    def get_experiment(self, name: str) -> Experiment | None:
        return self.registry.get_experiment(check_name(name, "experiment name"))

    def list_experiments(self) -> list[str]:
        """Every registered experiment, newest first."""
        return self.registry.experiment_names()

    def station_experiments(self) -> list[Experiment]:
        """Every registered experiment with its record, newest first."""
        return [found for name in self.registry.experiment_names() if (found := self.registry.get_experiment(name))]

    def add_users(self, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        """Give `users` access (with dm.posix.user_account, an ACL entry each on the storage tree), then
        record it; return the usernames that did not have it. Users without an account, or files left
        without the entry (hard-linked, on another filesystem): PartialAccess."""
        name = check_name(name, "experiment name")
        experiment = self.registry.get_experiment(name)
        missing: list[str] = []
        skipped = ""
        if experiment is not None and experiment.storage_directory and self.user_account is not None:
            accounts, missing = self._accounts([user.username for user in users])
            storage = Path(experiment.storage_directory)
            entries = [acl.Entry(acl.USER, uid, acl.READ) for uid in accounts.values()]
            with self._storage_fd(storage) as fd:
                skipped = self._grant(name, fd, storage, entries, f"{', '.join(accounts)} access")
        added = self.registry.add_users(name, users)
        if missing:
            where = experiment.storage_directory if experiment else name
            skipped = _sentences(f"dm.posix.user_account: no unix account {', '.join(missing)} on this host: "
                                 f"no access to {where} on the filesystem for them; the others have it",
                                 skipped)  # fmt: skip
        return self._done(added, skipped)

    def remove_users(self, name: str, usernames: Sequence[str]) -> list[str]:
        """Drop access for `usernames` (their ACL entries first: on the storage folder at once, below it as
        `walks` runs them; what the walk left alone logged); return those that had it."""
        name = check_name(name, "experiment name")
        experiment = self.registry.get_experiment(name)
        if experiment is not None and experiment.storage_directory and self.user_account is not None:
            accounts, _ = self._accounts(usernames)
            storage = Path(experiment.storage_directory)
            keys = [(acl.USER, uid) for uid in accounts.values()]
            if storage.is_dir() and keys:
                walk = Walk(REVOKE, name, str(storage), self._root_of(storage), ", ".join(accounts),
                            entries=[list(key) for key in keys])  # fmt: skip
                with self._storage_fd(storage) as fd:
                    acl.revoke(fd, storage, keys, below=False)  # access ends here at once
                    left, _ = self.walks.run(walk, fd)
                if left:
                    log.warning("%s", left)
        return self.registry.remove_users(name, usernames)

    def delete_experiment(self, name: str) -> str:
        """Remove the storage tree (renamed aside first, then removed by `walks`), then the registry row;
        never the raw folders on the data host. What the removal left: PartialAccess, the row removed."""
        name = check_name(name, "experiment name")
        experiment = self.registry.get_experiment(name)
        if experiment is None:
            raise InputError(f"no experiment named {name!r} in the registry; nothing deleted")
        storage = Path(experiment.storage_directory) if experiment.storage_directory else None
        raw = experiment.data_directory or str(self.data_directory(name))
        left = ""
        if storage is None:
            removed = "no storage directory was recorded"
        elif not storage.exists():
            removed = f"storage {storage} was already gone"
        else:
            self._check_inside_storage_root(storage)
            files, left = self._remove(name, storage)
            removed = f"storage {storage} ({files})"
        self.registry.delete_experiment(name)
        sentence = f"deleted experiment {name}: registry entry and {removed}; raw data in {raw} kept"
        log.info("%s", sentence)
        return self._done(sentence, left)

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

    def _group_id(self) -> Group | None:
        """dm.group: its group, refused when it does not exist."""
        if self.group is None:
            return None
        try:
            return Group(grp.getgrnam(self.group).gr_gid, self.group)
        except KeyError:
            raise DMError(
                f"dm.group: unix group {self.group!r} does not exist on this host; create it or set dm.group: null"
            ) from None

    def _tree_group(self, experiment: Experiment, fixed: Group | None) -> tuple[Group | None, str]:
        """The group of the experiment tree (dm.posix.group, else dm.group) and a warning naming a group
        that does not exist: the tree is made without it and everything else proceeds."""
        if self.posix_group is None:
            return fixed, ""
        try:
            name = posix_group(self.posix_group, experiment, beamline=self.beamline)
        except InputError as error:
            return None, f"{error}: its storage is not given to a group"
        try:
            return Group(grp.getgrnam(name).gr_gid, name), ""
        except KeyError:
            return None, (
                f"dm.posix.group: unix group {name!r} does not exist on this host, so the storage of "
                f"{experiment.name} is not given to it; create the group, then run Create again"
            )

    def _give_staff(self, name: str, storage_fd: int, storage: Path) -> str:
        """rwx for dm.posix.staff_groups on the storage tree open as `storage_fd`; a warning naming the groups
        that do not exist, and what got no ACL."""
        gids = {group: gid for group in self.staff_groups if (gid := _id(grp.getgrnam, group)) is not None}
        # not the records' folder: what staff may write there, the catalogue may not trust (the IOC's alone)
        entries = [acl.Entry(acl.GROUP, gid, acl.WRITE) for gid in gids.values()]
        what = f"the staff group{'s' if len(gids) > 1 else ''} {', '.join(gids)} rwx"
        skipped = self._grant(name, storage_fd, storage, entries, what, leave=(RECORDS_FOLDER,))
        absent = [group for group in self.staff_groups if group not in gids]
        if absent:
            return _sentences(f"dm.posix.staff_groups: unix group {', '.join(absent)} does not exist on this host: "
                              "no access for it", skipped)  # fmt: skip
        return skipped

    def _grant(self, name: str, fd: int, storage: Path, entries: Sequence[acl.Entry], what: str,
               leave: Sequence[str] = ()) -> str:  # fmt: skip
        """`entries` on the storage folder open as `fd` at once (access starts there), then below it as `walks`
        runs it (`what` it gives, for Status: "d310001 access"); a sentence naming what got none."""
        if not entries:
            return ""
        acl.grant(fd, storage, entries, leave=leave, below=False)
        walk = Walk(GRANT, name, str(storage), self._root_of(storage), what,
                    entries=[list(entry) for entry in entries], leave=list(leave))  # fmt: skip
        return self.walks.run(walk, fd)[0]

    def _remove(self, name: str, storage: Path) -> tuple[str, str]:
        """Rename the storage aside in its folder (the name is free for a new Create at once; a walk of it
        stops), then remove it as `walks` runs it: (its files for Status, what stayed)."""
        self.walks.drop(str(storage))
        aside = storage.with_name(f".{storage.name}.deleted-{uuid.uuid4().hex[:8]}")
        root = self._root_of(storage)
        walk = Walk(REMOVE, name, str(aside), root, str(storage))
        try:
            parent_fd = open_folder(str(storage.parent), root or None)
        except OSError as error:
            raise disk_error("delete", storage, error) from error
        try:  # no longer a storage once aside: its marker goes at once, and its files are the data alone
            left, files = self.walks.run(walk, parent_fd, lambda: set_aside(parent_fd, storage, aside, STORAGE_MARKER))
        except OSError as error:  # a symlink set aside, say: refused, never followed
            raise disk_error("delete", aside, error) from error
        finally:
            os.close(parent_fd)
        if files is None:
            return "its files are removed in the background", ""
        return plural(files, "file"), left

    def _root_of(self, storage: Path) -> str:
        """storage_root when `storage` is inside it ('' when the config's has changed since it was made)."""
        return str(self.storage_root) if self.storage_root in storage.parents else ""

    def _accounts(self, usernames: Sequence[str]) -> tuple[dict[str, int], list[str]]:
        """The unix accounts of DM usernames (`d` + badge) by dm.posix.user_account: ({existing: uid}, missing)."""
        assert self.user_account is not None
        names = [self.user_account.format(badge=u[1:]) for u in usernames if u.startswith("d") and u[1:].isdigit()]
        existing = {name: uid for name in names if (uid := _id(pwd.getpwnam, name)) is not None}
        return existing, [name for name in names if name not in existing]

    @contextlib.contextmanager
    def _storage_fd(self, storage: Path) -> Iterator[int]:
        """A descriptor of the storage folder, reached from storage_root one name at a time, never through a
        symlink (from its parent when the config's storage_root has changed since it was made)."""
        try:
            fd = open_folder(str(storage), self._root_of(storage) or None)
        except OSError as error:
            raise disk_error("open the storage", storage, error) from error
        try:
            yield fd
        finally:
            os.close(fd)

    def _check_inside_storage_root(self, storage: Path) -> None:
        root = self.storage_root.resolve()
        resolved = storage.resolve()
        if resolved == root or root not in resolved.parents:
            raise DMError(f"refusing to delete {storage}: it is not inside dm.storage_root {self.storage_root}")
