"""One description per PV, read from a `DMagicIOC`'s pvdb: what the EPICS database and the docs/pvs.md table render.

The IOC's pvproperty definitions are the single source; `dbgen` and `pvtable`
only format the descriptions made here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from caproto import ChannelType

from ..epics.pvs import is_command, record_type

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


def describe_channel(name: str, channel: Any) -> PVInfo:
    """Describe one pvdb channel; `name` is the PV name after the prefix."""
    if is_command(channel):
        kind = "command"
    elif channel.data_type == ChannelType.ENUM:
        kind = "enum"
    elif channel.data_type in _KINDS:
        kind = _KINDS[channel.data_type]
    else:
        raise ValueError(f"{name}: no record type for channel type {channel.data_type!r}")
    states = tuple(channel.enum_strings) if kind in ("enum", "command") else ()
    writable = not channel.pvspec.read_only
    return PVInfo(
        name=name,
        kind=kind,
        record=record_type(kind, states, writable, name),
        access="RW" if writable else "RO",
        doc=" ".join((channel.pvspec.doc or "").split()),
        length=channel.max_length if kind == "text" else 1,
        states=states,
        precision=channel.precision if kind == "double" else None,
        units=getattr(channel, "units", "") or "",
        limits=_limits(channel) if writable and kind in ("long", "double") else None,
    )


def _limits(channel: Any) -> tuple[float, float] | None:
    low, high = channel.lower_ctrl_limit, channel.upper_ctrl_limit
    return (low, high) if low != high else None


def describe(pvdb: Mapping[str, Any], prefix: str) -> list[PVInfo]:
    """Describe every PV of `pvdb` (full name -> channel), in the IOC's order."""
    described = []
    for full_name, channel in pvdb.items():
        if not full_name.startswith(prefix):
            raise ValueError(f"{full_name} does not start with the prefix {prefix!r}")
        described.append(describe_channel(full_name[len(prefix) :], channel))
    return described


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """caproto warns (on the group's logger) about the backlog of large arrays: not news when describing PVs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def ioc_pvs() -> list[PVInfo]:
    """Describe the PVs of a `DMagicIOC` built on default settings, without adapters (nothing is contacted)."""
    from ..config import Settings
    from ..epics.server import DMagicIOC
    from ..usecases import Beamline

    with _quiet("dmagic_ioc.ioc.epics.groups"):
        ioc = DMagicIOC(PREFIX_MACRO, beamline=Beamline(Settings(), adapters=None))
    return describe(ioc.pvdb, PREFIX_MACRO)
