"""Render `opi/dmagic.ui` with PyDM against the demo IOC; save `docs/screenshot.png` and the PVs it shows.

    QT_QPA_PLATFORM=offscreen python tools/screenshot.py [--output docs/screenshot.png] [--schedule-offset 6]

Starts `dmagic-ioc` on its demo config (in a temporary folder) with a random
prefix on a free loopback port, opens the screen with macro P, waits until
every channel of the screen is connected and has a value, runs Create on the
demo's current beamtime (unless --blank), and grabs the window. With `--schedule-offset DAYS`
the schedule is then read DAYS ahead (TimeOffsetDays + Refresh): 6 reaches the
demo's next beamtime, so the picture shows the selected experiment's proposal
with the highlighted "Scheduled now" line naming another beamtime (the README
picture). The screen wears PyDM's own stylesheet, as `pydm` shows it. Beside the
picture goes `docs/screenshot-pvs.txt`, the PVs of the captured screen, one a
line: `tests/unit/test_screens.py` fails when `opi/dmagic.ui` shows a PV the
picture lacks. `tests/e2e/test_pydm_screen.py` uses the helpers below.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("dmagic_ioc.tools.screenshot")

REPO = Path(__file__).resolve().parents[1]
SCREEN = REPO / "opi" / "dmagic.ui"
OUTPUT = REPO / "docs" / "screenshot.png"
TIMEOUT = 30.0
# Set by the first automatic Refresh: the screen then shows the demo proposal, not blanks.
READY_PV = "UserInfoUpdate"
HEARTBEAT_PV = "Heartbeat"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses the same number for both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def loopback_env(port: int) -> dict[str, str]:
    """Every EPICS_CA_*/EPICS_CAS_* address variable pinned to 127.0.0.1 and `port`."""
    return {
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}",
        "EPICS_CA_NAME_SERVERS": "",
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_SERVER_PORT": str(port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_IGNORE_ADDR_LIST": "",
        "EPICS_CA_MAX_ARRAY_BYTES": "1000000",
    }


def dmagic_ioc_command() -> str:
    """The installed console script: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).with_name("dmagic-ioc")
    return str(beside) if beside.exists() else (shutil.which("dmagic-ioc") or "dmagic-ioc")


@contextmanager
def demo_ioc(prefix: str, port: int, folder: Path) -> Iterator[subprocess.Popen]:
    """The demo IOC under `prefix` on `port`, its demo files and log in `folder`; stopped with SIGINT, then killed."""
    env = {**os.environ, **loopback_env(port), "DMAGIC_DEMO_DIR": str(folder / "demo")}
    with open(folder / "ioc.log", "ab") as ioc_log:
        process = subprocess.Popen(
            [dmagic_ioc_command(), "--prefix", prefix], stdout=ioc_log, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, app=None, interval: float = 0.05) -> None:
    """Poll `condition` (running Qt events in between when `app` is given) until true; raise after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        if app is not None:
            app.processEvents()
        time.sleep(interval)


def qt_app():
    """The process's QApplication (offscreen unless a platform is set)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qtpy.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def pydm_style(app) -> None:
    """PyDM's stylesheet (alarm colours and all) on `app`, as the `pydm` launcher puts it above every screen."""
    from pydm.utilities.stylesheet import apply_stylesheet

    apply_stylesheet(widget=app)


def pvs_file(output: Path) -> Path:
    """Where the PVs of the picture `output` are listed: `docs/screenshot.png` -> `docs/screenshot-pvs.txt`."""
    return output.with_name(f"{output.stem}-pvs.txt")


def write_pvs(output: Path, screen: Path, addresses: list[str], prefix: str) -> None:
    """Beside the picture `output`: the PV suffixes of `addresses` (the captured screen's channels), one a line."""
    suffixes = sorted({address.removeprefix(f"ca://{prefix}") for address in addresses})
    header = f"# PVs that {screen.name} shows in {output.name}: written by tools/screenshot.py\n"
    pvs_file(output).write_text(header + "".join(f"{suffix}\n" for suffix in suffixes), encoding="utf-8")


def open_screen(path: Path, prefix: str):
    """Load a PyDM .ui screen with macro P = `prefix`."""
    from pydm.display import load_file

    return load_file(str(path), macros={"P": prefix}, target=None)


def screen_addresses(display) -> set[str]:
    """Every channel address a PyDM widget of `display` uses."""
    from qtpy.QtWidgets import QWidget

    addresses = set()
    for widget in display.findChildren(QWidget):
        channels = widget.channels() if callable(getattr(widget, "channels", None)) else None
        addresses.update(channel.address for channel in channels or () if channel.address)
    return addresses


class ChannelWatch:
    """Listens on the screen's channels (sharing the widgets' connections): which connected, which have a value."""

    def __init__(self, addresses: set[str]):
        from pydm.widgets.channel import PyDMChannel

        self.connected: dict[str, bool] = dict.fromkeys(addresses, False)
        self.valued: set[str] = set()
        self.values: dict[str, object] = {}
        self._channels = []
        for address in sorted(addresses):
            channel = PyDMChannel(
                address=address,
                connection_slot=lambda state, a=address: self.connected.__setitem__(a, bool(state)),
                value_slot=lambda value, a=address: self._value(a, value),
            )
            channel.connect()
            self._channels.append(channel)

    def _value(self, address: str, value) -> None:
        self.valued.add(address)
        self.values[address] = value

    def missing(self) -> list[str]:
        """Addresses not connected yet, or without a value yet."""
        return sorted(a for a, up in self.connected.items() if not up or a not in self.valued)

    def close(self) -> None:
        for channel in self._channels:
            channel.disconnect()


