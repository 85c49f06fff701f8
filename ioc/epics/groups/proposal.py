"""Current proposal PVs (tomoScan-compatible names), Refresh and Tag."""

from __future__ import annotations

from caproto import AlarmSeverity

from ...app.jobs import View
from ...app.messages import Command, Refresh, Tag
from ...domain.beamtime import UserInfo
from ...domain.people import user_lists
from ...domain.times import iso
from ..declarations import MAX_REFRESH_PERIOD, MIN_REFRESH_PERIOD, NO_YES, PROPOSAL
from ..pvs import update
from .base import CommandGroup


class ProposalGroup(CommandGroup, pvs=PROPOSAL):
    """Who runs the experiment now, from the scheduling system; Refresh and Tag."""

    async def put_refresh_period(self, instance, value):
        if 0 < value < MIN_REFRESH_PERIOD:
            why = f"it takes 0 (off) or {MIN_REFRESH_PERIOD:g} to {MAX_REFRESH_PERIOD:g} seconds"
            refusal = instance.refuse(why)
            await self.put_refused(str(refusal))
            raise refusal
        return value

    def command(self, name: str) -> Command:
        if name == "Tag":
            return Tag(self.tag_prefix.value)
        return Refresh(self.time_offset_days.value)

    async def show(self, view: View) -> None:
        """Show the proposal of the experiment data goes to (before a selection, the schedule's), and
        what the schedule shows now."""
        state = view.state
        if self.unchanged(state):
            return
        scheduled = state.scheduled.beamtime if state.scheduled else None
        await update(self.run, state.scheduled.run.name if state.scheduled and state.scheduled.run else "")
        await update(self.schedule_proposal_number, scheduled.gup if scheduled else "")
        await update(self.schedule_pi, scheduled.pi.full_name if scheduled and scheduled.pi else "")
        differs = state.experiment is not None and scheduled is not None and not state.shows_the_schedule
        await update(
            self.schedule_differs, NO_YES[differs], AlarmSeverity.MINOR_ALARM if differs else AlarmSeverity.NO_ALARM
        )
        if state.scheduled is not None:  # a beamtime at now + TimeOffsetDays, whatever is selected
            active = scheduled is not None
            severity = AlarmSeverity.NO_ALARM if active else AlarmSeverity.MINOR_ALARM
            await update(self.proposal_active, NO_YES[active], severity)
        current = state.shown
        if current is None:
            return
        beamtime = current.beamtime
        info = UserInfo.of(current)
        for attribute, channel in self._user_info_pvs().items():
            await update(channel, getattr(info, attribute))
        people = beamtime.people_pi_first if beamtime else ()
        await update(self.proposal_type, beamtime.proposal_type if beamtime else "")
        await update(self.proposal_start, iso(beamtime.start) if beamtime else "")
        await update(self.proposal_end, iso(beamtime.end) if beamtime else "")
        await update(self.proprietary, NO_YES[bool(beamtime and beamtime.proprietary)])
        await update(self.mail_in, NO_YES[bool(beamtime and beamtime.mail_in)])
        await update(self.users_count, len(people))
        names, badges, emails = user_lists(people)  # unambiguous: no comma inside an entry
        await update(self.users_names, names)
        await update(self.users_badges, badges)
        await update(self.users_emails, emails)

    def _user_info_pvs(self) -> dict:
        """`UserInfo` attribute -> the PV that shows it (tomoScan's names)."""
        return {
            "first_name": self.user_name,
            "last_name": self.user_last_name,
            "email": self.user_email,
            "badge": self.user_badge,
            "institution": self.user_institution,
            "updated": self.user_info_update,
            "proposal": self.proposal_number,
            "title": self.proposal_title,
            "esaf": self.esaf_number,
            "esaf_doi": self.esaf_doi_number,
            "year_month": self.experiment_year_month,
        }
