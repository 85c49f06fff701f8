"""`ApsDaq`: raw data moved into DM storage by the APS DM system's DAQs (continuous) and uploads (once).

The SDK calls take their arguments as its public callers pass them: DMagic (`dmagic/dm.py` of
xray-imaging/DMagic), apstools (`apstools/utils/aps_data_management.py` of BCDA-APS/apstools) and the DM
station GUI shipped with the SDK; the comment at each call names the one it follows.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from ...ioc.domain.errors import DMError, InputError
from ...ioc.domain.experiment import Experiment
from ...ioc.domain.naming import check_name
from ...ioc.domain.ports import RecentRate, SentFile, TransferProgress, TransferState
from ..hosts import is_this_host
from .aps_sdk import MAX_MESSAGE, import_dm, sdk_call, sdk_epoch, sdk_field
from .first_found import FirstFound

log = logging.getLogger(__name__)

DAQ_INFO = {"processExistingFiles": True}
# Files of the `_rec` folder land under the experiment's analysis directory.
ANALYSIS_INFO = {"useAnalysisDirectoryAsRoot": True}
_RUNNING = {"running", "pending", "waiting", "starting", "processing"}
_FAILED = {"failed", "aborted", "error", "timeout"}
FILES_PER_CALL = 1000  # file records asked of the DM file catalogue at a time (it may answer fewer)
NEW_AFTER = 0.001  # seconds between the newest time already given (or the mark) and a file found after it


def _sent_file(storage: str, record: Any) -> SentFile | None:
    """A file record of the DM catalogue as a SentFile under `storage` (sent at its mtime until `sent_since`
    says when it was first found); None without a safe path or a time."""
    relative = PurePosixPath(str(sdk_field(record, "experimentFilePath", default="") or "").lstrip("/"))
    mtime = sdk_epoch(sdk_field(record, "fileModificationTimestamp", "fileModificationTime"))
    if not relative.parts or ".." in relative.parts or mtime is None:
        return None
    try:
        size = int(sdk_field(record, "fileSize", default=0))
    except (TypeError, ValueError):
        size = 0
    md5 = str(sdk_field(record, "md5Sum", default="") or "")
    return SentFile(
        path=f"{storage.rstrip('/')}/{relative}",
        size=size,
        mtime=mtime,
        sent_at=mtime,
        checksum=f"md5:{md5}" if md5 else "",
    )


def inspect_folder(path: Path) -> tuple[str, int]:
    """('ok', files) / ('empty', 0) / ('missing', 0) / ('unknown', 0) when the parent is not visible here."""
    if path.is_dir():
        count = 0
        for _, _, files in os.walk(path):
            count += len(files)
            if count:
                break
        return ("ok", count) if count else ("empty", 0)
    if path.parent.is_dir():
        return "missing", 0
    return "unknown", 0


class ApsDaq:
    """`ports.Transfer` through the DM system's DAQs (continuous) and uploads (once).

    The DM system runs them on its own servers: they outlive the IOC, so
    `resume` re-attaches to DAQs still running for this station. `found_record` (in state_dir) keeps
    when this IOC first found each file in the DM file catalogue: see `sent_since`.
    """

    def __init__(
        self,
        station: str,
        data_top_dir: Path,
        data_host: str = "localhost",
        api: Any = None,
        *,
        found_record: Path,
        direct_mount: bool = False,
    ):
        self.station = station
        self.data_top_dir = Path(data_top_dir)
        self.data_host = data_host
        self.direct_mount = direct_mount
        self._sdk = api if api is not None else import_dm()
        self._daq_api: Any = None
        self._file_api: Any = None
        self._storages: dict[str, str] = {}  # storage directory -> experiment name, of the experiments started
        self._lock = threading.Lock()
        self._daqs: list[tuple[str, str]] = []  # (experiment, dataDirectory) started or adopted
        self._uploads: list[tuple[str, str]] = []  # (experiment, upload id)
        self._rate = RecentRate()  # of the bytes DM reports processed
        self._found = FirstFound(found_record)

    @property
    def daq_api(self) -> Any:
        if self._daq_api is None:
            self._daq_api = sdk_call("connecting to the DAQ service", self._sdk.ExperimentDaqApi)
        return self._daq_api

    @property
    def file_api(self) -> Any:
        if self._file_api is None:  # through the factory, as apstools' dm_api_filecat gets it
            self._file_api = sdk_call("connecting to the file catalogue", self._sdk.CatApiFactory.getFileCatApi)
        return self._file_api

    def data_url(self, path: str) -> str:
        """The dataDirectory the DM system reads: `@host:path` unless it mounts the data itself."""
        if self.direct_mount:
            return path
        host = socket.getfqdn() if is_this_host(self.data_host) else self.data_host
        return f"@{host}:{path}"

    # ------------------------------------------------------------------ ports.Transfer

    def start(self, experiment: Experiment, sources: Mapping[str, str], *, once: bool) -> str:
        """Start a DAQ (or an upload when `once`) per source folder, after checking each folder."""
        name = check_name(experiment.name, "experiment name")
        if not sources:
            raise InputError(f"no source folders to transfer for {name}")
        plan, notes = self._plan(name, sources, once=once)
        running = set() if once else self._running_pairs(name)
        started, already = [], []
        with self._lock:
            if experiment.storage_directory:
                self._storages[experiment.storage_directory.rstrip("/")] = name
            if once:
                self._uploads = []
            for source, url, analysis in plan:
                info = dict(ANALYSIS_INFO) if analysis else {}
                if once:  # (name, dataDirectory, daqInfo), as DMagic's upload
                    reply = sdk_call(f"starting the upload of {source}", self.daq_api.upload, name, url, info)
                    upload_id = sdk_field(reply, "id", default="")
                    self._uploads.append((name, str(upload_id)))
                    started.append(source)
                    continue
                if (name, url) in running:
                    already.append(source)
                else:  # (name, dataDirectory, daqInfo), as DMagic's start_daq and apstools' dm_start_daq
                    sdk_call(f"starting the DAQ of {source}", self.daq_api.startDaq, name, url, {**DAQ_INFO, **info})
                    started.append(source)
                if (name, url) not in self._daqs:
                    self._daqs.append((name, url))
            self._rate = RecentRate()
        what = "upload" if once else "DM DAQ"
        parts = []
        if started:
            parts.append(f"{what} started for {name}: {', '.join(started)}")
        if already:
            parts.append(f"{what} already running for {', '.join(already)}")
        sentence = "; ".join(parts + notes)
        log.info("%s", sentence)
        return sentence

    def stop(self) -> str:
        """Stop the running DAQs this IOC started or adopted, and any upload under way."""
        with self._lock:
            daqs, uploads = list(self._daqs), list(self._uploads)
        running = self._running_pairs(None)
        stopped = []
        for experiment, url in daqs:
            if (experiment, url) in running:  # as DMagic's stop_daq
                sdk_call(f"stopping the DAQ of {url}", self.daq_api.stopDaq, experiment, url)
                stopped.append(url)
        for _, upload_id in uploads:
            if upload_id and hasattr(self.daq_api, "stopUpload"):  # by id, as the DM station GUI stops one
                info = sdk_call("reading upload status", self.daq_api.getUploadInfo, upload_id)  # as apstools
                if str(sdk_field(info, "status", default="")).lower() in _RUNNING:
                    sdk_call(f"stopping upload {upload_id}", self.daq_api.stopUpload, upload_id)
                    stopped.append(f"upload {upload_id}")
        names = sorted({experiment for experiment, _ in daqs} | {experiment for experiment, _ in uploads})
        with self._lock:
            self._daqs = []
        if not stopped:
            return f"no DM transfer was running for {', '.join(names) or 'this IOC'}"
        sentence = f"stopped DM transfer for {', '.join(names)}: {', '.join(stopped)}"
        log.info("%s", sentence)
        return sentence

    def progress(self) -> TransferProgress:
        """Sum the DM status of the tracked DAQs and uploads into one TransferProgress."""
        with self._lock:
            daqs, uploads = list(self._daqs), list(self._uploads)
        if not daqs and not uploads:
            return TransferProgress()
        entries = []
        if daqs:
            listed = sdk_call("listing DAQs", self.daq_api.listDaqs) or []
            wanted = set(daqs)
            entries += [d for d in listed if (sdk_field(d, "experimentName"), sdk_field(d, "dataDirectory")) in wanted]
        for _, upload_id in uploads:
            if upload_id:
                entries.append(sdk_call("reading upload status", self.daq_api.getUploadInfo, upload_id))
        return self._summarize(entries, uploading=bool(uploads) and not daqs)

    def resume(self) -> str | None:
        """Re-attach to DAQs the DM system still runs for this station (they outlive the IOC)."""
        listed = sdk_call("listing DAQs", self.daq_api.listDaqs) or []
        mine = []
        for daq in listed:
            if str(sdk_field(daq, "status", default="")).lower() not in _RUNNING:
                continue
            station = sdk_field(daq, "experimentStationName", "stationName")
            url = str(sdk_field(daq, "dataDirectory", default=""))
            if station == self.station or (station is None and self._under_data_top_dir(url)):
                mine.append((str(sdk_field(daq, "experimentName")), url))
        if not mine:
            return None
        with self._lock:
            self._daqs = mine
            self._rate = RecentRate()
        names = sorted({experiment for experiment, _ in mine})
        return f"DM DAQ still running for {', '.join(names)} ({len(mine)} folder{'s' if len(mine) != 1 else ''})"

    def forget(self, sources: Mapping[str, str]) -> None:
        """Forget the files found catalogued in the storage of these sources (it was deleted): a re-created
        experiment's files are new again. The DM system itself decides what its DAQs send."""
        forgotten = self._found.forget_under(sources.values())
        if forgotten:
            log.info("DM file record: forgot the files of %s storage(s) of %s", forgotten, ", ".join(sources.values()))

    def sent_since(self, mark: float, storage: str) -> list[SentFile]:
        """The files of the DM file catalogue for the experiment of `storage` that this IOC first found
        there after `mark`, each with that time as its `sent_at`.

        The catalogue gives a file's mtime, not when it arrived: by mtime, a file DM still processed when
        the last dataset was made, or one with an old mtime (processExistingFiles, `cp -p`), would fall
        behind the mark and be in no dataset. So a file is new when its path was never found before;
        when first found it gets a time after the mark and after every time given before (the record in
        state_dir keeps it). The first look at a storage whose datasets an earlier version made (by mtime)
        takes its files modified before `mark` as already in them. What is catalogued now is listed;
        files the DM system still processes are not waited for.
        """
        storage = storage.rstrip("/")
        name = self._experiment_of(storage)
        listed: dict[str, SentFile] = {}
        unreadable = 0
        for record in self._catalogued(name):
            found = _sent_file(storage, record)
            if found is None:
                unreadable += 1
            else:
                listed.setdefault(found.path, found)
        if unreadable:
            log.warning("DM file catalogue of %s: %s record(s) without a path or a time left out", name, unreadable)
        times = self._found.times(storage)
        new = [f for path, f in listed.items() if path not in times]
        if new:
            earlier = {}
            if mark > 0 and not times:
                earlier = {f.path: f.mtime for f in new if f.mtime <= mark}
                if earlier:
                    log.info("DM file record: %s file(s) of %s modified before the last dataset taken as in it",
                             len(earlier), storage)  # fmt: skip
            now = max([time.time(), mark + NEW_AFTER] + [t + NEW_AFTER for t in times.values()])
            added = {f.path: earlier.get(f.path, now) for f in new}
            self._found.add(storage, added)
            times.update(added)
        return [replace(f, sent_at=times[path]) for path, f in listed.items() if times[path] > mark]

    # ------------------------------------------------------------------ helpers

    def _experiment_of(self, storage: str) -> str:
        """The experiment whose storage this is: one started here, else the folder's name (the DM system
        makes an experiment's storage `{root}/{rootPath}/{name}`)."""
        storage = storage.rstrip("/")
        with self._lock:
            known = self._storages.get(storage)
        return known or check_name(PurePosixPath(storage).name, "experiment name")

    def _catalogued(self, name: str) -> Iterator[Any]:
        """Every file record of experiment `name`, page by page as the DM station GUI reads them
        (`getExperimentFiles(name, {}, skip, limit)`); ends at a page that brings nothing new."""
        seen: set[str] = set()
        skip = 0
        while True:
            what = f"reading the file catalogue of {name}"
            records = list(sdk_call(what, self.file_api.getExperimentFiles, name, {}, skip, FILES_PER_CALL) or [])
            new = [r for r in records if str(sdk_field(r, "experimentFilePath", "id", default="")) not in seen]
            if not new:
                return
            seen.update(str(sdk_field(r, "experimentFilePath", "id", default="")) for r in new)
            yield from new
            skip += len(records)

    def _plan(
        self, name: str, sources: Mapping[str, str], *, once: bool
    ) -> tuple[list[tuple[str, str, bool]], list[str]]:
        """Check every source before starting any: a wrong folder makes DM transfer nothing, silently."""
        plan, notes = [], []
        for source, destination in sources.items():
            analysis = source.rstrip("/").endswith("_rec") or Path(destination).name == "analysis"
            state, files = inspect_folder(Path(source))
            if state == "missing":
                if not analysis:
                    raise DMError(
                        f"source folder {source} does not exist on {self.data_host}: check dm.data_top_dir and "
                        f"the experiment name; DM would transfer nothing; nothing started"
                    )
                notes.append(f"skipped {source}: it does not exist yet (start again once reconstructions are written)")
                continue
            if state == "empty":
                if once:
                    notes.append(f"skipped {source}: it is empty")
                    continue
                notes.append(f"{source} is empty now; new files will be transferred")
            elif state == "unknown":
                notes.append(f"{source} is not visible from this host; not checked")
            else:
                log.info("source %s holds files (%s+)", source, files)
            plan.append((source, self.data_url(source), analysis))
        if not plan:
            raise DMError(f"nothing to {'upload' if once else 'transfer'} for {name}: {'; '.join(notes)}")
        return plan, notes

    def _running_pairs(self, name: str | None) -> set[tuple[str, str]]:
        listed = sdk_call("listing DAQs", self.daq_api.listDaqs) or []
        return {
            (str(sdk_field(d, "experimentName")), str(sdk_field(d, "dataDirectory")))
            for d in listed
            if str(sdk_field(d, "status", default="")).lower() in _RUNNING
            and (name is None or sdk_field(d, "experimentName") == name)
        }

    def _under_data_top_dir(self, url: str) -> bool:
        path = url.split(":", 1)[1] if url.startswith("@") and ":" in url else url
        top = str(self.data_top_dir).rstrip("/") + "/"
        return path.startswith(top)

    def _summarize(self, entries: list[Any], *, uploading: bool) -> TransferProgress:
        def number(entry: Any, *keys: str) -> float:
            value = sdk_field(entry, *keys, default=0)
            try:
                return float(value)
            except (TypeError, ValueError):
                return 0.0

        total = done = errors = 0
        size = 0.0
        statuses, last_file, error_texts = [], "", []
        for entry in entries:
            total += int(number(entry, "nFiles", "nTotalFiles"))
            done += int(number(entry, "nCompletedFiles", "nProcessedFiles"))
            errors += int(number(entry, "nProcessingErrors", "nErrors"))
            size += number(entry, "totalProcessedBytes", "nProcessedBytes", "processedBytes", "nBytes")
            statuses.append(str(sdk_field(entry, "status", default="")).lower())
            last_file = str(sdk_field(entry, "lastFileProcessed", "currentFile", "lastFile", default="") or last_file)
            problems = sdk_field(entry, "processingErrors", default=None)
            if isinstance(problems, Mapping):
                error_texts += [f"{path}: {why}" for path, why in problems.items()]
            for key in ("errorMessage", "error"):
                text = sdk_field(entry, key)
                if text:
                    error_texts.append(str(text))
        rate = self._update_rate(size)
        running = any(status in _RUNNING for status in statuses)
        failed = any(status in _FAILED for status in statuses) or errors > 0
        state = TransferState.ERROR if failed else TransferState.RUNNING if running else TransferState.STOPPED
        message = ""
        if failed:
            first = f": {error_texts[0]}" if error_texts else ""
            message = f"DM reports {errors or 'a'} transfer error{'s' if errors != 1 else ''}{first}"[:MAX_MESSAGE]
        elif uploading and entries and not running:
            message = f"upload done: {done} of {total} files"
        return TransferProgress(  # no byte total from DM: Percent is by files
            state=state,
            files_done=done,
            files_total=max(total, done),
            bytes_done=size,
            rate_mb_s=rate if running else 0.0,
            last_file=last_file,
            message=message,
        )

    def _update_rate(self, size: float) -> float:
        """Record `size` bytes processed now; return the MB/s of the last few seconds (progress runs in
        several threads)."""
        with self._lock:
            return self._rate.add(size, time.monotonic())
