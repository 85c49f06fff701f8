"""The file schedule: runs and beamtimes from a YAML file, local times, errors that name the entry."""

from __future__ import annotations

import textwrap
import unicodedata
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
import yaml
from dmagic_ioc.adapters.schedule_file import FileSchedule
from dmagic_ioc.ioc.domain.beamtime import select_beamtime, select_run
from dmagic_ioc.ioc.domain.errors import SchedulingError
from dmagic_ioc.ioc.domain.people import Person
from dmagic_ioc.ioc.domain.text import TEXT_BYTES, TITLE_BYTES, email_problem
from hypothesis import given, settings
from hypothesis import strategies as st

CHICAGO = ZoneInfo("America/Chicago")
UTC = timezone.utc

SCHEDULE = """\
runs:
  - {name: 2026-2, start: 2026-06-01 08:00, end: 2026-09-29 08:00}
  - {name: 2026-3, start: 2026-09-29 08:00, end: 2026-12-22 08:00}
beamtimes:
  - gup: 1012039
    title: "Operando tomography of Li-metal anodes: dendrite growth — ünïcode"
    type: General User
    start: 2026-10-14 08:00
    end: 2026-10-17T08:00:00-05:00
    esaf: 281001
    proprietary: false
    mail_in: true
    people:
      - {badge: 310002, first_name: Bo, last_name: Li, email: bo@example.org, institution: UChicago}
      - {badge: 310001, first_name: Mei, last_name: Müller-Łukasiewicz, email: mei@example.edu,
         institution: Example State University, pi: true}
  - gup: 1012040
    title: Second
    start: 2026-10-17 08:00
    end: 2026-10-20 08:00
    people:
      - {badge: 310003}
  - gup: 1009999
    title: Last run
    start: 2026-07-01
    end: 2026-07-03
"""


