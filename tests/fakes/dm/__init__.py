"""A fake of the APS DM SDK (`dm` package) for contract tests: records calls, keeps state in memory.

Strict: every method takes its arguments as the SDK's public callers pass them, and a call in any other
form fails as it would against the SDK (a TypeError, or the service's InvalidRequest / ObjectNotFound):

- DMagic (xray-imaging/DMagic and decarlof/DMagic, `dmagic/dm.py`): `ExperimentDsApi()` and friends
  built directly; `addExperiment(name, typeName=, description=, rootPath=, startDate=, endDate=)` with
  dates as `DD-Mon-YY`; `getExperimentsByStation(stationName=)`; `upsertExperimentMetadata(key, value,
  experimentName)`, one key per call, read back as a field of the experiment
  (`getExperimentByName(name).get(key)`); `addUserExperimentRole(username, 'User', experimentName)`;
  `getStationEsafById(station, int(esafId))`; `startDaq(name, dataDirectory, daqInfo)`,
  `upload(name, dataDirectory[, daqInfo])`, `stopDaq(name, dataDirectory)`, `listDaqs()`.
- apstools (BCDA-APS/apstools, `apstools/utils/aps_data_management.py`): `CatApiFactory.getFileCatApi()`,
  `getExperimentsByStation()` (the station from `DM_STATION_NAME`), `getUploadInfo(id)`.
- the DM station GUI shipped with the SDK: `addExperiment(name, stationName, typeName, description,
  rootPath, storageName, globusGroupId, startDate, endDate)` positionally, `deleteExperimentByName(name,
  stationName)`, `getExperimentFiles(experimentName, queryDict, skip, limit[, rawData=True])` paged.

Objects are dict-like `DmObject`s with `.get` and `.data`, like the SDK's. `STATE.fail[method] = exception`
makes the next call of that method raise it.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import UserDict
from dataclasses import dataclass, field

SDK_DATE = re.compile(r"\d{2}-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-\d{2}")


class DmException(Exception):
    """Base of the SDK's errors."""

    def getErrorMessage(self) -> str:
        return str(self)


class ObjectNotFound(DmException):
    pass


class ObjectAlreadyExists(DmException):
    pass


class InvalidRequest(DmException):
    pass


class DmObject(UserDict):
    """Dict-like with attribute access, like the SDK's objects."""

    def __getattr__(self, name):
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class State:
    experiments: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # experiment name -> its file records, in cataloguing order
    users: set = field(default_factory=set)
    user_details: dict = field(default_factory=dict)  # username -> fields of its UserInfo (firstName, email, ...)
    esafs: dict = field(default_factory=dict)
    daqs: list = field(default_factory=list)
    uploads: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)
    fail: dict = field(default_factory=dict)
    storage_root: str = "/gdata/dm"
    max_files_per_call: int = 1000  # the most files the catalogue answers in one call, whatever `limit` asks
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def record(self, method: str, *args, **kwargs) -> None:
        self.calls.append((method, args, kwargs))
        error = self.fail.pop(method, None)
        if error is not None:
            raise error

    def add_user(self, username: str, **details) -> None:
        """A DM account, e.g. `add_user("d1", firstName="Ann", lastName="Smith", email="ann@x.org")`."""
        self.users.add(username)
        self.user_details[username] = details

    def add_file(self, experiment: str, path: str, size: int, mtime: float, md5: str = "") -> None:
        """A file the DM system catalogued for `experiment` (its path relative to the experiment's storage)."""
        record = {
            "id": str(next(self.ids)),
            "experimentName": experiment,
            "experimentFilePath": path,
            "fileName": path.rsplit("/", 1)[-1],
            "fileSize": size,
            "fileModificationTimestamp": mtime,
        }
        if md5:
            record["md5Sum"] = md5
        self.files.setdefault(experiment, []).append(record)

    def called(self, method: str) -> list:
        return [(args, kwargs) for name, args, kwargs in self.calls if name == method]


STATE = State()


def reset() -> State:
    """Forget everything; return the fresh state."""
    global STATE
    STATE = State()
    return STATE


def _experiment(name: str) -> dict:
    if name not in STATE.experiments:
        raise ObjectNotFound(f"Experiment {name} does not exist.")
    return STATE.experiments[name]


def _check_date(what: str, value) -> None:
    if value is not None and not (isinstance(value, str) and SDK_DATE.fullmatch(value)):
        raise InvalidRequest(f"Invalid {what} {value!r}: expected DD-Mon-YY.")


