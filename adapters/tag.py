"""Tag: push the user-info values into another IOC's PVs over Channel Access.

Blocking (caproto's threading client): the IOC calls `CaTag.write` off the
event loop. Every target PV must connect before anything is written, and
each value is written in the form its record takes, cut at a character
boundary when it does not fit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from caproto import AccessRights, CaprotoError, ChannelType
from caproto.threading.client import PV, Context, SharedBroadcaster

from ..ioc.model import TagError

log = logging.getLogger(__name__)

# A DBR_STRING holds 40 bytes, the last one the terminating NUL.
STRING_BYTES = 40


def fit_utf8(text: str, limit: int) -> tuple[bytes, bool]:
    """UTF-8 of `text` cut to at most `limit` bytes at a character boundary: (bytes, was_cut)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return encoded, False
    # The cut may split the last character; dropping its partial bytes keeps whole characters only.
    return encoded[: max(limit, 0)].decode("utf-8", errors="ignore").encode("utf-8"), True


def encode_for(text: str, native_type: ChannelType, count: int) -> tuple[bytes | list[bytes], ChannelType, int, bool]:
    """The payload for a target of `native_type` and `count` elements: (data, data_type, data_count, was_cut).

    A CHAR waveform of N elements takes UTF-8 bytes cut to N-1 plus a NUL; any
    other record takes one DBR_STRING (39 usable bytes), which a CA server
    converts to the record's own type.
    """
    if native_type == ChannelType.CHAR:
        encoded, cut = fit_utf8(text, max(count, 1) - 1)
        payload = encoded + b"\0"
        return payload, ChannelType.CHAR, len(payload), cut
    encoded, cut = fit_utf8(text, STRING_BYTES - 1)
    return [encoded], ChannelType.STRING, 1, cut


class CaTag:
    """Writes values to `prefix + name` PVs of another IOC (e.g. tomoScan's `2bmb:TomoScan:`)."""

    def __init__(
        self,
        connect_timeout: float = 3.0,
        put_timeout: float = 5.0,
        context_factory: Callable[[], Context] | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._put_timeout = put_timeout
        self._context_factory = context_factory or _default_context
        self._context: Context | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CaTag(connect_timeout={self._connect_timeout:g}, put_timeout={self._put_timeout:g})"

    def write(self, prefix: str, values: Mapping[str, str]) -> list[str]:
        """Write each value to `prefix + name`; return the names whose value was cut.

        Raises TagError, writing nothing, when a target PV does not connect or
        is not writable; raises TagError naming the PV when a put fails.
        """
        if not values:
            return []
        if not prefix.strip():
            raise TagError("tag: TagPrefix is empty; set it to the target IOC's prefix, e.g. 2bmb:TomoScan:")
        names = list(values)
        pvs = self._connect(prefix, names)
        # Every payload is ready before the first put: a surprise here leaves nothing half-written.
        puts = []
        for name, pv in zip(names, pvs, strict=True):
            channel = pv.channel
            if channel is None:
                raise TagError(f"tag: {pv.name} disconnected; nothing written")
            puts.append((name, pv, *encode_for(values[name], channel.native_data_type, channel.native_data_count)))
        cut: list[str] = []
        for done, (name, pv, data, data_type, data_count, was_cut) in enumerate(puts):
            self._put(pv, data, data_type, data_count, written=done, total=len(puts))
            if was_cut:
                cut.append(name)
        log.info("tag: wrote %d PVs under %s; cut: %s", len(puts), prefix, ", ".join(cut) or "none")
        return cut

    def close(self) -> None:
        """Disconnect the Channel Access client (a later write reconnects)."""
        with self._lock:
            context, self._context = self._context, None
        if context is not None:
            context.disconnect()

    def _get_context(self) -> Context:
        with self._lock:
            if self._context is None:
                self._context = self._context_factory()
            return self._context

    def _connect(self, prefix: str, names: list[str]) -> list[PV]:
        """Connect every PV (searches run in parallel) or raise TagError naming those that did not."""
        pvs = self._get_context().get_pvs(*(prefix + name for name in names), timeout=self._connect_timeout)
        deadline = time.monotonic() + self._connect_timeout
        missing = []
        for pv in pvs:
            try:
                pv.wait_for_connection(timeout=max(deadline - time.monotonic(), 0.0))
            except (CaprotoError, TimeoutError):
                missing.append(pv.name)
        if len(missing) > 1 and len(missing) == len(pvs):
            raise TagError(
                f"tag: no PV under {prefix} answered within {self._connect_timeout:g} s "
                "(is that IOC running and TagPrefix right?); nothing written"
            )
        if missing:
            raise TagError(
                f"tag: no answer within {self._connect_timeout:g} s from {', '.join(missing)}; nothing written"
            )
        read_only = [pv.name for pv in pvs if not (pv.access_rights or 0) & AccessRights.WRITE]
        if read_only:
            raise TagError(f"tag: no write access to {', '.join(read_only)}; nothing written")
        return pvs

    def _put(self, pv: PV, data: object, data_type: ChannelType, data_count: int, *, written: int, total: int) -> None:
        """One put with completion; TagError naming the PV when it fails."""
        before = f"{written} of {total} values were written before it"
        try:
            response = pv.write(data, wait=True, timeout=self._put_timeout, data_type=data_type, data_count=data_count)
        except (CaprotoError, TimeoutError, OSError) as error:
            log.warning("tag: put to %s failed: %s", pv.name, error)
            raise TagError(
                f"tag: {pv.name} refused the value or did not complete within {self._put_timeout:g} s; {before}"
            ) from None
        status = response.status
        if not status.success:
            raise TagError(f"tag: {pv.name} refused the value ({status.name}); {before}")


def _default_context() -> Context:
    """A Channel Access client context.

    caproto's threading broadcaster never spawns a caproto-repeater (only the
    sync client does); it only sends a registration to a repeater if one runs.
    """
    return Context(SharedBroadcaster())
