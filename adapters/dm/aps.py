"""The APS Data Management system through its Python SDK (the `dm` package).

`ApsDM` is the `aps` DM backend (experiments, users, ESAF data); `ApsDaq` moves
raw data into DM storage with the DM system's DAQs and uploads. The SDK is
imported only when one of these classes is built, so sites without it never
need it. Every SDK failure becomes a `DMError` with a short message.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar

from ..ioc.model import DMError, Experiment, ExperimentUser, InputError, Person, check_name, year_month
from ..ioc.ports import TransferProgress
from .local_dm import is_this_host

log = logging.getLogger(__name__)

T = TypeVar("T")

ROLE = "User"
DAQ_INFO = {"processExistingFiles": True}
# Files of the `_rec` folder land under the experiment's analysis directory.
ANALYSIS_INFO = {"useAnalysisDirectoryAsRoot": True}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_RUNNING = {"running", "pending", "waiting", "starting", "processing"}
_FAILED = {"failed", "aborted", "error", "timeout"}
_MAX_MESSAGE = 200


def import_dm() -> Any:
    """The APS DM SDK module, or a DMError saying how to get on without it."""
    try:
        import dm
    except ImportError as error:
        raise DMError(
            "the APS DM SDK (python package 'dm') is not installed; install it or use dm.backend: local"
        ) from error
    return dm


# ---------------------------------------------------------------------- SDK objects and dates


def sdk_field(obj: Any, *keys: str, default: Any = None) -> Any:
    """The first of `keys` that `obj` holds: a dict, a dict-like DmObject (`.data`, `.get`) or attributes."""
    mappings = [m for m in (getattr(obj, "data", None), obj) if isinstance(m, Mapping)]
    getter = getattr(obj, "get", None) if not isinstance(obj, Mapping) else None
    for key in keys:
        for mapping in mappings:
            value = mapping.get(key)
            if value is not None:
                return value
        if callable(getter):
            try:
                value = getter(key)
            except (KeyError, TypeError, AttributeError):
                value = None
            if value is not None:
                return value
        value = getattr(obj, key, None)
        if value is not None and not callable(value):
            return value
    return default


def sdk_field_like(obj: Any, *keys: str, default: Any = None) -> Any:
    """Like `sdk_field`, also matching key spellings that differ in case and underscores."""
    value = sdk_field(obj, *keys)
    if value is not None:
        return value
    data = getattr(obj, "data", obj)
    if isinstance(data, Mapping):
        wanted = {key.replace("_", "").lower() for key in keys}
        for key, value in data.items():
            if isinstance(key, str) and key.replace("_", "").lower() in wanted and value is not None:
                return value
    return default


def sdk_date(moment: datetime | date | None) -> str:
    """`14-Oct-26`: the SDK's date form, in English whatever the locale."""
    if moment is None:
        return ""
    return f"{moment.day:02d}-{_MONTHS[moment.month - 1]}-{moment.year % 100:02d}"


def parse_sdk_date(value: Any, tz: tzinfo | None = None) -> datetime | None:
    """A date as the SDK or the ESAF database spells it (`14-Oct-26`, ISO, a datetime); None if unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        moment = None
        try:
            day, month, year = text.split("-")
            if month.title() in _MONTHS and len(year) == 2:
                moment = datetime(2000 + int(year), _MONTHS.index(month.title()) + 1, int(day))
        except ValueError:
            moment = None
        if moment is None:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                log.warning("unreadable date from the DM system: %r", text)
                return None
    if moment.tzinfo is None and tz is not None:
        moment = moment.replace(tzinfo=tz)
    return moment


def _exception_named(error: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(error).__mro__)


def _short(error: BaseException) -> str:
    for getter in ("getErrorMessage", "error_message"):
        method = getattr(error, getter, None)
        if callable(method):
            try:
                text = str(method())
                break
            except Exception:
                continue
    else:
        text = str(error)
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _call(what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the SDK; any exception becomes a DMError naming what was being done."""
    try:
        return function(*args, **kwargs)
    except Exception as error:
        log.debug("APS DM: %s failed", what, exc_info=True)
        raise DMError(f"APS DM: {what} failed: {_short(error)}") from error


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "y", "true", "1")
    return bool(value)


# ---------------------------------------------------------------------- experiments


