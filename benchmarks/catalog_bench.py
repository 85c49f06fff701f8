"""An acquisition's dataset at scale: DaqStop's record and SciCat queue, built from the transfer ledger as it is read.

    python benchmarks/catalog_bench.py [--files 1000000] [--no-send]

Fills a transfer ledger with `--files` sent files (each with its blake2b, as with
dm.checksum), then times DaqStop as the supervisor runs it: the ledger's
`sent_since` read once, each file written into the record aside and staged into
the SciCat queue in origdatablocks as it comes, the record put in place. Beside
it, in the same run, the reference: SQLite handing the same rows over, nothing
done with them. Then (unless --no-send) the queue is sent to
tests/scicat_standin.py on 127.0.0.1, which checks every body as SciCat does.

Targets at a million files: DaqStop under 5 s, its memory flat (the list is
never whole in memory: the exit status is 1 when DaqStop's peak RSS grows by
more than 64 MB, whatever the number of files).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sqlite3
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package, for the fakes and the stand-in

from dmagic_ioc.adapters.records import StorageRecords
from dmagic_ioc.adapters.scicat.catalogue import ScicatCatalogue
from dmagic_ioc.adapters.scicat.client import ScicatClient
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.ioc.app.commands import HANDLERS
from dmagic_ioc.ioc.app.handling import handle
from dmagic_ioc.ioc.app.messages import DaqStop, ReadSelection
from dmagic_ioc.ioc.app.services import Adapters, Services
from dmagic_ioc.ioc.app.state import Acquisition, BeamlineState
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.settings.schema import BeamlineSettings, DMSettings, IocSettings, ScicatSettings, Settings

from tests.fakes.ports import FakeDM, FakeSchedule, FakeState, FakeTag
from tests.scicat_standin import ScicatStandIn

MEMORY_GROWTH = 64  # MB DaqStop's peak RSS may grow by, whatever the number of files
COMMIT_EVERY = 100_000  # files added to the ledger per transaction while filling it


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--no-send", action="store_true", help="leave the queue unsent (the stand-in holds all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as folder, ScicatStandIn() as standin:
        tmp = Path(folder)
        storage = tmp / "storage" / "2026-11" / "bench"
        (storage / "data").mkdir(parents=True)
        transfer = LocalTransfer(tmp / "state" / "transfers.sqlite")
        filled = fill(transfer, tmp, storage, args.files)
        catalogue = ScicatCatalogue(ScicatClient(standin.url, credentials(tmp, standin), timeout=60),
                                    tmp / "state" / "catalog.sqlite", "bench.aps.anl.gov")  # fmt: skip
        catalogue._start = lambda: None  # the benchmark sends by itself, after
        services = bench_services(tmp, standin, transfer, catalogue, storage)
        state = acquiring(services, storage)

        reference = read_bare(tmp / "state" / "transfers.sqlite")
        before = rss_mb()
        reset_peak()
        started, cpu = time.perf_counter(), time.process_time()
        result = handle(HANDLERS, services, state, DaqStop())
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        peak = peak_mb()
        if result.error is not None:
            raise result.error
        assert result.outcome is not None
        record = next((storage / "metadata").glob("bench-*.json"))
        print(result.outcome.message)
        print(f"{args.files} files (ledger filled in {filled:.1f} s), load {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores")  # fmt: skip
        print(f"  reference, SQLite handing the rows over: {reference:.2f} s")
        print(f"  DaqStop: {took:.2f} s ({took / reference:.1f}x the reference; {cpu:.2f} s of CPU); peak RSS "
              f"{peak:.0f} MB, {peak - before:+.0f} MB over before; record {record.stat().st_size / 1e6:.0f} MB "
              f"(target < 5 s at 1,000,000 files)")  # fmt: skip
        if not args.no_send:
            send(catalogue, standin, args.files)
        transfer.close()
        return 0 if peak - before <= MEMORY_GROWTH else 1


def fill(transfer: LocalTransfer, tmp: Path, storage: Path, files: int) -> float:
    """The ledger with `files` sent into the experiment's storage, in folders of 1000: how long it took."""
    started = time.perf_counter()
    source, dest = str(tmp / "data" / "bench"), str(storage / "data")
    for i in range(files):
        transfer.ledger.add(source, f"scan{i // 1000:04d}/proj_{i:07d}.h5", 4_000_000 + i,
                            1_763_600_000_000_000_000 + i * 1000, dest, f"blake2b:{i:0128x}")  # fmt: skip
        if i % COMMIT_EVERY == COMMIT_EVERY - 1:
            transfer.ledger.commit()
    transfer.ledger.commit()
    return time.perf_counter() - started


