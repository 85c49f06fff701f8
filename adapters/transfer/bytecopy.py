"""A file's bytes copied, and made durable: in the kernel (copy_file_range) in steps sized for the progress,
else through a buffer, hashed when a checksum is asked; syncfs(2) where it reports writeback errors."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

COPY_CHUNK = 64 * 1024 * 1024  # most bytes per copy_file_range call; progress and a stop are seen between calls
FIRST_COPY_STEP = 8 * 1024 * 1024  # the first call's bytes; then sized to take about COPY_STEP_SECONDS
MIN_COPY_STEP = 1024 * 1024
COPY_STEP_SECONDS = 0.25
BUFFER_SIZE = 4 * 1024 * 1024  # userspace copy and checksum buffer
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM}


class Cancelled(Exception):
    """The copy was stopped (its `cancel` event set) between two steps."""


class Written:
    """The bytes a batch of copies has written so far, for the progress while a big file is copied.

    Counted by the one worker that copies the batch and read by the engine's thread, without a lock:
    a single writer, and an int attribute is replaced whole.
    """

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2), if it reports writeback errors (Linux >= 5.8); else None (fsync per file)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        release = re.match(r"(\d+)\.(\d+)", os.uname().release)
        if release is None or (int(release[1]), int(release[2])) < (5, 8):
            return None  # older kernels' syncfs returns 0 even when writeback failed
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


_SYNCFS = _load_syncfs()
SYNCFS_WORKS = _SYNCFS is not None  # else a batch of copies is made durable by an fsync per file


def syncfs(fd: int) -> None:
    """Write back and flush everything dirty on `fd`'s filesystem; raise the writeback errors since `fd` was opened."""
    if _SYNCFS is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _SYNCFS(fd) != 0:  # ctypes releases the GIL for the call
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def copy_data(
    src_fd: int,
    dst_fd: int,
    size: int,
    checksum: bool,
    cancel: threading.Event | None,
    written: Written | None = None,
) -> tuple[int, bytes | None]:
    """Copy up to `size` bytes in the kernel when possible; with `checksum`, through a buffer, hashing.
    The bytes are added to `written` as they are copied.

    Returns (bytes copied, fewer if the source shrank; the source's digest or None).
    """
    if not checksum:
        copied = _copy_in_kernel(src_fd, dst_fd, size, cancel, written)
        if copied is not None:
            return copied, None
    return _copy_through_buffer(src_fd, dst_fd, size, checksum, cancel, written)


def _copy_in_kernel(
    src_fd: int, dst_fd: int, size: int, cancel: threading.Event | None, written: Written | None
) -> int | None:
    """copy_file_range in steps of about COPY_STEP_SECONDS: the bytes copied (fewer if the source shrank),
    or None, nothing copied, where the kernel cannot copy between these files."""
    offset, step = 0, min(FIRST_COPY_STEP, COPY_CHUNK)
    try:
        while offset < size:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            started = time.monotonic()
            count = os.copy_file_range(src_fd, dst_fd, min(step, size - offset), offset, offset)
            if count == 0:
                break  # the source shrank: the size check refuses the copy
            offset += count
            if written is not None:
                written.bytes += count
            step = _next_step(step, time.monotonic() - started)
    except OSError as error:
        if offset or error.errno not in _NO_KERNEL_COPY:
            raise
        log.debug("copy_file_range unavailable (%s); copying through a buffer", error)
        return None
    return offset


def _copy_through_buffer(
    src_fd: int, dst_fd: int, size: int, checksum: bool, cancel: threading.Event | None, written: Written | None
) -> tuple[int, bytes | None]:
    """Read and write BUFFER_SIZE at a time from the start, hashing with `checksum`: see `copy_data`."""
    hasher = hashlib.blake2b() if checksum else None
    view = memoryview(bytearray(BUFFER_SIZE))
    os.lseek(src_fd, 0, os.SEEK_SET)
    os.lseek(dst_fd, 0, os.SEEK_SET)
    offset = 0
    while offset < size:
        if cancel is not None and cancel.is_set():
            raise Cancelled
        count = os.readv(src_fd, [view[: min(BUFFER_SIZE, size - offset)]])
        if count == 0:
            break
        chunk = view[:count]
        if hasher is not None:
            hasher.update(chunk)
        while chunk:
            chunk = chunk[os.write(dst_fd, chunk) :]
        offset += count
        if written is not None:
            written.bytes += count
    return offset, hasher.digest() if hasher is not None else None


def _next_step(step: int, seconds: float) -> int:
    """The next copy_file_range size, from the last one's duration: about COPY_STEP_SECONDS a call, so
    that progress and a stop are seen several times a second on slow disks and the calls stay few on
    fast ones (MIN_COPY_STEP to COPY_CHUNK)."""
    if seconds < COPY_STEP_SECONDS / 4:
        return min(step * 2, COPY_CHUNK)
    if seconds > COPY_STEP_SECONDS:
        return max(step // 2, min(MIN_COPY_STEP, COPY_CHUNK))
    return step


def digest_of(fd: int) -> bytes:
    """The blake2b of the file open as `fd`, read with pread from its start (its offset is left alone)."""
    hasher = hashlib.blake2b()
    view = memoryview(bytearray(BUFFER_SIZE))
    offset = 0
    while count := os.preadv(fd, [view], offset):
        hasher.update(view[:count])
        offset += count
    return hasher.digest()
