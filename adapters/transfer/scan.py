"""Scanning a source folder incrementally: which files appeared or went since the last poll."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .copying import PART_NAME
from .folders import SymlinkRefused, open_child, open_folder, shown

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Dir:
    mtime_ns: int = -1  # -1: never listed (a new folder, or one to list again)
    ctime_ns: int = -1
    files: dict[str, int] = field(default_factory=dict)  # name -> inode
    subdirs: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)  # symlinks and special files: not followed
    recheck_until: float = 0.0


class Tree:
    """Incremental view of one source folder: what appeared or disappeared since the last poll.

    A poll stats every known folder; only those whose mtime or ctime changed
    (or changed within `RECHECK_SECONDS`, against coarse timestamps) are listed
    again, and only new names, and names whose inode changed (a file replaced
    by a rename), are stat'ed. The ctime catches a folder whose mtime was set
    back (`rsync -a`, `touch -d`). With a `budget`, folders stop being listed
    once that many files were found: the others (`behind`) are listed at a
    later poll, so that a first scan of a million files is taken a part at a
    time. Folders are listed through descriptors reached from the root (itself
    from `beneath`) without following a symlink; symlinks and special files
    are skipped, each with one warning, and kept in `skipped`.
    """

    RECHECK_SECONDS = 2.0

    def __init__(self, root: str, beneath: str | None = None):
        self.root = root
        self.beneath = beneath
        self.dirs: dict[str, _Dir] = {}
        self.problems: dict[str, str] = {}  # folders that cannot be read: relpath -> why
        self.skipped: dict[str, str] = {}  # relpath -> what it is, for entries not followed
        self.behind = False  # the last poll left changed folders for the next one (its budget was spent)

    def poll(self, budget: int | None = None) -> tuple[list[tuple[str, int, int]], list[str]]:
        """(new files as (relpath, size, mtime_ns), removed relpaths); a file replaced by another (a new
        inode) is in both. With `budget`, no further folder is listed once that many files are found.

        FileNotFoundError if the root went, SymlinkRefused if it is (or is reached through) a symlink.
        """
        found: list[tuple[str, int, int]] = []
        removed: list[str] = []
        now = time.monotonic()
        self.behind = False
        root_fd = open_folder(self.root, self.beneath)
        try:
            self.dirs.setdefault("", _Dir())
            to_check = deque(self.dirs)  # folders found new during the poll join it
            while to_check:
                rel = to_check.popleft()
                known = self.dirs.get(rel)
                if known is None:
                    continue  # dropped with its parent during this poll
                st = self._stat(rel, root_fd, removed)
                if st is None:
                    continue
                if (st.st_mtime_ns, st.st_ctime_ns) == (known.mtime_ns, known.ctime_ns) and now >= known.recheck_until:
                    continue
                if budget is not None and len(found) >= budget:
                    self.behind = True  # listed at a later poll: its times are still the old ones
                    continue
                to_check.extend(self._relist(rel, root_fd, st, now, found, removed))
        finally:
            os.close(root_fd)
        return found, removed

    def knows(self, rel: str) -> bool:
        """The file `rel` was listed, and has not gone since (nor been forgotten)."""
        folder, _, name = rel.rpartition("/")
        known = self.dirs.get(folder)
        return known is not None and name in known.files

    def known_files(self) -> Iterator[str]:
        """Every file listed and not gone since."""
        for rel, known in self.dirs.items():
            prefix = f"{rel}/" if rel else ""
            for name in known.files:
                yield prefix + name

    def forget(self, rel: str) -> None:
        """Forget the file `rel` (it vanished): if its folder lists it again, it is found as new."""
        folder, _, name = rel.rpartition("/")
        known = self.dirs.get(folder)
        if known is not None:
            known.files.pop(name, None)

    def _stat(self, rel: str, root_fd: int, removed: list[str]) -> os.stat_result | None:
        """The folder's metadata (only: what is read is reached through descriptors); None, and the folder
        dropped, when it went or is no longer a folder (its parent's listing says what it is now)."""
        if not rel:
            return os.fstat(root_fd)
        try:
            st = os.stat(self._path(rel), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            self._drop(rel, removed)
            return None
        if not stat.S_ISDIR(st.st_mode):
            self._drop(rel, removed)
            return None
        return st

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _relist(
        self, rel: str, root_fd: int, st: os.stat_result, now: float, found: list, removed: list[str]
    ) -> list[str]:
        """List folder `rel` (reached from the root one name at a time); its new subfolders."""
        if not rel:
            return self._list(rel, root_fd, st, now, found, removed)
        fd, walked = os.dup(root_fd), ""
        try:
            for name in rel.split("/"):
                walked = f"{walked}/{name}" if walked else name
                child = open_child(fd, name, self._path(walked))
                os.close(fd)
                fd = child
        except (FileNotFoundError, NotADirectoryError, SymlinkRefused):
            os.close(fd)
            self._drop(rel, removed)
            return []
        except OSError as error:
            os.close(fd)
            self._unreadable(rel, error)
            return []
        try:
            return self._list(rel, fd, st, now, found, removed)
        finally:
            os.close(fd)

    def _unreadable(self, rel: str, error: OSError) -> None:
        self.problems[rel] = f"cannot read source folder {shown(self._path(rel))}: {error.strerror or error}"
        self.dirs.setdefault(rel, _Dir()).mtime_ns = -1  # listed again at the next poll

    def _list(
        self, rel: str, fd: int, st: os.stat_result, now: float, found: list[tuple[str, int, int]], removed: list[str]
    ) -> list[str]:
        """List the folder open as `fd` (whose metadata before the listing is `st`: a change during the
        listing shows at the next poll); its new subfolders, known from now on and listed after it."""
        known = self.dirs.setdefault(rel, _Dir())
        try:
            with os.scandir(fd) as listing:
                files, subdirs, skipped = _sorted_entries(listing)
        except OSError as error:
            self._unreadable(rel, error)
            return []
        if (st.st_mtime_ns, st.st_ctime_ns) != (known.mtime_ns, known.ctime_ns):
            known.recheck_until = now + self.RECHECK_SECONDS
        known.mtime_ns, known.ctime_ns = st.st_mtime_ns, st.st_ctime_ns
        self.problems.pop(rel, None)
        prefix = f"{rel}/" if rel else ""
        _stat_new_files(fd, prefix, known.files, files, found, removed)
        self._note_skipped(prefix, known.skipped, skipped)
        known.skipped = set(skipped)
        removed.extend(prefix + name for name in known.files.keys() - files.keys())
        for name in known.subdirs - subdirs:
            self._drop(prefix + name, removed)
        new_subdirs = [prefix + name for name in subdirs - known.subdirs]
        known.files, known.subdirs = files, subdirs
        for child in new_subdirs:
            self.dirs[child] = _Dir()
        return new_subdirs

    def _note_skipped(self, prefix: str, before: set[str], now: dict[str, bool]) -> None:
        """Warn once about each new entry not followed; forget those that went."""
        for name in before - now.keys():
            self.skipped.pop(prefix + name, None)
        for name in now.keys() - before:
            what = "a symbolic link" if now[name] else "not a regular file"
            self.skipped[prefix + name] = what
            log.warning("%s: %s is %s: not followed, not copied", shown(self.root), shown(prefix + name), what)

    def _drop(self, rel: str, removed: list[str]) -> None:
        """Forget folder `rel` and what is below it (its files removed); its parent lists it as new if it
        is a folder again."""
        known = self.dirs.pop(rel, None)
        self.problems.pop(rel, None)
        if known is None:
            return
        folder, _, name = rel.rpartition("/")
        parent = self.dirs.get(folder) if rel else None
        if parent is not None:
            parent.subdirs.discard(name)
        prefix = f"{rel}/" if rel else ""
        removed.extend(prefix + name for name in known.files)
        for name in known.skipped:
            self.skipped.pop(prefix + name, None)
        for name in known.subdirs:
            self._drop(prefix + name, removed)


def _sorted_entries(entries: Iterable[os.DirEntry]) -> tuple[dict[str, int], set[str], dict[str, bool]]:
    """A folder's entries as (files: name -> inode, subfolders, skipped: name -> is a symlink).

    Partial copies (`PART_NAME`) are left out; an entry that went during the listing is passed over.
    """
    files: dict[str, int] = {}
    subdirs: set[str] = set()
    skipped: dict[str, bool] = {}
    for entry in entries:
        name = entry.name
        try:
            if entry.is_file(follow_symlinks=False):  # the most of them: first
                if name[0] != "." or not PART_NAME.match(name):
                    files[name] = entry.inode()
            elif entry.is_dir(follow_symlinks=False):
                subdirs.add(name)
            else:
                skipped[name] = entry.is_symlink()
        except OSError:
            continue
    return files, subdirs, skipped


def _stat_new_files(
    fd: int,
    prefix: str,
    known: dict[str, int],
    files: dict[str, int],
    found: list[tuple[str, int, int]],
    removed: list[str],
) -> None:
    """Add to `found` each file of `files` new since `known`, and to `found` and `removed` each of another
    inode (replaced); drop from `files` those that went or are no longer regular files since the listing
    (the next listing sees them)."""
    for name, inode in list(files.items()):
        before = known.get(name)
        if before == inode:
            continue
        try:
            entry_stat = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            del files[name]
            continue
        if not stat.S_ISREG(entry_stat.st_mode):
            del files[name]  # replaced since the listing: seen at the next one
            continue
        if before is not None:
            removed.append(prefix + name)
        found.append((prefix + name, entry_stat.st_size, entry_stat.st_mtime_ns))
