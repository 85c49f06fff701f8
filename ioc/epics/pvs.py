"""pvproperty factories for the contract's PV kinds, with the caproto pitfalls handled once.

Every PV gets its own alarm (`alarm_group` = its name), so a MAJOR `Status`
never drags its siblings into alarm; every text PV is UTF-8; DBR_STRING PVs
use `ChannelType.STRING` (a `str` dtype would give a one-element char array).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from caproto import AccessRights, AlarmSeverity, AlarmStatus, CaprotoValueError, ChannelType, native_type
from caproto.server import PVGroup, pvproperty
from caproto.server.server import (
    PvpropertyChar,
    PvpropertyDouble,
    PvpropertyEnum,
    PvpropertyInteger,
    PvpropertyString,
)

log = logging.getLogger(__name__)

COMMAND_STATES = ("Done", "Busy")
NO_YES = ("No", "Yes")
HEALTH_STATES = ("OK", "Error", "Disabled")

# mbbi/mbbo state fields, in order: ZRST/ZRVL, ONST/ONVL, ...
MBB_FIELDS = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV", "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")

# EPICS string records hold 40 bytes including the terminating NUL.
STRING_BYTES = 39
# DESC holds 40 bytes and a NUL, but Channel Access carries it as a DBR_STRING: 39 bytes and a NUL.
DESC_BYTES = 39


class PutRefused(CaprotoValueError):
    """A client's write that makes no sense: the put fails, the value stays, and `Status` says why."""


def wire_bytes(data, data_type) -> bytes | None:
    """The bytes of a text write (up to the first NUL), or None when `data_type` is not text."""
    native = native_type(data_type)
    if native == ChannelType.STRING:
        raw = data[0] if len(data) else b""
    elif native == ChannelType.CHAR:
        raw = data.tobytes() if hasattr(data, "tobytes") else bytes(bytearray(data))
    else:
        return None
    return bytes(raw).split(b"\0", 1)[0]


