"""POSIX ACLs on an experiment's storage tree, set through file descriptors, never by path.

Whoever may write the storage (the proposal group) may swap any file or folder in it for a symbolic
link while a walk runs, or plant a hard link to a file outside it. So the walk opens each folder and
file by name from its folder's descriptor with O_NOFOLLOW, checks with fstat that it is what was listed
(a folder, a regular file), and reads and writes its ACL as the `system.posix_acl_access` and
`system.posix_acl_default` extended attributes of that descriptor: a link swapped in is never
followed, and nothing outside the tree changes. Files with more than one hard link (one may be the
name of a file outside), and files and folders on another filesystem than the storage, get no ACL;
the caller is told how many.

Folders get the entry and a default entry, so files made later (by the transfer) inherit it: r-x, cut
to r-- by the file's group bits (its ACL mask) unless the file is executable; files there at AddUser
get r-- itself. The mask is recomputed as setfacl does (the union of the group class). No setfacl, no
pylibacl (no wheel: it compiles against libacl's headers): the xattr format is the kernel's
(include/uapi/linux/posix_acl_xattr.h). A change is worked out once per distinct ACL in a tree, so
100,000 files take about 1.1 s here (ext4; find and setfacl: 1.3 s). The top folder and what is below it
can be changed apart (`top`, `below`): a command changes the top folder at once (access starts or ends
there), the walks of adapters/dm/walks.py the rest in the background, said through `progress`.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from ...ioc.domain.errors import DMError
from ..transfer.folders import FOLDER_FLAGS
from .tree import Count, Progress, Tally

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
VERSION = 2
UNDEFINED_ID = 0xFFFFFFFF  # the id of the entries that name no one (owner, owning group, mask, other)
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_HEADER, _ENTRY = struct.Struct("<I"), struct.Struct("<HHI")
_BASE = (USER_OBJ, GROUP_OBJ, OTHER)
_NAMED = (USER, GROUP)

READ = 0o5  # r-x on folders; files get it without x: r--
WRITE = 0o7  # rwx on folders; files: rw-
EXECUTE = 0o1

# Files never through a symlink either; O_NONBLOCK and O_NOCTTY so that a FIFO or a terminal swapped in
# cannot block the walk or become the IOC's terminal (they are then skipped by their type).
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 128  # folders open at once during a walk; deeper ones are left alone, and said
# Gone, or no longer what was listed (a symlink, a file for a folder): skipped without a word.
_CHANGED = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO}

Acl = dict[tuple[int, int], int]  # (tag, id) -> permission bits rwx


class Entry(NamedTuple):
    """A named entry to give: USER or GROUP, its uid or gid, its permission on folders (files get it
    without x)."""

    tag: int
    id: int
    perm: int


# ------------------------------------------------------------------ the xattr format


def decode(data: bytes) -> Acl:
    """An ACL from its xattr value; ValueError when it is not one."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"not a POSIX ACL: {len(data)} bytes")
    (version,) = _HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"POSIX ACL version {version}, not {VERSION}")
    acl: Acl = {}
    for tag, perm, ident in _ENTRY.iter_unpack(data[_HEADER.size :]):
        acl[(tag, ident if tag in _NAMED else UNDEFINED_ID)] = perm
    return acl


def encode(acl: Mapping[tuple[int, int], int]) -> bytes:
    """The xattr value of `acl`: entries sorted by tag, then id, as the kernel requires."""
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(tag, perm, ident) for (tag, ident), perm in sorted(acl.items()))


def from_mode(mode: int) -> Acl:
    """The ACL that a file without one has: its mode's owner, group and other bits."""
    return {(USER_OBJ, UNDEFINED_ID): mode >> 6 & 7, (GROUP_OBJ, UNDEFINED_ID): mode >> 3 & 7,
            (OTHER, UNDEFINED_ID): mode & 7}  # fmt: skip


def with_mask(acl: Acl) -> Acl:
    """`acl` with its mask recomputed as setfacl does: the union of the owning group and named entries;
    a mask is added when there are named entries, kept (recomputed) when there was one."""
    named = [perm for (tag, _), perm in acl.items() if tag in _NAMED]
    if named or (MASK, UNDEFINED_ID) in acl:
        mask = acl.get((GROUP_OBJ, UNDEFINED_ID), 0)
        for perm in named:
            mask |= perm
        acl[(MASK, UNDEFINED_ID)] = mask
    return acl


# ------------------------------------------------------------------ the change


