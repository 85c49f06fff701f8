"""Render the Markdown table of the IOC's PVs and keep the copy in docs/pvs.md in sync.

`python -m dmagic_ioc.ioc.tools.pvtable` prints the table; `--write docs/pvs.md`
replaces the text between the pv-table markers; `--check docs/pvs.md` exits
non-zero when that text is out of date.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .pvinfo import PVInfo, ioc_pvs

log = logging.getLogger(__name__)

# What PV Access serves each kind as (pva.enabled; ioc/epics/pvaserver.py), beside Channel Access.
PVA_TYPES = {"string": "NTScalar string", "text": "NTScalar string", "enum": "NTEnum", "command": "NTEnum",
             "long": "NTScalar int32", "double": "NTScalar double"}  # fmt: skip

START_MARKER = "<!-- pv-table:start -->"
END_MARKER = "<!-- pv-table:end -->"


class MarkersError(ValueError):
    """The text lacks the pv-table markers, or they are out of order."""


def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def render_table(pvs: list[PVInfo]) -> str:
    """A Markdown table: name, type (Channel Access), access, type over PV Access, meaning; one row per PV, in
    the IOC's order."""
    rows = ["| PV | type | access | PV Access | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{pv.name}` | {_cell(pv.type_label)} | {pv.access} | {PVA_TYPES[pv.kind]} | {_cell(pv.doc)} |"
             for pv in pvs]  # fmt: skip
    return "\n".join(rows)


def _span(text: str) -> tuple[int, int]:
    """Where the table goes: from the end of the start marker to the start of the end marker."""
    start = text.find(START_MARKER)
    end = text.find(END_MARKER)
    if start < 0 or end < 0 or end < start:
        raise MarkersError(f"the text needs {START_MARKER} then {END_MARKER}")
    return start + len(START_MARKER), end


def replace_table(text: str, table: str) -> str:
    """`text` with `table` between the markers (the markers kept)."""
    begin, end = _span(text)
    return text[:begin] + "\n" + table + "\n" + text[end:]


def is_current(text: str, table: str) -> bool:
    """Whether the table between the markers of `text` is `table`."""
    return replace_table(text, table) == text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Markdown table of dmagic-ioc's PVs")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="FILE", help="replace the table between the markers of FILE")
    action.add_argument("--check", type=Path, metavar="FILE", help="exit 1 when the table in FILE is out of date")
    args = parser.parse_args(argv)

    table = render_table(ioc_pvs())
    path = args.write or args.check
    if path is None:
        print(table)
        return 0
    text = path.read_text(encoding="utf-8")
    try:
        current = is_current(text, table)
    except MarkersError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 2
    if args.check:
        if not current:
            print(
                f"{path}: the PV table is out of date: run python -m dmagic_ioc.ioc.tools.pvtable --write {path}",
                file=sys.stderr,
            )
            return 1
        print(f"{path}: the PV table is up to date")
        return 0
    if not current:
        path.write_text(replace_table(text, table), encoding="utf-8")
    print(f"{path}: PV table {'already up to date' if current else 'written'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
