"""StateStore: the registry (SQLite) and FakeState keep the IOC's own memory alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dmagic_ioc.adapters.registry.store import Registry
from dmagic_ioc.ioc.domain.beamtime import beamtime_key
from dmagic_ioc.ioc.domain.ports import StateStore

from ..fakes.ports import BEAMTIME, BO, ESAF_DOI, ESAF_PERSON, EXPERIMENT, LATER, FakeState

OTHER = "2026-10-Ngo-1012040"


@pytest.fixture(params=["fake", "registry"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "fake":
        yield FakeState()
        return
    with Registry(tmp_path / "state" / "registry.sqlite") as registry:
        yield registry


def test_nothing_is_selected_until_an_experiment_is_and_an_empty_name_clears_it(store):
    assert store.selected() == ""
    store.select(EXPERIMENT)
    assert store.selected() == EXPERIMENT
    store.select(OTHER)
    assert store.selected() == OTHER
    store.select("")
    assert store.selected() == ""


def test_the_emailed_users_accumulate_once_each_per_experiment_in_sending_order(store):
    assert store.emailed(EXPERIMENT) == []
    store.mark_emailed(EXPERIMENT, ["d310001", "d310002"])
    store.mark_emailed(EXPERIMENT, ["d310002", "d310009", "d310009"])
    store.mark_emailed(OTHER, ["d310003"])
    assert store.emailed(EXPERIMENT) == ["d310001", "d310002", "d310009"]
    assert store.emailed(OTHER) == ["d310003"]


def test_the_rule_ids_are_kept_by_username_replaced_and_forgotten(store):
    assert store.rules(EXPERIMENT) == {}
    store.record_rules(EXPERIMENT, {"d310001": "rule-1", "d310002": "rule-2"})
    store.record_rules(EXPERIMENT, {"d310002": "rule-2b"})
    store.record_rules(OTHER, {"d310001": "rule-9"})
    assert store.rules(EXPERIMENT) == {"d310001": "rule-1", "d310002": "rule-2b"}

    store.forget_rules(EXPERIMENT, ["d310001", "d310404"])
    assert store.rules(EXPERIMENT) == {"d310002": "rule-2b"}
    assert store.rules(OTHER) == {"d310001": "rule-9"}


def test_the_proposal_kept_is_read_back_whole_and_a_later_one_replaces_it(store):
    assert store.proposal(EXPERIMENT) is None
    read = BEAMTIME.with_esaf_read(ESAF_DOI, [ESAF_PERSON, BO])  # the ESAF's DOI and people as DM gave them
    store.keep_proposal(EXPERIMENT, read)
    kept = store.proposal(EXPERIMENT)
    assert kept == read
    assert kept is not None and (kept.esaf_doi, kept.esaf_people, kept.pi) == (ESAF_DOI, (ESAF_PERSON,), read.pi)

    later = replace(LATER, proposal=replace(LATER.proposal, title="Later proposal, retitled"))
    store.keep_proposal(EXPERIMENT, later)
    assert store.proposal(EXPERIMENT) == later
    assert store.proposal(OTHER) is None


def test_the_followed_beamtime_is_remembered(store):
    assert store.followed() == ""
    store.mark_followed(beamtime_key(BEAMTIME))
    assert store.followed() == beamtime_key(BEAMTIME)
    store.mark_followed(beamtime_key(LATER))
    assert store.followed() == beamtime_key(LATER)


def test_forgetting_an_experiment_drops_all_kept_about_it_and_its_selection_only(store):
    for name in (EXPERIMENT, OTHER):
        store.mark_emailed(name, ["d310001"])
        store.record_rules(name, {"d310001": "rule-1"})
        store.keep_proposal(name, BEAMTIME)
    store.select(EXPERIMENT)

    store.forget_experiment(EXPERIMENT)

    assert (store.emailed(EXPERIMENT), store.rules(EXPERIMENT), store.proposal(EXPERIMENT)) == ([], {}, None)
    assert store.selected() == ""
    assert (store.emailed(OTHER), store.rules(OTHER), store.proposal(OTHER)) == (["d310001"], {"d310001": "rule-1"},
                                                                                 BEAMTIME)  # fmt: skip


def test_forgetting_another_experiment_keeps_the_selection(store):
    store.select(EXPERIMENT)
    store.forget_experiment(OTHER)
    assert store.selected() == EXPERIMENT
