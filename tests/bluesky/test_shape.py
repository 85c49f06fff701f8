"""The two devices have one shape and cover the IOC's own list of PVs both ways; the package is a client, apart
from the IOC.

No running IOC here: the ophyd-async device is built on mock signals, the classic one read from its class, and the
IOC's list comes from its PV declarations (`dmagic_ioc.ioc.tools.pvinfo`, the PVs `dmagic-ioc --print-pvs` names).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

pytest.importorskip("ophyd_async.epics.core", reason="the bluesky extra is not installed: pip install '.[bluesky]'")
pytest.importorskip("ophyd", reason="the bluesky extra is not installed: pip install '.[bluesky]'")

from bluesky.run_engine import call_in_bluesky_event_loop
from dmagic_ioc.bluesky import Command, DataManagement, metadata
from dmagic_ioc.bluesky import classic as classic_device
from dmagic_ioc.bluesky.classic import utf8_text
from dmagic_ioc.ioc.tools.pvinfo import PVInfo, ioc_pvs
from ophyd import EpicsSignal, Kind
from ophyd_async.core import SignalR, SignalW, init_devices

from ..helpers import contract_pvs

PREFIX = "shape:DM:"

# The IOC's list names its PVs, not the fields of their records (`Status.DESC`, `.SEVR`, `.RTYP`, ...), which say
# things about a PV (its description, alarm, record type) and are no value a plan reads or drives: the devices
# leave them out, but for these, each with why.
FIELDS_READ = {
    "Status.SEVR": "the classic device's commands: pyepics reports a failed put as success, the severity tells",
}


@dataclass
class Shape:
    """What a device is made of: the PV of each attribute, which ones it writes, and which ones runs read."""

    pvs: dict[str, str]
    writes: set[str]
    configuration: set[str]  # read once per run, into the descriptor
    reading: set[str]  # read at every event


def async_shape(RE) -> Shape:
    with init_devices(mock=True):
        dm = DataManagement(PREFIX)
    pvs, writes = {}, set()
    for name, child in dm.children():
        signal = child.busy if isinstance(child, Command) else child  # a Command writes the PV its busy reads
        assert isinstance(signal, SignalR)
        pvs[name] = signal.source.removeprefix(f"mock+ca://{PREFIX}").removeprefix(f"ca://{PREFIX}")
        if isinstance(child, Command | SignalW):
            writes.add(name)
    configuration = call_in_bluesky_event_loop(dm.describe_configuration())
    reading = call_in_bluesky_event_loop(dm.describe())
    return Shape(
        pvs,
        writes,
        {key.removeprefix("dm-") for key in configuration},
        {key.removeprefix("dm-") for key in reading},
    )


def classic_shape() -> Shape:
    device = classic_device.DataManagement
    components = {name: getattr(device, name) for name in device.component_names}
    return Shape(
        pvs={name: component.suffix for name, component in components.items()},
        writes={name for name, component in components.items() if issubclass(component.cls, EpicsSignal)},
        configuration={name for name, component in components.items() if component.kind == Kind.config},
        reading={name for name, component in components.items() if component.kind == Kind.normal},
    )


def served_pvs() -> dict[str, PVInfo]:
    """The IOC's own list of PVs (name, kind, access), by name after the prefix."""
    return {pv.name: pv for pv in ioc_pvs()}


def test_both_devices_have_the_same_attributes_on_the_same_pvs(RE):
    async_device, classic = async_shape(RE), classic_shape()
    assert classic.pvs.pop("status_severity") == "Status.SEVR"  # how the classic one learns a command failed
    assert async_device.pvs == classic.pvs
    assert async_device.writes == classic.writes
    assert async_device.configuration == classic.configuration >= set(metadata.FIELDS)
    assert async_device.reading == classic.reading
    contract = {name for name, *_ in contract_pvs()}
    assert set(async_device.pvs.values()) >= contract  # and the IOC's additions (the next tests)


@pytest.mark.parametrize("family", ["ophyd-async", "classic"])
def test_every_pv_of_the_ioc_has_a_signal(RE, family):
    shape = async_shape(RE) if family == "ophyd-async" else classic_shape()
    missing = sorted(set(served_pvs()) - set(shape.pvs.values()))
    assert not missing, f"the {family} device has no signal for {missing}: add one to both devices"
    assert len(set(shape.pvs.values())) == len(shape.pvs), "two signals name one PV"


@pytest.mark.parametrize("family", ["ophyd-async", "classic"])
def test_every_signal_names_a_pv_the_ioc_serves_and_writes_only_writable_ones(RE, family):
    shape = async_shape(RE) if family == "ophyd-async" else classic_shape()
    served = served_pvs()
    for name, pv in shape.pvs.items():
        if pv in FIELDS_READ:
            record, _ = pv.split(".")
            assert record in served and name not in shape.writes, (name, pv)  # a record field: read, never written
        else:
            assert pv in served, f"{family} {name}: the IOC serves no {pv}"
            writes, access = name in shape.writes, served[pv].access
            assert writes == (access == "RW"), f"{family} {name}: writes={writes}, {pv} is {access}"


def test_runs_read_the_proposal_once_and_status_health_and_progress_at_every_event(RE):
    shape = async_shape(RE)
    attribute = {pv: name for name, pv in shape.pvs.items()}
    served = served_pvs().values()
    status = [pv.name for pv in served if pv.access == "RO" and pv.name.startswith(("Status", "Daq", "Catalog:"))]
    health = [pv.name for pv in served if pv.name.endswith(":Health")]
    assert {attribute[name] for name in status + health} == shape.reading
    assert {"proposal_type", "experiment_name", "data_directory", "storage_directory"} <= shape.configuration
    assert not shape.configuration & shape.reading
    # What a plan writes (commands, their arguments, settings) no run reads.
    assert {attribute[pv.name] for pv in served if pv.kind == "command"} <= shape.writes
    assert {"delete", "create_manual", "catalog", "delete_confirm", "manual_gup", "email_mode"} <= shape.writes
    assert not shape.writes & (shape.configuration | shape.reading)


def test_utf8_text_from_what_pyepics_gives():
    encoded = list("Zoë Łukasiewicz".encode())
    assert utf8_text([*encoded, 0, 65]) == "Zoë Łukasiewicz"  # up to the first NUL
    assert utf8_text([b - 256 if b > 127 else b for b in encoded]) == "Zoë Łukasiewicz"  # signed chars
    assert utf8_text(65) == "A" and utf8_text(None) == "" and utf8_text("as is") == "as is"


def test_the_package_imports_nothing_of_the_ioc():
    probe = (
        "import sys, dmagic_ioc.bluesky, dmagic_ioc.bluesky.classic, dmagic_ioc.bluesky.plans\n"
        "print(sorted(m for m in sys.modules if m.startswith(('dmagic_ioc.ioc', 'dmagic_ioc.adapters', 'caproto'))))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
