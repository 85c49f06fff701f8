"""Copying files whole: through a verified temporary file made durable, then renamed into place."""

from __future__ import annotations

import errno
import functools
import logging
import os
import random
import re
import stat
import threading
from collections.abc import Callable, Sequence

from ...ioc.statefiles import disk_full
from .bytecopy import SYNCFS_WORKS, Cancelled, Written, copy_data, digest_of, syncfs
from .folders import Folders, SymlinkRefused, open_folder, reason_for, shown
from .storage import StorageUnavailable

log = logging.getLogger(__name__)

PART_NAME = re.compile(r"^\..*\.part-[0-9a-f]{8}$", re.DOTALL)
# A source file: never through a symlink; O_NONBLOCK so that a FIFO put in its place cannot block the open.
SOURCE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A copy keeps the source's rwx bits, never its setuid, setgid or sticky bit: whoever may write a detector
# folder could otherwise plant a setuid program that the experiment's users would run as the IOC's user.
COPIED_MODE_BITS = 0o777

# Copy outcomes; FAILED is also the state of a file waiting for its retry
COPIED, CHANGED, VANISHED, CANCELLED, FAILED = "copied", "changed", "vanished", "cancelled", "failed"
NO_STORAGE = "no storage"  # the storage is not the one Create made: nothing written, the file waits


def part_name(name: str) -> str:
    """The temporary name a copy of `name` is written under, in the same folder."""
    stem = os.fsdecode(os.fsencode(name)[:200])
    return f".{stem}.part-{random.getrandbits(32):08x}"


