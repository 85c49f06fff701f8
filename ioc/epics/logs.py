"""Logs that show real problems: a refused put is one line, tracebacks are for bugs, clients cannot flood them.

caproto's server logs every exception a putter raises with a full traceback
(`Invalid write request ...`), and a traceback for every beacon it cannot send.
A refused command or setting is expected and already explained on `Status`;
these filters turn caproto's records of them into one line, or drop them where
the IOC has logged the reason itself. What clients cause (refused writes,
malformed messages, circuits refused) is said at a bounded rate (`RateLimit`):
a few lines a minute per address, the rest counted and said in one line, so no
client can rotate the logs away. caproto's line for every circuit that connects
or disconnects is debug output.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping

from caproto import Forbidden

from ..app.reporting import CommandFailed
from .pvs import PutRefused

log = logging.getLogger(__name__)

OTHERS = "other addresses"  # the key of what is held back once MAX_KEYS keys are tracked
MAX_KEYS = 4096  # keys (addresses) tracked in one period at most: a flood from many addresses stays bounded
MAX_ABOUTS = 8  # distinct things (PV names, errors) counted per key; the rest as "..."
SHOWN_KEYS = 10  # keys named in a line of held-back counts

Held = Mapping[str, Counter[str]]  # key -> what about it was held back, counted


class RateLimit:
    """Which lines about clients to say: `per_key` lines per key (an address) and `total` in all per `period`.

    A line held back is counted under its key and what it is about (a PV name,
    an error); `admit` hands the counts of a key to its next line, and `flush`
    hands those of keys whose period has ended to `report`, one call for all.
    """

    def __init__(self, report: Callable[[Held], None], *, per_key: int = 1, total: int = 20,
                 period: float = 60.0, clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.report = report
        self.per_key, self.total, self.period = per_key, total, period
        self.clock = clock
        self._keys: dict[str, _KeyWindow] = {}
        self._all = _KeyWindow(clock())
        _LIVE.add(self)

    def admit(self, key: str, about: str = "") -> Counter[str] | None:
        """None to hold this line back (counted); else what was held back about `key` since its last line."""
        now = self.clock()
        window = self._keys.get(key)
        if window is None:
            if len(self._keys) >= MAX_KEYS:
                key = OTHERS
            window = self._keys.setdefault(key, _KeyWindow(now))
        for w in (window, self._all):
            if now - w.start >= self.period:
                w.start, w.said = now, 0
        if key == OTHERS or window.said >= self.per_key or self._all.said >= self.total:
            window.hold(about)
            return None
        window.said += 1
        self._all.said += 1
        held, window.held = window.held, Counter()
        return held

    def flush(self) -> None:
        """Report what is held back about keys whose period has ended; forget keys with nothing to say."""
        now = self.clock()
        held: dict[str, Counter[str]] = {}
        for key, window in list(self._keys.items()):
            if now - window.start < self.period:
                continue
            if window.held:
                held[key] = window.held
            del self._keys[key]
        if held:
            self.report(held)


class _KeyWindow:
    __slots__ = ("start", "said", "held")

    def __init__(self, start: float):
        self.start, self.said = start, 0
        self.held: Counter[str] = Counter()

    def hold(self, about: str) -> None:
        if about in self.held or len(self.held) < MAX_ABOUTS:
            self.held[about] += 1
        else:
            self.held["..."] += 1


_LIVE: weakref.WeakSet[RateLimit] = weakref.WeakSet()


def flush_rate_limits() -> None:
    """Say what every rate limit holds back about keys whose period has ended (the server calls it regularly)."""
    for limit in list(_LIVE):
        limit.flush()


def counted(held: Counter[str]) -> str:
    """`12 (t:Create 10, t:Delete 2)`: how many lines were held back, and what about."""
    total = sum(held.values())
    abouts = ", ".join(f"{about} {count:,}" for about, count in held.most_common() if about)
    return f"{total:,} ({abouts})" if abouts else f"{total:,}"


def held_text(held: Held) -> str:
    """`10.0.0.9: 12 (t:Create 12); 10.0.0.8: 1`, the keys with most held back first."""
    busiest = sorted(held, key=lambda key: -sum(held[key].values()))
    shown = "; ".join(f"{key}: {counted(held[key])}" for key in busiest[:SHOWN_KEYS])
    rest = busiest[SHOWN_KEYS:]
    if rest:
        shown += f"; {sum(sum(held[key].values()) for key in rest):,} more from {len(rest)} other addresses"
    return shown


class RateLimitedLog:
    """Lines about clients, keyed by address, said through `logger` at a bounded rate (see `RateLimit`)."""

    def __init__(self, logger: logging.Logger, what: str, *, level: int = logging.WARNING, **limits):
        self.logger, self.what, self.level = logger, what, level
        self.limit = RateLimit(self._report, **limits)

    def say(self, key: str, about: str, msg: str, *args, **kwargs) -> None:
        """Log `msg % args` (`kwargs` as `Logger.log` takes them) unless `key` or everyone had its share."""
        held = self.limit.admit(key, about)
        if held is None:
            return
        self.limit.flush()  # what other keys had held back, first
        if held:
            self.logger.log(self.level, "%s about %s not logged since its last line: %s", self.what, key,
                            counted(held))  # fmt: skip
        self.logger.log(self.level, msg, *args, **kwargs)

    def _report(self, held: Held) -> None:
        self.logger.log(self.level, "%s not logged in the last %g s: %s", self.what, self.limit.period,
                        held_text(held))  # fmt: skip


class RefusedWrites(logging.Filter):
    """On `caproto.circ`: a write refused on purpose is one line, not a traceback, a few a minute per address."""

    def __init__(self):
        super().__init__()
        self.limit = RateLimit(self._report, per_key=5, total=30)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, CommandFailed):
            return False  # the supervisor logged why
        if isinstance(error, (PutRefused, Forbidden)):
            username, hostname = record.args[:2] if isinstance(record.args, tuple) else ("?", "?")
            address = getattr(hostname, "address", "?")  # the IOC's circuits pass a ClientHost
            if self.limit.admit(address, type(error).__name__) is None:
                return False
            record.msg = "write from %s (user %r, host name %r as it claims) refused: %s"
            record.args = (address, username, str(hostname), error)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True

    def _report(self, held: Held) -> None:
        log.warning("refused writes not logged in the last %g s: %s", self.limit.period, held_text(held))


class BeaconFailures(logging.Filter):
    """On `caproto.ctx`: a beacon that cannot be sent is said once per address, without a traceback, with
    advice that fits the EPICS environment (caproto's own names variables that may be set already)."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        super().__init__()
        self.environ = environ
        self._said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to send beacon"):
            return True
        key = str(record.args)
        if key in self._said:
            return False
        self._said.add(key)
        address = record.args[0] if isinstance(record.args, tuple) and record.args else None
        error = record.exc_info[1] if record.exc_info else None
        if not (isinstance(address, tuple) and len(address) == 2):
            record.msg, record.args = "beacons not sent: %s (said once)", (error,)
        else:
            harmless, line = beacon_failure(address, error, self.environ)
            record.msg, record.args = "%s (said once per address)", (line,)
            if harmless:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        return True


def beacon_failure(address: tuple[str, int], error: BaseException | None,
                   environ: Mapping[str, str]) -> tuple[bool, str]:  # fmt: skip
    """Why beacons to `address` fail, with what to do given the EPICS_CAS_* variables set: (harmless, line).

    Nothing listening (the port refused) is harmless: beacons only tell clients' caRepeaters that an
    IOC (re)started; clients that search find it anyway.
    """
    host, port = address
    cause = error.__cause__ if error is not None and error.__cause__ is not None else error
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause or "unknown error")
    beacon_port, repeater_port = environ.get("EPICS_CAS_BEACON_PORT"), environ.get("EPICS_CA_REPEATER_PORT")
    if repeater_port and repeater_port != str(port):  # EPICS base defaults the one to the other; caproto does not
        ports = (f"EPICS_CAS_BEACON_PORT {beacon_port} differs from EPICS_CA_REPEATER_PORT {repeater_port}"
                 if beacon_port else f"set EPICS_CAS_BEACON_PORT={repeater_port} (caproto does not take it from "
                 f"EPICS_CA_REPEATER_PORT {repeater_port})")  # fmt: skip
        ports = f"; {ports}, where clients' caRepeater listens"
    else:
        ports = ""
    if isinstance(cause, ConnectionRefusedError):
        return True, (f"beacons: nothing listens on {host}:{port} (no caRepeater running); harmless for clients "
                      f"that search{ports}")  # fmt: skip
    listed = [entry.rsplit(":", 1)[0] for entry in environ.get("EPICS_CAS_BEACON_ADDR_LIST", "").split()]
    automatic = environ.get("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "YES").upper() != "NO"
    if host in listed:
        advice = f"{host} is in EPICS_CAS_BEACON_ADDR_LIST: correct it or leave it out"
    elif listed:  # caproto broadcasts to 255.255.255.255 besides the list unless told not to
        advice = "set EPICS_CAS_AUTO_BEACON_ADDR_LIST=NO to send only to EPICS_CAS_BEACON_ADDR_LIST"
    elif automatic:
        advice = ("set EPICS_CAS_AUTO_BEACON_ADDR_LIST=NO and EPICS_CAS_BEACON_ADDR_LIST to the clients' "
                  "broadcast addresses")  # fmt: skip
    else:  # caproto broadcasts when the list is empty, whatever EPICS_CAS_AUTO_BEACON_ADDR_LIST says
        advice = (
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST=NO needs EPICS_CAS_BEACON_ADDR_LIST: set it to the clients' "
            "broadcast addresses"
        )
    return False, f"beacons to {host}:{port} not sent ({reason}): {advice}{ports}"


class CircuitChatter(logging.Filter):
    """On `caproto.ctx` and `caproto.circ`: a circuit connecting, disconnecting, turning events on/off is debug output.

    caproto says each at INFO; a client that connects in a loop would fill the log with them.
    """

    CHATTER = ("Connected to new client", "Disconnected from client", "Client at ")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not str(record.msg).startswith(self.CHATTER):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_expected_errors() -> None:
    """Install the filters on caproto's server loggers (idempotent)."""
    for name, kind in (("caproto.circ", RefusedWrites), ("caproto.ctx", BeaconFailures),
                       ("caproto.ctx", CircuitChatter), ("caproto.circ", CircuitChatter)):  # fmt: skip
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
