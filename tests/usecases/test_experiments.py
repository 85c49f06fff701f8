"""Create (by hand and following the schedule), CreateManual, Select, AddUser, RemoveUser, Delete: what
each changes in DM, Globus and the IOC's own state, what it says, and how a failure half-way leaves things for a
rerun to complete."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from dmagic_ioc.adapters.dm.aps import ApsDM
from dmagic_ioc.ioc.app.messages import (
    AddUser,
    Create,
    CreateManual,
    Delete,
    FollowSchedule,
    Refresh,
    RemoveUser,
    Select,
)
from dmagic_ioc.ioc.app.services import Services
from dmagic_ioc.ioc.app.state import ManualRequest, Outcome
from dmagic_ioc.ioc.domain.beamtime import beamtime_key
from dmagic_ioc.ioc.domain.errors import DMError, GlobusError
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.domain.ports import TransferProgress, TransferState

from ..fakes import dm as fake_sdk
from ..fakes.ports import (
    BEAMTIME,
    CHICAGO,
    ESAF_DOI,
    ESAF_PERSON,
    EXPERIMENT,
    LATER,
    NOW,
    RUN,
    TITLE,
    FailingSchedule,
    FlakyAccess,
    settings_in,
)
from .conftest import Beamline

OTHER = "2026-10-Ngo-1012040"  # an experiment of proposal LATER, made elsewhere
URL = f"https://app.globus.org/file-manager?path=/{EXPERIMENT}/"
RULES = {"d310001": "rule-d310001", "d310002": "rule-d310002", "d310009": "rule-d310009"}


def storage(tmp_path, name: str = EXPERIMENT, year_month: str = "2026-10") -> str:
    return str(tmp_path / "storage" / year_month / name)


def created_message(tmp_path, users: int = 4, globus: int = 3) -> str:
    """What Create says when it made EXPERIMENT."""
    where = storage(tmp_path)
    return f"created experiment {EXPERIMENT} with {users} users; storage {where}; Globus access for {globus} users"


def failing_once(fakes, method: str, error: Exception) -> None:
    """DM's `method` raises `error` on its next call, then works again."""
    real = getattr(fakes.dm, method)

    def fail(*args):
        setattr(fakes.dm, method, real)
        raise error

    setattr(fakes.dm, method, fail)


def shown_users(beamline) -> tuple[str, ...]:
    """The users the selected experiment shows."""
    return beamline.state.experiment.usernames


def add_other(fakes, **fields) -> None:
    fields = {
        "gup": "1012040",
        "start": LATER.start,
        "year_month": "2026-10",
        "storage_directory": "/s/" + OTHER,
    } | fields
    fakes.dm.experiments[OTHER] = Experiment(OTHER, title="Later proposal", **fields)


# --------------------------------------------------------------------------- Create


def test_create_makes_the_experiment_selects_it_and_gives_the_proposals_people_access(beamline, fakes, tmp_path):
    beamline.run(Refresh(0.0))
    beamline.contacts()
    assert beamline.run(Create()) == Outcome(created_message(tmp_path))
    stored = fakes.dm.experiments[EXPERIMENT]
    assert (stored.title, stored.gup, stored.esaf, stored.start, stored.end) == (
        TITLE, "1012039", "281001", BEAMTIME.start, BEAMTIME.end)  # fmt: skip
    assert stored.data_directory == str(tmp_path / "data" / EXPERIMENT)
    assert stored.users == (
        ExperimentUser("d310001", "Mei Müller-Łukasiewicz", "mei@example.edu", "Example State University", "proposal"),
        ExperimentUser("d310002", "Bo Li", "bo@example.org", "UChicago", "proposal"),
        ExperimentUser("d310009", "Eva Sá", "eva@example.org", "Argonne", "esaf"),
        ExperimentUser("d100001", source="contact"),
    )  # the PI first, then the proposal, the ESAF, the beamline's contacts
    assert fakes.state.selection == EXPERIMENT
    assert fakes.state.rule_ids == {EXPERIMENT: RULES}  # kept, so that RemoveUser and Delete revoke them
    shown = beamline.state
    assert (shown.experiment, shown.experiments, shown.globus_url, shown.emailed) == (stored, (EXPERIMENT,), URL, ())
    assert shown.proposal == shown.scheduled.beamtime == fakes.state.proposal(EXPERIMENT)  # kept for Select
    assert set(beamline.contacts()) == {("DM", True), ("Globus", True)}


