"""A 10,000-file acquisition's dataset: built from the transfer ledger and sent to SciCat (the local stand-in).

    python benchmarks/catalog_bench.py [--files 10000]

Fills a transfer ledger with `--files` sent files, then times, as DaqStop runs
them: the Catalog handler's record (the ledger's `sent_since`, the JSON written aside
and renamed, the SciCat dataset built and queued in SQLite) and the sending of
the queue (login, the lookup, POST datasets, POST origdatablocks of 10,000
files each) to tests/scicat_standin.py on 127.0.0.1, which checks every body as
SciCat does. The target is under 5 s for 10,000 files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package, for the stand-in

from dmagic_ioc.adapters.records import StorageRecords
from dmagic_ioc.adapters.scicat.catalogue import ScicatCatalogue
from dmagic_ioc.adapters.scicat.client import ScicatClient
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.ioc.app.commands import HANDLERS
from dmagic_ioc.ioc.app.handling import handle
from dmagic_ioc.ioc.app.messages import Catalog, ReadSelection
from dmagic_ioc.ioc.app.services import Adapters, Services
from dmagic_ioc.ioc.app.state import BeamlineState
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.settings.schema import BeamlineSettings, DMSettings, IocSettings, ScicatSettings, Settings

from tests.fakes.ports import FakeDM, FakeSchedule, FakeState, FakeTag
from tests.scicat_standin import ScicatStandIn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="catalog-bench-") as folder, ScicatStandIn() as standin:
        tmp = Path(folder)
        storage = tmp / "storage" / "2026-11" / "bench"
        (storage / "data").mkdir(parents=True)
        transfer = LocalTransfer(tmp / "state" / "transfers.sqlite")
        for i in range(args.files):
            transfer.ledger.add(str(tmp / "data" / "bench"), f"scan{i // 1000}/proj_{i:05d}.h5", 4_000_000 + i,
                                1_763_600_000_000_000_000, str(storage / "data"))  # fmt: skip
        transfer.ledger.commit()
        credentials = tmp / "scicat.cred"
        credentials.write_text(f"{standin.username}|{standin.password}\n")
        credentials.chmod(0o600)
        catalogue = ScicatCatalogue(ScicatClient(standin.url, credentials), tmp / "state" / "catalog.sqlite", "bench")
        catalogue._start = lambda: None  # the benchmark sends by itself, timed
        settings = Settings(
            ioc=IocSettings(state_dir=tmp / "state"), beamline=BeamlineSettings(name="2-BM-A,B", station="2BM"),
            dm=DMSettings(data_top_dir=tmp / "data", storage_root=tmp / "storage"),
            scicat=ScicatSettings(enabled=True, url=standin.url, credentials=credentials, creation_location="APS/2-BM",
                                  access_groups=("ingestor",), contact_email="2bm@aps.anl.gov"),
        )  # fmt: skip
        dm = FakeDM(tmp / "storage")
        pi = ExperimentUser("d310011", "Jean-Luc D'Arcy", "jl.darcy@example.fr", source="proposal")
        experiment = Experiment("bench", "Benchmark", "1013377", storage_directory=str(storage), users=(pi,))
        dm.experiments["bench"] = experiment
        state = FakeState()
        state.select("bench")
        adapters = Adapters(scheduling=FakeSchedule(), dm=dm, state=state, transfer=transfer, tag=FakeTag(),
                            catalogue=catalogue, records=StorageRecords())  # fmt: skip
        services = Services(settings, adapters, clock=lambda: datetime.now(timezone.utc))
        selection = handle(HANDLERS, services, BeamlineState(), ReadSelection())
        selected = replace(selection.state, experiment=experiment)

        started = time.perf_counter()
        result = handle(HANDLERS, services, selected, Catalog())
        built = time.perf_counter() - started
        if result.error is not None:
            raise result.error
        assert result.outcome is not None
        outcome = result.outcome
        sent = catalogue.send_pending()
        total = time.perf_counter() - started
        (held,) = standin.datasets.values()
        blocks = [block for held_blocks in standin.datablocks.values() for block in held_blocks]
        listed = sum(len(block["dataFileList"]) for block in blocks)
        print(outcome.message)
        print(f"{args.files} files: record and dataset built and queued in {built:.2f} s; "
              f"sent ({sent} dataset, {listed} files in {len(blocks)} origdatablocks) in {total - built:.2f} s; "
              f"total {total:.2f} s (target < 5 s for 10,000)")  # fmt: skip
        assert held["numberOfFiles"] == args.files == listed  # counted once, by SciCat, from the blocks
        return 0 if total < 5 else 1


if __name__ == "__main__":
    sys.exit(main())
