"""Fault injection: the installed IOC in a subprocess, probed as a hostile client and a faulty world would."""

from __future__ import annotations

import pytest

from ..e2e.conftest import config, ioc, schedule_path  # noqa: F401  (the same IOC fixtures as e2e)

pytestmark = pytest.mark.faults
