"""The use cases behind the command PVs, in plain blocking Python: no PVs, no caproto, no adapters.

`Beamline` holds the adapters (through the ports) and the state the PVs show
(`BeamlineState`: the scheduled proposal, the selected experiment and its
proposal, ...). Each public method is one command or background job: it
validates its input before changing anything, calls the adapters, replaces the
state, and returns an `Outcome` or raises a `DMagicError` whose message is fit
for `Status`. The engine (`ioc/engine.py`) runs them one at a time in a worker
thread, so the state needs no lock, and reads `contacts()` for the Health PVs.
One module per concern: `schedule` (Refresh, Tag), `experiments` (Create ...
Delete), `data` (Email, the transfer), `catalog` (metadata snapshots, datasets);
`base` holds what they share.
"""

from __future__ import annotations

from .base import SYSTEMS, Adapters, BeamlineState, ManualRequest, Outcome
from .data import DataCases
from .experiments import ExperimentCases
from .schedule import ScheduleCases

__all__ = ["SYSTEMS", "Adapters", "Beamline", "BeamlineState", "ManualRequest", "Outcome"]


class Beamline(ScheduleCases, ExperimentCases, DataCases):
    """The beamline's scheduling and data management, as use cases."""
