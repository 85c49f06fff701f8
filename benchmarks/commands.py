"""A command's round trip against a bare caproto putter: what the IOC adds to a put with completion.

    python benchmarks/commands.py [--rounds 400] [--monitors 100] [--gets 10] [--get-rate 20] [--no-pva]
                                  [--profile FILE]

Starts the installed `dmagic-ioc` on the demo config and, on another port, a bare caproto IOC: a
PVGroup with one command-like enum PV whose putter does nothing, served by caproto's own asyncio
server. Both on loopback only (every EPICS address variable on 127.0.0.1, free ports). Then puts 1
with completion on one circuit to each, one IOC after the other in each round (the order alternating,
`--gap` ms after each put):

- dmagic-ioc's `Tag` with an empty `TagPrefix`: the handler refuses it before any I/O ("TagPrefix is
  empty"), so the round trip is the IOC's own cost: the supervisor's queue and worker, the handler's
  thread, LastCommand, Status, LastError, Busy and the command PV, the audit line, the log line.
- the bare IOC's `Command`.

Reports each one's median and p90 and their ratio; then the same with a new circuit for each put, after
its name search (as `caproto-put -c` does). Then both again while `--monitors` circuits monitor Status,
Heartbeat and Busy (each counts the updates it gets: every command's) and `--gets` circuits read Status
in a loop (`--get-rate` reads a second each, 0: back to back), all against dmagic-ioc. `--no-pva` serves
Channel Access alone; `--profile FILE` runs dmagic-ioc under cProfile (its stats to FILE; the ratios
then mean little). docs/benchmarks.md has figures.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import yaml
from many_clients import free_port, loopback_env
from rawca import RawCircuit, search

BARE_PV = "Command"
COMMAND = "Tag"
MONITORED = ("Status", "Heartbeat", "Busy")


def serve_bare(prefix: str) -> None:
    """The reference: caproto's asyncio server with one enum PV whose putter does nothing."""
    from caproto import ChannelType
    from caproto.server import PVGroup, pvproperty, run

    class Bare(PVGroup):
        command = pvproperty(name=BARE_PV, value="Done", enum_strings=("Done", "Busy"), dtype=ChannelType.ENUM)

        @command.putter
        async def command(self, instance, value):
            return None  # the value as written: nothing else happens

    run(Bare(prefix).pvdb, interfaces=["127.0.0.1"], log_pv_names=False)


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def connect(name: str, port: int, process: subprocess.Popen, log_path: Path) -> tuple[str, int]:
    """The TCP address serving `name` once it answers a search (60 s at most; SystemExit with the log then)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return search(name, port, timeout=0.5)[0]
        except (TimeoutError, OSError):
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{name} did not answer:\n{log_path.read_text()}") from None


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def load(address: tuple[str, int], prefix: str, monitors: int, gets: int, get_rate: float,
         ready, done, results) -> None:  # fmt: skip
    """`monitors` circuits monitoring MONITORED (one thread reads them all) and `gets` threads reading
    Status in a loop, until `done`; then (updates per monitor circuit, reads done) into `results`."""
    circuits = []
    selector = selectors.DefaultSelector()
    for _ in range(monitors):
        circuit = RawCircuit(address, [prefix + name for name in MONITORED])
        circuit.subscribe(*circuit.sids)
        circuit.sock.setblocking(False)
        selector.register(circuit.sock, selectors.EVENT_READ, circuit)
        circuits.append(circuit)
    reads = [0] * gets

    def read_loop(index: int) -> None:
        circuit = RawCircuit(address, [prefix + "Status"])
        next_read = time.monotonic()
        while not done.is_set():
            circuit.read(prefix + "Status")
            reads[index] += 1
            if get_rate:
                next_read += 1 / get_rate
                time.sleep(max(0.0, next_read - time.monotonic()))
        circuit.close()

    readers = [threading.Thread(target=read_loop, args=(index,)) for index in range(gets)]
    for reader in readers:
        reader.start()
    first = time.monotonic()
    while any(len(circuit.updates) < len(MONITORED) for circuit in circuits):  # each one's first updates
        pump(selector, 0.1)
        if time.monotonic() - first > 30:
            raise SystemExit("the monitors' first updates did not come")
    ready.set()
    while not done.is_set():
        pump(selector, 0.1)
    for reader in readers:
        reader.join()
    results.put(([dict(circuit.updates) for circuit in circuits], sum(reads)))


def pump(selector: selectors.BaseSelector, timeout: float) -> None:
    for key, _ in selector.select(timeout):
        with contextlib.suppress(BlockingIOError):
            key.data.receive()


class Target:
    """Where the puts of one side go: a circuit kept open, or (`port`) a new one after a search for each put."""

    def __init__(self, circuit: RawCircuit, name: str, port: int = 0):
        self.circuit, self.name, self.port = circuit, name, port

    def put(self) -> bool:
        if not self.port:
            return self.circuit.put(self.name, 1)
        circuit = RawCircuit(search(self.name, self.port)[0], [self.name])  # as caproto-put -c does
        try:
            return circuit.put(self.name, 1)
        finally:
            circuit.close()


def rounds(ioc: Target, bare: Target, count: int, gap: float) -> tuple[list[float], list[float], int]:
    """`count` rounds of one put to each (the order alternating); their seconds, and the IOC's puts that succeeded."""
    timed: dict[str, list[float]] = {"ioc": [], "bare": []}
    succeeded = 0
    for index in range(count):
        order = [("ioc", ioc), ("bare", bare)]
        for side, target in order if index % 2 else order[::-1]:
            began = time.perf_counter()
            ok = target.put()
            timed[side].append(time.perf_counter() - began)
            succeeded += ok and side == "ioc"
            time.sleep(gap)
    return timed["ioc"], timed["bare"], succeeded