def write(tmp_path, text: str, name: str = "schedule.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def schedule(tmp_path) -> FileSchedule:
    return FileSchedule(write(tmp_path, SCHEDULE), CHICAGO)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_runs(schedule):
    runs = schedule.runs()
    assert [run.name for run in runs] == ["2026-2", "2026-3"]
    assert runs[1].start == utc(2026, 9, 29, 13)  # 08:00 CDT
    assert runs[1].end == utc(2026, 12, 22, 14)  # 08:00 CST
    assert select_run(runs, utc(2026, 10, 15)).name == "2026-3"


def test_beamtimes_of_a_run(schedule):
    run_3 = schedule.runs()[1]
    beamtimes = schedule.beamtimes(run_3)
    assert [b.gup for b in beamtimes] == ["1012039", "1012040"]
    first = beamtimes[0]
    assert first.title == "Operando tomography of Li-metal anodes: dendrite growth — ünïcode"
    assert first.proposal_type == "General User"
    assert first.esaf == "281001"
    assert (first.proprietary, first.mail_in) == (False, True)
    assert first.start == utc(2026, 10, 14, 13)
    assert first.end == utc(2026, 10, 17, 13)
    assert first.people[1] == Person(
        "310001", "Mei", "Müller-Łukasiewicz", "mei@example.edu", "Example State University", is_pi=True
    )
    assert first.pi.badge == "310001"
    assert beamtimes[1].people == (Person("310003"),)
    assert beamtimes[1].pi.badge == "310003"
    assert [b.gup for b in schedule.beamtimes(schedule.runs()[0])] == ["1009999"]


def test_times_without_offset_are_local_time(schedule):
    first = schedule.beamtimes(schedule.runs()[1])[0]
    assert first.start.utcoffset().total_seconds() == -5 * 3600
    assert first.year_month == "2026-10"
    summer = schedule.beamtimes(schedule.runs()[0])[0]
    assert summer.start == utc(2026, 7, 1, 5)  # a bare date: local midnight, CDT


def test_select_from_the_file(schedule):
    run = select_run(schedule.runs(), utc(2026, 10, 17, 13))
    assert select_beamtime(schedule.beamtimes(run), utc(2026, 10, 17, 13)).gup == "1012040"


def test_times_in_another_zone(tmp_path):
    path = write(tmp_path, "beamtimes: [{gup: 1, start: 2026-10-14 08:00, end: 2026-10-15}]\n")
    (beamtime,) = FileSchedule(path, ZoneInfo("Europe/Berlin")).beamtimes(FileSchedule(path, CHICAGO).runs()[0])
    assert beamtime.start == utc(2026, 10, 14, 6)


def test_dates_stay_text(tmp_path):
    """YAML would turn these into timestamps (and shift offsets to UTC); they must stay as written."""
    path = write(
        tmp_path,
        """\
        beamtimes:
          - gup: 1
            title: 2001-12-14t21:59:43.10-05:00
            type: 2026-10-14
            start: 2026-10-14 08:00:00
            end: 2026-10-15T08:00:00-05:00
        """,
    )
    schedule = FileSchedule(path, CHICAGO)
    (beamtime,) = schedule.beamtimes(schedule.runs()[0])
    assert beamtime.title == "2001-12-14t21:59:43.10-05:00"
    assert beamtime.proposal_type == "2026-10-14"
    assert beamtime.start == utc(2026, 10, 14, 13)  # local, not UTC as YAML would say
    assert beamtime.end == utc(2026, 10, 15, 13)


def test_without_runs_one_run_spans_all_time(tmp_path):
    schedule = FileSchedule(write(tmp_path, "beamtimes: [{gup: 1, start: 2026-10-14, end: 2026-10-15}]\n"), CHICAGO)
    (run,) = schedule.runs()
    assert run.contains(utc(2026, 10, 14, 12))
    assert [b.gup for b in schedule.beamtimes(run)] == ["1"]


def test_empty_file_has_no_beamtimes(tmp_path):
    schedule = FileSchedule(write(tmp_path, ""), CHICAGO)
    (run,) = schedule.runs()
    assert schedule.beamtimes(run) == []


def test_numbers_with_leading_zeros_stay_as_written(tmp_path):
    """A badge or GUP written `012345` is not a YAML 1.1 octal number (it would become 5349)."""
    path = write(
        tmp_path,
        """\
        beamtimes:
          - gup: 0123
            esaf: 0700
            start: 2026-10-14
            end: 2026-10-15
            people: [{badge: 012345}]
        """,
    )
    schedule = FileSchedule(path, CHICAGO)
    (beamtime,) = schedule.beamtimes(schedule.runs()[0])
    assert beamtime.people[0].badge == "012345"
    assert beamtime.gup == "0123"
    assert beamtime.esaf == "0700"


# --------------------------------------------------------------------------- bad values


def write_beamtime(path, **changes) -> None:
    """A schedule of one beamtime with two people, `changes` made to it (`person_0`, `person_1`: their fields)."""
    people = [
        {"badge": 310010, "first_name": "Zoë", "last_name": "Müller", "email": "zoe@example.de", "pi": True},
        {"badge": 310012, "first_name": "Sven", "last_name": "Øberg", "email": "sven@example.se"},
    ]
    for index, person in enumerate(people):
        person.update(changes.pop(f"person_{index}", {}))
    beamtime = {"gup": 1013377, "title": "Foam", "start": "2026-11-18 08:00", "end": "2026-11-25 08:00"}
    beamtime.update(changes, people=people)
    path.write_text(yaml.safe_dump({"beamtimes": [beamtime]}, allow_unicode=True), encoding="utf-8")


def read_beamtime(path):
    schedule = FileSchedule(path, CHICAGO)
    (beamtime,) = schedule.beamtimes(schedule.runs()[0])
    return beamtime


def test_bad_values_are_cleaned_each_on_its_own_and_named(tmp_path):
    """A line break or comma in an e-mail drops that e-mail alone; control characters leave a name; a
    10 MB title is cut to what ProposalTitle holds (libyaml reads it in a fraction of a second)."""
    path = tmp_path / "schedule.yaml"
    write_beamtime(
        path,
        title="Huge " + "x" * 10_000_000,
        person_0={"email": "zoe@example.de\r\nBcc: everyone@example.org", "first_name": "Zo\x07ë\x1b[2J"},
        person_1={"email": "sven@example.se,eve@example.com"},
    )
    beamtime = read_beamtime(path)
    assert len(beamtime.title.encode("utf-8")) == TITLE_BYTES
    assert beamtime.people == (
        Person("310010", "Zoë[2J", "Müller", "", is_pi=True),
        Person("310012", "Sven", "Øberg", ""),
    )
    assert beamtime.warnings == (
        "title cut to 1023 bytes",
        "first name of Zoë[2J Müller (310010) cleaned of control characters",
        "e-mail of Zoë[2J Müller (310010) dropped (a line break)",
        "e-mail of Sven Øberg (310012) dropped (a comma)",
    )


# Any text a YAML file holds (no lone surrogates: they are not UTF-8).
yaml_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=2000)


