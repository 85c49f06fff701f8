"""What SciCat is sent: a dataset and its files as the backend's v3 DTOs declare them.

What is sent is what the backend's v3 DTOs declare and its validators take, no more: it refuses a whole
dataset for one field it does not declare or one value it does not take, and again on every retry. So
the raw dataset carries no `size` nor `numberOfFiles` (each origdatablock adds its own totals to its
dataset: sent with the dataset too, they would count twice), `ownerEmail` and `sourceFolderHost` only
when SciCat takes them, times with a `T` and an offset; each origdatablock is `{size, dataFileList}`
(plus `chkAlg` when its files have checksums; its dataset is the route's), of at most MAX_BLOCK_FILES
files; a dataset without files has none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone

from ...ioc.domain.catalog_values import catalog_email_problem, source_host_problem
from ...ioc.domain.ports import CatalogFile, Dataset
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


def scicat_datablocks(files: Sequence[CatalogFile], max_files: int = MAX_BLOCK_FILES,
                      max_bytes: int = MAX_BLOCK_BYTES) -> list[dict]:  # fmt: skip
    """The origdatablocks listing `files` (POST datasets/{pid}/origdatablocks), in their order: the files of
    one checksum algorithm each (its chkAlg; none for files without a checksum), at most `max_files` files
    and about `max_bytes` of JSON each. None for no file: SciCat refuses an empty list."""
    by_algorithm: dict[str, list[dict]] = {}
    for file in files:
        algorithm, entry = _data_file(file)
        by_algorithm.setdefault(algorithm, []).append(entry)
    blocks = []
    for algorithm, entries in by_algorithm.items():
        for chunk in _chunks(entries, max_files, max_bytes):
            block: dict[str, object] = {"size": sum(entry["size"] for entry in chunk), "dataFileList": chunk}
            if algorithm:
                block["chkAlg"] = algorithm
            blocks.append(block)
    return blocks


def scicat_time(text: str) -> str:
    """An ISO 8601 time as SciCat reads it: in UTC, with a `T` and an offset (SciCat reads a time without one
    in its own zone, and no offset with seconds, as an old zone's may have); one without is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return (moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def _data_file(file: CatalogFile) -> tuple[str, dict]:
    """(its checksum's algorithm, '' without one; the file as SciCat's DataFile declares it)."""
    entry: dict[str, object] = {"path": file.path, "size": file.size, "time": scicat_time(file.mtime)}
    algorithm, _, digest = file.checksum.partition(":")
    if not digest:
        return "", entry
    entry["chk"] = digest
    return algorithm, entry


def _chunks(entries: list[dict], max_files: int, max_bytes: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    size = 0
    for entry in entries:
        length = len(json.dumps(entry)) + 1  # as requests sends it: ASCII, each non-ASCII character escaped
        if chunk and (len(chunk) >= max_files or size + length > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += length
    if chunk:
        yield chunk


def _finite(value: object) -> object:
    """`value` with each NaN and infinity (a PV may read so) as text: SciCat takes standard JSON only."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
