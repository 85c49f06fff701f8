"""`ScicatClient`: the few calls of SciCat's REST API the catalogue makes, and what their answers mean.

Why requests and not pyscicat: pyscicat's v3 client sends the token as a URL query parameter
(`?access_token=...`). A URL ends up in the web server's and any proxy's access logs, and in the text of
every requests exception, which this IOC logs and shows on Status: the token would leak to whoever reads
a log. Only an answer that is the dataset asked for (its pid) counts as "there" or "created": a SciCat
answering 200 to anything is refused (the dataset stays queued).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import requests

from ...ioc.domain.errors import CatalogError, InputError
from ...ioc.domain.text import printable
from ...ioc.secrets import read_credentials
from ..http import MB, Answer, HttpFailure, bounded_request


class ScicatClient:
    """The few SciCat calls the catalogue needs, on one `requests.Session` (TLS verified), token in a header.

    Each call is bounded (`http.bounded_request`): `timeout` seconds for the whole call, at most
    ANSWER_CAP bytes of answer, no redirect followed (the login carries the password, the others the token).
    """

    ANSWER_CAP = 16 * MB  # a dataset (its scientificMetadata); the other answers are small

    def __init__(self, url: str, credentials: Path, timeout: float = 10.0, session: requests.Session | None = None):
        self.url = url.rstrip("/") + "/"
        self.credentials = credentials
        self.timeout = timeout
        self.session = session or requests.Session()
        self.user = ""  # the account's name, once read from the credentials
        self._token = ""

    def has_dataset(self, pid: str) -> bool:
        """Whether SciCat holds dataset `pid`: only an answer that is this dataset (its pid) says so.
        404, or an empty answer, says not; anything else is refused."""
        answer = self._call("GET", "datasets/{pid}", pid=pid, ok=(200, 404), right="read")
        if answer.status == 404 or answer.body.strip() in (b"", b"null"):
            return False
        if _field(_decoded(answer), "pid") != pid:
            raise _unexpected(answer, "GET datasets/{pid}", f"dataset {pid}")
        return True

    def create_dataset(self, body: dict) -> None:
        answer = self._call("POST", "datasets", json=body, ok=(200, 201), right="create")
        if _field(_decoded(answer), "pid") != body["pid"]:
            raise _unexpected(answer, "POST datasets", f"dataset {body['pid']}")

    def count_datablocks(self, pid: str) -> int:
        """How many origdatablocks SciCat holds for dataset `pid`: its count, one small answer however many
        files they list."""
        answer = self._call("GET", "datasets/{pid}/origdatablocks/count", pid=pid, ok=(200,), right="read")
        count = _field(_decoded(answer), "count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise _unexpected(answer, "GET datasets/{pid}/origdatablocks/count", f"a count of {pid}'s origdatablocks")
        return count

    def create_datablock(self, pid: str, body: dict) -> None:
        answer = self._call("POST", "datasets/{pid}/origdatablocks", pid=pid, json=body, ok=(200, 201), right="add")
        if _field(_decoded(answer), "datasetId") != pid:
            raise _unexpected(answer, "POST datasets/{pid}/origdatablocks", f"an origdatablock of {pid}")

    def groups(self) -> list[str] | None:
        """The account's groups as SciCat sees them now (auth/whoami), None when its answer does not say."""
        groups = _field(_decoded(self._call("GET", "auth/whoami", ok=(200,), right="read")), "currentGroups")
        return [str(group) for group in groups] if isinstance(groups, list) else None

    def dataset_problem(self, body: dict) -> str:
        """What SciCat finds wrong with `body`, '' when nothing (datasets/isValid: it creates nothing, and
        checks the right to create it first, pid and ownerGroup included)."""
        said = _decoded(self._call("POST", "datasets/isValid", json=body, ok=(200, 201), right="create"))
        return "" if _field(said, "valid") is True else str(_field(said, "error") or "not valid")

    def login(self) -> None:
        """Log in as the credentials' account (auth/login) and keep its token."""
        try:
            user, password = read_credentials("scicat.credentials", self.credentials)
        except (InputError, OSError, UnicodeDecodeError) as error:
            raise CatalogError(f"no SciCat login: {error}") from None
        self.user = user
        answer = self._send("POST", "auth/login", json={"username": user, "password": password})
        if answer.status == 404:
            raise CatalogError(f"SciCat at {self.url} has no auth/login: not SciCat's current backend "
                               "(the archived LoopBack one is not supported)")  # fmt: skip
        if answer.status not in (200, 201):
            raise CatalogError(f"SciCat refused the login of {user} ({_said(answer)})")
        token = _field(_decoded(answer), "access_token")
        if not isinstance(token, str) or not token:
            raise CatalogError("SciCat's login answer held no access_token")
        self._token = token

    def _call(self, method: str, route: str, *, ok: tuple[int, ...], right: str, pid: str = "",
              json: dict | None = None) -> Answer:  # fmt: skip
        """One call of `route` ({pid} in it filled in), logging in first; again once when SciCat no longer
        takes the token: an expired one gives 401, one it cannot verify (its secret changed) makes the call
        anonymous, which gives 403. A 403 then is the account's lack of `right`: Forbidden."""
        path = route.format(pid=quote(pid, safe=""))
        for attempt in (1, 2):
            if not self._token:
                self.login()
            answer = self._send(method, path, json=json, token=self._token)
            if answer.status in (401, 403) and attempt == 1:
                self._token = ""
                continue
            if answer.status == 403:
                raise Forbidden(right, f"SciCat answered {method} {route} with {_said(answer)}")
            if answer.status not in ok:
                raise CatalogError(f"SciCat answered {method} {route} with {_said(answer)}")
            return answer
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, *, json: dict | None = None, token: str = "") -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return bounded_request(self.session, method, self.url + path, deadline=self.timeout,
                                   max_bytes=self.ANSWER_CAP, json=json, headers=headers)  # fmt: skip
        except HttpFailure as error:
            raise Unreachable(f"SciCat at {self.url} {error}") from None


