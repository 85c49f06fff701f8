"""The in-process rig of this folder: a DMagicIOC on the fakes of tests/fakes/ports.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from dmagic_ioc.ioc.epics.server import DMagicIOC
from dmagic_ioc.ioc.usecases import Adapters, Beamline

from ..fakes.ports import NOW, fake_adapters, settings_in


@pytest.fixture
async def rig(tmp_path):
    """A DMagicIOC on fakes, shown once as `startup` would, without a server or autosave loop."""
    settings = settings_in(tmp_path)
    fakes = fake_adapters(tmp_path)
    beamline = Beamline(settings, Adapters(**vars(fakes)), clock=lambda: NOW)
    ioc = DMagicIOC("test:", beamline=beamline)
    assert await ioc.engine.background("reading the selected experiment", beamline.read_selection) == ""
    released: list[threading.Event] = []
    yield SimpleNamespace(ioc=ioc, beamline=beamline, settings=settings, fakes=fakes, tmp=tmp_path, released=released)
    for event in released:  # never leave a worker thread waiting
        event.set()
