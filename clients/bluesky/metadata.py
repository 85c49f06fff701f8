"""Run metadata from the IOC: proposal, ESAF, PI, experiment and storage, for every run's start document.

- `run_metadata(dm)`: the values now, for `RE.md.update(...)` or a plan's `md=`;
- `read_run_metadata(dm)`: the same inside a plan (`md = yield from read_run_metadata(dm)`);
- `with_run_metadata(plan, dm)` / `@run_metadata_decorator(dm)`: each run of the plan gets them, read as
  the run opens; `RE.preprocessors.append(functools.partial(with_run_metadata, dm=dm))` does it for every
  plan the RunEngine runs. Keys the plan gives in its own `md` win.

Works with the ophyd-async device and with the classic one (`dmagic_ioc.bluesky.classic`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.run_engine import call_in_bluesky_event_loop
from bluesky.utils import Msg
from ophyd_async.core import SignalR

from .commands import loud

# The device's attributes that the metadata is made of, read together.
FIELDS = (
    "beamline",
    "run_cycle",
    "proposal_number",
    "proposal_title",
    "esaf_number",
    "user_name",
    "user_last_name",
    "user_email",
    "user_badge",
    "experiment_name",
    "data_directory",
    "storage_directory",
)
READ_TIMEOUT = 10.0  # seconds, for run_metadata outside a plan

Plan = Generator[Msg, Any, Any]


def metadata_from(values: Mapping[str, str]) -> dict[str, str]:
    """Start-document keys from the values of FIELDS (what the IOC shows for the selected experiment)."""
    return {
        "beamline_id": values["beamline"],
        "run_cycle": values["run_cycle"],
        "proposal_id": values["proposal_number"],
        "proposal_title": values["proposal_title"],
        "esaf_id": values["esaf_number"],
        "pi_name": f"{values['user_name']} {values['user_last_name']}".strip(),
        "pi_email": values["user_email"],
        "pi_badge": values["user_badge"],
        "experiment_name": values["experiment_name"],
        "data_directory": values["data_directory"],
        "storage_directory": values["storage_directory"],
    }


def run_metadata(dm: Any) -> dict[str, str]:
    """The IOC's run metadata now (blocking; not inside a plan, where `read_run_metadata` does it)."""
    signals = [getattr(dm, field) for field in FIELDS]
    if isinstance(signals[0], SignalR):  # ophyd-async: read on the RunEngine's event loop

        async def get_all() -> list[str]:
            return list(await asyncio.gather(*(signal.get_value(cached=False) for signal in signals)))

        values = call_in_bluesky_event_loop(loud(get_all()), timeout=READ_TIMEOUT)
    else:  # classic ophyd
        values = [signal.get(use_monitor=False) for signal in signals]
    return metadata_from(dict(zip(FIELDS, values, strict=True)))


def read_run_metadata(dm: Any) -> Plan:
    """Plan stub: read the IOC's run metadata and return it."""
    values = {}
    for field in FIELDS:
        values[field] = yield from bps.rd(getattr(dm, field))
    return metadata_from(values)


def with_run_metadata(plan: Plan, dm: Any) -> Plan:
    """Run `plan` with the IOC's run metadata, read as each run opens, in the start document."""
    # plan_mutator hands the messages of read_then_open back to add_metadata: the open_run made here goes through
    opened: set[int] = set()

    def add_metadata(msg: Msg) -> tuple[Plan | None, None]:
        if msg.command != "open_run" or id(msg) in opened:
            return None, None

        def read_then_open() -> Plan:
            metadata = yield from read_run_metadata(dm)
            with_metadata = msg._replace(kwargs={**metadata, **msg.kwargs})
            opened.add(id(with_metadata))
            return (yield with_metadata)

        return read_then_open(), None

    return (yield from bpp.plan_mutator(plan, add_metadata))


run_metadata_decorator: Callable[..., Callable[[Callable[..., Plan]], Callable[..., Plan]]] = bpp.make_decorator(
    with_run_metadata
)
