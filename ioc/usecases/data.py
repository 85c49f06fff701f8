"""The data: the e-mail that says where it is, and its transfer into storage."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..domain.model import (
    EmailError,
    Experiment,
    InputError,
    ServiceError,
    plural,
)
from ..domain.ports import (
    TransferProgress,
    TransferState,
)
from .base import Outcome
from .catalog import CatalogCases

log = logging.getLogger(__name__)


class DataCases(CatalogCases):
    """The data: the e-mail that says where it is, and its transfer into storage."""

    # ------------------------------------------------------------------ e-mail

    def email(self, everyone: bool) -> Outcome:
        """Send the data-access message to the selected experiment's users: those not yet e-mailed,
        or `everyone`."""
        mailer = self.adapters.mailer
        if mailer is None:
            raise InputError("e-mail is not enabled (email.enabled: false in the config)")
        experiment = self._selected()
        already = set() if everyone else set(self.state.emailed)
        users = [u for u in experiment.users if u.username not in already]
        skipped = [u.username for u in users if not u.email]
        recipients = [u for u in users if u.email]
        if not recipients:
            reason = "everyone with an address was already e-mailed" if already else "nobody has an e-mail address"
            return Outcome(
                f"e-mail: nothing sent, {reason}" + (f"; no address: {', '.join(skipped)}" if skipped else "")
            )
        addresses = [(u.username, u.email) for u in recipients]
        delivery = self._contact("Email", mailer.send, addresses, self._email_values(experiment))
        if delivery.delivered:
            self.adapters.state.mark_emailed(experiment.name, delivery.delivered)
        self.load_selection()
        failed = delivery.failed or {}
        parts = [f"e-mailed {plural(len(delivery.delivered), 'user')} of {experiment.name}"]
        if skipped:
            parts.append(f"no address: {', '.join(skipped)}")
        if failed:
            parts.append("failed: " + ", ".join(f"{u} ({why})" for u, why in failed.items()))
        if failed and not delivery.delivered:
            raise EmailError("; ".join(parts))
        return Outcome("; ".join(parts), warning=bool(failed or skipped))

    def _email_values(self, experiment: Experiment) -> dict[str, str]:
        pi = next((u for u in experiment.users if u.source in ("proposal", "manual")), None)
        return {
            "experiment": experiment.name,
            "title": experiment.title,
            "pi": pi.name if pi else "",
            "beamline": self.settings.beamline.name,
            "globus_url": self.state.globus_url,
            "storage_directory": experiment.storage_directory,
        }

    # ------------------------------------------------------------------ data transfer

    def _transfer(self, *, once: bool) -> str:
        experiment = self._selected()
        start = self.adapters.transfer.start
        return self._contact(self._transfer_system, start, experiment, self._sources(experiment), once=once)

    def transfer_progress(self) -> TransferProgress:
        """The transfer's progress; when it cannot be read, the last one in Error, saying why."""
        try:
            self._progress = self._contact(self._transfer_system, self.adapters.transfer.progress)
        except ServiceError as error:
            message = f"transfer status not read: {error}"
            self._progress = replace(self._progress, state=TransferState.ERROR, message=message)
        return self._progress

    def resume_transfer(self) -> Outcome:
        """After a restart, resume the transfer that was running before; an empty outcome when none was."""
        return Outcome(self._contact(self._transfer_system, self.adapters.transfer.resume) or "")

    def daq_start(self) -> Outcome:
        """Start continuous transfer of the selected experiment's raw and `_rec` folders; the start snapshot."""
        return self._started(self._transfer(once=False), "daq")

    def upload(self) -> Outcome:
        """One pass over the files present now; it ends by itself (then `upload_ended` makes its dataset)."""
        return self._started(self._transfer(once=True), "upload")

    def _started(self, sentence: str, kind: str) -> Outcome:
        missing = self._begin_acquisition(kind)
        return Outcome(f"{missing}; {sentence}" if missing else sentence, warning=bool(missing))  # first: not cut

    def daq_stop(self) -> Outcome:
        """Stop the transfer; the acquisition's dataset (snapshots and file list) when one was running."""
        stopped = self._contact(self._transfer_system, self.adapters.transfer.stop)
        if self.state.experiment is None:
            return Outcome(stopped)
        sentence, warning = self._end_acquisition(everything_new=not self._acquisition)  # e.g. resumed at restart
        return Outcome(f"{stopped}; {sentence}", warning=warning)
