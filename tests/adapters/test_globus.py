"""Globus adapters against a local stand-in for the Auth and Transfer APIs.

The real globus-sdk clients are used; `GLOBUS_SDK_SERVICE_URL_AUTH` and
`GLOBUS_SDK_SERVICE_URL_TRANSFER` point them (token request included) at a
pytest-httpserver on 127.0.0.1 that keeps rules and tasks like the services do.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import logging
import re
import threading
import urllib.parse
from collections import Counter
from dataclasses import replace
from functools import partial
from pathlib import Path

import globus_sdk
import pytest
from dmagic_ioc.adapters.globus.access import GlobusAccess
from dmagic_ioc.adapters.globus.client import collection_path
from dmagic_ioc.adapters.globus.transfer import GlobusTransfer
from dmagic_ioc.adapters.http import MB
from dmagic_ioc.ioc.domain.errors import GlobusError
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.domain.ports import TransferState
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from .. import helpers
from ..faults.test_http_attacks import Hostile, answer_ok, drip_in_the_body, drip_in_the_headers, huge, redirect_to

wait_for = partial(helpers.wait_for, interval=0.01)  # every 10 ms: the fake service answers at once

CLIENT_ID = "5b8a3c1e-0000-4000-8000-00000000c11e"
SECRET = "s3cr3t-Value-that-must-never-show"
COLLECTION = "aa11bb22-0000-4000-8000-0000000c011e"
SOURCE = "cc33dd44-0000-4000-8000-00000005041c"
STORAGE_ROOT = "/gdata/dm/2BM"
EXPERIMENT = Experiment(
    name="2026-03-Smith-1",
    storage_directory=f"{STORAGE_ROOT}/2026-03/2026-03-Smith-1",
    data_directory="/data3/2BM/2026-03-Smith-1",
)
EXPERIMENT_PATH = "/2026-03/2026-03-Smith-1/"

ANN = ExperimentUser("d1001", "Ann Smith", "ann@uni.edu")
BOB = ExperimentUser("d1002", "Bob Jones", "Bob@Lab.org")
CARL = ExperimentUser("d1003", "Carl No-Mail", "")
DORA = ExperimentUser("d1004", "Dora Lee", "dora@uni.edu")


class FakeGlobus:
    """Just enough of Globus Auth and Transfer, with failures on demand."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.tokens: set[str] = set()
        self.identities: dict[str, str] = {}  # lower-case username -> id
        self.unknown_users: set[str] = set()  # usernames Auth cannot provision
        self.missing_folders: set[str] = set()  # folders absent on the source collection
        self.rules: dict[str, dict] = {}
        self.tasks: dict[str, dict] = {}
        self.submissions: list[dict] = []
        self.cancelled: list[str] = []
        self.calls: Counter = Counter()
        self.fail: dict[tuple[str, str], set[int]] = {}  # (method, handler) -> call numbers answered 500
        self.fail_after: dict[tuple[str, str], set[int]] = {}  # the same, but done before answering 502
        self.new_task_status = "ACTIVE"
        self.new_task_counts = {"files": 10, "files_transferred": 4, "files_skipped": 1, "bytes_transferred": 4e6}
        self.to_move: list[str] = []  # destination paths the next task moves (a checksum sync: once each)
        self.moved: dict[str, list[str]] = {}  # task id -> the destination paths it moved
        self.page_size = 2  # successful transfers per page
        self.completed_at = "2026-03-02T10:00:00+00:00"  # completion_time of the tasks that end
        self.compress = False  # gzip the answers to clients that accept it

    # ---- helpers for tests

    def identity(self, email: str) -> str:
        return self.identities[email.lower()]

    def add_rule(self, principal: str, path: str, permissions: str = "r") -> str:
        rule_id = f"rule-{next(self.ids)}"
        self.rules[rule_id] = {
            "DATA_TYPE": "access",
            "id": rule_id,
            "principal_type": "identity",
            "principal": principal,
            "path": path,
            "permissions": permissions,
        }
        return rule_id

    def set_task(self, task_id: str, **fields):
        with self.lock:
            self.tasks[task_id].update(fields)

    # ---- the HTTP side

    def handle(self, request: Request) -> Response:
        with self.lock:
            response = self._route(request)
        if self.compress and "gzip" in request.headers.get("Accept-Encoding", ""):
            response.set_data(gzip.compress(response.get_data()))
            response.headers["Content-Encoding"] = "gzip"
        return response

    def _route(self, request: Request) -> Response:
        method, path = request.method, request.path
        routes = [
            ("POST", r"/auth/v2/oauth2/token", self._token, False),
            ("GET", r"/auth/v2/api/identities", self._identities, True),
            ("GET", rf"/transfer/v0\.10/endpoint/{COLLECTION}/access_list", self._list_rules, True),
            ("POST", rf"/transfer/v0\.10/endpoint/{COLLECTION}/access", self._create_rule, True),
            ("DELETE", rf"/transfer/v0\.10/endpoint/{COLLECTION}/access/(?P<id>[^/]+)", self._delete_rule, True),
            ("GET", r"/transfer/v0\.10/submission_id", self._submission_id, True),
            ("POST", r"/transfer/v0\.10/transfer", self._submit, True),
            ("GET", r"/transfer/v0\.10/task/(?P<id>[^/]+)", self._get_task, True),
            ("GET", r"/transfer/v0\.10/task/(?P<id>[^/]+)/successful_transfers", self._successful_transfers, True),
            ("POST", r"/transfer/v0\.10/task/(?P<id>[^/]+)/cancel", self._cancel, True),
            ("GET", rf"/transfer/v0\.10/operation/endpoint/{SOURCE}/ls", self._ls, True),
        ]
        for route_method, pattern, handler, needs_token in routes:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                key = (method, pattern)
                self.calls[key] += 1
                self.calls[handler.__name__] += 1
                if self.calls[key] in self.fail.get((method, handler.__name__), set()):
                    return _json({"code": "ServerError", "message": "An unexpected error occurred"}, 500)
                if needs_token and request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
                    return _json({"code": "AuthenticationFailed", "message": "Token is not active"}, 401)
                response = handler(request, **match.groupdict())
                if self.calls[key] in self.fail_after.get((method, handler.__name__), set()):
                    return _json({"code": "ServerError", "message": "Done, but the answer was lost"}, 502)
                return response
        return _json({"code": "NotFound", "message": f"no route {method} {path}"}, 404)

    def _token(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return _json({"error": "invalid_client"}, 401)
        scope = request.form["scope"]
        server = "transfer.api.globus.org" if "transfer" in scope else "auth.globus.org"
        token = f"token-{server}-{next(self.ids)}"
        self.tokens.add(token)
        return _json(
            {
                "access_token": token,
                "expires_in": 172800,
                "resource_server": server,
                "scope": scope,
                "token_type": "Bearer",
                "other_tokens": [],
            }
        )

    def _identities(self, request: Request) -> Response:
        assert request.args.get("provision") == "true"
        found = []
        for username in request.args["usernames"].split(","):
            if username.lower() in self.unknown_users:
                continue
            identity = self.identities.setdefault(username.lower(), f"identity-{next(self.ids)}")
            found.append({"id": identity, "username": username.lower(), "status": "unused"})
        return _json({"identities": found})

    def _list_rules(self, request: Request) -> Response:
        return _json({"DATA_TYPE": "access_list", "DATA": list(self.rules.values()), "length": len(self.rules)})

    def _create_rule(self, request: Request) -> Response:
        rule = request.get_json()
        rule_id = self.add_rule(rule["principal"], rule["path"], rule["permissions"])
        self.rules[rule_id]["sent"] = rule
        return _json({"DATA_TYPE": "access_create_result", "code": "Created", "access_id": rule_id}, 201)

    def _delete_rule(self, request: Request, id: str) -> Response:
        if self.rules.pop(id, None) is None:
            return _json({"code": "AccessRuleNotFound", "message": f"Access rule '{id}' not found"}, 404)
        return _json({"DATA_TYPE": "result", "code": "Deleted", "message": "Access rule deleted"})

    def _submission_id(self, request: Request) -> Response:
        return _json({"value": f"submission-{next(self.ids)}"})

    def _submit(self, request: Request) -> Response:
        document = request.get_json()
        for task_id, task in self.tasks.items():  # Globus makes one task per submission id
            if task["submission_id"] == document["submission_id"]:
                return _json({"DATA_TYPE": "transfer_result", "code": "Duplicate", "task_id": task_id}, 200)
        self.submissions.append(document)
        task_id = f"task-{next(self.ids)}"
        self.tasks[task_id] = {
            "DATA_TYPE": "task",
            "task_id": task_id,
            "submission_id": document["submission_id"],
            "status": self.new_task_status,
            "nice_status": "OK" if self.new_task_status == "ACTIVE" else None,
            "effective_bytes_per_second": 2e6,
            **self.new_task_counts,
        }
        if self.new_task_status == "FAILED":
            self.tasks[task_id]["fatal_error"] = {"code": "PERMISSION_DENIED", "description": "permission denied"}
        if self.new_task_status != "ACTIVE":
            self.tasks[task_id]["completion_time"] = self.completed_at
        self.moved[task_id], self.to_move = self.to_move, []
        return _json({"DATA_TYPE": "transfer_result", "code": "Accepted", "task_id": task_id}, 202)

    def _ls(self, request: Request) -> Response:
        if request.args["path"] in self.missing_folders:
            return _json({"code": "ClientError.NotFound", "message": "Directory not found"}, 404)
        return _json({"DATA_TYPE": "file_list", "DATA": [], "path": request.args["path"]})

    def _get_task(self, request: Request, id: str) -> Response:
        return _json(self.tasks[id])

    def _successful_transfers(self, request: Request, id: str) -> Response:
        """One page of what task `id` moved, as `next_marker` pages it; refused while the task runs."""
        if self.tasks[id]["status"] not in ("SUCCEEDED", "FAILED"):
            return _json({"code": "ClientError.BadRequest", "message": "Task is not complete"}, 400)
        start = int(request.args.get("marker") or 0)
        moved = self.moved.get(id, [])
        page = [{"DATA_TYPE": "successful_transfer", "source_path": f"/src{path}", "destination_path": path}
                for path in moved[start : start + self.page_size]]  # fmt: skip
        more = start + self.page_size < len(moved)
        body = {
            "DATA_TYPE": "successful_transfers",
            "DATA": page,
            "next_marker": str(start + self.page_size) if more else None,
        }
        return _json(body)

    def _cancel(self, request: Request, id: str) -> Response:
        self.cancelled.append(id)
        self.tasks[id]["status"] = "FAILED"
        self.tasks[id]["completion_time"] = self.completed_at
        return _json({"DATA_TYPE": "result", "code": "Canceled", "message": "The task has been cancelled."})


def _json(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


@pytest.fixture(scope="module")
def server():
    http = HTTPServer(host="127.0.0.1", port=0)
    http.start()
    yield http
    if http.is_running():
        http.stop()


@pytest.fixture
def fake(server, monkeypatch) -> FakeGlobus:
    globus = FakeGlobus()
    server.clear()
    server.expect_request(re.compile(r"/.*")).respond_with_handler(globus.handle)
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", server.url_for("/auth/"))
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_TRANSFER", server.url_for("/transfer/"))
    monkeypatch.delenv("GLOBUS_SDK_SERVICE_URL_APP", raising=False)
    monkeypatch.delenv("GLOBUS_SDK_ENVIRONMENT", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return globus


@pytest.fixture
def secret_file(tmp_path) -> Path:
    path = tmp_path / "globus_secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def access(fake, secret_file) -> GlobusAccess:
    return GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=0, timeout=5)


# --------------------------------------------------------------------------
# Access rules


def test_grant_creates_read_only_rules_for_users_with_email(access, fake):
    granted = access.grant(EXPERIMENT, [ANN, BOB, CARL])

    assert set(granted) == {"d1001", "d1002"}
    assert len(fake.rules) == 2
    for user in (ANN, BOB):
        rule = fake.rules[granted[user.username]]
        assert rule["sent"] == {
            "DATA_TYPE": "access",
            "principal_type": "identity",
            "principal": fake.identity(user.email),
            "path": EXPERIMENT_PATH,
            "permissions": "r",
        }
    assert fake.calls["_token"] >= 1, "the client credentials grant must go to the local Auth"


def test_grant_without_email_users_makes_no_request(access, fake):
    assert access.grant(EXPERIMENT, [CARL]) == {}
    assert sum(fake.calls.values()) == 0


def test_grant_twice_reuses_the_rules(access, fake):
    first = access.grant(EXPERIMENT, [ANN, BOB])
    second = access.grant(EXPERIMENT, [ANN, BOB, CARL])

    assert second == first
    assert len(fake.rules) == 2
    assert fake.calls["_create_rule"] == 2


def test_grant_reuses_a_rule_made_elsewhere_and_ignores_other_paths(access, fake):
    fake.identities["ann@uni.edu"] = "identity-ann"
    existing = fake.add_rule("identity-ann", EXPERIMENT_PATH.rstrip("/"))
    other_path = fake.add_rule("identity-ann", "/2026-03/2026-03-Other-2/")

    granted = access.grant(EXPERIMENT, [ANN])

    assert granted == {"d1001": existing}
    assert set(fake.rules) == {existing, other_path}


def test_failure_half_way_raises_and_rerun_completes_without_duplicates(access, fake):
    fake.fail[("POST", "_create_rule")] = {2}

    with pytest.raises(GlobusError) as failure:
        access.grant(EXPERIMENT, [ANN, BOB, DORA])
    message = str(failure.value)
    assert "d1002" in message and "500" in message
    assert "d1001" not in message.split("failed for")[1].split("(")[0]
    assert len(fake.rules) == 2  # Ann and Dora got theirs; Bob's creation failed

    granted = access.grant(EXPERIMENT, [ANN, BOB, DORA])

    assert set(granted) == {"d1001", "d1002", "d1004"}
    assert len(fake.rules) == 3
    principals = [rule["principal"] for rule in fake.rules.values()]
    assert len(set(principals)) == 3


def test_user_without_identity_is_named_and_others_granted(access, fake):
    fake.unknown_users.add("bob@lab.org")

    with pytest.raises(GlobusError, match=r"d1002.*no Globus identity for Bob@Lab.org"):
        access.grant(EXPERIMENT, [ANN, BOB])
    assert [rule["principal"] for rule in fake.rules.values()] == [fake.identity(ANN.email)]


def test_partial_failure_carries_the_rules_of_the_users_that_succeeded(access, fake):
    fake.identities["ann@uni.edu"] = "identity-ann"
    reused = fake.add_rule("identity-ann", EXPERIMENT_PATH)
    fake.fail[("POST", "_create_rule")] = {1}  # Bob's rule; Dora's (the second creation) succeeds

    with pytest.raises(GlobusError) as failure:
        access.grant(EXPERIMENT, [ANN, BOB, CARL, DORA])

    dora = next(rule["id"] for rule in fake.rules.values() if rule["principal"] == fake.identity(DORA.email))
    assert failure.value.done == {"d1001": reused, "d1004": dora}


def test_network_failure_carries_the_rules_made_before_it(access, fake, monkeypatch):
    real_identity = GlobusAccess._identity

    def identity(self, user):
        if user is BOB:
            raise globus_sdk.GlobusConnectionError("connection refused", ConnectionError("refused"))
        return real_identity(self, user)

    monkeypatch.setattr(GlobusAccess, "_identity", identity)

    with pytest.raises(GlobusError, match="access for d1002 not given") as failure:
        access.grant(EXPERIMENT, [ANN, BOB, DORA])

    assert failure.value.done == {"d1001": next(iter(fake.rules))}
    assert len(fake.rules) == 1


def test_revoke_deletes_exactly_those_rules_and_tolerates_gone_ones(access, fake):
    granted = access.grant(EXPERIMENT, [ANN, BOB])
    unrelated = fake.add_rule("identity-someone", "/2026-03/other/")
    del fake.rules[granted["d1002"]]  # removed by hand in the web app

    removed = access.revoke(EXPERIMENT, granted)

    assert sorted(removed) == ["d1001", "d1002"]
    assert set(fake.rules) == {unrelated}


def test_revoke_failure_names_the_user_and_rule(access, fake):
    granted = access.grant(EXPERIMENT, [ANN, BOB])
    fake.fail[("DELETE", "_delete_rule")] = {1}

    with pytest.raises(GlobusError) as failure:
        access.revoke(EXPERIMENT, granted)
    assert "d1001" in str(failure.value) and granted["d1001"] in str(failure.value)
    assert list(fake.rules) == [granted["d1001"]]  # Bob's went; Ann's stays for a rerun

    assert access.revoke(EXPERIMENT, granted) == ["d1001", "d1002"]
    assert fake.rules == {}


def test_revoke_nothing_makes_no_request(access, fake):
    assert access.revoke(EXPERIMENT, {}) == []
    assert sum(fake.calls.values()) == 0


def test_url_opens_the_experiment_folder(access):
    url = access.url(EXPERIMENT)

    assert url.startswith("https://app.globus.org/file-manager?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query == {"origin_id": [COLLECTION], "origin_path": [EXPERIMENT_PATH]}
    assert "origin_path=%2F2026-03%2F2026-03-Smith-1%2F" in url


@pytest.mark.parametrize(
    "directory, expected",
    [
        ("/gdata/dm/2BM/2026-03/exp", "/2026-03/exp/"),
        ("/gdata/dm/2BM/2026-03/exp/", "/2026-03/exp/"),
        ("/gdata/dm/2BM/2026-03/my exp", "/2026-03/my exp/"),
    ],
)
def test_collection_path(directory, expected):
    assert collection_path(STORAGE_ROOT, directory) == expected


@pytest.mark.parametrize(
    "directory",
    ["", "relative/exp", "/gdata/dm/2BM", "/gdata/dm/2BMX/exp", "/elsewhere/exp", "/gdata/dm/2BM/../exp"],
)
def test_folders_outside_the_collection_are_refused(directory, access, fake):
    experiment = Experiment(name="x", storage_directory=directory)
    with pytest.raises(GlobusError):
        access.grant(experiment, [ANN])
    assert access.url(experiment) == ""
    assert sum(fake.calls.values()) == 0


def test_secret_never_in_logs_or_errors(fake, secret_file, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    encoded = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=0, timeout=5)
    access.grant(EXPERIMENT, [ANN])
    fake.fail[("POST", "_create_rule")] = {fake.calls[("POST", rf"/transfer/v0\.10/endpoint/{COLLECTION}/access")] + 1}
    errors = []
    with pytest.raises(GlobusError) as failure:
        access.grant(EXPERIMENT, [BOB])
    errors.append(str(failure.value))

    wrong = secret_file.with_name("wrong_secret")
    wrong.write_text("not-the-secret\n")
    wrong.chmod(0o600)
    refused = GlobusAccess(COLLECTION, CLIENT_ID, wrong, STORAGE_ROOT, max_retries=0, timeout=5)
    with pytest.raises(GlobusError, match="refused the client credentials") as failure:
        refused.grant(EXPERIMENT, [ANN])
    errors.append(str(failure.value))

    assert fake.tokens
    logged = caplog.text + "\n".join(repr(record.args) for record in caplog.records)
    for secret in (SECRET, encoded, "not-the-secret", *fake.tokens):
        assert secret not in logged
        assert all(secret not in error for error in errors)


def test_world_readable_secret_file_is_refused(fake, secret_file):
    secret_file.chmod(0o644)
    access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=0)

    with pytest.raises(GlobusError, match="chmod 600") as failure:
        access.grant(EXPERIMENT, [ANN])
    assert SECRET not in str(failure.value)
    assert sum(fake.calls.values()) == 0


def test_secret_is_read_lazily(tmp_path):
    access = GlobusAccess(COLLECTION, CLIENT_ID, tmp_path / "missing", STORAGE_ROOT)
    assert access.url(EXPERIMENT).startswith("https://app.globus.org/")
    with pytest.raises(GlobusError, match="globus.client_secret_file"):
        access.grant(EXPERIMENT, [ANN])


def test_service_down_is_a_globus_error(secret_file, monkeypatch):
    closed = HTTPServer(host="127.0.0.1", port=0)
    closed.start()
    url = closed.url_for("/")
    closed.stop()  # nothing listens there now
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", url)
    monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_TRANSFER", url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=0, timeout=5)

    with pytest.raises(GlobusError, match="cannot reach Globus"):
        access.grant(EXPERIMENT, [ANN])


def test_injected_clients_are_used(fake, secret_file):
    import globus_sdk

    login = globus_sdk.ConfidentialAppAuthClient(CLIENT_ID, SECRET)
    transfer = globus_sdk.TransferClient(
        authorizer=globus_sdk.ClientCredentialsAuthorizer(login, globus_sdk.TransferClient.scopes.all)
    )
    auth = globus_sdk.AuthClient(
        authorizer=globus_sdk.ClientCredentialsAuthorizer(login, globus_sdk.scopes.AuthScopes.view_identities)
    )
    access = GlobusAccess(COLLECTION, CLIENT_ID, None, STORAGE_ROOT, auth_client=auth, transfer_client=transfer)

    assert set(access.grant(EXPERIMENT, [ANN])) == {"d1001"}


# --------------------------------------------------------------------------
# Hostile servers posing as Globus (tests/faults/test_http_attacks.py): every request carries a credential


def hostile_globus(monkeypatch, service: str, answer) -> Hostile:
    """A raw-socket server answering `answer` where the Globus `service` ("auth" or "transfer") is expected."""
    server = Hostile(answer)
    monkeypatch.setenv(f"GLOBUS_SDK_SERVICE_URL_{service.upper()}", f"{server.url}/{service}/")
    return server


def redirect_to_itself(server: Hostile, connection) -> None:
    redirect_to(server)(server, connection)  # another path on the same host and port: requests keeps the header


CREDENTIAL = {"auth": b"Authorization: Basic ", "transfer": b"Authorization: Bearer token-"}


@pytest.mark.parametrize("service", ["auth", "transfer"])
@pytest.mark.parametrize("where", ["another host", "the same host"])
def test_a_redirect_is_refused_and_the_credential_goes_nowhere_else(fake, secret_file, monkeypatch, service, where):
    with Hostile(answer_ok) as elsewhere:
        answer = redirect_to(elsewhere) if where == "another host" else redirect_to_itself
        with hostile_globus(monkeypatch, service, answer) as server:
            access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=2, timeout=5)
            with pytest.raises(GlobusError) as failure:
                access.grant(EXPERIMENT, [ANN])

    target = elsewhere if where == "another host" else server
    message = str(failure.value)
    assert f"Globus answered HTTP 307 (a redirect to 127.0.0.1:{target.port}): redirects are not followed" in message
    assert SECRET not in message and "token-" not in message
    (request,) = server.received  # the credential went once to the configured host: not followed, not retried
    assert CREDENTIAL[service] in request
    assert elsewhere.received == []
    assert fake.rules == {}


@pytest.mark.parametrize("drip", [drip_in_the_headers, drip_in_the_body])
def test_a_server_dripping_a_byte_at_a_time_is_cut_at_the_deadline_of_the_whole_request(fake, secret_file,
                                                                                        monkeypatch, drip):  # fmt: skip
    with hostile_globus(monkeypatch, "transfer", drip) as server:
        access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=2, timeout=1)
        with pytest.raises(GlobusError) as failure:
            access.grant(EXPERIMENT, [ANN])
        assert not server.answered.is_set() and server.sent > 5  # still dripping when the request gave up

    assert str(failure.value) == (
        f"Globus: cannot list the access rules of collection {COLLECTION}: Globus did not answer within 1 s"
    )
    assert len(server.received) == 1  # a too-slow answer is not asked for again


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-closed"])
def test_a_huge_answer_is_refused_at_the_cap(fake, secret_file, monkeypatch, declared):
    with hostile_globus(monkeypatch, "transfer", huge(declared)) as server:
        access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=2, timeout=30)
        with pytest.raises(GlobusError) as failure:
            access.grant(EXPERIMENT, [ANN])
        wait_for(server.answered.is_set, timeout=10, what="the server to find the connection closed")

    assert str(failure.value).endswith("Globus sent more than 16 MB: the answer was refused")
    assert server.sent < 16 * MB + 32 * MB  # the cap, and what the sockets' buffers took in; not 200 MB
    assert len(server.received) == 1


