"""The in-process rig of this folder: a DMagicIOC and its supervisor on the fakes of tests/fakes/ports.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from dmagic_ioc.ioc.app.messages import ReadSelection
from dmagic_ioc.ioc.app.services import Services
from dmagic_ioc.ioc.app.supervisor import Supervisor
from dmagic_ioc.ioc.epics.server import DMagicIOC

from ..fakes.ports import NOW, fake_adapters, settings_in


@pytest.fixture
async def rig(tmp_path):
    """A DMagicIOC on fakes, its supervisor's worker running and the selection read as at startup,
    without a server, timers or autosave loop (tests poll with `supervisor.poll_transfer()`)."""
    settings = settings_in(tmp_path)
    fakes = fake_adapters(tmp_path)
    services = Services(settings, fakes.ports(), clock=lambda: NOW)
    supervisor = Supervisor(services)
    ioc = DMagicIOC("test:", supervisor=supervisor)
    assert (await supervisor.work(ReadSelection(), shown=False)).failure == ""
    released: list[threading.Event] = []
    yield SimpleNamespace(ioc=ioc, supervisor=supervisor, services=services, adapters=services.adapters,
                          settings=settings, fakes=fakes,
                          tmp=tmp_path, released=released)  # fmt: skip
    for event in released:  # never leave a worker thread waiting
        event.set()