def text_of(value) -> str:
    """A char waveform's value as text (PyDM hands it as an array of bytes)."""
    if hasattr(value, "tobytes"):
        return value.tobytes().split(b"\0")[0].decode("utf-8", "replace")
    return str(value)


def create_experiment(prefix: str, watch: ChannelWatch, app, timeout: float) -> None:
    """Run Create on the demo proposal (in the temporary demo folder) so the screen shows a selected experiment."""
    import epics

    if not epics.caput(prefix + "Create", 1, wait=True, timeout=timeout):
        raise RuntimeError(f"{prefix}Create did not complete")
    exists = f"ca://{prefix}ExperimentExists"
    wait_until(lambda: watch.values.get(exists) == 1, timeout, f"{prefix}ExperimentExists = Yes", app=app)


def look_ahead(prefix: str, days: float, watch: ChannelWatch, app, timeout: float, selected: bool) -> None:
    """Read the schedule `days` ahead (TimeOffsetDays, then Refresh); with an experiment `selected`, wait
    until the screen shows that the schedule differs from it (Schedule:Differs = Yes)."""
    import epics

    if not epics.caput(prefix + "TimeOffsetDays", days, wait=True, timeout=timeout):
        raise RuntimeError(f"{prefix}TimeOffsetDays = {days} did not complete")
    if not epics.caput(prefix + "Refresh", 1, wait=True, timeout=timeout):
        raise RuntimeError(f"{prefix}Refresh did not complete")
    offset = f"ca://{prefix}TimeOffsetDays"
    wait_until(lambda: watch.values.get(offset) == days, timeout, f"{prefix}TimeOffsetDays = {days}", app=app)
    differs = f"ca://{prefix}Schedule:Differs"
    if selected and differs in watch.connected:
        what = f"{prefix}Schedule:Differs = Yes (is there another beamtime {days} days ahead?)"
        wait_until(lambda: watch.values.get(differs) == 1, timeout, what, app=app)


def pump(app, seconds: float) -> None:
    """Run Qt events for `seconds` (the last monitor updates and style changes reach the widgets)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)


def take_screenshot(
    output: Path, screen: Path = SCREEN, timeout: float = TIMEOUT, create: bool = True,
    schedule_offset: float | None = None,
) -> list[str]:  # fmt: skip
    """Start the demo IOC, render `screen`, save it to `output`; return the screen's channel addresses.

    With `create`, the demo experiment is created first so that its fields are filled in. With
    `schedule_offset` (days), the schedule is then read that far ahead, so that it shows another beamtime.
    """
    port = free_port()
    os.environ.update(loopback_env(port))  # before the first CA call of this process
    prefix = f"shot{uuid.uuid4().hex[:6]}:"
    app = qt_app()
    pydm_style(app)
    with tempfile.TemporaryDirectory(prefix="dmagic-screenshot-") as tmp, demo_ioc(prefix, port, Path(tmp)) as ioc:
        display = open_screen(screen, prefix)
        display.setWindowTitle(f"dmagic-ioc {prefix}")
        addresses = screen_addresses(display)
        watch = ChannelWatch(addresses)
        ready, heartbeat = f"ca://{prefix}{READY_PV}", f"ca://{prefix}{HEARTBEAT_PV}"

        def settled() -> bool:
            if ioc.poll() is not None:
                raise RuntimeError(f"dmagic-ioc exited with {ioc.returncode}: see {tmp}/ioc.log")
            refreshed = bool(text_of(watch.values.get(ready, "")))
            return not watch.missing() and refreshed and (watch.values.get(heartbeat) or 0) > 0

        try:
            wait_until(settled, timeout, f"the channels of {screen.name}", app=app)
        except TimeoutError:
            log.error("not connected: %s", ", ".join(watch.missing()))
            raise
        if create:
            create_experiment(prefix, watch, app, timeout)
        if schedule_offset is not None:
            look_ahead(prefix, schedule_offset, watch, app, timeout, selected=create)
        display.resize(display.sizeHint())
        display.show()
        display.setFocus()  # no text cursor in the first entry
        for _ in range(20):  # let the last monitor updates repaint
            app.processEvents()
        if schedule_offset is not None:
            pump(app, 0.5)
        output.parent.mkdir(parents=True, exist_ok=True)
        if not display.grab().save(str(output), "PNG"):
            raise OSError(f"could not write {output}")
        write_pvs(output, screen, sorted(addresses), prefix)
        watch.close()
        display.close()
    return sorted(addresses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot of opi/dmagic.ui on the demo IOC")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"PNG file (default {OUTPUT})")
    parser.add_argument("--screen", type=Path, default=SCREEN, help=f"PyDM screen (default {SCREEN})")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds to wait for the channels")
    parser.add_argument("--blank", action="store_true", help="do not create the demo experiment first")
    parser.add_argument(
        "--schedule-offset", type=float, metavar="DAYS",
        help="then read the schedule DAYS ahead (TimeOffsetDays + Refresh); 6 reaches the demo's next beamtime, "
        "so the highlighted Scheduled now line differs from the selected experiment",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    addresses = take_screenshot(
        args.output, args.screen, args.timeout, create=not args.blank, schedule_offset=args.schedule_offset
    )
    print(f"{args.output}: {len(addresses)} channels connected; their PVs in {pvs_file(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
