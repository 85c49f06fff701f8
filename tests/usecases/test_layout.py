"""dm.layout and dm.subdirs in the handlers: where Create places the storage, where DaqStart sends the files."""

from __future__ import annotations

from dataclasses import replace

import pytest
from dmagic_ioc.ioc.app.messages import AddUser, Create, CreateManual, DaqStart, Refresh, Upload
from dmagic_ioc.ioc.app.services import Services
from dmagic_ioc.ioc.app.state import ManualRequest
from dmagic_ioc.ioc.domain.errors import InputError, PartialAccess

from ..fakes.ports import EXPERIMENT, NOW, settings_in
from .conftest import Beamline


def beamline_with(tmp_path, fakes, **dm) -> Beamline:
    settings = settings_in(tmp_path)
    settings = replace(settings, dm=replace(settings.dm, **dm))
    return Beamline(Services(settings, fakes.ports(), clock=lambda: NOW))


def test_create_places_the_storage_by_the_schedules_run(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes, layout="{storage_root}/{run}/pass-{gup}")
    beamline.run(Refresh(0.0))
    beamline.run(Create())
    storage = tmp_path / "storage" / "2026-3" / "pass-1012039"
    assert fakes.dm.experiments[EXPERIMENT].storage_directory == str(storage)
    raw = str(tmp_path / "data" / EXPERIMENT)
    beamline.run(DaqStart())
    assert fakes.transfer.starts[-1][1] == {raw: str(storage / "data"), f"{raw}_rec": str(storage / "analysis")}


def test_transfer_destinations_follow_subdirs(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes, layout="{storage_root}/{year}/{gup}",
                             subdirs=("raw", "processed", "shared", "logs"))  # fmt: skip
    beamline.run(Refresh(0.0))
    beamline.run(Create())
    storage = tmp_path / "storage" / "2026" / "1012039"
    raw = str(tmp_path / "data" / EXPERIMENT)
    beamline.run(Upload())
    assert fakes.transfer.starts[-1][1] == {raw: str(storage / "raw"), f"{raw}_rec": str(storage / "processed")}


def test_beamline_and_pi_last_name_fill_the_layout_folder_safe(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes, layout="{storage_root}/{beamline}/{year_month}/{pi_last_name}-{gup}")
    beamline.run(Refresh(0.0))
    beamline.run(Create())
    expected = tmp_path / "storage" / "2-BM-A,B" / "2026-10" / "MullerLukasiewicz-1012039"
    assert fakes.dm.experiments[EXPERIMENT].storage_directory == str(expected)


def test_a_manual_experiment_takes_the_run_holding_its_start(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes, layout="{storage_root}/{run}/pass-{gup}")
    beamline.run(CreateManual(ManualRequest()))  # starts on the 1st of the month, inside run 2026-3
    stored = fakes.dm.experiments["2026-10-Staff-0"]
    assert stored.storage_directory == str(tmp_path / "storage" / "2026-3" / "pass-0")


def test_a_manual_experiment_outside_every_run_is_refused_when_the_layout_needs_the_run(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes, layout="{storage_root}/{run}/pass-{gup}")
    with pytest.raises(InputError, match=r"\{run\}.*2027-03-01"):
        beamline.run(CreateManual(ManualRequest(start="2027-03-01")))
    assert fakes.dm.experiments == {}


def test_a_layout_without_run_never_asks_the_schedule_for_runs(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes, layout="{storage_root}/{year}/{gup}")
    beamline.run(CreateManual(ManualRequest(start="2027-03-01", gup=77)))
    assert fakes.dm.experiments["2027-03-Staff-77"].storage_directory == str(tmp_path / "storage" / "2027" / "77")
    assert ("Scheduling", True) not in beamline.contacts()


def test_a_group_dm_could_not_give_is_a_warning_and_the_rest_proceeds(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes)
    made = fakes.dm.create_experiment

    def without_group(experiment):
        raise PartialAccess("dm.posix.group: unix group 'p1012039' does not exist on this host", done=made(experiment))

    fakes.dm.create_experiment = without_group
    beamline.run(Refresh(0.0))
    beamline.contacts()
    outcome = beamline.run(Create())
    assert outcome.warning and "unix group 'p1012039' does not exist" in outcome.message
    assert outcome.message.startswith(f"created experiment {EXPERIMENT}")
    assert fakes.state.selection == EXPERIMENT and fakes.dm.experiments[EXPERIMENT].users  # users added all the same
    assert ("DM", False) not in beamline.contacts()  # DM answered: its Health stays good


def test_users_without_a_unix_account_are_a_warning_naming_them(tmp_path, fakes):
    beamline = beamline_with(tmp_path, fakes)
    beamline.run(Refresh(0.0))
    beamline.run(Create())
    added = fakes.dm.add_users

    def partly(name, users):
        raise PartialAccess("dm.posix.user_account: no unix account d310077 on this host", done=added(name, users))

    fakes.dm.add_users = partly
    beamline.contacts()
    outcome = beamline.run(AddUser("310077"))
    assert outcome.warning and outcome.message.startswith(f"gave d310077 access to {EXPERIMENT}")
    assert "no unix account d310077" in outcome.message
    assert ("DM", False) not in beamline.contacts()
