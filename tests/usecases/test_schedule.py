"""Refresh and Tag: which beamtime is published, what is said about it, which beamtime is raised to follow
(dm.follow_schedule), what reaches the target IOC."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from dmagic_ioc.ioc.app.messages import (
    BeamtimeToFollow,
    Create,
    CreateManual,
    FollowSchedule,
    Refresh,
    RefreshAutomatic,
    Select,
    Tag,
)
from dmagic_ioc.ioc.app.services import Services
from dmagic_ioc.ioc.app.state import ManualRequest, Outcome
from dmagic_ioc.ioc.domain.beamtime import beamtime_key, clean_beamtime
from dmagic_ioc.ioc.domain.errors import DMError, SchedulingError
from dmagic_ioc.ioc.domain.experiment import Experiment

from ..fakes.ports import (
    BEAMTIME,
    BO,
    ESAF_DOI,
    ESAF_PERSON,
    EXPERIMENT,
    LATER,
    MEI,
    NOW,
    RUN,
    FailingSchedule,
    FakeSchedule,
    settings_in,
)
from .conftest import Beamline

REFRESHED = "proposal 1012039 (Müller-Łukasiewicz), run 2026-3"
AHEAD_5 = ("; TimeOffsetDays is 5: the schedule is read 5 days ahead, at 2026-10-20 10:00 CDT, so Create takes the "
           "beamtime scheduled then (write 0 for now)")  # fmt: skip


def test_refresh_reads_the_beamtime_now_with_the_esafs_other_people_and_shows_it(beamline, fakes):
    assert beamline.run(Refresh(0.0)) == Outcome(REFRESHED)
    current = beamline.state.scheduled
    assert beamline.state.shown == current  # nothing selected: the proposal PVs follow the schedule
    assert current.run == RUN
    assert current.refreshed == NOW and current.refreshed.utcoffset() == timedelta(hours=-5)  # beamline time
    assert current.beamtime.gup == "1012039" and current.beamtime.people == BEAMTIME.people
    assert current.beamtime.esaf_people == (ESAF_PERSON,)  # Bo, on the proposal too, is not listed twice
    assert current.beamtime.esaf_doi == ESAF_DOI
    assert fakes.dm.esaf_calls == ["281001"]
    assert beamline.contacts() == [("Scheduling", True), ("Scheduling", True), ("DM", True)]


def test_refresh_looks_at_now_plus_the_offset_and_dates_the_refresh_now(beamline, fakes):
    assert beamline.run(Refresh(5.0)) == Outcome("proposal 1012040 (Ngo), run 2026-3" + AHEAD_5, warning=True)
    assert beamline.state.scheduled.beamtime == LATER  # no ESAF: DM is not asked
    assert beamline.state.scheduled.refreshed == NOW
    assert fakes.dm.esaf_calls == []


def test_refresh_with_nothing_scheduled_is_a_warning_and_shows_no_proposal(beamline):
    beamline.run(Refresh(0.0))
    outcome = beamline.run(Refresh(-10.0))
    assert outcome.warning
    said = "run 2026-3: no beamtime scheduled at 2026-10-05 10:00 CDT; TimeOffsetDays is -10: the schedule is read"
    assert outcome.message.startswith(f"{said} 10 days back")
    assert beamline.state.scheduled.run == RUN and beamline.state.scheduled.beamtime is None


def test_refresh_outside_every_run_is_a_warning_and_asks_for_no_beamtimes(beamline, fakes):
    outcome = beamline.run(Refresh(100.0))
    assert outcome.warning and outcome.message.startswith("no run of the schedule contains 2027-01-23 09:00 CST; ")
    assert (beamline.state.scheduled.run, beamline.state.scheduled.beamtime) == (None, None)
    assert beamline.contacts() == [("Scheduling", True)]


def test_an_esaf_dm_cannot_read_is_a_warning_and_the_proposal_is_shown_without_it(beamline, fakes):
    def unreachable(esaf):
        raise DMError("DM service unreachable")

    fakes.dm.esaf = unreachable
    outcome = beamline.run(Refresh(0.0))
    assert outcome == Outcome(f"{REFRESHED}; ESAF 281001 not read: DM service unreachable", warning=True)
    assert beamline.state.scheduled.beamtime == BEAMTIME  # as scheduled: no ESAF people, no DOI
    assert beamline.contacts() == [("Scheduling", True), ("Scheduling", True), ("DM", False)]


def test_a_scheduling_failure_changes_nothing_and_the_next_refresh_recovers(beamline):
    beamline.run(Refresh(0.0))
    beamline.contacts()
    shown = beamline.state
    beamline.adapters.scheduling = FailingSchedule()
    with pytest.raises(SchedulingError, match="503 Service Unavailable"):
        beamline.run(Refresh(5.0))
    assert beamline.state is shown
    assert beamline.contacts() == [("Scheduling", False)]

    beamline.adapters.scheduling = FakeSchedule()
    assert beamline.run(Refresh(5.0)) == Outcome("proposal 1012040 (Ngo), run 2026-3" + AHEAD_5, warning=True)
    assert beamline.contacts() == [("Scheduling", True), ("Scheduling", True)]


def test_tag_writes_the_proposal_shown_under_the_prefix_trimmed_and_contacts_no_system(beamline, fakes):
    beamline.run(Refresh(0.0))
    beamline.contacts()
    assert beamline.run(Tag("  2bmb:TomoScan: ")) == Outcome("tagged 2bmb:TomoScan: with proposal 1012039")
    ((prefix, values),) = fakes.tag.writes
    assert prefix == "2bmb:TomoScan:"
    assert (values["ProposalNumber"], values["UserLastName"], values["ESAFDOINumber"]) == (
        "1012039", "Müller-Łukasiewicz", ESAF_DOI)  # fmt: skip
    assert beamline.contacts() == []  # the target IOC has no Health PV


def test_a_refresh_showing_another_beamtime_announces_it_and_the_proposal_pvs_stay(created):
    outcome = created.run(Refresh(5.0))
    assert outcome == Outcome(
        "proposal 1012040 (Ngo), run 2026-3; the schedule now shows proposal 1012040 (Cy Ngo): the proposal PVs "
        f"stay on {EXPERIMENT} (Schedule:ProposalNumber shows it; Create switches to it){AHEAD_5}",
        warning=True,
    )
    assert created.state.scheduled.beamtime == LATER
    assert created.state.shown.beamtime.gup == "1012039" and not created.state.shows_the_schedule


def test_tag_after_select_writes_the_selected_experiments_proposal(created, fakes):
    other = "2026-10-Ngo-1012040"
    fakes.dm.experiments[other] = Experiment(other, gup="1012040", start=LATER.start, year_month="2026-10")
    created.run(Select(other))
    assert created.run(Tag("2bmb:TomoScan:")) == Outcome("tagged 2bmb:TomoScan: with proposal 1012040")
    values = fakes.tag.writes[-1][1]
    assert (values["ProposalNumber"], values["UserName"], values["UserLastName"]) == ("1012040", "Cy", "Ngo")
    assert values["UserInfoUpdate"] == "2026-10-15T10:00:00-05:00"  # when the schedule was read: now


# ------------------------------------------------------------------ values the schedule had cleaned

BAD_MEI = replace(MEI, first_name="Mei\x07", email="mei@example.edu\r\nBcc: everyone@example.org")
CLEANED = "first name of Mei Müller-Łukasiewicz (310001) cleaned of control characters; " \
    "e-mail of Mei Müller-Łukasiewicz (310001) dropped (a line break)"  # fmt: skip


def schedule_with_bad_values() -> FakeSchedule:
    """The schedule as a backend gives it: the beamtime's values cleaned, with their warnings."""
    proposal = replace(BEAMTIME.proposal, people=(BO, BAD_MEI))
    return FakeSchedule(beamtimes=(clean_beamtime(replace(BEAMTIME, proposal=proposal)), LATER))


