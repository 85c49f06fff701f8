"""Benchmark of the built-in transfer engine against `rsync -a`.

    python benchmarks/transfer_bench.py [--quick] [--dir /scratch] [--only big,large,small,latency,poll]

Measures, in one run: throughput on one big file, on large files and on many
small files (engine vs rsync, each run twice, interleaved, into a fresh destination);
what the progress said during the big file's copy (how often Bytes moved, the Rate);
the latency from a file's last write to its arrival, with the settle time
reported apart; and the cost of one poll with 100,000 files already known.
Page caches cannot be dropped here: the sources are warm for both sides;
dirty pages are synced before each timed run. The engine fsyncs every file
(and its ledger); rsync does not.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dmagic_ioc.adapters.dm.marker import write_storage_marker
from dmagic_ioc.adapters.transfer.local import LocalTransfer
from dmagic_ioc.adapters.transfer.scan import Tree
from dmagic_ioc.ioc.domain.experiment import Experiment
from dmagic_ioc.ioc.domain.ports import TransferState

MB = 1e6


def make_files(root: Path, count: int, size: int, folders: int) -> int:
    """`count` files of about `size` bytes (distinct contents) in `folders` subfolders; total bytes."""
    block = os.urandom(size)
    total = 0
    for i in range(count):
        folder = root / f"scan_{i % folders:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = i.to_bytes(8, "little") + block[8 : size - (i % 7) * 64]
        (folder / f"file_{i:06d}.dat").write_bytes(data)
        total += len(data)
    return total


def make_empty_files(root: Path, count: int, folders: int) -> None:
    for i in range(count):
        folder = root / f"d{i % folders:03d}"
        if i < folders:
            folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(folder / f"f{i:07d}", os.O_WRONLY | os.O_CREAT, 0o644))


def wait_until(condition, timeout: float, step: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError("benchmark condition not met")


def run_engine(src: Path, dest: Path, state: Path, workers: int, readings: list | None = None) -> float:
    """Seconds for an upload (scan + copy + ledger) of `src` into a fresh `dest`; with `readings`, the
    progress snapshots seen while it ran (each change of Bytes) are appended to it as (seconds, progress)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()  # the engine makes no destination folder: Create does
    ledger = state / f"ledger-{time.monotonic_ns()}.db"
    engine = LocalTransfer(ledger, settle_time=0.0, workers=workers, poll_interval=0.5)
    os.sync()  # neither side pays for the other's writeback

    def ended() -> bool:
        progress = engine.progress()
        moved = not readings or readings[-1][1].bytes_done != progress.bytes_done
        if readings is not None and progress.state == TransferState.RUNNING and moved:
            readings.append((time.monotonic() - started, progress))
        return progress.state != TransferState.RUNNING

    try:
        started = time.monotonic()
        engine.start(Experiment(name="bench"), {str(src): str(dest)}, once=True)
        finished = wait_until(ended, timeout=3600)
        progress = engine.progress()
        if progress.state != TransferState.STOPPED:
            raise RuntimeError(f"engine ended in {progress.state}: {progress.message}")
        return finished - started
    finally:
        engine.close()