def test_create_again_adds_only_whom_dm_lost_and_duplicates_nothing(created, fakes):
    fakes.dm.remove_users(EXPERIMENT, ["d310002"])
    assert created.run(Create()) == Outcome(
        f"experiment {EXPERIMENT} exists: selected it; users added: d310002; Globus access for 3 users"
    )
    assert list(fakes.dm.experiments) == [EXPERIMENT]
    assert sorted(fakes.dm.experiments[EXPERIMENT].usernames) == ["d100001", "d310001", "d310002", "d310009"]


def test_create_with_dm_down_changes_nothing_and_a_rerun_creates(beamline, fakes, tmp_path):
    beamline.run(Refresh(0.0))
    beamline.contacts()
    fakes.dm.fail = DMError("DM service unreachable")
    with pytest.raises(DMError, match="DM service unreachable"):
        beamline.run(Create())
    assert fakes.dm.experiments == {} and fakes.state.selection == "" and fakes.access.grants == []
    assert beamline.state.experiment is None
    assert beamline.contacts() == [("DM", False)]

    assert beamline.run(Create()) == Outcome(created_message(tmp_path))


def test_create_failing_after_the_experiment_exists_keeps_it_selected_and_a_rerun_adds_the_users(beamline, fakes):
    beamline.run(Refresh(0.0))
    beamline.contacts()
    failing_once(fakes, "add_users", DMError("DM service did not answer within 10 s"))
    with pytest.raises(DMError):
        beamline.run(Create())
    assert fakes.dm.experiments[EXPERIMENT].users == ()
    assert fakes.state.selection == EXPERIMENT  # selected before the users: a rerun completes
    assert beamline.state.experiment.name == EXPERIMENT  # the selection is read again whatever happens
    assert fakes.access.grants == []
    assert beamline.contacts() == [("DM", True), ("DM", True), ("DM", False), ("DM", True), ("DM", True)]

    assert beamline.run(Create()) == Outcome(
        f"experiment {EXPERIMENT} exists: selected it; "
        "users added: d310001, d310002, d310009, d100001; Globus access for 3 users"
    )


def test_create_with_globus_failing_half_way_records_the_rules_made_and_a_rerun_completes(beamline, fakes):
    access = FlakyAccess(failing={"d310002"})
    beamline.adapters.access = access
    beamline.run(Refresh(0.0))
    beamline.contacts()
    with pytest.raises(GlobusError, match="no Globus identity for d310002"):
        beamline.run(Create())
    assert len(fakes.dm.experiments[EXPERIMENT].users) == 4  # DM access for everyone
    assert fakes.state.rule_ids == {EXPERIMENT: {"d310001": "rule-d310001", "d310009": "rule-d310009"}}
    assert beamline.contacts()[-3:] == [("Globus", False), ("DM", True), ("DM", True)]

    access.failing.clear()
    outcome = beamline.run(Create())
    assert outcome == Outcome(
        f"experiment {EXPERIMENT} exists: selected it; users added: none; Globus access for 3 users"
    )
    assert fakes.state.rule_ids == {EXPERIMENT: RULES}


def test_users_dm_refuses_are_a_warning_after_the_globus_access_of_the_others(beamline, fakes, tmp_path):
    real_add = fakes.dm.add_users

    def add_users_refusing_one(name, users):
        added = real_add(name, [u for u in users if u.username != "d310009"])
        raise DMError("d310009 is not a DM user", done=added)

    fakes.dm.add_users = add_users_refusing_one
    beamline.run(Refresh(0.0))
    outcome = beamline.run(Create())
    assert outcome == Outcome(f"{created_message(tmp_path, globus=2)}; not all users added: d310009 is not a DM user",
                              warning=True)  # fmt: skip
    assert set(fakes.state.rules(EXPERIMENT)) == {"d310001", "d310002"}