def copy_files(
    source: str,
    dest: str,
    items: Sequence[tuple[str, tuple[int, int]]],
    *,
    checksum: bool = False,
    cancel: threading.Event | None = None,
    open_source: Callable[[], int] | None = None,
    open_dest: Callable[[], int] | None = None,
    written: Written | None = None,
    checksums: dict[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Copy each (relpath, expected (size, mtime_ns)) from folder `source` to the same relpath under `dest`,
    through a durable, verified temporary file and a rename.

    `open_source` and `open_dest` give the two folders' descriptors (default:
    `open_folder`); every folder and file below them is reached by name from
    them, never through a symlink. Folders missing below `dest` are made, never
    `dest` itself. `open_dest` may raise StorageUnavailable: every item is then
    NO_STORAGE with its message, nothing written. `written` counts the bytes
    written as they are written (whatever becomes of the copies). With
    `checksum`, `checksums` gets the source's digest of each copy renamed
    into place, the one the copy was verified against: {relpath: "blake2b:<hex>"}.

    Returns an (outcome, reason) per item: COPIED, CHANGED (the source is not
    `expected` or changed during the copy: nothing written), VANISHED (gone, or
    no longer a regular file reached without a symlink), CANCELLED, NO_STORAGE,
    or FAILED with a sentence; no temporary file is left behind.

    Three phases, so that several small files share one flush:
    1. each file is copied to `.NAME.part-XXXXXXXX` beside its destination,
       given the source's mode (rwx bits only) and mtime, and its size (or checksum) checked;
    2. the copies' data and inodes are made durable: one syncfs(2) per
       destination filesystem for the whole batch (one fsync for a single
       file, or per file where syncfs is missing). syncfs reports writeback
       errors that happened since its fd was opened, so that fd is a dup of
       the first temporary file's, opened before any of the batch was written;
    3. each source is stat'ed again (it must still be `expected`), and its
       copy renamed into place (FAILED if its temporary name is no longer
       the file written: someone renamed another over it).
    Data is durable BEFORE its rename, as with an fsync per file: a power
    failure can lose a rename (the engine makes renames durable before it
    records them in its ledger), never leave a name pointing at missing data.
    A file renamed but not yet in the ledger is then either absent (re-sent)
    or whole with the source's size and mtime (counted as sent).
    """
    try:
        sources, dests = _open_folders(source, dest, open_source, open_dest)
    except _Unopened as unopened:
        return [unopened.result] * len(items)
    batch = _Batch(source, dest, sources, dests, items)
    try:
        aside = batch.write_aside(checksum, cancel, written)
        if aside and not (cancel is not None and cancel.is_set()) and batch.flush():
            batch.rename()
        if checksums is not None:
            checksums.update(batch.checksums())
        return batch.results
    finally:
        batch.close()


class _Unopened(Exception):
    """A folder of a batch cannot be opened: `result` is every item's."""

    def __init__(self, outcome: str, reason: str):
        super().__init__(reason)
        self.result = (outcome, reason)


def _open_folders(
    source: str, dest: str, open_source: Callable[[], int] | None, open_dest: Callable[[], int] | None
) -> tuple[Folders, Folders]:
    """The two folders of a `copy_files` batch, or _Unopened."""
    try:
        sources = Folders(source, (open_source or functools.partial(open_folder, source))(), make=False)
    except OSError as error:
        if _gone(error):
            raise _Unopened(VANISHED, "") from None
        raise _Unopened(FAILED, f"cannot read {shown(source)}: {reason_for(error, source)}") from None
    try:
        dests = Folders(dest, (open_dest or functools.partial(open_folder, dest))(), make=True)
    except StorageUnavailable as error:
        sources.close()
        raise _Unopened(NO_STORAGE, str(error)) from None
    except OSError as error:
        sources.close()
        raise _Unopened(FAILED, _written(error, f"cannot copy into {shown(dest)}: {reason_for(error, dest)}")) from None
    return sources, dests


class _Batch:
    """One `copy_files` call, in its three phases: its folders, items, results and the copies written aside."""

    def __init__(
        self, source: str, dest: str, sources: Folders, dests: Folders, items: Sequence[tuple[str, tuple[int, int]]]
    ):
        self.source, self.dest, self.sources, self.dests, self.items = source, dest, sources, dests, items
        self.results: list[tuple[str, str]] = [(CANCELLED, "")] * len(items)
        self.written: list[tuple[int, str]] = []  # (index, temporary name) after phase 1; "" once renamed
        self.inodes: dict[int, tuple[int, int]] = {}  # index -> (st_dev, st_ino) of the copy written aside
        self.digests: dict[int, str] = {}  # index -> "blake2b:<hex>" of the source, when hashed
        self.per_file = len(items) == 1 or not SYNCFS_WORKS
        self.sync_fds: dict[int, int] = {}  # st_dev -> fd for syncfs

    def write_aside(self, checksum: bool, cancel: threading.Event | None, written: Written | None) -> bool:
        """Phase 1: each file copied beside its destination; False when cancelled."""
        for index, (rel, expected) in enumerate(self.items):
            if cancel is not None and cancel.is_set():
                return False
            try:
                sync_fds = None if self.per_file else self.sync_fds
                outcome, tmp, inode, digest = _write_aside(self.sources, self.dests, rel, expected, checksum, cancel,
                                                           sync_fds, written)  # fmt: skip
            except Cancelled:
                return False
            except OSError as error:
                self.results[index] = _failure(error, self.source, self.dest, rel)
                continue
            if tmp:
                self.written.append((index, tmp))  # CANCELLED until renamed
                self.inodes[index] = inode
                if digest:
                    self.digests[index] = digest
            else:
                self.results[index] = (outcome, "")
        return True

    def flush(self) -> bool:
        """Phase 2: the copies made durable; False, every copy FAILED, when that fails."""
        try:
            for fd in self.sync_fds.values():
                syncfs(fd)
        except OSError as error:
            for index, _tmp in self.written:
                src, dst = (shown(os.path.join(folder, self.items[index][0])) for folder in (self.source, self.dest))
                self.results[index] = (
                    FAILED,
                    _written(error, f"cannot copy {src} to {dst}: cannot flush the copies: {reason_for(error)}"),
                )
            return False
        return True

    def rename(self) -> None:
        """Phase 3: each copy whose source is still as expected renamed into place."""
        for position, (index, tmp) in enumerate(self.written):
            rel, expected = self.items[index]
            folder, _, name = rel.rpartition("/")
            try:
                try:
                    after = os.stat(name, dir_fd=self.sources.get(folder), follow_symlinks=False)
                except OSError as error:
                    raise _SourceError(error) from None
                if (after.st_size, after.st_mtime_ns) != expected or not stat.S_ISREG(after.st_mode):
                    self.results[index] = (CHANGED, "")
                    continue
                folder_fd = self.dests.get(folder)
                found = os.stat(tmp, dir_fd=folder_fd, follow_symlinks=False)
                if (found.st_dev, found.st_ino) != self.inodes[index]:  # something renamed over it
                    raise OSError(errno.EIO, f"its temporary copy {shown(tmp)} was replaced: not renamed")
                os.replace(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
                self.written[position] = (index, "")
                self.results[index] = (COPIED, "")
            except OSError as error:
                self.results[index] = _failure(error, self.source, self.dest, rel)

    def checksums(self) -> dict[str, str]:
        """{relpath: the source's digest} of the copies renamed into place that were hashed."""
        return {self.items[i][0]: digest for i, digest in self.digests.items() if self.results[i][0] == COPIED}

    def close(self) -> None:
        """Close every descriptor; remove the copies not renamed."""
        for fd in self.sync_fds.values():
            os.close(fd)
        for index, tmp in self.written:
            if tmp:
                _unlink_quietly(self.dests.get(self.items[index][0].rpartition("/")[0]), tmp)
        self.sources.close()
        self.dests.close()


def _gone(error: OSError) -> bool:
    """The file or folder a copy reads is no longer there as a real one (removed, or a symlink now)."""
    return isinstance(error, (FileNotFoundError, NotADirectoryError, SymlinkRefused)) or error.errno == errno.ELOOP


def _failure(error: OSError, source: str, dest: str, rel: str) -> tuple[str, str]:
    src, dst = os.path.join(source, rel), os.path.join(dest, rel)
    if isinstance(error, _SourceError):
        if _gone(error.error):
            return VANISHED, ""
        return FAILED, f"cannot copy {shown(src)} to {shown(dst)}: {reason_for(error.error, src, dst)}"
    return FAILED, _written(error, f"cannot copy {shown(src)} to {shown(dst)}: {reason_for(error, src, dst)}")


def _written(error: OSError, sentence: str) -> str:
    """`sentence` about writing a copy, led by "storage full: " when the storage has no space (or quota) left."""
    return f"storage full: {sentence}" if disk_full(error) else sentence


class _SourceError(OSError):
    """An error reading the source of a copy (not writing its destination)."""

    def __init__(self, error: OSError):
        super().__init__(error.errno, error.strerror, error.filename)
        self.error = error


def _write_aside(
    sources: Folders,
    dests: Folders,
    rel: str,
    expected: tuple[int, int],
    checksum: bool,
    cancel: threading.Event | None,
    sync_fds: dict[int, int] | None,
    written: Written | None = None,
) -> tuple[str, str, tuple[int, int], str]:
    """Phase 1 of `copy_files`: (COPIED, temporary name in rel's destination folder, its (st_dev, st_ino),
    "blake2b:<hex>" of the source with `checksum` else ""), or (CHANGED, "", (0, 0), "").

    With `sync_fds` None the copy is fsync'ed here; otherwise its filesystem's
    fd is added to `sync_fds` for one syncfs later. The copy is checked through
    the descriptor that wrote it: its name is never opened again.
    """
    folder, _, name = rel.rpartition("/")
    try:
        src_fd = os.open(name, SOURCE_FLAGS, dir_fd=sources.get(folder))
    except OSError as error:
        raise _SourceError(error) from None
    try:
        before = os.fstat(src_fd)
        if not stat.S_ISREG(before.st_mode):
            raise _SourceError(FileNotFoundError(errno.ENOENT, "no longer a regular file", rel))
        if (before.st_size, before.st_mtime_ns) != expected:
            return CHANGED, "", (0, 0), ""
        folder_fd = dests.get(folder)
        tmp = part_name(name)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder_fd)
        try:
            try:
                if sync_fds is not None:
                    device = os.fstat(fd).st_dev
                    if device not in sync_fds:
                        sync_fds[device] = os.dup(fd)  # before this batch's data is written: see copy_files
                copied, source_digest = copy_data(src_fd, fd, before.st_size, checksum, cancel, written)
                os.fchmod(fd, before.st_mode & COPIED_MODE_BITS)
                os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
                if sync_fds is None:
                    os.fsync(fd)
                if copied != before.st_size:
                    raise OSError(errno.EIO, f"copy has {copied} bytes, source {before.st_size}")
                if source_digest is not None and digest_of(fd) != source_digest:
                    raise OSError(errno.EIO, "checksum of the copy differs from the source")
                copy = os.fstat(fd)
            finally:
                os.close(fd)
            done, tmp = tmp, ""
            digest = "blake2b:" + source_digest.hex() if source_digest is not None else ""
            return COPIED, done, (copy.st_dev, copy.st_ino), digest
        finally:
            if tmp:
                _unlink_quietly(folder_fd, tmp)
    finally:
        os.close(src_fd)


def _unlink_quietly(folder_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder_fd)
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("cannot remove temporary file %s", shown(name), exc_info=True)


def remove_part_files(folder_fd: int) -> int:
    """Remove leftover temporary copies under the folder open as `folder_fd` (after a kill); return how many."""
    removed = 0
    for _path, _dirs, names, dir_fd in os.fwalk(".", dir_fd=folder_fd, follow_symlinks=False):
        for name in names:
            if PART_NAME.match(name):
                _unlink_quietly(dir_fd, name)
                removed += 1
    return removed
