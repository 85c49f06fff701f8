"""Tag into tomoScan's user-info records served by EPICS base: with ESAFDOINumber, a stock tomoScan
(without it), and a prefix no IOC serves.

    python benchmarks/tag_bench.py [--rounds 10]

Starts two EPICS base IOCs (pythonSoftIOC, tests/e2e/softioc_target.py) on loopback ports of their own,
loading tests/data/tomoscan_user_info.db, one of them with tests/data/tomoscan_esaf_doi.db too. Each
round runs the Tag handler on the real CaTag, as the IOC's Tag command does (a PV the target lacks is
left out, and the others are written). Reports the median and the best time of each target, and its
ratio to the target that has every PV: what an absent PV costs. The target is a stock tomoScan under
0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package: its fakes, target IOC, databases

from dmagic_ioc.adapters.tag import CaTag
from dmagic_ioc.ioc.app.commands import schedule
from dmagic_ioc.ioc.app.handling import Step
from dmagic_ioc.ioc.app.messages import Refresh, Tag
from dmagic_ioc.ioc.app.services import Services
from dmagic_ioc.ioc.app.state import BeamlineState, Outcome
from dmagic_ioc.ioc.domain.errors import MissingPVs
from many_clients import free_port, loopback_env

from tests.fakes.ports import NOW, fake_adapters, settings_in

REPO = Path(__file__).resolve().parents[1]
TARGET_SCRIPT = REPO / "tests" / "e2e" / "softioc_target.py"
DATABASES = REPO / "tests" / "data"
STARTUP_TIMEOUT = 30.0
GOAL = 0.3  # seconds for a stock tomoScan


@contextmanager
def epics_base_target(prefix: str, port: int, env: dict[str, str], with_doi: bool, log: Path) -> Iterator[None]:
    """tomoScan's user-info records under `prefix` in an EPICS base IOC serving on `port`, until the block ends."""
    ioc_prefix, tomoscan = prefix.split(":", 1)
    command = [sys.executable, str(TARGET_SCRIPT), "--macros", f"P={ioc_prefix}:,R={tomoscan}",
               "--db", str(DATABASES / "tomoscan_user_info.db")]  # fmt: skip
    if with_doi:
        command += ["--db", str(DATABASES / "tomoscan_esaf_doi.db")]
    server_env = {**os.environ, **env, "EPICS_CA_SERVER_PORT": str(port), "EPICS_CAS_SERVER_PORT": str(port)}
    with log.open("ab") as output:
        process = subprocess.Popen(command, env=server_env, stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_ready(prefix + "UserName", process)
        yield
    finally:
        process.terminate()
        process.wait(10)


def wait_ready(pv_name: str, process: subprocess.Popen) -> None:
    """Until `pv_name` reads (a fresh search each time), or fail if the IOC exits or takes too long."""
    from caproto.threading.client import Context, SharedBroadcaster

    started = time.monotonic()
    context = Context(SharedBroadcaster())
    try:
        (pv,) = context.get_pvs(pv_name, timeout=0.25)
        while time.monotonic() - started < STARTUP_TIMEOUT:
            if process.poll() is not None:
                raise SystemExit(f"the target IOC exited with {process.returncode}")
            context.broadcaster.search_now()
            try:
                pv.read(timeout=0.25)
                return
            except TimeoutError:
                continue
        raise SystemExit(f"the target IOC did not serve {pv_name} within {STARTUP_TIMEOUT:g} s")
    finally:
        context.disconnect()


def timed(tag: Callable[[], Outcome], rounds: int) -> tuple[list[float], str]:
    """`rounds` timings of `tag()`, and what its last run said."""
    seconds, said = [], ""
    for _ in range(rounds):
        started = time.perf_counter()
        try:
            said = tag().message
        except MissingPVs as error:
            said = f"refused: {error}"
        seconds.append(time.perf_counter() - started)
    return seconds, said


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    ports = free_port(), free_port()
    env = loopback_env(ports[0], free_port())
    env["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{port}" for port in ports)
    os.environ.update(env)  # before any Channel Access client reads it
    run = uuid.uuid4().hex[:6]
    targets = {
        "with ESAFDOINumber": f"full{run}:TomoScan:",
        "stock tomoScan": f"stock{run}:TomoScan:",
        "nothing there": f"nowhere{run}:TomoScan:",
    }
    with tempfile.TemporaryDirectory(prefix="tag-bench-") as folder, ExitStack() as stack:
        tmp = Path(folder)
        for (name, prefix), port in zip(list(targets.items())[:2], ports, strict=True):
            stack.enter_context(epics_base_target(prefix, port, env, name == "with ESAFDOINumber", tmp / f"{port}.log"))
        fakes = fake_adapters(tmp)
        fakes.tag = CaTag()
        step = Step(Services(settings_in(tmp), fakes.ports(), clock=lambda: NOW), BeamlineState())
        schedule.refresh(step, Refresh(0.0))  # the proposal shown, from the fake schedule
        results = {}
        for name, prefix in targets.items():
            rounds = max(1, args.rounds // 5) if name == "nothing there" else args.rounds
            results[name], said = timed(lambda prefix=prefix: schedule.tag(step, Tag(prefix)), rounds)
            print(f"{name:>18}: {said}")
    reference = statistics.median(results["with ESAFDOINumber"])
    print(f"\n{'target':>18}  {'median':>8}  {'best':>8}  {'ratio':>6}  (rounds)")
    for name, seconds in results.items():
        median = statistics.median(seconds)
        print(f"{name:>18}  {median:7.3f}s  {min(seconds):7.3f}s  {median / reference:5.1f}x  ({len(seconds)})")
    stock = statistics.median(results["stock tomoScan"])
    print(f"\nstock tomoScan: {stock:.3f} s (goal < {GOAL:g} s)")
    return 0 if stock < GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