def credentials(tmp: Path, standin: ScicatStandIn) -> Path:
    path = tmp / "scicat.cred"
    path.write_text(f"{standin.username}|{standin.password}\n")
    path.chmod(0o600)
    return path


def bench_services(tmp: Path, standin: ScicatStandIn, transfer: LocalTransfer, catalogue: ScicatCatalogue,
                   storage: Path) -> Services:  # fmt: skip
    settings = Settings(
        ioc=IocSettings(state_dir=tmp / "state"), beamline=BeamlineSettings(name="2-BM-A,B", station="2BM"),
        dm=DMSettings(data_top_dir=tmp / "data", storage_root=tmp / "storage"),
        scicat=ScicatSettings(enabled=True, url=standin.url, credentials=tmp / "scicat.cred",
                              creation_location="APS/2-BM", access_groups=("ingestor",),
                              contact_email="2bm@aps.anl.gov"),
    )  # fmt: skip
    dm = FakeDM(tmp / "storage")
    pi = ExperimentUser("d310011", "Jean-Luc D'Arcy", "jl.darcy@example.fr", source="proposal")
    dm.experiments["bench"] = Experiment("bench", "Benchmark", "1013377", storage_directory=str(storage), users=(pi,))
    state = FakeState()
    state.select("bench")
    adapters = Adapters(scheduling=FakeSchedule(), dm=dm, state=state, transfer=transfer, tag=FakeTag(),
                        catalogue=catalogue, records=StorageRecords())  # fmt: skip
    return Services(settings, adapters, clock=lambda: datetime.now(timezone.utc))


def acquiring(services: Services, storage: Path) -> BeamlineState:
    """The state after DaqStart of experiment bench (its transfer already stopped: the ledger holds its files)."""
    selection = handle(HANDLERS, services, BeamlineState(), ReadSelection())
    experiment = services.adapters.dm.get_experiment("bench")
    assert experiment is not None
    now = datetime.now(timezone.utc)
    return replace(selection.state, experiment=experiment, acquisition=Acquisition("daq", experiment, None, now))


def read_bare(ledger: Path) -> float:
    """Seconds SQLite takes to hand every sent file over, oldest first, nothing done with them."""
    db = sqlite3.connect(ledger)
    started = time.perf_counter()
    for _ in db.execute("SELECT dest, relpath, size, mtime_ns, sent_at, checksum FROM files ORDER BY sent_at"):
        pass
    took = time.perf_counter() - started
    db.close()
    return took


def send(catalogue: ScicatCatalogue, standin: ScicatStandIn, files: int) -> None:
    started = time.perf_counter()
    sent = catalogue.send_pending()
    took = time.perf_counter() - started
    (held,) = standin.datasets.values()
    blocks = [block for held_blocks in standin.datablocks.values() for block in held_blocks]
    listed = sum(len(block["dataFileList"]) for block in blocks)
    print(f"  sent ({sent} dataset, {listed} files in {len(blocks)} origdatablocks) in {took:.2f} s")
    assert held["numberOfFiles"] == files == listed  # counted once, by SciCat, from the blocks


def rss_mb() -> float:
    return _status_mb("VmRSS") or 0.0


def peak_mb() -> float:
    """The peak RSS since `reset_peak` (Linux); the process's peak elsewhere."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> None:
    """Start the peak RSS over (Linux: /proc/self/clear_refs); elsewhere the process's peak stays."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _status_mb(field: str) -> float | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    found = next((line.split()[1] for line in lines if line.startswith(field + ":")), None)
    return int(found) / 1024 if found else None


if __name__ == "__main__":
    sys.exit(main())