def test_a_failed_connection_is_retried_a_bounded_number_of_times(fake, secret_file, monkeypatch):
    def hang_up(server: Hostile, connection) -> None:
        """Read the request, answer nothing, close."""

    with hostile_globus(monkeypatch, "transfer", hang_up) as server:
        access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=2, timeout=5)
        with pytest.raises(GlobusError, match=r"cannot reach Globus \(") as failure:
            access.grant(EXPERIMENT, [ANN])

    assert len(server.received) == 3, failure.value  # the request and its 2 retries
    assert all(CREDENTIAL["transfer"] in request for request in server.received)


def test_a_compressed_answer_is_read_decoded(fake, secret_file):
    """The body is read (and capped) as it unpacks; globus-sdk gets it decoded, without its Content-Encoding."""
    fake.identities["ann@uni.edu"] = "identity-ann"
    rule = fake.add_rule("identity-ann", EXPERIMENT_PATH)
    fake.compress = True
    access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=0, timeout=5)

    assert access.grant(EXPERIMENT, [ANN]) == {"d1001": rule}


# --------------------------------------------------------------------------
# Transfers

SOURCES = {
    "/data3/2BM/2026-03-Smith-1": f"{STORAGE_ROOT}/2026-03/2026-03-Smith-1/data",
    "/data3/2BM/2026-03-Smith-1_rec": f"{STORAGE_ROOT}/2026-03/2026-03-Smith-1/analysis",
}