class _Change:
    """Entries to give and (tag, id) keys to take away; what that makes of an ACL, worked out once per
    distinct ACL met in the tree (a tree's files mostly share one)."""

    def __init__(self, give: Sequence[Entry], take: Iterable[tuple[int, int]]):
        self.give, self.take = tuple(give), frozenset(take)
        self._done: dict[tuple[object, ...], bytes | None] = {}

    def access(self, present: bytes | None, mode: int, folder: bool) -> bytes | None:
        """The new access ACL of a file or folder with `present` (None: none, its mode's bits stand for
        it); None when nothing changes."""
        key = (ACCESS, present, stat.S_IMODE(mode) & 0o777 if present is None else -1, folder)
        if key not in self._done:
            self._done[key] = self._changed(present, lambda: from_mode(mode), folder)
        return self._done[key]

    def default(self, present: bytes | None, access: bytes | None, mode: int) -> bytes | None:
        """The new default ACL of a folder with `present`; a missing one starts from the owner, owning
        group and other entries of its access ACL, as setfacl does. None when nothing changes."""
        if present is None and not self.give:
            return None
        key = (DEFAULT, present, (access, stat.S_IMODE(mode) & 0o777) if present is None else -1, True)
        if key not in self._done:

            def base() -> Acl:
                acl = decode(access) if access is not None else from_mode(mode)
                return {(tag, ident): perm for (tag, ident), perm in acl.items() if tag in _BASE}

            self._done[key] = self._changed(present, base, True)
        return self._done[key]

    def _changed(self, present: bytes | None, base: Callable[[], Acl], folder: bool) -> bytes | None:
        acl = decode(present) if present is not None else base()
        if not self.give and not self.take.intersection(acl):
            return None  # nothing to take away: left exactly as it is
        new = {key: perm for key, perm in acl.items() if key not in self.take}
        for entry in self.give:
            new[(entry.tag, entry.id)] = entry.perm if folder else entry.perm & ~EXECUTE
        data = encode(with_mask(new))
        return None if data == present else data


# ------------------------------------------------------------------ the walk


class _Walk:
    """One walk of a storage tree applying `change` to each folder and regular file, by descriptor; `progress`
    is told the files walked so far every TICK files and folders (it may raise to stop the walk), and at the
    end."""

    def __init__(self, tree: Path, change: _Change, leave: frozenset[str] = frozenset(),
                 progress: Progress | None = None):  # fmt: skip
        self.tree, self.change, self.skipped = tree, change, Tally()
        self.leave = leave  # names in the top folder left alone, with all below them
        self.count = Count(progress)
        self.device = -1

    def run(self, top_fd: int, *, top: bool = True, below: bool = True) -> None:
        """Change the folder open as `top_fd` (a failure there raises DMError), then everything below it;
        `top` or `below` False leaves that part alone."""
        fd = os.dup(top_fd)  # the walk closes its descriptors; the caller keeps its own
        try:
            info = os.fstat(fd)
            self.device = info.st_dev
            if top:
                try:
                    self._apply(fd, info, folder=True)
                except OSError as error:
                    raise _top_error(self.tree, error) from None
        except BaseException:
            os.close(fd)
            raise
        if below:
            self._below(fd)
        else:
            os.close(fd)

    def _below(self, top_fd: int) -> None:
        """Change everything below the folder open as `top_fd`, depth first; its descriptor closed at the end."""
        stack: list[tuple[int, str, list[tuple[str, bool]]]] = [(top_fd, "", [])]
        try:
            stack[0] = (top_fd, "", self._listing(top_fd, ""))
            while stack:
                folder_fd, rel, names = stack[-1]
                if not names:
                    stack.pop()
                    os.close(folder_fd)
                    continue
                name, is_folder = names.pop()
                if not rel and name in self.leave:
                    continue
                path = f"{rel}/{name}" if rel else name
                if is_folder:
                    child = self._folder(folder_fd, name, path, len(stack))
                    if child is not None:
                        stack.append((child, path, self._listing(child, path)))
                else:
                    self._file(folder_fd, name, path)
                self.count.one(file=not is_folder)
            self.count.end()
        finally:
            for folder_fd, _, _ in stack:
                os.close(folder_fd)

    def _listing(self, fd: int, path: str) -> list[tuple[str, bool]]:
        """The folders and regular files in the folder open as `fd`, as listed (symlinks and the rest left
        out); read whole so that one descriptor per level stays open."""
        listed: list[tuple[str, bool]] = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        listed.append((entry.name, True))
                    elif entry.is_file(follow_symlinks=False):
                        listed.append((entry.name, False))
        except OSError as error:
            self._failed(error, path or ".")
        return listed

    def _folder(self, parent_fd: int, name: str, path: str, depth: int) -> int | None:
        """Open and change folder `name`; its descriptor to walk it, or None when it is left alone."""
        if depth >= MAX_DEPTH:
            self.skipped.add(path, f"folder deeper than {MAX_DEPTH} levels, not walked",
                             f"folders deeper than {MAX_DEPTH} levels, not walked")  # fmt: skip
            return None
        try:
            fd = os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
        except OSError as error:
            self._failed(error, path)
            return None
        info = os.fstat(fd)
        if info.st_dev != self.device:
            self.skipped.add(
                path, "folder on another filesystem, not walked", "folders on another filesystem, not walked"
            )
            os.close(fd)
            return None
        try:
            self._apply(fd, info, folder=True)
        except OSError as error:
            self._failed(error, path)  # its own ACLs failed: what is inside may still take them
        return fd

    def _file(self, parent_fd: int, name: str, path: str) -> None:
        """Open and change regular file `name`: by a read-only descriptor, or, when the file may not be
        read, by an O_PATH one through /proc/self/fd (the same inode, never a path looked up again)."""
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=parent_fd)
        except PermissionError:
            try:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
            except OSError as error:
                self._failed(error, path)
                return
            target: int | str = f"/proc/self/fd/{fd}"
        except OSError as error:
            self._failed(error, path)
            return
        else:
            target = fd
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return  # no longer what was listed
            if info.st_dev != self.device:
                self.skipped.add(path, "file on another filesystem", "files on another filesystem")
            elif info.st_nlink > 1:
                self.skipped.add(path, "file with more than one hard link", "files with more than one hard link")
            else:
                self._apply(target, info, folder=False)
        except OSError as error:
            self._failed(error, path)
        finally:
            os.close(fd)

    def _apply(self, target: int | str, info: os.stat_result, *, folder: bool) -> None:
        """Write the changed ACLs of the file or folder `target` (a descriptor, or its /proc/self/fd path)."""
        access = _read(target, ACCESS)
        new = self.change.access(access, info.st_mode, folder)
        if new is not None:
            os.setxattr(target, ACCESS, new)
        if folder:
            new = self.change.default(_read(target, DEFAULT), access, info.st_mode)
            if new is not None:
                os.setxattr(target, DEFAULT, new)

    def _failed(self, error: OSError, path: str) -> None:
        if error.errno not in _CHANGED:
            why = error.strerror or str(error)
            self.skipped.add(path, f"file or folder that could not be changed ({why})",
                             f"files or folders that could not be changed ({why})")  # fmt: skip


