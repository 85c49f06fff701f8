"""The built-in transfer engine as one experiment grows: what a poll costs and what the process holds with
100,000 or 1,000,000 files known.

    python benchmarks/transfer_scale.py [--files 100000,1000000] [--per-folder 1000] [--dir /tmp]

For each size, in a fresh process: small files (8 to 64 bytes) in folders of --per-folder, a storage
marked as Create marks it, then a `LocalTransfer` started as DaqStart starts it (continuous, settle
time 2 s). Reported: the first scan (until every file is known), until every file is sent, the poll with
nothing new, the poll that finds one new file in one folder, the process's RSS (now and peak), and the
same after a restart (`resume`, with every file in the ledger). The page cache is warm; the copies are
fsync'ed as the engine always does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dmagic_ioc.adapters.dm.marker import write_storage_marker
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.ioc.domain.experiment import Experiment

POLL_INTERVAL = 0.5


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_files(root: Path, count: int, per_folder: int) -> None:
    """`count` files of 8-64 bytes, `per_folder` to a folder, written an hour ago (settled)."""
    written = time.time() - 3600
    for index in range(count):
        folder = root / f"scan_{index // per_folder:04d}"
        if index % per_folder == 0:
            folder.mkdir(parents=True)
        path = folder / f"proj_{index % per_folder:05d}.tif"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, index.to_bytes(8, "little") * (1 + index % 8))
        os.close(fd)
        os.utime(path, (written, written))


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError("benchmark condition not met")
        time.sleep(step)
    return time.monotonic() - started


def next_poll(engine: LocalTransfer) -> float:
    """The duration of the next poll the engine makes."""
    run = engine._run
    assert run is not None
    seen = run.polls
    wait_until(lambda: run.polls > seen, timeout=60, step=0.01)
    return run.poll_seconds


def polls(engine: LocalTransfer, src: Path, count: int) -> tuple[float, float]:
    """Median poll with nothing new; median poll that finds one new file in one folder (written just
    before it, its folder listed again)."""
    next_poll(engine)
    quiet = statistics.median(next_poll(engine) for _ in range(count))
    busy = []
    known = engine.progress().files_total
    for index in range(count):
        next_poll(engine)
        (src / "scan_0000" / f"new_{index}.tif").write_bytes(b"x")
        busy.append(next_poll(engine))
        seen = known + index + 1
        wait_until(lambda seen=seen: engine.progress().files_total == seen, timeout=60)
    return quiet, statistics.median(busy)


def engine_for(base: Path) -> LocalTransfer:
    ledger = base / "state" / "transfers.sqlite"
    return LocalTransfer(ledger, settle_time=2.0, workers=4, poll_interval=POLL_INTERVAL, source_top=base / "raw")


def measure_start(base: Path, files: int, per_folder: int) -> dict[str, float]:
    """Make the files, start the transfer (DaqStart), wait until every file is sent, time the polls."""
    src, storage = base / "raw" / "exp", base / "storage" / "exp"
    started = time.monotonic()
    make_files(src, files, per_folder)
    (storage / "data").mkdir(parents=True)
    write_storage_marker(storage, "exp")
    figures: dict[str, float] = {"make_s": time.monotonic() - started, "rss_before_mb": rss_mb()}
    engine = engine_for(base)
    engine.start(Experiment(name="exp", storage_directory=str(storage)), {str(src): str(storage / "data")}, once=False)
    figures["first_scan_s"] = wait_until(lambda: engine.progress().files_total >= files, timeout=3600)
    caught_up = wait_until(lambda: engine.progress().files_done >= files, timeout=3600, step=0.2)
    figures["caught_up_s"] = figures["first_scan_s"] + caught_up  # from the start, as first_scan_s
    figures["first_poll_s"] = engine._run.first_poll_seconds if engine._run else 0.0
    figures["poll_quiet_ms"], figures["poll_one_new_ms"] = (s * 1e3 for s in polls(engine, src, 9))
    figures["rss_mb"], figures["peak_rss_mb"] = rss_mb(), peak_rss_mb()
    engine.close()  # as at an IOC's exit: the running transfer is kept for resume
    figures["ledger_mb"] = sum(p.stat().st_size for p in (base / "state").iterdir()) / 1e6
    return figures


def measure_resume(base: Path, files: int) -> dict[str, float]:
    """A restart: resume the transfer, every file already in the ledger."""
    engine = engine_for(base)
    engine.resume()
    figures = {"resume_caught_up_s": wait_until(lambda: engine.progress().files_done >= files, timeout=3600)}
    figures["resume_poll_quiet_ms"] = statistics.median(next_poll(engine) for _ in range(9)) * 1e3
    figures["resume_rss_mb"], figures["resume_peak_rss_mb"] = rss_mb(), peak_rss_mb()
    engine.close()
    return figures


def in_child(*arguments: str) -> dict[str, float]:
    """Run one phase in a fresh process (its RSS its own); its figures."""
    done = subprocess.run([sys.executable, __file__, *arguments], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="100000,1000000", help="sizes, comma-separated")
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the files are made (removed after)")
    parser.add_argument("--phase", choices=("start", "resume"), help=argparse.SUPPRESS)  # one phase, here
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--phase-files", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        figures = (
            measure_start(Path(args.base), args.phase_files, args.per_folder)
            if args.phase == "start"
            else measure_resume(Path(args.base), args.phase_files)
        )
        print(json.dumps(figures))
        return 0
    rows = []
    for files in (int(size) for size in args.files.split(",")):
        base = Path(tempfile.mkdtemp(prefix="transfer-scale-", dir=args.dir))
        try:
            common = ["--base", str(base), "--phase-files", str(files), "--per-folder", str(args.per_folder)]
            figures = in_child("--phase", "start", *common)
            figures |= in_child("--phase", "resume", *common[:2], "--phase-files", str(files + 9))
            rows.append((files, figures))
            print(f"{files:>9} files: {json.dumps(figures)}", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)
    keys = list(rows[0][1])
    print(f"{'files':<22}" + "".join(f"{files:>12}" for files, _ in rows))
    for key in keys:
        print(f"{key:<22}" + "".join(f"{figures[key]:>12.2f}" for _, figures in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
