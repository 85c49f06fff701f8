"""Metadata snapshots read from EPICS base records (pythonSoftIOC), and the ledger's files sent since a mark."""

from __future__ import annotations

import uuid

import pytest
from dmagic_ioc.adapters.metadata import CaMetadata
from dmagic_ioc.adapters.transfer.ledger import Ledger

from ..e2e.epics_base import CAReader, SoftIOC
from ..helpers import TEST_DATA


@pytest.fixture(scope="module")
def beamline_ioc(tmp_path_factory):
    prefix = f"bl{uuid.uuid4().hex[:8]}:"
    log = tmp_path_factory.mktemp("metadata") / "beamline.log"
    with SoftIOC([TEST_DATA / "beamline_metadata.db"], {"P": prefix}, ready_pv=f"{prefix}Energy", log_path=log):
        yield prefix


@pytest.mark.e2e
def test_a_snapshot_has_value_units_severity_and_time_and_a_silent_pv_is_missing(beamline_ioc):
    p = beamline_ioc
    reader = CAReader()
    try:
        reader.pv(f"{p}Profile").write(list(range(100)), wait=True)
    finally:
        reader.close()
    pvs = {"energy": f"{p}Energy", "sample_x": f"{p}SampleX", "detector": f"{p}Detector",
           "profile": f"{p}Profile", "shutter": f"{p}Shutter", "gone": f"{p}NoSuchPV"}  # fmt: skip
    snapshot = CaMetadata(connect_timeout=1.0).read(pvs)
    assert {k: snapshot["energy"][k] for k in ("pv", "value", "units", "severity")} == {
        "pv": f"{p}Energy", "value": 25.5, "units": "keV", "severity": "NO"}  # fmt: skip
    assert snapshot["energy"]["timestamp"].startswith("20")
    assert snapshot["sample_x"]["severity"] == "MAJOR" and snapshot["sample_x"]["units"] == "mm"
    assert snapshot["detector"]["value"] == "Oryx 5.0 MP"
    assert snapshot["shutter"]["value"] == "Open"
    assert snapshot["profile"]["value"] == {"count": 100, "first": [0.0, 1.0, 2.0, 3.0], "min": 0.0, "max": 99.0,
                                            "mean": 49.5}  # fmt: skip
    assert snapshot["gone"]["missing"] is True and snapshot["gone"]["pv"] == f"{p}NoSuchPV"


def test_no_pvs_no_reads():
    assert CaMetadata().read({}) == {}


def test_the_ledger_lists_the_files_sent_into_a_storage_after_a_mark_buffered_ones_too(tmp_path):
    ledger = Ledger(tmp_path / "transfers.sqlite")
    ledger.add("/data/exp", "scan1/a.h5", 10, 1_000_000_000, "/gdata/2026-10/exp/data")
    ledger.add("/data/exp_rec", "r.tiff", 20, 2_000_000_000, "/gdata/2026-10/exp/analysis")
    ledger.add("/data/exp2", "b.h5", 30, 3_000_000_000, "/gdata/2026-10/exp2/data")  # another experiment
    files = list(ledger.sent_since(0.0, "/gdata/2026-10/exp"))  # the buffered rows committed first
    assert [(path, size, mtime, checksum) for path, size, mtime, _, checksum in files] == [
        ("/gdata/2026-10/exp/data/scan1/a.h5", 10, 1_000_000_000, ""),  # added with no checksum: none
        ("/gdata/2026-10/exp/analysis/r.tiff", 20, 2_000_000_000, ""),
    ]
    last = max(at for _, _, _, at, _ in files)
    assert list(ledger.sent_since(last, "/gdata/2026-10/exp")) == []
    ledger.close()
