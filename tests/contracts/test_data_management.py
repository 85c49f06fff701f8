"""DataManagement: the local DM (registry and folders on this disk) and FakeDM make, list, share and delete
experiments alike. The ESAF is not shared: the local DM has no ESAF data, FakeDM answers as the APS one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm.local import LocalDM
from dmagic_ioc.adapters.registry.store import Registry
from dmagic_ioc.ioc.domain.errors import InputError
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.domain.ports import DataManagement

from ..fakes.ports import BEAMTIME, EXPERIMENT, FakeDM

LATER_NAME = "2026-10-Ngo-1012040"
USERS = (
    ExperimentUser("d310001", "Mei Müller-Łukasiewicz", "mei@example.edu", "Example State University"),
    ExperimentUser("d310002", "Bo Li", "bo@example.org", "UChicago"),
    ExperimentUser("d310009", "Eva Sá", "eva@example.org", "Argonne", source="esaf"),
)


@dataclass
class Case:
    dm: DataManagement
    storage_root: Path

    def experiment(self, name: str = EXPERIMENT) -> Experiment:
        """An experiment as Create asks for it: its storage placed by dm.layout under storage_root."""
        return Experiment(
            name=name,
            title=BEAMTIME.title,
            gup=BEAMTIME.gup,
            esaf=BEAMTIME.esaf,
            start=BEAMTIME.start,
            end=BEAMTIME.end,
            year_month="2026-10",
            storage_directory=str(self.storage_root / "2026-10" / name),
            users=USERS,  # not made with it: users come through add_users
        )


@pytest.fixture(params=["fake", "local"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    storage_root, data_top_dir = tmp_path / "storage", tmp_path / "data"
    storage_root.mkdir()
    data_top_dir.mkdir()
    if request.param == "fake":
        yield Case(FakeDM(storage_root), storage_root)
        return
    with Registry(tmp_path / "state" / "registry.sqlite") as registry:
        yield Case(LocalDM(registry, storage_root, data_top_dir, "localhost"), storage_root)


def test_create_makes_the_storage_where_it_was_placed_without_users_and_a_rerun_finds_it(case):
    asked = case.experiment()
    made, created = case.dm.create_experiment(asked)
    assert created
    assert (made.name, made.title, made.gup, made.esaf) == (asked.name, asked.title, asked.gup, asked.esaf)
    assert (made.start, made.end, made.year_month) == (asked.start, asked.end, asked.year_month)
    assert made.storage_directory == asked.storage_directory and Path(made.storage_directory).is_dir()
    assert made.users == ()
    assert case.dm.get_experiment(EXPERIMENT) == made

    assert case.dm.create_experiment(asked) == (made, False)


def test_the_experiments_are_listed_newest_first(case):
    assert case.dm.list_experiments() == [] and case.dm.station_experiments() == []
    first, _ = case.dm.create_experiment(case.experiment())
    second, _ = case.dm.create_experiment(case.experiment(LATER_NAME))
    assert case.dm.list_experiments() == [LATER_NAME, EXPERIMENT]
    assert case.dm.station_experiments() == [second, first]


def test_an_experiment_it_does_not_have_is_none(case):
    assert case.dm.get_experiment(EXPERIMENT) is None


def test_users_are_added_once_each_and_removed_saying_who_had_access(case):
    case.dm.create_experiment(case.experiment())
    assert case.dm.add_users(EXPERIMENT, USERS[:2]) == ["d310001", "d310002"]
    assert case.dm.add_users(EXPERIMENT, USERS[1:] + USERS[2:]) == ["d310009"]
    found = case.dm.get_experiment(EXPERIMENT)
    assert found is not None and found.users == USERS  # each user's details and where the access came from

    assert case.dm.remove_users(EXPERIMENT, ["d310002", "d310404"]) == ["d310002"]
    found = case.dm.get_experiment(EXPERIMENT)
    assert found is not None and found.usernames == ("d310001", "d310009")


def test_delete_removes_the_experiment_and_its_storage(case):
    made, _ = case.dm.create_experiment(case.experiment())
    case.dm.add_users(EXPERIMENT, USERS)

    said = case.dm.delete_experiment(EXPERIMENT)

    assert said.startswith(f"deleted experiment {EXPERIMENT}")
    assert case.dm.get_experiment(EXPERIMENT) is None and case.dm.list_experiments() == []
    assert not Path(made.storage_directory).exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda dm: dm.add_users(EXPERIMENT, USERS),
        lambda dm: dm.remove_users(EXPERIMENT, ["d310001"]),
        lambda dm: dm.delete_experiment(EXPERIMENT),
    ],
    ids=["add_users", "remove_users", "delete_experiment"],
)
def test_changing_an_experiment_it_does_not_have_is_refused_as_bad_input(case, change):
    with pytest.raises(InputError, match=EXPERIMENT):
        change(case.dm)
    assert case.dm.list_experiments() == []
