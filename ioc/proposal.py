"""Current proposal PVs (tomoScan-compatible names), the Refresh loop, and Tag."""

from __future__ import annotations

import asyncio
import logging
import time

from caproto import AlarmSeverity

from .app import tag_values
from .commands import CommandGroup
from .model import DMagicError, iso
from .pvs import NO_YES, command, double, enum, long, publish, string, text

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

    beamline = string("Beamline", "Beamline id")
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
    proposal_title = text("ProposalTitle", 1024, "Full proposal title")
    proposal_type = text("ProposalType", 256, "e.g. General User")
    proposal_start = string("ProposalStart", "Beamtime start, ISO 8601 with UTC offset")
    proposal_end = string("ProposalEnd", "Beamtime end, ISO 8601 with UTC offset")
    proprietary = enum("Proprietary", NO_YES, "Proprietary proposal")
    mail_in = enum("MailIn", NO_YES, "Mail-in proposal")
    esaf_number = string("ESAFNumber", "ESAF number, empty if none")
    esaf_doi_number = text("ESAFDOINumber", 256, "ESAF DOI when the backend knows it")
    experiment_year_month = string("ExperimentYearMonth", "YYYY-MM of the beamtime start")
    user_name = text("UserName", 256, "PI first name")
    user_last_name = text("UserLastName", 256, "PI last name")
    user_email = text("UserEmail", 256, "PI e-mail")
    user_institution = text("UserInstitution", 256, "PI institution")
    user_badge = string("UserBadge", "PI badge")
    user_info_update = string("UserInfoUpdate", "ISO 8601 time of the last refresh")
    schedule_proposal_number = string(
        "Schedule:ProposalNumber", "GUP the schedule shows now (empty: none)"
    )
    schedule_pi = text("Schedule:PI", 256, "PI of the beamtime the schedule shows now")
    users_count = long("Users:Count", "Experimenters on the proposal")
    users_names = text("Users:Names", 8192, "Experimenters' names, comma-separated, PI first")
    users_badges = text("Users:Badges", 8192, "Experimenters' badges, same order")
    users_emails = text("Users:Emails", 8192, "Experimenters' e-mails, same order")
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
        return await self.run_command(instance, value, self.app.refresh, self.time_offset_days.value)

    @tag.putter
    async def tag(self, instance, value):
        return await self.run_command(instance, value, self.app.tag, self.tag_prefix.value)

    @refresh.startup
    async def refresh(self, instance, async_lib):
        """Refresh at startup, then every RefreshPeriod seconds; back off after failures, never stop."""
        await publish(self.beamline, self.app.settings.beamline.name)
        await self.root.ready.wait()  # autosaved TimeOffsetDays and RefreshPeriod first
        failures = 0
        while True:
            ok = await self._automatic_refresh(report=failures == 0)
            failures = 0 if ok else failures + 1
            waited_since = time.monotonic()
            while True:  # RefreshPeriod may change while we wait; 0 = off
                period = self.refresh_period.value
                if period > 0 and time.monotonic() - waited_since >= retry_delay(period, failures):
                    break
                await async_lib.library.sleep(0.5)

    async def _automatic_refresh(self, report: bool) -> bool:
        """One automatic refresh; False when it failed (an unexpected error too: the loop never stops)."""
        try:
            return await self._refresh_once(report)
        except Exception:
            log.exception("automatic refresh failed unexpectedly")
            return False

    async def _refresh_once(self, report: bool) -> bool:
        """One automatic refresh off the event loop; a failure goes to Health (and Status if `report`)."""
        try:
            outcome = await asyncio.to_thread(self.app.refresh, self.time_offset_days.value)
        except DMagicError as error:
            log.warning("automatic refresh failed: %s", error)
            if report and self.root.engine.running is None:  # Scheduling:Health shows it in any case
                await self.root.engine.report(f"automatic Refresh failed: {error}", AlarmSeverity.MAJOR_ALARM)
            await self.root.show()
            return False
        log.info("automatic refresh: %s", outcome.message)
        await self.root.show()
        return True

    async def show(self) -> None:
        """Publish the current proposal; an empty one when nothing is scheduled."""
        current = self.app.published.current
        if current is None:
            return
        beamtime = current.beamtime
        await publish(self.run, current.run.name if current.run else "")
        active = beamtime is not None
        await publish(
            self.proposal_active, NO_YES[active], AlarmSeverity.NO_ALARM if active else AlarmSeverity.MINOR_ALARM
        )
        tagged = self._tagged()
        values = tag_values(current) or {**dict.fromkeys(tagged, ""), "UserInfoUpdate": iso(current.refreshed)}
        for name, channel in tagged.items():
            await publish(channel, values[name])
        people = beamtime.people_pi_first if beamtime else ()
        await publish(self.schedule_proposal_number, beamtime.gup if beamtime else "")
        await publish(self.schedule_pi, beamtime.pi.full_name if beamtime and beamtime.pi else "")
        await publish(self.proposal_type, beamtime.proposal_type if beamtime else "")
        await publish(self.proposal_start, iso(beamtime.start) if beamtime else "")
        await publish(self.proposal_end, iso(beamtime.end) if beamtime else "")
        await publish(self.proprietary, NO_YES[bool(beamtime and beamtime.proprietary)])
        await publish(self.mail_in, NO_YES[bool(beamtime and beamtime.mail_in)])
        await publish(self.users_count, len(people))
        await publish(self.users_names, ",".join(p.full_name for p in people))
        await publish(self.users_badges, ",".join(p.badge for p in people))
        await publish(self.users_emails, ",".join(p.email for p in people))

    def _tagged(self) -> dict:
        return {
            "UserName": self.user_name,
            "UserLastName": self.user_last_name,
            "UserEmail": self.user_email,
            "UserBadge": self.user_badge,
            "UserInstitution": self.user_institution,
            "UserInfoUpdate": self.user_info_update,
            "ProposalNumber": self.proposal_number,
            "ProposalTitle": self.proposal_title,
            "ESAFNumber": self.esaf_number,
            "ESAFDOINumber": self.esaf_doi_number,
            "ExperimentYearMonth": self.experiment_year_month,
        }