# --------------------------------------------------------------------------- FollowSchedule (dm.follow_schedule)

STILL_RUNS = f"; the transfer started for {EXPERIMENT} still runs: DaqStop it, then DaqStart for the new experiment"


def test_follow_schedule_creates_as_create_does_and_marks_the_beamtime_followed(beamline, fakes, tmp_path):
    beamline.run(Refresh(0.0))
    key = beamtime_key(BEAMTIME)
    assert beamline.run(FollowSchedule(key)) == Outcome(created_message(tmp_path))
    assert fakes.state.selection == EXPERIMENT and fakes.state.followed_key == key
    assert beamline.events == ()


def test_follow_schedule_failing_leaves_the_beamtime_to_follow_next_time(beamline, fakes):
    beamline.run(Refresh(0.0))
    fakes.dm.fail = DMError("DM service unreachable")
    with pytest.raises(DMError):
        beamline.run(FollowSchedule(beamtime_key(BEAMTIME)))
    assert fakes.state.followed_key == "" and fakes.state.selection == ""


@pytest.mark.parametrize(("state", "said"), [(TransferState.RUNNING, STILL_RUNS), (TransferState.STOPPED, "")])
def test_follow_schedule_leaves_the_previous_experiments_transfer_alone_and_says_it_runs(created, fakes, state, said):
    fakes.transfer.state = TransferProgress(state=state)
    created.run(Refresh(5.0))  # the next beamtime, LATER
    outcome = created.run(FollowSchedule(beamtime_key(LATER)))
    assert outcome.message.startswith(f"created experiment {OTHER} for the beamtime of 2026-10-20")
    assert outcome.message.endswith(f"Globus access for 1 user{said}") and outcome.warning == bool(said)
    assert fakes.state.selection == OTHER and fakes.state.followed_key == beamtime_key(LATER)
    assert fakes.transfer.starts == [] and fakes.transfer.state.state == state  # neither stopped nor started


# --------------------------------------------------------------------------- CreateManual


def test_create_manual_without_input_makes_a_staff_experiment_from_the_first_of_the_month(beamline, fakes, tmp_path):
    name = "2026-10-Staff-0"
    outcome = beamline.run(CreateManual(ManualRequest()))
    assert outcome == Outcome(f"created experiment {name} with 1 user; storage {storage(tmp_path, name)}")
    stored = fakes.dm.experiments[name]
    assert (stored.title, stored.gup, stored.year_month) == ("Staff manual experiment", "", "2026-10")
    assert (stored.start, stored.end) == (datetime(2026, 10, 1, tzinfo=CHICAGO), datetime(2026, 10, 15, tzinfo=CHICAGO))
    assert stored.users == (ExperimentUser("d100001", source="contact"),)
    assert fakes.access.grants == [] and ("Globus", True) not in beamline.contacts()  # nobody with an address
    assert fakes.state.selection == name


def test_create_manual_makes_the_first_badge_the_manual_person(beamline, fakes, tmp_path):
    request = ManualRequest(last_name=" Øberg ", first_name="Sven", institution="Exempel University",
                            email="sven@example.se", title="Detector commissioning", gup=77,
                            badges="310012, 310050", start="2026-12-01", end="2026-12-04")  # fmt: skip
    name = "2026-12-Oberg-77"
    outcome = beamline.run(CreateManual(request))
    where = storage(tmp_path, name, "2026-12")
    assert outcome == Outcome(f"created experiment {name} with 3 users; storage {where}; Globus access for 1 user")
    stored = fakes.dm.experiments[name]
    assert (stored.title, stored.gup) == ("Detector commissioning", "77")
    assert (stored.start, stored.end) == (datetime(2026, 12, 1, tzinfo=CHICAGO), datetime(2026, 12, 4, tzinfo=CHICAGO))
    assert stored.users == (
        ExperimentUser("d310012", "Sven Øberg", "sven@example.se", "Exempel University", "manual"),
        ExperimentUser("d310050", source="manual"),
        ExperimentUser("d100001", source="contact"),
    )
    assert fakes.access.grants == [(name, "d310012")]


