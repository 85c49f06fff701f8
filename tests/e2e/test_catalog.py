"""The catalogue through the installed IOC: metadata snapshots from a second IOC (EPICS base) and the
acquisition's record next to its data (SPEC section 10)."""

from __future__ import annotations

import json
import uuid

import pytest

from ..helpers import TEST_DATA, wait_for
from .epics_base import SoftIOC
from .fixtures import IN_SECOND
from .harness import IOC

pytestmark = pytest.mark.e2e

NAME = "2026-11-DArcy-1013377"


@pytest.fixture
def beamline_prefix(tmp_path):
    prefix = f"bl{uuid.uuid4().hex[:8]}:"
    with SoftIOC([TEST_DATA / "beamline_metadata.db"], {"P": prefix}, ready_pv=f"{prefix}Energy",
                 log_path=tmp_path / "beamline.log"):  # fmt: skip
        yield prefix


def test_daq_start_files_daq_stop_write_the_record_with_both_snapshots(config, tmp_path, beamline_prefix):
    p = beamline_prefix
    config["metadata"] = {"pvs": {"energy": f"{p}Energy", "sample_x": f"{p}SampleX", "gone": f"{p}Absent"}}
    with IOC(config, tmp_path) as ioc:
        assert ioc.get("Catalog:Health") == "Disabled"  # scicat.enabled: false
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        assert ioc.command("Create")[1] == 0
        raw, storage = tmp_path / "data" / NAME, tmp_path / "storage" / "2026-11" / NAME
        raw.mkdir(parents=True, exist_ok=True)
        status, severity = ioc.command("DaqStart")
        assert severity == 1 and f"{p}Absent" in status, status  # MINOR: a PV that does not answer
        for i in range(3):
            (raw / f"proj_{i}.h5").write_bytes(b"x" * (1000 + i))
        wait_for(lambda: ioc.get("Daq:FilesDone") == 3, timeout=15, what="3 files")
        status, severity = ioc.command("DaqStop")
        assert f"dataset {NAME}-1.json: 3 files, 3003 bytes" in status and severity == 1, status

        record = json.loads((storage / "metadata" / f"{NAME}-1.json").read_text(encoding="utf-8"))
        assert record["proposal"]["gup"] == "1013377" and record["proposal"]["pi"]["name"] == "Jean-Luc D'Arcy"
        assert sorted(f["path"] for f in record["files"]) == [f"data/proj_{i}.h5" for i in range(3)]
        assert record["number_of_files"] == 3 and record["size"] == 3003
        for moment in ("start", "end"):
            pvs = record["snapshots"][moment]["pvs"]
            assert pvs["energy"]["value"] == 25.5 and pvs["energy"]["units"] == "keV"
            assert pvs["sample_x"]["severity"] == "MAJOR"
            assert pvs["gone"] == {"pv": f"{p}Absent", "missing": True, "why": "no answer within 2 s"}
        assert json.loads(ioc.get("Metadata:Last")) == record["snapshots"]

        status, severity = ioc.command("Catalog")  # nothing new since
        assert severity == 0 and "no dataset made" in status
