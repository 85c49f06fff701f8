"""The EPICS database and the PV table of docs/pvs.md, generated from the PV definitions, against the contract."""

from __future__ import annotations

import re

import pytest
from dmagic_ioc.ioc.tools import dbgen, pvtable
from dmagic_ioc.ioc.tools.pvinfo import PVInfo, ioc_pvs

from ..helpers import REPO, contract_pvs

# The committed file in the checkout (the installed package does not carry db_templates/).
DB_FILE = REPO / "db_templates" / "dmagic.db"

RECORD = re.compile(r'record\((\w+), "\$\(P\)([^"]+)"\) \{\n(.*?)\n\}', re.S)
FIELD = re.compile(r'field\((\w+), "((?:[^"\\]|\\.)*)"\)')
STATE_FIELDS = ("ZNAM", "ONAM", "ZRST", "ONST", "TWST", "THST")


@pytest.fixture(scope="module")
def pvs() -> list[PVInfo]:
    return ioc_pvs()


@pytest.fixture(scope="module")
def records() -> dict[str, tuple[str, dict[str, str]]]:
    """The committed database: PV name after the prefix -> (record type, fields)."""
    text = DB_FILE.read_text(encoding="utf-8")
    return {name: (rtype, dict(FIELD.findall(body))) for rtype, name, body in RECORD.findall(text)}


def expected_record(kind: str, access: str) -> tuple[str, dict[str, str]]:
    """The record type and the fields docs/interface.md section 4 implies for a PV of `kind` and `access`."""
    if kind == "command":
        return "bo", {"ZNAM": "Done", "ONAM": "Busy"}
    if kind.startswith("wf "):
        return "waveform", {"FTVL": "CHAR", "NELM": kind.split()[1]}
    rtype, _, states = kind.partition(" ")
    if rtype in ("bi", "bo", "mbbi", "mbbo"):
        keys = ("ZNAM", "ONAM") if rtype in ("bi", "bo") else ("ZRST", "ONST", "TWST", "THST")
        return rtype, dict(zip(keys, states.split("/"), strict=False))
    ro_rw = {"string": ("stringin", "stringout"), "long": ("longin", "longout"), "double": ("ai", "ao")}
    return ro_rw[kind][access == "RW"], {}


def test_committed_db_matches_the_generator(pvs):
    assert DB_FILE.read_text(encoding="utf-8") == dbgen.render_db(pvs), (
        "db_templates/dmagic.db is out of date: run python -m dmagic_ioc.ioc.tools.dbgen"
    )


def test_dbgen_check_fails_on_a_stale_file(tmp_path):
    stale = tmp_path / "dmagic.db"
    stale.write_text("# stale\n", encoding="utf-8")
    assert dbgen.main(["--check", "--output", str(stale)]) == 1
    assert dbgen.main(["--output", str(stale)]) == 0
    assert dbgen.main(["--check", "--output", str(stale)]) == 0


def test_one_record_per_pv(pvs, records):
    assert [pv.name for pv in pvs] == list(records)


@pytest.mark.parametrize(("name", "kind", "spec_kind", "access"), contract_pvs())
def test_every_contract_pv_has_a_record_of_the_spec_type(name, kind, spec_kind, access, records):
    assert name in records, f"no record for {name}"
    rtype, fields = records[name]
    want_type, want_fields = expected_record(spec_kind, access)
    assert rtype == want_type, f"{name}: {rtype}, the contract says {spec_kind} {access}"
    assert {key: fields.get(key) for key in want_fields} == want_fields
    if kind == "enum" or kind == "command":
        states = [fields[key] for key in STATE_FIELDS if key in fields]
        assert states == list(want_fields.values()), f"{name}: states {states}"


def test_desc_fits_the_field(records):
    for name, (_, fields) in records.items():
        assert 0 < len(fields["DESC"].encode("utf-8")) <= 40, name


def test_doubles_have_a_precision(records):
    assert all("PREC" in fields for rtype, fields in records.values() if rtype in ("ai", "ao"))


SAMPLE = f"""# dmagic-ioc

Intro text | with a pipe.

{pvtable.START_MARKER}
| PV | type | access | meaning |
|---|---|---|---|
| `Old` | long | RO | gone |
{pvtable.END_MARKER}

## Next section
"""


def test_readme_table_check_and_replace(pvs):
    table = pvtable.render_table(pvs)
    assert not pvtable.is_current(SAMPLE, table)
    updated = pvtable.replace_table(SAMPLE, table)
    assert pvtable.is_current(updated, table)
    assert updated.startswith(SAMPLE.split(pvtable.START_MARKER)[0] + pvtable.START_MARKER + "\n| PV |")
    assert updated.endswith(pvtable.END_MARKER + "\n\n## Next section\n")
    assert pvtable.replace_table(updated, table) == updated
    assert "| `Status` | wf 512 | RO |" in table
    assert "| `EmailMode` | mbbo New users/All users | RW |" in table
    assert len(table.splitlines()) == len(pvs) + 2


def test_readme_table_needs_both_markers():
    with pytest.raises(pvtable.MarkersError):
        pvtable.replace_table("no markers here", "| table |")
    with pytest.raises(pvtable.MarkersError):
        pvtable.replace_table(f"{pvtable.END_MARKER}\n{pvtable.START_MARKER}", "| table |")


def test_pvtable_command_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(SAMPLE, encoding="utf-8")
    assert pvtable.main(["--check", str(readme)]) == 1
    assert pvtable.main(["--write", str(readme)]) == 0
    assert pvtable.main(["--check", str(readme)]) == 0
    readme.write_text("no markers", encoding="utf-8")
    assert pvtable.main(["--check", str(readme)]) == 2


def test_docs_pv_table_is_current(pvs):
    """docs/pvs.md's PV table is generated: `python -m dmagic_ioc.ioc.tools.pvtable --write docs/pvs.md`."""
    assert pvtable.is_current((REPO / "docs" / "pvs.md").read_text(encoding="utf-8"), pvtable.render_table(pvs))
