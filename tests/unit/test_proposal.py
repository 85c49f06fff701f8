"""A proposal, its beamtime and its ESAF as separate values: who is on which, who gets access, cleaning."""

from __future__ import annotations

import string
from datetime import timedelta

import pytest
from dmagic_ioc.ioc.domain.beamtime import Beamtime, clean_beamtime
from dmagic_ioc.ioc.domain.esaf import Esaf, clean_esaf
from dmagic_ioc.ioc.domain.experiment import (
    USER_SOURCES,
    Experiment,
    ExperimentUser,
    beamtime_users,
    proposal_of,
    with_contacts,
)
from dmagic_ioc.ioc.domain.people import Person
from dmagic_ioc.ioc.domain.proposal import Proposal, clean_proposal
from dmagic_ioc.ioc.domain.text import STRING_BYTES
from hypothesis import given
from hypothesis import strategies as st

from .domain_cases import any_text, deterministic, utc

START = utc(2026, 11, 18, 14)
MEI = Person("310001", "Mei", "Li", "mei@example.edu", "Example State University")
BO = Person("310002", "Bo", "Ngo", "bo@example.org", "UChicago", is_pi=True)
EVA = Person("310009", "Eva", "Sá", "eva@example.org", "Argonne")
PROPOSAL = Proposal("1013377", "Foam", (MEI, BO), kind="General User", mail_in=True)


def test_a_beamtime_reads_its_proposal_and_its_esaf():
    beamtime = Beamtime(PROPOSAL, START, START + timedelta(days=3), Esaf("281002", "10.11578/esaf/281002", (EVA,)))
    assert (beamtime.gup, beamtime.title, beamtime.people, beamtime.proposal_type) == (
        "1013377", "Foam", (MEI, BO), "General User",
    )  # fmt: skip
    assert (beamtime.proprietary, beamtime.mail_in) == (False, True)
    assert beamtime.pi is BO and beamtime.people_pi_first == (BO, MEI) == PROPOSAL.people_pi_first
    assert (beamtime.esaf, beamtime.esaf_doi, beamtime.esaf_people) == ("281002", "10.11578/esaf/281002", (EVA,))


def test_a_beamtime_without_an_esaf_reads_empty_esaf_values():
    beamtime = Beamtime(PROPOSAL, START, START + timedelta(days=3))
    assert beamtime.esaf_form is None
    assert (beamtime.esaf, beamtime.esaf_doi, beamtime.esaf_people) == ("", "", ())


def test_an_esaf_is_numbered_by_the_schedule_or_absent():
    assert Esaf.numbered("281002") == Esaf("281002")
    assert Esaf.numbered("") is None


def test_the_esaf_read_lists_only_who_is_not_on_the_proposal():
    """Bo is on both: the proposal lists him (as its PI); the ESAF's list keeps the others, in its order."""
    bo_on_the_esaf = Person("310002", "Bo", "Ngo", "other@example.org")
    read = Esaf("281002").read("10.11578/esaf/281002", [EVA, bo_on_the_esaf, MEI], on_proposal=PROPOSAL.people)
    assert read == Esaf("281002", "10.11578/esaf/281002", (EVA,))
    assert Esaf("281002").read("", [EVA], on_proposal=()) == Esaf("281002", "", (EVA,))


def test_a_beamtime_with_its_esaf_read_is_cleaned_as_the_schedule_is():
    beamtime = Beamtime(PROPOSAL, START, START + timedelta(days=3), Esaf("281002"))
    eve = Person("310010", "Eve", "Doe", "eve@example.org\r\nBcc: all@example.org")
    read = beamtime.with_esaf_read("10.11578/esaf/281002", [EVA, BO, eve])
    assert read.esaf_people == (EVA, Person("310010", "Eve", "Doe", ""))
    assert (read.esaf, read.esaf_doi, read.proposal) == ("281002", "10.11578/esaf/281002", PROPOSAL)
    assert read.warnings == ("e-mail of Eve Doe (310010) dropped (a line break)",)


def test_a_beamtime_without_an_esaf_has_none_to_read():
    beamtime = Beamtime(PROPOSAL, START, START + timedelta(days=3))
    assert beamtime.with_esaf_read("10.11578/esaf/1", [EVA]) is beamtime


def test_clean_proposal_names_each_change_and_the_people_the_lists_leave_out():
    people = tuple(Person(f"{310000 + i}", "N" * 200, f"Person{i}", f"p{i}@example.org") for i in range(60))
    raw = Proposal("1013377\x07", "Foam\r\nand more", people, kind="General\tUser")
    proposal, warnings = clean_proposal(raw)
    assert (proposal.gup, proposal.title, proposal.kind) == ("1013377", "Foam and more", "General User")
    assert warnings[0] == "GUP cleaned of control characters"
    assert warnings[1].startswith("Users:Names, Users:Badges, Users:Emails list the first ")
    assert clean_proposal(proposal) == (proposal, warnings[1:])  # the lists still leave the same people out


