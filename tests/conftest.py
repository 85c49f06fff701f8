"""Session-wide set-up: a loopback-only EPICS network, and the fixtures every tier may use.

Helpers to import live in `tests/helpers.py` (paths, free ports, polling) and `tests/loopback.py`
(the session's CA ports and EPICS environment); the fakes of the ports in `tests/fakes/ports.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import APS_FIXTURES
from .loopback import EPICS_PORTS, epics_env

# Set before any CA client library (pyepics' libca, caproto) reads them.
os.environ.update(epics_env(EPICS_PORTS[0]))

# Helper modules with plain `assert`s, rewritten as test modules are: a failure shows the values compared.
pytest.register_assert_rewrite("tests.ioc.rig")

# The installed IOC's fixtures (schedule_path, config, ioc): for tests/e2e and tests/faults alike.
pytest_plugins = ["tests.e2e.fixtures"]


@pytest.fixture(scope="session")
def aps_fixtures() -> Path:
    return APS_FIXTURES
