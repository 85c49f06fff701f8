"""In-process fakes of the ports (`ioc/domain/ports.py`), and the beamline they hold.

The schedule holds run 2026-3 with proposal 1012039 (PI Mei Müller-Łukasiewicz, listed second; an
ESAF adding Eva Sá) at `NOW` and proposal 1012040 five days later. Each fake keeps what it was asked
in plain attributes a test reads (`FakeDM.experiments`, `FakeAccess.grants`, `FakeMailer.sent`, ...)
and fails on demand. `settings_in` and `fake_adapters` build the beamline of the use-case tier
(tests/usecases) and of the PV-group tier (tests/ioc).
"""

from __future__ import annotations

import copy
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dmagic_ioc.adapters.records import StorageRecords
from dmagic_ioc.ioc.app.services import Adapters
from dmagic_ioc.ioc.domain.beamtime import Beamtime, Run
from dmagic_ioc.ioc.domain.errors import GlobusError, InputError, SchedulingError
from dmagic_ioc.ioc.domain.esaf import Esaf
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.domain.people import Person
from dmagic_ioc.ioc.domain.ports import (
    Access,
    DataManagement,
    Delivery,
    Mailer,
    SchedulingSource,
    SentFile,
    StateStore,
    TagTarget,
    Transfer,
    TransferProgress,
    TransferState,
)
from dmagic_ioc.ioc.domain.proposal import Proposal
from dmagic_ioc.ioc.domain.times import parse_time
from dmagic_ioc.ioc.settings.schema import BeamlineSettings, DMSettings, GlobusSettings, IocSettings, Settings

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
    Proposal("1012039", TITLE, people=(BO, MEI), kind="General User", mail_in=True),  # the PI is listed second
    start=parse_time("2026-10-14 08:00", CHICAGO),
    end=parse_time("2026-10-17 08:00", CHICAGO),
    esaf_form=Esaf("281001"),
)
LATER = Beamtime(
    Proposal("1012040", "Later proposal", people=(Person("310003", "Cy", "Ngo", "cy@example.org", "MIT"),)),
    start=parse_time("2026-10-20 08:00", CHICAGO),
    end=parse_time("2026-10-22 08:00", CHICAGO),
)
EXPERIMENT = "2026-10-MullerLukasiewicz-1012039"  # the experiment Create makes of BEAMTIME
ESAF_DOI = "10.11578/esaf/281001"


# --------------------------------------------------------------------------- scheduling


class FakeSchedule(SchedulingSource):
    """The beamline above, or the runs and beamtimes given, returned as given; `calls` counts the reads of runs."""

    def __init__(self, runs: Sequence[Run] = (RUN,), beamtimes: Sequence[Beamtime] = (BEAMTIME, LATER)) -> None:
        self._runs, self._beamtimes = list(runs), list(beamtimes)
        self.calls = 0

    def runs(self) -> list[Run]:
        self.calls += 1
        return list(self._runs)

    def beamtimes(self, run: Run) -> list[Beamtime]:
        return [b for b in self._beamtimes if run.start <= b.start < run.end]


class FailingSchedule(SchedulingSource):
    def runs(self) -> list[Run]:
        raise SchedulingError("the scheduling service answered 503 Service Unavailable")

    def beamtimes(self, run: Run) -> list[Beamtime]:
        raise SchedulingError("the scheduling service answered 503 Service Unavailable")


