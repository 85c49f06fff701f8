"""`ports.Records` on disk: each acquisition's record, `{StorageDirectory}/metadata/{experiment}-{n}.json`.

A record is written aside (a hidden file, on disk) and renamed into place. Its
first line is its head (number, mark, end): the newest record's `mark` is where
the next acquisition's file list starts, so that is all that is read of it.
It is written as its files come, one a line, a million never in memory at once;
the head, known last (its mark is the newest file's), goes into room kept for it
at the start, the rest of that room spaces on the second line. Its `format` is 2:
one JSON document, its fields those of format 1 (the head line, then the other
fields indented, the file list last) with the totals after the file list; an
earlier version's record has no head line and is read whole.

Whoever writes the storage (the proposal group) must not steer that list: a record
planted or rewritten there could hide every later file (a mark far ahead) or hang
the command (a FIFO). So `metadata` is the IOC's own folder, reached without
following a link and writable by the IOC alone (0750, the storage's group, setgid
as the storage), its records 0640 (read by whoever reads the data, written by no
one else). A record counts only when it is a regular file of the IOC's user that
no one else may write, with a mark not ahead of now; only its first line is read
(its number, mark and end: a few bytes, however long its file list). Anything else
is skipped and named; a `metadata` that is not the IOC's folder is refused, never
followed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import stat
import uuid
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring  # a str as JSON text (in C)
from pathlib import Path

from ..ioc.domain.catalog_ports import RECORDS_FOLDER, CatalogFile, RecordHead
from ..ioc.domain.errors import DMagicError
from ..ioc.statefiles import FOLDER_FLAGS, READ_FLAGS

log = logging.getLogger(__name__)

RECORDS = RECORDS_FOLDER  # the folder of the records, in the experiment's storage
HEAD = ("n", "mark", "ended")  # a record's first line: all that is read of it
HEAD_BYTES = 4096  # at most read of a record
RECORD_FORMAT = 2  # one file a line, the totals after them (1: indented, the totals before the files)
MARK_ROOM = 24  # characters kept for the head's mark: the longest float in JSON ("-2.2250738585072014e-308")
WRITE_BUFFER = 1 << 20
EARLIER_RECORD_BYTES = 64 << 20  # at most read of a record an earlier version wrote (no head line: read whole)
_WRITTEN_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class RecordsRefused(DMagicError):
    """`metadata` in an experiment's storage is not the IOC's folder of records: nothing is read or written there."""


class StorageRecords:
    """`ports.Records`: the folder of records in each experiment's storage, opened for one record at a time."""

    def open(self, storage: str) -> RecordsFolder:
        return RecordsFolder.open(storage)


