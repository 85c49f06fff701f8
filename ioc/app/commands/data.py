"""The data: the e-mail that says where it is, and its transfer into storage."""

from __future__ import annotations

from ...domain.errors import EmailError, InputError
from ...domain.experiment import Experiment
from ...domain.naming import plural
from ..handling import Step
from ..messages import DaqStart, DaqStop, Email, ResumeTransfer, Upload
from ..state import Outcome
from .catalog import begin_acquisition, end_acquisition
from .common import load_selection, selected, sources

# ---------------------------------------------------------------- e-mail


def email(step: Step, command: Email) -> Outcome:
    """Send the data-access message to the selected experiment's users: those not yet e-mailed,
    or `everyone`."""
    services = step.services
    mailer = services.adapters.mailer
    if mailer is None:
        raise InputError("e-mail is not enabled (email.enabled: false in the config)")
    experiment = selected(step)
    already = set() if command.everyone else set(step.state.emailed)
    users = [u for u in experiment.users if u.username not in already]
    skipped = [u.username for u in users if not u.email]
    recipients = [u for u in users if u.email]
    if not recipients:
        reason = "everyone with an address was already e-mailed" if already else "nobody has an e-mail address"
        return Outcome(f"e-mail: nothing sent, {reason}" + (f"; no address: {', '.join(skipped)}" if skipped else ""))
    addresses = [(u.username, u.email) for u in recipients]
    delivery = services.contact("Email", mailer.send, addresses, _email_values(step, experiment))
    if delivery.delivered:
        services.adapters.state.mark_emailed(experiment.name, delivery.delivered)
    load_selection(step)
    failed = delivery.failed or {}
    parts = [f"e-mailed {plural(len(delivery.delivered), 'user')} of {experiment.name}"]
    if skipped:
        parts.append(f"no address: {', '.join(skipped)}")
    if failed:
        parts.append("failed: " + ", ".join(f"{u} ({why})" for u, why in failed.items()))
    if failed and not delivery.delivered:
        raise EmailError("; ".join(parts))
    return Outcome("; ".join(parts), warning=bool(failed or skipped))


def _email_values(step: Step, experiment: Experiment) -> dict[str, str]:
    pi = experiment.pi_user
    return {
        "experiment": experiment.name,
        "title": experiment.title,
        "pi": pi.name if pi else "",
        "beamline": step.services.settings.beamline.name,
        "globus_url": step.state.globus_url,
        "storage_directory": experiment.storage_directory,
    }


# ---------------------------------------------------------------- data transfer


def daq_start(step: Step, command: DaqStart) -> Outcome:
    """Start continuous transfer of the selected experiment's raw and `_rec` folders; the start snapshot."""
    return _started(step, _transfer(step, once=False), "daq")


def upload(step: Step, command: Upload) -> Outcome:
    """One pass over the files present now; it ends by itself (then UploadEnded makes its dataset)."""
    return _started(step, _transfer(step, once=True), "upload")


def daq_stop(step: Step, command: DaqStop) -> Outcome:
    """Stop the transfer; the acquisition's dataset (snapshots and file list) when one was running."""
    services = step.services
    stopped = services.contact(services.transfer_system, services.adapters.transfer.stop)
    if step.state.experiment is None:
        return Outcome(stopped)
    everything_new = step.state.acquisition is None  # e.g. resumed at restart: no acquisition this IOC started
    sentence, warning = end_acquisition(step, everything_new=everything_new)
    return Outcome(f"{stopped}; {sentence}", warning=warning)


def resume_transfer(step: Step, command: ResumeTransfer) -> Outcome:
    """After a restart, resume the transfer that was running before; an empty outcome when none was."""
    services = step.services
    return Outcome(services.contact(services.transfer_system, services.adapters.transfer.resume) or "")


def _transfer(step: Step, *, once: bool) -> str:
    services = step.services
    experiment = selected(step)
    start = services.adapters.transfer.start
    return services.contact(services.transfer_system, start, experiment, sources(step, experiment), once=once)


def _started(step: Step, sentence: str, kind: str) -> Outcome:
    missing = begin_acquisition(step, kind)
    return Outcome(f"{missing}; {sentence}" if missing else sentence, warning=bool(missing))  # first: not cut
