"""`ApsDM`: the `aps` DM backend (experiments, users, ESAF data) on the APS DM system, through its SDK.

Every SDK call takes its arguments as the SDK's public callers pass them; the comment at each call names
the caller it follows. DMagic is `dmagic/dm.py` of xray-imaging/DMagic (decarlof/DMagic for the newer
calls); apstools is `apstools/utils/aps_data_management.py` of BCDA-APS/apstools.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from ...ioc.domain.errors import DMError, InputError
from ...ioc.domain.experiment import Experiment, ExperimentUser
from ...ioc.domain.naming import check_name, year_month
from ...ioc.domain.people import Person
from .aps_sdk import (
    exception_named,
    import_dm,
    parse_sdk_date,
    sdk_call,
    sdk_date,
    sdk_field,
    sdk_field_like,
    short_message,
)

log = logging.getLogger(__name__)

ROLE = "User"
METADATA_KEYS = ("gup", "esaf")  # what the IOC keeps on a DM experiment, read back by `_experiment`


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "y", "true", "1")
    return bool(value)


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
            self._experiments = sdk_call("connecting to the experiment service", self._sdk.ExperimentDsApi)
        return self._experiments

    @property
    def user_api(self) -> Any:
        if self._users is None:
            self._users = sdk_call("connecting to the user service", self._sdk.UserDsApi)
        return self._users

    @property
    def esaf_api(self) -> Any:
        if self._esafs is None:
            self._esafs = sdk_call("connecting to the ESAF service", self._sdk.EsafApsDbApi)
        return self._esafs

    # ------------------------------------------------------------------ ports.DataManagement

    def create_experiment(self, experiment: Experiment) -> tuple[Experiment, bool]:
        """Add the experiment to the DM system, or find it; metadata is (re)written either way."""
        name = check_name(experiment.name, "experiment name")
        found = self._find(name)
        created = False
        if found is None:
            month = experiment.year_month or (year_month(experiment.start) if experiment.start else "")
            try:  # keywords as DMagic's create_experiment passes them
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
                if not exception_named(error, "ObjectAlreadyExists"):
                    raise DMError(f"APS DM: adding experiment {name} failed: {short_message(error)}") from error
                log.info("experiment %s appeared in DM meanwhile; using it", name)
        self._write_metadata(name, experiment, found)
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
        return [experiment.name for experiment in self.station_experiments()]

    def station_experiments(self) -> list[Experiment]:
        """The station's experiments as the listing has them (with the IOC's `gup` and `esaf` where it wrote
        them), newest first (by DM id, else start date); no user is looked up."""
        found = sdk_call(f"listing experiments of station {self.station}", self._station_experiments)

        def newest(item: Any) -> tuple[float, float]:
            ident = sdk_field(item, "id")
            start = parse_sdk_date(sdk_field(item, "startDate"))
            return (
                float(ident) if isinstance(ident, (int, float)) else -1.0,
                start.replace(tzinfo=None).timestamp() if start else 0.0,
            )

        ordered = sorted(found or [], key=newest, reverse=True)
        return [self._experiment(item) for item in ordered if sdk_field(item, "name")]

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
            try:  # DMagic's add_users: the account first, then the role
                self.user_api.getUserByUsername(user.username)
            except Exception as error:
                if exception_named(error, "ObjectNotFound"):
                    failed.append(f"{user.username} (not a DM user)")
                else:
                    failed.append(f"{user.username} ({short_message(error)})")
                continue
            try:
                self.user_api.addUserExperimentRole(user.username, ROLE, name)
            except Exception as error:
                failed.append(f"{user.username} ({short_message(error)})")
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
            # positional, as DMagic's remove_users
            sdk_call(f"removing {username} from {name}", self.user_api.deleteUserExperimentRole, username, ROLE, name)
            removed.append(username)
        return removed

    def delete_experiment(self, name: str) -> str:
        """Delete the DM experiment; raw data on the data host is never touched."""
        name = check_name(name, "experiment name")
        found = self._find(name)
        if found is None:
            raise InputError(f"no experiment named {name!r} in the APS DM system; nothing deleted")
        storage = sdk_field(found, "storageDirectory", default="")
        # by name alone, as DMagic's delete_experiment (the SDK takes the station from its environment)
        sdk_call(f"deleting experiment {name}", self.experiment_api.deleteExperimentByName, name)
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
        ident: int | str = int(esaf) if esaf.isdigit() else esaf  # an int, as DMagic's get_esaf_users passes it
        record = sdk_call(f"reading ESAF {esaf}", self.esaf_api.getStationEsafById, self.station, ident)
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
        return self.experiment_api.getExperimentsByStation(stationName=self.station)  # as DMagic lists them

    def _write_metadata(self, name: str, experiment: Experiment, found: Any) -> None:
        """Write the experiment's GUP and ESAF that DM does not hold yet, one key per call:
        `upsertExperimentMetadata(key, value, experimentName)`, as DMagic writes its `emailedUsers`."""
        if not hasattr(self.experiment_api, "upsertExperimentMetadata"):
            return  # an SDK without experiment metadata: the experiment is found by its name or title
        for key in METADATA_KEYS:
            value = getattr(experiment, key)
            if value and str(sdk_field(found, key, default="")) != value:
                sdk_call(f"writing metadata of {name}", self.experiment_api.upsertExperimentMetadata, key, value, name)

    def _find(self, name: str) -> Any:
        try:  # by name alone, as DMagic's get_experiment
            return self.experiment_api.getExperimentByName(name)
        except Exception as error:
            if exception_named(error, "ObjectNotFound"):
                return None
            raise DMError(f"APS DM: reading experiment {name} failed: {short_message(error)}") from error

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
            log.warning("APS DM: no contact details for %s: %s", user.username, short_message(error))
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
            gup=str(sdk_field(found, "gup", default="") or ""),  # metadata reads back as a field, as DMagic reads it
            esaf=str(sdk_field(found, "esaf", default="") or ""),
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