@pytest.fixture
def make_transfer(fake, secret_file):
    made: list[GlobusTransfer] = []

    def make(**options) -> GlobusTransfer:
        access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT, max_retries=0, timeout=5)
        options = {"poll_interval": 0.02, "resubmit_interval": 0.05, **options}
        transfer = GlobusTransfer(access, SOURCE, **options)
        made.append(transfer)
        return transfer

    yield make
    for transfer in made:
        transfer.shutdown()


def test_upload_submits_checksum_transfer_and_reports_progress(make_transfer, fake):
    transfer = make_transfer()

    sentence = transfer.start(EXPERIMENT, SOURCES, once=True)

    assert "2026-03-Smith-1" in sentence and "started" in sentence
    wait_for(lambda: fake.submissions and transfer.progress().files_total == 10)
    document = fake.submissions[0]
    assert document["source_endpoint"] == SOURCE
    assert document["destination_endpoint"] == COLLECTION
    assert document["sync_level"] == 3 or document["sync_level"] == "checksum"
    assert [(item["source_path"], item["destination_path"], item["recursive"]) for item in document["DATA"]] == [
        ("/data3/2BM/2026-03-Smith-1/", "/2026-03/2026-03-Smith-1/data/", True),
        ("/data3/2BM/2026-03-Smith-1_rec/", "/2026-03/2026-03-Smith-1/analysis/", True),
    ]
    progress = transfer.progress()
    assert (progress.state, progress.files_done, progress.bytes_done, progress.rate_mb_s) == (
        TransferState.RUNNING,
        5,
        4e6,
        2.0,
    )

    task_id = next(iter(fake.tasks))
    fake.set_task(task_id, status="SUCCEEDED", files_transferred=9, bytes_transferred=9e6, nice_status=None)
    transfer.join(timeout=10)

    progress = transfer.progress()
    assert (progress.state, progress.files_done, progress.files_total) == (TransferState.STOPPED, 10, 10)
    assert "done" in progress.message and "9.0 MB" in progress.message
    assert len(fake.submissions) == 1