class ApsDM:
    """`ports.DataManagement` on the APS DM system: experiments of one station, their users, ESAFs.

    `api` is the SDK module or any object with the same API classes (tests pass a fake).
    """

    def __init__(self, station: str, data_top_dir: Path, api: Any = None, *, tz: tzinfo | None = None):
        self.station = station
        self.data_top_dir = Path(data_top_dir)
        self.tz = tz
        self._sdk = api if api is not None else import_dm()
        self._experiments: Any = None
        self._users: Any = None
        self._esafs: Any = None

    @property
    def experiment_api(self) -> Any:
        if self._experiments is None:
            self._experiments = _call("connecting to the experiment service", self._sdk.ExperimentDsApi)
        return self._experiments

    @property
    def user_api(self) -> Any:
        if self._users is None:
            self._users = _call("connecting to the user service", self._sdk.UserDsApi)
        return self._users

    @property
    def esaf_api(self) -> Any:
        if self._esafs is None:
            self._esafs = _call("connecting to the ESAF service", self._sdk.EsafApsDbApi)
        return self._esafs

    # ------------------------------------------------------------------ ports.DataManagement

    def create_experiment(self, experiment: Experiment) -> tuple[Experiment, bool]:
        """Add the experiment to the DM system, or find it; metadata is (re)written either way."""
        name = check_name(experiment.name, "experiment name")
        found = self._find(name)
        created = False
        if found is None:
            month = experiment.year_month or (year_month(experiment.start) if experiment.start else "")
            try:
                self.experiment_api.addExperiment(
                    name,
                    typeName=self.station,
                    description=experiment.title,
                    rootPath=month,
                    startDate=sdk_date(self._local(experiment.start)),
                    endDate=sdk_date(self._local(experiment.end)),
                )
                created = True
            except Exception as error:
                if not _exception_named(error, "ObjectAlreadyExists"):
                    raise DMError(f"APS DM: adding experiment {name} failed: {_short(error)}") from error
                log.info("experiment %s appeared in DM meanwhile; using it", name)
        metadata = {key: value for key, value in (("gup", experiment.gup), ("esaf", experiment.esaf)) if value}
        if metadata and hasattr(self.experiment_api, "upsertExperimentMetadata"):
            _call(f"writing metadata of {name}", self.experiment_api.upsertExperimentMetadata, name, metadata)
        found = self._find(name)
        if found is None:
            raise DMError(f"APS DM: experiment {name} was added but cannot be read back")
        result = self._experiment(found)
        log.info("experiment %s %s in APS DM (station %s)", name, "created" if created else "found", self.station)
        return result, created

    def get_experiment(self, name: str) -> Experiment | None:
        """The experiment with its users' names, e-mails and institutions (for Email and the PVs)."""
        found = self._find(check_name(name, "experiment name"))
        if found is None:
            return None
        experiment = self._experiment(found)
        return replace(experiment, users=tuple(self._with_contact(user) for user in experiment.users))

    def list_experiments(self) -> list[str]:
        """The station's experiments, newest first (by DM id, else start date)."""
        found = _call(f"listing experiments of station {self.station}", self._station_experiments)

        def newest(item: Any) -> tuple[float, float]:
            ident = sdk_field(item, "id")
            start = parse_sdk_date(sdk_field(item, "startDate"))
            return (
                float(ident) if isinstance(ident, (int, float)) else -1.0,
                start.replace(tzinfo=None).timestamp() if start else 0.0,
            )

        ordered = sorted(found or [], key=newest, reverse=True)
        return [str(sdk_field(item, "name")) for item in ordered if sdk_field(item, "name")]

    def add_users(self, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        """Give the `User` role; return the usernames added.

        When some cannot be added (e.g. no DM account), the others still are; the
        DMError raised after carries the added usernames in `done`.
        """
        name = check_name(name, "experiment name")
        have = set(self._usernames(name))
        added, failed = [], []
        for user in users:
            if user.username in have or user.username in added:
                continue
            try:
                self.user_api.getUserByUsername(user.username)
            except Exception as error:
                if _exception_named(error, "ObjectNotFound"):
                    failed.append(f"{user.username} (not a DM user)")
                else:
                    failed.append(f"{user.username} ({_short(error)})")
                continue
            try:
                self.user_api.addUserExperimentRole(user.username, ROLE, name)
            except Exception as error:
                failed.append(f"{user.username} ({_short(error)})")
                continue
            added.append(user.username)
        if failed:
            done = f"added {', '.join(added)}; " if added else ""
            raise DMError(f"APS DM: {done}could not add {', '.join(failed)} to {name}", done=added)
        return added

    def remove_users(self, name: str, usernames: Sequence[str]) -> list[str]:
        """Take the `User` role from those who have it; return them."""
        name = check_name(name, "experiment name")
        have = set(self._usernames(name))
        removed = []
        for username in dict.fromkeys(usernames):
            if username not in have:
                continue
            _call(f"removing {username} from {name}", self.user_api.deleteUserExperimentRole, username, ROLE, name)
            removed.append(username)
        return removed

    def delete_experiment(self, name: str) -> str:
        """Delete the DM experiment; raw data on the data host is never touched."""
        name = check_name(name, "experiment name")
        found = self._find(name)
        if found is None:
            raise InputError(f"no experiment named {name!r} in the APS DM system; nothing deleted")
        storage = sdk_field(found, "storageDirectory", default="")
        _call(f"deleting experiment {name}", self.experiment_api.deleteExperimentByName, name)
        where = f", storage {storage}" if storage else ""
        sentence = (
            f"deleted experiment {name} from the APS DM system (station {self.station}{where}); "
            f"raw data in {self.data_top_dir / name} kept"
        )
        log.info("%s", sentence)
        return sentence

    def esaf(self, esaf: str) -> tuple[list[Person], str]:
        """ESAF experimenters (PI flagged) and DOI from the APS ESAF database."""
        esaf = str(esaf).strip()
        if not esaf:
            return [], ""
        ident: int | str = int(esaf) if esaf.isdigit() else esaf
        record = _call(f"reading ESAF {esaf}", self.esaf_api.getStationEsafById, self.station, ident)
        if record is None:
            return [], ""
        people = [self._person(entry) for entry in self._experimenters(record)]
        doi = sdk_field_like(record, "doi", "esafDoi", "esafDOI", "doiNumber", default="")
        return [p for p in people if p.badge], str(doi or "")

    # ------------------------------------------------------------------ helpers

    def _local(self, moment: datetime | None) -> datetime | None:
        if moment is None or self.tz is None or moment.tzinfo is None:
            return moment
        return moment.astimezone(self.tz)

    def _station_experiments(self) -> Iterable[Any]:
        return self.experiment_api.getExperimentsByStation(self.station)

    def _find(self, name: str) -> Any:
        try:
            return self.experiment_api.getExperimentByName(name)
        except Exception as error:
            if _exception_named(error, "ObjectNotFound"):
                return None
            raise DMError(f"APS DM: reading experiment {name} failed: {_short(error)}") from error

    def _usernames(self, name: str) -> list[str]:
        found = self._find(name)
        if found is None:
            raise InputError(f"no experiment named {name!r} in the APS DM system")
        return [str(u) for u in sdk_field(found, "experimentUsernameList", default=None) or []]

    def _with_contact(self, user: ExperimentUser) -> ExperimentUser:
        """`user` with the name, e-mail and institution of its DM account; unchanged if it cannot be read."""
        try:
            account = self.user_api.getUserByUsername(user.username)
        except Exception as error:
            log.warning("APS DM: no contact details for %s: %s", user.username, _short(error))
            return user
        if account is None:
            return user
        first = str(sdk_field_like(account, "firstName", "first_name", default="") or "").strip()
        last = str(sdk_field_like(account, "lastName", "last_name", default="") or "").strip()
        name = " ".join(part for part in (first, last) if part)
        name = name or str(sdk_field_like(account, "fullName", "full_name", default="") or "").strip()
        email = str(sdk_field_like(account, "email", "emailAddress", "email_address", default="") or "").strip()
        institution = sdk_field_like(account, "institution", "affiliation", "institutionName", default="")
        return replace(
            user,
            name=name or user.name,
            email=email or user.email,
            institution=str(institution or "").strip() or user.institution,
        )

    def _experiment(self, found: Any) -> Experiment:
        name = str(sdk_field(found, "name"))
        start = parse_sdk_date(sdk_field(found, "startDate"), self.tz)
        month = str(sdk_field(found, "rootPath", default="") or "").strip("/")
        return Experiment(
            name=name,
            title=str(sdk_field(found, "description", default="") or ""),
            start=start,
            end=parse_sdk_date(sdk_field(found, "endDate"), self.tz),
            year_month=month or (year_month(start) if start else ""),
            storage_directory=str(sdk_field(found, "storageDirectory", default="") or ""),
            data_directory=str(self.data_top_dir / name),
            users=tuple(
                ExperimentUser(str(u), source="dm")
                for u in sdk_field(found, "experimentUsernameList", default=[]) or []
            ),
        )

    @staticmethod
    def _experimenters(record: Any) -> list[Any]:
        people = sdk_field_like(record, "experimentUsers", "experimenters", "users", default=[])
        return list(people) if isinstance(people, Iterable) and not isinstance(people, (str, Mapping)) else []

    @staticmethod
    def _person(entry: Any) -> Person:
        badge = sdk_field_like(entry, "badgeNumber", "badge", "badgeNo", default="")
        return Person(
            badge=str(badge).strip(),
            first_name=str(sdk_field_like(entry, "firstName", "first_name", "firstname", default="")),
            last_name=str(sdk_field_like(entry, "lastName", "last_name", "lastname", default="")),
            email=str(sdk_field_like(entry, "email", "emailAddress", "email_address", default="")),
            institution=str(sdk_field_like(entry, "institution", "affiliation", "institutionName", default="")),
            is_pi=_truthy(sdk_field_like(entry, "piFlag", "pi_flag", "isPi", "pi", default=False)),
        )


# ---------------------------------------------------------------------- data transfer


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
    `resume` re-attaches to DAQs still running for this station.
    """

    def __init__(
        self,
        station: str,
        data_top_dir: Path,
        data_host: str = "localhost",
        api: Any = None,
        *,
        direct_mount: bool = False,
    ):
        self.station = station
        self.data_top_dir = Path(data_top_dir)
        self.data_host = data_host
        self.direct_mount = direct_mount
        self._sdk = api if api is not None else import_dm()
        self._daq_api: Any = None
        self._lock = threading.Lock()
        self._daqs: list[tuple[str, str]] = []  # (experiment, dataDirectory) started or adopted
        self._uploads: list[tuple[str, str]] = []  # (experiment, upload id)
        self._last_bytes: tuple[float, float] | None = None  # (monotonic time, bytes)
        self._rate = 0.0

    @property
    def daq_api(self) -> Any:
        if self._daq_api is None:
            self._daq_api = _call("connecting to the DAQ service", self._sdk.ExperimentDaqApi)
        return self._daq_api

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
            if once:
                self._uploads = []
            for source, url, analysis in plan:
                info = dict(ANALYSIS_INFO) if analysis else {}
                if once:
                    reply = _call(f"starting the upload of {source}", self.daq_api.upload, name, url, info)
                    upload_id = sdk_field(reply, "id", default="")
                    self._uploads.append((name, str(upload_id)))
                    started.append(source)
                    continue
                if (name, url) in running:
                    already.append(source)
                else:
                    _call(f"starting the DAQ of {source}", self.daq_api.startDaq, name, url, {**DAQ_INFO, **info})
                    started.append(source)
                if (name, url) not in self._daqs:
                    self._daqs.append((name, url))
            self._last_bytes = None
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
            if (experiment, url) in running:
                _call(f"stopping the DAQ of {url}", self.daq_api.stopDaq, experiment, url)
                stopped.append(url)
        for _, upload_id in uploads:
            if upload_id and hasattr(self.daq_api, "stopUpload"):
                info = _call("reading upload status", self.daq_api.getUploadInfo, upload_id)
                if str(sdk_field(info, "status", default="")).lower() in _RUNNING:
                    _call(f"stopping upload {upload_id}", self.daq_api.stopUpload, upload_id)
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
            listed = _call("listing DAQs", self.daq_api.listDaqs) or []
            wanted = set(daqs)
            entries += [d for d in listed if (sdk_field(d, "experimentName"), sdk_field(d, "dataDirectory")) in wanted]
        for _, upload_id in uploads:
            if upload_id:
                entries.append(_call("reading upload status", self.daq_api.getUploadInfo, upload_id))
        return self._summarize(entries, uploading=bool(uploads) and not daqs)

    def resume(self) -> str | None:
        """Re-attach to DAQs the DM system still runs for this station (they outlive the IOC)."""
        listed = _call("listing DAQs", self.daq_api.listDaqs) or []
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
            self._last_bytes = None
        names = sorted({experiment for experiment, _ in mine})
        return f"DM DAQ still running for {', '.join(names)} ({len(mine)} folder{'s' if len(mine) != 1 else ''})"

    def forget(self, sources: Mapping[str, str]) -> None:
        """Nothing to forget: this IOC keeps no record of the files sent.

        The DM system's DAQs and uploads decide on its servers what to send;
        nothing kept here could make a re-created experiment miss files.
        """

    # ------------------------------------------------------------------ helpers

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
        listed = _call("listing DAQs", self.daq_api.listDaqs) or []
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
        state = "Error" if failed else "Running" if running else "Stopped"
        message = ""
        if failed:
            first = f": {error_texts[0]}" if error_texts else ""
            message = f"DM reports {errors or 'a'} transfer error{'s' if errors != 1 else ''}{first}"[:_MAX_MESSAGE]
        elif uploading and entries and not running:
            message = f"upload done: {done} of {total} files"
        return TransferProgress(
            state=state,
            files_done=done,
            files_total=max(total, done),
            bytes_done=size,
            rate_mb_s=rate if running else 0.0,
            last_file=last_file,
            message=message,
        )

    def _update_rate(self, size: float) -> float:
        """Record `size` bytes now; return the MB/s since the previous record (progress runs in several threads)."""
        with self._lock:
            now = time.monotonic()
            if self._last_bytes is not None:
                then, before = self._last_bytes
                if now > then and size >= before:
                    self._rate = (size - before) / (now - then) / 1e6
            self._last_bytes = (now, size)
            return self._rate