def summary(values: list[float]) -> tuple[float, float]:
    """Median and p90, in ms."""
    ordered = sorted(values)
    return statistics.median(ordered) * 1e3, ordered[int(0.9 * (len(ordered) - 1))] * 1e3


def report(condition: str, ioc: list[float], bare: list[float]) -> None:
    (ioc_median, ioc_p90), (bare_median, bare_p90) = summary(ioc), summary(bare)
    print(f"{condition:<28} {COMMAND} {ioc_median:6.2f} / {ioc_p90:6.2f} ms   bare {bare_median:6.2f} / "
          f"{bare_p90:6.2f} ms   ratio {ioc_median / bare_median:4.2f}x median, "
          f"{ioc_p90 / bare_p90:4.2f}x p90")  # fmt: skip


def demo_config(folder: Path, circuits: int, pva: bool = True) -> Path:
    """The demo config: no automatic refresh, an empty TagPrefix, room for `circuits` from this host."""
    from dmagic_ioc.ioc.demo import write_demo

    config_path = write_demo(folder, date.today())
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["scheduling"]["refresh_period"] = 0
    config["tag"]["prefix"] = ""
    config["ioc"].setdefault("access", {})["max_circuits_per_host"] = circuits + 16
    config["pva"] = {"enabled": pva}
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return config_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--gap", type=float, default=5.0, help="ms to wait after each put")
    parser.add_argument("--monitors", type=int, default=100)
    parser.add_argument("--gets", type=int, default=10)
    parser.add_argument("--get-rate", type=float, default=20.0, help="reads a second per get loop (0: back to back)")
    parser.add_argument("--no-pva", action="store_true", help="dmagic-ioc serves Channel Access alone")
    parser.add_argument("--profile", type=Path, help="run dmagic-ioc under cProfile, stats to this file")
    parser.add_argument("--serve-bare", metavar="PREFIX", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0

    folder = Path(tempfile.mkdtemp(prefix="dmagic-commands-"))
    port, bare_port = free_port(), free_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the beacons: no IOC says "refused"
    sink.bind(("127.0.0.1", 0))
    threading.Thread(target=lambda: [sink.recv(65536) for _ in iter(int, 1)], daemon=True).start()
    sink_port = sink.getsockname()[1]
    prefix, bare_prefix = f"bench{os.getpid()}:", f"bare{os.getpid()}:"
    env = {**os.environ, **loopback_env(port, sink_port, free_port())}
    bare_env = {**os.environ, **loopback_env(bare_port, sink_port, free_port())}
    config = demo_config(folder, args.monitors + args.gets + 1, pva=not args.no_pva)
    ioc_command = [str(Path(sys.executable).with_name("dmagic-ioc")), "--config", str(config), "--prefix", prefix]
    if args.profile:
        ioc_command = [sys.executable, "-m", "cProfile", "-o", str(args.profile), *ioc_command]
    ioc_log, bare_log = folder / "ioc.log", folder / "bare.log"
    ioc_process = start(ioc_command, env, ioc_log)
    bare_process = start([sys.executable, __file__, "--serve-bare", bare_prefix], bare_env, bare_log)
    try:
        address = connect(prefix + "Heartbeat", port, ioc_process, ioc_log)
        bare_address = connect(bare_prefix + BARE_PV, bare_port, bare_process, bare_log)
        ioc = RawCircuit(address, [prefix + COMMAND, prefix + "Status"])
        bare = RawCircuit(bare_address, [bare_prefix + BARE_PV])
        args_of = (Target(ioc, prefix + COMMAND), Target(bare, bare_prefix + BARE_PV))
        rounds(*args_of, 20, args.gap / 1e3)  # warm up both
        print(f"{args.rounds} rounds, one put with completion to each, {args.gap:g} ms after each; median / p90 "
              f"of each; dmagic-ioc {'without' if args.no_pva else 'with'} PV Access")  # fmt: skip
        quiet_ioc, quiet_bare, succeeded = rounds(*args_of, args.rounds, args.gap / 1e3)
        report("quiet", quiet_ioc, quiet_bare)
        connect_of = (Target(ioc, prefix + COMMAND, port), Target(bare, bare_prefix + BARE_PV, bare_port))
        report("quiet, a circuit per put", *rounds(*connect_of, args.rounds, args.gap / 1e3)[:2])
        status = ioc.read(prefix + "Status").split(b"\0", 1)[0].decode()
        context = multiprocessing.get_context("fork")
        ready, done, results = context.Event(), context.Event(), context.Queue()
        loader = context.Process(target=load, args=(address, prefix, args.monitors, args.gets, args.get_rate,
                                                     ready, done, results))  # fmt: skip
        loader.start()
        if not ready.wait(60):
            raise SystemExit("the load did not start")
        began = time.monotonic()
        busy_ioc, busy_bare, _ = rounds(*args_of, args.rounds, args.gap / 1e3)
        busy_connect = rounds(*connect_of, args.rounds, args.gap / 1e3)[:2]
        seconds = time.monotonic() - began
        done.set()
        updates, reads = results.get(timeout=60)
        loader.join()
        report(f"{args.monitors} monitors, {args.gets} gets", busy_ioc, busy_bare)
        report("the same, a circuit per put", *busy_connect)
        expected = 1 + 2 * 2 * args.rounds  # the first update, then "running" and the outcome of each command
        for name in ("Status", "Busy"):
            counts = [circuit.get(prefix + name, 0) for circuit in updates]
            if counts:
                print(f"  monitors of {name}: {min(counts)}..{max(counts)} updates per circuit, expected {expected}")
        pace = f"{args.get_rate:g}/s each" if args.get_rate else "back to back"
        print(f"  gets: {reads} reads of Status in {seconds:.1f} s ({pace})")
        print(f"  {COMMAND}: {succeeded} of {args.rounds} succeeded (none should: Status says {status!r})")
        alive = ioc_process.poll() is None and bare_process.poll() is None
    finally:
        stop(ioc_process)
        stop(bare_process)
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
