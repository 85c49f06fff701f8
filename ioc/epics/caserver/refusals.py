"""The log line of a write refused for lack of access: it names the client's address, at a bounded rate."""

from __future__ import annotations

import logging

from ..logs import Held, RateLimit, held_text

log = logging.getLogger(__name__)

REFUSAL_LOG_SECONDS = 60.0  # after a refused write is logged, the same address is logged again after this


class RefusalLog:
    """Log a refused write naming the client's address: the first at once, then one line a minute per address."""

    def __init__(self, period: float = REFUSAL_LOG_SECONDS):
        self.limit = RateLimit(self._report, per_key=1, total=30, period=period)

    @property
    def period(self) -> float:
        return self.limit.period

    @period.setter
    def period(self, seconds: float) -> None:
        self.limit.period = seconds

    def note(self, pv: str, address: str, user: str | None, claimed_host: str | None, why: str) -> None:
        held = self.limit.admit(address, pv)
        if held is None:
            return
        self.limit.flush()  # what other addresses had held back, first
        more = f"; {sum(held.values())} more writes from {address} refused since its last line" if held else ""
        log.warning(
            "write to %s refused: client at %s (user %r, host name %r as it claims): %s%s",
            pv, address, user, claimed_host, why, more,
        )  # fmt: skip

    def _report(self, held: Held) -> None:
        log.warning("refused writes not logged in the last %g s, by address: %s", self.period, held_text(held))