def test_continuous_resubmits_then_stop_cancels(make_transfer, fake):
    fake.new_task_status = "SUCCEEDED"
    transfer = make_transfer()

    transfer.start(EXPERIMENT, SOURCES, once=False)
    wait_for(lambda: len(fake.submissions) >= 3)
    assert transfer.progress().state == TransferState.RUNNING
    assert "already running" in transfer.start(EXPERIMENT, SOURCES, once=False)

    fake.new_task_status = "ACTIVE"
    wait_for(lambda: any(task["status"] == "ACTIVE" for task in fake.tasks.values()))
    active = next(task_id for task_id, task in fake.tasks.items() if task["status"] == "ACTIVE")

    assert "Stopping" in transfer.stop()
    assert transfer.progress().state == TransferState.STOPPED
    transfer.join(timeout=10)
    submitted = len(fake.submissions)

    assert fake.cancelled == [active]
    assert transfer.progress().state == TransferState.STOPPED
    assert transfer.stop() == "No Globus transfer is running"
    assert len(fake.submissions) == submitted


def test_failed_task_shows_error(make_transfer, fake, tmp_path):
    fake.new_task_status = "FAILED"
    state = tmp_path / "globus_transfer.json"
    transfer = make_transfer(state_path=state)

    transfer.start(EXPERIMENT, SOURCES, once=False)
    transfer.join(timeout=10)

    progress = transfer.progress()
    assert progress.state == TransferState.ERROR
    assert "permission denied" in progress.message
    assert not state.exists()
    assert len(fake.submissions) == 1


