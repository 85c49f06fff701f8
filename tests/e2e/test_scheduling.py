"""The APS scheduling service (a real local HTTP server serving the fixture replies) and Tag into tomoScan."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from caproto import ErrorResponseReceived
from caproto.sync.client import write as caproto_write
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from ..helpers import APS_FIXTURES, REPO, wait_for
from ..loopback import EPICS_PORTS, epics_env
from .fixtures import BETWEEN, offset_to
from .harness import IOC

pytestmark = pytest.mark.e2e

MINOR, MAJOR = 1, 2
USER, PASSWORD = "2bmbsched", "Sch3d-n0t-on-any-PV"
API = "/beamline-scheduling/sched-api/"
REPLIES = {
    "run/getAllRuns": "run-getAllRuns.json",
    "schedule/findByRunNameAndScheduleName/2026-3/2-BM-A,B": (
        "schedule-findByRunNameAndScheduleName-2026-3-2-BM-A,B.json"
    ),
    "activity/findByRunNameAndBeamlineId/2026-3/2-BM-A,B": "activity-findByRunNameAndBeamlineId-2026-3-2-BM-A,B.json",
}
TEXT_PVS = ["Status", "LastError", "ProposalTitle", "UserName", "UserLastName", "UserEmail", "UserInstitution",
            "Users:Names", "Users:Emails", "ProposalType", "ESAFDOINumber"]  # fmt: skip


class Service:
    """The scheduling service stand-in: fixture replies behind Basic auth, switchable to failures."""

    def __init__(self, server: HTTPServer):
        self.server = server
        self.mode = "ok"  # ok | 401 | 500 | html | message | hang
        self.release = threading.Event()
        server.expect_request(re.compile(".*")).respond_with_handler(self.handle)

    def handle(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected or self.mode == "401":
            return Response("Unauthorized", status=401)
        if self.mode == "500":
            return Response("Internal Server Error", status=500)
        if self.mode == "html":
            return Response("<html><body>Maintenance</body></html>", content_type="text/html")
        if self.mode == "message":
            return Response(json.dumps({"message": "no access to beamline"}), content_type="application/json")
        if self.mode == "hang":
            self.release.wait(10)
        endpoint = request.path.removeprefix(API)
        if endpoint not in REPLIES:
            return Response("Not found", status=404)
        body = (APS_FIXTURES / REPLIES[endpoint]).read_bytes()
        return Response(body, content_type="application/json")


@pytest.fixture
def service():
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    stand_in = Service(server)
    yield stand_in
    stand_in.release.set()
    server.clear()
    server.stop()


@pytest.fixture
def aps_config(config, tmp_path, service):
    credentials = tmp_path / "scheduling_credentials"
    credentials.write_text(f"{USER}|{PASSWORD}\n")
    credentials.chmod(0o600)
    config["scheduling"] = {
        "backend": "aps",
        "url": f"http://127.0.0.1:{service.server.port}",
        "credentials": str(credentials),
        "timeout": 2,
        "refresh_period": 0,
    }
    return config


@pytest.fixture
def aps_ioc(aps_config, tmp_path):
    with IOC(aps_config, tmp_path) as running:
        yield running


def refresh_at(ioc: IOC, offset: float) -> tuple[str, int, float]:
    ioc.put("TimeOffsetDays", offset)
    started = time.perf_counter()
    status, severity = ioc.command("Refresh")
    return status, severity, time.perf_counter() - started


def test_each_fixture_beamtime_through_the_service(aps_ioc):
    status, severity, seconds = refresh_at(aps_ioc, offset_to("2026-10-15T12:00:00-05:00"))
    print(f"Refresh against the local scheduling service: {seconds * 1000:.0f} ms")
    assert severity == MINOR and status.startswith("proposal 1012039 (Li), run 2026-3; TimeOffsetDays is "), status
    assert aps_ioc.get("ProposalNumber") == "1012039" and aps_ioc.get("Run") == "2026-3"
    assert aps_ioc.get("ProposalTitle") == (
        "Operando X-ray tomography of lithium dendrite growth in solid-state batteries under fast charging"
    )
    assert aps_ioc.get("UserLastName") == "Li"  # flagged PI, first listed
    assert aps_ioc.get("ESAFNumber") == "281001"
    assert aps_ioc.get("Users:Emails") == "mei.li@example.edu,t.novak@example.org,"  # null e-mail -> empty
    assert aps_ioc.get("Scheduling:Health") == "OK"

    refresh_at(aps_ioc, offset_to("2026-11-20T12:00:00-06:00"))
    assert aps_ioc.get("ProposalNumber") == "1013377"
    assert aps_ioc.get("UserLastName") == "D'Arcy"  # flagged PI, listed second
    assert aps_ioc.get("Users:Names") == "Jean-Luc D'Arcy,Zoë Müller-Łukasiewicz,Sven Øberg"
    assert aps_ioc.get("Users:Badges") == "310011,310010,310012"
    assert aps_ioc.get("MailIn") == "Yes"
    assert aps_ioc.get("ProposalStart") == "2026-11-18T08:00:00-06:00"

    refresh_at(aps_ioc, offset_to("2026-12-02T12:00:00-06:00"))
    assert aps_ioc.get("ProposalNumber") == "1014002"
    first = aps_ioc.get("Users:Names").split(",")[0]
    assert f"{aps_ioc.get('UserName')} {aps_ioc.get('UserLastName')}" == first  # no flag: the first
    assert aps_ioc.get("ESAFNumber") == ""

    status, severity, _ = refresh_at(aps_ioc, BETWEEN)
    assert aps_ioc.get("ProposalActive") == "No" and aps_ioc.severity("ProposalActive") == MINOR
    assert severity == MINOR


@pytest.mark.parametrize("mode, words", [("401", "credentials"), ("500", "500"), ("html", "JSON"),
                                         ("message", "no access to beamline")])  # fmt: skip
def test_failures_keep_the_last_proposal_and_recover(aps_ioc, service, mode, words):
    refresh_at(aps_ioc, offset_to("2026-11-20T12:00:00-06:00"))
    assert aps_ioc.get("ProposalNumber") == "1013377"
    service.mode = mode
    with pytest.raises(ErrorResponseReceived):
        caproto_write(aps_ioc.prefix + "Refresh", [1], notify=True, timeout=15, repeater=False)
    status = aps_ioc.get("Status")
    assert words.lower() in status.lower(), status
    assert aps_ioc.severity("Status") == MAJOR
    wait_for(lambda: aps_ioc.get("Scheduling:Health") == "Error", what="Scheduling:Health Error")
    assert aps_ioc.severity("Scheduling:Health") == MAJOR
    assert aps_ioc.get("ProposalNumber") == "1013377" and aps_ioc.get("UserLastName") == "D'Arcy"
    if mode == "401":
        assert "2-BM-A,B" in status and PASSWORD not in status
    service.mode = "ok"
    status, severity = aps_ioc.command("Refresh")
    assert status.startswith("proposal 1013377 (D'Arcy), run 2026-3; TimeOffsetDays is "), status  # MINOR: the offset
    wait_for(lambda: aps_ioc.get("Scheduling:Health") == "OK", what="Scheduling:Health OK")


def test_a_hanging_service_never_blocks_the_ioc(aps_ioc, service):
    service.mode = "hang"
    aps_ioc.put("Refresh", 1, wait=False)
    wait_for(lambda: aps_ioc.get("Busy") == "Busy", what="Refresh to start")
    with pytest.raises(ErrorResponseReceived):
        caproto_write(aps_ioc.prefix + "Create", [1], notify=True, timeout=5, repeater=False)
    assert "Refresh is running" in aps_ioc.get("Status")
    latencies, beats = [], []
    while aps_ioc.get("Busy") == "Busy":
        started = time.perf_counter()
        beats.append(aps_ioc.get("Heartbeat"))
        aps_ioc.get("ProposalTitle")
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
    worst = max(latencies)
    print(f"worst latency of 2 gets while the service hung: {worst * 1000:.1f} ms over {len(latencies)} samples")
    assert worst < 0.5
    assert beats[-1] >= beats[0] + 1  # the heartbeat kept ticking
    status = aps_ioc.get("Status")
    assert "did not answer within 2" in status, status
    assert aps_ioc.get("Scheduling:Health") == "Error"


def test_no_password_on_any_pv_or_in_the_log(aps_ioc, service):
    refresh_at(aps_ioc, offset_to("2026-11-20T12:00:00-06:00"))
    service.mode = "401"
    aps_ioc.put("Refresh", 1, wait=True)
    for name in TEXT_PVS:
        assert PASSWORD not in aps_ioc.get(name), name
    aps_ioc.stop()
    assert PASSWORD not in aps_ioc.log()
    assert PASSWORD not in (aps_ioc.tmp / "state" / "logs" / "dmagic-ioc.log").read_text()


def test_group_readable_credentials_are_refused_at_check(aps_config, tmp_path):
    from .harness import DMAGIC_IOC

    os.chmod(aps_config["scheduling"]["credentials"], 0o644)
    import yaml

    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(aps_config))
    result = subprocess.run([DMAGIC_IOC, "--config", str(path), "--check"], capture_output=True, text=True)
    assert result.returncode != 0 and "chmod 600" in result.stderr


# ------------------------------------------------------------------ Tag into a tomoScan look-alike


@pytest.fixture
def tomoscan():
    """The tomoScan user-info records (tests/adapters/test_tag.py run as an IOC) on the second port."""
    prefix = f"ts{uuid.uuid4().hex[:6]}:TomoScan:"
    script = REPO / "tests" / "adapters" / "test_tag.py"
    env = {**os.environ, **epics_env(EPICS_PORTS[1])}
    process = subprocess.Popen([sys.executable, str(script), "--prefix", prefix], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    import epics

    try:
        wait_for(lambda: epics.PV(prefix + "UserName", auto_monitor=False).wait_for_connection(0.5), timeout=20,
                 what="the tomoScan look-alike")  # fmt: skip
        yield prefix
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


def test_tag_writes_user_info_into_tomoscan(aps_ioc, tomoscan):
    import epics

    refresh_at(aps_ioc, offset_to("2026-10-15T12:00:00-05:00"))
    aps_ioc.put("TagPrefix", tomoscan)
    status, severity = aps_ioc.command("Tag")
    assert severity == 0, status

    def target(name):
        pv = epics.PV(tomoscan + name, auto_monitor=False)
        pv.wait_for_connection(5)
        value = pv.get(use_monitor=False, as_string=False, as_numpy=False)
        if pv.type.endswith("char"):
            return bytes(bytearray(value)).split(b"\0")[0].decode("utf-8")
        return value

    assert target("UserLastName") == "Li"
    assert target("ProposalNumber") == "1012039"
    assert target("UserInstitution") == "Example State University"
    assert target("ProposalTitle").startswith("Operando X-ray tomography")
    assert target("ESAFNumber") == "281001"

    refresh_at(aps_ioc, offset_to("2026-11-20T12:00:00-06:00"))
    status, severity = aps_ioc.command("Tag")
    assert target("UserLastName") == "D'Arcy"
    assert severity in (0, MINOR), status

    aps_ioc.put("TagPrefix", "nobody:TomoScan:")
    status, severity = aps_ioc.command("Tag")
    assert severity == MAJOR and "nobody:TomoScan:" in status
