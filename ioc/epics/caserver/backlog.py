"""A client's monitor updates: the circuit's queue, which never waits, and each monitor's short backlog.

See the package's note 6 (`ioc.epics.caserver`).
"""

from __future__ import annotations

import asyncio
from collections import deque

import caproto as ca

UPDATES_QUEUED = ca.MAX_TOTAL_SUBSCRIPTION_BACKLOG  # a circuit's monitor updates waiting, past which they coalesce
UPDATE_BACKLOG = 10  # updates a monitor keeps, the oldest dropped first (caproto's floor for large PVs)


class UpdateQueue(asyncio.Queue):
    """A circuit's monitor updates waiting to be sent; putting one never waits (see the package's note 6).

    Items are caproto's weak references to its EventAddResponses. Up to `limit`
    updates every one is kept; past it an update replaces the newest one of its
    subscription still waiting here, else joins the queue: it holds at most
    `limit` updates plus one per subscription. It overrides the hooks asyncio's
    own LifoQueue and PriorityQueue override.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.newest: dict[int, list] = {}  # subscription id -> its newest [subscription id, update] waiting
        super().__init__()  # without a maxsize: `put` never waits

    def _init(self, maxsize: int) -> None:
        self._queue: deque[list] = deque()  # [subscription id, update], oldest first

    def _put(self, update) -> None:
        command = update()
        if command is None:  # dropped already from its subscription's backlog
            return
        waiting = self.newest.get(command.subscriptionid)
        if waiting is not None and len(self._queue) >= self.limit:
            waiting[1] = update
            return
        entry = [command.subscriptionid, update]
        self._queue.append(entry)
        self.newest[command.subscriptionid] = entry

    def _get(self):
        """The oldest update its subscription's backlog still holds (skipping those it dropped), held until sent.

        caproto reads a weak reference only after a turn or two of the event loop;
        with a busy loop, updates coming faster than that would all be dropped by then.
        """
        while True:
            entry = self._queue.popleft()
            if self.newest.get(entry[0]) is entry:
                del self.newest[entry[0]]
            command = entry[1]()
            if command is not None:
                return Taken(command)
            if not self._queue:
                return entry[1]  # dropped: caproto counts it


class Taken:
    """An update taken from an `UpdateQueue`, called as caproto calls its weak reference."""

    __slots__ = ("command",)

    def __init__(self, command):
        self.command = command

    def __call__(self):
        return self.command


class Backlogs(dict):
    """A circuit's backlog of updates per monitor (caproto's `unexpired_updates`), each at most UPDATE_BACKLOG long.

    caproto keeps each monitor's last updates, sent or not, as many as its PV's
    `max_subscription_backlog` (1,000 by default, ~0.5 kB each): 2,000
    monitors of a PV that changes ten times a second grew the IOC by 250 MB in
    30 s.
    """

    def __setitem__(self, subscription_id, backlog: deque) -> None:
        longest = min(backlog.maxlen or UPDATE_BACKLOG, UPDATE_BACKLOG)
        super().__setitem__(subscription_id, deque(backlog, maxlen=longest))
