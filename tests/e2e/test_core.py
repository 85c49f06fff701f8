"""The IOC core over Channel Access: the contract's PVs, commands, refresh, access, autosave."""

from __future__ import annotations

import getpass
import json
import time
import uuid

import epics
import pytest
import yaml
from caproto import ErrorResponseReceived
from caproto.sync.client import write as caproto_write

from ..helpers import CA_TIMEOUT, contract_pvs, free_port, wait_for
from .fixtures import BETWEEN, IN_FIRST, IN_SECOND, IN_THIRD
from .harness import DMAGIC_IOC, IOC

pytestmark = pytest.mark.e2e

MINOR, MAJOR = 1, 2
CONTRACT = [(name, kind) for name, kind, *_ in contract_pvs()]
KIND_TYPES = {
    "char waveform": "char",
    "string": "string",
    "enum": "enum",
    "command": "enum",
    "long": "long",
    "double": "double",
}
WAVEFORM_LENGTHS = {"Status": 512, "LastError": 512, "ProposalTitle": 1024, "Users:Names": 8192,
                    "Experiments": 16384, "DataDirectory": 1024, "Badges": 1024, "UserName": 256}  # fmt: skip


def test_every_contract_pv_connects_with_its_type(ioc):
    for name, kind in CONTRACT:
        pv = ioc.pv(name)
        assert pv.type.split("_")[-1] == KIND_TYPES[kind], (name, pv.type, kind)
        if name in WAVEFORM_LENGTHS:
            assert pv.count == WAVEFORM_LENGTHS[name], (name, pv.count)
    assert ioc.pv("Busy").enum_strs == ("Idle", "Busy")
    assert ioc.pv("Create").enum_strs == ("Done", "Busy")
    assert ioc.pv("DM:Health").enum_strs == ("OK", "Error", "Disabled")
    assert ioc.pv("DaqState").enum_strs == ("Stopped", "Running", "Error")
    assert ioc.pv("EmailMode").enum_strs == ("New users", "All users")
    assert ioc.get("Version") not in ("", "unknown")
    assert ioc.get("Beamline") == "2-BM-A,B"
    assert ioc.get("Globus:Health") == "Disabled" and ioc.get("Email:Health") == "Disabled"


def test_read_only_pvs_refuse_writes_and_keep_their_value(ioc):
    attempts = {"Heartbeat": [7], "Status": "x", "ProposalNumber": "x", "ExperimentName": "x", "Daq:Percent": [9.0],
                "Busy": [1]}  # fmt: skip
    for name, value in attempts.items():
        pv = ioc.pv(name)
        assert not pv.write_access, name
        before = ioc.get(name)
        with pytest.raises(ErrorResponseReceived):  # the IOC refused it (a search that timed out would not do)
            caproto_write(ioc.prefix + name, value, notify=True, timeout=CA_TIMEOUT, repeater=False)
        if name != "Heartbeat":
            assert ioc.get(name) == before


def test_heartbeat_ticks_once_a_second(ioc):
    first = ioc.get("Heartbeat")
    started = time.monotonic()
    wait_for(lambda: ioc.get("Heartbeat") >= first + 3, timeout=10, what="3 heartbeats")
    assert 1.5 < time.monotonic() - started < 8  # a fixed schedule: a loaded machine delays a tick, never drops it


def test_startup_is_fast(ioc):
    print(f"startup to first answered PV: {ioc.startup_seconds:.2f} s")
    assert ioc.startup_seconds < 10  # target 3 s on an idle machine; the figure goes in the note


