"""Values from the schedule: text cleaned on its own, e-mail addresses, people, the user lists."""

from __future__ import annotations

import string

import pytest
from dmagic_ioc.ioc.domain.people import Person, clean_people, user_lists
from dmagic_ioc.ioc.domain.text import EMAIL_CHARS, TEXT_BYTES, TITLE_BYTES, clean_text, email_problem
from hypothesis import example, given
from hypothesis import strategies as st

from .domain_cases import any_text, deterministic, is_clean


@given(any_text, st.sampled_from([39, TEXT_BYTES, TITLE_BYTES]))
@example("Line one\r\nline two\ttabbed", TEXT_BYTES)
@example("\x1b[31mred\x07\x00", TEXT_BYTES)
@example("a\ud800b", 39)
@example("é" * 600, TEXT_BYTES)
def test_any_text_comes_out_clean_and_bounded(text, limit):
    cleaned, done = clean_text(text, limit)
    assert is_clean(cleaned, limit)
    assert clean_text(cleaned, limit) == (cleaned, "")  # cleaning again changes nothing
    if len(text.encode("utf-8", "surrogatepass")) <= limit and is_clean(text, limit):
        assert (cleaned, done) == (text, "")


@pytest.mark.parametrize(
    "text, cleaned, done",
    [
        ("  Operando\r\ntomography\tof  Li  ", "Operando tomography of Li", ""),  # spacing only: no warning
        ("Jean\x1b[2J-Luc\x07", "Jean[2J-Luc", "cleaned of control characters"),
        ("é" * 200, "é" * 127, "cut to 255 bytes"),  # 2 bytes each: cut between characters, never inside one
        ("\x00" + "x" * 300, "x" * 255, "cleaned of control characters and cut to 255 bytes"),
    ],
)
def test_clean_text_says_what_it_did(text, cleaned, done):
    assert clean_text(text) == (cleaned, done)


def test_a_10_mb_title_is_cut_to_what_proposal_title_holds():
    title, done = clean_text("Huge " + "ü" * 5_000_000, TITLE_BYTES)
    assert title == "Huge " + "ü" * 509 and len(title.encode("utf-8")) == 1023
    assert done == "cut to 1023 bytes"


@pytest.mark.parametrize(
    "address, problem",
    [
        ("mei.li@example.edu\r\nBcc: all@example.org", "a line break"),
        ("mei.li@example.edu\n", "a line break"),
        ("a@example.edu,b@example.org", "a comma"),
        ("a@example.edu;b@example.org", "a semicolon"),
        ("mei li@example.edu", "a space"),
        ("mei\tli@example.edu", "a control character"),
        ("mei\x00@example.edu", "a control character"),
        ("mei.li.example.edu", "no @"),
        ("a@b@example.edu", "not one plain address"),
        ("Mei Li <mei@example.edu>", "a space"),
        ("<mei@example.edu>", "not one plain address"),
        ("@example.edu", "not one plain address"),
        ("x" * 250 + "@example.edu", f"over {EMAIL_CHARS} characters"),
    ],
)
def test_email_problem_names_what_is_wrong(address, problem):
    assert email_problem(address) == problem


@pytest.mark.parametrize("address", ["mei.li@example.edu", "o'brien+tomo@lab.example.org", "zoë@beispiel.de"])
def test_plain_addresses_have_no_problem(address):
    assert email_problem(address) == ""


def test_a_bad_email_is_dropped_and_the_person_keeps_the_rest():
    zoe = Person("310010", "Zoë", "Müller", "zoe@example.de\r\nBcc: all@example.org", "Universität", is_pi=True)
    sven = Person("310012", "Sven", "Øberg", "sven@example.se,eve@example.com", "Exempel University")
    ann = Person("310013", "Ann", "Lee", "ann@example.org", "Lab")
    people, warnings = clean_people([zoe, sven, ann])
    assert people == (
        Person("310010", "Zoë", "Müller", "", "Universität", is_pi=True),
        Person("310012", "Sven", "Øberg", "", "Exempel University"),
        ann,
    )
    assert warnings == (
        "e-mail of Zoë Müller (310010) dropped (a line break)",
        "e-mail of Sven Øberg (310012) dropped (a comma)",
    )


def test_a_warning_names_the_person_shortened_and_by_badge():
    (person,), warnings = clean_people([Person("310011", "J" * 300, "D\x07Arcy")])
    assert person.first_name == "J" * TEXT_BYTES and person.last_name == "DArcy"
    who = "J" * 39 + "… (310011)"
    assert warnings == (f"first name of {who} cut to 255 bytes", f"last name of {who} cleaned of control characters")
    nameless = clean_people([Person("310011", last_name="\x1b")])[1]
    assert nameless == ("last name of badge 310011 cleaned of control characters",)


@deterministic
@given(
    st.lists(
        st.builds(Person, badge=st.text(string.digits, min_size=1, max_size=12), first_name=any_text,
                  last_name=any_text, email=any_text, institution=any_text, is_pi=st.booleans()),
        max_size=5,
    )
)  # fmt: skip
def test_any_people_come_out_clean_and_each_warning_names_a_person(people):
    cleaned, warnings = clean_people(people)
    assert len(cleaned) == len(people)
    for before, after in zip(people, cleaned, strict=True):
        assert after.badge == before.badge and after.is_pi == before.is_pi
        assert all(is_clean(value, TEXT_BYTES) for value in (after.first_name, after.last_name, after.institution))
        assert after.email == "" or (email_problem(after.email) == "" and after.email == before.email.strip())
        if before.email.strip() and not after.email:
            assert any(w.startswith("e-mail of ") and after.badge in w and " dropped (" in w for w in warnings)
    assert all(any(f"({p.badge})" in w or f"badge {p.badge}" in w for p in cleaned) for w in warnings)
    assert clean_people(cleaned) == (cleaned, ())


def test_user_lists_stay_unambiguous():
    people = (
        Person("310001", "Mei", "Li, Jr.", "mei@example.edu"),
        Person("310002", "Bo", "Ngo", "a@example.org,b@example.org"),  # e.g. kept from before the cleaning
        Person("310003", "Cy", "Sá", ""),
    )
    assert user_lists(people) == ("Mei Li Jr.,Bo Ngo,Cy Sá", "310001,310002,310003", "mei@example.edu,,")


def test_user_lists_name_a_person_without_a_name_by_username_never_an_empty_entry():
    """A manual experiment's other badges (`Manual:Badges "310010, 310012"`) may come without a name."""
    people = (Person("310010", "Zoë", "Müller", "zoe@example.de", is_pi=True), Person("310012"))
    assert user_lists(people) == ("Zoë Müller,d310012", "310010,310012", "zoe@example.de,")


@deterministic
@given(st.lists(st.tuples(any_text, any_text, any_text), max_size=8))
def test_user_lists_of_any_people_hold_one_entry_per_person_listed(rows):
    people, _ = clean_people(Person(str(i), first, last, email) for i, (first, last, email) in enumerate(rows))
    names, badges, emails = user_lists(people)
    listed = len(badges.split(",")) if badges else 0
    assert listed == len(people)  # cleaned values are short: all fit
    if listed:
        assert len(names.split(",")) == len(emails.split(",")) == listed
