"""The generated db_templates/dmagic.db loaded into EPICS base (pythonSoftIOC), against the live IOC.

The database must load with the prefix macro P set, and each of its records
must look over Channel Access as the installed dmagic-ioc's PV of the same
name does: the same native type, element count, enum strings, precision and
record type (`.RTYP`); and the two must hold the same names.
"""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
from caproto import ChannelType, field_types

from ..helpers import REPO
from .epics_base import CAReader, SoftIOC
from .harness import DMAGIC_IOC, IOC

pytestmark = pytest.mark.e2e

DB_FILE = REPO / "db_templates" / "dmagic.db"
RECORD_NAME = re.compile(r'^record\(\w+, "\$\(P\)([^"]+)"\)', re.M)


def looks(reader: CAReader, name: str) -> dict:
    """What a CA client sees of PV `name`: native type and count, and the control metadata that types carry."""
    pv = reader.pv(name)
    native = ChannelType(pv.channel.native_data_type)
    metadata = pv.read(data_type=field_types["control"][native]).metadata
    seen = {"type": native.name, "count": pv.channel.native_data_count}
    if native == ChannelType.ENUM:
        seen["enum_strings"] = [bytes(state).decode() for state in metadata.enum_strings]
    if native == ChannelType.DOUBLE:
        seen["precision"] = metadata.precision
    if native in (ChannelType.DOUBLE, ChannelType.LONG):
        seen["units"] = bytes(metadata.units).decode()
        seen["limits"] = (metadata.lower_ctrl_limit, metadata.upper_ctrl_limit)
    seen["RTYP"] = pv_text(reader, name + ".RTYP")
    seen["DESC"] = pv_text(reader, name + ".DESC")
    return seen


def pv_text(reader: CAReader, name: str) -> str:
    return bytes(reader.pv(name).read(data_type=ChannelType.STRING).data[0]).decode()


def test_generated_db_loads_into_epics_base_and_matches_the_live_ioc(config, tmp_path):
    db_names = RECORD_NAME.findall(DB_FILE.read_text(encoding="utf-8"))
    base_prefix = f"db{uuid.uuid4().hex[:8]}:"
    epics_base = SoftIOC([DB_FILE], {"P": base_prefix}, base_prefix + "Heartbeat", tmp_path / "epics-base.log")
    reader = CAReader()
    try:
        with epics_base, IOC(config, tmp_path) as ioc:
            load_log = epics_base.log()
            assert "iocRun: All initialization complete" in load_log
            assert not re.search(r"error|warning|illegal|too long", load_log, re.I), load_log

            printed = subprocess.run(
                [DMAGIC_IOC, "--config", str(ioc.config_path), "--prefix", ioc.prefix, "--print-pvs"],
                capture_output=True, text=True, check=True, env=ioc.env,
            ).stdout.split()  # fmt: skip
            assert sorted(db_names) == sorted(name.removeprefix(ioc.prefix) for name in printed)

            differences = {}
            for name in db_names:
                in_base, live = looks(reader, base_prefix + name), looks(reader, ioc.prefix + name)
                if in_base != live:
                    differences[name] = {"EPICS base": in_base, "dmagic-ioc": live}
            assert not differences, differences
            assert len(db_names) > 70
    finally:
        reader.close()
