"""PV Access: every PV of the IOC also over pvAccess, under the same name, in caproto's process and event loop.

p4p (pvxs) serves one asyncio `SharedPV` per caproto channel of the IOC (`DMagicIOC.pvdb`): numbers as
NTScalar with alarm, timeStamp and display (units, limits, description, precision; control limits too),
enums and commands as NTEnum, text as an NTScalar string (UTF-8). The caproto channel holds the one value:
each SharedPV subscribes to its channel through caproto's own subscriptions, so every change (value and
alarm), whatever made it, reaches PVA monitors as it reaches CA ones. A SharedPV opens when its first PVA client
connects, with the channel's value then (pvxs holds the client's operations until it is open): until then no
change is posted, so an IOC no PVA client uses pays nothing for PVA on its writes. A PVA put takes the path of a CA put:
the access rules by the client's address (the peer p4p gives, never a name it claims), the channel's checks
(a refusal said on Status), its putter (a command submits to the supervisor); the put completes when the
command ends, and a refusal or a failure is an error to the client at once. Each write is a line of the audit
log (`protocol=PVA`). Ports and addresses come from the EPICS_PVA*/EPICS_PVAS* variables, as pvxs reads them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from caproto import AlarmStatus, ChannelFilter, ChannelType, SubscriptionType
from caproto.server.common import SubscriptionSpec
from p4p import Value
from p4p.nt import NTEnum, NTScalar
from p4p.server import Server, StaticProvider
from p4p.server.asyncio import SharedPV

from ..app.reporting import CommandFailed
from .access import WriteAccess
from .audit import AuditLog, Write, shown_value
from .logs import RateLimitedLog
from .pvs import PutRefused

log = logging.getLogger(__name__)

NO_WRITE_ACCESS = "no write access"  # how a put the access rules refuse begins (CA's ECA_NOWTACCESS words it so)
ALARM_RECORD = 3  # NT alarm_t status RECORD: the record's own alarm; its message names CA's condition (STATE, ...)

_TEXT = NTScalar.buildType("s", display=True)
_ENUM = NTEnum.buildType(display=True)
_NUMBERS = {  # caproto's type -> the NTScalar of it, with precision (display.form) and control limits
    ChannelType.LONG: NTScalar.buildType("i", display=True, control=True, form=True),
    ChannelType.DOUBLE: NTScalar.buildType("d", display=True, control=True, form=True),
}
_EVERY_UPDATE = ChannelFilter(ts=False, dbnd=None, arr=None, sync=None)
_VALUE_AND_ALARM = SubscriptionType.DBE_VALUE | SubscriptionType.DBE_ALARM


class PvaServer:
    """The IOC's PVs over PV Access: `start()` on caproto's running event loop, `stop()` on the way out."""

    def __init__(self, pvdb: Mapping[str, Any], *, write_access: WriteAccess | None = None):
        self.pvdb = pvdb
        self.write_access = write_access  # None: every client may write, as over CA
        self.audit = AuditLog()
        self.client_lines = RateLimitedLog(log, "lines about PVA clients", per_key=5, total=30)
        self.pvs: list[MirroredPV] = []
        self._server: Server | None = None

    async def start(self) -> None:
        """Serve every channel of `pvdb`, each SharedPV subscribed to its channel. A server that cannot start
        (an EPICS_PVAS* variable it refuses) is one line: the IOC serves Channel Access on."""
        provider = StaticProvider("dmagic-ioc")
        for name, channel in self.pvdb.items():
            pv = MirroredPV(name, channel, self)
            await pv.follow()
            provider.add(name, pv.shared)
            self.pvs.append(pv)
        try:
            self._server = Server(providers=[provider])
        except Exception as error:  # pvxs says why in its own words
            log.error("PV Access not served: the server did not start: %s; Channel Access only", error)
            return
        conf = self._server.conf()
        log.info("serving %d PVs over PV Access too (TCP port %s, UDP search port %s, interfaces %s)",
                 len(self.pvs), conf.get("EPICS_PVAS_SERVER_PORT"), conf.get("EPICS_PVAS_BROADCAST_PORT"),
                 conf.get("EPICS_PVAS_INTF_ADDR_LIST"))  # fmt: skip

    def stop(self) -> None:
        """Close every PVA connection; channels keep their values (a later post goes nowhere)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            log.info("PV Access stopped")

    def refusal(self, channel, address: str, user: str | None) -> str | None:
        """Why a client at `address` claiming `user` may not write `channel`, or None when it may."""
        if channel.pvspec.read_only:
            return "the PV is read-only"
        if self.write_access is None:
            return None
        return self.write_access.refusal(address, user)

    def refused(self, write: Write, why: str) -> None:
        """A write the access rules refuse: the audit log, and a line naming the address (a bounded number)."""
        self.audit.refused(write, why)
        self.client_lines.say(write.address, "refused", "PVA write to %s refused: client at %s (user %r as it "
                              "claims): %s", write.pv, write.address, write.user, why)  # fmt: skip

    def failed(self, write: Write, error: Exception) -> None:
        """A write its channel or command refused: one line (a command's failure the supervisor has logged)."""
        if isinstance(error, CommandFailed):
            return
        if isinstance(error, PutRefused):
            self.client_lines.say(write.address, type(error).__name__, "PVA write from %s (user %r as it claims) "
                                  "refused: %s", write.address, write.user, error)  # fmt: skip
            return
        self.client_lines.say(write.address, type(error).__name__, "PVA write to %s from %s failed: %r", write.pv,
                              write.address, error, exc_info=error)  # fmt: skip


