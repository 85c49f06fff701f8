"""Folders and files of a transfer, reached one name at a time and never through a symbolic link;
paths shown fit for a UTF-8 PV and the log."""

from __future__ import annotations

import errno
import os
import stat

from ...ioc.statefiles import FOLDER_FLAGS  # a folder, never through a symlink (the records open theirs so too)


def shown(text: str) -> str:
    """`text` (a path) as any UTF-8 PV or log takes it: undecodable bytes as \\xNN, control characters escaped."""
    if text.isprintable():
        return text
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that fsdecode did not make
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class SymlinkRefused(OSError):
    """A symbolic link where a folder or file of a transfer was expected: not followed."""


def _is_symlink(folder_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_child(folder_fd: int, name: str, path: str) -> int:
    """Open folder `name` of the folder `folder_fd` without following a symlink; `path` names it in errors."""
    try:
        return os.open(name, FOLDER_FLAGS, dir_fd=folder_fd)
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(folder_fd, name):
            raise SymlinkRefused(errno.ELOOP, "a symbolic link, not followed", path) from None
        raise OSError(error.errno, error.strerror, path) from None


def open_folder(path: str, beneath: str | None = None) -> int:
    """A descriptor of folder `path`, reached from folder `beneath` (default: its parent) one name at a
    time, following no symlink below `beneath`. Raises SymlinkRefused, FileNotFoundError, ..."""
    path = os.path.normpath(path)
    top = os.path.normpath(beneath) if beneath is not None else os.path.dirname(path)
    rel = os.path.relpath(path, top)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{path} is not inside {top}")
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if rel == os.curdir:
        return fd
    walked = top
    try:
        for name in rel.split(os.sep):
            walked = os.path.join(walked, name)
            child = open_child(fd, name, walked)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_inside(path: str, folder: str) -> bool:
    """`path` is strictly inside `folder` (both normalized, absolute)."""
    return path != folder and os.path.commonpath([path, folder]) == folder


class Folders:
    """Descriptors of the folders below one open folder, for one batch of copies; with `make`, a
    missing folder below it is made (never the top one). Reached without following symlinks."""

    def __init__(self, path: str, fd: int, *, make: bool):
        self.path, self.make = path, make
        self.fds = {"": fd}

    def get(self, rel: str) -> int:
        fd = self.fds.get(rel)
        if fd is None:
            parent, _, name = rel.rpartition("/")
            parent_fd = self.get(parent)
            path = os.path.join(self.path, rel)
            try:
                fd = open_child(parent_fd, name, path)
            except FileNotFoundError:
                if not self.make:
                    raise
                try:
                    os.mkdir(name, dir_fd=parent_fd)
                except FileExistsError:
                    pass  # made meanwhile by another batch
                except OSError as error:
                    raise OSError(error.errno, error.strerror, path) from None
                fd = open_child(parent_fd, name, path)
            self.fds[rel] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def reason_for(error: OSError, *paths: str) -> str:
    """`No space left on device`, naming the path at fault when it is not one of `paths`."""
    reason = error.strerror or str(error)
    if error.filename and os.fsdecode(error.filename) not in paths:
        reason += f" ({shown(os.fsdecode(error.filename))})"
    return reason