def test_clean_esaf_names_each_change():
    esaf, warnings = clean_esaf(Esaf("2" * 50, "10.11578/\x1b[2Jesaf", (Person("310009", "E\x07va"),)))
    assert esaf == Esaf("2" * STRING_BYTES, "10.11578/[2Jesaf", (Person("310009", "Eva"),))
    assert warnings == (
        f"ESAF cut to {STRING_BYTES} bytes",
        "ESAF DOI cleaned of control characters",
        "first name of Eva (310009) cleaned of control characters",
    )
    assert clean_esaf(esaf) == (esaf, ())


def test_clean_beamtime_names_the_proposal_s_changes_then_the_esaf_s():
    raw = Beamtime(Proposal("1", "T\x07"), START, START + timedelta(days=1), Esaf("2\x07", "", (Person("3", "\x1b"),)))
    beamtime = clean_beamtime(raw)
    assert beamtime.warnings == (
        "title cleaned of control characters",
        "ESAF cleaned of control characters",
        "first name of badge 3 cleaned of control characters",
    )
    assert (beamtime.title, beamtime.esaf, beamtime.esaf_people) == ("T", "2", (Person("3"),))
    assert clean_beamtime(Beamtime(PROPOSAL, START, START)).esaf_form is None


people_of_any_text = st.lists(
    st.builds(Person, badge=st.text(string.digits, min_size=1, max_size=12), first_name=any_text, email=any_text),
    max_size=3,
)


@deterministic
@given(any_text, any_text, any_text, people_of_any_text, st.one_of(st.none(), st.tuples(any_text, any_text)),
       people_of_any_text)  # fmt: skip
def test_cleaning_any_beamtime_twice_changes_nothing_more(gup, title, kind, people, esaf, esaf_people):
    form = Esaf(esaf[0], esaf[1], tuple(esaf_people)) if esaf else None
    cleaned = clean_beamtime(Beamtime(Proposal(gup, title, tuple(people), kind), START, START, form))
    again = clean_beamtime(cleaned)
    assert again == cleaned and again.warnings == cleaned.warnings


# --------------------------------------------------------------------------- who gets access


def test_a_beamtime_s_users_are_its_proposal_s_pi_first_then_its_esaf_s():
    beamtime = Beamtime(PROPOSAL, START, START, Esaf("281002", people=(EVA,)))
    assert beamtime_users(beamtime) == [
        ExperimentUser("d310002", "Bo Ngo", "bo@example.org", "UChicago", "proposal"),
        ExperimentUser("d310001", "Mei Li", "mei@example.edu", "Example State University", "proposal"),
        ExperimentUser("d310009", "Eva Sá", "eva@example.org", "Argonne", "esaf"),
    ]


def test_contacts_come_after_the_people_and_a_contact_on_the_proposal_keeps_its_place():
    users = beamtime_users(Beamtime(PROPOSAL, START, START))
    assert with_contacts(users, ["100001", "310001", "100001"]) == [*users, ExperimentUser("d100001", source="contact")]
    assert with_contacts([], ["100001"]) == [ExperimentUser("d100001", source="contact")]


def test_a_user_s_source_is_one_of_the_known_ones():
    assert set(USER_SOURCES) == {"proposal", "esaf", "contact", "manual", "added", "dm"}
    with pytest.raises(ValueError, match="source 'schedule' is not one of proposal, esaf"):
        ExperimentUser("d1", source="schedule")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "sources, pi",
    [
        (("contact", "esaf", "proposal", "proposal"), "d2"),
        (("added", "manual"), "d1"),
        (("dm", "contact", "esaf", "added"), None),
        ((), None),
    ],
)
def test_the_pi_user_is_the_first_from_the_proposal_or_create_manual(sources, pi):
    experiment = Experiment("E", users=tuple(ExperimentUser(f"d{i}", source=s) for i, s in enumerate(sources)))
    assert (experiment.pi_user.username if experiment.pi_user else None) == pi


def test_an_experiment_s_proposal_as_dm_has_it():
    experiment = Experiment("E", "Foam", "1013377", "281002", START, START + timedelta(days=3), users=(
        ExperimentUser("d100001", source="contact"),
        ExperimentUser("d310001", "Mei Li", "mei@example.edu", "ESU", "proposal"),
        ExperimentUser("d310002", "Bo Ngo", source="proposal"),
        ExperimentUser("d310009", "Eva Sá", source="esaf"),
        ExperimentUser("d310077", source="added"),
    ))  # fmt: skip
    beamtime = proposal_of(experiment)
    assert beamtime.proposal == Proposal("1013377", "Foam", (
        Person("310001", "Mei", "Li", "mei@example.edu", "ESU", is_pi=True),
        Person("310002", "Bo", "Ngo"),
        Person("310009", "Eva", "Sá"),
    ))  # fmt: skip
    assert (beamtime.start, beamtime.end, beamtime.esaf_form) == (START, START + timedelta(days=3), Esaf("281002"))
    undated = proposal_of(Experiment("M"))
    assert undated.esaf_form is None and undated.start == undated.end == utc(1970, 1, 1)
