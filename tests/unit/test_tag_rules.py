"""Tag's rules without a network: `tag.fields` in the config, and what the Tag handler makes of a target's answers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dmagic_ioc.ioc.app.commands import schedule
from dmagic_ioc.ioc.app.handling import Step
from dmagic_ioc.ioc.app.messages import Tag
from dmagic_ioc.ioc.app.services import Adapters, Services
from dmagic_ioc.ioc.app.state import BeamlineState, Outcome
from dmagic_ioc.ioc.domain.beamtime import Beamtime, CurrentProposal, UserInfo
from dmagic_ioc.ioc.domain.errors import MissingPVs, TagError
from dmagic_ioc.ioc.domain.esaf import Esaf
from dmagic_ioc.ioc.domain.people import Person
from dmagic_ioc.ioc.domain.proposal import Proposal
from dmagic_ioc.ioc.domain.tag import TAG_FIELDS
from dmagic_ioc.ioc.settings.load import ConfigError, settings_from_dict
from dmagic_ioc.ioc.settings.schema import TagSettings

MOMENT = datetime(2026, 11, 20, 18, 0, tzinfo=timezone.utc)
PREFIX = "2bmb:TomoScan:"


@pytest.fixture
def base(tmp_path) -> Path:
    (tmp_path / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    return tmp_path


def settings_with(base: Path, tag: object):
    raw = {"beamline": {"name": "2-BM-A,B"}, "scheduling": {"path": "schedule.yaml"}, "tag": tag}
    return settings_from_dict(raw, base=base)


def problems_with(base: Path, tag: object) -> list[str]:
    with pytest.raises(ConfigError) as error:
        settings_with(base, tag)
    return error.value.problems


# --------------------------------------------------------------------------
# tag.fields


def test_fields_default_to_tomoscan_names_with_esafdoinumber_optional(base):
    tag = settings_with(base, {"prefix": PREFIX}).tag
    assert tag.fields == {}
    assert tag.targets() == {name: name for name in TAG_FIELDS}
    assert tag.optional_pvs() == {"ESAFDOINumber"}


def test_fields_rename_and_leave_out(base):
    tag = settings_with(base, {"fields": {"UserBadge": "PIBadge", "ESAFNumber": None, "ProposalTitle": ""}}).tag
    targets = tag.targets()
    assert targets["UserBadge"] == "PIBadge"
    assert "ESAFNumber" not in targets and "ProposalTitle" not in targets  # null (or empty) leaves a field out
    assert len(targets) == len(TAG_FIELDS) - 2


def test_a_named_esafdoinumber_is_required(base):
    assert settings_with(base, {"fields": {"ESAFDOINumber": "ESAFDOI"}}).tag.optional_pvs() == frozenset()
    assert settings_with(base, {"fields": {"ESAFDOINumber": None}}).tag.optional_pvs() == frozenset()


def test_unknown_field_is_an_error_naming_the_key(base):
    (problem,) = problems_with(base, {"fields": {"UserNmae": "X"}})
    assert problem.startswith("tag.fields.UserNmae: unknown field (known: UserName, UserLastName, ")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("UserName", "tag.fields: expected a mapping of names, got str"),
        ({"UserName": ["a"]}, "tag.fields.UserName: expected text, got ['a']"),
        ({"UserName": "First Name"}, "tag.fields.UserName: 'First Name' is not a PV name (no spaces or quotes)"),
        ({"UserName": "  "}, "tag.fields.UserName: '  ' is not a PV name (no spaces or quotes)"),
        (
            {"UserName": "Who", "UserLastName": "Who"},
            "tag.fields: UserName and UserLastName would write the same PV, Who",
        ),
        ({"UserBadge": "UserName"}, "tag.fields: UserName and UserBadge would write the same PV, UserName"),
        (dict.fromkeys(TAG_FIELDS), "tag.fields: leaves out every field; Tag would write nothing"),
    ],
)
def test_bad_fields_are_refused(base, fields, expected):
    assert problems_with(base, {"fields": fields}) == [expected]


def test_every_tag_field_takes_a_user_info_value():
    proposal = Proposal("1013377", "Title", people=(Person("310010", is_pi=True),))
    beamtime = Beamtime(proposal, MOMENT, MOMENT + timedelta(days=3))
    info = UserInfo.of(CurrentProposal(None, beamtime, MOMENT))
    values = {name: getattr(info, attribute) for name, attribute in TAG_FIELDS.items()}
    assert values["ProposalNumber"] == "1013377" and values["UserBadge"] == "310010"
    assert values["UserInfoUpdate"] == "2026-11-20T18:00:00+00:00" and values["ProposalTitle"] == "Title"


# --------------------------------------------------------------------------
# The Tag handler against a scripted target


class ScriptedTarget:
    """A TagTarget whose PVs under the prefix are `present`; records every write that went through."""

    def __init__(self, present: set[str], cut: tuple[str, ...] = ()):
        self.present = present
        self.cut = cut
        self.attempts: list[dict] = []
        self.written: list[dict] = []

    def write(self, prefix, values):
        self.attempts.append(dict(values))
        missing = [name for name in values if name not in self.present]
        if missing:
            raise MissingPVs(f"missing {missing}", missing)
        self.written.append(dict(values))
        return [name for name in values if name in self.cut]


def tagged(base: Path, target: ScriptedTarget, fields: dict | None = None) -> Outcome:
    """Tag at PREFIX with `target` as the only adapter, a proposal shown."""
    settings = settings_with(base, {"fields": fields or {}})
    services = Services(settings, Adapters(scheduling=None, dm=None, state=None, transfer=None, tag=target))
    pi = Person("310010", "Zoë", "Müller-Łukasiewicz", "zoe@example.de", "Universität Beispielstadt", is_pi=True)
    proposal = Proposal("1013377", "Foam", people=(pi,))
    beamtime = Beamtime(proposal, MOMENT, MOMENT + timedelta(days=3), esaf_form=Esaf("281002"))
    state = BeamlineState(scheduled=CurrentProposal(None, beamtime, MOMENT))
    return schedule.tag(Step(services, state), Tag(PREFIX))


def test_everything_present_is_written_once(base):
    target = ScriptedTarget(set(TAG_FIELDS))
    outcome = tagged(base, target)
    assert (outcome.message, outcome.warning) == (f"tagged {PREFIX} with proposal 1013377", False)
    assert len(target.attempts) == 1 and set(target.written[0]) == set(TAG_FIELDS)


def test_a_stock_tomoscan_gets_the_rest_without_a_warning(base):
    target = ScriptedTarget(set(TAG_FIELDS) - {"ESAFDOINumber"})
    outcome = tagged(base, target)
    assert (outcome.message, outcome.warning) == (f"tagged {PREFIX} with proposal 1013377", False)
    assert set(target.written[0]) == set(TAG_FIELDS) - {"ESAFDOINumber"}


def test_missing_required_pvs_are_named_and_the_rest_written(base):
    target = ScriptedTarget(set(TAG_FIELDS) - {"ESAFDOINumber", "UserBadge", "ExperimentYearMonth"}, cut=("UserName",))
    outcome = tagged(base, target)
    assert outcome.warning
    assert outcome.message == (
        f"tagged {PREFIX} with proposal 1013377; not written, no such PV: {PREFIX}UserBadge, "
        f"{PREFIX}ExperimentYearMonth; cut to fit the target: UserName"
    )
    assert target.written[0]["UserName"] == "Zoë"


def test_renamed_fields_are_written_under_their_names(base):
    target = ScriptedTarget({"PIName", *TAG_FIELDS} - {"UserName"})
    outcome = tagged(base, target, {"UserName": "PIName", "ESAFNumber": None})
    assert not outcome.warning
    (written,) = target.written
    assert written["PIName"] == "Zoë" and "UserName" not in written and "ESAFNumber" not in written


def test_no_pv_answering_fails_with_nothing_written(base):
    target = ScriptedTarget(set())
    with pytest.raises(MissingPVs):
        tagged(base, target)
    assert len(target.attempts) == 1 and target.written == []


def test_other_tag_errors_are_not_retried(base):
    class Refusing(ScriptedTarget):
        def write(self, prefix, values):
            self.attempts.append(dict(values))
            raise TagError("no write access to 2bmb:TomoScan:UserName; nothing written")

    target = Refusing(set(TAG_FIELDS))
    with pytest.raises(TagError, match="no write access"):
        tagged(base, target)
    assert len(target.attempts) == 1


def test_default_tag_settings_need_no_config():
    assert TagSettings().targets() == {name: name for name in TAG_FIELDS}