class BlockingSchedule(FakeSchedule):
    """`runs()` waits until the test releases it, so a command stays running."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def runs(self) -> list[Run]:
        self.entered.set()
        self.release.wait(BLOCKING_SECONDS)
        return super().runs()


# --------------------------------------------------------------------------- data management


def _no_experiment(name: str, nothing: str) -> InputError:
    """What the local DM says of an experiment it does not have."""
    return InputError(f"no experiment named {name!r} in the registry; nothing {nothing}")


class FakeDM(DataManagement):
    """A DM system in memory (the ESAF data of the APS one); makes and deletes the storage folder as the local DM."""

    def __init__(self, storage_root: Path) -> None:
        self.storage_root = storage_root
        self.experiments: dict[str, Experiment] = {}
        self.fail: Exception | None = None  # raised by the next call that lists or changes experiments
        self.esaf_calls: list[str] = []

    def _check(self) -> None:
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

    def add_users(self, name: str, users: Sequence[ExperimentUser]) -> list[str]:
        self._check()
        if name not in self.experiments:
            raise _no_experiment(name, "changed")
        experiment = self.experiments[name]
        have = set(experiment.usernames)
        new: list[ExperimentUser] = []
        for user in users:
            if user.username not in have:
                have.add(user.username)
                new.append(user)
        self.experiments[name] = replace(experiment, users=experiment.users + tuple(new))
        return [u.username for u in new]

    def remove_users(self, name: str, usernames: Sequence[str]) -> list[str]:
        self._check()
        if name not in self.experiments:
            raise _no_experiment(name, "changed")
        experiment = self.experiments[name]
        removed = [u for u in experiment.usernames if u in usernames]
        self.experiments[name] = replace(
            experiment, users=tuple(u for u in experiment.users if u.username not in removed)
        )
        return removed

    def delete_experiment(self, name: str) -> str:
        self._check()
        experiment = self.experiments.pop(name, None)
        if experiment is None:
            raise _no_experiment(name, "deleted")
        storage = Path(experiment.storage_directory)
        if self.storage_root in storage.parents:  # one this DM made; never a folder elsewhere a test named
            shutil.rmtree(storage, ignore_errors=True)
        return f"deleted experiment {name}"

    def esaf(self, esaf: str) -> tuple[list[Person], str]:
        self.esaf_calls.append(esaf)
        return [ESAF_PERSON, BO], ESAF_DOI


# --------------------------------------------------------------------------- the IOC's own state


@dataclass
class FakeState(StateStore):
    selection: str = ""
    emailed_users: dict[str, list[str]] = field(default_factory=dict)
    rule_ids: dict[str, dict[str, str]] = field(default_factory=dict)
    proposals: dict[str, Beamtime] = field(default_factory=dict)
    followed_key: str = ""

    def selected(self) -> str:
        return self.selection

    def select(self, name: str) -> None:
        self.selection = name

    def emailed(self, experiment: str) -> list[str]:
        return list(self.emailed_users.get(experiment, []))

    def mark_emailed(self, experiment: str, usernames: Sequence[str]) -> None:
        emailed = self.emailed_users.setdefault(experiment, [])
        emailed += [username for username in dict.fromkeys(usernames) if username not in emailed]

    def rules(self, experiment: str) -> dict[str, str]:
        return dict(self.rule_ids.get(experiment, {}))

    def record_rules(self, experiment: str, rules: Mapping[str, str]) -> None:
        self.rule_ids.setdefault(experiment, {}).update(rules)

    def forget_rules(self, experiment: str, usernames: Sequence[str]) -> None:
        for username in usernames:
            self.rule_ids.get(experiment, {}).pop(username, None)

    def proposal(self, experiment: str) -> Beamtime | None:
        return self.proposals.get(experiment)

    def keep_proposal(self, experiment: str, proposal: Beamtime) -> None:
        self.proposals[experiment] = proposal

    def followed(self) -> str:
        return self.followed_key

    def mark_followed(self, key: str) -> None:
        self.followed_key = key

    def forget_experiment(self, experiment: str) -> None:
        self.rule_ids.pop(experiment, None)
        self.emailed_users.pop(experiment, None)
        self.proposals.pop(experiment, None)
        if self.selection == experiment:
            self.selection = ""


# --------------------------------------------------------------------------- transfer, tag, access, e-mail


class FakeTransfer(Transfer):
    """Copies nothing: a test sets `state` (an upload's end, an error) and puts in `sent` what the transfer's
    record holds (`forget` drops the files sent into those destinations). While it runs (`state` not Stopped),
    it refuses a start for another experiment and a `forget` of the sources it sends, as the built-in engine does."""

    def __init__(self) -> None:
        self.state = TransferProgress()
        self.starts: list[tuple[str, dict[str, str], bool]] = []  # (experiment, sources, once) of each start
        self.forgotten: list[dict[str, str]] = []
        self.sent: list[SentFile] = []  # what the ledger would hold

    @property
    def running(self) -> bool:
        """Running, or retrying after an error: anything but Stopped."""
        return self.state.state != TransferState.STOPPED

    def start(self, experiment: Experiment, sources: Mapping[str, str], *, once: bool) -> str:
        if self.running and self.starts:
            name, sending, sending_once = self.starts[-1]
            kind = "upload" if sending_once else "transfer"
            if (name, sending, sending_once) == (experiment.name, dict(sources), once):
                return f"the {kind} of {name} is already running"
            raise InputError(f"a {kind} of {name} is running; stop it (DaqStop) before starting one for "
                             f"{experiment.name}")  # fmt: skip
        self.starts.append((experiment.name, dict(sources), once))
        self.state = TransferProgress(state=TransferState.RUNNING)
        return f"transfer of {experiment.name} started"

    def stop(self) -> str:
        if not self.running:
            return "no transfer is running"
        self.state = TransferProgress(state=TransferState.STOPPED)
        return "transfer stopped"

    def progress(self) -> TransferProgress:
        return self.state

    def resume(self) -> str | None:
        return None

    def forget(self, sources: Mapping[str, str]) -> None:
        sending = self.starts[-1][1] if self.running and self.starts else {}
        busy = [root for root in sources if root in sending]
        if busy:
            raise InputError(f"the transfer from {', '.join(busy)} is running (or still finishing): stop it "
                             "(DaqStop) first; its sent files not forgotten")  # fmt: skip
        self.forgotten.append(dict(sources))
        into = tuple(dest.rstrip("/") + "/" for dest in sources.values())
        self.sent = [f for f in self.sent if not f.path.startswith(into)]

    def sent_since(self, mark: float, storage: str) -> list[SentFile]:
        inside = storage.rstrip("/") + "/"
        return sorted((f for f in self.sent if f.sent_at > mark and f.path.startswith(inside)), key=lambda f: f.sent_at)


class FakeTag(TagTarget):
    def __init__(self) -> None:
        self.writes: list[tuple[str, dict[str, str]]] = []
        self.cut: list[str] = []

    def write(self, prefix: str, values: Mapping[str, str]) -> list[str]:
        self.writes.append((prefix, dict(values)))
        return list(self.cut)


class FakeAccess(Access):
    def __init__(self) -> None:
        self.grants: list[tuple[str, str]] = []
        self.revoked: list[tuple[str, str]] = []

    def grant(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> dict[str, str]:
        rules = {u.username: f"rule-{u.username}" for u in users if u.email}
        self.grants += [(experiment.name, username) for username in rules]
        return rules

    def revoke(self, experiment: Experiment, rules: Mapping[str, str]) -> list[str]:
        self.revoked += [(experiment.name, username) for username in rules]
        return list(rules)

    def url(self, experiment: Experiment) -> str:
        return f"https://app.globus.org/file-manager?path=/{experiment.name}/"


class FlakyAccess(FakeAccess):
    """Globus that fails for the users in `failing`, after making the others' rules."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing

    def grant(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> dict[str, str]:
        made = super().grant(experiment, [u for u in users if u.username not in self.failing])
        failed = [u.username for u in users if u.username in self.failing and u.email]
        if failed:
            raise GlobusError(f"no Globus identity for {', '.join(failed)}", done=made)
        return made


class FakeMailer(Mailer):
    """Sends to everyone with an address but the usernames in `refused` (username -> why); `fail` is raised by
    the next send."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[tuple[str, str]], dict[str, str]]] = []  # (recipients, values) per send
        self.refused: dict[str, str] = {}
        self.fail: Exception | None = None

    def send(self, recipients: Sequence[tuple[str, str]], values: Mapping[str, str]) -> Delivery:
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        self.sent.append((list(recipients), dict(values)))
        addressed = [username for username, address in recipients if address.strip()]
        return Delivery(
            delivered=tuple(username for username in addressed if username not in self.refused),
            skipped=tuple(username for username, address in recipients if not address.strip()),
            failed={username: self.refused[username] for username in addressed if username in self.refused},
        )


# --------------------------------------------------------------------------- the beamline on fakes


@dataclass
class FakeAdapters:
    """One fake per port, named as `Adapters` names them (`ports()`); e-mail is off by default.

    A test may put another implementation in a field (a failing schedule, the APS DM adapter on a fake SDK).
    """

    scheduling: FakeSchedule
    dm: FakeDM
    state: FakeState
    transfer: FakeTransfer
    tag: FakeTag
    access: FakeAccess
    mailer: FakeMailer | None = None
    records: StorageRecords = field(default_factory=StorageRecords)  # the real one: it runs on the temp folder

    def ports(self) -> Adapters:
        """The fakes as the handlers get them (mypy checks each one against its port here)."""
        return Adapters(scheduling=self.scheduling, dm=self.dm, state=self.state, transfer=self.transfer, tag=self.tag,
                        access=self.access, mailer=self.mailer, records=self.records)  # fmt: skip


def settings_in(tmp: Path, **sections: Any) -> Settings:
    """The beamline's settings with its folders under `tmp`; `sections` replace whole sections (e.g. `email=`)."""
    settings = Settings(
        ioc=IocSettings(prefix="test:", state_dir=tmp / "state"),
        beamline=BeamlineSettings(name="2-BM-A,B", station="2BM", contacts=("100001",)),
        dm=DMSettings(data_top_dir=tmp / "data", storage_root=tmp / "storage"),
        globus=GlobusSettings(enabled=True, collection_id="c", client_id="i"),
    )
    return replace(settings, **sections)


def recorded(fakes: FakeAdapters) -> dict[str, dict[str, Any]]:
    """A deep copy of everything the fakes hold and were told: equal before and after a call that changed nothing."""
    return {name: copy.deepcopy(vars(fake)) for name, fake in vars(fakes).items() if fake is not None}


def fake_adapters(tmp: Path) -> FakeAdapters:
    """One fake per port but the mailer (e-mail is off by default)."""
    return FakeAdapters(
        scheduling=FakeSchedule(),
        dm=FakeDM(tmp / "storage"),
        state=FakeState(),
        transfer=FakeTransfer(),
        tag=FakeTag(),
        access=FakeAccess(),
    )
