"""ApsScheduling against a real local HTTP server (127.0.0.1) serving the fixture replies."""

from __future__ import annotations

import base64
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from dmagic_ioc.adapters.aps_scheduling import ApsScheduling
from dmagic_ioc.ioc.domain.beamtime import Run
from dmagic_ioc.ioc.domain.errors import SchedulingError
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from ..helpers import wait_for

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "aps-scheduling"
SCHEDULE = "schedule-findByRunNameAndScheduleName-2026-3-2-BM-A,B.json"
ACTIVITY = "activity-findByRunNameAndBeamlineId-2026-3-2-BM-A,B.json"
API = "/beamline-scheduling/sched-api/"
CHICAGO = ZoneInfo("America/Chicago")
BEAMLINE = "2-BM-A,B"
USER = "2bmbsched"
PASSWORD = "Xy9-unlikely-Pa55word"
AUTHORIZATION = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
RUN = Run("2026-3", datetime(2026, 9, 29, 8, tzinfo=CHICAGO), datetime(2026, 12, 22, 8, tzinfo=CHICAGO))
SCHEDULE_ENDPOINT = "schedule/findByRunNameAndScheduleName/2026-3/2-BM-A,B"
ACTIVITY_ENDPOINT = "activity/findByRunNameAndBeamlineId/2026-3/2-BM-A,B"


@pytest.fixture(scope="module")
def server():
    """One threaded HTTP server on loopback for the module; handlers are cleared after each test."""
    http = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    http.start()
    yield http
    http.clear()
    if http.is_running():
        http.stop()


