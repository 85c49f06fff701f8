"""The two devices have one shape, on the contract's PVs; the package is a client, apart from the IOC.

No IOC here: the ophyd-async device is built on mock signals, the classic one read from its class.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("ophyd_async.epics.core", reason="the bluesky extra is not installed: pip install '.[bluesky]'")
pytest.importorskip("ophyd", reason="the bluesky extra is not installed: pip install '.[bluesky]'")

from bluesky.run_engine import call_in_bluesky_event_loop
from dmagic_ioc.bluesky import Command, DataManagement, metadata
from dmagic_ioc.bluesky import classic as classic_device
from dmagic_ioc.bluesky.classic import utf8_text
from ophyd import Kind
from ophyd_async.core import SignalR, init_devices

from ..helpers import contract_pvs

PREFIX = "shape:DM:"


def async_shape(RE) -> tuple[dict[str, str], set[str], set[str]]:
    """PV of each attribute, and the attributes read per run (configuration) and at every event."""
    with init_devices(mock=True):
        dm = DataManagement(PREFIX)
    pvs = {}
    for name, child in dm.children():
        signal = child.busy if isinstance(child, Command) else child
        assert isinstance(signal, SignalR)
        pvs[name] = signal.source.removeprefix(f"mock+ca://{PREFIX}").removeprefix(f"ca://{PREFIX}")
    configuration = call_in_bluesky_event_loop(dm.describe_configuration())
    reading = call_in_bluesky_event_loop(dm.describe())
    return pvs, {key.removeprefix("dm-") for key in configuration}, {key.removeprefix("dm-") for key in reading}


def classic_shape() -> tuple[dict[str, str], set[str], set[str]]:
    device = classic_device.DataManagement
    components = {name: getattr(device, name) for name in device.component_names}
    pvs = {name: component.suffix for name, component in components.items()}
    configuration = {name for name, component in components.items() if component.kind == Kind.config}
    reading = {name for name, component in components.items() if component.kind == Kind.normal}
    return pvs, configuration, reading


def test_both_devices_have_the_same_attributes_on_the_same_pvs(RE):
    async_pvs, async_configuration, async_reading = async_shape(RE)
    classic_pvs, classic_configuration, classic_reading = classic_shape()
    assert classic_pvs.pop("status_severity") == "Status.SEVR"  # how the classic one learns a command failed
    assert async_pvs == classic_pvs
    assert async_configuration == classic_configuration >= set(metadata.FIELDS)
    assert async_reading == classic_reading
    contract = {name for name, *_ in contract_pvs()}
    assert set(async_pvs.values()) <= contract


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
