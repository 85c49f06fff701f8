"""`CaMetadata`: `ports.MetadataSource` by caproto's threading client (blocking; called off the event loop).

Each snapshot opens one client context, searches every PV at once, waits a
bounded time for answers, reads each connected PV twice (DBR_TIME: value,
severity, time stamp; DBR_CTRL: units) and closes the context. A PV that does
not answer is recorded as missing; nothing here raises for an absent PV.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from caproto import AlarmSeverity, CaprotoError, ChannelType
from caproto.threading.client import PV, Context, SharedBroadcaster

log = logging.getLogger(__name__)

POLL_SECONDS = 0.01
WHOLE_ARRAY = 16  # numeric arrays up to this many elements are kept whole; longer ones summarised
_TEXT_TYPES = (ChannelType.STRING, ChannelType.TIME_STRING, ChannelType.CTRL_STRING)


class CaMetadata:
    """Reads the metadata PVs (`metadata.pvs`) of any IOC in one go."""

    def __init__(
        self,
        connect_timeout: float = 2.0,
        read_timeout: float = 2.0,
        context_factory: Callable[[], Context] | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._context_factory = context_factory or (lambda: Context(SharedBroadcaster()))

    def read(self, pvs: Mapping[str, str]) -> dict[str, dict]:
        """{key: {"pv", "value", "units", "severity", "timestamp"}}; {"pv", "missing": True, "why"} for a PV
        that did not answer or could not be read."""
        if not pvs:
            return {}
        context = self._context_factory()
        try:
            channels = dict(zip(pvs, context.get_pvs(*pvs.values()), strict=True))
            self._wait(list(channels.values()))
            silent = [pv.name for pv in channels.values() if not pv.connected]
            if silent:
                context.broadcaster.cancel(*silent)  # no more searches while the context closes
            return {key: self._read_one(pv) for key, pv in channels.items()}
        finally:
            threading.Thread(target=context.disconnect, name="metadata-disconnect", daemon=True).start()

    def _wait(self, pvs: list[PV]) -> None:
        deadline = time.monotonic() + self._connect_timeout
        while time.monotonic() < deadline and not all(pv.connected for pv in pvs):
            time.sleep(POLL_SECONDS)

    def _read_one(self, pv: PV) -> dict:
        if not pv.connected:
            return {"pv": pv.name, "missing": True, "why": f"no answer within {self._connect_timeout:g} s"}
        try:
            timed = pv.read(data_type="time", timeout=self._read_timeout)
            units = ""
            if pv.channel is not None and pv.channel.native_data_type not in (ChannelType.STRING, ChannelType.ENUM):
                control = pv.read(data_type="control", timeout=self._read_timeout)
                units = _text(getattr(control.metadata, "units", b""))
            elif pv.channel is not None and pv.channel.native_data_type == ChannelType.ENUM:
                control = pv.read(data_type="control", timeout=self._read_timeout)
                states = [_text(s) for s in getattr(control.metadata, "enum_strings", ())]
                index = int(timed.data[0])
                value: object = states[index] if 0 <= index < len(states) else index
                return _entry(pv.name, value, units, timed)
        except (TimeoutError, CaprotoError, OSError) as error:
            log.warning("metadata: %s not read: %s", pv.name, error)
            return {"pv": pv.name, "missing": True, "why": f"not read: {error}"}
        return _entry(pv.name, _value(timed), units, timed)


def _entry(name: str, value: object, units: str, timed) -> dict:
    severity = AlarmSeverity(int(timed.metadata.severity)).name.replace("_ALARM", "")
    stamp = datetime.fromtimestamp(timed.metadata.timestamp, timezone.utc).isoformat()
    return {"pv": name, "value": value, "units": units, "severity": severity, "timestamp": stamp}


def _text(raw) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _value(response) -> object:
    """A scalar as a Python number or text; a char array as its text, whole; a long array summarised."""
    data, kind = response.data, response.data_type
    if kind in _TEXT_TYPES:
        texts = [_text(item) for item in data]
        return texts[0] if len(texts) == 1 else texts
    if kind in (ChannelType.TIME_CHAR, ChannelType.CHAR):
        return bytes(int(b) & 0xFF for b in data).split(b"\0", 1)[0].decode("utf-8", "replace")
    numbers = [_number(item) for item in data]
    if len(numbers) == 1:
        return numbers[0]
    if len(numbers) <= WHOLE_ARRAY:
        return numbers
    finite = [n for n in numbers if isinstance(n, (int, float)) and math.isfinite(n)]
    summary: dict[str, object] = {"count": len(numbers), "first": numbers[:4]}
    if finite:
        summary.update(min=min(finite), max=max(finite), mean=sum(finite) / len(finite))
    return summary


def _number(item) -> object:
    value = item.item() if hasattr(item, "item") else item
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    return value
