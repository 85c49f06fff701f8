"""One description per PV, from the declarations: what the EPICS database and the docs/pvs.md table render.

The declarations (`epics/declarations.py`) are the single source; `dbgen` and `pvtable`
only format the descriptions made here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caproto import ChannelType

from ..epics.declarations import COMMAND_STATES, PV, every_pv

log = logging.getLogger(__name__)

# The macro that stands for the prefix in db_templates/ and opi/.
PREFIX_MACRO = "$(P)"

_KINDS = {
    ChannelType.STRING: "string",
    ChannelType.CHAR: "text",
    ChannelType.LONG: "long",
    ChannelType.DOUBLE: "double",
}


@dataclass(frozen=True)
class PVInfo:
    """What a client sees of one PV: its name after the prefix, its kind, record type, size, states and access."""

    name: str
    kind: str  # string | text (char waveform) | enum | command | long | double
    record: str  # EPICS record type of the same PV
    access: str  # "RO" or "RW"
    doc: str
    length: int = 1  # char waveform: bytes it holds (NELM)
    states: tuple[str, ...] = ()  # enum and command states, in order
    precision: int | None = None  # double: digits shown
    units: str = ""  # numbers: engineering units (EGU)
    limits: tuple[float, float] | None = None  # writable numbers: the range a write must fall in

    @property
    def writable(self) -> bool:
        return self.access == "RW"

    @property
    def type_label(self) -> str:
        """The type as docs/interface.md section 4 writes it: `wf 512`, `bi Idle/Busy`, `string`, `double`."""
        if self.kind == "text":
            return f"wf {self.length}"
        if self.states:
            return f"{self.record} {'/'.join(self.states)}"
        return self.kind


def info(pv: PV) -> PVInfo:
    """What a client sees of declared PV `pv`."""
    numeric = pv.kind in ("long", "double")
    return PVInfo(
        name=pv.name,
        kind=pv.kind,
        record=pv.record,
        access="RW" if pv.rw else "RO",
        doc=" ".join(pv.doc.split()),
        length=pv.length if pv.kind == "text" else 1,
        states=pv.states,
        precision=pv.precision if pv.kind == "double" else None,
        units=pv.units,
        limits=pv.limits if pv.rw and numeric and pv.limits[0] != pv.limits[1] else None,
    )


def ioc_pvs() -> list[PVInfo]:
    """Every PV the IOC serves, from its declarations, in the order it serves them."""
    return [info(pv) for pv in every_pv()]


def served(pvdb: Mapping[str, Any], prefix: str) -> list[PVInfo]:
    """What a client sees of the channels caproto serves (`pvdb`: full name -> channel): to check that
    the server serves the declarations as they are."""
    described = []
    for full_name, channel in pvdb.items():
        if not full_name.startswith(prefix):
            raise ValueError(f"{full_name} does not start with the prefix {prefix!r}")
        name = full_name[len(prefix) :]
        kind = _KINDS.get(channel.data_type, "enum")
        if kind == "enum" and tuple(channel.enum_strings) == COMMAND_STATES:
            kind = "command"
        writable = not channel.pvspec.read_only
        low, high = getattr(channel, "lower_ctrl_limit", 0), getattr(channel, "upper_ctrl_limit", 0)
        described.append(PVInfo(
            name=name,
            kind=kind,
            record=channel.pvspec.record,
            access="RW" if writable else "RO",
            doc=" ".join((channel.pvspec.doc or "").split()),
            length=channel.max_length if kind == "text" else 1,
            states=tuple(channel.enum_strings) if kind in ("enum", "command") else (),
            precision=channel.precision if kind == "double" else None,
            units=getattr(channel, "units", "") or "",
            limits=(low, high) if writable and kind in ("long", "double") and low != high else None,
        ))  # fmt: skip
    return described
