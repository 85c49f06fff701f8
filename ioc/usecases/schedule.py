"""The schedule: Refresh and Tag."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..config import TAG_FIELDS
from ..domain.model import (
    Beamtime,
    CurrentProposal,
    InputError,
    MissingPVs,
    ServiceError,
    UserInfo,
    look_moment,
    select_beamtime,
    select_run,
)
from .base import BeamlineCore, Outcome

log = logging.getLogger(__name__)


class ScheduleCases(BeamlineCore):
    """The schedule: Refresh and Tag."""

    # ------------------------------------------------------------------ scheduling

    def refresh(self, offset_days: float) -> Outcome:
        """Read the beamtime at now + offset from the scheduling system and publish it."""
        now = self.clock()
        moment = look_moment(now, offset_days).astimezone(self.tz)
        scheduling = self.adapters.scheduling
        run = select_run(self._contact("Scheduling", scheduling.runs), moment)
        beamtimes = self._contact("Scheduling", scheduling.beamtimes, run) if run else []
        beamtime = select_beamtime(beamtimes, moment)
        warning = ""
        if beamtime is not None and beamtime.esaf:
            beamtime, warning = self._with_esaf(beamtime)
        self._change(current=CurrentProposal(run, beamtime, now.astimezone(self.tz)))
        when = moment.strftime("%Y-%m-%d %H:%M %Z")
        if run is None:
            return Outcome(f"no run of the schedule contains {when}", warning=True)
        if beamtime is None:
            return Outcome(f"run {run.name}: no beamtime scheduled at {when}", warning=True)
        pi = beamtime.pi
        message = f"proposal {beamtime.gup} ({pi.last_name if pi else 'no PI'}), run {run.name}{warning}"
        return Outcome(message, warning=bool(warning))

    def _with_esaf(self, beamtime: Beamtime) -> tuple[Beamtime, str]:
        """Add the ESAF's experimenters and DOI where the DM backend knows them."""
        try:
            people, doi = self._contact("DM", self.adapters.dm.esaf, beamtime.esaf)
        except ServiceError as error:
            return beamtime, f"; ESAF {beamtime.esaf} not read: {error}"
        known = {p.badge for p in beamtime.people}
        extra = tuple(p for p in people if p.badge not in known)
        return replace(beamtime, esaf_doi=doi, esaf_people=extra), ""

    def tag(self, prefix: str) -> Outcome:
        """Write the user-info PVs into the IOC at `prefix` (e.g. tomoScan), under the names `tag.fields` gives.

        A PV the target lacks is left out: silently when its absence is normal
        (ESAFDOINumber: tomoScan has none), with a warning naming it otherwise;
        when none answers, the adapter's error says so and nothing is written.
        """
        prefix = prefix.strip()
        if not prefix:
            raise InputError("TagPrefix is empty: set it to the target IOC's prefix, e.g. 2bmb:TomoScan:")
        current = self.state.current
        if current is None or current.beamtime is None:
            raise InputError("no proposal is published to tag: Refresh or Select first")
        info = UserInfo.of(current)
        settings = self.settings.tag
        to_write = {pv: getattr(info, TAG_FIELDS[name]) for name, pv in settings.targets().items()}
        try:
            cut, missing = self.adapters.tag.write(prefix, to_write), ()
        except MissingPVs as error:  # nothing was written: write those that answered
            missing = error.missing
            answered = {pv: value for pv, value in to_write.items() if pv not in missing}
            if not answered:
                raise
            cut = self.adapters.tag.write(prefix, answered)
        absent = [prefix + pv for pv in missing if pv not in settings.optional_pvs()]
        if missing:
            log.info("Tag: %s has no %s; the other fields were written", prefix, ", ".join(missing))
        warnings = [f"not written, no such PV: {', '.join(absent)}"] if absent else []
        warnings += [f"cut to fit the target: {', '.join(cut)}"] if cut else []
        message = "; ".join([f"tagged {prefix} with proposal {info.proposal}", *warnings])
        return Outcome(message, warning=bool(warnings))
