"""Bluesky on the IOC: devices, a path provider, run metadata and plan stubs (`pip install "dmagic-ioc[bluesky]"`).

- `DataManagement(prefix)`: the ophyd-async device, a signal for every PV of the IOC;
  `dmagic_ioc.bluesky.classic.DataManagement` is the classic ophyd one, with the same attributes;
- `ExperimentPathProvider(dm)`: ophyd-async detectors write into the selected experiment's DataDirectory;
- `run_metadata`, `read_run_metadata`, `with_run_metadata`, `run_metadata_decorator`: proposal, ESAF, PI,
  experiment and storage in every run's start document;
- `dmagic_ioc.bluesky.plans`: create, create_manual, select, add_users, remove_users, email, delete,
  daq_start, daq_stop, upload_and_wait, catalog, tag.

A client of the IOC over Channel Access: nothing here imports the IOC itself.
"""

from __future__ import annotations

try:
    from .commands import CommandFailed, TransferFailed
    from .devices import Command, DaqState, DataManagement, EmailMode, Health
    from .metadata import read_run_metadata, run_metadata, run_metadata_decorator, with_run_metadata
    from .paths import ExperimentPathProvider
except ImportError as error:  # the base install has none of the Bluesky stack
    needs = "dmagic_ioc.bluesky needs the bluesky extra: pip install 'dmagic-ioc[bluesky]'"
    raise ImportError(f"{needs} ({error})") from error

__all__ = [
    "Command",
    "CommandFailed",
    "DaqState",
    "DataManagement",
    "EmailMode",
    "ExperimentPathProvider",
    "Health",
    "TransferFailed",
    "read_run_metadata",
    "run_metadata",
    "run_metadata_decorator",
    "with_run_metadata",
]
