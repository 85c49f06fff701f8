"""The UDP name-search socket, read until empty at each wake-up (see the package's note 3)."""

from __future__ import annotations

import asyncio
import logging
import socket

import caproto as ca

log = logging.getLogger(__name__)

SEARCH_RECEIVE_BUFFER = 4 << 20  # bytes asked for the search socket (Linux caps it at net.core.rmem_max)
SEARCH_BATCH = 256  # datagrams read per wake-up at most, so that other work keeps its turn


class SearchSocket:
    """A UDP search socket read until empty (at most SEARCH_BATCH datagrams) each time it is readable.

    It feeds caproto's broadcaster queue as caproto's own datagram protocol
    does, and offers what caproto uses of its socket wrapper: `sendto`, `close`.
    """

    batch = SEARCH_BATCH

    def __init__(self, sock: socket.socket, interface: str, queue):
        self.sock = sock
        self.interface = interface
        self.queue = queue
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        for _ in range(self.batch):
            try:
                data, address = self.sock.recvfrom(ca.MAX_UDP_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # caproto's receive loop decides what to do (it re-creates the socket)
                self.queue.put((self.interface, error, None))
                return
            if data:
                self.queue.put((self.interface, data, address))

    async def sendto(self, data: bytes, address) -> None:
        try:
            self.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            log.debug("search reply to %s:%d dropped: socket buffer full (the client searches again)", *address)
        except OSError as error:
            raise ca.CaprotoNetworkError(f"Failed to send to {address[0]}:{address[1]}") from error

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
