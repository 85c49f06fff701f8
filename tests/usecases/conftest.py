"""The handlers on the fakes of tests/fakes/ports.py, run as the supervisor runs them: plain blocking Python,
one at a time, each on the state the last one left."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dmagic_ioc.ioc.app.commands import HANDLERS
from dmagic_ioc.ioc.app.handling import handle
from dmagic_ioc.ioc.app.messages import Command, Create, Event, Refresh
from dmagic_ioc.ioc.app.services import Adapters, Services
from dmagic_ioc.ioc.app.state import BeamlineState, Outcome
from dmagic_ioc.ioc.settings.schema import EmailSettings

from ..fakes.ports import NOW, FakeMailer, fake_adapters, settings_in


class Beamline:
    """Runs commands through the dispatch table as the supervisor does, the state carried from one to the next."""

    def __init__(self, services: Services):
        self.services = services
        self.state = BeamlineState()
        self.events: tuple[Event, ...] = ()  # what the last command raised

    def run(self, command: Command) -> Outcome:
        """The handler's outcome; its error raised (the state it changed before kept, as the supervisor keeps it)."""
        result = handle(HANDLERS, self.services, self.state, command)
        self.state, self.events = result.state, result.events
        if result.error is not None:
            raise result.error
        assert result.outcome is not None
        return result.outcome

    def contacts(self) -> list[tuple[str, bool]]:
        return self.services.contacts()

    @property
    def settings(self):
        return self.services.settings

    @property
    def adapters(self) -> Adapters:
        return self.services.adapters


@pytest.fixture
def fakes(tmp_path) -> SimpleNamespace:
    """One fake per port, e-mail included."""
    adapters = fake_adapters(tmp_path)
    adapters.mailer = FakeMailer()
    return adapters


@pytest.fixture
def beamline(tmp_path, fakes) -> Beamline:
    """A beamline at NOW (inside proposal 1012039) that nothing has run on yet."""
    settings = settings_in(tmp_path, email=EmailSettings(enabled=True, sender="2-BM <tomo@example.gov>"))
    return Beamline(Services(settings, fakes.ports(), clock=lambda: NOW))


@pytest.fixture
def created(beamline) -> Beamline:
    """After Refresh and Create: experiment EXPERIMENT exists and is selected; the contacts so far taken."""
    beamline.run(Refresh(0.0))
    beamline.run(Create())
    beamline.contacts()
    return beamline
