"""Hostile HTTP servers against every HTTP client of the IOC that carries a credential (SciCat, APS scheduling).

Each server is a few lines of raw sockets on 127.0.0.1, so that it can do what no well-behaved framework
does: drip one byte at a time (in the headers or in the body), redirect the login to another server that
records what it gets, or stream an answer of 200 MB made chunk by chunk (never held in memory). Every
call must end within its deadline, refuse the redirect without sending anything there, and stop reading
at its cap with the process's memory bounded.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dmagic_ioc.adapters.aps_scheduling import ApsScheduling
from dmagic_ioc.adapters.http import MB
from dmagic_ioc.adapters.scicat.client import ScicatClient
from dmagic_ioc.ioc.domain.errors import ServiceError

from ..helpers import wait_for

pytestmark = pytest.mark.faults

USER, PASSWORD = "ingestor", "Xy9-unlikely-Pa55word"
DEADLINE = 1.0  # seconds: each client's timeout here
DRIP = 0.05  # seconds between two bytes of a dripping server
HUGE = 200 * MB


class Hostile:
    """A raw HTTP server on 127.0.0.1: `answer(server, connection)` writes what it likes to each client.

    It records every request it receives (headers and body, raw) and counts the bytes it sent."""

    def __init__(self, answer: Callable[[Hostile, socket.socket], None]):
        self.answer = answer
        self.received: list[bytes] = []
        self.sent = 0
        self.answered = threading.Event()  # set once an answer has ended (the client went, or it was all sent)
        self.stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, name="hostile-http", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        self.sent += len(data)

    def close(self) -> None:
        self.stopped.set()
        self._listener.close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection: socket.socket) -> None:
        with connection:
            self.received.append(_request(connection))
            with contextlib.suppress(OSError):  # the client hung up: that is the point
                self.answer(self, connection)
            self.answered.set()


def _request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length:
        body += connection.recv(65536) or b" " * length
    return head + b"\r\n\r\n" + body


def drip_in_the_headers(server: Hostile, connection: socket.socket) -> None:
    server.send(connection, b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not server.stopped.is_set():  # a header line that never ends: 20 bytes a second
        server.send(connection, b"x")
        time.sleep(DRIP)


def drip_in_the_body(server: Hostile, connection: socket.socket) -> None:
    server.send(connection, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[")
    while not server.stopped.is_set():
        server.send(connection, b" ")
        time.sleep(DRIP)


def huge(declared: bool) -> Callable[[Hostile, socket.socket], None]:
    """200 MB of answer, made chunk by chunk; with its Content-Length declared, or read until the end."""

    def answer(server: Hostile, connection: socket.socket) -> None:
        length = f"Content-Length: {HUGE}\r\n" if declared else "Connection: close\r\n"
        server.send(connection, f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{length}\r\n".encode())
        chunk = b"[" + b" " * (64 * 1024 - 1)
        while server.sent < HUGE and not server.stopped.is_set():
            server.send(connection, chunk)

    return answer


def redirect_to(target: Hostile) -> Callable[[Hostile, socket.socket], None]:
    def answer(server: Hostile, connection: socket.socket) -> None:
        server.send(connection, f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target.url}/api/v3/auth/login\r\n"
                                "Content-Length: 0\r\n\r\n".encode())  # fmt: skip

    return answer


def answer_ok(server: Hostile, connection: socket.socket) -> None:
    body = json.dumps({"access_token": "stolen", "id": "stolen"}).encode()
    server.send(connection, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture
def credentials(tmp_path) -> Path:
    path = tmp_path / "service.cred"
    path.write_text(f"{USER}|{PASSWORD}\n")
    path.chmod(0o600)
    return path


def scicat(url: str, credentials: Path) -> None:
    """The catalogue's first call: its login (POST, the password in the body)."""
    ScicatClient(f"{url}/api/v3", credentials, timeout=DEADLINE).has_dataset("20.500.12269/p-1")


def scheduling(url: str, credentials: Path) -> None:
    """The scheduling refresh's first call (GET, the password in a Basic header)."""
    ApsScheduling(url, "2-BM-A,B", credentials, DEADLINE, ZoneInfo("America/Chicago")).runs()


CLIENTS = [pytest.param(scicat, id="scicat"), pytest.param(scheduling, id="scheduling")]


def failure(call: Callable[[str, Path], None], server: Hostile, credentials: Path) -> tuple[str, float]:
    """The message `call` failed with against `server`, and how many seconds it took."""
    started = time.monotonic()
    with pytest.raises(ServiceError) as raised:
        call(server.url, credentials)
    return str(raised.value), time.monotonic() - started


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("drip", [drip_in_the_headers, drip_in_the_body])
def test_a_server_dripping_a_byte_at_a_time_is_cut_at_the_deadline_of_the_whole_call(client, drip, credentials):
    with Hostile(drip) as server:
        message, seconds = failure(client, server, credentials)
        assert "did not answer within 1 s" in message, message
        assert seconds < 10  # the server would drip for hours (a per-read timeout never fires)
        assert not server.answered.is_set() and server.sent > 5  # it was still dripping when the call gave up


@pytest.mark.parametrize("client", CLIENTS)
def test_a_redirect_is_refused_and_the_credential_goes_nowhere_else(client, credentials):
    with Hostile(answer_ok) as elsewhere, Hostile(redirect_to(elsewhere)) as server:
        message, _ = failure(client, server, credentials)
        assert f"answered HTTP 307 (a redirect to 127.0.0.1:{elsewhere.port}): redirects are not followed" in message
        assert elsewhere.received == []
        (request,) = server.received  # the configured host got the credential, once; the other one nothing
        assert PASSWORD.encode() in request or b"Authorization: Basic " in request


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-closed"])
def test_a_huge_answer_is_refused_at_the_cap_and_the_connection_closed(client, declared, credentials):
    with Hostile(huge(declared)) as server:
        message, _ = failure(client, server, credentials)
        assert "sent more than 16 MB: the answer was refused" in message, message
        wait_for(server.answered.is_set, what="the server to find the connection closed")
        assert server.sent < 16 * MB + 32 * MB  # the cap, and what the sockets' buffers took in; not 200 MB


RSS_PROBE = """
import json, resource, sys
from pathlib import Path
from dmagic_ioc.adapters.scicat.client import ScicatClient
from dmagic_ioc.ioc.domain.errors import CatalogError

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

client = ScicatClient(sys.argv[1], Path(sys.argv[2]), timeout=60)
before = peak_mb()
try:
    client.has_dataset("p")
    outcome = "answered"
except CatalogError as error:
    outcome = str(error)
pages = int(open("/proc/self/statm").read().split()[1])
print(json.dumps({"peak_before": before, "peak_after": peak_mb(), "rss_after": pages * resource.getpagesize() / 2**20,
                  "outcome": outcome}))
"""


def test_a_huge_answer_leaves_the_process_memory_bounded(credentials):
    """In a process of its own (ru_maxrss is the process's peak): 200 MB offered, at most the cap held."""
    with Hostile(huge(declared=False)) as server:
        probe = subprocess.run([sys.executable, "-c", RSS_PROBE, f"{server.url}/api/v3", str(credentials)],
                               capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    measured = json.loads(probe.stdout)
    assert "sent more than 16 MB" in measured["outcome"], measured
    assert measured["peak_after"] - measured["peak_before"] < 64, measured  # MB: the cap twice at most, not 200
    assert measured["rss_after"] < measured["peak_before"] + 40, measured
