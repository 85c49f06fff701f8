"""Current proposal PVs (tomoScan-compatible names), the Refresh loop, and Tag."""

from __future__ import annotations

import contextlib
import logging
import time

from caproto import AlarmSeverity, SkipWrite

from ...domain.model import LIST_BYTES, TEXT_BYTES, TITLE_BYTES, UserInfo, iso, user_lists
from ...engine import CommandFailed
from ...usecases import BeamlineState
from ..pvs import NO_YES, command, double, enum, long, string, text, update
from .base import CommandGroup

log = logging.getLogger(__name__)

MIN_REFRESH_PERIOD, MAX_REFRESH_PERIOD = 10.0, 86400.0
# After a failed automatic refresh, retry after 10 s, then 20 s, 40 s, ... up to RefreshPeriod.
FIRST_RETRY = 10.0


def retry_delay(period: float, failures: int) -> float:
    """Seconds until the next automatic refresh: the period, or after failures 10 s, 20 s, 40 s, ...
    up to the period (the exponent is capped: a week-long outage never overflows)."""
    if not failures:
        return period
    return min(period, FIRST_RETRY * 2.0 ** min(failures - 1, 30))


class ProposalGroup(CommandGroup):
    """Who runs the experiment now, from the scheduling system; Refresh and Tag."""

    beamline_name = string("Beamline", "Beamline id")
    run = string("Run", "Run containing now + offset, e.g. 2026-3")
    time_offset_days = double(
        "TimeOffsetDays", "Look this many days ahead (+) or back (-)", rw=True, units="d", limits=(-3660, 3660)
    )
    refresh_period = double(
        "RefreshPeriod", "Seconds between automatic refreshes; 0 = off", rw=True, precision=0, units="s",
        limits=(0, MAX_REFRESH_PERIOD),
    )  # fmt: skip
    proposal_active = enum("ProposalActive", NO_YES, "A beamtime is scheduled now; No carries MINOR")
    proposal_number = string("ProposalNumber", "GUP number")
    proposal_title = text("ProposalTitle", TITLE_BYTES + 1, "Full proposal title")  # + 1: the NUL
    proposal_type = text("ProposalType", TEXT_BYTES + 1, "e.g. General User")
    proposal_start = string("ProposalStart", "Beamtime start, ISO 8601 with UTC offset")
    proposal_end = string("ProposalEnd", "Beamtime end, ISO 8601 with UTC offset")
    proprietary = enum("Proprietary", NO_YES, "Proprietary proposal")
    mail_in = enum("MailIn", NO_YES, "Mail-in proposal")
    esaf_number = string("ESAFNumber", "ESAF number, empty if none")
    esaf_doi_number = text("ESAFDOINumber", TEXT_BYTES + 1, "ESAF DOI when the backend knows it")
    experiment_year_month = string("ExperimentYearMonth", "YYYY-MM of the beamtime start")
    user_name = text("UserName", TEXT_BYTES + 1, "PI first name")
    user_last_name = text("UserLastName", TEXT_BYTES + 1, "PI last name")
    user_email = text("UserEmail", TEXT_BYTES + 1, "PI e-mail")
    user_institution = text("UserInstitution", TEXT_BYTES + 1, "PI institution")
    user_badge = string("UserBadge", "PI badge")
    user_info_update = string("UserInfoUpdate", "ISO 8601 time of the last refresh")
    schedule_proposal_number = string("Schedule:ProposalNumber", "GUP the schedule shows now (empty: none)")
    schedule_pi = text("Schedule:PI", 256, "PI of the beamtime the schedule shows now")
    schedule_differs = enum(
        "Schedule:Differs", NO_YES, "Schedule shows another beamtime; Yes = MINOR"
    )  # addition: screens highlight the scheduled-now line with it
    users_count = long("Users:Count", "Experimenters on the proposal")
    users_names = text("Users:Names", LIST_BYTES + 1, "Experimenters' names, comma-separated, PI first")
    users_badges = text("Users:Badges", LIST_BYTES + 1, "Experimenters' badges, same order")
    users_emails = text("Users:Emails", LIST_BYTES + 1, "Experimenters' e-mails, same order")
    tag_prefix = text("TagPrefix", 256, "IOC prefix that Tag writes to", rw=True)

    refresh = command("Refresh", "Read the current proposal from the scheduling system and publish it")
    tag = command("Tag", "Write the user-info PVs into the IOC at TagPrefix")

    @refresh_period.putter
    async def refresh_period(self, instance, value):
        if 0 < value < MIN_REFRESH_PERIOD:
            why = f"it takes 0 (off) or {MIN_REFRESH_PERIOD:g} to {MAX_REFRESH_PERIOD:g} seconds"
            refusal = instance.refuse(why)
            await self.put_refused(str(refusal))
            raise refusal
        return value

    @refresh.putter
    async def refresh(self, instance, value):
        written = await self.run_command(instance, value, self.beamline.refresh, self.time_offset_days.value)
        if written is SkipWrite and self.beamline.state.to_follow:  # the Refresh ran and found a new beamtime
            await self._follow()  # dm.follow_schedule: its experiment, before the put completes
        return written

    @tag.putter
    async def tag(self, instance, value):
        return await self.run_command(instance, value, self.beamline.tag, self.tag_prefix.value)

    @refresh.startup
    async def refresh(self, instance, async_lib):
        """Refresh at startup, then every RefreshPeriod seconds; back off after failures, never stop."""
        await update(self.beamline_name, self.beamline.settings.beamline.name)
        await self.engine.ready.wait()  # autosaved TimeOffsetDays and RefreshPeriod first
        failures = 0
        while True:
            failure = await self.engine.background(
                "automatic Refresh", self.beamline.refresh_automatic, self.time_offset_days.value,
                say_failure=failures == 0, say_outcome=True,
            )  # news and a failure are said once; Scheduling:Health shows a failure meanwhile  # fmt: skip
            failures = failures + 1 if failure else 0
            if self.beamline.state.to_follow:
                await self._follow()
            waited_since = time.monotonic()
            while True:  # RefreshPeriod may change while we wait; 0 = off
                period = self.refresh_period.value
                if period > 0 and time.monotonic() - waited_since >= retry_delay(period, failures):
                    break
                await async_lib.library.sleep(0.5)

    async def _follow(self) -> None:
        """dm.follow_schedule: a new beamtime runs: Create its experiment, as a command would (refused
        while another command runs: then tried again at the next refresh)."""
        with contextlib.suppress(CommandFailed):  # Status says why; the beamtime is still to follow next time
            await self.engine.command("Create (automatic)", None, self.beamline.follow_schedule)

    async def show(self, state: BeamlineState) -> None:
        """Show the proposal of the experiment data goes to (before a selection, the schedule's), and
        what the schedule shows now."""
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
