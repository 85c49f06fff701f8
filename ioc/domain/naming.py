"""Names: of experiments, folders, unix groups and DM users, and the badges they come from."""

from __future__ import annotations

import re
import string
import unicodedata
from datetime import date, datetime
from typing import TYPE_CHECKING

from .errors import InputError
from .text import printable

if TYPE_CHECKING:
    from .experiment import Experiment

# Letters that do not decompose into ASCII + combining marks under NFKD.
_TRANSLITERATION = str.maketrans(
    {
        "Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss", "ẞ": "SS",
        "Æ": "AE", "æ": "ae", "Œ": "OE", "œ": "oe", "Đ": "D", "đ": "d",
        "Ð": "D", "ð": "d", "Þ": "Th", "þ": "th", "ı": "i", "Ħ": "H",
        "ħ": "h", "Ŧ": "T", "ŧ": "t", "Ŀ": "L", "ŀ": "l", "ĸ": "k",
        "Ŋ": "N", "ŋ": "n", "ſ": "s",
    }
)  # fmt: skip

_NOT_FOLDER_SAFE = re.compile(r"[^A-Za-z0-9]")


def folder_safe(text: str) -> str:
    """`Müller-Łukasiewicz` -> `MullerLukasiewicz`: ASCII letters and digits only."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATION))
    return _NOT_FOLDER_SAFE.sub("", decomposed.encode("ascii", "ignore").decode("ascii"))


def check_name(name: str, what: str = "name") -> str:
    """Return `name` stripped, or refuse one that could escape its folder."""
    name = name.strip()
    if not name:
        raise InputError(f"{what} is empty")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise InputError(f"{what} {name!r} has control characters")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise InputError(f"{what} {name!r} could escape its folder ('/', '\\', '..' or a leading '.')")
    return name


EXPERIMENT_NAME_FIELDS = ("year_month", "pi_last_name", "gup")


def experiment_name(template: str, *, year_month: str, pi_last_name: str, gup: str) -> str:
    """Fill the `dm.experiment_name` template; the last name is made folder-safe."""
    name = template.format(year_month=year_month, pi_last_name=folder_safe(pi_last_name), gup=gup)
    return check_name(name, "experiment name")


def year_month(moment: datetime | date) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


# --------------------------------------------------------------------------
# Storage layout (dm.layout)

LAYOUT_FIELDS = ("storage_root", "year", "year_month", "run", "gup", "experiment", "beamline", "pi_last_name")
DEFAULT_LAYOUT = "{storage_root}/{year_month}/{experiment}"
DEFAULT_SUBDIRS = ("data", "analysis")


def layout_placeholders(layout: str) -> list[str]:
    """The placeholders `layout` names, in order (ValueError on a malformed template)."""
    return [name for _, name, _, _ in string.Formatter().parse(layout) if name is not None]


def storage_location(
    layout: str,
    storage_root: str,
    experiment: Experiment,
    *,
    beamline: str = "",
    run: str = "",
    pi_last_name: str = "",
    gup: str | None = None,
    key: str = "dm.layout",
) -> str:
    """Fill `dm.layout` for `experiment`: the folder its storage goes in.

    `year` and `year_month` come from the experiment's year-month (else its start), `gup` from the
    experiment unless given (a manual experiment's 0), `pi_last_name` is made folder-safe. Every value
    but `storage_root` must be a folder name; one the layout needs and that is empty is refused.
    """
    ym = experiment.year_month or (year_month(experiment.start) if experiment.start else "")
    values = {
        "year": ym[:4],
        "year_month": ym,
        "run": run,
        "gup": experiment.gup if gup is None else gup,
        "experiment": experiment.name,
        "beamline": beamline,
        "pi_last_name": folder_safe(pi_last_name),
    }
    for name in set(layout_placeholders(layout)) - {"storage_root"}:
        if not values.get(name, "").strip():
            raise InputError(f"{key} needs {{{name}}}, which experiment {experiment.name} has not")
        values[name] = check_name(values[name], f"{{{name}}} of {key}")
    return layout.format(storage_root=storage_root, **values)


POSIX_GROUP_FIELDS = ("gup", "experiment", "beamline", "year", "year_month")
POSIX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")  # a unix group or user name, never a number


def posix_group(template: str, experiment: Experiment, *, beamline: str = "") -> str:
    """The unix group `dm.posix.group` names for `experiment` ("p{gup}" -> "p1234", or a fixed name)."""
    return storage_location(template, "", experiment, beamline=beamline, key="dm.posix.group")


# --------------------------------------------------------------------------
# Badges and users

BADGE = re.compile(r"[0-9]{1,12}")  # ASCII digits only: \d would take Arabic or full-width digits


def dm_username(badge: str) -> str:
    """DM usernames are `d` + badge."""
    return f"d{badge}"


def parse_badges(text: str, what: str = "Badges") -> tuple[str, ...]:
    """`"310011, 310012"` -> `("310011", "310012")`; every entry must be numeric. Spaces around an entry and
    empty entries (`"310011,"`, `"310011,,310012"`) are let pass; `"310 011"` is no badge. `what` names the PV."""
    entries = [entry for entry in (entry.strip() for entry in text.split(",")) if entry]
    if not entries:
        raise InputError(f"{what} is empty: write comma-separated badge numbers, e.g. 310011,310012")
    bad = [entry for entry in entries if not BADGE.fullmatch(entry)]
    if bad:
        shown = ", ".join(printable(repr(entry)) for entry in bad)
        raise InputError(f"{what} has entries that are not badge numbers: {shown}; nothing changed")
    return tuple(dict.fromkeys(entries))


def plural(count: int, noun: str) -> str:
    """`1 user`, `2 users`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