class ExperimentDsApi:
    def getExperimentByName(self, name, stationName=None):
        STATE.record("getExperimentByName", name)
        return DmObject(dict(_experiment(name)))

    def getExperimentsByStation(self, stationName=None):
        STATE.record("getExperimentsByStation", stationName=stationName)
        station = stationName or os.environ.get("DM_STATION_NAME")
        if not station:
            raise InvalidRequest("Station name has not been provided.")
        return [DmObject(dict(e)) for e in STATE.experiments.values() if e["experimentStation"] == station]

    def addExperiment(
        self,
        name,
        stationName=None,
        typeName=None,
        description=None,
        rootPath=None,
        storageName=None,
        globusGroupId=None,
        startDate=None,
        endDate=None,
    ):
        given = {
            "stationName": stationName,
            "typeName": typeName,
            "description": description,
            "rootPath": rootPath,
            "storageName": storageName,
            "globusGroupId": globusGroupId,
            "startDate": startDate,
            "endDate": endDate,
        }
        STATE.record("addExperiment", name, **{key: value for key, value in given.items() if value is not None})
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Experiment name has not been provided.")
        _check_date("start date", startDate)
        _check_date("end date", endDate)
        if name in STATE.experiments:
            raise ObjectAlreadyExists(f"Experiment {name} already exists.")
        STATE.experiments[name] = {
            "id": next(STATE.ids),
            "name": name,
            "description": description,
            "rootPath": rootPath,
            "startDate": startDate,
            "endDate": endDate,
            "experimentStation": stationName or typeName or os.environ.get("DM_STATION_NAME"),
            "experimentType": typeName,
            "experimentUsernameList": [],
            "storageDirectory": f"{STATE.storage_root}/{rootPath}/{name}",
        }
        return DmObject(dict(STATE.experiments[name]))

    def deleteExperimentByName(self, name, stationName=None):
        STATE.record("deleteExperimentByName", name)
        _experiment(name)
        del STATE.experiments[name]
        STATE.files.pop(name, None)

    def upsertExperimentMetadata(self, key, value, experimentName):
        STATE.record("upsertExperimentMetadata", key, value, experimentName)
        if not isinstance(key, str) or not key:
            raise InvalidRequest(f"Invalid metadata key {key!r}.")
        if not isinstance(value, (str, int, float)):
            raise InvalidRequest(f"Invalid value of metadata key {key}: {type(value).__name__}.")
        _experiment(experimentName)[key] = value


class UserDsApi:
    def getUserByUsername(self, username):
        STATE.record("getUserByUsername", username)
        if username not in STATE.users:
            raise ObjectNotFound(f"User {username} does not exist.")
        return DmObject({"username": username, **STATE.user_details.get(username, {})})

    def addUserExperimentRole(self, username, roleName, experimentName):
        STATE.record("addUserExperimentRole", username, roleName, experimentName)
        users = _experiment(experimentName)["experimentUsernameList"]
        if username in users:
            raise ObjectAlreadyExists(f"{username} already has role {roleName}")
        users.append(username)

    def deleteUserExperimentRole(self, username, roleName, experimentName):
        STATE.record("deleteUserExperimentRole", username, roleName, experimentName)
        _experiment(experimentName)["experimentUsernameList"].remove(username)


class EsafApsDbApi:
    def getStationEsafById(self, stationName, esafId):
        STATE.record("getStationEsafById", stationName, esafId)
        if esafId not in STATE.esafs:
            raise ObjectNotFound(f"ESAF {esafId} not found.")
        return DmObject(dict(STATE.esafs[esafId]))


class FileCatApi:
    def getExperimentFiles(self, experimentName, queryDict=None, skip=0, limit=0, rawData=False):
        STATE.record("getExperimentFiles", experimentName, queryDict, skip, limit, rawData=rawData)
        if not isinstance(queryDict, dict):
            raise InvalidRequest(f"Invalid query {queryDict!r}.")
        if not all(isinstance(n, int) and n >= 0 for n in (skip, limit)):
            raise InvalidRequest(f"Invalid skip {skip!r} or limit {limit!r}.")
        records = STATE.files.get(experimentName, [])
        wanted = [r for r in records if all(r.get(k) == v for k, v in queryDict.items())]
        count = min(limit or STATE.max_files_per_call, STATE.max_files_per_call)
        page = wanted[skip : skip + count]
        return [dict(r) for r in page] if rawData else [DmObject(dict(r)) for r in page]


class CatApiFactory:
    @staticmethod
    def getFileCatApi():
        return FileCatApi()


class ExperimentDaqApi:
    def startDaq(self, experimentName, dataDirectory, daqInfo=None):
        STATE.record("startDaq", experimentName, dataDirectory, daqInfo)
        daq = DmObject(
            {
                "id": str(next(STATE.ids)),
                "experimentName": experimentName,
                "experimentStationName": STATE.experiments.get(experimentName, {}).get("experimentStation"),
                "dataDirectory": dataDirectory,
                "status": "running",
                "nFiles": 0,
                "nProcessedFiles": 0,
                "nCompletedFiles": 0,
                "nProcessingErrors": 0,
                **(daqInfo or {}),
            }
        )
        STATE.daqs.append(daq)
        return daq

    def stopDaq(self, experimentName, dataDirectory):
        STATE.record("stopDaq", experimentName, dataDirectory)
        for daq in STATE.daqs:
            if daq["experimentName"] == experimentName and daq["dataDirectory"] == dataDirectory:
                daq["status"] = "done"
                return daq
        raise ObjectNotFound(f"no DAQ for {dataDirectory}")

    def listDaqs(self, status=None):
        STATE.record("listDaqs", status)
        return [DmObject(dict(d)) for d in STATE.daqs if status is None or d["status"] == status]

    def upload(self, experimentName, dataDirectory, daqInfo=None):
        STATE.record("upload", experimentName, dataDirectory, daqInfo)
        upload = DmObject(
            {
                "id": f"upload-{next(STATE.ids)}",
                "experimentName": experimentName,
                "dataDirectory": dataDirectory,
                "status": "running",
                "nFiles": 0,
                "nProcessedFiles": 0,
                "nCompletedFiles": 0,
                "nProcessingErrors": 0,
                **(daqInfo or {}),
            }
        )
        STATE.uploads[upload["id"]] = upload
        return upload

    def getUploadInfo(self, id):
        STATE.record("getUploadInfo", id)
        return DmObject(dict(STATE.uploads[id]))

    def stopUpload(self, id):
        STATE.record("stopUpload", id)
        STATE.uploads[id]["status"] = "aborted"
        return STATE.uploads[id]