def test_create_manual_without_a_gup_keeps_the_number_in_the_name_and_shows_no_proposal(beamline, fakes):
    """Manual:GUP 0 is "no proposal": the name ends in -0 (as documented), the DM record and the proposal PVs
    hold no GUP, and the other badges take the names and e-mails the schedule has for them."""
    beamline.run(Refresh(0.0))
    request = ManualRequest(last_name="Müller-Łukasiewicz", first_name="Zoë", badges=" 310009, 310002, ")
    name = "2026-10-MullerLukasiewicz-0"
    assert beamline.run(CreateManual(request)).message.startswith(f"created experiment {name} with 3 users")
    assert fakes.dm.experiments[name].gup == ""
    shown = beamline.state.shown.beamtime
    assert shown.gup == "" and [p.full_name for p in shown.people_pi_first] == ["Zoë Müller-Łukasiewicz", "Bo Li"]
    assert fakes.dm.experiments[name].users[1] == ExperimentUser("d310002", "Bo Li", "bo@example.org", "UChicago",
                                                                 "manual")  # fmt: skip


def test_a_badge_known_only_by_number_never_hides_the_name_the_schedule_has(beamline, fakes):
    beamline.run(CreateManual(ManualRequest(badges="310009, 310002")))  # no schedule read yet: 310002 by number alone
    assert beamline.state.shown.beamtime.people[1].full_name == ""
    beamline.run(Refresh(0.0))  # the schedule knows 310002: Bo Li
    beamline.run(CreateManual(ManualRequest(badges="310009, 310002", gup=2)))
    assert beamline.state.shown.beamtime.people[1].full_name == "Bo Li"


# --------------------------------------------------------------------------- TimeOffsetDays


def test_create_with_an_offset_says_which_beamtime_it_made_and_why(beamline, fakes):
    beamline.run(Refresh(5.0))  # TimeOffsetDays 5: LATER, 2026-10-20, instead of the beamtime running now
    outcome = beamline.run(Create())
    assert outcome.message.startswith(f"created experiment {OTHER} for the beamtime of 2026-10-20 (TimeOffsetDays 5) "
                                      "with 2 users")  # fmt: skip
    again = beamline.run(Create())
    assert again.message.startswith(f"experiment {OTHER} exists: selected it for the beamtime of 2026-10-20 "
                                    "(TimeOffsetDays 5); users added: none")  # fmt: skip


def test_create_at_now_says_nothing_of_an_offset(beamline):
    beamline.run(Refresh(0.0))
    assert "TimeOffsetDays" not in beamline.run(Create()).message


# --------------------------------------------------------------------------- Select


def test_select_shows_the_proposal_the_experiment_was_made_for_and_keeps_it(created, fakes):
    add_other(fakes)
    assert created.run(Select(f" {OTHER} ")) == Outcome(f"selected {OTHER}; the proposal PVs show its proposal 1012040")
    state = created.state
    assert state.proposal == LATER and fakes.state.proposal(OTHER) == LATER  # read from the schedule, then kept
    assert (state.shown.run, state.shown.beamtime) == (RUN, LATER)
    assert state.scheduled.beamtime.gup == "1012039"  # what the schedule shows now is another view
    assert state.experiment == fakes.dm.experiments[OTHER]
    assert state.experiments == (OTHER, EXPERIMENT)  # newest first
    assert fakes.state.selection == OTHER


def test_select_back_shows_the_kept_proposal_without_asking_the_schedule(created, fakes):
    made_for = created.state.proposal
    add_other(fakes)
    created.run(Select(OTHER))
    asked = fakes.scheduling.calls
    assert created.run(Select(EXPERIMENT)) == Outcome(
        f"selected {EXPERIMENT}; the proposal PVs show its proposal 1012039"
    )
    assert created.state.proposal == made_for and made_for.esaf_people == (ESAF_PERSON,)  # as Create kept it
    assert fakes.scheduling.calls == asked


