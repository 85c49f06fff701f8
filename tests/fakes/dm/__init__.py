"""A fake of the APS DM SDK (`dm` package) for contract tests: records calls, keeps state in memory.

Objects have the documented shape: dict-like `DmObject`s with `.get` and `.data`
(like the real SDK's), dates as `DD-Mon-YY`, DAQ and upload status as dicts.
`STATE.fail[method] = exception` makes the next call of that method raise it.
"""

from __future__ import annotations

import itertools
from collections import UserDict
from dataclasses import dataclass, field


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
    users: set = field(default_factory=set)
    user_details: dict = field(default_factory=dict)  # username -> fields of its UserInfo (firstName, email, ...)
    esafs: dict = field(default_factory=dict)
    daqs: list = field(default_factory=list)
    uploads: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)
    fail: dict = field(default_factory=dict)
    storage_root: str = "/gdata/dm"
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

    def called(self, method: str) -> list:
        return [(args, kwargs) for name, args, kwargs in self.calls if name == method]


STATE = State()


def reset() -> State:
    """Forget everything; return the fresh state."""
    global STATE
    STATE = State()
    return STATE


class ExperimentDsApi:
    def getExperimentByName(self, name):
        STATE.record("getExperimentByName", name)
        if name not in STATE.experiments:
            raise ObjectNotFound(f"Experiment {name} does not exist.")
        return DmObject(dict(STATE.experiments[name]))

    def getExperimentsByStation(self, station=None):
        STATE.record("getExperimentsByStation", station)
        return [DmObject(dict(e)) for e in STATE.experiments.values() if e["experimentStation"] == station]

    def addExperiment(self, name, typeName=None, description=None, rootPath=None, startDate=None, endDate=None):
        STATE.record(
            "addExperiment",
            name,
            typeName=typeName,
            description=description,
            rootPath=rootPath,
            startDate=startDate,
            endDate=endDate,
        )
        if name in STATE.experiments:
            raise ObjectAlreadyExists(f"Experiment {name} already exists.")
        STATE.experiments[name] = {
            "id": next(STATE.ids),
            "name": name,
            "description": description,
            "rootPath": rootPath,
            "startDate": startDate,
            "endDate": endDate,
            "experimentStation": typeName,
            "experimentUsernameList": [],
            "storageDirectory": f"{STATE.storage_root}/{rootPath}/{name}",
            "metadata": {},
        }
        return DmObject(dict(STATE.experiments[name]))

    def deleteExperimentByName(self, name):
        STATE.record("deleteExperimentByName", name)
        if name not in STATE.experiments:
            raise ObjectNotFound(f"Experiment {name} does not exist.")
        del STATE.experiments[name]

    def upsertExperimentMetadata(self, name, metadata):
        STATE.record("upsertExperimentMetadata", name, metadata)
        if name not in STATE.experiments:
            raise ObjectNotFound(f"Experiment {name} does not exist.")
        STATE.experiments[name]["metadata"].update(metadata)


class UserDsApi:
    def getUserByUsername(self, username):
        STATE.record("getUserByUsername", username)
        if username not in STATE.users:
            raise ObjectNotFound(f"User {username} does not exist.")
        return DmObject({"username": username, **STATE.user_details.get(username, {})})

    def addUserExperimentRole(self, username, role, experimentName):
        STATE.record("addUserExperimentRole", username, role, experimentName)
        users = STATE.experiments[experimentName]["experimentUsernameList"]
        if username in users:
            raise ObjectAlreadyExists(f"{username} already has role {role}")
        users.append(username)

    def deleteUserExperimentRole(self, username, role, experimentName):
        STATE.record("deleteUserExperimentRole", username, role, experimentName)
        STATE.experiments[experimentName]["experimentUsernameList"].remove(username)


class EsafApsDbApi:
    def getStationEsafById(self, station, esafId):
        STATE.record("getStationEsafById", station, esafId)
        if esafId not in STATE.esafs:
            raise ObjectNotFound(f"ESAF {esafId} not found.")
        return DmObject(dict(STATE.esafs[esafId]))


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
