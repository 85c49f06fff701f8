"""Channel Access and PV Access side by side, on the same IOC in one run: get rate, put round trip, monitor latency.

    python benchmarks/pva_vs_ca.py [--gets 2000] [--puts 500] [--rounds 200]

Starts the installed `dmagic-ioc` on the demo config (loopback only, free ports, no automatic refresh),
which serves every PV over both protocols from one process. The clients are the C libraries of each
protocol: pyepics (libca) and p4p (pvxs), one of each in this process.

- get rate: `--gets` reads one after the other of a double (`TimeOffsetDays`) and of a long UTF-8 text
  (`Users:Names`, a char waveform over CA, a string over PVA), each a round trip to the IOC; the two
  protocols take turns by blocks of 20 calls, so that a load on the machine weighs on both alike;
- put round trip: `--puts` puts with completion of `TimeOffsetDays` (the IOC checks, writes, autosaves),
  taking turns too; p4p's put first reads the PV (its type and value), as ophyd-async's does;
- monitor latency: a monitor of `TimeOffsetDays` on each protocol; `--rounds` times a put without
  completion, over CA and over PVA in turn, and the time until each monitor has the new value.

Reports each figure for CA and PVA and their ratio (PVA / CA: above 1 for a rate, PVA is faster; below 1
for a time, PVA is faster). The numbers depend on the machine; the ratios, measured in the same run, less.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import yaml
from many_clients import free_port, loopback_env


def pva_loopback_env(port: int, beacon_port: int) -> dict[str, str]:
    """Every PVA address variable on 127.0.0.1 (TCP and UDP search on `port`); beacons to `beacon_port`."""
    return {
        "EPICS_PVA_AUTO_ADDR_LIST": "NO", "EPICS_PVA_ADDR_LIST": f"127.0.0.1:{port}",
        "EPICS_PVA_BROADCAST_PORT": str(port), "EPICS_PVA_SERVER_PORT": str(port),
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_SERVER_PORT": str(port),
        "EPICS_PVAS_BROADCAST_PORT": str(port), "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": f"127.0.0.1:{beacon_port}",
    }  # fmt: skip


def start_ioc(folder: Path, prefix: str) -> tuple[subprocess.Popen, Path]:
    """The installed dmagic-ioc on the demo config, without automatic refresh."""
    from dmagic_ioc.ioc.demo import write_demo

    config_path = write_demo(folder, date.today())
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["scheduling"]["refresh_period"] = 0
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    command = [str(Path(sys.executable).with_name("dmagic-ioc")), "--config", str(config_path), "--prefix", prefix]
    log_path = folder / "ioc.log"
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log_path


def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"no {what} in {seconds:g} s")
        time.sleep(0.001)


def taking_turns(count: int, calls: dict[str, Callable[[int], object]], block: int = 20) -> dict[str, list[float]]:
    """Seconds each of `count` calls of each protocol took, one after the other, the protocols taking turns by
    blocks of `block` calls: a load on the machine that comes and goes weighs on both alike."""
    took: dict[str, list[float]] = {protocol: [] for protocol in calls}
    for first in range(0, count, block):
        for protocol, call in calls.items():
            for i in range(first, min(first + block, count)):
                started = time.perf_counter()
                call(i)
                took[protocol].append(time.perf_counter() - started)
    return took


def show(what: str, took: dict[str, list[float]], *, per_second: bool = False) -> None:
    """One line: CA, PVA and PVA/CA, as calls a second (from the total time) or as times (median, p99)."""
    if per_second:
        ca, pva = (len(took[p]) / sum(took[p]) for p in ("CA", "PVA"))
        print(f"{what:<32} CA {ca:9.0f}   PVA {pva:9.0f}   PVA/CA {pva / ca:5.2f}")
        return
    ratio = statistics.median(took["PVA"]) / statistics.median(took["CA"])
    print(f"{what:<32} CA {ms(took['CA'])}   PVA {ms(took['PVA'])}   PVA/CA {ratio:5.2f}")


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"median {statistics.median(ordered) * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"


class Watched:
    """The values a monitor has delivered, with when each arrived."""

    def __init__(self):
        self.arrived: dict[float, float] = {}
        self.lock = threading.Lock()

    def saw(self, value: float) -> None:
        with self.lock:
            self.arrived.setdefault(round(float(value), 6), time.perf_counter())

    def when(self, value: float) -> float | None:
        with self.lock:
            return self.arrived.get(round(value, 6))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--puts", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # beacons land here, read and dropped
    sink.bind(("127.0.0.1", 0))
    threading.Thread(target=lambda: [sink.recv(65536) for _ in iter(int, 1)], daemon=True).start()
    beacon_port = sink.getsockname()[1]
    os.environ.update({**loopback_env(free_port(), beacon_port), **pva_loopback_env(free_port(), beacon_port)})
    import epics  # after the environment is set
    from p4p.client.thread import Context

    prefix = f"bench{os.getpid()}:"
    ioc, log_path = start_ioc(Path(tempfile.mkdtemp(prefix="dmagic-pva-vs-ca-")), prefix)
    pva = Context("pva")
    try:
        offset = epics.PV(prefix + "TimeOffsetDays", auto_monitor=False)
        names = epics.PV(prefix + "Users:Names", auto_monitor=False)
        if not (offset.wait_for_connection(30) and names.wait_for_connection(5)):
            raise SystemExit(f"the IOC did not start:\n{log_path.read_text()}")
        pva.get(prefix + "TimeOffsetDays", timeout=10)  # searched and connected before timing
        print(f"dmagic-ioc on loopback; pyepics {epics.__version__} (libca) against p4p (pvxs)\n")

        show("get rate, double (reads/s)", taking_turns(args.gets, {
            "CA": lambda i: offset.get(use_monitor=False),
            "PVA": lambda i: pva.get(prefix + "TimeOffsetDays"),
        }), per_second=True)  # fmt: skip
        show("get rate, text (reads/s)", taking_turns(args.gets, {
            "CA": lambda i: names.get(use_monitor=False, as_string=True),
            "PVA": lambda i: pva.get(prefix + "Users:Names"),
        }), per_second=True)  # fmt: skip
        show("put round trip, with completion", taking_turns(args.puts, {
            "CA": lambda i: offset.put(1.0 + i % 7, wait=True, timeout=10),
            "PVA": lambda i: pva.put(prefix + "TimeOffsetDays", 2.0 + i % 7, timeout=10),
        }))  # fmt: skip

        on_ca, on_pva = Watched(), Watched()
        monitored = epics.PV(prefix + "TimeOffsetDays", callback=lambda value=None, **_: on_ca.saw(value))
        monitored.wait_for_connection(10)
        subscription = pva.monitor(prefix + "TimeOffsetDays", on_pva.saw)
        latency: dict[str, list[float]] = {"CA": [], "PVA": []}
        for i in range(args.rounds):
            value = 100.0 + i
            started = time.perf_counter()
            if i % 2:
                pva.put(prefix + "TimeOffsetDays", value, wait=False)
            else:
                offset.put(value, wait=False)
            until(lambda: on_ca.when(value) and on_pva.when(value), 10, f"update {value} on both monitors")  # noqa: B023
            latency["CA"].append(on_ca.when(value) - started)
            latency["PVA"].append(on_pva.when(value) - started)
        subscription.close()
        monitored.disconnect()
        show("monitor latency, put to update", latency)
    finally:
        pva.close()
        ioc.terminate()
        ioc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
