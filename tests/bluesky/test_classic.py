"""The classic ophyd device (pyepics) with the same run metadata and plan stubs, against the installed IOC.

pyepics reports a failed put as success and reads char waveforms as Latin-1: the device must still
raise with the IOC's Status text and read the proposal's names as they are.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ophyd", reason="the bluesky extra is not installed: pip install '.[bluesky]'")
pytest.importorskip("bluesky", reason="the bluesky extra is not installed: pip install '.[bluesky]'")

import bluesky.plans as bp
from dmagic_ioc.bluesky import CommandFailed, run_metadata, run_metadata_decorator
from dmagic_ioc.bluesky import plans as dm_plans
from dmagic_ioc.bluesky.classic import DataManagement
from ophyd.sim import det

from .conftest import (
    MANUAL,
    MANUAL_ARGUMENTS,
    MANUAL_EXPERIMENT,
    PROPOSAL_EXPERIMENT,
    create_manual,
    look_at_second_beamtime,
)

pytestmark = [
    pytest.mark.e2e,
    # The harness loads pyepics before the RunEngine imports ophyd, which would have pointed it at epicscorelibs.
    pytest.mark.filterwarnings("ignore:epicscorelibs.path.pyepics must be imported before epics.ca"),
]

MAJOR = 2


@pytest.fixture
def dm(ioc):
    device = DataManagement(ioc.prefix, name="dm")
    device.wait_for_connection(timeout=10)
    yield device
    device.destroy()


def test_a_count_carries_the_proposal_and_experiment(ioc, RE, dm):
    create_manual(ioc)

    @run_metadata_decorator(dm)
    def counted():
        return (yield from bp.count([det, dm], md={"sample": "foam"}))

    documents: list[tuple[str, dict]] = []
    RE(counted(), lambda name, doc: documents.append((name, doc)))
    start = documents[0][1]
    assert start["pi_name"] == "Zoë Müller-Łukasiewicz" and start["experiment_name"] == MANUAL_EXPERIMENT
    assert start["proposal_id"] == "77" and start["storage_directory"] == ioc.get("StorageDirectory")
    assert start["sample"] == "foam"  # the plan's own metadata stays
    assert run_metadata(dm) == {key: start[key] for key in run_metadata(dm)}

    descriptor = next(doc for name, doc in documents if name == "descriptor")
    assert descriptor["configuration"]["dm"]["data"]["dm_user_last_name"] == "Müller-Łukasiewicz"
    assert descriptor["data_keys"]["dm_status"]["dtype"] == "string"
    event = next(doc for name, doc in documents if name == "event")
    assert event["data"]["dm_status"] == ioc.get("Status") and event["data"]["dm_daq_state"] == "Stopped"
    assert "det" in event["data"]


def test_a_failed_command_raises_with_the_status_text(ioc, RE, dm):
    with pytest.raises(CommandFailed) as failure:  # pyepics itself calls this put a success
        RE(dm_plans.select(dm, "2026-11-Nobody-1"))
    assert failure.value.status == ioc.get("Status")
    assert "no experiment named 2026-11-Nobody-1" in failure.value.status
    assert ioc.severity("Status") == MAJOR

    look_at_second_beamtime(ioc)
    RE(dm_plans.create(dm))  # a command that works completes quietly
    assert ioc.get("ExperimentName") == PROPOSAL_EXPERIMENT and ioc.severity("Status") == 0


def test_upload_and_wait_returns_with_the_files_in_storage(ioc, RE, dm, tmp_path):
    look_at_second_beamtime(ioc)
    RE(dm_plans.create(dm))
    raw = tmp_path / "data" / PROPOSAL_EXPERIMENT
    (raw / "f0.dat").write_bytes(os.urandom(10_000))  # settles in 0.3 s (settle_time)
    RE(dm_plans.upload_and_wait(dm, timeout=20))
    stored = tmp_path / "storage" / "2026-11" / PROPOSAL_EXPERIMENT / "data" / "f0.dat"
    assert stored.read_bytes() == (raw / "f0.dat").read_bytes()
    assert ioc.get("DaqState") == "Stopped"


def test_tag_writes_the_prefix_and_a_missing_target_raises(ioc, RE, dm):
    look_at_second_beamtime(ioc)
    with pytest.raises(CommandFailed, match="no PV under nothere:Tomo: answered"):
        RE(dm_plans.tag(dm, prefix="nothere:Tomo:"))  # the IOC waits 3 s for the target's PVs
    assert ioc.get("TagPrefix") == "nothere:Tomo:" and ioc.severity("Status") == MAJOR


def test_plans_make_a_manual_experiment_give_access_and_delete_it_by_its_name(ioc, RE, dm):
    RE(dm_plans.create_manual(dm, **MANUAL_ARGUMENTS, badges=[310010, 310012], end="2026-11-05"))
    assert ioc.get("ExperimentName") == MANUAL_EXPERIMENT and ioc.severity("Status") == 0
    assert {name: ioc.get(name) for name in MANUAL} == MANUAL  # non-ASCII written as UTF-8 through pyepics
    assert ioc.get("Manual:Badges") == "310010,310012" and ioc.get("Manual:End") == "2026-11-05"
    assert dm.experiment_exists.get() == 1 and dm.proposal_title.get() == MANUAL["Manual:Title"]

    RE(dm_plans.add_users(dm, "310011"))
    assert "d310011" in ioc.get("ExperimentUsers").split(",")
    RE(dm_plans.remove_users(dm, [310011]))
    assert "d310011" not in ioc.get("ExperimentUsers").split(",")
    with pytest.raises(CommandFailed, match="not enabled"):  # the harness's IOC has no e-mail
        RE(dm_plans.email(dm, all_users=True))
    assert ioc.get("EmailMode") == "All users"

    with pytest.raises(CommandFailed, match="DeleteConfirm must equal ExperimentName"):
        RE(dm_plans.delete(dm, PROPOSAL_EXPERIMENT))  # a name other than the selected one deletes nothing
    assert ioc.get("ExperimentName") == MANUAL_EXPERIMENT and ioc.get("DeleteConfirm") == ""
    RE(dm_plans.delete(dm, MANUAL_EXPERIMENT))
    assert ioc.get("ExperimentName") == "" and MANUAL_EXPERIMENT not in ioc.get("Experiments").split("\n")
    assert ioc.severity("Status") == 0 and dm.experiment_exists.get() == 0