@pytest.mark.parametrize(
    ("gup", "said"),
    [
        ("", f"selected {OTHER}; the proposal PVs show its people (no proposal)"),
        ("999", f"selected {OTHER}; the proposal PVs show its proposal 999; proposal 999 is not in the schedule"),
    ],
)
def test_select_of_an_experiment_the_schedule_lacks_shows_its_dm_record(created, fakes, gup, said):
    add_other(fakes, gup=gup)
    assert created.run(Select(OTHER)) == Outcome(said, warning=bool(gup))
    assert created.state.experiment.name == OTHER and fakes.state.selection == OTHER
    assert (created.state.proposal.gup, created.state.proposal.title) == (gup, "Later proposal")
    assert created.state.scheduled.beamtime.gup == "1012039"


def test_select_with_the_schedule_unreachable_selects_and_warns(created, fakes):
    add_other(fakes)
    created.adapters.scheduling = FailingSchedule()
    outcome = created.run(Select(OTHER))
    assert outcome == Outcome(
        f"selected {OTHER}; the proposal PVs show its proposal 1012040; "
        "its proposal 1012040 was not read: the scheduling service answered 503 Service Unavailable",
        warning=True,
    )
    assert fakes.state.selection == OTHER
    assert ("Scheduling", False) in created.contacts()


# --------------------------------------------------------------------------- AddUser, RemoveUser


def test_add_users_takes_the_details_of_people_the_proposal_or_esaf_knows(beamline, fakes):
    beamline.run(Refresh(0.0))
    beamline.run(CreateManual(ManualRequest()))
    name = "2026-10-Staff-0"
    outcome = beamline.run(AddUser("310009, 310077"))
    assert outcome == Outcome(f"gave d310009, d310077 access to {name}; Globus access for 1 user")
    assert fakes.dm.experiments[name].users[-2:] == (
        ExperimentUser("d310009", "Eva Sá", "eva@example.org", "Argonne", "added"),  # on the ESAF
        ExperimentUser("d310077", source="added"),  # unknown: no address, no Globus rule
    )
    assert fakes.state.rules(name) == {"d310009": "rule-d310009"}
    assert shown_users(beamline) == ("d100001", "d310009", "d310077")


def test_add_users_already_there_asks_globus_again_and_changes_nothing_in_dm(created, fakes):
    users = fakes.dm.experiments[EXPERIMENT].users
    assert created.run(AddUser("310001,310001")) == Outcome(
        f"d310001 already had access to {EXPERIMENT}; Globus access for 1 user"
    )
    assert fakes.dm.experiments[EXPERIMENT].users == users


def test_add_users_with_globus_failing_keeps_the_dm_access_and_a_rerun_grants(beamline, fakes):
    beamline.run(Refresh(0.0))
    beamline.run(CreateManual(ManualRequest()))
    name = "2026-10-Staff-0"
    access = FlakyAccess(failing={"d310001"})
    beamline.adapters.access = access
    with pytest.raises(GlobusError):
        beamline.run(AddUser("310001"))
    assert "d310001" in fakes.dm.experiments[name].usernames
    assert "d310001" in shown_users(beamline)  # shown, though the command failed
    assert fakes.state.rules(name) == {}

    access.failing.clear()
    assert beamline.run(AddUser("310001")) == Outcome(f"d310001 already had access to {name}; Globus access for 1 user")
    assert fakes.state.rules(name) == {"d310001": "rule-d310001"}


def test_remove_users_revokes_their_globus_rules_then_their_dm_access(created, fakes):
    outcome = created.run(RemoveUser("310002"))
    assert outcome == Outcome(f"removed access of d310002 from {EXPERIMENT}; 1 Globus rules deleted")
    assert fakes.access.revoked == [(EXPERIMENT, "d310002")]
    assert fakes.state.rules(EXPERIMENT) == {"d310001": "rule-d310001", "d310009": "rule-d310009"}
    assert shown_users(created) == fakes.dm.experiments[EXPERIMENT].usernames == ("d310001", "d310009", "d100001")


