"""The PyDM screen against the installed IOC: every channel connects, values arrive, a button runs its command.

Uses the helpers of tools/screenshot.py on the session's loopback IOC (the
`ioc` fixture), so it shares this process's CA context and port settings.
Skipped only when PyDM is not installed or Qt cannot start.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from ..helpers import REPO, wait_for
from .fixtures import IN_SECOND, IN_THIRD

pytestmark = pytest.mark.e2e

TOOL = REPO / "tools" / "screenshot.py"
PV_NAME = re.compile(r"\$\{P\}([A-Za-z0-9_:]+)")
QT_PROBE = (
    "import os; os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen');"
    "from qtpy.QtWidgets import QApplication; app = QApplication([]); import pydm.widgets"
)


@pytest.fixture(scope="module")
def screen_tool():
    """tools/screenshot.py as a module, once PyDM is importable and Qt starts (probed in a subprocess)."""
    pytest.importorskip("qtpy")
    pytest.importorskip("pydm")
    if "aioca" in sys.modules:  # seen: PyDM's pyepics connects nothing once aioca's libca runs in the process
        pytest.skip("the bluesky tests loaded aioca's libca in this worker: run this file in a process of its own")
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    probe = subprocess.run([sys.executable, "-c", QT_PROBE], capture_output=True, text=True, env=env, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"Qt cannot start: {probe.stderr.strip()[-300:]}")
    spec = importlib.util.spec_from_file_location("dmagic_screenshot", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_channel_of_the_pydm_screen_connects(ioc, screen_tool, tmp_path):
    tool = screen_tool
    app = tool.qt_app()
    display = tool.open_screen(tool.SCREEN, ioc.prefix)
    addresses = tool.screen_addresses(display)
    expected = {f"ca://{ioc.prefix}{name}" for name in PV_NAME.findall(tool.SCREEN.read_text(encoding="utf-8"))}
    assert addresses == expected, "a widget names a channel the macro did not expand, or none at all"

    watch = tool.ChannelWatch(addresses)
    try:
        try:
            tool.wait_until(lambda: not watch.missing(), 20, "the screen's channels", app=app)
        except TimeoutError:
            pytest.fail(f"not connected or without a value: {watch.missing()}")
        assert tool.text_of(watch.values[f"ca://{ioc.prefix}Beamline"]) == "2-BM-A,B"

        refresh = next(b for b in display.findChildren(_push_button()) if b.channel == f"ca://{ioc.prefix}Refresh")
        tool.wait_until(refresh.isEnabled, 10, "the Refresh button to enable", app=app)
        refresh.click()  # PyDM hands the write to its plugin through Qt events: keep them running
        last_command = f"ca://{ioc.prefix}LastCommand"
        tool.wait_until(lambda: watch.values.get(last_command) == "Refresh", 10, "LastCommand = Refresh", app=app)
        wait_for(lambda: ioc.get("Refresh") == "Done", 10, what="Refresh to end")

        display.show()
        app.processEvents()
        shot = tmp_path / "screen.png"
        assert display.grab().save(str(shot), "PNG") and shot.stat().st_size > 0
    finally:
        watch.close()
        display.close()


def test_the_scheduled_now_line_is_highlighted_while_the_schedule_differs(ioc, screen_tool):
    """Create in one beamtime, then the schedule moves to the next: the proposal stays, the Scheduled now line
    names the next beamtime, its frame turns amber and "differs" shows; Create again: back to plain."""
    from pydm.widgets import PyDMFrame, PyDMLabel

    tool = screen_tool
    app = tool.qt_app()
    display = tool.open_screen(tool.SCREEN, ioc.prefix)
    differs = f"ca://{ioc.prefix}Schedule:Differs"
    highlight = display.findChild(PyDMFrame, "Schedule_Differs_highlight")
    note = display.findChild(PyDMFrame, "Schedule_Differs_note")
    assert highlight.channel == differs and note.channel == differs
    labels = {w.channel.removeprefix(f"ca://{ioc.prefix}"): w for w in display.findChildren(PyDMLabel)}
    watch = tool.ChannelWatch(tool.screen_addresses(display))
    try:
        tool.wait_until(lambda: not watch.missing(), 20, "the screen's channels", app=app)
        display.show()
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        status, severity = ioc.command("Create")
        assert severity == 0, status

        def shown(value: int, proposal: str) -> bool:
            return watch.values.get(differs) == value and labels["Schedule:ProposalNumber"].text() == proposal

        tool.wait_until(lambda: shown(0, "1013377"), 10, "Schedule:Differs = No after Create", app=app)
        tool.pump(app, 0.3)
        assert highlight.alarmSeverity == 0 and not _amber(highlight) and not _has_text(note)

        ioc.put("TimeOffsetDays", IN_THIRD)
        ioc.command("Refresh")
        tool.wait_until(lambda: shown(1, "1014002"), 10, "Schedule:Differs = Yes in the next beamtime", app=app)
        tool.pump(app, 0.3)
        assert labels["ProposalNumber"].text() == "1013377"  # the selected experiment's proposal stays
        assert labels["Schedule:PI"].text() == "Ada Staff"
        assert highlight.alarmSeverity == 1 and _amber(highlight) and _has_text(note)

        status, severity = ioc.command("Create")
        assert severity == 0, status
        tool.wait_until(lambda: shown(0, "1014002"), 10, "Schedule:Differs = No after Create", app=app)
        tool.pump(app, 0.3)
        assert labels["ProposalNumber"].text() == "1014002"
        assert highlight.alarmSeverity == 0 and not _amber(highlight) and not _has_text(note)
    finally:
        watch.close()
        display.close()


def _amber(widget) -> bool:
    """The middle of `widget` as drawn is the highlight's amber."""
    image = widget.grab().toImage()
    colour = image.pixelColor(image.width() // 2, image.height() // 2)
    return (colour.red(), colour.green(), colour.blue()) == (255, 200, 96)


def _has_text(widget) -> bool:
    """`widget` as drawn has dark (text) pixels."""
    image = widget.grab().toImage()
    return any(image.pixelColor(x, y).lightness() < 80 for x in range(image.width()) for y in range(image.height()))


def _push_button():
    from pydm.widgets import PyDMPushButton

    return PyDMPushButton
