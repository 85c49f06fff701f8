"""Tag: push the user-info values into another IOC's PVs over Channel Access.

Blocking (caproto's threading client): the IOC calls `CaTag.write` off the
event loop, in the command's worker thread. Each write opens its own client
context and closes it at the end, so no search for a missing PV outlives the
command; the one exception is a write refused because some PVs are missing,
whose context (its PVs connected) is kept a moment for the write of the
others that follows. All the names are searched in one go: the PVs of one IOC
answer that search together, so a PV still unanswered a short `settle_time`
after the last answer is taken as absent (a stock tomoScan has no
ESAFDOINumber). Every PV written must answer and take writes before anything
is written; each value goes in the form its record takes (one DBR_STRING for
a stringout, a NUL-terminated char array for a CHAR waveform), cut at a UTF-8
character boundary when it does not fit.

A refused put: EPICS base answers it at once (ECA_PUTFAIL); a caproto server
answers with a CA error message that caproto's threading client drops, so
there the refusal shows only when the put timeout runs out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from caproto import AccessRights, CaprotoError, ChannelType
from caproto.threading.client import PV, Context, SharedBroadcaster

from ..ioc.domain.errors import MissingPVs, TagError

log = logging.getLogger(__name__)

# A DBR_STRING holds 40 bytes, the last one the terminating NUL.
STRING_BYTES = 40
# How often the connection wait looks at the PVs.
POLL_SECONDS = 0.01
# How long the context of a write refused for missing PVs waits for the write of the others.
KEEP_SECONDS = 2.0


@dataclass(frozen=True)
class Payload:
    """One put: the data in the form the target record takes, and whether the text had to be cut."""

    data: bytes | list[bytes]
    data_type: ChannelType
    count: int
    cut: bool


def fit_utf8(text: str, limit: int) -> tuple[bytes, bool]:
    """UTF-8 of `text` cut to at most `limit` bytes at a character boundary: (bytes, was_cut)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return encoded, False
    # The cut may split the last character; dropping its partial bytes keeps whole characters only.
    return encoded[: max(limit, 0)].decode("utf-8", errors="ignore").encode("utf-8"), True


def encode_for(text: str, native_type: ChannelType, count: int) -> Payload:
    """The put of `text` into a target of `native_type` holding `count` elements.

    A CHAR waveform of N elements takes the UTF-8 bytes cut to N-1 and a NUL
    (an empty text is the NUL alone, which clears it); any other record takes
    one DBR_STRING (39 usable bytes), which the server converts to the
    record's own type.
    """
    if native_type == ChannelType.CHAR:
        encoded, cut = fit_utf8(text, max(count, 1) - 1)
        data = encoded + b"\0"
        return Payload(data, ChannelType.CHAR, len(data), cut)
    encoded, cut = fit_utf8(text, STRING_BYTES - 1)
    return Payload([encoded], ChannelType.STRING, 1, cut)