def test_a_lost_submission_answer_does_not_make_a_second_task(make_transfer, fake):
    fake.fail_after[("POST", "_submit")] = {1}
    transfer = make_transfer()

    transfer.start(EXPERIMENT, SOURCES, once=True)
    wait_for(lambda: fake.calls["_submit"] >= 2 and transfer.progress().files_total == 10)

    assert len(fake.tasks) == 1
    assert len(fake.submissions) == 1


def test_submission_error_retries_and_recovers(make_transfer, fake):
    fake.fail[("POST", "_submit")] = {1}
    transfer = make_transfer()

    transfer.start(EXPERIMENT, SOURCES, once=True)
    wait_for(lambda: transfer.progress().files_total == 10)

    assert transfer.progress().state == TransferState.RUNNING
    assert fake.calls["_submit"] == 2


def test_resume_after_restart_follows_the_same_task(make_transfer, fake, tmp_path):
    state = tmp_path / "state" / "globus_transfer.json"
    first = make_transfer(state_path=state)
    first.start(EXPERIMENT, SOURCES, once=False)
    wait_for(lambda: first.progress().files_total == 10)
    first.shutdown()  # the IOC exits; the Globus task runs on
    assert state.exists()
    task_id = json.loads(state.read_text())["task_ids"][-1]

    second = make_transfer(state_path=state)
    sentence = second.resume()

    assert sentence is not None and task_id in sentence
    fake.set_task(task_id, files_transferred=7)
    wait_for(lambda: second.progress().files_done == 8)
    assert len(fake.submissions) == 1
    second.stop()
    second.join(timeout=10)
    assert not state.exists()
    assert fake.cancelled == [task_id]


