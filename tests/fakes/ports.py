"""In-process fakes of the ports (`ioc/domain/ports.py`), and the beamline they hold.

The schedule holds run 2026-3 with proposal 1012039 (PI Mei Müller-Łukasiewicz, listed second; an
ESAF adding Eva Sá) at `NOW` and proposal 1012040 five days later. Each fake keeps what it was asked
in plain attributes a test reads (`FakeDM.experiments`, `FakeAccess.grants`, `FakeMailer.sent`, ...)
and fails on demand. `settings_in` and `fake_adapters` build the beamline of the use-case tier
(tests/usecases) and of the PV-group tier (tests/ioc).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from dmagic_ioc.ioc.config import BeamlineSettings, DMSettings, GlobusSettings, IocSettings, Settings
from dmagic_ioc.ioc.domain.model import Beamtime, Experiment, GlobusError, Person, Run, SchedulingError, parse_time
from dmagic_ioc.ioc.domain.ports import Delivery, SentFile, TransferProgress, TransferState

CHICAGO = ZoneInfo("America/Chicago")
NOW = datetime(2026, 10, 15, 15, 0, tzinfo=timezone.utc)  # 10:00 CDT, inside beamtime 1012039
BLOCKING_SECONDS = 5.0  # the longest a BlockingSchedule holds its worker thread

TITLE = (
    "Operando X-ray micro-tomography of lithium-metal anodes: dendrite nucleation, growth and dissolution "
    "under fast charging in solid-state and liquid electrolytes — a multi-scale study of the interphase "
    "with in-situ mechanical loading, variable temperature and ünïcødé in the title, well past forty bytes"
)
MEI = Person("310001", "Mei", "Müller-Łukasiewicz", "mei@example.edu", "Example State University", is_pi=True)
BO = Person("310002", "Bo", "Li", "bo@example.org", "UChicago")
ESAF_PERSON = Person("310009", "Eva", "Sá", "eva@example.org", "Argonne")
RUN = Run("2026-3", parse_time("2026-09-29 08:00", CHICAGO), parse_time("2026-12-22 08:00", CHICAGO))
BEAMTIME = Beamtime(
    gup="1012039",
    title=TITLE,
    start=parse_time("2026-10-14 08:00", CHICAGO),
    end=parse_time("2026-10-17 08:00", CHICAGO),
    people=(BO, MEI),  # the PI is listed second
    proposal_type="General User",
    esaf="281001",
    mail_in=True,
)
LATER = Beamtime(
    gup="1012040",
    title="Later proposal",
    start=parse_time("2026-10-20 08:00", CHICAGO),
    end=parse_time("2026-10-22 08:00", CHICAGO),
    people=(Person("310003", "Cy", "Ngo", "cy@example.org", "MIT"),),
)
EXPERIMENT = "2026-10-MullerLukasiewicz-1012039"  # the experiment Create makes of BEAMTIME
ESAF_DOI = "10.11578/esaf/281001"


# --------------------------------------------------------------------------- scheduling


class FakeSchedule:
    def __init__(self, runs=(RUN,), beamtimes=(BEAMTIME, LATER)):
        self._runs, self._beamtimes = list(runs), list(beamtimes)
        self.calls = 0

    def runs(self) -> list[Run]:
        self.calls += 1
        return list(self._runs)

    def beamtimes(self, run: Run) -> list[Beamtime]:
        return [b for b in self._beamtimes if run.start <= b.start < run.end]


class FailingSchedule:
    def runs(self):
        raise SchedulingError("the scheduling service answered 503 Service Unavailable")

    def beamtimes(self, run):
        raise SchedulingError("the scheduling service answered 503 Service Unavailable")


class BlockingSchedule(FakeSchedule):
    """`runs()` waits until the test releases it, so a command stays running."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def runs(self):
        self.entered.set()
        self.release.wait(BLOCKING_SECONDS)
        return super().runs()


# --------------------------------------------------------------------------- data management


class FakeDM:
    def __init__(self, storage_root: Path):
        self.storage_root = storage_root
        self.experiments: dict[str, Experiment] = {}
        self.fail: Exception | None = None  # raised by the next call that lists or changes experiments
        self.esaf_calls: list[str] = []

    def _check(self):
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error

    def create_experiment(self, experiment: Experiment) -> tuple[Experiment, bool]:
        self._check()
        if experiment.name in self.experiments:
            return self.experiments[experiment.name], False
        placed = experiment.storage_directory  # by dm.layout in the use case, as the local DM takes it
        stored = replace(
            experiment,
            users=(),
            storage_directory=placed or str(self.storage_root / experiment.year_month / experiment.name),
        )
        Path(stored.storage_directory).mkdir(parents=True, exist_ok=True)  # as a DM makes the storage at Create
        self.experiments[experiment.name] = stored
        return stored, True

    def get_experiment(self, name: str) -> Experiment | None:
        return self.experiments.get(name)

    def list_experiments(self) -> list[str]:
        return list(reversed(self.experiments))

    def station_experiments(self) -> list[Experiment]:
        self._check()
        return list(reversed(self.experiments.values()))

    def add_users(self, name, users) -> list[str]:
        self._check()
        experiment = self.experiments[name]
        have = set(experiment.usernames)
        new = [u for u in users if u.username not in have]
        self.experiments[name] = replace(experiment, users=experiment.users + tuple(new))
        return [u.username for u in new]

    def remove_users(self, name, usernames) -> list[str]:
        self._check()
        experiment = self.experiments[name]
        removed = [u for u in experiment.usernames if u in usernames]
        self.experiments[name] = replace(
            experiment, users=tuple(u for u in experiment.users if u.username not in removed)
        )
        return removed

    def delete_experiment(self, name: str) -> str:
        self._check()
        del self.experiments[name]
        return f"deleted experiment {name}"

    def esaf(self, esaf: str):
        self.esaf_calls.append(esaf)
        return [ESAF_PERSON, BO], ESAF_DOI


