"""The audit log: every command and setting written, every write refused, who asked and what came of it.

One line a write: when, the protocol (CA or PVA), the PV, the value (escaped, cut), the client's address,
the user and host names it claims (only claims: the address is what access
trusts), and the outcome: `ok`, `failed: why` (the putter or the command
refused it), `refused: why` (no write access). `{state_dir}/logs/audit.log` has
its own logger, which does not reach the main log, and its own rotation; its
files are 0600. Lines come at a bounded rate per address (refused writes far
fewer than admitted ones), the rest counted in one line a minute, so a flood
never rotates the record away.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import caproto as ca

from ..domain.text import printable
from ..statefiles import PrivateRotatingFileHandler
from .logs import Held, RateLimit, counted, held_text
from .pvs import wire_bytes

LOGGER = "dmagic_ioc.audit"
log = logging.getLogger(LOGGER)

FILE_BYTES = 10_000_000  # per file; with its backups the audit keeps 100 MB
BACKUPS = 9
VALUE_BYTES = 200  # a value (or a claimed name) longer than this is cut, its length said
NUMBERS_SHOWN = 8  # elements shown of a numeric array
OUTCOME_CHARS = 600  # an outcome (a failure's reason) is cut there

# Lines a minute (per address, in all) for refused writes and for admitted ones. At these rates a flood from
# anywhere adds at most ~150 lines (~45 kB) a minute: the files above hold days of it.
REFUSED_LINES = (5, 30)
WRITTEN_LINES = (60, 120)

_PYTHON_EXCEPTION = re.compile(r"^Python exception: \w+ ?")  # how caproto words a putter's exception


@dataclass
class Write:
    """A client's write as the audit records it; `outcome` is `ok` until a reply says otherwise."""

    pv: str
    value: str
    address: str
    user: str | None
    host: str | None
    outcome: str = "ok"
    protocol: str = "CA"  # or PVA: the IOC serves the same PVs over PV Access

    def saw(self, reply) -> None:
        """Take the outcome from the reply the server sends for this write (an error, a put's completion)."""
        if isinstance(reply, ca.ErrorResponse):
            message = bytes(reply.error_message).split(b"\0", 1)[0].decode("utf-8", "replace")
            self.outcome = f"failed: {_PYTHON_EXCEPTION.sub('', message) or reply.status.name}"
        elif isinstance(reply, ca.WriteNotifyResponse) and reply.status != ca.CAStatus.ECA_NORMAL.value:
            self.outcome = f"failed: {reply.status.name}"

    def line(self) -> str:
        """The audit line; the PV name (as the client spelled it) and the outcome escaped too, and cut."""
        return (f"protocol={self.protocol} client={self.address} user={_text(self.user)} host={_text(self.host)} "
                f"pv={printable(self.pv[:VALUE_BYTES])} value={self.value} "
                f"outcome={printable(self.outcome[:OUTCOME_CHARS])}")  # fmt: skip


def write_of(command, pv: str, address: str, user: str | None, host: str | None) -> Write:
    """The `Write` a WriteRequest or WriteNotifyRequest to `pv` makes."""
    return Write(pv, shown_value(command.data, command.data_type), address, user, host)


def shown_value(data, data_type) -> str:
    """A written value fit for one line: text quoted and escaped, numbers as numbers; cut when long."""
    raw = wire_bytes(data, data_type)
    if raw is not None:
        if len(raw) <= VALUE_BYTES:
            return repr(raw.decode("utf-8", "backslashreplace"))
        return f"{raw[:VALUE_BYTES].decode('utf-8', 'backslashreplace')!r}... ({len(raw):,} bytes)"
    head = data[:NUMBERS_SHOWN]
    shown = " ".join(map(str, head.tolist() if hasattr(head, "tolist") else head))
    if len(data) == 1:
        return shown
    more = " ..." if len(data) > NUMBERS_SHOWN else ""
    return f"[{shown}{more}] ({len(data)} values)"


def _text(text: str | None) -> str:
    """A claimed name quoted, every control or invisible character escaped (repr's rules), cut when long."""
    if text is None:
        return "-"
    if len(text) <= VALUE_BYTES:
        return repr(text)
    return f"{text[:VALUE_BYTES]!r}... ({len(text):,} characters)"


class AuditLog:
    """Records writes on the audit logger: admitted ones when their outcome is known, refused ones at once."""

    def __init__(self, logger: logging.Logger = log, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        per_key, total = REFUSED_LINES
        self.refusals = RateLimit(self._report("refused writes"), per_key=per_key, total=total, clock=clock)
        per_key, total = WRITTEN_LINES
        self.writes = RateLimit(self._report("writes"), per_key=per_key, total=total, clock=clock)

    def refused(self, write: Write, why: str) -> None:
        write.outcome = f"refused: {why}"
        self._record(self.refusals, write, "refused writes")

    def finished(self, write: Write) -> None:
        self._record(self.writes, write, "writes")

    def _record(self, limit: RateLimit, write: Write, what: str) -> None:
        held = limit.admit(write.address, write.pv)
        if held is None:
            return
        limit.flush()  # what other addresses had held back, first
        if held:
            self.logger.info("%s not recorded since the last line about %s: %s", what, write.address, counted(held))
        self.logger.info("%s", write.line())

    def _report(self, what: str):
        def report(held: Held) -> None:
            self.logger.info("%s not recorded in the last minute, by address: %s", what, held_text(held))

        return report


def open_audit_log(state_dir: Path) -> Path:
    """Send the audit logger to `{state_dir}/logs/audit.log`, alone (never to the main log); its path."""
    path = state_dir / "logs" / "audit.log"
    handler = PrivateRotatingFileHandler(path, maxBytes=FILE_BYTES, backupCount=BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"))
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return path