def test_remove_a_user_without_a_globus_rule_asks_only_dm(created, fakes):
    assert created.run(RemoveUser("100001")) == Outcome(f"removed access of d100001 from {EXPERIMENT}")
    assert fakes.access.revoked == []
    assert {system for system, _ in created.contacts()} == {"DM"}


def test_remove_users_with_dm_failing_after_globus_forgets_the_rule_and_a_rerun_completes(created, fakes):
    fakes.dm.fail = DMError("DM service unreachable")
    with pytest.raises(DMError):
        created.run(RemoveUser("310002"))
    assert fakes.access.revoked == [(EXPERIMENT, "d310002")]
    assert "d310002" not in fakes.state.rules(EXPERIMENT)
    assert "d310002" in fakes.dm.experiments[EXPERIMENT].usernames

    assert created.run(RemoveUser("310002")) == Outcome(f"removed access of d310002 from {EXPERIMENT}")
    assert fakes.access.revoked == [(EXPERIMENT, "d310002")]  # not asked twice
    assert "d310002" not in fakes.dm.experiments[EXPERIMENT].usernames


def test_remove_users_with_globus_failing_leaves_dm_and_the_rules_as_they_were(created, fakes):
    def unreachable(experiment, rules):
        raise GlobusError("Globus: cannot reach transfer.api.globus.org")

    created.adapters.access.revoke = unreachable
    users = fakes.dm.experiments[EXPERIMENT].users
    with pytest.raises(GlobusError):
        created.run(RemoveUser("310002"))
    assert fakes.dm.experiments[EXPERIMENT].users == users
    assert fakes.state.rules(EXPERIMENT) == RULES
    assert created.contacts() == [("Globus", False)]


# --------------------------------------------------------------------------- Delete


def test_delete_removes_the_experiment_its_rules_its_records_and_the_selection(created, fakes, tmp_path):
    fakes.state.mark_emailed(EXPERIMENT, ["d310001"])
    assert created.run(Delete(f" {EXPERIMENT} ")) == Outcome(f"deleted experiment {EXPERIMENT}; 3 Globus rules deleted")
    assert fakes.dm.experiments == {}
    assert sorted(user for _, user in fakes.access.revoked) == ["d310001", "d310002", "d310009"]
    assert (fakes.state.selection, fakes.state.rule_ids, fakes.state.emailed_users) == ("", {}, {})
    assert fakes.state.proposals == {}
    raw = str(tmp_path / "data" / EXPERIMENT)
    assert fakes.transfer.forgotten == [
        {raw: f"{storage(tmp_path)}/data", f"{raw}_rec": f"{storage(tmp_path)}/analysis"}
    ]
    shown = created.state
    assert (shown.experiment, shown.experiments, shown.globus_url, shown.emailed) == (None, (), "", ())


def test_delete_with_dm_failing_after_globus_keeps_the_experiment_and_a_rerun_completes(created, fakes):
    fakes.dm.fail = DMError("DM service unreachable")
    with pytest.raises(DMError):
        created.run(Delete(EXPERIMENT))
    assert len(fakes.access.revoked) == 3 and fakes.state.rules(EXPERIMENT) == {}
    assert EXPERIMENT in fakes.dm.experiments and fakes.state.selection == EXPERIMENT
    assert fakes.transfer.forgotten == []  # its files are still the experiment's

    assert created.run(Delete(EXPERIMENT)) == Outcome(f"deleted experiment {EXPERIMENT}")
    assert len(fakes.access.revoked) == 3  # no rule revoked twice
    assert fakes.dm.experiments == {} and len(fakes.transfer.forgotten) == 1


def test_a_pi_who_is_also_a_beamline_contact_stays_first_with_the_proposal(tmp_path, fakes):
    from dmagic_ioc.ioc.settings.schema import BeamlineSettings

    settings = settings_in(tmp_path, beamline=BeamlineSettings(name="2-BM-A,B", contacts=("310001", "100001")))
    beamline = Beamline(Services(settings, fakes.ports(), clock=lambda: NOW))
    beamline.run(Refresh(0.0))
    beamline.run(Create())
    users = beamline.state.experiment.users
    assert [u.username for u in users][:2] == ["d310001", "d310002"] and users[0].source == "proposal"
    assert [u.username for u in users][-1] == "d100001"


