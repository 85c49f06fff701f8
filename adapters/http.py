"""Bounded HTTP calls: a deadline for the whole call, a cap on the answer's size, no redirect followed.

Every outside call made with requests goes through `bounded_request` (or, for a library that drives its
own requests.Session, through a `BoundedAdapter` mounted on it), because requests alone is
unsafe with a credential: it follows a redirect with a POST's body (a login's password) to wherever
`Location` points, its `timeout` is per read (a server sending a byte every few seconds holds a call
for ever), and it reads an answer of any size whole into memory. Here a redirect is a failure; the
answer is read in chunks up to a cap; and a watchdog shuts the call's socket down when the deadline
passes, whatever the call is doing then (connecting, TLS, headers, body).

The one step the deadline does not cover is the host name's lookup: getaddrinfo runs before the call
has a socket to shut down, and it cannot be interrupted. It is bounded by the system resolver's own
limits (resolv.conf `options timeout:N attempts:N`, per name server; glibc's defaults are 5 s and 2
tries); the IOC makes these calls in worker threads, so a slow lookup never blocks its event loop.
A service given by address, or by a name in /etc/hosts, has no lookup to wait for.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MB = 1024 * 1024
CHUNK = 64 * 1024  # bytes read at a time: the answer never goes past its cap by more


@dataclass(frozen=True)
class Answer:
    """A complete answer, read within the deadline and the cap."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    def json(self) -> object:
        """The body as JSON (JSON's own UTF-8 detection, not a guessed charset); ValueError if it is none."""
        try:
            return json.loads(self.body)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


class HttpFailure(Exception):
    """No usable answer. The message ends a sentence whose subject is the service: f"{service} {error}"."""


class NotReached(HttpFailure):
    """The connection failed (refused, reset, unknown host, TLS); `reason` says how in a few words."""

    def __init__(self, reason: str):
        super().__init__(f"could not be reached: {reason}")
        self.reason = reason


class TooSlow(HttpFailure):
    """The whole answer had not come when the deadline passed."""

    def __init__(self, seconds: float):
        super().__init__(f"did not answer within {seconds:g} s")
        self.seconds = seconds


class Redirected(HttpFailure):
    """The service answered with a redirect: never followed (the request may carry a credential)."""

    def __init__(self, status: int, location: str):
        target = urlsplit(location).netloc or "the same host"
        super().__init__(f"answered HTTP {status} (a redirect to {target}): redirects are not followed")
        self.status = status


class TooLarge(HttpFailure):
    """The answer is larger than the cap: refused, and its connection closed."""

    def __init__(self, max_bytes: int):
        super().__init__(f"sent more than {_size(max_bytes)}: the answer was refused")
        self.max_bytes = max_bytes


def bounded_request(
    session: requests.Session, method: str, url: str, *, deadline: float, max_bytes: int, **kwargs: Any
) -> Answer:
    """One call of `session` (`kwargs` as for `requests.request`), complete within `deadline` seconds
    and `max_bytes`. Raises HttpFailure: NotReached, TooSlow, Redirected or TooLarge."""
    _watch_connections(session)
    send = functools.partial(session.request, method, url, allow_redirects=False, stream=True, **kwargs)
    response, body = _bounded(send, deadline, max_bytes)
    return Answer(response.status_code, response.headers, body)


def _bounded(
    send: Callable[..., requests.Response], deadline: float, max_bytes: int
) -> tuple[requests.Response, bytes]:
    """`send(timeout=...)`, a streamed request on watched connections that follows no redirect, and the
    body of its answer, within `deadline` seconds (but for the host name's lookup: see the module's
    docstring) and `max_bytes`. Raises HttpFailure."""
    with _Watchdog(deadline) as watchdog:
        try:
            response = send(timeout=(watchdog.left(), watchdog.left()))
            try:
                if response.is_redirect:
                    raise Redirected(response.status_code, response.headers.get("Location", ""))
                body = _read(response, max_bytes, watchdog)
            finally:
                response.close()  # read to its end: back to the pool; else the connection is closed
        except requests.RequestException as error:
            if watchdog.expired or isinstance(error, requests.Timeout):
                raise TooSlow(deadline) from None
            raise NotReached(_connection_reason(error)) from None
        if watchdog.expired:  # the socket was shut down: what came may be cut short
            raise TooSlow(deadline)
    return response, body


def _read(response: requests.Response, max_bytes: int, watchdog: _Watchdog) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(max_bytes)
    body = bytearray()
    for chunk in response.iter_content(CHUNK):  # decoded: a compressed answer is capped as it unpacks
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(max_bytes)
        if watchdog.expired:
            raise TooSlow(watchdog.seconds)
    return bytes(body)


def _size(count: int) -> str:
    return f"{count / MB:g} MB" if count >= MB else f"{count} bytes"


