"""Many Channel Access clients putting commands at once: are their name searches answered in time?

    python benchmarks/many_clients.py [--clients 120] [--seconds 20] [--timeout 2] [--profile FILE]

Starts the installed `dmagic-ioc` on the demo config (loopback only, free
ports), then forks `--clients` processes that each put `Refresh` with
completion in a loop through caproto's sync client, as `caproto-put -c`
does: a UDP name search, a TCP circuit, the put. Most puts are refused
(another command runs): that is the load of a beamline where every console
and script pokes the IOC. Meanwhile a probe searches for a PV every 50 ms.

Reports: puts answered (done, refused), puts whose name search went
unanswered within the put timeout, other failures; put latency; the probe's
search answer times; the datagrams the kernel dropped on the IOC's search
socket (`drops` in /proc/net/udp) and the most bytes that waited there; the
IOC's CPU use and log volume. `--profile FILE` runs the IOC under cProfile
(slower: searches then queue longer).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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


def free_port() -> int:
    """A port free for TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def loopback_env(port: int, beacon_port: int, pva_port: int = 0) -> dict[str, str]:
    """Every EPICS address variable on 127.0.0.1; beacons and repeater registrations to `beacon_port`; with
    `pva_port`, PV Access's too (its TCP and UDP search port)."""
    env = {
        "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}",
        "EPICS_CA_SERVER_PORT": str(port), "EPICS_CAS_SERVER_PORT": str(port),
        "EPICS_CA_REPEATER_PORT": str(beacon_port), "EPICS_CAS_BEACON_PORT": str(beacon_port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    }  # fmt: skip
    if pva_port:
        env.update({
            "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{pva_port}",
            "EPICS_PVA_BROADCAST_PORT": str(pva_port), "EPICS_PVA_SERVER_PORT": str(pva_port),
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_SERVER_PORT": str(pva_port),
            "EPICS_PVAS_BROADCAST_PORT": str(pva_port), "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_PVAS_BEACON_ADDR_LIST": f"127.0.0.1:{beacon_port}",
        })  # fmt: skip
    return env


def udp_socket_stats(port: int) -> tuple[int, int] | None:
    """(bytes waiting, datagrams dropped) of the UDP socket bound to 127.0.0.1:`port`."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted:
            return int(fields[4].split(":")[1], 16), int(fields[-1])
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def search_probe(name: str, port: int, stop: threading.Event, delays: list) -> None:
    """Search for `name` every 50 ms; record each answer's delay (None: no answer within 5 s)."""
    import caproto as ca

    broadcaster = ca.Broadcaster(our_role=ca.CLIENT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        cid = 0
        while not stop.is_set():
            cid += 1
            request = broadcaster.send(ca.VersionRequest(0, 13), ca.SearchRequest(name, cid, 13))
            sent = time.monotonic()
            sock.sendto(request, ("127.0.0.1", port))
            answered = None
            while answered is None and time.monotonic() - sent < 5:
                sock.settimeout(max(0.001, 5 - (time.monotonic() - sent)))
                try:
                    data, address = sock.recvfrom(65536)
                except TimeoutError:
                    break
                for command in broadcaster.recv(data, address):
                    if isinstance(command, ca.SearchResponse) and command.cid == cid:
                        answered = time.monotonic() - sent
            delays.append(answered)
            stop.wait(0.05)


def worker(pv: str, timeout: float, rate: float, deadline: float, results) -> None:
    import random

    from caproto import CaprotoTimeoutError, ErrorResponseReceived
    from caproto.sync.client import write

    outcomes = []
    next_put = time.monotonic() + (random.random() / rate if rate else 0)
    while time.monotonic() < deadline:
        if rate:
            time.sleep(max(0.0, next_put - time.monotonic()))
            next_put += 1 / rate
        started = time.monotonic()
        try:
            reply = write(pv, [1], notify=True, timeout=timeout, repeater=False)
            kind = "done" if reply.status.success else "refused"
        except ErrorResponseReceived:
            kind = "refused"
        except CaprotoTimeoutError as error:
            kind = "search timeout" if "search" in str(error) else "put timeout"
        except Exception as error:  # a refused connection, a reset: count it, keep going
            kind = type(error).__name__
        outcomes.append((kind, time.monotonic() - started))
    results.put(outcomes)


def percentiles(values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return f"median {statistics.median(values) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, max {values[-1] * 1e3:.0f} ms"


def wait_for_ioc(read, prefix: str, ioc: subprocess.Popen, log_path: Path) -> None:
    """Until the IOC answers a read of its Heartbeat (30 s at most, SystemExit with its log then)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            read(prefix + "Heartbeat", timeout=0.5, repeater=False)
            return
        except Exception:
            if time.monotonic() > deadline or ioc.poll() is not None:
                raise SystemExit(f"the IOC did not start:\n{log_path.read_text()}") from None


def most_bytes_waiting(port: int, end: float) -> int:
    """The most bytes seen waiting on the IOC's search socket, sampled every 10 ms until `end`."""
    most_waiting = 0
    while time.monotonic() < end:
        stats = udp_socket_stats(port)
        if stats:
            most_waiting = max(most_waiting, stats[0])
        time.sleep(0.01)
    return most_waiting


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="put timeout (caproto's default: 2 s)")
    parser.add_argument("--rate", type=float, default=0.0, help="puts a second per client (0: one after the other)")
    parser.add_argument("--pv", default="Refresh", help="the command PV to put (after the prefix)")
    parser.add_argument("--profile", type=Path, help="run the IOC under cProfile, stats to this file")
    args = parser.parse_args()

    port = free_port()
    # Beacons and the clients' repeater registrations land here, read and dropped.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    threading.Thread(target=lambda: [sink.recv(65536) for _ in iter(int, 1)], daemon=True).start()
    os.environ.update(loopback_env(port, sink.getsockname()[1], free_port()))
    from caproto.sync.client import read  # after the environment is set
    from dmagic_ioc.ioc.demo import write_demo

    folder = Path(tempfile.mkdtemp(prefix="dmagic-many-clients-"))
    config_path = write_demo(folder, date.today())
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["scheduling"]["refresh_period"] = 0
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    prefix = f"bench{os.getpid()}:"
    command = [str(Path(sys.executable).with_name("dmagic-ioc")), "--config", str(config_path), "--prefix", prefix]
    if args.profile:
        command = [sys.executable, "-m", "cProfile", "-o", str(args.profile), *command]
    log_path = folder / "ioc.log"
    with open(log_path, "wb") as log:
        ioc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_ioc(read, prefix, ioc, log_path)
        log_before, cpu_before, before = log_path.stat().st_size, cpu_seconds(ioc.pid), udp_socket_stats(port)
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        started = time.monotonic()
        end = started + args.seconds
        workers = [context.Process(target=worker, args=(prefix + args.pv, args.timeout, args.rate, end, results))
                   for _ in range(args.clients)]  # fmt: skip
        for process in workers:
            process.start()
        stop, probe_delays = threading.Event(), []
        probe = threading.Thread(target=search_probe, args=(prefix + "Heartbeat", port, stop, probe_delays))
        probe.start()
        most_waiting = most_bytes_waiting(port, end)
        stop.set()
        probe.join()
        outcomes = [outcome for _ in workers for outcome in results.get(timeout=args.timeout * 10 + 30)]
        for process in workers:
            process.join()
        cpu = (cpu_seconds(ioc.pid) - cpu_before) / (time.monotonic() - started)
        after = udp_socket_stats(port)
        alive = ioc.poll() is None
    finally:
        ioc.send_signal(signal.SIGINT)
        try:
            ioc.wait(20)
        except subprocess.TimeoutExpired:
            ioc.kill()

    counts: dict[str, int] = {}
    for kind, _ in outcomes:
        counts[kind] = counts.get(kind, 0) + 1
    answered = [seconds for kind, seconds in outcomes if kind in ("done", "refused")]
    log_text = log_path.read_text(encoding="utf-8", errors="replace")[log_before:]
    pace = f"{args.rate:g} puts/s each" if args.rate else "one put after the other"
    print(f"{args.clients} clients, {pace}, for {args.seconds:g} s; put timeout {args.timeout:g} s, PV {args.pv}")
    print(f"puts: {len(outcomes)}; " + ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())))
    if answered:
        print(f"answered puts: {percentiles(answered)}")
    delays = [delay for delay in probe_delays if delay is not None]
    if delays:
        print(f"probe searches: {len(probe_delays)}, unanswered within 5 s: {len(probe_delays) - len(delays)}; "
              f"answered in {percentiles(delays)}")  # fmt: skip
    if before and after:
        print(f"IOC search socket: {after[1] - before[1]} datagrams dropped by the kernel, "
              f"at most {most_waiting} bytes waiting")  # fmt: skip
    print(f"IOC: {cpu:.0%} of a core; log {len(log_text.splitlines())} lines ({len(log_text) / 1e6:.1f} MB), "
          f"{log_text.count('Traceback')} tracebacks; {'alive' if alive else 'DEAD'}")  # fmt: skip
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
