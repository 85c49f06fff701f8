"""A Channel Access client with little cost of its own, for the benchmarks that time the IOC.

Requests are built by caproto's message classes; replies are framed here with one struct (caproto's
parser costs tens of microseconds a message: a hundred monitoring circuits would time the client).
One circuit per `RawCircuit`, on a blocking socket; a `selectors` loop drives many (`pump`).
"""

from __future__ import annotations

import socket
import struct
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence

import caproto as ca

HEADER = struct.Struct(">HHHHII")  # command, payload size, data type, data count, parameter 1, parameter 2
EXTENDED = struct.Struct(">II")  # payload size and data count of a large message
VERSION = 13
DBE_VALUE_ALARM = 5
ECA_NORMAL = 1

Message = tuple[int, int, int, int, int, bytes]  # command, data type, data count, parameter 1, parameter 2, payload


def search(name: str, port: int, timeout: float = 5.0) -> tuple[tuple[str, int], float]:
    """The TCP address of the server of `name` (searched on 127.0.0.1:`port`), and the seconds the answer took."""
    broadcaster = ca.Broadcaster(our_role=ca.CLIENT)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sent = time.monotonic()
        sock.sendto(broadcaster.send(ca.VersionRequest(0, VERSION), ca.SearchRequest(name, 1, VERSION)),
                    ("127.0.0.1", port))  # fmt: skip
        while True:
            sock.settimeout(max(0.001, timeout - (time.monotonic() - sent)))
            data, address = sock.recvfrom(65536)  # TimeoutError: not answered
            for command in broadcaster.recv(data, address):
                if isinstance(command, ca.SearchResponse) and command.cid == 1:
                    host = command.ip if command.ip != "255.255.255.255" else address[0]
                    return (host, command.port), time.monotonic() - sent


class RawCircuit:
    """One circuit to a server: its channels by name; puts and reads that wait for their reply; monitors counted."""

    def __init__(self, address: tuple[str, int], names: Sequence[str], timeout: float = 10.0):
        self.sock = socket.create_connection(address, timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.sids: dict[str, int] = {}
        self.types: dict[str, int] = {}
        self.ioid = 0
        self.subscriptions: dict[int, str] = {}  # subscription id -> channel name
        self.updates: dict[str, int] = defaultdict(int)  # updates received per channel name
        self.values: dict[str, list[int]] = defaultdict(list)  # LONG values received per channel (Heartbeat)
        self.send(ca.VersionRequest(0, VERSION), ca.HostNameRequest("localhost"), ca.ClientNameRequest("bench"))
        self.send(*(ca.CreateChanRequest(name, cid, VERSION) for cid, name in enumerate(names)))
        deadline = time.monotonic() + timeout
        while len(self.sids) < len(names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"channels not created: {set(names) - set(self.sids)}")
            for command, data_type, _, cid, sid, _ in self.receive():
                if command == ca.CreateChanResponse.ID:
                    self.sids[names[cid]], self.types[names[cid]] = sid, data_type
                elif command == ca.CreateChFailResponse.ID:
                    raise ConnectionError(f"{names[cid]}: no such channel")

    def send(self, *commands) -> None:
        self.sock.sendall(b"".join(bytes(command) for command in commands))

    def receive(self) -> list[Message]:
        """What one recv brings, as whole messages (monitor updates are counted on the way)."""
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the server closed the circuit")
        self.buffer += data
        messages = list(self._frames())
        for command, _, _, _, subscription, payload in messages:
            if command == ca.EventAddResponse.ID and subscription in self.subscriptions:
                name = self.subscriptions[subscription]
                self.updates[name] += 1
                if len(payload) >= 4 and self.types[name] == ca.ChannelType.LONG:
                    self.values[name].append(struct.unpack_from(">i", payload)[0])
        return messages

    def _frames(self) -> Iterator[Message]:
        buffer, start = self.buffer, 0
        while len(buffer) - start >= HEADER.size:
            command, size, data_type, count, first, second = HEADER.unpack_from(buffer, start)
            head = HEADER.size
            if size == 0xFFFF and count == 0:
                if len(buffer) - start < head + EXTENDED.size:
                    break
                size, count = EXTENDED.unpack_from(buffer, start + head)
                head += EXTENDED.size
            if len(buffer) - start < head + size:
                break
            yield command, data_type, count, first, second, bytes(buffer[start + head : start + head + size])
            start += head + size
        del buffer[:start]

    def put(self, name: str, value: int) -> bool:
        """Put `value` with completion (as an enum index); True when it succeeded."""
        self.ioid += 1
        ioid = self.ioid
        self.send(ca.WriteNotifyRequest(data=[value], data_type=ca.ChannelType.ENUM, data_count=1,
                                        sid=self.sids[name], ioid=ioid))  # fmt: skip
        while True:
            for command, _, _, status, second, payload in self.receive():
                if command == ca.WriteNotifyResponse.ID and second == ioid:
                    return status == ECA_NORMAL
                if command == ca.ErrorResponse.ID and HEADER.unpack_from(payload)[5] == ioid:
                    return False  # libca takes the error as the put's end; the WRITE_NOTIFY reply follows

    def read(self, name: str) -> bytes:
        """Read `name` in its native type; its payload."""
        self.ioid += 1
        ioid = self.ioid
        self.send(ca.ReadNotifyRequest(data_type=self.types[name], data_count=0, sid=self.sids[name], ioid=ioid))
        while True:
            for command, _, _, _, second, payload in self.receive():
                if command == ca.ReadNotifyResponse.ID and second == ioid:
                    return payload

    def subscribe(self, *names: str) -> None:
        """Monitor `names` (value and alarm changes), in their native types."""
        for name in names:
            subscription = len(self.subscriptions) + 1
            self.subscriptions[subscription] = name
            self.send(ca.EventAddRequest(data_type=self.types[name], data_count=0, sid=self.sids[name],
                                         subscriptionid=subscription, low=0, high=0, to=0,
                                         mask=DBE_VALUE_ALARM))  # fmt: skip

    def close(self) -> None:
        self.sock.close()