class RecordsFolder:
    """`{storage}/metadata`, the IOC's folder of records, open (`fd`) for one acquisition's record."""

    def __init__(self, path: Path, fd: int, storage: os.stat_result):
        self.path, self.fd, self.storage = path, fd, storage
        self._asides: dict[str, AsideRecord] = {}  # the records being written aside, by name

    @classmethod
    def open(cls, storage: str) -> RecordsFolder:
        """The folder of records of the experiment storage `storage`, made when missing. Reached from the
        storage (never made here) without following a link. RecordsRefused when something else is there
        (a link, a file, a folder of someone else's); OSError when the storage cannot be reached."""
        path = Path(storage) / RECORDS
        storage_fd = os.open(storage, FOLDER_FLAGS)  # gone (deleted, unmounted): OSError, said as a warning
        try:
            found = os.fstat(storage_fd)
            made = _made(storage_fd)
            try:
                fd = os.open(RECORDS, FOLDER_FLAGS, dir_fd=storage_fd)
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                link = stat.S_ISLNK(os.stat(RECORDS, dir_fd=storage_fd, follow_symlinks=False).st_mode)
                what = "a symbolic link, not followed" if link else "not a folder"
                raise RecordsRefused(f"metadata record not written: {path} is {what}; whoever writes the storage "
                                     "may have put it there: move it away, then Catalog") from None  # fmt: skip
        finally:
            os.close(storage_fd)
        folder = cls(path, fd, found)
        try:
            folder._claim(made)
        except BaseException:
            folder.close()
            raise
        return folder

    def _claim(self, made: bool) -> None:
        """Make the folder the IOC's alone: 0750 with the storage's group (and its setgid) when just made; an
        earlier version's, writable by its group, is made so. One of someone else's is refused."""
        found = os.fstat(self.fd)
        if found.st_uid != os.geteuid():
            raise RecordsRefused(f"metadata record not written: {self.path} is not the IOC's folder of records "
                                 f"(owned by uid {found.st_uid}, the IOC runs as {os.geteuid()}); nothing read "
                                 "from it: move it away, then Catalog")  # fmt: skip
        mode = stat.S_IMODE(found.st_mode)
        if made:
            if self._give_group(self.fd):
                os.fchmod(self.fd, stat.S_IRWXU | self.storage.st_mode & (0o055 | stat.S_ISGID))
        elif mode & _WRITTEN_BY_OTHERS:
            mode &= ~_WRITTEN_BY_OTHERS
            os.fchmod(self.fd, mode)
            log.warning("metadata folder %s was writable by its group or others (an earlier version made it so): "
                        "now %o; the records written before are not trusted", self.path, mode)  # fmt: skip

    def _give_group(self, fd: int) -> bool:
        """Give the folder or record open as `fd` the storage's group; False (said) when the IOC cannot."""
        try:
            os.fchown(fd, -1, self.storage.st_gid)
        except PermissionError:
            log.warning("metadata: %s not given to the group of %s (the IOC's user is not in it); readable by its "
                        "owner only", self.path, self.path.parent)  # fmt: skip
            return False
        return True

    def newest(self, experiment: str, latest: float) -> tuple[RecordHead | None, list[str]]:
        """The head of the newest record of `experiment` the IOC wrote, None if none; and the newer ones
        skipped, each with why. A mark after `latest` (seconds since the epoch) is no record's."""
        skipped: list[str] = []
        for number, name in sorted(self._numbered(experiment), reverse=True):
            head, why = self._head(name, number, latest)
            if head is not None:
                return RecordHead(number, float(head["mark"]), str(head["ended"])), skipped
            skipped.append(f"{name} ({why})")
        return None, skipped

    def next_number(self, experiment: str) -> int:
        return max((number for number, _ in self._numbered(experiment)), default=0) + 1

    def _numbered(self, experiment: str) -> list[tuple[int, str]]:
        return [(n, name) for name in os.listdir(self.fd) if (n := _record_number(name, experiment)) is not None]

    def _head(self, name: str, number: int, latest: float) -> tuple[dict | None, str]:
        """The head of record `name`, or None and why it is not one the IOC wrote. Opened without following a
        link or waiting on a FIFO; at most HEAD_BYTES read."""
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=self.fd)
        except OSError as error:
            return None, "a symbolic link" if error.errno == errno.ELOOP else (error.strerror or str(error))
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                return None, "not a regular file"
            if found.st_uid != os.geteuid():
                return None, f"owned by uid {found.st_uid}"
            if found.st_mode & _WRITTEN_BY_OTHERS:
                return None, "writable by its group or others"
            start = os.read(fd, HEAD_BYTES)
            first = start.partition(b"\n")[0]
            if first.strip() == b"{":  # an earlier version's record, indented JSON: its head is inside
                return _head_of_earlier(start + _read_up_to(fd, EARLIER_RECORD_BYTES - len(start)), number, latest)
        except OSError as error:
            return None, error.strerror or str(error)
        finally:
            os.close(fd)
        return _head_of(first, number, latest)

    def begin_aside(self, fields: Mapping[str, object]) -> AsideRecord:
        """A record in a new hidden file of the folder, readable as the data is, its `fields` known before its
        files written; its files and the rest come through the AsideRecord."""
        name = f".record-{uuid.uuid4().hex[:8]}"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)  # fmt: skip
        try:
            file = os.fdopen(fd, "w", encoding="utf-8", buffering=WRITE_BUFFER)
        except BaseException:
            os.close(fd)
            self.discard(name)
            raise
        aside = AsideRecord(name, file, fields)
        self._asides[name] = aside
        try:
            if self._give_group(fd):
                os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR | self.storage.st_mode & 0o044)
            aside.begin()
        except BaseException:
            self.discard(name)
            raise
        return aside

    def put_in_place(self, aside: str, experiment: str, number: int) -> Path:
        name = f"{experiment}-{number}.json"
        self._asides.pop(aside, None)
        os.replace(aside, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)
        return self.path / name

    def discard(self, aside: str) -> None:
        """Remove the file written aside as `aside` (closed first, finished or not), quietly."""
        writing = self._asides.pop(aside, None)
        if writing is not None:
            writing.close()
        with contextlib.suppress(OSError):
            os.unlink(aside, dir_fd=self.fd)

    def close(self) -> None:
        for aside in list(self._asides.values()):
            aside.close()
        self._asides.clear()
        os.close(self.fd)


