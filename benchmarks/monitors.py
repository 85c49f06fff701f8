"""A thousand clients monitoring Status and Heartbeat: does every one get every update, and does the IOC stay small?

    python benchmarks/monitors.py [--clients 1000] [--seconds 30] [--processes 4] [--commands 5]

Starts the installed `dmagic-ioc` on the demo config (loopback only, free ports, room for the clients in
ioc.access.max_circuits_per_host), then `--processes` processes open `--clients` circuits between them,
each after its own name search (timed), each monitoring Status and Heartbeat. For `--seconds` the main
process puts a command with completion now and then (`--commands` of them: Refresh and Tag in turn) and
a probe searches for Heartbeat every 50 ms. Then everything stops by itself.

Reports, per client: Heartbeat updates received against the seconds it watched, and the gaps in its
values (Heartbeat counts seconds: a jump of more than one is a missed update); Status updates against
those the commands made (two each: "... running" and the outcome, plus the first). The search answer
times (the clients' and the probe's); the IOC's RSS at start, at its peak and at the end; its CPU.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
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
from itertools import pairwise
from pathlib import Path

from commands import demo_config
from many_clients import cpu_seconds, free_port, loopback_env, percentiles
from rawca import RawCircuit, search

MONITORED = ("Status", "Heartbeat")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def clients(count: int, port: int, prefix: str, connected, stop, results) -> None:
    """`count` circuits, each after its own search, monitoring MONITORED until `stop`; then per circuit
    (seconds watched, Heartbeat values, Status updates) and the search times into `results`."""
    names = [prefix + name for name in MONITORED]
    selector = selectors.DefaultSelector()
    circuits, searches, failures = [], [], []
    for _ in range(count):
        try:
            address, seconds = search(names[1], port, timeout=5.0)
            searches.append(seconds)
            circuit = RawCircuit(address, names)
            circuit.subscribe(*names)
        except (OSError, TimeoutError, ConnectionError) as error:
            failures.append(type(error).__name__)
            continue
        circuit.sock.setblocking(False)
        selector.register(circuit.sock, selectors.EVENT_READ, circuit)
        circuits.append((circuit, time.monotonic()))
    connected.put(len(circuits))
    closed = 0
    while not stop.is_set():
        for key, _ in selector.select(0.2):
            try:
                key.data.receive()
            except BlockingIOError:
                pass
            except OSError:
                selector.unregister(key.fileobj)
                closed += 1
    ended = time.monotonic()
    watched = [(ended - began, circuit.values[names[1]], circuit.updates[names[0]]) for circuit, began in circuits]
    for circuit, _ in circuits:
        circuit.close()
    results.put((watched, searches, failures, closed))


def gaps(values: list[int]) -> int:
    """Heartbeat values missed between those received (it counts up by one a second)."""
    return sum(later - earlier - 1 for earlier, later in pairwise(values) if later - earlier > 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--commands", type=int, default=5, help="commands put during the run (Refresh, Tag, ...)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the clients' sockets; the IOC raises its own
    folder = Path(tempfile.mkdtemp(prefix="dmagic-monitors-"))
    port = free_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes the beacons: no IOC says "refused"
    sink.bind(("127.0.0.1", 0))
    threading.Thread(target=lambda: [sink.recv(65536) for _ in iter(int, 1)], daemon=True).start()
    prefix = f"mon{os.getpid()}:"
    env = {**os.environ, **loopback_env(port, sink.getsockname()[1], free_port())}
    command = [str(Path(sys.executable).with_name("dmagic-ioc")), "--config",
               str(demo_config(folder, args.clients + 8)), "--prefix", prefix]  # fmt: skip
    log_path = folder / "ioc.log"
    with open(log_path, "wb") as log:
        ioc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    context = multiprocessing.get_context("fork")
    connected, stop, results = context.Queue(), context.Event(), context.Queue()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                address = search(prefix + "Heartbeat", port, timeout=0.5)[0]
                break
            except (TimeoutError, OSError):
                if time.monotonic() > deadline or ioc.poll() is not None:
                    raise SystemExit(f"the IOC did not start:\n{log_path.read_text()}") from None
        rss = [rss_mb(ioc.pid)]
        cpu_before, began = cpu_seconds(ioc.pid), time.monotonic()
        shares = [args.clients // args.processes + (i < args.clients % args.processes) for i in range(args.processes)]
        workers = [context.Process(target=clients, args=(share, port, prefix, connected, stop, results))
                   for share in shares]  # fmt: skip
        for worker in workers:
            worker.start()
        opened = sum(connected.get(timeout=300) for _ in workers)
        print(f"{opened} of {args.clients} circuits monitoring {', '.join(MONITORED)} after "
              f"{time.monotonic() - began:.1f} s; RSS {rss[0]:.0f} MB before, "
              f"{rss_mb(ioc.pid):.0f} MB now")  # fmt: skip
        commander = RawCircuit(address, [prefix + "Refresh", prefix + "Tag"])
        probe: list[float | None] = []
        watching = time.monotonic()
        next_command, commands_put, puts = watching + 1.0, 0, []
        while time.monotonic() - watching < args.seconds:
            rss.append(rss_mb(ioc.pid))
            try:
                probe.append(search(prefix + "Heartbeat", port, timeout=5.0)[1])
            except TimeoutError:
                probe.append(None)
            if commands_put < args.commands and time.monotonic() >= next_command:
                name = ("Refresh", "Tag")[commands_put % 2]
                started = time.perf_counter()
                commander.put(prefix + name, 1)
                puts.append((name, time.perf_counter() - started))
                commands_put += 1
                next_command += max(1.0, (args.seconds - 2) / max(1, args.commands))
            time.sleep(0.05)
        stop.set()
        gathered = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join()
        cpu = (cpu_seconds(ioc.pid) - cpu_before) / (time.monotonic() - began)
        rss.append(rss_mb(ioc.pid))
        alive = ioc.poll() is None
    finally:
        ioc.send_signal(signal.SIGINT)
        try:
            ioc.wait(30)
        except subprocess.TimeoutExpired:
            ioc.kill()
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    shutil.rmtree(folder, ignore_errors=True)

    watched = [entry for part in gathered for entry in part[0]]
    searches = [seconds for part in gathered for seconds in part[1]]
    failures = [failure for part in gathered for failure in part[2]]
    closed = sum(part[3] for part in gathered)
    expected_status = 1 + 2 * commands_put
    beats = [len(values) for _, values, _ in watched]
    missed = [gaps(values) for _, values, _ in watched]
    status = [count for _, _, count in watched]
    short = [max(0, round(seconds) - count) for (seconds, _, _), count in zip(watched, beats, strict=True)]
    print(f"commands put: {', '.join(f'{name} {seconds * 1e3:.0f} ms' for name, seconds in puts)}")
    print(f"Heartbeat per client: {min(beats)}..{max(beats)} updates (median {statistics.median(beats):.0f}) over "
          f"{statistics.median(s for s, _, _ in watched):.0f} s; missed ticks (gaps): {sum(missed)} in all, "
          f"{sum(1 for m in missed if m)} clients with any; clients short of one a second: "
          f"{sum(1 for s in short if s > 1)}")  # fmt: skip
    print(f"Status per client: {min(status)}..{max(status)} updates, expected {expected_status}; "
          f"clients with fewer: {sum(1 for count in status if count < expected_status)}")  # fmt: skip
    print(f"client searches: {len(searches)} answered in {percentiles(searches)}; failed: {len(failures)} "
          f"{sorted(set(failures))}; circuits closed by the IOC: {closed}")  # fmt: skip
    answered = [delay for delay in probe if delay is not None]
    if answered:
        print(f"probe searches: {len(probe)}, unanswered within 5 s: {len(probe) - len(answered)}; "
              f"answered in {percentiles(answered)}")  # fmt: skip
    print(f"IOC RSS: {rss[0]:.0f} MB at start, {max(rss):.0f} MB at peak, {rss[-1]:.0f} MB at the end; "
          f"{cpu:.0%} of a core; log {len(log_text.splitlines())} lines, {log_text.count('Traceback')} tracebacks; "
          f"{'alive' if alive else 'DEAD'}")  # fmt: skip
    return 0 if alive and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
