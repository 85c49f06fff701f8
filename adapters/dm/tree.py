"""An experiment's folders made on disk and removed: one name at a time from a folder's descriptor, never
through a symbolic link, each made with its group and mode; a disk error in a sentence for Status."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from ...ioc.domain.errors import DiskFull, DMError
from ...ioc.statefiles import FOLDER_FLAGS, disk_full
from ..transfer.folders import SymlinkRefused, open_child, shown

Progress = Callable[[int, bool], None]  # (files done so far, finished): a long walk says how far it is
TICK = 256  # a walk calls its `progress` every TICK files and folders, and at its end

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


def set_aside(parent_fd: int, path: Path, aside: Path, unmark: str) -> None:
    """Rename folder `path` (a name in the folder open as `parent_fd`) to `aside` beside it, then remove the
    file `unmark` of it (its storage marker), never through a symlink; DMError when the rename fails."""
    try:
        os.rename(path.name, aside.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except OSError as error:
        raise disk_error("delete", path, error) from error
    with contextlib.suppress(OSError):  # a symlink or a file renamed aside: its removal says so
        fd = open_child(parent_fd, aside.name, str(aside))
        try:
            os.unlink(unmark, dir_fd=fd)
        finally:
            os.close(fd)


def disk_error(action: str, path: Path, error: OSError, place: str = "storage") -> DMError:
    """`error` for Status: DiskFull ("storage full: ...", or the `place` it hit) when no space or quota is
    left, else DMError."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason += " (the disk is full)"
    if disk_full(error):
        return DiskFull(f"{place} full: cannot {action} {path}: {reason}")
    return DMError(f"cannot {action} {path}: {reason}")


class Count:
    """The files and names a walk has handled, told to its `progress` every TICK names (which may raise to stop
    the walk) and at its end."""

    def __init__(self, progress: Progress | None):
        self.progress, self.files, self.names = progress, 0, 0

    def one(self, *, file: bool) -> None:
        self.files += file
        self.names += 1
        if self.progress is not None and self.names % TICK == 0:
            self.progress(self.files, False)

    def end(self) -> None:
        if self.progress is not None:
            self.progress(self.files, True)


class Tally:
    """What a walk left alone, by reason: how many and one of them, for one sentence."""

    def __init__(self) -> None:
        self.reasons: dict[tuple[str, str], tuple[int, str]] = {}

    def add(self, path: str, one: str, many: str) -> None:
        """One more left alone: `path`, said as `one` (one of them) or `many`."""
        count, example = self.reasons.get((one, many), (0, path))
        self.reasons[(one, many)] = (count + 1, example)

    def sentence(self, head: str) -> str:
        """'{head} 3 files with ... (e.g. a/b), ...'; '' when nothing was left alone."""
        parts = [f"{count} {one if count == 1 else many} (e.g. {shown(example)})"
                 for (one, many), (count, example) in self.reasons.items()]  # fmt: skip
        return f"{head} {', '.join(parts)}" if parts else ""


def remove_tree(parent_fd: int, name: str, path: Path, progress: Progress | None = None) -> str:
    """Remove folder `name` of the folder open as `parent_fd` (`path` names it) with everything in it, one
    name at a time from descriptors opened without following a symlink: a symlink is removed, never
    followed, and a folder on another filesystem (a mount) is left with what is on it. `progress` is told
    the files removed so far every TICK names (it may raise to stop) and at the end. Returns a
    sentence naming what stayed ('' when everything went); FileNotFoundError when `name` is not there."""
    removal = _Removal(Count(progress))
    removal.run(parent_fd, name, path)
    return removal.left.sentence(f"{path}: not removed:")


class _Removal:
    """One removal, depth first: each folder emptied, then removed from its parent's descriptor."""

    def __init__(self, count: Count):
        self.count, self.left = count, Tally()
        self.device = -1

    def run(self, parent_fd: int, name: str, path: Path) -> None:
        top = open_child(parent_fd, name, str(path))
        self.device = os.fstat(top).st_dev
        stack = [(parent_fd, name, "", top, self._listing(top, ""))]
        try:
            while stack:
                parent, folder, rel, fd, names = stack[-1]
                if not names:
                    stack.pop()
                    os.close(fd)
                    self._remove(rel or ".", os.rmdir, folder, parent)
                    continue
                child, is_folder = names.pop()
                child_rel = f"{rel}/{child}" if rel else child
                if is_folder:
                    opened = self._open(fd, child, child_rel)
                    if opened is not None:
                        stack.append((fd, child, child_rel, opened, self._listing(opened, child_rel)))
                    self.count.one(file=False)
                else:
                    self.count.one(file=self._remove(child_rel, os.unlink, child, fd))
            self.count.end()
        finally:
            for _, _, _, fd, _ in stack:
                os.close(fd)

    def _listing(self, fd: int, rel: str) -> list[tuple[str, bool]]:
        """(name, is a folder) of everything in the folder open as `fd`, read whole: one descriptor a level."""
        try:
            with os.scandir(fd) as entries:
                found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        except OSError as error:
            self.left.add(rel or ".", f"folder not listed ({error.strerror})", f"folders not listed ({error.strerror})")
            return []
        return found

    def _open(self, parent_fd: int, name: str, rel: str) -> int | None:
        """Folder `name` of `parent_fd` opened to be emptied; None when it is gone, now a symlink or a file
        (removed as such), or on another filesystem (left, said)."""
        try:
            fd = os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a symlink or a file since listed
                self._remove(rel, os.unlink, name, parent_fd)
            elif error.errno != errno.ENOENT:
                self.left.add(rel, f"folder not opened ({error.strerror})", f"folders not opened ({error.strerror})")
            return None
        if os.fstat(fd).st_dev != self.device:
            os.close(fd)
            self.left.add(rel, "folder on another filesystem", "folders on another filesystem")
            return None
        return fd

    def _remove(self, rel: str, remove: Callable[..., None], name: str, parent_fd: int) -> bool:
        """`remove(name, dir_fd=parent_fd)` (unlink, rmdir); False, and said, when it failed (gone: True)."""
        try:
            remove(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return True
        except OSError as error:
            self.left.add(rel, f"file or folder that could not be removed ({error.strerror})",
                          f"files or folders that could not be removed ({error.strerror})")  # fmt: skip
            return False
        return True