class Unreachable(CatalogError):
    """SciCat gave no usable answer (down, too slow, a redirect, an answer too large): no use trying
    the other datasets of the queue now."""


class Forbidden(CatalogError):
    """SciCat refused the account a right (403, with a fresh token): `right` is which, "read" (a dataset,
    its origdatablocks), "create" (a dataset with the IOC's pid) or "add" (an origdatablock)."""

    def __init__(self, right: str, message: str):
        super().__init__(message)
        self.right = right


def _decoded(answer: Answer) -> object:
    try:
        return answer.json()
    except ValueError:
        return None


def _field(value: object, key: str) -> object:
    return value.get(key) if isinstance(value, dict) else None


def _unexpected(answer: Answer, call: str, what: str) -> CatalogError:
    """An answer that is not what was asked (`what`): the dataset stays queued, and Status shows its start."""
    shown = printable(answer.body[:80].decode("utf-8", "backslashreplace")) or "nothing"
    return CatalogError(f"SciCat answered {call} with HTTP {answer.status} but not {what}: {shown}")


def _said(answer: Answer) -> str:
    """HTTP status and SciCat's message, short (never the request: it may hold a token or a password).
    Only a small answer is parsed for its message: a large error body costs its bytes, not their objects.
    A dataset SciCat refuses comes with its validator's findings as JSON text: their sentences are shown."""
    found = _decoded(answer) if len(answer.body) <= 64 * 1024 else None
    message = _field(found, "message") if found is not None else answer.body[:200].decode("utf-8", "replace")
    if isinstance(message, str) and message.startswith("["):
        message = _findings(message) or message
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    return f"HTTP {answer.status}" + (f": {printable(str(message))[:300]}" if message else "")


def _findings(text: str) -> list[str]:
    """The sentences of class-validator's errors (as SciCat words a refused dataset), nested ones too."""
    try:
        errors = json.loads(text)
    except ValueError:
        return []
    found: list[str] = []
    pending = list(errors) if isinstance(errors, list) else []
    while pending:
        error = pending.pop(0)
        if isinstance(error, dict):
            constraints = error.get("constraints")
            found += [str(c) for c in constraints.values()] if isinstance(constraints, dict) else []
            pending += error.get("children") or []
    return found