def wire_number(data, data_type) -> float | None:
    """The first value of a numeric write (text is parsed), or None when there is none."""
    if not len(data):
        return None
    raw = wire_bytes(data, data_type)
    if raw is None:
        return float(data[0])
    try:
        return float(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


if TYPE_CHECKING:  # the guards are mixed into caproto's ChannelData classes (below): mypy reads them as one
    from caproto import ChannelData as _ChannelData
else:
    _ChannelData = object


class _Guarded(_ChannelData):
    """A writable PV that checks what a client writes before anything changes.

    caproto's own conversion cannot clear a UTF-8 char waveform, accepts an
    enum index out of range when it comes as a number, and takes NaN into a
    double; these classes read the wire data themselves and either write a
    clean value or refuse with `PutRefused`, reported on `Status`.
    """

    async def write_from_dbr(self, data, data_type, metadata, *, flags=0):
        if data_type in (ChannelType.PUT_ACKS, ChannelType.PUT_ACKT):
            return await super().write_from_dbr(data, data_type, metadata, flags=flags)
        try:
            value = self.from_wire(data, data_type)
        except PutRefused as refusal:
            await self.group.put_refused(str(refusal))
            raise
        return await self.write(value, flags=flags)

    def checked(self, value):
        """`value` (a Python value: restored from autosave, say) if this PV takes it; else PutRefused."""
        raise NotImplementedError

    def refuse(self, why: str) -> PutRefused:
        return PutRefused(f"{self.pvspec.name}: write refused, {why}; it stays {self.value!r}")


class GuardedText(_Guarded):
    def from_wire(self, data, data_type) -> str:
        raw = wire_bytes(data, data_type)
        if raw is None:
            raise self.refuse(f"it takes text, not {native_type(data_type).name}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # older clients send Latin-1
            text = raw.decode("latin-1")
            log.warning("%s: text is not UTF-8, read as Latin-1: %r", self.pvspec.name, text)
            return text

    def checked(self, value) -> str:
        if not isinstance(value, str):
            raise self.refuse(f"it takes text, not {value!r}")
        return value


class GuardedEnum(_Guarded):
    def from_wire(self, data, data_type) -> str:
        raw = wire_bytes(data, data_type)
        if raw is not None and raw.decode("utf-8", "replace").strip() in self.enum_strings:
            return raw.decode("utf-8").strip()
        return self.checked(wire_number(data, data_type))

    def checked(self, value) -> str:
        """A state, from its name or its index."""
        states = tuple(self.enum_strings)
        if isinstance(value, str) and value in states:
            return value
        number = as_number(value)
        if number is None or not number.is_integer() or not 0 <= number < len(states):
            choices = ", ".join(f"{i} ({state})" for i, state in enumerate(states))
            raise self.refuse(f"it takes one of {choices}")
        return states[int(number)]


class GuardedNumber(_Guarded):
    """A number within the PV's control limits (`lower_ctrl_limit`..`upper_ctrl_limit`)."""

    def from_wire(self, data, data_type):
        return self.checked(wire_number(data, data_type))

    def checked(self, value):
        number = as_number(value)
        low, high = self.lower_ctrl_limit, self.upper_ctrl_limit
        if number is None or not math.isfinite(number) or not low <= number <= high:
            raise self.refuse(f"it takes a number from {low:g} to {high:g}")
        if self.data_type == ChannelType.LONG:
            if not number.is_integer():
                raise self.refuse("it takes a whole number")
            return int(number)
        return number


def as_number(value) -> float | None:
    """`value` as a float when it is a number (not a bool, not text), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class TextChar(GuardedText, PvpropertyChar):
    """A writable UTF-8 char waveform: any client can clear it; Latin-1 from older clients is accepted."""


class TextString(GuardedText, PvpropertyString):
    """A writable UTF-8 DBR_STRING."""


class CheckedEnum(GuardedEnum, PvpropertyEnum):
    """A writable enum that takes only its states, by name or by index."""


class CheckedDouble(GuardedNumber, PvpropertyDouble):
    """A writable double within its limits, never NaN or infinite."""


class CheckedLong(GuardedNumber, PvpropertyInteger):
    """A writable long within its limits."""


class GuardedPVGroup(PVGroup):
    """A PVGroup whose writable PVs refuse what makes no sense, before anything changes."""

    type_map = {
        **PVGroup.type_map,
        ChannelType.CHAR: TextChar,
        ChannelType.STRING: TextString,
        ChannelType.ENUM: CheckedEnum,
        ChannelType.DOUBLE: CheckedDouble,
        ChannelType.LONG: CheckedLong,
    }

    async def put_refused(self, message: str) -> None:
        """A client's write was refused: say so where people look (the command groups show it on Status)."""


# Record types of the same PVs in EPICS: what `db_templates/` declares and `PV.RTYP` answers.
# EmailMode is an mbbo although it has two states today (room for more modes).
INTERFACE_RECORD_TYPES = {"EmailMode": "mbbo"}
_RECORDS = {  # kind -> (record type when read-only, when clients may write)
    "string": ("stringin", "stringout"),
    "text": ("waveform", "waveform"),
    "long": ("longin", "longout"),
    "double": ("ai", "ao"),
}


def record_type(kind: str, states: tuple[str, ...], writable: bool, name: str = "") -> str:
    """The EPICS record type for a PV of `kind`: enums by their number of states, commands are bo."""
    if name in INTERFACE_RECORD_TYPES:
        return INTERFACE_RECORD_TYPES[name]
    if kind == "command":
        return "bo"
    if kind == "enum":
        base = "b" if len(states) == 2 else "mbb"
        return base + ("o" if writable else "i")
    return _RECORDS[kind][writable]


def _pv(name: str, kind: str, doc: str, *, rw: bool, states: tuple[str, ...] = (), **kwargs) -> pvproperty:
    """A pvproperty with its own alarm and the record fields (`.DESC`, `.RTYP`, ...) of its record type."""
    return pvproperty(
        name=name,
        read_only=not rw,
        alarm_group=name,
        doc=doc,
        record=record_type(kind, states, rw, name),
        **({"enum_strings": states} if states else {}),
        **kwargs,
    )


def text(name: str, length: int, doc: str, *, rw: bool = False) -> pvproperty:
    """A char waveform read as a string (`caget -S`), UTF-8, up to `length` bytes."""
    return _pv(name, "text", doc, rw=rw, value="", dtype=ChannelType.CHAR, max_length=length, string_encoding="utf-8")


def string(name: str, doc: str, *, rw: bool = False, value: str = "") -> pvproperty:
    """A DBR_STRING PV (40 bytes)."""
    return _pv(name, "string", doc, rw=rw, value=value, dtype=ChannelType.STRING, string_encoding="utf-8")


def enum(name: str, states: tuple[str, ...], doc: str, *, rw: bool = False, value: int = 0) -> pvproperty:
    return _pv(name, "enum", doc, rw=rw, states=states, value=states[value], dtype=ChannelType.ENUM)


def long(name: str, doc: str, *, rw: bool = False, value: int = 0, limits: tuple[int, int] = (0, 0)) -> pvproperty:
    """A long; a writable one takes only whole numbers within `limits` (low, high)."""
    low, high = limits
    return _pv(name, "long", doc, rw=rw, value=value, dtype=ChannelType.LONG,
               lower_ctrl_limit=low, upper_ctrl_limit=high)  # fmt: skip


def double(
    name: str, doc: str, *, rw: bool = False, value: float = 0.0, precision: int = 2, units: str = "",
    limits: tuple[float, float] = (0.0, 0.0),
) -> pvproperty:  # fmt: skip
    """A double; a writable one takes only finite numbers within `limits` (low, high)."""
    low, high = limits
    return _pv(name, "double", doc, rw=rw, value=value, dtype=ChannelType.DOUBLE, precision=precision, units=units,
               lower_ctrl_limit=low, upper_ctrl_limit=high)  # fmt: skip


def command(name: str, doc: str) -> pvproperty:
    """A bo Done/Busy command PV: write 1 to run it; it reads 1 while it runs."""
    return _pv(name, "command", doc, rw=True, states=COMMAND_STATES, value=COMMAND_STATES[0], dtype=ChannelType.ENUM)


async def serve_record_fields(pvdb: dict) -> None:
    """Make the record fields (`PV.DESC`, `.RTYP`, `.EGU`, ...) answer as an EPICS record's would, and
    hold still: every field is read-only, and caproto's field getters and putters are replaced by the
    values they give now. caproto links some fields to the PV itself (`.ZRST` renames a state; reading
    `.ONAM` writes the PV again), so left alone a client could rename a state or run a command by way of
    a field. A PV's description, states, units and precision never change while the IOC runs."""
    for channel in pvdb.values():
        fields = getattr(channel, "field_inst", None)
        if fields is None:
            continue
        channel.__doc__ = fit(" ".join((channel.pvspec.doc or "").split()), DESC_BYTES)  # what .DESC gives
        for field in fields.pvdb.values():
            field.check_access = _read_only
            if field.getter is not None:
                value = await field.getter(field)
                if value is not None:
                    await field.write(value, verify_value=False)
            field.getter = field.putter = None
        if channel.data_type == ChannelType.CHAR:
            await fields.pvdb["FTVL"].write("CHAR", verify_value=False)
        if "ZRST" in fields.pvdb:  # mbbi/mbbo: caproto leaves the state strings empty
            for key, state in zip(MBB_FIELDS, channel.enum_strings, strict=False):
                await fields.pvdb[key + "ST"].write(state, verify_value=False)
        units = getattr(channel, "units", "")
        if units:
            await fields.pvdb["EGU"].write(units, verify_value=False)


def _read_only(hostname: str, username: str) -> AccessRights:
    return AccessRights.READ


def is_command(channel) -> bool:
    return tuple(getattr(channel, "enum_strings", ()) or ()) == COMMAND_STATES


SEVERITY_STATUS = {
    AlarmSeverity.NO_ALARM: AlarmStatus.NO_ALARM,
    AlarmSeverity.MINOR_ALARM: AlarmStatus.STATE,
    AlarmSeverity.MAJOR_ALARM: AlarmStatus.STATE,
}


def fit(value: str, limit: int) -> str:
    """Cut `value` to at most `limit` UTF-8 bytes at a character boundary."""
    encoded = value.encode("utf-8")
    if len(encoded) <= limit:
        return value
    return encoded[:limit].decode("utf-8", "ignore")


async def update(channel, value, severity: AlarmSeverity | None = None, *, force: bool = False) -> None:
    """Write `value` (and an alarm severity) when something changed, or always with `force`.

    Text is cut to what the PV holds so a long value never fails the write;
    the contract sizes PVs so that real values fit.
    """
    if channel.data_type == ChannelType.CHAR:
        value = fit(value, channel.max_length - 1)
    elif channel.data_type == ChannelType.STRING:
        value = fit(value, STRING_BYTES)
    kwargs = {}
    if severity is not None and severity != channel.alarm.severity:
        kwargs = {"severity": severity, "status": SEVERITY_STATUS[severity]}
    if value == channel.value and not kwargs and not force:
        return
    await channel.write(value, verify_value=False, **kwargs)