class AsideRecord:
    """`ports.AsideRecord`: a record written into its hidden file as its files come; room kept at the start
    for the head, written last."""

    def __init__(self, name: str, file: io.TextIOWrapper, fields: Mapping[str, object]):
        self.name, self._file, self._fields = name, file, dict(fields)
        self._room = 0  # bytes kept for the head line (its end of line included)
        self._separator = "\n"  # before the next file's line

    def begin(self) -> None:
        """The room for the head, and the fields known before the files."""
        self._room = len(_head_line({**self._fields, "mark": 0}).encode()) + MARK_ROOM
        rest = _fields_text({"format": RECORD_FORMAT, **self._fields})
        self._file.write(" " * self._room + rest + ',\n "files": [')

    def add(self, files: Iterable[CatalogFile]) -> None:
        """The next files, a line each."""
        text = encode_basestring
        lines = ",\n".join([
            f'  {{"path": {text(file.path)}, "size": {file.size:d}, "mtime": {text(file.mtime)}'
            + (f', "checksum": {text(file.checksum)}}}' if file.checksum else "}")
            for file in files
        ])  # fmt: skip
        if lines:
            self._file.write(self._separator + lines)
            self._separator = ",\n"

    def finish(self, fields: Mapping[str, object]) -> None:
        """The fields known last and the head: the record whole, on disk, and closed."""
        self._fields.update(fields)
        closing = _fields_text(fields)
        self._file.write(f"\n ],\n{closing}\n}}\n" if closing else "\n ]\n}\n")
        self._file.flush()
        head = _head_line(self._fields).encode()
        if len(head) >= self._room:  # a mark no float is
            raise ValueError(f"record head {head[:200]!r} longer than the room kept for it")
        fd = self._file.fileno()
        os.pwrite(fd, head + b"\n" + b" " * (self._room - len(head) - 1), 0)
        os.fsync(fd)
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


def _made(storage_fd: int) -> bool:
    """Make the folder of records in the storage open as `storage_fd`, 0700 until it is given its group and
    mode; False when something is there already."""
    try:
        os.mkdir(RECORDS, 0o700, dir_fd=storage_fd)
    except FileExistsError:
        return False
    return True


def _record_number(name: str, experiment: str) -> int | None:
    found = re.fullmatch(re.escape(experiment) + r"-([0-9]{1,18})\.json", name)
    return int(found.group(1)) if found else None


def _head_line(record: Mapping[str, object]) -> str:
    """The first line of `record`: its head (n, mark, ended), all the next acquisition reads of it."""
    return json.dumps({key: record[key] for key in HEAD}, ensure_ascii=False)[:-1] + ","


def _fields_text(fields: Mapping[str, object]) -> str:
    """`fields` but the head's, one a line, indented as in a record (no comma after the last)."""
    text = json.dumps({key: value for key, value in fields.items() if key not in HEAD}, indent=1, ensure_ascii=False)
    return text[2:-2]


def _read_up_to(fd: int, limit: int) -> bytes:
    """The rest of the file open as `fd`, at most `limit` bytes (one more tells that it is longer)."""
    chunks, left = [], limit + 1
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _head_of_earlier(text: bytes, number: int, latest: float) -> tuple[dict | None, str]:
    """The head of record number `number` written by an earlier version (no head line), read whole."""
    if len(text) > EARLIER_RECORD_BYTES:
        return None, f"an earlier version's record larger than {EARLIER_RECORD_BYTES >> 20} MB"
    try:
        record = json.loads(text)
    except ValueError:
        return None, "not JSON"
    if not isinstance(record, dict) or not {"mark", "ended"} <= record.keys():
        return None, "no mark in it"
    return _checked({"n": number, "mark": record["mark"], "ended": record["ended"]}, latest)


def _head_of(line: bytes, number: int, latest: float) -> tuple[dict | None, str]:
    """The head of record number `number` from its first line; None and why when it is none."""
    try:
        head = json.loads(line[:-1] + b"}") if line.endswith(b",") else None
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("n") != number or not set(HEAD) <= head.keys():
        return None, "no record head on its first line"
    return _checked(head, latest)


def _checked(head: dict, latest: float) -> tuple[dict | None, str]:
    """`head` when its mark is a time before `latest`; else None and why."""
    mark = head["mark"]
    if isinstance(mark, bool) or not isinstance(mark, (int, float)) or not 0 <= mark <= latest:
        return None, f"its mark {mark!r} is no time before now"
    return head, ""
