"""Who has access to the selected experiment: AddUser, RemoveUser, and the DM and Globus access that
Create, CreateManual and Delete give or take too.

On a large storage the DM backend gives or takes the ACLs of the files below its folder in the background
(`ports.Walks`): the command says they follow, and their end is news of the command that started them."""

from __future__ import annotations

from collections.abc import Sequence

from ...domain.errors import DMError, GlobusError, PartialAccess
from ...domain.experiment import Experiment, ExperimentUser
from ...domain.naming import dm_username, parse_badges, plural
from ...domain.people import Person
from ..handling import Step
from ..messages import AddUser, RemoveUser
from ..state import Outcome
from .common import load_selection, selected

IN_BACKGROUND = "; the ACLs of its files follow in the background"


def add_user(step: Step, command: AddUser) -> Outcome:
    """Give the badges in `Badges` access to the selected experiment."""
    badges = parse_badges(command.badges)
    experiment = selected(step)
    known = known_people(step)
    users = [
        ExperimentUser.from_person(known[b], "added") if b in known else ExperimentUser(dm_username(b), source="added")
        for b in badges
    ]
    added, details, warning = give_access(step, experiment, users, by=command.name)
    if added:
        message = f"gave {', '.join(added)} access to {experiment.name}"
    else:
        message = f"{', '.join(u.username for u in users)} already had access to {experiment.name}"
    return Outcome(message + details, warning=warning)


def remove_user(step: Step, command: RemoveUser) -> Outcome:
    """Take access to the selected experiment from the badges in `Badges`."""
    badges = parse_badges(command.badges)
    experiment = selected(step)
    usernames = [dm_username(b) for b in badges]
    revoked = revoke(step, experiment, usernames)
    removed = step.services.contact("DM", step.services.adapters.dm.remove_users, experiment.name, usernames)
    walking = IN_BACKGROUND if in_background(step, command.name) else ""
    load_selection(step)
    if not removed:
        return Outcome(f"none of {', '.join(usernames)} had access to {experiment.name}{walking}")
    return Outcome(f"removed access of {', '.join(removed)} from {experiment.name}{walking}{revoked}")


def in_background(step: Step, by: str) -> bool:
    """Whether the DM backend left walks of storage trees to the background during command `by` (their ends
    are news of `by`)."""
    walks = step.services.adapters.walks
    return walks is not None and walks.claim(by) > 0


def known_people(step: Step) -> dict[str, Person]:
    """The people of the selected experiment's proposal and of the scheduled one, by badge (one known by
    badge alone, as a manual experiment may list them, never hides the same person known by name)."""
    scheduled = step.state.scheduled.beamtime if step.state.scheduled else None
    known: dict[str, Person] = {}
    for beamtime in filter(None, (scheduled, step.state.proposal)):
        for person in (*beamtime.people, *beamtime.esaf_people):
            if person.full_name or person.badge not in known:
                known[person.badge] = person
    return known


def give_access(step: Step, experiment: Experiment, users: Sequence[ExperimentUser], by: str = ""
                ) -> tuple[list[str], str, bool]:  # fmt: skip
    """DM access, then Globus access for every one of `users` DM has (not only the new ones: a
    rerun after a Globus failure completes). Returns (added, a Status fragment, warning); the
    selection's PVs are read again whatever happens. `by`: the command whose news is the end of the ACLs
    the DM backend leaves to the background ('': news of its own)."""
    try:
        added, problem = _add_users(step, experiment, users)
        walking = IN_BACKGROUND if in_background(step, by) else ""
        granted = _grant(step, experiment, _with_dm_access(step, experiment.name, users))
    finally:
        load_selection(step)
    return added, walking + granted + problem, bool(problem)


def _add_users(step: Step, experiment: Experiment, users: Sequence[ExperimentUser]) -> tuple[list[str], str]:
    """Add users in DM: (the usernames added, a warning fragment for those DM refused).

    A user DM refuses (e.g. without a DM account) is a warning, not a failure: the others get
    access and the command goes on, so one experimenter does not block the experiment.
    """
    services = step.services
    try:
        return services.contact("DM", services.adapters.dm.add_users, experiment.name, users), ""
    except PartialAccess as error:  # added, but some have no unix account: MINOR, naming them
        services.noted("DM", True)
        return list(error.done), f"; {error}"
    except DMError as error:
        if error.done is None:
            raise
        return list(error.done), f"; not all users added: {error}"


def _with_dm_access(step: Step, name: str, users: Sequence[ExperimentUser]) -> list[ExperimentUser]:
    """Those of `users` that experiment `name` has in DM now (read again after adding them)."""
    experiment = step.services.contact("DM", step.services.adapters.dm.get_experiment, name)
    have = set(experiment.usernames) if experiment else set()
    return [u for u in users if u.username in have]


def _grant(step: Step, experiment: Experiment, users: Sequence[ExperimentUser]) -> str:
    """Globus access for `users`; a sentence fragment for Status."""
    access, store = step.services.adapters.access, step.services.adapters.state
    if access is None or not any(u.email.strip() for u in users):
        return ""  # no Globus call: Globus:Health stays what the last contact said
    try:
        rules = step.services.contact("Globus", access.grant, experiment, users)
    except GlobusError as error:
        if error.done:  # rules made before the failure: recorded, so RemoveUser/Delete can revoke them
            store.record_rules(experiment.name, error.done)
        raise
    store.record_rules(experiment.name, rules)
    return f"; Globus access for {plural(len(rules), 'user')}" if rules else ""


def revoke(step: Step, experiment: Experiment, usernames: Sequence[str] | None = None) -> str:
    """Delete the Globus rules of `usernames` (None: everyone's) on `experiment`; a Status fragment."""
    access, store = step.services.adapters.access, step.services.adapters.state
    if access is None:
        return ""
    rules = store.rules(experiment.name)
    if usernames is not None:
        rules = {u: rule for u, rule in rules.items() if u in usernames}
    if not rules:
        return ""
    removed = step.services.contact("Globus", access.revoke, experiment, rules)
    store.forget_rules(experiment.name, removed)
    return f"; {len(removed)} Globus rules deleted"