# --------------------------------------------------------------------------
# The watchdog: the connections of a call report their sockets to it; at the deadline it shuts them down.

_running = threading.local()  # .watchdog: the call running in this thread, if any


class _Watchdog:
    """Shuts down the sockets of the call running in this thread once `seconds` have passed."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._ends = time.monotonic() + seconds
        self._handles: list[socket.socket] = []  # duplicates of the call's sockets, closed at its end
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        _running.watchdog = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _running.watchdog = None
        self._timer.cancel()
        with self._lock:
            self._ends = 0.0  # a late timer finds nothing to shut
            for handle in self._handles:
                handle.close()
            self._handles.clear()

    def left(self) -> float:
        """Seconds to the deadline: the cap of each connect and read timeout."""
        return max(self._ends - time.monotonic(), 0.001)

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (through a duplicate: the call may close or wrap `sock` meanwhile)."""
        with self._lock:
            handle = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
            self._handles.append(handle)
            if self.expired:
                _shut(handle)

    def _expire(self) -> None:
        with self._lock:
            if not self._ends:
                return
            self.expired = True
            for handle in self._handles:
                _shut(handle)


def _shut(handle: socket.socket) -> None:
    with contextlib.suppress(OSError):
        handle.shutdown(socket.SHUT_RDWR)  # a blocked read returns at once, in whichever thread


def _watched(sock: socket.socket) -> socket.socket:
    watchdog = getattr(_running, "watchdog", None)
    if watchdog is not None:
        watchdog.watch(sock)
    return sock


class _WatchedHTTPConnection(HTTPConnection):
    """A connection that reports its socket to the running call's watchdog: when made, and when reused."""

    def _new_conn(self) -> socket.socket:
        # Watched once made: the lookup and connect before are bounded by the resolver and by the
        # connect timeout (the time left to the deadline), not by the watchdog.
        return _watched(super()._new_conn())

    def request(self, *args: Any, **kwargs: Any) -> None:
        if self.sock is not None:  # a kept-alive connection, made by an earlier call
            _watched(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' transport with watched connections, direct or through an HTTP proxy."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(*args, **kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class BoundedAdapter(_WatchedAdapter):
    """requests' transport for a library that drives its own requests.Session (globus-sdk): mounted on
    that session, it sends each request as `bounded_request` does, whatever the library asks for (a
    redirect followed, a timeout per read, an answer read whole). A failure is raised as a
    `BoundedCallFailed`, a requests exception, so that the library's handling of network errors applies."""

    def __init__(self, deadline: float, max_bytes: int):
        super().__init__()
        self.deadline = deadline
        self.max_bytes = max_bytes

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """The answer to `request`, read whole within the deadline and the cap (`stream` and `timeout` are
        those; a Session follows no redirect from here: a redirect is a failure)."""
        send = functools.partial(super().send, request, stream=True, verify=verify, cert=cert, proxies=proxies)
        try:
            response, body = _bounded(send, self.deadline, self.max_bytes)
        except HttpFailure as failure:
            raise BoundedCallFailed(failure, request=request) from None
        return _with_body(response, body)


class BoundedCallFailed(requests.RequestException):
    """An HttpFailure of a request sent through a BoundedAdapter; `failure` says which."""

    def __init__(self, failure: HttpFailure, request: requests.PreparedRequest):
        super().__init__(str(failure), request=request)
        self.failure = failure


def _with_body(response: requests.Response, body: bytes) -> requests.Response:
    """`response` with `body`, read already (and decoded, so no Content-Encoding any more), served from memory."""
    served = requests.Response()
    served.status_code, served.reason, served.url = response.status_code, response.reason, response.url
    served.request, served.connection, served.cookies = response.request, response.connection, response.cookies
    served.headers = CaseInsensitiveDict(response.headers)
    served.headers.pop("Content-Encoding", None)
    served.encoding = response.encoding
    served.raw = io.BytesIO(body)
    return served


def _watch_connections(session: requests.Session) -> None:
    """Give `session` watched connections (once; its other settings, TLS verification included, stay)."""
    for prefix in ("https://", "http://"):
        if not isinstance(session.adapters.get(prefix), _WatchedAdapter):
            session.mount(prefix, _WatchedAdapter())


def _connection_reason(error: requests.RequestException) -> str:
    """The root cause of a connection failure, in a few words."""
    tls = isinstance(error, requests.exceptions.SSLError)
    reason = _root_cause(error)
    return f"TLS failed ({reason})" if tls else reason


def _root_cause(error: BaseException) -> str:
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for kind, reason in _REASONS.items():
            if isinstance(current, kind):
                return reason
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return "connection failed"


_REASONS: dict[type[BaseException], str] = {
    ConnectionRefusedError: "connection refused",
    socket.gaierror: "unknown host name",
    ssl.SSLCertVerificationError: "certificate not trusted",
    ConnectionResetError: "connection reset",
}