def _read(target: int | str, name: str) -> bytes | None:
    try:
        return os.getxattr(target, name)
    except OSError as error:
        if error.errno == errno.ENODATA:
            return None
        raise


def _top_error(tree: Path, error: OSError) -> DMError:
    if error.errno == errno.EOPNOTSUPP:
        return DMError(f"the filesystem of {tree} has no POSIX ACL support (mount it with the acl option)")
    return DMError(f"cannot set the ACLs of {tree}: {error.strerror or error}")


# ------------------------------------------------------------------ the two calls


def grant(folder_fd: int, tree: Path, entries: Sequence[Entry], *, leave: Iterable[str] = (), top: bool = True,
          below: bool = True, progress: Progress | None = None) -> str:  # fmt: skip
    """Give `entries` on every folder of the tree open as `folder_fd` (`tree` names it), as they are and as
    defaults, and without x on every regular file; the names in `leave` of its top folder are left alone,
    and the top folder itself (`top` False) or all below it (`below` False). Returns a sentence naming what
    got none ('' when everything did); DMError when the top folder cannot take them."""
    if not entries:
        return ""
    walk = _Walk(tree, _Change(entries, ()), frozenset(leave), progress)
    walk.run(folder_fd, top=top, below=below)
    return walk.skipped.sentence(f"ACLs of {tree}: not given to")


def revoke(folder_fd: int, tree: Path, keys: Iterable[tuple[int, int]], *, top: bool = True, below: bool = True,
           progress: Progress | None = None) -> str:  # fmt: skip
    """Take the entries of `keys` ((USER, uid), (GROUP, gid)) from the tree open as `folder_fd`, access and
    default (`top`, `below` as `grant`); the files and folders the grant leaves alone are left alone. Returns
    a sentence as `grant`."""
    keys = frozenset(keys)
    if not keys:
        return ""
    walk = _Walk(tree, _Change((), keys), progress=progress)
    walk.run(folder_fd, top=top, below=below)
    return walk.skipped.sentence(f"ACLs of {tree}: not taken from")
