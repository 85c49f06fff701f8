"""Scanning a source folder incrementally: which files appeared or went since the last poll."""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field

from .copying import PART_NAME
from .folders import SymlinkRefused, open_child, open_folder, shown

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Dir:
    mtime_ns: int = -1
    files: dict[str, int] = field(default_factory=dict)  # name -> inode
    subdirs: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)  # symlinks and special files: not followed
    recheck_until: float = 0.0


class Tree:
    """Incremental view of one source folder: what appeared or disappeared since the last poll.

    Only directories whose mtime changed (or changed within `RECHECK_SECONDS`,
    against coarse timestamps) are listed again; only new names, and names
    whose inode changed (a file replaced by a rename), are stat'ed. Folders are
    listed through descriptors reached from the root (itself from `beneath`)
    without following a symlink; symlinks and special files are skipped, each
    with one warning, and kept in `skipped`.
    """

    RECHECK_SECONDS = 2.0

    def __init__(self, root: str, beneath: str | None = None):
        self.root = root
        self.beneath = beneath
        self.dirs: dict[str, _Dir] = {}
        self.problems: dict[str, str] = {}  # folders that cannot be read: relpath -> why
        self.skipped: dict[str, str] = {}  # relpath -> what it is, for entries not followed

    def poll(self) -> tuple[list[tuple[str, int, int]], list[str]]:
        """(new files as (relpath, size, mtime_ns), removed relpaths).

        FileNotFoundError if the root went, SymlinkRefused if it is (or is reached through) a symlink.
        """
        found: list[tuple[str, int, int]] = []
        removed: list[str] = []
        now = time.monotonic()
        root_fd = open_folder(self.root, self.beneath)
        try:
            if not self.dirs:
                self._list("", root_fd, os.fstat(root_fd), now, found, removed)
                return found, removed
            for rel in list(self.dirs):
                known = self.dirs.get(rel)
                if known is None:
                    continue  # dropped with its parent during this poll
                if rel:
                    try:  # metadata only: what is read is reached through descriptors
                        st = os.stat(self._path(rel), follow_symlinks=False)
                    except (FileNotFoundError, NotADirectoryError):
                        self._drop(rel, removed)
                        continue
                    if not stat.S_ISDIR(st.st_mode):
                        self._drop(rel, removed)  # replaced by a file or a symlink: its parent's listing says which
                        continue
                else:
                    st = os.fstat(root_fd)
                if st.st_mtime_ns != known.mtime_ns or now < known.recheck_until:
                    self._relist(rel, root_fd, st, now, found, removed)
        finally:
            os.close(root_fd)
        return found, removed

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _relist(self, rel: str, root_fd: int, st: os.stat_result, now: float, found: list, removed: list[str]) -> None:
        if not rel:
            self._list(rel, root_fd, st, now, found, removed)
            return
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
            return
        except OSError as error:
            os.close(fd)
            self._unreadable(rel, error)
            return
        try:
            self._list(rel, fd, st, now, found, removed)
        finally:
            os.close(fd)

    def _unreadable(self, rel: str, error: OSError) -> None:
        self.problems[rel] = f"cannot read source folder {shown(self._path(rel))}: {error.strerror or error}"
        self.dirs.setdefault(rel, _Dir()).mtime_ns = -1  # listed again at the next poll

    def _list(
        self, rel: str, fd: int, st: os.stat_result, now: float, found: list[tuple[str, int, int]], removed: list[str]
    ) -> None:
        """List the folder open as `fd`; recurse into its new subfolders."""
        known = self.dirs.setdefault(rel, _Dir())
        if st.st_mtime_ns != known.mtime_ns:
            known.recheck_until = now + self.RECHECK_SECONDS
        known.mtime_ns = st.st_mtime_ns
        try:
            with os.scandir(fd) as listing:
                entries = list(listing)
        except OSError as error:
            self._unreadable(rel, error)
            return
        self.problems.pop(rel, None)
        files, subdirs, skipped = _sorted_entries(entries)
        prefix = f"{rel}/" if rel else ""
        _stat_new_files(fd, prefix, known.files, files, found)
        self._note_skipped(prefix, known.skipped, skipped)
        known.skipped = set(skipped)
        removed.extend(prefix + name for name in known.files.keys() - files.keys())
        for name in known.subdirs - subdirs:
            self._drop(prefix + name, removed)
        known.files, new_subdirs, known.subdirs = files, subdirs - known.subdirs, subdirs
        self._list_new_subdirs(fd, prefix, known, new_subdirs, now, found, removed)

    def _list_new_subdirs(
        self,
        fd: int,
        prefix: str,
        known: _Dir,
        new_subdirs: set[str],
        now: float,
        found: list[tuple[str, int, int]],
        removed: list[str],
    ) -> None:
        """List each new subfolder of the folder open as `fd`, and theirs; one that went is forgotten."""
        for name in new_subdirs:
            child_rel = prefix + name
            try:
                child = open_child(fd, name, self._path(child_rel))
            except (FileNotFoundError, NotADirectoryError, SymlinkRefused):
                known.subdirs.discard(name)  # gone or replaced since the listing: seen at the next one
                continue
            except OSError as error:
                self._unreadable(child_rel, error)
                continue
            try:
                self._list(child_rel, child, os.fstat(child), now, found, removed)
            finally:
                os.close(child)

    def _note_skipped(self, prefix: str, before: set[str], now: dict[str, bool]) -> None:
        """Warn once about each new entry not followed; forget those that went."""
        for name in before - now.keys():
            self.skipped.pop(prefix + name, None)
        for name in now.keys() - before:
            what = "a symbolic link" if now[name] else "not a regular file"
            self.skipped[prefix + name] = what
            log.warning("%s: %s is %s: not followed, not copied", shown(self.root), shown(prefix + name), what)

    def _drop(self, rel: str, removed: list[str]) -> None:
        known = self.dirs.pop(rel, None)
        self.problems.pop(rel, None)
        if known is None:
            return
        prefix = f"{rel}/" if rel else ""
        removed.extend(prefix + name for name in known.files)
        for name in known.skipped:
            self.skipped.pop(prefix + name, None)
        for name in known.subdirs:
            self._drop(prefix + name, removed)


def _sorted_entries(entries: list[os.DirEntry]) -> tuple[dict[str, int], set[str], dict[str, bool]]:
    """A folder's entries as (files: name -> inode, subfolders, skipped: name -> is a symlink).

    Partial copies (`PART_NAME`) are left out; an entry that went during the listing is passed over.
    """
    files: dict[str, int] = {}
    subdirs: set[str] = set()
    skipped: dict[str, bool] = {}
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.add(entry.name)
            elif entry.is_file(follow_symlinks=False):
                if not PART_NAME.match(entry.name):
                    files[entry.name] = entry.inode()
            else:
                skipped[entry.name] = entry.is_symlink()
        except OSError:
            continue
    return files, subdirs, skipped


def _stat_new_files(
    fd: int, prefix: str, known: dict[str, int], files: dict[str, int], found: list[tuple[str, int, int]]
) -> None:
    """Add to `found` each file of `files` new since `known` (or of another inode); drop from `files` those
    that went or are no longer regular files since the listing (the next listing sees them)."""
    for name, inode in list(files.items()):
        if known.get(name) == inode:
            continue
        try:
            entry_stat = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            del files[name]
            continue
        if not stat.S_ISREG(entry_stat.st_mode):
            del files[name]  # replaced since the listing: seen at the next one
            continue
        found.append((prefix + name, entry_stat.st_size, entry_stat.st_mtime_ns))
