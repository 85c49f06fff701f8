"""Logs that show real problems: a refused put is one line, tracebacks are for bugs.

caproto's server logs every exception a putter raises with a full traceback
(`Invalid write request ...`), and a traceback for every beacon it cannot send.
A refused command or setting is expected and already explained on `Status`;
these filters turn caproto's records of them into one line, or drop them where
the IOC has logged the reason itself.
"""

from __future__ import annotations

import logging

from caproto import Forbidden

from .engine import CommandFailed
from .pvs import PutRefused


class RefusedWrites(logging.Filter):
    """On `caproto.circ`: a write refused on purpose is one line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, CommandFailed):
            return False  # the command engine logged why
        if isinstance(error, (PutRefused, Forbidden)):
            username, hostname = record.args[:2] if isinstance(record.args, tuple) else ("?", "?")
            record.msg, record.args = "write by %s on %s refused: %s", (username, hostname, error)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class BeaconFailures(logging.Filter):
    """On `caproto.ctx`: a beacon that cannot be sent is said once per address, without a traceback."""

    def __init__(self):
        super().__init__()
        self._said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to send beacon"):
            return True
        key = str(record.args)
        if key in self._said:
            return False
        self._said.add(key)
        error = record.exc_info[1] if record.exc_info else None
        record.msg = f"{record.msg} ({error}; said once per address)"
        record.exc_info = record.exc_text = None
        return True


def quiet_expected_errors() -> None:
    """Install the filters on caproto's server loggers (idempotent)."""
    for name, kind in (("caproto.circ", RefusedWrites), ("caproto.ctx", BeaconFailures)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