def test_a_refresh_names_the_values_the_schedule_had_cleaned_and_warns(beamline):
    beamline.adapters.scheduling = schedule_with_bad_values()
    outcome = beamline.run(Refresh(0.0))
    assert outcome == Outcome(f"{REFRESHED}; from the schedule: {CLEANED}", warning=True)
    mei = beamline.state.scheduled.beamtime.pi
    assert (mei.first_name, mei.email, mei.institution) == ("Mei", "", MEI.institution)  # the rest kept


def test_the_automatic_refresh_says_cleaned_values_once_while_they_stay_the_same(beamline):
    beamline.adapters.scheduling = schedule_with_bad_values()
    assert beamline.run(RefreshAutomatic(0.0)) == Outcome(f"from the schedule: {CLEANED}", warning=True)  # the first
    assert beamline.run(RefreshAutomatic(0.0)) == Outcome("", warning=False)  # said already
    assert beamline.run(Refresh(0.0)).warning  # by hand: said again
    beamline.adapters.scheduling = FakeSchedule()
    assert beamline.run(RefreshAutomatic(0.0)) == Outcome("", warning=False)  # nothing cleaned
    beamline.adapters.scheduling = schedule_with_bad_values()
    assert beamline.run(RefreshAutomatic(0.0)) == Outcome(f"from the schedule: {CLEANED}", warning=True)  # new again


