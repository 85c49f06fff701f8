"""Experiment PVs: the selected DM experiment, its users, and the commands that manage them."""

from __future__ import annotations

from caproto import AlarmSeverity

from ...app.jobs import CommandRefused, View
from ...app.messages import AddUser, Command, Create, CreateManual, Delete, Email, RemoveUser, Select
from ...app.state import ManualRequest
from ..declarations import EMAIL_MODES, EXPERIMENT, NO_YES
from ..pvs import update
from .base import CommandGroup


class ExperimentGroup(CommandGroup, pvs=EXPERIMENT):
    """The selected experiment in data management: create, select, users, e-mail, delete."""

    def command(self, name: str) -> Command:
        match name:
            case "Create":
                return Create()
            case "CreateManual":
                return CreateManual(self._manual_request())
            case "Select":
                return Select(self.select_name.value)
            case "AddUser":
                return AddUser(self.badges.value)
            case "RemoveUser":
                return RemoveUser(self.badges.value)
            case "Email":
                return Email(everyone=self.email_mode.value == EMAIL_MODES[1])
            case "Delete":
                return Delete(self.delete_confirm.value)
        raise NotImplementedError(name)

    async def submit(self, instance, command: Command) -> None:
        """A confirmation (DeleteConfirm) is good for one attempt only; a refused put changes nothing."""
        try:
            await super().submit(instance, command)
        except CommandRefused:
            raise
        except Exception:
            await self._attempted(command)
            raise
        await self._attempted(command)

    async def _attempted(self, command: Command) -> None:
        if isinstance(command, Delete):
            await update(self.delete_confirm, "")

    def _manual_request(self) -> ManualRequest:
        return ManualRequest(
            last_name=self.manual_last_name.value,
            first_name=self.manual_first_name.value,
            institution=self.manual_institution.value,
            email=self.manual_email.value,
            title=self.manual_title.value,
            gup=self.manual_gup.value,
            badges=self.manual_badges.value,
            start=self.manual_start.value,
            end=self.manual_end.value,
        )

    async def show(self, view: View) -> None:
        """Show the selected experiment and the station's list."""
        state = view.state
        if self.unchanged(state):
            return
        experiment = state.experiment
        await update(self.experiment_name, experiment.name if experiment else "")
        await update(self.experiment_exists, NO_YES[experiment is not None], AlarmSeverity.NO_ALARM)
        await update(self.data_directory, experiment.data_directory if experiment else "")
        await update(self.storage_directory, experiment.storage_directory if experiment else "")
        await update(self.globus_url, state.globus_url)
        await update(self.experiment_users, ",".join(experiment.usernames) if experiment else "")
        await update(self.experiments, whole_lines(state.experiments, self.experiments.max_length - 1))
        await update(self.emailed_users, ",".join(state.emailed))


def whole_lines(lines: tuple[str, ...], limit: int) -> str:
    """As many whole lines as fit in `limit` UTF-8 bytes (the newest names come first)."""
    kept, size = [], -1
    for line in lines:
        size += len(line.encode("utf-8")) + 1
        if size > limit:
            break
        kept.append(line)
    return "\n".join(kept)
