"""An experiment's folders made on disk: one name at a time from a folder's descriptor, never through a
symbolic link, each with its group and mode; a disk error in a sentence for Status."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ...ioc.domain.errors import DiskFull, DMError
from ...ioc.statefiles import disk_full
from ..transfer.folders import SymlinkRefused, open_child

# rwx for owner and group, nothing for others: proposals can be proprietary, and
# users reach their data through Globus sharing, not through local accounts.
# The setgid bit makes files and subfolders inherit the group, so the beamline
# group (dm.group) keeps access to whatever the transfer engine or staff write.
DIR_MODE = 0o2770
# With dm.posix.group, the folders above the storages (year, run...) let others through, never list them:
# each proposal's group must reach its own storage; the storages themselves stay DIR_MODE.
SHARED_DIR_MODE = 0o2771


class Group(NamedTuple):
    """A unix group a folder is given to."""

    gid: int
    name: str


def open_top(folder: Path) -> int:
    """A descriptor of a folder the config names (storage_root, data_top_dir: a symlink there is the admin's)."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise disk_error("open folder", folder, error) from error


def require_root(root: Path, key: str) -> None:
    """Refuse a `root` (config `key`) that is not a folder: creating it would write onto the system disk
    under an unmounted share."""
    if not root.is_dir():
        raise DMError(f"{key}: {root} does not exist or is not a folder (is the disk mounted?); nothing created")


def make_storage(base: Path, storage: Path, subdirs: Sequence[str], fixed: Group | None, tree: Group | None,
                 shared_mode: int) -> int:  # fmt: skip
    """Make what is missing of `storage` and its `subdirs`, one name at a time from `base`'s descriptor
    (storage_root), never through a symlink; return the storage folder's descriptor.

    The folders between `base` and the storage (year-month, year, run...) are shared with other
    experiments: made if missing (group `fixed`, `shared_mode`), else left as they are.
    """
    fd = open_top(base)
    try:
        path = base
        for name in storage.relative_to(base).parts[:-1]:
            path = path / name
            child = make_dir(fd, path, fixed, mode=shared_mode, adopt_existing=False)
            os.close(fd)
            fd = child
        child = make_dir(fd, storage, tree)
        os.close(fd)
        fd = child
        for sub in subdirs:
            os.close(make_dir(fd, storage / sub, tree))
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dir(
    parent_fd: int,
    path: Path,
    group: Group | None,
    *,
    mode: int = DIR_MODE,
    adopt_existing: bool = True,
    place: str = "storage",
) -> int:
    """Create folder `path` (its name, in the folder open as `parent_fd`) with `mode` and the group; an
    existing folder is fixed up when `adopt_existing`. Returns its descriptor; `place` (storage,
    data_top_dir) names the disk when it is full.

    A symbolic link where the folder must be is refused (a chmod through it would change its target).
    """
    try:
        os.mkdir(path.name, 0o700, dir_fd=parent_fd)  # 0700 until its group and mode are set
        made = True
    except FileExistsError:
        made = False
    except OSError as error:
        raise disk_error("create folder", path, error, place) from error
    try:
        fd = open_child(parent_fd, path.name, str(path))
    except SymlinkRefused:
        raise DMError(
            f"{path} is a symbolic link, not a folder: refused (an experiment's folders must be real "
            "folders); remove it and run Create again"
        ) from None
    except NotADirectoryError:
        raise DMError(f"cannot create folder {path}: a file of that name is in the way") from None
    except OSError as error:
        raise disk_error("open folder", path, error, place) from error
    if not made and not adopt_existing:
        return fd
    try:
        if group is not None:
            try:
                os.fchown(fd, -1, group.gid)
            except OSError as error:
                raise DMError(
                    f"cannot give {path} to group {group.name!r}: {error.strerror} "
                    f"(the IOC's user must be a member of {group.name!r})"
                ) from error
        try:
            # fchmod, not mkdir's mode: mkdir applies the umask and may drop the setgid bit.
            os.fchmod(fd, mode)
        except OSError as error:
            raise disk_error("set permissions on", path, error, place) from error
    except BaseException:
        os.close(fd)
        raise
    return fd


def disk_error(action: str, path: Path, error: OSError, place: str = "storage") -> DMError:
    """`error` for Status: DiskFull ("storage full: ...", or the `place` it hit) when no space or quota is
    left, else DMError."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason += " (the disk is full)"
    if disk_full(error):
        return DiskFull(f"{place} full: cannot {action} {path}: {reason}")
    return DMError(f"cannot {action} {path}: {reason}")