def test_esaf_people_from_dm_are_cleaned_as_the_schedule_is(beamline, fakes):
    fakes.dm.esaf = lambda esaf: ([replace(ESAF_PERSON, email="eva@example.org,eve@example.com")], ESAF_DOI)
    outcome = beamline.run(Refresh(0.0))
    assert outcome == Outcome(f"{REFRESHED}; from the schedule: e-mail of Eva Sá (310009) dropped (a comma)",
                              warning=True)  # fmt: skip
    assert beamline.state.scheduled.beamtime.esaf_people == (replace(ESAF_PERSON, email=""),)


# ------------------------------------------------------------------ TimeOffsetDays said, never silent


def test_a_refresh_at_now_says_nothing_of_the_offset(beamline):
    assert beamline.run(Refresh(0.0)) == Outcome(REFRESHED)
    assert beamline.state.scheduled.offset_days == 0.0


def test_the_first_automatic_refresh_after_a_start_says_an_autosaved_offset(beamline):
    outcome = beamline.run(RefreshAutomatic(5.0))  # TimeOffsetDays 5 restored from autosave
    assert outcome == Outcome(AHEAD_5.removeprefix("; "), warning=True)
    assert beamline.state.scheduled.offset_days == 5.0


def test_the_automatic_refresh_says_the_offset_again_only_when_it_changed(beamline):
    beamline.run(RefreshAutomatic(0.0))
    assert beamline.run(RefreshAutomatic(0.0)) == Outcome("")
    changed = beamline.run(RefreshAutomatic(-2.0))  # written between two automatic refreshes, with no Refresh
    assert changed.warning and changed.message.startswith("TimeOffsetDays is -2: the schedule is read 2 days back")
    assert beamline.run(RefreshAutomatic(-2.0)) == Outcome("")  # said already
    assert beamline.run(RefreshAutomatic(0.0)) == Outcome("")  # back to now: nothing to warn about


def test_tag_of_a_manual_experiment_without_a_proposal_names_its_person(beamline, fakes):
    beamline.run(CreateManual(ManualRequest(last_name="Müller-Łukasiewicz", first_name="Zoë", badges="310010")))
    outcome = beamline.run(Tag("2bmb:TomoScan:"))
    assert outcome == Outcome("tagged 2bmb:TomoScan: with Zoë Müller-Łukasiewicz (no proposal)")
    values = fakes.tag.writes[-1][1]
    assert (values["ProposalNumber"], values["UserLastName"]) == ("", "Müller-Łukasiewicz")  # cleared, not "0"


# ------------------------------------------------------------------ dm.follow_schedule: the beamtime to follow


@pytest.fixture
def following(tmp_path, fakes) -> Beamline:
    """A beamline with dm.follow_schedule on, that nothing has run on yet."""
    settings = settings_in(tmp_path)
    settings = replace(settings, dm=replace(settings.dm, follow_schedule=True))
    return Beamline(Services(settings, fakes.ports(), clock=lambda: NOW))


def test_a_refresh_raises_the_beamtime_to_follow_until_it_is_followed(following, fakes):
    key = beamtime_key(BEAMTIME)
    following.run(Refresh(0.0))
    assert following.events == (BeamtimeToFollow(key),)
    following.run(RefreshAutomatic(0.0))
    assert following.events == (BeamtimeToFollow(key),)  # not followed yet: raised again
    assert fakes.state.followed_key == ""  # only FollowSchedule marks it

    following.run(FollowSchedule(key))
    assert fakes.state.followed_key == key and following.state.experiment.name == EXPERIMENT
    following.run(RefreshAutomatic(0.0))
    assert following.events == ()  # once per beamtime

    following.run(Refresh(5.0))  # the next beamtime
    assert following.events == (BeamtimeToFollow(beamtime_key(LATER)),)


def test_a_beamtime_whose_experiment_is_already_selected_is_marked_followed_and_not_raised(following, fakes):
    following.run(Refresh(0.0))
    following.run(Create())  # by hand, before the switch
    following.run(RefreshAutomatic(0.0))
    assert following.events == ()
    assert fakes.state.followed_key == beamtime_key(BEAMTIME)


def test_without_follow_schedule_no_beamtime_is_raised_to_follow(beamline, fakes):
    beamline.run(Refresh(0.0))
    assert beamline.events == ()
    beamline.run(RefreshAutomatic(5.0))
    assert beamline.events == () and fakes.state.followed_key == ""


def test_with_nothing_scheduled_no_beamtime_is_raised_to_follow(following):
    following.run(Refresh(-10.0))
    assert following.events == ()
