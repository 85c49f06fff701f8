"""Transfer: the built-in engine (the default: copying on this host, its SQLite ledger) and FakeTransfer, its
stand-in, start, stop, refuse and record alike. FakeTransfer copies nothing: what the engine's ledger holds
after an upload, a test puts in its `sent` (`FakeCase.send`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm.local import write_storage_marker
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.ioc.domain.errors import InputError
from dmagic_ioc.ioc.domain.experiment import Experiment
from dmagic_ioc.ioc.domain.ports import SentFile, Transfer, TransferState

from ..fakes.ports import EXPERIMENT, FakeTransfer
from ..helpers import wait_for

UPLOAD_SECONDS = 60.0  # the longest an upload of a few bytes may take on a loaded machine


@dataclass
class Case:
    transfer: Transfer
    top: Path  # dm.data_top_dir
    storage_root: Path
    experiment: Experiment = field(init=False)

    def __post_init__(self) -> None:
        self.experiment = self.made(EXPERIMENT)

    def made(self, name: str) -> Experiment:
        """An experiment as Create leaves it: its raw folder, its storage with the destination folders and marker."""
        storage = self.storage_root / name
        for folder in (self.top / name, storage / "data", storage / "analysis"):
            folder.mkdir(parents=True, exist_ok=True)
        write_storage_marker(storage, name)
        return Experiment(name, storage_directory=str(storage))

    def sources(self, experiment: Experiment) -> dict[str, str]:
        raw, storage = self.top / experiment.name, experiment.storage_directory
        return {str(raw): f"{storage}/data", f"{raw}_rec": f"{storage}/analysis"}

    def send(self, files: dict[str, bytes]) -> None:
        """Have the transfer's record hold `files` (path in the raw folder -> content) sent into the storage."""
        raise NotImplementedError


@dataclass
class FakeCase(Case):
    transfer: FakeTransfer

    def send(self, files: dict[str, bytes]) -> None:
        data, now = Path(self.experiment.storage_directory) / "data", time.time()
        self.transfer.sent += [SentFile(str(data / rel), len(content), 0.0, now) for rel, content in files.items()]


@dataclass
class EngineCase(Case):
    transfer: LocalTransfer

    def send(self, files: dict[str, bytes]) -> None:
        """Write them in the raw folder and upload them."""
        raw = self.top / self.experiment.name
        for rel, content in files.items():
            (raw / rel).parent.mkdir(parents=True, exist_ok=True)
            (raw / rel).write_bytes(content)
        self.transfer.start(self.experiment, self.sources(self.experiment), once=True)
        wait_for(lambda: self.transfer.progress().state == TransferState.STOPPED, timeout=UPLOAD_SECONDS,
                 what="the upload to end")  # fmt: skip


@pytest.fixture(params=["fake", "engine"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    top, storage_root = tmp_path / "data", tmp_path / "storage" / "2026-10"
    if request.param == "fake":
        yield FakeCase(FakeTransfer(), top, storage_root)
        return
    engine = LocalTransfer(tmp_path / "state" / "transfers.db", settle_time=0.1, workers=2, poll_interval=0.05,
                           source_top=top)  # fmt: skip
    yield EngineCase(engine, top, storage_root)
    engine.close()


def test_nothing_runs_at_first_and_nothing_is_resumed_or_stopped(case):
    assert case.transfer.progress().state == TransferState.STOPPED
    assert case.transfer.resume() is None
    assert case.transfer.stop() == "no transfer is running"
    assert case.transfer.progress().state == TransferState.STOPPED


def test_a_transfer_runs_from_its_start_until_it_is_stopped(case):
    said = case.transfer.start(case.experiment, case.sources(case.experiment), once=False)
    assert EXPERIMENT in said
    assert case.transfer.progress().state == TransferState.RUNNING

    assert case.transfer.stop()
    assert case.transfer.progress().state == TransferState.STOPPED
    assert case.transfer.stop() == "no transfer is running"


def test_the_same_start_again_says_it_runs_already(case):
    sources = case.sources(case.experiment)
    case.transfer.start(case.experiment, sources, once=False)
    assert "already running" in case.transfer.start(case.experiment, sources, once=False)
    assert case.transfer.progress().state == TransferState.RUNNING


def test_a_start_for_another_experiment_while_one_runs_is_refused_and_the_first_runs_on(case):
    case.transfer.start(case.experiment, case.sources(case.experiment), once=False)
    other = case.made("2026-10-Ngo-1012040")
    with pytest.raises(InputError, match="DaqStop"):
        case.transfer.start(other, case.sources(other), once=False)
    assert case.transfer.progress().state == TransferState.RUNNING


def test_the_files_sent_into_a_storage_after_a_mark_oldest_first(case):
    storage = case.experiment.storage_directory
    case.send({"a.h5": b"abc", "scan/b.h5": b"12345"})

    listed = list(case.transfer.sent_since(0.0, storage))

    assert sorted((f.path, f.size) for f in listed) == [(f"{storage}/data/a.h5", 3), (f"{storage}/data/scan/b.h5", 5)]
    assert [f.sent_at for f in listed] == sorted(f.sent_at for f in listed)
    assert list(case.transfer.sent_since(max(f.sent_at for f in listed), storage)) == []
    assert list(case.transfer.sent_since(0.0, str(case.storage_root / "2026-10-Ngo-1012040"))) == []


def test_forget_is_refused_while_those_sources_are_sent_and_then_drops_their_files(case):
    sources, storage = case.sources(case.experiment), case.experiment.storage_directory
    case.send({"a.h5": b"abc"})
    case.transfer.start(case.experiment, sources, once=False)
    with pytest.raises(InputError, match="DaqStop"):
        case.transfer.forget(sources)
    assert len(list(case.transfer.sent_since(0.0, storage))) == 1

    case.transfer.stop()
    case.transfer.forget(sources)
    assert list(case.transfer.sent_since(0.0, storage)) == []