@settings(max_examples=150, deadline=None)
@given(title=yaml_text, first_name=yaml_text, email=yaml_text, institution=yaml_text)
def test_any_text_in_the_file_comes_out_clean_and_bounded(tmp_path_factory, title, first_name, email, institution):
    path = tmp_path_factory.mktemp("schedule") / "schedule.yaml"
    write_beamtime(path, title=title, person_1={"first_name": first_name, "email": email, "institution": institution})
    beamtime = read_beamtime(path)  # never raises: text is never a reason to refuse
    sven = beamtime.people[1]
    for value, limit in [(beamtime.title, TITLE_BYTES), (sven.first_name, TEXT_BYTES), (sven.institution, TEXT_BYTES)]:
        assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)
        assert len(value.encode("utf-8")) <= limit and value == " ".join(value.split())
    assert sven.email == "" or email_problem(sven.email) == ""
    if email.strip() and not sven.email:
        assert any(w.startswith("e-mail of ") and "310012" in w and " dropped (" in w for w in beamtime.warnings)


def test_a_file_that_is_not_utf8_is_refused_saying_so(tmp_path):
    path = tmp_path / "schedule.yaml"
    path.write_bytes("beamtimes: [{gup: 1, title: Müller, start: 2026-10-14, end: 2026-10-15}]\n".encode("latin-1"))
    with pytest.raises(SchedulingError, match="is not UTF-8 text"):
        FileSchedule(path, CHICAGO).runs()


def test_an_error_quotes_a_huge_value_shortened(tmp_path):
    message = error_of(tmp_path, f"beamtimes: [{{gup: 1, start: {'9' * 1_000_000}, end: 2026-10-15}}]\n")
    assert "beamtimes[0].start '99999" in message and len(message) < 300


# --------------------------------------------------------------------------- errors


def error_of(tmp_path, text: str, call: str = "beamtimes") -> str:
    schedule = FileSchedule(write(tmp_path, text), CHICAGO)
    with pytest.raises(SchedulingError) as error:
        schedule.runs() if call == "runs" else schedule.beamtimes(schedule.runs()[0])
    return str(error.value)


def test_bad_time_names_the_entry(tmp_path):
    message = error_of(
        tmp_path,
        """\
        beamtimes:
          - {gup: 1, start: 2026-10-14, end: 2026-10-15}
          - {gup: 2, start: next tuesday, end: 2026-10-15}
        """,
    )
    assert "beamtimes[1].start" in message
    assert "next tuesday" in message
    assert "schedule.yaml" in message


def test_bad_run_names_the_entry(tmp_path):
    text = "runs: [{name: a, start: 2026-01-01, end: 2026-02-01}, {name: b, start: 2026-02-01}]\n"
    message = error_of(tmp_path, text, "runs")
    assert "runs[1].end is missing" in message


@pytest.mark.parametrize(
    "entry, words",
    [
        ("{start: 2026-10-14, end: 2026-10-15}", "beamtimes[0].gup is missing"),
        ("{gup: 1, start: 2026-10-15, end: 2026-10-14}", "beamtimes[0]: end is not after start"),
        ("{gup: 1, start: 2026-10-14, end: 2026-10-15, people: {badge: 1}}", "beamtimes[0].people must be a list"),
        ("{gup: 1, start: 2026-10-14, end: 2026-10-15, people: [{first_name: Ann}]}", "beamtimes[0].people[0].badge"),
        ("{gup: 1, start: 2026-10-14, end: 2026-10-15, people: [{badge: 12a}]}", "beamtimes[0].people[0].badge"),
        ("{gup: 1, start: 2026-10-14, end: 2026-10-15, people: [310001]}", "beamtimes[0].people[0] must be a mapping"),
        ("{gup: 1, start: 2026-10-14, end: 2026-10-15, proprietary: maybe}", "beamtimes[0].proprietary"),
        ("{gup: [1], start: 2026-10-14, end: 2026-10-15}", "beamtimes[0].gup must be text"),
    ],
)
def test_bad_entries_name_the_entry(tmp_path, entry, words):
    assert words in error_of(tmp_path, f"beamtimes:\n  - {entry}\n")


def test_person_without_badge(tmp_path):
    message = error_of(
        tmp_path,
        """\
        beamtimes:
          - gup: 1
            start: 2026-10-14
            end: 2026-10-15
            people:
              - {badge: 310001, last_name: Li}
              - {first_name: Ann, last_name: Smith, email: ann@example.org}
        """,
    )
    assert "beamtimes[0].people[1].badge is missing" in message


