"""Globus clients acting as the IOC's confidential client, and what the access and transfer adapters share.

Both adapters act as a confidential client (client credentials grant); the
secret is read from its file on first use and never logged.

Service URLs: globus-sdk resolves each service's base URL from the
`GLOBUS_SDK_ENVIRONMENT` (production, preview, ...) and, ahead of it,
`GLOBUS_SDK_SERVICE_URL_<SERVICE>` environment variables (`..._AUTH`,
`..._TRANSFER`, `..._APP`); tests point those at a local server.

Every request carries a credential (the client secret, or a token), and
globus-sdk on its own follows redirects (requests re-sends the Authorization
header to the same host), times out per read (60 s) and reads answers of any
size. Here each request is bounded as `http.bounded_request` bounds the other
services' calls: no redirect followed (a failure naming it), a deadline for
the whole request, a cap on the answer; and only a failed connection or an
answer Globus marks as transient is retried, a bounded number of times.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import globus_sdk
from globus_sdk.scopes import AuthScopes, TransferScopes
from globus_sdk.transport import RequestsTransport, RetryCheckResult, RetryConfig, RetryContext

from ...ioc.domain.errors import GlobusError, InputError
from ...ioc.secrets import read_secret
from ..http import MB, BoundedAdapter, BoundedCallFailed, NotReached

log = logging.getLogger(__name__)

APP_NAME = "dmagic-ioc"
ANSWER_CAP = 16 * MB  # the largest answer read: a collection's access list of thousands of rules is a few MB
RETRY_SLEEP = 10.0  # seconds at most between two tries, whatever a Retry-After header asks


def collection_path(storage_root: PurePath | str, directory: PurePath | str) -> str:
    """`/gdata/dm/2BM/2026-03/exp` -> `/2026-03/exp/`: the folder as the guest
    collection rooted at `storage_root` sees it (leading and trailing slash)."""
    root, path = PurePosixPath(storage_root), PurePosixPath(directory)
    if not str(directory) or not path.is_absolute():
        raise GlobusError(f"Globus: {str(directory)!r} is not an absolute storage directory")
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise GlobusError(
            f"Globus: {path} is not under dm.storage_root {root}, which the guest collection exposes"
        ) from None
    if not relative.parts or ".." in relative.parts:
        raise GlobusError(f"Globus: refusing to share {path}: it must be a folder below dm.storage_root {root}")
    return f"/{relative.as_posix()}/"


def describe_error(error: Exception) -> str:
    """A short reason for Status: HTTP status, Globus code and message; never tokens."""
    cause = error.underlying_exception if isinstance(error, globus_sdk.NetworkError) else None
    if isinstance(cause, BoundedCallFailed):
        failure = cause.failure
        return f"cannot reach Globus ({failure.reason})" if isinstance(failure, NotReached) else f"Globus {failure}"
    if isinstance(error, globus_sdk.GlobusAPIError):
        message = " ".join((error.message or "").split())
        if len(message) > 160:
            message = message[:157] + "..."
        reason = f"{error.http_status} {_error_code(error)}"
        return f"{reason}: {message}" if message else reason
    if isinstance(error, globus_sdk.GlobusTimeoutError):
        return "no answer from Globus (timeout)"
    if isinstance(error, globus_sdk.NetworkError):
        return "cannot reach Globus (connection failed)"
    return type(error).__name__


def _error_code(error: globus_sdk.GlobusAPIError) -> str:
    """The Globus error code, or the OAuth `error` field Auth's token endpoint uses."""
    body = error.raw_json if isinstance(error.raw_json, dict) else {}
    return error.code or str(body.get("error") or "Error")


def is_permanent(error: Exception) -> bool:
    """A 4xx other than 429 will not go away by retrying."""
    return isinstance(error, globus_sdk.GlobusAPIError) and 400 <= error.http_status < 500 and error.http_status != 429