def test_resume_without_state_is_none(make_transfer, tmp_path):
    assert make_transfer().resume() is None
    assert make_transfer(state_path=tmp_path / "absent.json").resume() is None


def test_missing_source_folder_is_left_out_of_the_pass(make_transfer, fake):
    fake.missing_folders.add("/data3/2BM/2026-03-Smith-1_rec/")
    transfer = make_transfer()

    transfer.start(EXPERIMENT, SOURCES, once=True)
    wait_for(lambda: fake.submissions)

    assert [item["source_path"] for item in fake.submissions[0]["DATA"]] == ["/data3/2BM/2026-03-Smith-1/"]


def test_upload_without_any_source_folder_ends_with_a_message(make_transfer, fake):
    fake.missing_folders.update(["/data3/2BM/2026-03-Smith-1/", "/data3/2BM/2026-03-Smith-1_rec/"])
    transfer = make_transfer()

    transfer.start(EXPERIMENT, SOURCES, once=True)
    transfer.join(timeout=10)

    assert transfer.progress().state == TransferState.STOPPED
    assert "nothing sent" in transfer.progress().message
    assert fake.submissions == []


def test_transfer_needs_source_collection_and_storage_destinations(fake, secret_file):
    access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, STORAGE_ROOT)
    without_source = GlobusTransfer(access, "")
    with pytest.raises(GlobusError, match="source_collection_id"):
        without_source.start(EXPERIMENT, SOURCES, once=True)

    transfer = GlobusTransfer(access, SOURCE)
    with pytest.raises(GlobusError, match="storage_root"):
        transfer.start(EXPERIMENT, {"/data3/x": "/elsewhere/x"}, once=True)
    with pytest.raises(GlobusError, match="absolute"):
        transfer.start(EXPERIMENT, {"relative/x": f"{STORAGE_ROOT}/x"}, once=True)
    assert transfer.progress().state == TransferState.STOPPED
    assert sum(fake.calls.values()) == 0


