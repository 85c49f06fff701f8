"""The APS DM system's Python SDK (the `dm` package): imported only when an APS adapter is built, so sites
without it never need it; its objects, its dates, and its failures as a `DMError` with a short message."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import date, datetime, tzinfo
from typing import Any, TypeVar

from ...ioc.domain.errors import DMError

log = logging.getLogger(__name__)

T = TypeVar("T")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MAX_MESSAGE = 200  # characters of an SDK message shown on a PV


def import_dm() -> Any:
    """The APS DM SDK module, or a DMError saying how to get on without it."""
    try:
        import dm
    except ImportError as error:
        raise DMError(
            "the APS DM SDK (python package 'dm') is not installed; install it or use dm.backend: local"
        ) from error
    return dm


# ---------------------------------------------------------------------- SDK objects and dates


def sdk_field(obj: Any, *keys: str, default: Any = None) -> Any:
    """The first of `keys` that `obj` holds: a dict, a dict-like DmObject (`.data`, `.get`) or attributes."""
    mappings = [m for m in (getattr(obj, "data", None), obj) if isinstance(m, Mapping)]
    getter = getattr(obj, "get", None) if not isinstance(obj, Mapping) else None
    for key in keys:
        for mapping in mappings:
            value = mapping.get(key)
            if value is not None:
                return value
        if callable(getter):
            try:
                value = getter(key)
            except (KeyError, TypeError, AttributeError):
                value = None
            if value is not None:
                return value
        value = getattr(obj, key, None)
        if value is not None and not callable(value):
            return value
    return default


def sdk_field_like(obj: Any, *keys: str, default: Any = None) -> Any:
    """Like `sdk_field`, also matching key spellings that differ in case and underscores."""
    value = sdk_field(obj, *keys)
    if value is not None:
        return value
    data = getattr(obj, "data", obj)
    if isinstance(data, Mapping):
        wanted = {key.replace("_", "").lower() for key in keys}
        for key, value in data.items():
            if isinstance(key, str) and key.replace("_", "").lower() in wanted and value is not None:
                return value
    return default


def sdk_date(moment: datetime | date | None) -> str:
    """`14-Oct-26`: the SDK's date form, in English whatever the locale."""
    if moment is None:
        return ""
    return f"{moment.day:02d}-{_MONTHS[moment.month - 1]}-{moment.year % 100:02d}"


def parse_sdk_date(value: Any, tz: tzinfo | None = None) -> datetime | None:
    """A date as the SDK or the ESAF database spells it (`14-Oct-26`, ISO, a datetime); None if unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment: datetime | None = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        moment = _text_date(str(value).strip())
    if moment is None:
        return None
    if moment.tzinfo is None and tz is not None:
        moment = moment.replace(tzinfo=tz)
    return moment


def sdk_epoch(value: Any) -> float | None:
    """Seconds since the epoch from a number, a numeric text or a date as the SDK writes it
    (`2026/10/15 10:00:00`, ISO: local time when it has no offset); None when unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value or "").strip()
    if not text:
        return None
    with contextlib.suppress(ValueError):
        return float(text)
    moment = parse_sdk_date(text.replace("/", "-", 2))
    return moment.timestamp() if moment else None


def _text_date(text: str) -> datetime | None:
    """`14-Oct-26` or ISO 8601; None, with a warning, when it is neither."""
    with contextlib.suppress(ValueError):
        day, month, year = text.split("-")
        if month.title() in _MONTHS and len(year) == 2:
            return datetime(2000 + int(year), _MONTHS.index(month.title()) + 1, int(day))
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        log.warning("unreadable date from the DM system: %r", text)
        return None


def exception_named(error: BaseException, *names: str) -> bool:
    """Whether `error` is of an SDK exception class of one of these names (or derives from one)."""
    return any(cls.__name__ in names for cls in type(error).__mro__)


def short_message(error: BaseException) -> str:
    """The SDK error's own message on one line, at most MAX_MESSAGE characters."""
    for getter in ("getErrorMessage", "error_message"):
        method = getattr(error, getter, None)
        if callable(method):
            try:
                text = str(method())
                break
            except Exception:
                continue
    else:
        text = str(error)
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def sdk_call(what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the SDK; any exception becomes a DMError naming what was being done."""
    try:
        return function(*args, **kwargs)
    except Exception as error:
        log.debug("APS DM: %s failed", what, exc_info=True)
        raise DMError(f"APS DM: {what} failed: {short_message(error)}") from error