def run_reference(src: Path, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    rsync = ["rsync", "-a", f"{src}/", f"{dest}/"]
    command = rsync if shutil.which("rsync") else ["cp", "-a", str(src), str(dest)]
    os.sync()
    started = time.monotonic()
    subprocess.run(command, check=True)
    return time.monotonic() - started


def compare(
    name: str, src: Path, dest: Path, state: Path, total_bytes: int, files: int, workers: int, readings=None
) -> float:
    """Engine vs reference, interleaved twice; print both and the ratio of the best runs."""
    engine_times, reference_times = [], []
    for _ in range(2):
        engine_times.append(run_engine(src, dest, state, workers, readings))
        reference_times.append(run_reference(src, dest))
    shutil.rmtree(dest, ignore_errors=True)
    best_engine, best_reference = min(engine_times), min(reference_times)
    reference = "rsync -a" if shutil.which("rsync") else "cp -a (rsync not installed)"
    print(f"\n{name}: {files} files, {total_bytes / MB:.0f} MB")
    for label, times in (("engine", engine_times), (reference, reference_times)):
        rates = ", ".join(f"{t:.2f} s = {total_bytes / MB / t:.0f} MB/s, {files / t:.0f} files/s" for t in times)
        print(f"  {label:28s} {rates}")
    ratio = best_reference / best_engine
    print(f"  ratio engine/reference (best runs): {ratio:.2f}x")
    return ratio


def show_readings(readings: list, total_bytes: int) -> None:
    """What Daq:Bytes, Daq:Percent and Daq:Rate said during the big file's copies."""
    during = [(t, p) for t, p in readings if 0 < p.bytes_done < total_bytes]
    print(f"  progress during the copy: {len(during)} changes of Bytes before the file was whole")
    for t, p in during[:: max(1, len(during) // 6)]:
        print(f"    {t:6.2f} s: Bytes {p.bytes_done:.3e}, Percent {p.percent:5.1f}, Rate {p.rate_mb_s:7.1f} MB/s")


def measure_latency(base: Path, samples: int, settle_time: float) -> list[float]:
    """Seconds from a new file's last write to its arrival, with the engine running continuously."""
    src, dest = base / "latency_src", base / "latency_dest"
    src.mkdir()
    dest.mkdir()
    engine = LocalTransfer(base / "latency.db", settle_time=settle_time, poll_interval=0.5)
    latencies = []
    try:
        engine.start(Experiment(name="bench"), {str(src): str(dest)}, once=False)
        block = os.urandom(1024 * 1024)
        for i in range(samples):
            target = src / f"frame_{i}.h5"
            with target.open("wb") as out:
                for chunk in range(10):  # 10 MB, written over ~0.5 s
                    if chunk:
                        time.sleep(0.05)
                    out.write(block)
                    out.flush()
            last_write = time.monotonic()
            arrived = wait_until((dest / target.name).exists, timeout=60, step=0.002)
            latencies.append(arrived - last_write)
            time.sleep(0.37 * (i % 3))  # vary the phase against the poll interval
    finally:
        engine.close()
    return latencies


def measure_poll_cost(base: Path, known: int) -> None:
    """One poll of the engine with `known` files already sent, and a scan of one big changed folder."""
    src, dest = base / "known_src", base / "known_dest"
    folders = max(1, known // 1000)
    make_empty_files(src, known, folders)
    shutil.copytree(src, dest)  # copies mtimes: every file counts as already sent
    engine = LocalTransfer(base / "known.db", settle_time=2.0, poll_interval=0.5)
    try:
        started = time.monotonic()
        engine.start(Experiment(name="bench"), {str(src): str(dest)}, once=False)
        wait_until(lambda: engine.progress().files_done == known, timeout=600, step=0.05)
        first_pass = time.monotonic() - started
        samples = []
        for _ in range(12):
            time.sleep(0.5)
            samples.append(engine.poll_seconds)
        quiet = statistics.median(samples[2:])
        samples = []
        for i in range(8):  # a new file each poll: its folder (1000 entries) is listed again
            (src / "d000" / f"new_{i}").write_bytes(b"x")
            time.sleep(0.5)
            samples.append(engine.poll_seconds)
        busy = statistics.median(samples)
    finally:
        engine.close()
    flat = base / "flat"
    make_empty_files(flat, known, 1)
    tree = Tree(str(flat))
    tree.poll()
    (flat / "d000" / "new").write_bytes(b"x")
    started = time.perf_counter()
    found, _ = tree.poll()
    flat_cost = time.perf_counter() - started
    assert len(found) == 1
    print(f"\npoll cost with {known} files known ({folders} folders of {known // folders}):")
    print(f"  first pass (scan, check destinations, ledger): {first_pass:.1f} s")
    print(f"  one poll, nothing new:                 {quiet * 1e3:.1f} ms (includes a 1,000-file audit)")
    print(f"  one poll, a new file in one folder:     {busy * 1e3:.1f} ms")
    print(f"  scan of one folder of {known} entries after a change: {flat_cost * 1e3:.1f} ms")


def make_big_file(path: Path, size: int) -> int:
    """One file of `size` bytes (a random 64 MiB block repeated): what one long acquisition writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(64 * 1024 * 1024)
    with path.open("wb") as out:
        for offset in range(0, size, len(block)):
            out.write(block[: size - offset])
    return size


CASES = ("big", "large", "small", "latency", "poll")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the data, for a smoke run")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the data (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--big-mb", type=int, default=1500, help="size of the big file (MB)")
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated cases among {', '.join(CASES)}")
    args = parser.parse_args()
    cases = set(args.only.split(","))
    if not cases <= set(CASES):
        parser.error(f"unknown case(s): {', '.join(sorted(cases - set(CASES)))}")
    logging.basicConfig(level=logging.WARNING)
    scale = 10 if args.quick else 1
    big_size = args.big_mb * 1_000_000 // scale
    large_files, large_size = 500 // scale, 2_000_000
    small_files, small_size = 20_000 // scale, 8_000
    known = 100_000 // scale
    settle_time = 2.0
    verdicts = []

    with tempfile.TemporaryDirectory(prefix="transfer-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        state = base / "state"
        state.mkdir()
        write_storage_marker(base, "bench")  # the destinations' storage, as Create marks it
        print(f"transfer benchmark in {base} (cpus: {os.cpu_count()}, workers: {args.workers})")
        if not shutil.which("rsync"):
            print("rsync not found: the reference is cp -a")

        if "big" in cases:
            make_big_file(base / "big" / "scan.h5", big_size)
            readings: list = []
            ratio = compare("one big file", base / "big", base / "out", state, big_size, 1, args.workers, readings)
            show_readings(readings, big_size)
            shutil.rmtree(base / "big")
            verdicts.append(f"big {ratio:.2f}x {'ok' if ratio >= 0.9 else 'MISSED'}")
        if "large" in cases:
            large_bytes = make_files(base / "large", large_files, large_size, folders=5)
            ratio = compare("large files", base / "large", base / "out", state, large_bytes, large_files, args.workers)
            shutil.rmtree(base / "large")
            verdicts.append(f"large {ratio:.2f}x {'ok' if ratio >= 0.9 else 'MISSED'}")
        if "small" in cases:
            small_bytes = make_files(base / "small", small_files, small_size, folders=20)
            ratio = compare("small files", base / "small", base / "out", state, small_bytes, small_files, args.workers)
            shutil.rmtree(base / "small")
            verdicts.append(f"small {ratio:.2f}x {'ok' if ratio >= 0.5 else 'MISSED'}")
        if "latency" in cases:
            latencies = measure_latency(base, samples=3 if args.quick else 6, settle_time=settle_time)
            after_settle = [latency - settle_time for latency in latencies]
            print(f"\narrival latency, last write -> file at destination (settle_time {settle_time} s):")
            print("  total:        " + ", ".join(f"{latency:.2f}" for latency in latencies) + " s")
            print("  after settle: " + ", ".join(f"{latency:.2f}" for latency in after_settle) + " s")
            print(f"  max after settle: {max(after_settle):.2f} s")
            verdicts.append(f"arrival {max(after_settle):.2f} s {'ok' if max(after_settle) < 3 else 'MISSED'}")
        if "poll" in cases:
            measure_poll_cost(base, known)

        print("\ntargets: big and large >= 0.9x, small >= 0.5x, arrival < 3 s after the settle time")
        print("  " + ", ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
