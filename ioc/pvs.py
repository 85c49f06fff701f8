"""pvproperty factories for the contract's PV kinds, with the caproto pitfalls handled once.

Every PV gets its own alarm (`alarm_group` = its name), so a MAJOR `Status`
never drags its siblings into alarm; every text PV is UTF-8; DBR_STRING PVs
use `ChannelType.STRING` (a `str` dtype would give a one-element char array).
"""

from __future__ import annotations

import logging

from caproto import AlarmSeverity, AlarmStatus, CaprotoConversionError, ChannelType
from caproto.server import PVGroup, pvproperty
from caproto.server.server import PvpropertyChar, PvpropertyString

log = logging.getLogger(__name__)

COMMAND_STATES = ("Done", "Busy")
NO_YES = ("No", "Yes")
HEALTH_STATES = ("OK", "Error", "Disabled")

# EPICS string records hold 40 bytes including the terminating NUL.
STRING_BYTES = 39


class _Latin1Fallback:
    """Text written by an older client in Latin-1 (not valid UTF-8) is read as Latin-1, not refused."""

    async def write_from_dbr(self, data, data_type, metadata, *, flags=0):
        try:
            return await super().write_from_dbr(data, data_type, metadata, flags=flags)
        except (CaprotoConversionError, UnicodeDecodeError) as error:
            if not isinstance(error, UnicodeDecodeError) and not isinstance(error.__cause__, UnicodeDecodeError):
                raise
            # DBR_STRING arrives as a list of bytes, a char waveform as an array of bytes
            first = data[0] if len(data) else b""
            raw = first if isinstance(first, bytes) else bytes(bytearray(data))
            text = raw.split(b"\0")[0].decode("latin-1")
            log.warning("%s: text is not UTF-8, read as Latin-1: %r", self.pvspec.name, text)
            return await self.write(text)


class TextChar(_Latin1Fallback, PvpropertyChar):
    """A writable UTF-8 char waveform that also takes Latin-1."""


class TextString(_Latin1Fallback, PvpropertyString):
    """A writable UTF-8 DBR_STRING that also takes Latin-1."""


class TextPVGroup(PVGroup):
    """A PVGroup whose writable text PVs take Latin-1 from older clients."""

    type_map = {**PVGroup.type_map, ChannelType.CHAR: TextChar, ChannelType.STRING: TextString}


def text(name: str, length: int, doc: str, *, rw: bool = False) -> pvproperty:
    """A char waveform read as a string (`caget -S`), UTF-8, up to `length` bytes."""
    return pvproperty(
        name=name,
        value="",
        dtype=ChannelType.CHAR,
        max_length=length,
        string_encoding="utf-8",
        read_only=not rw,
        alarm_group=name,
        doc=doc,
    )


def string(name: str, doc: str, *, rw: bool = False, value: str = "") -> pvproperty:
    """A DBR_STRING PV (40 bytes)."""
    return pvproperty(
        name=name,
        value=value,
        dtype=ChannelType.STRING,
        string_encoding="utf-8",
        read_only=not rw,
        alarm_group=name,
        doc=doc,
    )


def enum(name: str, states: tuple[str, ...], doc: str, *, rw: bool = False, value: int = 0) -> pvproperty:
    return pvproperty(
        name=name,
        value=states[value],
        dtype=ChannelType.ENUM,
        enum_strings=states,
        read_only=not rw,
        alarm_group=name,
        doc=doc,
    )


def long(name: str, doc: str, *, rw: bool = False, value: int = 0) -> pvproperty:
    return pvproperty(name=name, value=value, dtype=ChannelType.LONG, read_only=not rw, alarm_group=name, doc=doc)


def double(name: str, doc: str, *, rw: bool = False, value: float = 0.0, precision: int = 2) -> pvproperty:
    return pvproperty(
        name=name,
        value=value,
        dtype=ChannelType.DOUBLE,
        read_only=not rw,
        precision=precision,
        alarm_group=name,
        doc=doc,
    )


def command(name: str, doc: str) -> pvproperty:
    """A bo Done/Busy command PV: write 1 to run it; it reads 1 while it runs."""
    return pvproperty(
        name=name,
        value=COMMAND_STATES[0],
        dtype=ChannelType.ENUM,
        enum_strings=COMMAND_STATES,
        alarm_group=name,
        doc=doc,
    )


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


async def publish(channel, value, severity: AlarmSeverity | None = None, *, force: bool = False) -> None:
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
