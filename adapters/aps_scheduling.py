"""The APS beamline scheduling REST service ("sched-api") as a `SchedulingSource`.

Blocking (requests): the IOC calls it off the event loop. Replies are read
by the pure `parse_*` functions of `aps_scheduling_replies`; the class adds
HTTP, Basic authentication and error messages a beamline scientist can act
on from the Status PV.
"""

from __future__ import annotations

import logging
import threading
from datetime import tzinfo
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests
from requests.auth import HTTPBasicAuth

from ..ioc.domain.beamtime import Beamtime, Run
from ..ioc.domain.errors import DMagicError, SchedulingError
from ..ioc.secrets import is_loopback, read_credentials
from .aps_scheduling_replies import clipped, parse_activities, parse_runs, parse_schedule
from .http import MB, HttpFailure, NotReached, bounded_request

log = logging.getLogger(__name__)

API_PATH = "beamline-scheduling/sched-api"
CREDENTIALS_KEY = "scheduling.credentials"
ANSWER_CAP = 16 * MB  # the largest answer read: a run's schedule is ~2 kB a beamtime (tests/data)


class _NoFallback(SchedulingError):
    """A failure the other endpoint would repeat (credentials, service unreachable)."""


class ApsScheduling:
    """The APS scheduling service for one beamline, through one reused requests.Session."""

    def __init__(
        self,
        url: str,
        beamline: str,
        credentials: Path | None,
        timeout: float,
        tz: tzinfo,
        session: requests.Session | None = None,
        *,
        allow_insecure: bool = False,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "?"
        if parts.port is not None:
            self._host = f"{self._host}:{parts.port}"
        if parts.username is not None or parts.password is not None:
            raise SchedulingError("scheduling.url: must not hold a user name or password; use scheduling.credentials")
        if parts.scheme != "https" and not allow_insecure and not is_loopback(parts.hostname or ""):
            raise SchedulingError(
                f"scheduling.url: plain {parts.scheme or 'no scheme'} to {self._host} would send the password in "
                "clear; use https://, or scheduling.allow_insecure: true"
            )
        self._base = f"{url.rstrip('/')}/{API_PATH}/"
        self._beamline = beamline
        self._credentials = Path(credentials) if credentials is not None else None
        self._timeout = timeout
        self._tz = tz
        self._session = session if session is not None else requests.Session()
        self._auth: HTTPBasicAuth | None = None
        self._auth_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ApsScheduling(host={self._host!r}, beamline={self._beamline!r}, credentials='{self._credentials}')"

    def runs(self) -> list[Run]:
        """Every run the service knows."""
        return parse_runs(self._get("run/getAllRuns"), self._tz)

    def beamtimes(self, run: Run) -> list[Beamtime]:
        """The beamtimes of this beamline in `run`.

        Asks the `schedule/...` endpoint, which also lists beamtimes where the
        beamline was not the proposal's first choice; falls back to the
        `activity/...` endpoint when that one fails with a reply of its own.
        """
        segments = f"{_segment(run.name)}/{_segment(self._beamline)}"
        try:
            return parse_schedule(self._get(f"schedule/findByRunNameAndScheduleName/{segments}"), self._tz)
        except _NoFallback:
            raise
        except SchedulingError as error:
            log.warning("schedule endpoint failed (%s); trying the activity endpoint", error)
        try:
            return parse_activities(self._get(f"activity/findByRunNameAndBeamlineId/{segments}"), self._tz)
        except SchedulingError as error:
            raise SchedulingError(f"{error} (beamline {self._beamline}, run {run.name})") from None

    def close(self) -> None:
        """Close the HTTP session's connections."""
        self._session.close()

    def _basic_auth(self) -> HTTPBasicAuth:
        """Read the credentials file on first use (and again after a refusal)."""
        with self._auth_lock:
            if self._auth is None:
                if self._credentials is None:
                    raise _NoFallback(f"{CREDENTIALS_KEY}: must be set to use the APS scheduling service")
                try:
                    user, password = read_credentials(CREDENTIALS_KEY, self._credentials)
                except DMagicError as error:
                    raise _NoFallback(str(error)) from None
                except (OSError, UnicodeError) as error:
                    raise _NoFallback(f"{CREDENTIALS_KEY}: cannot read {self._credentials}: {error}") from None
                self._auth = HTTPBasicAuth(user, password)
            return self._auth

    def _forget_credentials(self) -> None:
        with self._auth_lock:
            self._auth = None

    def _get(self, endpoint: str) -> object:
        """GET one endpoint and decode its JSON; every failure becomes a SchedulingError.

        Bounded (`http.bounded_request`): the timeout is for the whole call, the answer is capped at
        ANSWER_CAP, and a redirect is refused (the request carries the password)."""
        auth = self._basic_auth()
        log.debug("GET %s from %s", endpoint, self._host)
        try:
            answer = bounded_request(self._session, "GET", self._base + endpoint, auth=auth,
                                     headers={"Accept": "application/json"},
                                     deadline=self._timeout, max_bytes=ANSWER_CAP)  # fmt: skip
        except NotReached as error:
            raise _NoFallback(f"cannot reach the scheduling service at {self._host}: {error.reason}") from None
        except HttpFailure as error:  # too slow, a redirect, too large: the other endpoint would do the same
            raise _NoFallback(f"scheduling service {error} ({self._host})") from None
        status = answer.status
        if status in (401, 403):
            self._forget_credentials()  # re-read the file next time: it may have been fixed
            raise _NoFallback(
                f"scheduling service refused the credentials in {self._credentials} "
                f"(HTTP {status}) for beamline {self._beamline}"
            )
        if status >= 500:
            raise SchedulingError(f"scheduling service error HTTP {status} at {self._host}")
        if status >= 300:
            raise SchedulingError(f"scheduling service answered HTTP {status} for {endpoint} at {self._host}")
        try:
            return answer.json()
        except ValueError:
            content_type = answer.headers.get("Content-Type", "").split(";")[0].strip() or "a reply"
            raise SchedulingError(
                f"scheduling service sent {clipped(content_type)} instead of JSON ({self._host}, HTTP {status})"
            ) from None


def _segment(text: str) -> str:
    """Percent-encode one URL path segment: `/` and spaces are encoded; `,` (as in `2-BM-A,B`) stays."""
    return quote(text, safe=",")
