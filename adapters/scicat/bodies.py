"""What SciCat is sent: a dataset and its files as the backend's v3 DTOs declare them.

What is sent is what the backend's v3 DTOs declare and its validators take, no more: it refuses a whole
dataset for one field it does not declare or one value it does not take, and again on every retry. So
the raw dataset carries no `size` nor `numberOfFiles` (each origdatablock adds its own totals to its
dataset: sent with the dataset too, they would count twice), `ownerEmail` and `sourceFolderHost` only
when SciCat takes them, times with a `T` and an offset; each origdatablock is `{size, dataFileList}`
(plus `chkAlg` when its files have checksums; its dataset is the route's), of at most MAX_BLOCK_FILES
files and about MAX_BLOCK_BYTES of JSON, well within what SciCat takes of a request (16 MB by default) and
of a document (MongoDB's 16 MB); a dataset without files has none. The origdatablocks are made as the
files come (`Datablocks`), each as its JSON text: a million files are never in memory at once.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii  # a str as JSON text, as requests sends it (in C)

from ...ioc.domain.catalog_ports import CatalogFile, Dataset
from ...ioc.domain.catalog_values import catalog_email_problem, source_host_problem
from ..http import MB

MAX_BLOCK_FILES = 10_000  # files listed by one origdatablock
MAX_BLOCK_BYTES = 4 * MB  # and its JSON, about: well under SciCat's limit on a request's body (16 MB by default)


def scicat_dataset(dataset: Dataset, this_host: str = "") -> dict:
    """`dataset` as SciCat's v3 raw-dataset DTO declares it (POST datasets); `this_host` is its
    sourceFolderHost when the dataset names none. A value SciCat would refuse is left out."""
    host = dataset.source_folder_host or this_host
    body: dict[str, object] = {
        "pid": dataset.pid,
        "type": "raw",
        "datasetName": dataset.name,
        "owner": dataset.owner,
        "contactEmail": dataset.contact_email,
        "principalInvestigator": dataset.principal_investigator,
        "ownerGroup": dataset.owner_group,
        "accessGroups": list(dataset.access_groups),
        "sourceFolder": dataset.source_folder,
        "creationLocation": dataset.creation_location,
        "creationTime": scicat_time(dataset.creation_time),
        "endTime": scicat_time(dataset.end_time),
        "isPublished": False,
        "scientificMetadata": _finite(dict(dataset.scientific_metadata)),
    }
    optional = {
        "description": dataset.description,
        "ownerEmail": "" if catalog_email_problem(dataset.owner_email) else dataset.owner_email,
        "sourceFolderHost": "" if source_host_problem(host) else host,
        "proposalId": dataset.proposal_id,  # "" would be kept as a proposal named ""
        "runNumber": dataset.run_number,
    }
    body.update((key, value) for key, value in optional.items() if value)
    return body


def scicat_datablocks(files: Iterable[CatalogFile], max_files: int = MAX_BLOCK_FILES,
                      max_bytes: int = MAX_BLOCK_BYTES) -> list[dict]:  # fmt: skip
    """The origdatablocks listing `files` (POST datasets/{pid}/origdatablocks), in the order `Datablocks`
    makes them. None for no file: SciCat refuses an empty list."""
    blocks = Datablocks(max_files, max_bytes)
    return [json.loads(text) for text in blocks.add(files) + blocks.rest()]


class Datablocks:
    """The origdatablocks of a dataset's files, made as the files come, each as its JSON text: the files of
    one checksum algorithm each (its chkAlg; none for files without a checksum), at most `max_files` files
    and about `max_bytes` of JSON each. `add` gives the blocks its files filled, `rest` the blocks left at
    the end (in the order their algorithms came)."""

    def __init__(self, max_files: int = MAX_BLOCK_FILES, max_bytes: int = MAX_BLOCK_BYTES):
        self.max_files, self.max_bytes = max_files, max_bytes
        self._open: dict[str, _Block] = {}  # the block being filled, by checksum algorithm

    def add(self, files: Iterable[CatalogFile]) -> list[str]:
        """Add `files`; the JSON text of each block they filled."""
        full = []
        for file in files:
            algorithm, entry = _data_file(file)
            block = self._open.get(algorithm)
            if block is None:
                block = self._open[algorithm] = _Block(algorithm)
            elif len(block.entries) >= self.max_files or block.length + len(entry) > self.max_bytes:
                full.append(block.text())
                block = self._open[algorithm] = _Block(algorithm)
            block.entries.append(entry)
            block.length += len(entry) + 2  # and its separator
            block.size += file.size
        return full

    def rest(self) -> list[str]:
        """The blocks not full yet, in the order their algorithms came; no more files can be added."""
        blocks, self._open = self._open, {}
        return [block.text() for block in blocks.values()]


class _Block:
    """An origdatablock being filled: its files' entries (JSON text), their length and their bytes."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        self.entries: list[str] = []
        self.length = 0
        self.size = 0

    def text(self) -> str:
        algorithm = f', "chkAlg": {encode_basestring_ascii(self.algorithm)}' if self.algorithm else ""
        return f'{{"size": {self.size:d}, "dataFileList": [{", ".join(self.entries)}]{algorithm}}}'


def scicat_time(text: str) -> str:
    """An ISO 8601 time as SciCat reads it: in UTC, with a `T` and an offset (SciCat reads a time without one
    in its own zone, and no offset with seconds, as an old zone's may have); one without is taken as UTC."""
    if _is_utc_iso(text):  # the files' times, a million at a dataset's end: already so
        return text
    moment = datetime.fromisoformat(text)
    return (moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def _is_utc_iso(text: str) -> bool:
    """Whether `text` is a time as `scicat_time` gives it: `datetime.isoformat()` of a time in UTC."""
    if not text.endswith("+00:00"):
        return False
    if len(text) == 32:
        fraction = text[19:26]
        if fraction[0] != "." or not (fraction.isascii() and fraction[1:].isdigit()) or fraction == ".000000":
            return False
    elif len(text) != 25:
        return False
    return _is_iso_second(text[:19])


@functools.lru_cache(maxsize=1024)
def _is_iso_second(text: str) -> bool:
    """Whether `text` is a second as `datetime.isoformat()` writes it (YYYY-MM-DDTHH:MM:SS); many files share one."""
    try:
        return datetime.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


def _data_file(file: CatalogFile) -> tuple[str, str]:
    """(its checksum's algorithm, '' without one; the file as SciCat's DataFile declares it, as JSON text)."""
    algorithm, _, digest = file.checksum.partition(":")
    chk = f', "chk": {encode_basestring_ascii(digest)}' if digest else ""
    time = encode_basestring_ascii(scicat_time(file.mtime))
    return (algorithm if digest else ""), (
        f'{{"path": {encode_basestring_ascii(file.path)}, "size": {file.size:d}, "time": {time}{chk}}}'
    )


def _finite(value: object) -> object:
    """`value` with each NaN and infinity (a PV may read so) as text: SciCat takes standard JSON only."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