# --------------------------------------------------------------------------- the IOC's own state


@dataclass
class FakeState:
    selection: str = ""
    emailed_users: dict = field(default_factory=dict)
    rule_ids: dict = field(default_factory=dict)
    proposals: dict = field(default_factory=dict)
    followed_key: str = ""

    def selected(self) -> str:
        return self.selection

    def select(self, name: str) -> None:
        self.selection = name

    def emailed(self, experiment):
        return list(self.emailed_users.get(experiment, []))

    def mark_emailed(self, experiment, usernames):
        self.emailed_users.setdefault(experiment, []).extend(usernames)

    def rules(self, experiment):
        return dict(self.rule_ids.get(experiment, {}))

    def record_rules(self, experiment, rules):
        self.rule_ids.setdefault(experiment, {}).update(rules)

    def forget_rules(self, experiment, usernames):
        for username in usernames:
            self.rule_ids.get(experiment, {}).pop(username, None)

    def proposal(self, experiment):
        return self.proposals.get(experiment)

    def keep_proposal(self, experiment, proposal):
        self.proposals[experiment] = proposal

    def followed(self):
        return self.followed_key

    def mark_followed(self, key):
        self.followed_key = key

    def forget_experiment(self, experiment):
        self.rule_ids.pop(experiment, None)
        self.emailed_users.pop(experiment, None)
        self.proposals.pop(experiment, None)


# --------------------------------------------------------------------------- transfer, tag, access, e-mail


class FakeTransfer:
    def __init__(self):
        self.state = TransferProgress()
        self.starts: list[tuple] = []
        self.forgotten: list[dict] = []
        self.sent: list[SentFile] = []  # what the ledger would hold

    def start(self, experiment, sources, *, once):
        self.starts.append((experiment.name, dict(sources), once))
        self.state = TransferProgress(state=TransferState.RUNNING)
        return f"transfer of {experiment.name} started"

    def stop(self):
        self.state = TransferProgress(state=TransferState.STOPPED)
        return "transfer stopped"

    def progress(self):
        return self.state

    def resume(self):
        return None

    def forget(self, sources):
        self.forgotten.append(dict(sources))

    def sent_since(self, mark, storage):
        return [f for f in self.sent if f.sent_at > mark and f.path.startswith(storage.rstrip("/") + "/")]


class FakeTag:
    def __init__(self):
        self.writes: list[tuple[str, dict]] = []
        self.cut: list[str] = []

    def write(self, prefix, values):
        self.writes.append((prefix, dict(values)))
        return list(self.cut)


class FakeAccess:
    def __init__(self):
        self.grants: list[tuple[str, str]] = []
        self.revoked: list[tuple[str, str]] = []

    def grant(self, experiment, users):
        rules = {u.username: f"rule-{u.username}" for u in users if u.email}
        self.grants += [(experiment.name, username) for username in rules]
        return rules

    def revoke(self, experiment, rules):
        self.revoked += [(experiment.name, username) for username in rules]
        return list(rules)

    def url(self, experiment):
        return f"https://app.globus.org/file-manager?path=/{experiment.name}/"


class FlakyAccess(FakeAccess):
    """Globus that fails for the users in `failing`, after making the others' rules."""

    def __init__(self, failing: set[str]):
        super().__init__()
        self.failing = failing

    def grant(self, experiment, users):
        made = super().grant(experiment, [u for u in users if u.username not in self.failing])
        failed = [u.username for u in users if u.username in self.failing and u.email]
        if failed:
            raise GlobusError(f"no Globus identity for {', '.join(failed)}", done=made)
        return made


class FakeMailer:
    """Sends to everyone but the usernames in `refused` (username -> why); `fail` is raised by the next send."""

    def __init__(self):
        self.sent: list[tuple[list[tuple[str, str]], dict[str, str]]] = []  # (recipients, values) per send
        self.refused: dict[str, str] = {}
        self.fail: Exception | None = None

    def send(self, recipients: Sequence[tuple[str, str]], values: Mapping[str, str]) -> Delivery:
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        self.sent.append((list(recipients), dict(values)))
        delivered = tuple(username for username, _ in recipients if username not in self.refused)
        failed = {username: self.refused[username] for username, _ in recipients if username in self.refused}
        return Delivery(delivered=delivered, failed=failed or None)


# --------------------------------------------------------------------------- the beamline on fakes


def settings_in(tmp: Path, **sections) -> Settings:
    """The beamline's settings with its folders under `tmp`; `sections` replace whole sections (e.g. `email=`)."""
    settings = Settings(
        ioc=IocSettings(prefix="test:", state_dir=tmp / "state"),
        beamline=BeamlineSettings(name="2-BM-A,B", station="2BM", contacts=("100001",)),
        dm=DMSettings(data_top_dir=tmp / "data", storage_root=tmp / "storage"),
        globus=GlobusSettings(enabled=True, collection_id="c", client_id="i"),
    )
    return replace(settings, **sections)


def recorded(fakes: SimpleNamespace) -> dict[str, dict]:
    """A deep copy of everything the fakes hold and were told: equal before and after a call that changed nothing."""
    return {name: copy.deepcopy(vars(fake)) for name, fake in vars(fakes).items()}


def fake_adapters(tmp: Path) -> SimpleNamespace:
    """One fake per port but the mailer (e-mail is off by default), named as `Adapters` names them."""
    return SimpleNamespace(
        scheduling=FakeSchedule(),
        dm=FakeDM(tmp / "storage"),
        state=FakeState(),
        transfer=FakeTransfer(),
        tag=FakeTag(),
        access=FakeAccess(),
    )