class MirroredPV:
    """One caproto channel over PV Access: a SharedPV opened at its first client, then posted on every change of
    the channel; its puts."""

    def __init__(self, name: str, channel, server: PvaServer):
        self.name, self.channel, self.server = name, channel, server
        self.states: tuple[str, ...] = tuple(getattr(channel, "enum_strings", ()) or ())
        self.is_enum = channel.data_type == ChannelType.ENUM
        self.type = _ENUM if self.is_enum else _NUMBERS.get(channel.data_type, _TEXT)
        self.shared = SharedPV(handler=self)  # opened by onFirstConnect
        self._subscription = SubscriptionSpec(db_entry=channel, data_type_name=channel.data_type.name,
                                              mask=_VALUE_AND_ALARM, channel_filter=_EVERY_UPDATE)  # fmt: skip

    async def follow(self) -> None:
        """Subscribe to the channel as a CA monitor does: caproto hands every publish to `_Posting.put`."""
        await self.channel.subscribe(_Posting(self), self._subscription, None)

    def onFirstConnect(self, pv: SharedPV) -> None:
        """The first PVA client: open the SharedPV with the channel's value now; posted on every change after."""
        if not pv.isOpen():
            pv.open(self.whole())

    def post(self) -> None:
        """A change of the channel, to PVA monitors; nothing while no PVA client has ever connected."""
        if self.shared.isOpen():
            self.shared.post(Value(self.type, self.update()))

    def whole(self) -> Value:
        """The channel now with everything that never changes: what the SharedPV opens with."""
        whole = {**self.update(), **self.metadata()}
        if self.is_enum:
            whole["value"] = {**whole["value"], "choices": list(self.states)}
        return Value(self.type, whole)

    def update(self) -> dict:
        """The value, alarm and time of the channel now, as the NT fields that change."""
        channel = self.channel
        alarm = channel.alarm
        severity, status = int(alarm.severity), int(alarm.status)
        seconds, fraction = divmod(channel.timestamp, 1.0)
        if self.is_enum:
            value: object = {"index": self.states.index(channel.value) if channel.value in self.states else 0}
        elif channel.data_type in _NUMBERS:
            value = channel.value
        else:
            value = str(channel.value)
        return {
            "value": value,
            "alarm": {"severity": severity, "status": ALARM_RECORD if severity or status else 0,
                      "message": AlarmStatus(status).name if status else ""},
            "timeStamp": {"secondsPastEpoch": int(seconds), "nanoseconds": int(fraction * 1e9)},
        }  # fmt: skip

    def metadata(self) -> dict:
        """What never changes while the IOC runs: the description, units, precision and limits."""
        channel = self.channel
        description = " ".join((channel.pvspec.doc or "").split())
        if channel.data_type not in _NUMBERS:
            return {"display": {"description": description}}
        limits = {"limitLow": channel.lower_ctrl_limit, "limitHigh": channel.upper_ctrl_limit}
        display = {**limits, "description": description, "units": channel.units or "",
                   "precision": getattr(channel, "precision", 0)}  # fmt: skip
        return {"display": display, "control": limits}

    # ------------------------------------------------------------------ a client's put

    async def put(self, pv: SharedPV, op) -> None:
        """A PVA put, as a CA put goes: access by address, the channel's checks and putter; `op.done` when it has
        ended (a command: when it ends), an error when refused or failed, never a client left waiting."""
        write = Write(self.name, "-", peer_address(op.peer()), op.account(), None, protocol="PVA")
        try:
            value = self.client_value(op.value())
            write.value = shown(value)
            why = self.server.refusal(self.channel, write.address, write.user)
            if why is not None:
                self.server.refused(write, why)
                _finish(op, f"{NO_WRITE_ACCESS}: {why}")
                return
            await self.channel.write_checked(value)
        except asyncio.CancelledError:
            write.outcome = "failed: interrupted, the IOC is stopping"
            _finish(op, "interrupted: the IOC is stopping")
            self.server.audit.finished(write)
            raise
        except Exception as error:  # refused by the channel, or the command failed: the client hears it now
            write.outcome = f"failed: {error}"
            self.server.failed(write, error)
            _finish(op, str(error) or type(error).__name__)
        else:
            _finish(op)
        self.server.audit.finished(write)

    def client_value(self, raw: Value) -> object:
        """What the client put, as a Python value for the channel's checks; None when it put no value."""
        field = "value.index" if self.is_enum else "value"
        return raw[field] if raw.changed(field) else None


class _Posting:
    """A caproto subscription queue (what `ChannelData.subscribe` takes) that posts each update to PVA."""

    def __init__(self, pv: MirroredPV):
        self.pv = pv

    async def put(self, update) -> None:
        self.pv.post()


def _finish(op, error: str | None = None) -> None:
    """End a put for its client; one whose client left (or whose server stopped) ends quietly."""
    try:
        op.done(error=error)
    except Exception as problem:
        log.debug("a PVA put's end not sent: %s", problem)


def peer_address(peer: str) -> str:
    """The address of a PVA peer as p4p gives it (`127.0.0.1:5075`, `[::1]:5075`), without its port."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")]
    if peer.count(":") == 1:
        return peer.rsplit(":", 1)[0]
    return peer


def shown(value: object) -> str:
    """A put's value as the audit log shows a CA write's: text quoted, escaped and cut; numbers as numbers."""
    if isinstance(value, str):
        return shown_value(value.encode("utf-8"), ChannelType.CHAR)
    return shown_value([value], ChannelType.DOUBLE)
