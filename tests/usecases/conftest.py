"""The use cases on the fakes of tests/fakes/ports.py, called as the engine calls them: plain blocking Python."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dmagic_ioc.ioc.config import EmailSettings
from dmagic_ioc.ioc.usecases import Adapters, Beamline

from ..fakes.ports import NOW, FakeMailer, fake_adapters, settings_in


@pytest.fixture
def fakes(tmp_path) -> SimpleNamespace:
    """One fake per port, e-mail included."""
    adapters = fake_adapters(tmp_path)
    adapters.mailer = FakeMailer()
    return adapters


@pytest.fixture
def beamline(tmp_path, fakes) -> Beamline:
    """A Beamline at NOW (inside proposal 1012039) that nothing has run on yet."""
    settings = settings_in(tmp_path, email=EmailSettings(enabled=True, sender="2-BM <tomo@example.gov>"))
    return Beamline(settings, Adapters(**vars(fakes)), clock=lambda: NOW)


@pytest.fixture
def created(beamline) -> Beamline:
    """After Refresh and Create: experiment EXPERIMENT exists and is selected; the contacts so far taken."""
    beamline.refresh(0.0)
    beamline.create()
    beamline.contacts()
    return beamline