@pytest.fixture
def release():
    """Set at teardown so that a hanging handler returns at once and never holds the server."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def http(server, release):
    yield server
    release.set()
    server.clear()


@pytest.fixture
def credentials(tmp_path) -> Path:
    path = tmp_path / "scheduling_credentials"
    path.write_text(f"{USER}|{PASSWORD}\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def make_adapter(
    http: HTTPServer, credentials: Path | None, *, beamline: str = BEAMLINE, timeout: float = 2.0, **kwargs
):
    return ApsScheduling(
        url=http.url_for("/").rstrip("/"),
        beamline=beamline,
        credentials=credentials,
        timeout=timeout,
        tz=CHICAGO,
        **kwargs,
    )


def serve(
    http: HTTPServer,
    endpoint: str,
    body: bytes | str | None = None,
    *,
    fixture: str | None = None,
    status: int = 200,
    content_type: str = "application/json",
) -> None:
    """Answer GET `endpoint` with `body` (or a fixture file), only to the right Basic credentials."""
    if fixture is not None:
        body = (FIXTURES / fixture).read_bytes()

    def handler(request: Request) -> Response:
        if request.headers.get("Authorization") != AUTHORIZATION:
            return Response('{"message": "Unauthorized"}', status=401, content_type="application/json")
        return Response(body or b"", status=status, content_type=content_type)

    http.expect_request(API + endpoint, method="GET").respond_with_handler(handler)


def raw_uris(http: HTTPServer) -> list[str]:
    """The request targets exactly as sent (before the server decoded %2F)."""
    return [request.environ.get("RAW_URI") or request.environ["REQUEST_URI"] for request, _ in http.log]


def host(http: HTTPServer) -> str:
    return f"127.0.0.1:{http.port}"


# --------------------------------------------------------------------------
# Happy path


def test_runs_and_beamtimes_from_the_service(http, credentials):
    serve(http, "run/getAllRuns", fixture="run-getAllRuns.json")
    serve(http, SCHEDULE_ENDPOINT, fixture=SCHEDULE)
    serve(http, ACTIVITY_ENDPOINT, fixture=ACTIVITY)
    adapter = make_adapter(http, credentials)

    runs = adapter.runs()
    assert [run.name for run in runs] == ["2026-1", "2026-2", "2026-3", "2027-1"]
    beamtimes = adapter.beamtimes(runs[2])

    assert [b.gup for b in beamtimes] == ["1012039", "1013377", "1014002"]
    assert beamtimes[1].people[0].last_name == "Müller-Łukasiewicz"
    assert beamtimes[1].pi.last_name == "D'Arcy"
    assert raw_uris(http) == [API + "run/getAllRuns", API + SCHEDULE_ENDPOINT]  # the schedule endpoint is preferred
    assert all(request.headers["Authorization"] == AUTHORIZATION for request, _ in http.log)


def test_one_session_is_reused(http, credentials):
    serve(http, "run/getAllRuns", fixture="run-getAllRuns.json")
    session = requests.Session()
    seen = []
    session.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response.url))
    adapter = make_adapter(http, credentials, session=session)
    adapter.runs()
    adapter.runs()
    assert len(seen) == 2
    assert session.verify is True


def test_utf8_reply_survives_a_wrong_charset(http, credentials):
    serve(http, SCHEDULE_ENDPOINT, fixture=SCHEDULE, content_type="text/plain; charset=ISO-8859-1")
    beamtimes = make_adapter(http, credentials).beamtimes(RUN)
    assert beamtimes[1].people[0].first_name == "Zoë"
    assert beamtimes[1].people[2].last_name == "Øberg"


def test_credentials_are_read_lazily(http, tmp_path):
    missing = tmp_path / "not-yet"
    adapter = make_adapter(http, missing)  # constructing reads nothing
    serve(http, "run/getAllRuns", fixture="run-getAllRuns.json")
    with pytest.raises(SchedulingError, match="scheduling.credentials: cannot read"):
        adapter.runs()
    missing.write_text(f"{USER} {PASSWORD}\n", encoding="utf-8")  # the "user password" spelling
    missing.chmod(0o600)
    assert len(adapter.runs()) == 4


def test_no_credentials_file_configured(http):
    with pytest.raises(SchedulingError, match="scheduling.credentials: must be set"):
        make_adapter(http, None).runs()
    assert http.log == []


# --------------------------------------------------------------------------
# Fallback to the activity endpoint


@pytest.mark.parametrize(
    ("body", "status", "content_type"),
    [
        ("oops", 500, "text/plain"),
        ("", 404, "text/plain"),
        ('{"message": "no schedule named 2-BM-A,B"}', 200, "application/json"),
        ("[]", 200, "application/json"),
        ("<html><body>maintenance</body></html>", 200, "text/html"),
    ],
)
def test_falls_back_to_activity_endpoint(http, credentials, caplog, body, status, content_type):
    serve(http, SCHEDULE_ENDPOINT, body, status=status, content_type=content_type)
    serve(http, ACTIVITY_ENDPOINT, fixture=ACTIVITY)
    with caplog.at_level(logging.WARNING):
        beamtimes = make_adapter(http, credentials).beamtimes(RUN)
    assert [b.gup for b in beamtimes] == ["1012039", "1013377", "1014002"]
    assert raw_uris(http) == [API + SCHEDULE_ENDPOINT, API + ACTIVITY_ENDPOINT]
    assert "trying the activity endpoint" in caplog.text


def test_both_endpoints_failing_names_the_error_and_beamline(http, credentials):
    serve(http, SCHEDULE_ENDPOINT, "down", status=503, content_type="text/plain")
    serve(http, ACTIVITY_ENDPOINT, "down", status=503, content_type="text/plain")
    with pytest.raises(SchedulingError) as raised:
        make_adapter(http, credentials).beamtimes(RUN)
    assert str(raised.value) == f"scheduling service error HTTP 503 at {host(http)} (beamline 2-BM-A,B, run 2026-3)"


# --------------------------------------------------------------------------
# Failures, as they read on the Status PV


def test_401_names_the_credentials_file_not_the_password(http, credentials):
    serve(http, SCHEDULE_ENDPOINT, fixture=SCHEDULE)
    serve(http, ACTIVITY_ENDPOINT, fixture=ACTIVITY)
    credentials.write_text(f"{USER}|wrong-password\n", encoding="utf-8")
    adapter = make_adapter(http, credentials)
    with pytest.raises(SchedulingError) as raised:
        adapter.beamtimes(RUN)
    assert str(raised.value) == (
        f"scheduling service refused the credentials in {credentials} (HTTP 401) for beamline 2-BM-A,B"
    )
    assert "wrong-password" not in str(raised.value)
    assert raw_uris(http) == [API + SCHEDULE_ENDPOINT]  # the other endpoint would refuse them too

    credentials.write_text(f"{USER}|{PASSWORD}\n", encoding="utf-8")  # fixed: read again on the next try
    assert len(adapter.beamtimes(RUN)) == 3


def test_403(http, credentials):
    serve(http, "run/getAllRuns", '{"message": "Forbidden"}', status=403)
    with pytest.raises(SchedulingError) as raised:
        make_adapter(http, credentials).runs()
    assert str(raised.value) == (
        f"scheduling service refused the credentials in {credentials} (HTTP 403) for beamline 2-BM-A,B"
    )


def test_message_instead_of_a_list(http, credentials):
    serve(http, "run/getAllRuns", '{"message": "User 2bmbsched has no rights on 2-BM-A,B"}')
    serve(http, SCHEDULE_ENDPOINT, '{"message": "User 2bmbsched has no rights on 2-BM-A,B"}')
    serve(http, ACTIVITY_ENDPOINT, '{"message": "User 2bmbsched has no rights on 2-BM-A,B"}')
    adapter = make_adapter(http, credentials)
    with pytest.raises(SchedulingError) as raised:
        adapter.runs()
    assert str(raised.value) == (
        'scheduling service answered "User 2bmbsched has no rights on 2-BM-A,B" instead of a list of runs'
    )
    with pytest.raises(SchedulingError) as raised:
        adapter.beamtimes(RUN)
    assert "has no rights on 2-BM-A,B" in str(raised.value)
    assert "instead of a list of activities (beamline 2-BM-A,B, run 2026-3)" in str(raised.value)


def test_500(http, credentials):
    serve(http, "run/getAllRuns", "Internal Server Error", status=500, content_type="text/plain")
    with pytest.raises(SchedulingError) as raised:
        make_adapter(http, credentials).runs()
    assert str(raised.value) == f"scheduling service error HTTP 500 at {host(http)}"


def test_html_instead_of_json(http, credentials):
    serve(http, "run/getAllRuns", "<!DOCTYPE html><html><body>Log in</body></html>", content_type="text/html")
    with pytest.raises(SchedulingError) as raised:
        make_adapter(http, credentials).runs()
    assert str(raised.value) == f"scheduling service sent text/html instead of JSON ({host(http)}, HTTP 200)"


def test_wrong_things_in_the_list(http, credentials):
    serve(http, "run/getAllRuns", '[{"runName": "2026-3"}]')
    with pytest.raises(SchedulingError, match="run 2026-3 startTime is missing"):
        make_adapter(http, credentials).runs()


def test_hang_past_the_timeout(http, credentials, release):
    def hang(request: Request) -> Response:
        release.wait(10)  # released at teardown: the server never waits for long
        return Response("[]", content_type="application/json")

    http.expect_request(API + "run/getAllRuns").respond_with_handler(hang)
    http.expect_request(API + SCHEDULE_ENDPOINT).respond_with_handler(hang)
    adapter = make_adapter(http, credentials, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(SchedulingError) as raised:
        adapter.runs()
    assert time.monotonic() - started < 3
    assert str(raised.value) == f"scheduling service did not answer within 0.5 s ({host(http)})"

    started = time.monotonic()
    with pytest.raises(SchedulingError, match="did not answer within 0.5 s"):
        adapter.beamtimes(RUN)  # no fallback: a slow service would only double the wait
    assert time.monotonic() - started < 3

    release.set()  # let both handlers finish now, so that their log lines land in this test
    wait_for(lambda: len(http.log) == 2, timeout=5.0, interval=0.01, what="both requests logged")


def test_a_redirect_is_refused_even_to_the_same_host(http, credentials):
    """requests would follow it with the Basic header (same host); the call carries a password: refused."""
    moved = Response(status=302, headers={"Location": http.url_for("/elsewhere")})
    http.expect_request(API + "run/getAllRuns").respond_with_response(moved)
    http.expect_request("/elsewhere").respond_with_json([])
    with pytest.raises(SchedulingError) as raised:
        make_adapter(http, credentials).runs()
    assert str(raised.value) == (
        f"scheduling service answered HTTP 302 (a redirect to {host(http)}): redirects are not followed ({host(http)})"
    )
    assert raw_uris(http) == [API + "run/getAllRuns"]


def test_connection_refused(credentials):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = ApsScheduling(f"http://127.0.0.1:{port}", BEAMLINE, credentials, 1.0, CHICAGO)
    with pytest.raises(SchedulingError) as raised:
        adapter.runs()
    assert str(raised.value) == f"cannot reach the scheduling service at 127.0.0.1:{port}: connection refused"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_unreadable_credentials_file(http, credentials):
    credentials.chmod(0o200)
    with pytest.raises(SchedulingError, match="is not readable by this user"):
        make_adapter(http, credentials).runs()


def test_group_readable_credentials_are_refused_before_any_request(http, credentials):
    serve(http, "run/getAllRuns", fixture="run-getAllRuns.json")
    credentials.chmod(0o644)
    with pytest.raises(SchedulingError) as raised:
        make_adapter(http, credentials).runs()
    assert str(raised.value) == (
        f"scheduling.credentials: {credentials} is readable by group or others (mode 0644); "
        f"run: chmod 600 {credentials}"
    )
    assert http.log == []


def test_password_never_in_messages_repr_or_logs(http, credentials, caplog):
    serve(http, "run/getAllRuns", fixture="run-getAllRuns.json")
    serve(http, SCHEDULE_ENDPOINT, "err", status=500, content_type="text/plain")
    serve(http, ACTIVITY_ENDPOINT, "<html></html>", content_type="text/html")
    adapter = make_adapter(http, credentials)
    messages = [repr(adapter)]
    with caplog.at_level(logging.DEBUG):
        adapter.runs()
        with pytest.raises(SchedulingError) as raised:
            adapter.beamtimes(RUN)
        messages.append(str(raised.value))
        credentials.write_text(f"{USER}|{PASSWORD}-old\n", encoding="utf-8")
        with pytest.raises(SchedulingError) as raised:
            make_adapter(http, credentials).runs()
        messages.append(str(raised.value))
        credentials.chmod(0o640)
        with pytest.raises(SchedulingError) as raised:
            make_adapter(http, credentials).runs()
        messages.append(str(raised.value))
    secrets = (PASSWORD, AUTHORIZATION.split()[1])
    for text in [*messages, caplog.text]:
        assert not any(secret in text for secret in secrets), text
    assert any("GET" in record.getMessage() for record in caplog.records)  # the logs did run


# --------------------------------------------------------------------------
# Beamline ids in the URL path


def test_comma_stays_in_the_path(http, credentials):
    serve(http, SCHEDULE_ENDPOINT, fixture=SCHEDULE)
    make_adapter(http, credentials).beamtimes(RUN)
    assert raw_uris(http) == [API + "schedule/findByRunNameAndScheduleName/2026-3/2-BM-A,B"]


def test_slash_and_space_are_percent_encoded(http, credentials):
    serve(http, "schedule/findByRunNameAndScheduleName/2026-3/32-ID B/C", "[]")
    serve(http, "activity/findByRunNameAndBeamlineId/2026-3/32-ID B/C", "[]")
    assert make_adapter(http, credentials, beamline="32-ID B/C").beamtimes(RUN) == []
    assert raw_uris(http) == [
        API + "schedule/findByRunNameAndScheduleName/2026-3/32-ID%20B%2FC",
        API + "activity/findByRunNameAndBeamlineId/2026-3/32-ID%20B%2FC",
    ]