class CaTag:
    """Writes values to `prefix + name` PVs of another IOC (e.g. tomoScan's `2bmb:TomoScan:`).

    `connect_timeout` bounds the wait for the PVs to answer; once some have
    answered the search, the others get `settle_time` more: the PVs of one IOC
    answer the same search together (a lost reply is searched again within
    30 ms), so a PV still silent by then is taken as absent.
    """

    def __init__(
        self,
        connect_timeout: float = 3.0,
        put_timeout: float = 5.0,
        settle_time: float = 0.1,
        context_factory: Callable[[], Context] | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._put_timeout = put_timeout
        self._settle_time = settle_time
        self._context_factory = context_factory or _default_context
        self._kept_lock = threading.Lock()
        self._kept: _Kept | None = None

    def __repr__(self) -> str:
        return (
            f"CaTag(connect_timeout={self._connect_timeout:g}, put_timeout={self._put_timeout:g}, "
            f"settle_time={self._settle_time:g})"
        )

    def write(self, prefix: str, values: Mapping[str, str]) -> list[str]:
        """Write each value to `prefix + name`; return the names whose value was cut.

        Raises, writing nothing: MissingPVs when some PVs do not answer (all
        of them: the message names the prefix); TagError when a PV takes no
        writes. Raises TagError naming the PV, and how many were written
        before it, when a put fails.
        """
        if not values:
            return []
        if not prefix.strip():
            raise TagError("TagPrefix is empty; set it to the target IOC's prefix, e.g. 2bmb:TomoScan:")
        context = self._take_kept(prefix) or self._context_factory()
        keep = False
        try:
            try:
                pvs = self._connect(context, prefix, list(values))
            except MissingPVs as error:
                keep = len(error.missing) < len(values)  # the write of those that answered comes next
                raise
            # Every payload is ready before the first put: a surprise here leaves nothing half-written.
            puts = [(name, pv, encode_for(values[name], *_native(pv))) for name, pv in pvs.items()]
            for written, (_, pv, payload) in enumerate(puts):
                self._put(pv, payload, written=written, total=len(puts))
        finally:
            if keep:
                self._keep(prefix, context)
            else:
                _close(context)
        cut = [name for name, _, payload in puts if payload.cut]
        log.info("tag: wrote %d PVs under %s; cut: %s", len(puts), prefix, ", ".join(cut) or "none")
        return cut

    def _take_kept(self, prefix: str) -> Context | None:
        """The context kept from a write to `prefix` refused for missing PVs, if any; any other is closed."""
        with self._kept_lock:
            kept, self._kept = self._kept, None
        if kept is None:
            return None
        kept.timer.cancel()
        if kept.prefix == prefix:
            return kept.context
        _close(kept.context)
        return None

    def _keep(self, prefix: str, context: Context) -> None:
        """Keep `context` for the next write to `prefix`; closed if none comes within KEEP_SECONDS."""
        timer = threading.Timer(KEEP_SECONDS, self._forget, args=(context,))
        timer.daemon = True
        with self._kept_lock:
            previous, self._kept = self._kept, _Kept(prefix, context, timer)
        if previous is not None:
            previous.timer.cancel()
            _close(previous.context)
        timer.start()

    def _forget(self, context: Context) -> None:
        with self._kept_lock:
            if self._kept is None or self._kept.context is not context:
                return  # taken by a write meanwhile
            self._kept = None
        _close(context)

    def _connect(self, context: Context, prefix: str, names: list[str]) -> dict[str, PV]:
        """The PVs of `names`, every one connected and writable, or TagError naming those that are not."""
        pvs = dict(zip(names, context.get_pvs(*(prefix + name for name in names)), strict=True))
        started = time.monotonic()
        self._wait_for_answers(list(pvs.values()), started)
        missing = [name for name, pv in pvs.items() if not pv.connected]
        # No more searches for them: one sent while the context closes would fail in caproto's search thread.
        context.broadcaster.cancel(*(prefix + name for name in missing))
        if len(missing) == len(names):
            raise MissingPVs(
                f"no PV under {prefix} answered within {self._connect_timeout:g} s "
                "(is that IOC running and TagPrefix right?); nothing written",
                missing,
            )
        if missing:
            waited = time.monotonic() - started
            raise MissingPVs(
                f"no answer within {waited:.1f} s from {', '.join(prefix + name for name in missing)}; nothing written",
                missing,
            )
        read_only = [pv.name for pv in pvs.values() if not (pv.access_rights or 0) & AccessRights.WRITE]
        if read_only:
            raise TagError(f"no write access to {', '.join(read_only)}; nothing written")
        return pvs

    def _wait_for_answers(self, pvs: list[PV], started: float) -> None:
        """Until every PV is connected; or the connect timeout runs out; or no other has answered the
        search for `settle_time` since the last one did, and those that answered are connected.

        The settle time counts from the search answers (a circuit assigned to the PV), not from the
        connections, which wait for caproto's selector to take the new circuit up (up to 0.1 s)."""
        deadline = started + self._connect_timeout
        found, last_found = 0, None
        while True:
            now = time.monotonic()
            answered = sum(pv.circuit_ready.is_set() for pv in pvs)
            if answered != found:
                found, last_found = answered, now
            settled = last_found is not None and now - last_found >= self._settle_time
            connected = sum(pv.connected for pv in pvs)
            if connected == len(pvs) or now >= deadline or (settled and connected == found):
                return
            time.sleep(POLL_SECONDS)

    def _put(self, pv: PV, payload: Payload, *, written: int, total: int) -> None:
        """One put with completion; TagError naming the PV when it fails."""
        before = f"{written} of {total} values were written before it"
        try:
            response = pv.write(
                payload.data,
                wait=True,
                timeout=self._put_timeout,
                data_type=payload.data_type,
                data_count=payload.count,
            )
        except TimeoutError:
            raise TagError(
                f"{pv.name} did not confirm the put within {self._put_timeout:g} s "
                f"(refused, or its IOC is stalled); {before}"
            ) from None
        except (CaprotoError, OSError) as error:
            log.warning("tag: put to %s failed: %s", pv.name, error)
            raise TagError(f"the put to {pv.name} failed ({error}); {before}") from None
        if not response.status.success:
            raise TagError(f"{pv.name} refused the value ({response.status.name}); {before}")


def _native(pv: PV) -> tuple[ChannelType, int]:
    """The target's native data type and element count; TagError if it went away."""
    channel = pv.channel
    if channel is None:
        raise TagError(f"{pv.name} disconnected; nothing written")
    return channel.native_data_type, channel.native_data_count


@dataclass(frozen=True)
class _Kept:
    """The context of a write refused for missing PVs: its PVs are connected for the write of the others."""

    prefix: str
    context: Context
    timer: threading.Timer


def _close(context: Context) -> None:
    """Disconnect `context` (with its search socket) in a thread of its own: it joins the client's threads,
    which takes up to half a second that the command need not wait."""
    threading.Thread(target=context.disconnect, name="tag-disconnect", daemon=True).start()


def _default_context() -> Context:
    """A Channel Access client context with its own search socket.

    caproto's threading broadcaster never spawns a caproto-repeater (only the
    sync client does); it only sends a registration to a repeater if one runs.
    """
    return Context(SharedBroadcaster())
