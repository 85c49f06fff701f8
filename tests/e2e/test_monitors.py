"""Monitors through the installed IOC: every circuit that watches Status and Busy sees each command's updates,
in order; the alarm fields (`Status.SEVR`, `.STAT`) follow Status when read and when monitored; a monitor
with a channel filter still gets what its filter lets through.

Clients: caproto's threading client, one context (its own circuit) per watcher; pyepics (libca), whose PVs
share one circuit, for the order of a put's reply and the updates of what it changed.
"""

from __future__ import annotations

import threading
from itertools import pairwise

import epics
import pytest
from caproto.threading.client import Context, SharedBroadcaster

from ..helpers import CA_TIMEOUT, wait_for

WATCHERS = 6
TAG_FAILED = "Tag failed: TagPrefix is empty"
SAID = {0: ("NO_ALARM", "NO_ALARM"), 1: ("MINOR", "STATE")}  # Status's severity -> its .SEVR and .STAT


class Watcher:
    """One circuit monitoring some PVs; what each monitor received, in order."""

    def __init__(self, prefix: str, names: tuple[str, ...]):
        self.context = Context(SharedBroadcaster())
        self.seen: dict[str, list] = {name: [] for name in names}
        self.lock = threading.Lock()
        self.subscriptions = []
        for name, pv in zip(names, self.context.get_pvs(*(prefix + name for name in names), timeout=CA_TIMEOUT),
                            strict=True):  # fmt: skip
            pv.wait_for_connection(timeout=CA_TIMEOUT)
            subscription = pv.subscribe(data_type="native")
            take = self._taker(name)
            subscription.add_callback(take)
            self.subscriptions.append((subscription, take))  # caproto holds callbacks by weak reference

    def _taker(self, name: str):
        def take(subscription, response):
            value = response.data[0]
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif hasattr(response.data, "tobytes") and response.data_type.name.endswith("CHAR"):
                value = response.data.tobytes().split(b"\0", 1)[0].decode("utf-8")
            with self.lock:
                self.seen[name].append(value)

        return take

    def values(self, name: str) -> list:
        with self.lock:
            return list(self.seen[name])

    def close(self) -> None:
        self.context.disconnect()
        self.context.broadcaster.disconnect()


@pytest.fixture
def watchers(ioc):
    made: list[Watcher] = []

    def watcher(*names: str) -> Watcher:
        made.append(Watcher(ioc.prefix, names))
        return made[-1]

    yield watcher
    for made_one in made:
        made_one.close()


def test_every_circuit_sees_each_commands_status_and_busy_in_order(ioc, watchers):
    crowd = [watchers("Status", "Busy") for _ in range(WATCHERS)]
    wait_for(lambda: all(w.values("Status") and w.values("Busy") for w in crowd), CA_TIMEOUT, what="first updates")
    ioc.put("TagPrefix", "")
    ioc.put("Tag", 1, wait=True)
    ioc.command("Refresh")
    outcome = ioc.get("Status")
    wait_for(lambda: all(w.values("Status")[-1:] == [outcome] for w in crowd), CA_TIMEOUT, what="the outcome")
    for watcher in crowd:
        status = watcher.values("Status")
        status = status[status.index("Tag running") :]
        assert len(status) == 4 and status[1].startswith(TAG_FAILED), status
        assert status[0::2] == ["Tag running", "Refresh running"] and status[3] == outcome, status
        assert watcher.values("Busy")[-4:] == [1, 0, 1, 0]  # Busy, Idle: each command's start and end


def test_a_put_completes_after_the_monitors_on_its_circuit_have_the_outcome(ioc):
    """pyepics scripts read a monitored PV's last update (`PV.get()`) right after `put(wait=True)`."""
    status, busy = (epics.PV(ioc.prefix + name, auto_monitor=True) for name in ("Status", "Busy"))
    tag = epics.PV(ioc.prefix + "Tag")
    try:
        for pv in (status, busy, tag):
            assert pv.wait_for_connection(CA_TIMEOUT), pv.pvname
        ioc.put("TagPrefix", "")
        wait_for(lambda: status.get() is not None and busy.get() is not None, CA_TIMEOUT, what="first updates")
        for _ in range(20):
            tag.put(1, wait=True, timeout=CA_TIMEOUT)
            said = status.get(as_string=True)  # the monitor's last update, no read
            assert said.startswith(TAG_FAILED) and busy.get(as_string=True) == "Idle", said
    finally:
        for pv in (status, busy, tag):
            pv.disconnect()


def test_the_alarm_fields_follow_status_when_read_and_monitored(ioc, watchers):
    alarm = watchers("Status.SEVR", "Status.STAT")
    wait_for(lambda: alarm.values("Status.SEVR") and alarm.values("Status.STAT"), CA_TIMEOUT, what="first updates")
    ioc.put("TagPrefix", "")
    ioc.put("Tag", 1, wait=True)
    assert (ioc.get("Status.SEVR"), ioc.get("Status.STAT")) == ("MAJOR", "STATE")  # read once the put completed
    _, severity = ioc.command("Refresh")  # MINOR: nothing is scheduled today in the fixtures' schedule
    assert severity < 2 and (ioc.get("Status.SEVR"), ioc.get("Status.STAT")) == SAID[severity]
    # one update a change: NO_ALARM, MAJOR (Tag failed), NO_ALARM ("Refresh running"), then Refresh's outcome
    severities = [0, 2, 0] + ([severity] if severity else [])
    wait_for(lambda: len(alarm.values("Status.STAT")) >= len(severities), CA_TIMEOUT, what="the alarm's changes")
    assert alarm.values("Status.SEVR") == severities
    assert alarm.values("Status.STAT") == [7 if value else 0 for value in severities]  # STATE or NO_ALARM


def test_a_monitor_with_a_deadband_gets_what_its_filter_lets_through(ioc, watchers):
    plain = watchers("Heartbeat")
    filtered = watchers('Heartbeat.{"dbnd":{"abs":2}}')
    wait_for(lambda: len(filtered.values('Heartbeat.{"dbnd":{"abs":2}}')) >= 3, CA_TIMEOUT, what="filtered beats")
    beats = filtered.values('Heartbeat.{"dbnd":{"abs":2}}')
    assert all(later - earlier > 2 for earlier, later in pairwise(beats)), beats
    ticks = plain.values("Heartbeat")
    assert all(later - earlier == 1 for earlier, later in pairwise(ticks)), ticks  # every tick, none missed
