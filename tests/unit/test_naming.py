"""Names: folder-safe last names, names that cannot escape their folder, experiment names, badges."""

from __future__ import annotations

import string
import unicodedata

import pytest
from dmagic_ioc.ioc.domain.errors import InputError
from dmagic_ioc.ioc.domain.naming import check_name, experiment_name, folder_safe, parse_badges
from hypothesis import example, given
from hypothesis import strategies as st

from .domain_cases import deterministic

TEMPLATE = "{year_month}-{pi_last_name}-{gup}"


# --------------------------------------------------------------------------- folder_safe


@pytest.mark.parametrize(
    "name, safe",
    [
        ("Müller-Łukasiewicz", "MullerLukasiewicz"),
        ("Øberg", "Oberg"),
        ("D'Arcy", "DArcy"),
        ("van der Berg", "vanderBerg"),
        ("Straße", "Strasse"),
        ("STRAẞE", "STRASSE"),
        ("Þórsdóttir", "Thorsdottir"),
        ("Æbelø", "AEbelo"),
        ("Œuvre", "OEuvre"),
        ("Đorđević", "Dordevic"),
        ("Yılmaz", "Yilmaz"),
        ("O'Brien-Smith", "OBrienSmith"),
        ("O’Brien", "OBrien"),  # typographic apostrophe
        ("Nguyễn", "Nguyen"),
        ("Šťastný", "Stastny"),
        ("Ångström", "Angstrom"),
        ("Núñez", "Nunez"),
        ("Çelik", "Celik"),
        ("Şahin", "Sahin"),
        ("Łódź", "Lodz"),
        ("Ðalsson", "Dalsson"),
        ("Smith Jr.", "SmithJr"),
        ("de la Cruz y Ñández", "delaCruzyNandez"),
        ("Ｓｍｉｔｈ", "Smith"),  # full-width letters
        ("Smith3", "Smith3"),
        ("李", ""),
        ("Παπαδόπουλος", ""),
        ("Иванов", ""),
        ("", ""),
    ],
)
def test_folder_safe(name, safe):
    assert folder_safe(name) == safe


@deterministic
@given(st.text())
def test_folder_safe_output_is_ascii_letters_and_digits(text):
    assert set(folder_safe(text)) <= set(string.ascii_letters + string.digits)


@deterministic
@given(st.text(alphabet=string.ascii_letters + string.digits))
def test_folder_safe_keeps_ascii_letters_and_digits(text):
    assert folder_safe(text) == text


# --------------------------------------------------------------------------- check_name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "a/b",
        "/abs",
        "..",
        "../x",
        "x/..",
        "a..b",
        "a\\b",
        ".hidden",
        " .hidden",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",  # C1 control
    ],
)
def test_check_name_refuses(name):
    with pytest.raises(InputError) as refused:
        check_name(name, "SelectName")
    assert "SelectName" in str(refused.value)


@pytest.mark.parametrize("name", ["2026-10-Smith-1012039", "a.b", "Ünïcode-2026", "x_y-1"])
def test_check_name_accepts_and_strips(name):
    assert check_name(f"  {name} ") == name


@deterministic
@given(st.text(), st.text(), st.sampled_from(["/", "..", "\\"]))
@example("", "", "/")
def test_names_with_a_separator_or_dotdot_are_refused(before, after, bad):
    with pytest.raises(InputError):
        check_name(before + bad + after)


@deterministic
@given(st.text())
def test_accepted_names_cannot_escape_their_folder(text):
    try:
        name = check_name(text)
    except InputError:
        return
    assert name
    assert "/" not in name and "\\" not in name and ".." not in name
    assert not name.startswith(".")
    assert not any(unicodedata.category(ch) == "Cc" for ch in name)
    assert name == name.strip()


# --------------------------------------------------------------------------- experiment_name


def test_experiment_name_fills_the_template():
    name = experiment_name(TEMPLATE, year_month="2026-10", pi_last_name="Müller-Łukasiewicz", gup="1012039")
    assert name == "2026-10-MullerLukasiewicz-1012039"


def test_experiment_name_other_template():
    assert experiment_name("{gup}_{pi_last_name}", year_month="2026-10", pi_last_name="D'Arcy", gup="7") == "7_DArcy"


def test_experiment_name_manual_default():
    assert experiment_name(TEMPLATE, year_month="2026-11", pi_last_name="Staff", gup="0") == "2026-11-Staff-0"


@pytest.mark.parametrize("gup", ["../etc", "1/2", "a\\b"])
def test_experiment_name_refuses_a_gup_that_escapes(gup):
    with pytest.raises(InputError):
        experiment_name(TEMPLATE, year_month="2026-10", pi_last_name="Li", gup=gup)


def test_experiment_name_refuses_a_template_that_escapes():
    with pytest.raises(InputError):
        experiment_name("../{gup}", year_month="2026-10", pi_last_name="Li", gup="1")


@deterministic
@given(st.text(), st.text(alphabet=string.digits, min_size=1))
def test_experiment_name_any_last_name_gives_a_safe_name(last_name, gup):
    name = experiment_name(TEMPLATE, year_month="2026-10", pi_last_name=last_name, gup=gup)
    assert name == f"2026-10-{folder_safe(last_name)}-{gup}"
    assert check_name(name) == name


# --------------------------------------------------------------------------- parse_badges


@pytest.mark.parametrize(
    "text, badges",
    [
        ("310011", ("310011",)),
        ("310011,310012", ("310011", "310012")),
        (" 310011 , 310012 ", ("310011", "310012")),
        ("310012,310011,310012", ("310012", "310011")),
        ("012345", ("012345",)),
        ("310010, 310012", ("310010", "310012")),  # as typed into Manual:Badges
        ("310011,", ("310011",)),  # empty entries are let pass
        (",310011", ("310011",)),
        ("310011,,310012", ("310011", "310012")),
        (" 310011 , ,\t310012 , ", ("310011", "310012")),
    ],
)
def test_parse_badges(text, badges):
    assert parse_badges(text) == badges


@pytest.mark.parametrize(
    "text",
    ["", "  ", ",", ",,", " , ", "12a", "310011,12a", "3 1", "310 011", "-1", "1.5", "d310011", "310011;310012"],
)
def test_parse_badges_refuses(text):
    with pytest.raises(InputError) as refused:
        parse_badges(text)
    assert "Badges" in str(refused.value)


def test_parse_badges_names_the_bad_entries():
    with pytest.raises(InputError, match="'12a'"):
        parse_badges("310011,12a")


@pytest.mark.parametrize("text", ["١٢٣٤٥٦", "３１００１１", "310011,٣١٠٠١٢"])
def test_parse_badges_refuses_non_ascii_digits(text):
    """Arabic-Indic or full-width digits are not badge numbers (they would make DM usernames like `d١٢٣`)."""
    with pytest.raises(InputError):
        parse_badges(text)


@deterministic
@given(st.lists(st.text(alphabet=string.digits, min_size=1, max_size=12), min_size=1))
def test_parse_badges_keeps_order_and_drops_duplicates(badges):
    assert parse_badges(",".join(badges)) == tuple(dict.fromkeys(badges))


@deterministic
@given(st.text())
@example("١٢٣")
def test_parse_badges_accepted_output_is_ascii_digits(text):
    try:
        badges = parse_badges(text)
    except InputError:
        return
    assert badges
    assert len(set(badges)) == len(badges)
    for badge in badges:
        assert badge and set(badge) <= set(string.digits)
    stripped = [entry.strip() for entry in text.split(",")]
    assert list(badges) == list(dict.fromkeys(stripped))