def test_missing_file(tmp_path):
    schedule = FileSchedule(tmp_path / "nope.yaml", CHICAGO)
    with pytest.raises(SchedulingError, match="cannot read the schedule .*nope.yaml"):
        schedule.runs()


def test_bad_yaml(tmp_path):
    schedule = FileSchedule(write(tmp_path, "beamtimes: [{gup: 1, start: [\n"), CHICAGO)
    with pytest.raises(SchedulingError, match="not valid YAML"):
        schedule.runs()


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n"])
def test_not_a_mapping(tmp_path, text):
    assert "must be a mapping" in error_of(tmp_path, text, "runs")


def test_beamtimes_not_a_list(tmp_path):
    assert "'beamtimes' must be a list" in error_of(tmp_path, "beamtimes: {gup: 1}\n")


def test_file_is_read_again_after_an_edit(tmp_path):
    path = write(tmp_path, "beamtimes: [{gup: 1, title: Before, start: 2026-10-14, end: 2026-10-15}]\n")
    schedule = FileSchedule(path, CHICAGO)
    run = schedule.runs()[0]
    assert [b.title for b in schedule.beamtimes(run)] == ["Before"]
    write(tmp_path, "beamtimes: [{gup: 2, title: After, start: 2026-10-14, end: 2026-10-15}]\n")
    assert [(b.gup, b.title) for b in schedule.beamtimes(run)] == [("2", "After")]
    path.write_text("beamtimes: [{gup: 2, start: broken}]\n", encoding="utf-8")
    with pytest.raises(SchedulingError):
        schedule.beamtimes(run)


@pytest.mark.parametrize(
    "text, call, words",
    [
        ("beamtimes:\n  - {gup: 1, start: 2026-10-14, end: 2026-10-15, people: [{badge: 310001, firstname: Ann}]}\n",
         "beamtimes", "beamtimes[0].people[0].firstname: unknown key of a person (known: badge, first_name, "),
        ("beamtimes:\n  - {gup: 1, start: 2026-10-14, end: 2026-10-15}\n  - {gup: 2, start: 2026-10-16, "
         "end: 2026-10-17, mailin: true}\n", "beamtimes", "beamtimes[1].mailin: unknown key of a beamtime"),
        ("runs: [{name: a, start: 2026-01-01, end: 2026-02-01, ende: 2026-03-01}]\n", "runs",
         "runs[0].ende: unknown key of a run"),
        ("beamtime:\n  - {gup: 1, start: 2026-10-14, end: 2026-10-15}\n", "runs",
         "beamtime: unknown key (known: runs, beamtimes)"),
        ("beamtimes: [1, 2]\n", "beamtimes", "beamtimes[0] must be a mapping"),
    ],
)  # fmt: skip
def test_an_unknown_key_is_refused_naming_the_file_the_entry_and_the_key(tmp_path, text, call, words):
    """A misspelled key (`firstname:`) would otherwise be lost without a word: the person without a name."""
    message = error_of(tmp_path, text, call)
    assert words in message and "schedule.yaml" in message


def test_a_schedule_this_user_cannot_reach_is_a_config_problem_not_a_traceback(tmp_path, monkeypatch):
    """A schedule (or any folder the config names) behind a folder the IOC's account may not enter: `--check`
    and the start name it in one line. Root enters every folder, so the refusal is played here."""
    from pathlib import Path

    from dmagic_ioc.ioc.settings.load import ConfigError, settings_from_dict
    from dmagic_ioc.ioc.settings.preflight import preflight_problems

    locked = tmp_path / "locked"
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self == locked or locked in self.parents:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    raw = {
        "ioc": {"prefix": "t:", "state_dir": str(locked / "state")},
        "beamline": {"name": "2-BM", "timezone": "America/Chicago"},
        "scheduling": {"backend": "file", "path": str(locked / "schedule.yaml")},
        "dm": {"backend": "local", "data_top_dir": str(tmp_path), "storage_root": str(locked / "storage")},
        "email": {"enabled": True, "sender": "a@example.org", "template": str(locked / "t.txt")},
    }
    with pytest.raises(ConfigError) as refused:
        settings_from_dict(raw, base=tmp_path)
    problems = refused.value.problems
    assert f"scheduling.path: {locked / 'schedule.yaml'} cannot be reached by user" in "\n".join(problems)
    assert any(p.startswith("email.template:") and "Permission denied" in p for p in problems)
    preflight = preflight_problems(refused.value.settings)
    assert any(p.startswith("dm.storage_root:") and "cannot be reached" in p for p in preflight)
    assert any(p.startswith("ioc.state_dir:") and "cannot be reached" in p for p in preflight)
