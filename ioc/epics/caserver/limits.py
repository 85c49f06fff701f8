"""What a client may take: circuits per address and in all (the open-file limit), message size, channels, monitors.

See the package's notes 4 and 7 (`ioc.epics.caserver`).
"""

from __future__ import annotations

import ctypes
import logging
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import caproto as ca

log = logging.getLogger(__name__)

HEADER_BYTES = 24  # a CA header with its extension (payload size 0xFFFF, then 8 bytes: size and count)
MESSAGE_MARGIN = 16384  # bytes over the largest PV a message may carry (EPICS base's default array size)
OWN_FILES = 128  # open files kept for the IOC's own work (logs, state files, services) besides circuits
ACCEPT_BURST = 100  # connections asyncio accepts at one wake-up (start_server's backlog), before any is admitted
MAX_CIRCUITS = 10_000  # circuits in all at most, whatever the open-file limit (each holds ~20 kB)
CHANNELS_PER_PV = 4  # a circuit holds at most this many channels per PV served ...
MIN_CHANNELS = 1024  # ... and this many at least (~0.5 kB each)
SUBSCRIPTIONS_PER_CIRCUIT = 4096  # monitors a circuit holds at most (each keeps up to UPDATE_BACKLOG updates, ~0.5 kB)


@dataclass(frozen=True)
class Verdict:
    """What to do with a new circuit: refuse it (why), and/or close another one to make room (address, circuit)."""

    refused: str | None = None
    shed: tuple[str, Any] | None = None


class CircuitLimits:
    """Which circuits each address holds; which new one to refuse and which old one to close so none locks out another.

    An address holds at most `per_host` circuits: a new one past that is refused.
    Once `budget()` circuits are open in all (what the open-file limit leaves),
    the newest circuit of the address holding the most among those that may not
    write is closed (the new one itself when its address is that one): the
    addresses that may write are never locked out by the others.
    """

    def __init__(self, per_host: int, may_write: Callable[[str], bool], budget: Callable[[], int] | None = None):
        self.per_host = per_host
        self.may_write = may_write
        self.budget = budget or circuit_budget
        self.held: dict[str, dict[Any, None]] = {}  # address -> its circuits, oldest first
        self.total = 0

    def admit(self, address: str, circuit) -> Verdict:
        """Count `circuit` in for `address`, unless the verdict refuses it; a circuit shed is counted out."""
        count = len(self.held.get(address, ()))
        if count >= self.per_host:
            return Verdict(refused=f"it holds {count} circuits, the most ioc.access.max_circuits_per_host allows")
        shed = None
        budget = self.budget()
        if self.total >= budget:
            busiest = self._busiest_not_writing(address)
            if busiest == address:
                return Verdict(refused=f"the IOC holds {self.total} circuits, all the open-file limit leaves, and "
                                       f"this address the most ({count}) of those that may not write")  # fmt: skip
            if busiest is not None:
                shed = (busiest, next(reversed(self.held[busiest])))
                self.release(*shed)
        self.held.setdefault(address, {})[circuit] = None
        self.total += 1
        return Verdict(shed=shed)

    def release(self, address: str, circuit) -> None:
        """Count `circuit` out (again is harmless)."""
        circuits = self.held.get(address, {})
        if circuit in circuits:
            del circuits[circuit]
            self.total -= 1
            if not circuits:
                del self.held[address]

    def _busiest_not_writing(self, newcomer: str) -> str | None:
        """The address that may not write holding the most circuits, counting the newcomer's; it wins ties."""
        counts = {address: len(circuits) for address, circuits in self.held.items() if not self.may_write(address)}
        if not self.may_write(newcomer):
            counts[newcomer] = counts.get(newcomer, 0) + 1
        if not counts:
            return None
        return max(counts, key=lambda address: (counts[address], address == newcomer))


def circuit_budget() -> int:
    """How many circuits may be open in all: the open-file limit less what the IOC keeps for itself."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CIRCUITS
    return max(1, min(MAX_CIRCUITS, soft - OWN_FILES - ACCEPT_BURST))


def raise_open_file_limit() -> None:
    """Raise the soft open-file limit to the hard one: clients get more circuits before any is shed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as error:
            log.warning("open-file limit stays %d (hard limit %d): %s", soft, hard, error)
    log.info("circuits: at most %d in all (open-file limit %d)", circuit_budget(),
             resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # fmt: skip


def largest_message(pvdb: Mapping[str, Any]) -> int:
    """The most bytes a client's message may announce: the largest PV as the widest DBR type, with headers."""
    elements = max((max(getattr(channel, "max_length", 1), getattr(channel, "long_string_max_length", 0))
                    for channel in pvdb.values()), default=1)  # fmt: skip
    metadata = max(ctypes.sizeof(kind) for kind in ca.DBR_TYPES.values() if hasattr(kind, "_fields_"))
    return HEADER_BYTES + metadata + elements * ca.MAX_STRING_SIZE + MESSAGE_MARGIN