def test_refresh_publishes_each_beamtime_by_time_offset(ioc):
    ioc.put("TimeOffsetDays", IN_SECOND)
    status, severity = ioc.command("Refresh")
    assert severity == MINOR and "TimeOffsetDays is" in status, status  # an offset is never silent
    assert ioc.get("ProposalNumber") == "1013377"
    assert ioc.get("Run") == "2026-3"
    assert ioc.get("ProposalActive") == "Yes" and ioc.severity("ProposalActive") == 0
    # PI chosen by flag: the second person; non-ASCII letters intact; PI first in Users:*
    assert ioc.get("UserLastName") == "D'Arcy"
    assert ioc.get("UserName") == "Jean-Luc"
    assert ioc.get("Users:Names") == "Jean-Luc D'Arcy,Zoë Müller-Łukasiewicz,Sven Øberg"
    assert ioc.get("Users:Badges") == "310011,310010,310012"
    assert ioc.get("Users:Emails") == "jl.darcy@example.fr,zoe.mueller@example.de,sven.oberg@example.se"
    assert ioc.get("Users:Count") == 3
    assert ioc.get("MailIn") == "Yes" and ioc.get("Proprietary") == "No"
    assert ioc.get("ProposalStart") == "2026-11-18T08:00:00-06:00"
    assert ioc.get("ExperimentYearMonth") == "2026-11"
    assert ioc.get("UserInfoUpdate").startswith("20")

    ioc.put("TimeOffsetDays", IN_FIRST)
    ioc.command("Refresh")
    title = "Operando X-ray tomography of lithium dendrite growth in solid-state batteries under fast charging"
    assert ioc.get("ProposalTitle") == title  # full, never cut at 40
    assert ioc.get("ESAFNumber") == "281001" and ioc.get("ESAFDOINumber") == ""
    assert ioc.get("UserInstitution") == "Example State University"

    ioc.put("TimeOffsetDays", IN_THIRD)
    ioc.command("Refresh")
    assert ioc.get("UserLastName") == "Staff"  # no PI flag: the first person
    assert ioc.get("ProposalType") == "Staff"

    ioc.put("TimeOffsetDays", BETWEEN)
    status, severity = ioc.command("Refresh")
    assert ioc.get("ProposalActive") == "No" and ioc.severity("ProposalActive") == MINOR
    assert ioc.get("ProposalNumber") == "" and ioc.get("Users:Count") == 0
    assert severity == MINOR and "no beamtime" in status


def test_failed_command_fails_the_put_and_says_why(ioc):
    ioc.put("SelectName", "2026-01-Nobody-1")
    with pytest.raises(ErrorResponseReceived):
        caproto_write(ioc.prefix + "Select", [1], notify=True, timeout=CA_TIMEOUT, repeater=False)
    assert "no experiment named 2026-01-Nobody-1" in ioc.get("Status")
    assert ioc.severity("Status") == MAJOR
    assert ioc.get("LastError") == ioc.get("Status")
    assert ioc.get("LastCommand") == "Select"
    assert ioc.get("Select") == "Done" and ioc.get("Busy") == "Idle"
    # the next success clears the severity but LastError keeps the failure
    ioc.put("TimeOffsetDays", IN_SECOND)
    status, severity = ioc.command("Refresh")
    assert severity == MINOR and "1013377" in status, status  # MINOR: it says the offset
    assert "2026-01-Nobody-1" in ioc.get("LastError")


def test_bad_utf8_text_is_read_as_latin1_never_a_crash(ioc):
    ioc.pv("SelectName").put(list("Müller".encode("latin-1")) + [0], wait=True)
    assert ioc.get("SelectName") == "Müller"
    ioc.pv("Manual:Start").put("Mär".encode("latin-1"), wait=True)
    assert ioc.get("Manual:Start") == "Mär"
    ioc.put("Badges", "310011")
    assert ioc.get("Badges") == "310011"


def test_access_control_refuses_writes_from_unlisted_clients(config, tmp_path):
    config["ioc"]["access"] = {"write_hosts": ["some-other-host"], "write_users": ["someone-else"]}
    with IOC(config, tmp_path) as ioc:
        assert ioc.get("Heartbeat") >= 0  # reads work
        for name in ("TimeOffsetDays", "Refresh", "Badges"):
            assert not ioc.pv(name).write_access, name
        with pytest.raises(ErrorResponseReceived):
            caproto_write(ioc.prefix + "TimeOffsetDays", [5.0], notify=True, timeout=CA_TIMEOUT, repeater=False)
        assert ioc.get("TimeOffsetDays") == 0.0
    config["ioc"]["access"] = {"write_users": [getpass.getuser()]}
    with IOC(config, tmp_path) as ioc:
        assert ioc.pv("TimeOffsetDays").write_access
        ioc.put("TimeOffsetDays", 5.0)
        assert ioc.get("TimeOffsetDays") == 5.0


def test_settings_survive_a_restart(config, tmp_path):
    autosave = tmp_path / "state" / "autosave.json"
    with IOC(config, tmp_path) as ioc:
        ioc.put("TimeOffsetDays", 3.5)
        ioc.put("RefreshPeriod", 120.0)
        ioc.put("TagPrefix", "2bmb:TomoScan:")
        ioc.put("EmailMode", 1)
        ioc.put("Manual:LastName", "Müller")
        ioc.put("Manual:GUP", 42)
        wait_for(lambda: autosave.exists() and json.loads(autosave.read_text()).get("Manual:GUP") == 42,
                 what="autosave")  # fmt: skip
    with IOC(config, tmp_path) as ioc:
        assert ioc.get("TimeOffsetDays") == 3.5
        assert ioc.get("RefreshPeriod") == 120.0
        assert ioc.get("TagPrefix") == "2bmb:TomoScan:"
        assert ioc.get("EmailMode") == "All users"
        assert ioc.get("Manual:LastName") == "Müller"
        assert ioc.get("Manual:GUP") == 42
        assert ioc.get("Create") == "Done"  # commands are never autosaved


