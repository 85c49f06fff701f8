"""The command handlers, one per command, and the one table that finds them.

Each handler is `handler(step, command) -> Outcome`: it reads `step.state`, calls adapters through
`step.services.contact`, changes the state with `step.change`, raises events with `step.emit`, and
raises a `DMagicError` whose message is fit for `Status` when it refuses or fails.
"""

from __future__ import annotations

from ..handling import Handler
from ..messages import (
    AddUser,
    Catalog,
    Command,
    Create,
    CreateManual,
    DaqStart,
    DaqStop,
    Delete,
    Email,
    FollowSchedule,
    ReadSelection,
    Refresh,
    RefreshAutomatic,
    RemoveUser,
    ResumeTransfer,
    Select,
    Tag,
    Upload,
    UploadEnded,
)
from . import catalog, common, data, experiments, schedule, users

HANDLERS: dict[type[Command], Handler] = {
    ReadSelection: common.read_selection,
    Refresh: schedule.refresh,
    RefreshAutomatic: schedule.refresh_automatic,
    Tag: schedule.tag,
    Create: experiments.create,
    FollowSchedule: experiments.follow_schedule,
    CreateManual: experiments.create_manual,
    Select: experiments.select,
    Delete: experiments.delete,
    AddUser: users.add_user,
    RemoveUser: users.remove_user,
    Email: data.email,
    DaqStart: data.daq_start,
    DaqStop: data.daq_stop,
    Upload: data.upload,
    ResumeTransfer: data.resume_transfer,
    Catalog: catalog.catalog,
    UploadEnded: catalog.upload_ended,
}