def test_forget_is_a_no_op(make_transfer, fake):
    """Nothing is kept about sent files: each pass's checksum sync sends what the destination lacks."""
    transfer = make_transfer()

    assert transfer.forget(SOURCES) is None
    assert sum(fake.calls.values()) == 0


# --------------------------------------------------------------------------
# The files sent: the successful transfers of the tasks

COMPLETED = 1772445600.0  # 2026-03-02T10:00:00+00:00, when the fake's tasks end


@pytest.fixture
def in_storage(fake, secret_file, tmp_path):
    """A GlobusTransfer whose storage_root is a real folder, and the experiment's files Globus would move."""
    root = tmp_path / "gdata"
    storage = root / "2026-03" / EXPERIMENT.name
    (storage / "data").mkdir(parents=True)
    for n in range(5):
        (storage / "data" / f"scan_{n}.h5").write_bytes(b"x" * n)
    fake.to_move = [f"/2026-03/{EXPERIMENT.name}/data/scan_{n}.h5" for n in range(5)]
    fake.to_move.append("/2026-03/2026-03-Other-2/data/scan_0.h5")  # another experiment's folder
    access = GlobusAccess(COLLECTION, CLIENT_ID, secret_file, root, max_retries=0, timeout=5)
    transfer = GlobusTransfer(access, SOURCE, poll_interval=0.02, resubmit_interval=0.05)
    yield transfer, storage, {EXPERIMENT.data_directory: str(storage / "data")}
    transfer.shutdown()


