"""What the engine reads off the use cases: the state the PVs show (`BeamlineState`), the selection read at
start, and the contacts with outside systems behind the Health PVs."""

from __future__ import annotations

import dataclasses

import pytest
from dmagic_ioc.ioc.domain.model import DMError, InputError
from dmagic_ioc.ioc.usecases import Adapters, Beamline, BeamlineState, Outcome

from ..fakes.ports import EXPERIMENT, NOW


def restarted(beamline: Beamline, fakes) -> Beamline:
    """A new Beamline on the same fakes, as after an IOC restart."""
    return Beamline(beamline.settings, Adapters(**vars(fakes)), clock=lambda: NOW)


def test_read_selection_with_nothing_selected_reads_the_stations_list(beamline):
    assert beamline.read_selection() == Outcome("no experiment selected")
    assert (beamline.state.experiment, beamline.state.proposal, beamline.state.experiments) == (None, None, ())
    assert beamline.contacts() == [("DM", True)]


def test_read_selection_after_a_restart_shows_the_selected_experiment_and_who_was_emailed(created, fakes):
    created.email(everyone=False)
    again = restarted(created, fakes)
    assert again.read_selection() == Outcome(f"selected experiment: {EXPERIMENT}")
    shown = again.state
    assert shown.experiment == fakes.dm.experiments[EXPERIMENT]
    assert shown.emailed == ("d310001", "d310002", "d310009")
    assert (shown.experiments, shown.globus_url) == ((EXPERIMENT,), created.state.globus_url)
    assert shown.proposal == created.state.proposal  # the proposal PVs show it before any Refresh
    assert shown.shown.beamtime == created.state.proposal and shown.scheduled is None
    assert again.contacts() == [("DM", True), ("DM", True)]


def test_a_selection_dm_could_not_read_at_start_is_read_when_a_command_needs_it(created, fakes):
    again = restarted(created, fakes)
    real_get = fakes.dm.get_experiment

    def unreachable(name):
        raise DMError("DM service unreachable")

    fakes.dm.get_experiment = unreachable
    with pytest.raises(DMError):
        again.read_selection()
    assert again.state.experiment is None
    assert again.contacts() == [("DM", False)]

    fakes.dm.get_experiment = real_get  # DM is back: the next command reads the selection first
    assert again.daq_start() == Outcome(f"transfer of {EXPERIMENT} started")
    assert again.state.experiment.name == EXPERIMENT
    assert fakes.transfer.starts[-1][0] == EXPERIMENT


def test_contacts_are_taken_once_oldest_first(beamline):
    beamline.refresh(0.0)
    beamline.create()
    taken = beamline.contacts()
    assert taken[:3] == [("Scheduling", True), ("Scheduling", True), ("DM", True)]  # the refresh, then Create's
    assert ("Globus", True) in taken[3:]
    assert beamline.contacts() == []


def test_a_service_error_is_a_contact_of_its_own_system_and_bad_input_of_none(created, fakes):
    def storage_gone(experiment, sources, *, once):
        raise DMError("the storage of the experiment is missing")

    fakes.transfer.start = storage_gone  # the built-in engine: no outside system, but the failure names DM
    with pytest.raises(DMError):
        created.daq_start()
    assert created.contacts() == [("DM", False)]

    def refused(experiment, sources, *, once):
        raise InputError("the _rec folder is a symbolic link: refused")

    fakes.transfer.start = refused
    with pytest.raises(InputError):
        created.daq_start()
    assert created.contacts() == []


def test_the_state_is_replaced_whole_never_changed_in_place(beamline):
    first = beamline.state
    beamline.refresh(0.0)
    refreshed = beamline.state
    beamline.create()
    assert first == BeamlineState()  # a reader holding a snapshot keeps a consistent one
    assert refreshed.experiment is None and refreshed.scheduled.beamtime.gup == "1012039"
    assert beamline.state.experiment.name == EXPERIMENT and beamline.state.scheduled == refreshed.scheduled
    with pytest.raises(dataclasses.FrozenInstanceError):
        beamline.state.experiment = None