# --------------------------------------------------------------------------- an experiment made elsewhere

DMAGIC = "2026-10-Muller-ukasiewicz-1012039"  # what DMagic names BEAMTIME's experiment (its `clean_entry`)
USERS_ADDED = "users added: d310001, d310002, d310009, d100001; Globus access for 3 users"


def reused_message(name: str = DMAGIC, added: str = USERS_ADDED) -> str:
    return f"reused experiment {name} made for this beamtime (this IOC names it {EXPERIMENT}): selected it; {added}"


def test_create_reuses_the_experiment_dmagic_made_for_the_beamtime_and_a_rerun_reuses_it_again(beamline, fakes):
    """DMagic names it otherwise and keeps no GUP but in the name; its description is the proposal's title."""
    made = Experiment(DMAGIC, title=TITLE, start=datetime(2026, 10, 14, tzinfo=CHICAGO), year_month="2026-10",
                      storage_directory="/s/" + DMAGIC, data_directory="/data/" + DMAGIC)  # fmt: skip
    fakes.dm.experiments[DMAGIC] = made
    add_other(fakes)  # the next proposal's, in the same run and month
    beamline.run(Refresh(0.0))

    assert beamline.run(Create()) == Outcome(reused_message())
    assert EXPERIMENT not in fakes.dm.experiments and fakes.state.selection == DMAGIC
    assert beamline.state.experiment.data_directory == "/data/" + DMAGIC  # its raw folder, as DMagic named it
    assert fakes.state.proposal(DMAGIC) == beamline.state.scheduled.beamtime
    assert beamline.run(Create()) == Outcome(reused_message(added="users added: none; Globus access for 3 users"))
    assert sorted(fakes.dm.experiments) == [DMAGIC, OTHER]


@pytest.mark.parametrize(
    "made, reused",
    [
        pytest.param(dict(name="tomo-smith", gup="1012039"), True, id="by hand, with the GUP in DM"),
        pytest.param(dict(name="tomo-smith", title=TITLE), False, id="by hand, with the proposal's title only"),
        pytest.param(dict(name="2026-10-Other-1012040"), False, id="another proposal"),
        pytest.param(dict(name="tomo", gup="1012040", title=TITLE), False, id="another GUP in DM, whatever title"),
        pytest.param(dict(start=datetime(2026, 6, 10, tzinfo=CHICAGO), year_month="2026-06"), False, id="another run"),
        pytest.param(
            dict(start=datetime(2026, 11, 20, tzinfo=CHICAGO), year_month="2026-11"),
            False,
            id="another beamtime of the run",
        ),  # fmt: skip
        pytest.param(dict(start=None, year_month="2026-10"), True, id="no start: by its month"),
    ],
)
def test_create_reuses_only_an_experiment_of_the_same_proposal_and_beamtime(beamline, fakes, made, reused):
    fields = {"name": DMAGIC, "start": datetime(2026, 10, 14, tzinfo=CHICAGO), "year_month": "2026-10"} | made
    fakes.dm.experiments[fields["name"]] = Experiment(**fields)
    beamline.run(Refresh(0.0))

    outcome = beamline.run(Create())

    assert fakes.state.selection == (fields["name"] if reused else EXPERIMENT)
    assert outcome.message.startswith("reused experiment" if reused else "created experiment")


def test_create_never_reuses_an_experiment_by_its_title_alone_and_names_it(beamline, fakes, tmp_path):
    """Made by hand, no GUP in DM nor ending its name, the same title (another proposal may share it) in the
    same run and month: Create makes its own and gives that one nobody; Status names it, MINOR."""
    fakes.dm.experiments["commissioning-oct"] = Experiment(
        "commissioning-oct", title=TITLE, start=datetime(2026, 10, 14, tzinfo=CHICAGO), year_month="2026-10"
    )
    beamline.run(Refresh(0.0))

    outcome = beamline.run(Create())

    assert outcome == Outcome(
        f"{created_message(tmp_path)}; an experiment with this title exists: commissioning-oct; not reused "
        "(no GUP); Select it if it is this beamtime's",
        warning=True,
    )
    assert fakes.state.selection == EXPERIMENT
    assert fakes.dm.experiments["commissioning-oct"].users == ()