class Clients:
    """Auth and Transfer clients acting as the confidential client, built on first use."""

    def __init__(
        self,
        client_id: str,
        client_secret_file: Path | None,
        *,
        max_retries: int,
        timeout: float,
        auth_client: globus_sdk.AuthClient | None = None,
        transfer_client: globus_sdk.TransferClient | None = None,
    ):
        self._client_id = client_id
        self._secret_file = client_secret_file
        self._max_retries = max_retries
        self._timeout = timeout
        self._auth = auth_client
        self._transfer = transfer_client
        self._login: globus_sdk.ConfidentialAppAuthClient | None = None
        self._lock = threading.Lock()

    def _confidential(self) -> globus_sdk.ConfidentialAppAuthClient:
        if self._login is None:
            if self._secret_file is None:
                raise GlobusError("Globus: globus.client_secret_file is not set")
            try:
                secret = read_secret("globus.client_secret_file", Path(self._secret_file))
            except InputError as error:
                raise GlobusError(f"Globus: {error}") from None
            self._login = globus_sdk.ConfidentialAppAuthClient(
                self._client_id, secret, app_name=APP_NAME, **self._transport_options()
            )
        return self._login

    def _transport_options(self) -> dict[str, Any]:
        return {"transport": BoundedTransport(self._timeout), "retry_config": retry_config(self._max_retries)}

    def auth(self) -> globus_sdk.AuthClient:
        with self._lock:
            if self._auth is None:
                authorizer = self._authorizer(AuthScopes.view_identities)
                self._auth = globus_sdk.AuthClient(
                    authorizer=authorizer, app_name=APP_NAME, **self._transport_options()
                )
            return self._auth

    def transfer(self) -> globus_sdk.TransferClient:
        with self._lock:
            if self._transfer is None:
                authorizer = self._authorizer(TransferScopes.all)
                self._transfer = globus_sdk.TransferClient(
                    authorizer=authorizer, app_name=APP_NAME, **self._transport_options()
                )
            return self._transfer

    def _authorizer(self, scope: Any) -> globus_sdk.ClientCredentialsAuthorizer:
        """Renewing client-credentials tokens; the first one is fetched now."""
        try:
            return globus_sdk.ClientCredentialsAuthorizer(self._confidential(), scope)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as error:
            if isinstance(error, globus_sdk.GlobusAPIError) and error.http_status in (400, 401, 403):
                self._login = None  # read the secret file again next time: it may have been fixed
                raise GlobusError(
                    f"Globus Auth refused the client credentials ({error.http_status} {_error_code(error)}); "
                    "check globus.client_id and globus.client_secret_file"
                ) from None
            raise GlobusError(f"Globus: cannot get a token: {describe_error(error)}") from None


# globus-sdk 4's API (4.10 here): a client takes a `transport` (a RequestsTransport, which sends each
# request, and each retry, through its `session`) and a `retry_config` (RetryConfig), to which it appends
# its default retry checks after those already registered.


class BoundedTransport(RequestsTransport):
    """globus-sdk's transport with every request bounded by an `http.BoundedAdapter`: no redirect
    followed, `deadline` seconds for the whole request (not per read), at most `max_bytes` of answer."""

    def __init__(self, deadline: float, max_bytes: int = ANSWER_CAP):
        super().__init__(http_timeout=deadline)
        adapter = BoundedAdapter(deadline, max_bytes)
        for prefix in ("https://", "http://"):
            self.session.mount(prefix, adapter)


def retry_config(max_retries: int) -> RetryConfig:
    """At most `max_retries` retries, at most RETRY_SLEEP seconds apart; a refused answer is not retried."""
    config = RetryConfig(max_retries=max_retries, max_sleep=RETRY_SLEEP)
    config.checks.register_check(_refused_answers_are_final)  # ahead of globus-sdk's, which retry any network error
    return config


def _refused_answers_are_final(context: RetryContext) -> RetryCheckResult:
    """A redirect, a too large or too slow answer would come again: only a failed connection is tried again."""
    if isinstance(context.exception, BoundedCallFailed) and not isinstance(context.exception.failure, NotReached):
        return RetryCheckResult.do_not_retry
    return RetryCheckResult.no_decision