def test_sent_since_lists_the_successful_transfers_of_the_ended_tasks_page_by_page(in_storage, fake):
    transfer, storage, sources = in_storage
    fake.new_task_status = "SUCCEEDED"
    transfer.start(replace(EXPERIMENT, storage_directory=str(storage)), sources, once=True)
    transfer.join(timeout=10)

    sent = transfer.sent_since(0.0, str(storage))

    assert [(Path(f.path).name, f.size, f.sent_at) for f in sent] == [(f"scan_{n}.h5", n, COMPLETED) for n in range(5)]
    assert sent[2].mtime == (storage / "data" / "scan_2.h5").stat().st_mtime
    assert fake.calls["_successful_transfers"] == 3  # 6 transfers, 2 a page
    assert transfer.sent_since(COMPLETED, str(storage)) == []  # all were in the last dataset


def test_sent_since_after_stop_lists_what_the_cancelled_task_moved(in_storage, fake, caplog):
    transfer, storage, sources = in_storage
    transfer.start(replace(EXPERIMENT, storage_directory=str(storage)), sources, once=False)
    wait_for(lambda: transfer.progress().files_total == 10)  # the task runs
    assert transfer.sent_since(0.0, str(storage)) == []  # not waited for: Globus lists a task once it ended
    assert fake.calls["_successful_transfers"] == 0
    (storage / "data" / "scan_4.h5").unlink()  # gone since

    transfer.stop()
    sent = transfer.sent_since(0.0, str(storage))

    assert [Path(f.path).name for f in sent] == ["scan_0.h5", "scan_1.h5", "scan_2.h5", "scan_3.h5"]
    assert "1 file(s) sent are gone" in caplog.text


def test_sent_since_never_reads_an_outside_file_through_a_link_planted_in_the_storage(
    in_storage, fake, tmp_path, caplog
):
    """Whoever may write the storage replaces a file sent, or its folder, by a symbolic link to an outside
    file: its size and mtime never reach the record; the file is left out with a warning naming it."""
    transfer, storage, sources = in_storage
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "shadow").write_bytes(b"s" * 999)
    (outside / "scan_1.h5").write_bytes(b"s" * 999)
    fake.to_move.append(f"/2026-03/{EXPERIMENT.name}/linked/scan_1.h5")
    fake.new_task_status = "SUCCEEDED"
    transfer.start(replace(EXPERIMENT, storage_directory=str(storage)), sources, once=True)
    transfer.join(timeout=10)
    (storage / "data" / "scan_3.h5").unlink()
    (storage / "data" / "scan_3.h5").symlink_to(outside / "shadow")  # ln -sf /etc/shadow data/scan_3.h5
    (storage / "linked").symlink_to(outside, target_is_directory=True)  # a folder sent, now a link

    sent = transfer.sent_since(0.0, str(storage))

    assert [(Path(f.path).name, f.size) for f in sent] == [(f"scan_{n}.h5", n) for n in (0, 1, 2, 4)]
    assert f"{storage}/data/scan_3.h5 is not a regular file (a symbolic link?): not in the dataset" in caplog.text
    assert f"{storage}/linked/scan_1.h5 is reached through a symbolic link ({storage}/linked)" in caplog.text


def test_sent_since_with_globus_failing_is_a_globus_error(in_storage, fake):
    transfer, storage, sources = in_storage
    fake.new_task_status = "SUCCEEDED"
    transfer.start(replace(EXPERIMENT, storage_directory=str(storage)), sources, once=True)
    transfer.join(timeout=10)
    fake.fail[("GET", "_successful_transfers")] = {1}

    with pytest.raises(GlobusError, match="listing the files sent for 2026-03-Smith-1: 500 ServerError"):
        transfer.sent_since(0.0, str(storage))


def test_sent_since_before_any_transfer_is_empty(make_transfer, fake):
    assert make_transfer().sent_since(0.0, EXPERIMENT.storage_directory) == []
    assert sum(fake.calls.values()) == 0