def test_an_experiment_named_as_this_ioc_names_it_is_taken_before_any_other(created, fakes):
    fakes.dm.experiments[DMAGIC] = Experiment(DMAGIC, gup="1012039", start=BEAMTIME.start, year_month="2026-10")
    assert created.run(Create()).message.startswith(f"experiment {EXPERIMENT} exists: selected it")
    assert fakes.state.selection == EXPERIMENT


# --------------------------------------------------------------------------- on the APS DM system (its SDK faked)


@pytest.fixture
def sdk():
    """The fake APS DM SDK, fresh, with the DM accounts of BEAMTIME's people and its ESAF."""
    state = fake_sdk.reset()
    for badge in ("310001", "310002", "310009", "100001"):
        state.add_user(f"d{badge}")
    state.esafs[281001] = {
        "doi": ESAF_DOI,
        "experimentUsers": [
            {"badgeNumber": "310009", "firstName": "Eva", "lastName": "Sá", "email": "eva@example.org"}
        ],
    }
    return state


@pytest.fixture
def on_aps(tmp_path, fakes, sdk) -> Beamline:
    """A Beamline on the APS DM backend: ApsDM on the fake SDK, the other ports faked; refreshed."""
    settings = settings_in(tmp_path)
    settings = replace(settings, dm=replace(settings.dm, backend="aps"))
    fakes.dm = ApsDM("2BM", settings.dm.data_top_dir, api=fake_sdk, tz=CHICAGO)
    beamline = Beamline(Services(settings, fakes.ports(), clock=lambda: NOW))
    beamline.run(Refresh(0.0))
    return beamline


def test_create_on_aps_reuses_the_experiment_dmagic_made_and_gives_it_the_gup(on_aps, fakes, sdk):
    # made as DMagic's create_experiment makes it
    fake_sdk.ExperimentDsApi().addExperiment(DMAGIC, typeName="2BM", description=TITLE, rootPath="2026-10",
                                             startDate="14-Oct-26", endDate="17-Oct-26")  # fmt: skip

    assert on_aps.run(Create()) == Outcome(reused_message())

    assert sorted(sdk.experiments) == [DMAGIC] and len(sdk.called("addExperiment")) == 1  # DMagic's only
    assert (sdk.experiments[DMAGIC]["gup"], sdk.experiments[DMAGIC]["esaf"]) == ("1012039", "281001")
    assert sdk.experiments[DMAGIC]["experimentUsernameList"] == ["d310001", "d310002", "d310009", "d100001"]
    assert fakes.state.selection == DMAGIC
    assert on_aps.run(Create()) == Outcome(reused_message(added="users added: none; Globus access for 3 users"))
    assert sorted(sdk.experiments) == [DMAGIC]


def test_create_on_aps_half_made_is_completed_by_a_rerun_never_duplicated(on_aps, fakes, sdk):
    sdk.fail["upsertExperimentMetadata"] = fake_sdk.DmException("metadata service unavailable")

    with pytest.raises(DMError, match=f"writing metadata of {EXPERIMENT} failed: metadata service unavailable"):
        on_aps.run(Create())
    assert sorted(sdk.experiments) == [EXPERIMENT]  # added, its metadata not written
    assert fakes.state.selection == ""

    assert on_aps.run(Create()) == Outcome(f"experiment {EXPERIMENT} exists: selected it; {USERS_ADDED}")
    assert sorted(sdk.experiments) == [EXPERIMENT] and len(sdk.called("addExperiment")) == 1
    assert (sdk.experiments[EXPERIMENT]["gup"], sdk.experiments[EXPERIMENT]["esaf"]) == ("1012039", "281001")
    assert fakes.state.selection == EXPERIMENT