def test_tag_prefix_defaults_from_config(config, tmp_path):
    config["tag"] = {"prefix": "2bmb:TomoScan:"}
    config["scheduling"]["refresh_period"] = 30
    with IOC(config, tmp_path) as ioc:
        assert ioc.get("TagPrefix") == "2bmb:TomoScan:"
        assert ioc.get("RefreshPeriod") == 30.0


def test_check_and_print_pvs(config, tmp_path):
    import subprocess

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    ok = subprocess.run([DMAGIC_IOC, "--config", str(path), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    config["dm"]["bogus"] = 1
    config["scheduling"]["timeout"] = "soon"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    bad = subprocess.run([DMAGIC_IOC, "--config", str(path), "--check"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "dm.bogus: unknown key" in bad.stderr and "scheduling.timeout" in bad.stderr
    pvs = subprocess.run([DMAGIC_IOC, "--config", str(path.with_name("nope.yaml")), "--print-pvs"],
                         capture_output=True, text=True)  # fmt: skip
    assert pvs.returncode != 0
    config["dm"].pop("bogus")
    config["scheduling"]["timeout"] = 5
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    listed = subprocess.run([DMAGIC_IOC, "--config", str(path), "--print-pvs", "--prefix", "X:"],
                            capture_output=True, text=True).stdout.split()  # fmt: skip
    assert {f"X:{name}" for name, _ in CONTRACT} <= set(listed)


def test_demo_starts_without_config(tmp_path):
    env = {"DMAGIC_DEMO_DIR": str(tmp_path / "demo")}
    demo = IOC({}, tmp_path, extra_env=env)
    demo.config_path.unlink()
    import subprocess

    command = [DMAGIC_IOC, "--prefix", demo.prefix]
    demo.started = time.monotonic()
    with open(demo.log_path, "ab") as log:
        demo.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=demo.env)
    try:
        demo.wait_ready()
        wait_for(lambda: demo.get("ProposalNumber") == "1013377", what="the demo proposal")
        assert demo.get("UserLastName") == "D'Arcy"
        assert demo.get("ProposalActive") == "Yes"
    finally:
        demo.stop()
        for pv in demo._pvs.values():
            pv.disconnect()
    assert epics is not None


def test_an_upload_whose_metadata_pv_does_not_answer_still_warns_after_it_ends(config, tmp_path):
    absent = f"gone{uuid.uuid4().hex[:8]}:Energy"  # no IOC serves it
    config["metadata"] = {"pvs": {"energy": absent}}
    with IOC(config, tmp_path) as ioc:
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        assert ioc.command("Create")[1] == 0
        raw = tmp_path / "data" / "2026-11-DArcy-1013377"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "proj_0.h5").write_bytes(b"x" * 1000)
        status, severity = ioc.command("Upload")
        assert severity == MINOR and absent in status, status
        wait_for(lambda: ioc.get("DaqState") == "Stopped", timeout=15, what="the upload's end")
        status = wait_for(lambda: "dataset" in (s := ioc.get("Status")) and s, timeout=15,
                          what="the upload's dataset on Status")  # fmt: skip
        assert status.startswith("upload of 2026-11-DArcy-1013377 finished: 1 files"), status
        assert "dataset 2026-11-DArcy-1013377-1.json: 1 file" in status, status
        assert f"metadata: {absent} did not answer" in status and ioc.severity("Status") == MINOR, status
        beat = ioc.get("Heartbeat")
        wait_for(lambda: ioc.get("Heartbeat") >= beat + 2, what="two heartbeats (four polls of the transfer)")
        assert (ioc.get("Status"), ioc.severity("Status")) == (status, MINOR)  # nothing said it again, lower


def test_a_start_without_a_carepeater_logs_one_fitting_line_and_no_empty_ones(config, tmp_path):
    nobody = free_port()  # nothing listens there: no caRepeater on this host
    with IOC(config, tmp_path, extra_env={"EPICS_CAS_BEACON_PORT": str(nobody),
                                          "EPICS_CA_REPEATER_PORT": str(nobody)}) as ioc:  # fmt: skip
        (line,) = wait_for(lambda: [x for x in ioc.log().splitlines() if "beacon" in x], what="the beacon line")
        assert f"WARNING caproto.ctx: beacons: nothing listens on 127.0.0.1:{nobody} (no caRepeater running); " \
               "harmless for clients that search" in line  # fmt: skip
        wait_for(lambda: ioc.get("UserInfoUpdate"), what="the automatic refresh")
    log = ioc.log()
    assert "Try setting" not in log and "Traceback" not in log
    assert not [x for x in log.splitlines() if x.endswith(": ")], log  # no empty "automatic Refresh: "
