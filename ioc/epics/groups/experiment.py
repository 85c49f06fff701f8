"""Experiment PVs: the selected DM experiment, its users, and the commands that manage them."""

from __future__ import annotations

from caproto import AlarmSeverity

from ...usecases import BeamlineState, ManualRequest
from ..pvs import NO_YES, command, enum, long, string, text, update
from .base import CommandGroup

EMAIL_MODES = ("New users", "All users")  # who Email writes to


class ExperimentGroup(CommandGroup):
    """The selected experiment in data management: create, select, users, e-mail, delete."""

    experiment_name = text("ExperimentName", 256, "The selected experiment")
    experiment_exists = enum("ExperimentExists", NO_YES, "It exists in DM")
    data_directory = text("DataDirectory", 1024, "Where detectors write: {data_top_dir}/{experiment}")
    storage_directory = text("StorageDirectory", 1024, "The experiment's directory in DM storage")
    globus_url = text("GlobusURL", 1024, "Link to the data, when Globus is enabled")
    experiment_users = text("ExperimentUsers", 8192, "Usernames with access, comma-separated")
    experiments = text("Experiments", 16384, "The station's experiments, newest first, newline-separated")
    emailed_users = text("EmailedUsers", 8192, "Usernames already e-mailed for this experiment")

    badges = text("Badges", 1024, "Argument of AddUser/RemoveUser: comma-separated badges", rw=True)
    select_name = text("SelectName", 256, "Argument of Select", rw=True)
    delete_confirm = text("DeleteConfirm", 256, "Must equal ExperimentName for Delete to run", rw=True)
    email_mode = enum("EmailMode", EMAIL_MODES, "Who Email writes to", rw=True)

    manual_last_name = text("Manual:LastName", 256, "PI last name of a manual experiment (default Staff)", rw=True)
    manual_first_name = text("Manual:FirstName", 256, "PI first name of a manual experiment", rw=True)
    manual_institution = text("Manual:Institution", 256, "PI institution of a manual experiment", rw=True)
    manual_email = text("Manual:Email", 256, "PI e-mail of a manual experiment", rw=True)
    manual_title = text("Manual:Title", 256, "Title of a manual experiment", rw=True)
    manual_gup = long("Manual:GUP", "Proposal number of a manual experiment (0 = none)", rw=True, limits=(0, 2**31 - 1))
    manual_badges = text(
        "Manual:Badges", 1024, "Users of a manual experiment; the first is the Manual:* person", rw=True
    )
    manual_start = string("Manual:Start", "YYYY-MM-DD; empty = first of this month", rw=True)
    manual_end = string("Manual:End", "YYYY-MM-DD; empty = 14 days after the start", rw=True)

    create = command("Create", "Create the DM experiment for the current proposal and select it")
    create_manual = command("CreateManual", "Create an experiment from the Manual:* PVs and select it")
    select = command("Select", "Select the experiment named in SelectName")
    add_user = command("AddUser", "Give the badges in Badges access")
    remove_user = command("RemoveUser", "Take access from the badges in Badges")
    email = command("Email", "Send the data-access message to the experiment's users (EmailMode)")
    delete = command("Delete", "Delete the selected experiment (needs DeleteConfirm)")

    @create.putter
    async def create(self, instance, value):
        return await self.run_command(instance, value, self.beamline.create)

    @create_manual.putter
    async def create_manual(self, instance, value):
        request = ManualRequest(
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
        return await self.run_command(instance, value, self.beamline.create_manual, request)

    @select.putter
    async def select(self, instance, value):
        return await self.run_command(instance, value, self.beamline.select, self.select_name.value)

    @add_user.putter
    async def add_user(self, instance, value):
        return await self.run_command(instance, value, self.beamline.add_users, self.badges.value)

    @remove_user.putter
    async def remove_user(self, instance, value):
        return await self.run_command(instance, value, self.beamline.remove_users, self.badges.value)

    @email.putter
    async def email(self, instance, value):
        return await self.run_command(instance, value, self.beamline.email, self.email_mode.value == "All users")

    @delete.putter
    async def delete(self, instance, value):
        attempt = value == "Busy" and self.engine.running is None  # a refused write changes nothing
        try:
            return await self.run_command(instance, value, self.beamline.delete, self.delete_confirm.value)
        finally:
            if attempt:  # a confirmation is good for one attempt only
                await update(self.delete_confirm, "")

    async def show(self, state: BeamlineState) -> None:
        """Show the selected experiment and the station's list."""
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
