"""Monitor updates to every circuit that watches them: encoded once, written once per circuit, a few circuits a
turn; those of a circuit whose put is about to be answered, before its answer.

See the package's note 8 (`ioc.epics.caserver`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

FANOUT_SLICE = 0.0002  # seconds of writing between two turns of the event loop: what else waits, waits that long

Update = tuple[Any, Any, Any]  # (Fan, subscription spec, subscription)


class Fan:
    """One of caproto's updates (subscription specs, metadata, values, flags, the one subscription or None) on
    its way: the circuits it was sent to, and its encodings (per data type and count)."""

    __slots__ = ("item", "served", "encoded")

    def __init__(self, item: tuple):
        self.item = item
        self.served: set = set()
        self.encoded: dict[tuple[int, int], bytes] = {}

    def for_subscription(self, sub) -> bytes:
        """This update as an EVENT_ADD reply for `sub`: built by caproto once per data type and count, the
        subscription id put in its header (parameter 2, bytes 12 to 16, in the short header and the long one)."""
        _, metadata, values, _, _ = self.item
        count = sub.data_count or len(values)
        data = self.encoded.get((sub.data_type, count))
        if data is None:
            data = self.encoded[sub.data_type, count] = bytes(sub.channel.subscribe(
                data=values if count == len(values) else values[:count], metadata=metadata,
                data_type=sub.data_type, data_count=count, subscriptionid=0, status=1))  # fmt: skip
        return data[:12] + sub.subscriptionid.to_bytes(4, "big") + data[16:]


class FanoutQueue(asyncio.Queue):
    """The server's monitor updates waiting to go out, each as a `Fan` (it overrides asyncio's hooks, as the
    circuits' `UpdateQueue` does); `waiting` lists them without taking them."""

    def _init(self, maxsize: int) -> None:
        self._queue: deque[Fan] = deque()

    def _put(self, item) -> None:
        self._queue.append(Fan(item))

    def waiting(self) -> list[Fan]:
        return list(self._queue)


async def fan_out(context, fans: list[Fan]) -> None:
    """Send `fans` to every subscription they are for, circuit by circuit; after FANOUT_SLICE of it, a turn of
    the event loop."""
    by_circuit: dict[Any, list[Update]] = {}
    for fan in fans:
        specs, _, _, _, only = fan.item
        targets = [(specs[0], only)] if only is not None else [(spec, sub) for spec in specs
                                                             for sub in context.subscriptions[spec]]  # fmt: skip
        for spec, sub in targets:
            by_circuit.setdefault(sub.circuit, []).append((fan, spec, sub))
    turn = time.perf_counter()
    for circuit, updates in by_circuit.items():
        await send(context, circuit, updates)
        if time.perf_counter() - turn > FANOUT_SLICE:
            await asyncio.sleep(0)
            turn = time.perf_counter()


async def flush(context, circuit, fans: Iterable[Fan]) -> None:
    """Send `circuit` its part of `fans`, and what waits in its own queue, now."""
    updates = []
    for fan in fans:
        specs, _, _, _, only = fan.item
        if only is not None:
            updates += [(fan, specs[0], only)] if only.circuit is circuit else []
        else:
            updates += [(fan, spec, sub) for spec in specs for sub in circuit.subscriptions.get(spec, ())]
    await send(context, circuit, updates)
    if not circuit.subscription_queue.empty():
        await circuit.send_queued_updates()


async def send(context, circuit, updates: list[Update]) -> None:
    """Send `circuit` the `updates` it has not been sent. A client that keeps up (nothing waits to be sent to
    it) is written at once, all of them in one write; one that lags (or a monitor with a channel filter, or a
    client that turned events off) gets them through caproto's queue and backlog (note 6): they never
    overtake what waits there."""
    updates = [update for update in updates if circuit not in update[0].served]
    for fan, _, _ in updates:
        fan.served.add(circuit)
    if keeps_up(circuit) and all(plain(sub) for _, _, sub in updates):
        data = [fan.for_subscription(sub) for fan, spec, sub in updates if sub in circuit.subscriptions.get(spec, ())]
        if data:
            circuit.client.writer.transport.write(b"".join(data))
        return
    for fan, spec, sub in updates:
        _, metadata, values, flags, _ = fan.item
        await context._subscription_queue_send(spec, sub, metadata=metadata, values=values, flags=flags)


def keeps_up(circuit) -> bool:
    """Nothing waits to be sent to `circuit`: no update in its queue, no send under way, nothing buffered."""
    client = circuit.client
    transport = client.writer.transport
    return (circuit.connected and circuit.events_on.is_set() and circuit.subscription_queue.empty()
            and not client.send_lock.locked() and not transport.is_closing()
            and not transport.get_write_buffer_size())  # fmt: skip


def plain(sub) -> bool:
    """A monitor without a channel filter (`PV.{"dbnd": ...}` and the like): caproto applies those."""
    return all(part is None for part in sub.channel_filter)
