"""The declared PVs served by caproto, with the caproto pitfalls handled once.

Every PV gets its own alarm (`alarm_group` = its name), so a MAJOR `Status`
never drags its siblings into alarm; every text PV is UTF-8; DBR_STRING PVs
use `ChannelType.STRING` (a `str` dtype would give a one-element char array).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
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

from .declarations import PV

log = logging.getLogger(__name__)

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
        value = await self.refusal_said(self.from_wire, data, data_type)
        return await self.write(value, flags=flags)

    async def write_checked(self, value) -> None:
        """A client's write of a Python value (PV Access): the checks of a CA write, a refusal said on Status."""
        await self.write(await self.refusal_said(self.checked, value))

    async def refusal_said(self, check, *args):
        """`check(*args)`; a refusal (PutRefused) is said where people look (`put_refused`), then raised."""
        try:
            return check(*args)
        except PutRefused as refusal:
            await self.group.put_refused(str(refusal))
            raise

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
        size = len(value.encode("utf-8"))
        holds = STRING_BYTES if self.data_type == ChannelType.STRING else self.max_length
        if size > holds:
            raise self.refuse(f"it holds {holds} bytes of UTF-8 text, not {size:,}")
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


def served(pv: PV) -> pvproperty:
    """The caproto pvproperty of a declared PV: its own alarm, and the record fields (`.DESC`, `.RTYP`, ...)
    of its record type."""
    kwargs: dict = {}
    if pv.kind == "text":
        kwargs = {"dtype": ChannelType.CHAR, "max_length": pv.length, "string_encoding": "utf-8"}
    elif pv.kind == "string":
        kwargs = {"dtype": ChannelType.STRING, "string_encoding": "utf-8"}
    elif pv.kind in ("enum", "command"):
        kwargs = {"dtype": ChannelType.ENUM, "enum_strings": pv.states}
    elif pv.kind == "long":
        kwargs = {"dtype": ChannelType.LONG}
    else:
        kwargs = {"dtype": ChannelType.DOUBLE, "precision": pv.precision, "units": pv.units}
    if pv.kind in ("long", "double"):
        kwargs.update(lower_ctrl_limit=pv.limits[0], upper_ctrl_limit=pv.limits[1])
    return pvproperty(name=pv.name, value=pv.value, read_only=not pv.rw, alarm_group=pv.name, doc=pv.doc,
                      record=pv.record, **kwargs)  # fmt: skip


class DeclaredGroupMeta(type(PVGroup)):  # type: ignore[misc]
    """Builds a PV group's pvproperties from its table of declarations (`class G(Base, pvs=TABLE)`).

    The group's methods named after an attribute hook it: `put_<attribute>` is the putter of a
    setting, `startup_<attribute>` a startup hook; a command PV's putter is the group's `put_command`.
    """

    @classmethod
    def __prepare__(mcls, name, bases, **kwargs):
        return super().__prepare__(name, bases)

    def __init__(cls, name, bases, namespace, **kwargs):
        super().__init__(name, bases, namespace)

    def __new__(mcls, name, bases, namespace, pvs: Mapping[str, PV] | None = None):
        for hook in namespace:  # a misspelt hook would leave its PV without its putter: say so at import
            attribute = hook.removeprefix("put_").removeprefix("startup_")
            if hook != attribute and hook not in ("put_command", "put_refused") and attribute not in (pvs or {}):
                raise TypeError(f"{name}.{hook}: no declared PV {attribute!r} to hook")
        for attribute, pv in (pvs or {}).items():
            prop = served(pv)
            if pv.kind == "command":
                prop = prop.putter(_put_command)
            elif f"put_{attribute}" in namespace:
                prop = prop.putter(namespace[f"put_{attribute}"])
            if f"startup_{attribute}" in namespace:
                prop = prop.startup(namespace[f"startup_{attribute}"])
            namespace[attribute] = prop
        return super().__new__(mcls, name, bases, namespace)


async def _put_command(group, instance, value):
    """A put on a command PV: the group submits its command."""
    return await group.put_command(instance, value)


class GuardedPVGroup(PVGroup, metaclass=DeclaredGroupMeta):
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
        AlarmFields(channel, fields)


# A record's alarm fields and what each shows of its PV's alarm (caproto's names).
ALARM_FIELDS = {"ACKT": "must_acknowledge_transient", "ACKS": "severity_to_acknowledge", "STAT": "status",
                "SEVR": "severity"}  # fmt: skip


class AlarmFields:
    """A record's alarm fields (`.STAT`, `.SEVR`, `.ACKS`, `.ACKT`), as they are when read or monitored.

    caproto writes all four at every change of the PV's alarm, ~140 µs, four times a command that fails
    (its Status twice, the command PV's alarm set and cleared). Here a read takes them from the alarm as it
    is then, and a change writes them only while a client monitors one (then as caproto does)."""

    def __init__(self, channel, fields):
        self.alarm = channel.alarm
        self.fields = {name: fields.pvdb[name] for name in ALARM_FIELDS if name in fields.pvdb}
        self.monitored: set = set()  # (field, queue, subscription spec) of the monitors on the fields
        self.alarm.disconnect(fields)
        self.alarm.connect(self)  # a weak reference: the fields' getters hold this object
        for name, field in self.fields.items():
            self._watch(name, field)

    def changed(self, name: str):
        """What field `name` should show, when it shows something else; else None."""
        field, value = self.fields[name], int(getattr(self.alarm, ALARM_FIELDS[name]))
        shown = field.value  # caproto keeps a state's name or its number
        if isinstance(shown, str):
            shown = field.enum_strings.index(shown) if shown in field.enum_strings else -1
        return None if shown == value else value

    async def publish(self, flags) -> None:
        """The alarm changed (caproto calls this as it calls every channel of the alarm)."""
        if self.monitored:
            for name, field in self.fields.items():
                if (value := self.changed(name)) is not None:
                    await field.write(value)

    def _watch(self, name: str, field) -> None:
        """Hook `field`: a read takes the alarm as it is; a monitor, while it lasts, gets each change."""
        subscribe, unsubscribe = field.subscribe, field.unsubscribe

        async def read(_):
            return self.changed(name)  # caproto writes a value returned into the field, then reads it

        async def subscribed(queue, sub_spec, sub):
            self.monitored.add((field, queue, sub_spec))
            if (value := self.changed(name)) is not None:  # the first update shows the alarm as it is
                await field.write(value)
            await subscribe(queue, sub_spec, sub)

        async def unsubscribed(queue, sub_spec):
            self.monitored.discard((field, queue, sub_spec))
            await unsubscribe(queue, sub_spec)

        field.getter, field.subscribe, field.unsubscribe = read, subscribed, unsubscribed


def _read_only(hostname: str, username: str) -> AccessRights:
    return AccessRights.READ


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
