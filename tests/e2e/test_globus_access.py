"""Globus sharing through the installed IOC, against a local stand-in for Globus Auth and Transfer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from ..adapters.test_globus import CLIENT_ID, COLLECTION, SECRET, FakeGlobus
from ..faults.test_http_attacks import Hostile, answer_ok, redirect_to
from .fixtures import IN_SECOND
from .harness import IOC

pytestmark = pytest.mark.e2e

MAJOR = 2
NAME = "2026-11-DArcy-1013377"
PATH = f"/2026-11/{NAME}/"


@pytest.fixture
def globus():
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    fake = FakeGlobus()
    server.expect_request(re.compile(".*")).respond_with_handler(fake.handle)
    yield fake, server
    server.clear()
    server.stop()


def globus_config(config: dict, tmp_path: Path) -> dict:
    """`config` with Globus on, its client secret in a file of the test's."""
    secret = tmp_path / "globus_secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    config["globus"] = {"enabled": True, "collection_id": COLLECTION, "client_id": CLIENT_ID,
                        "client_secret_file": str(secret)}  # fmt: skip
    return config


@pytest.fixture
def globus_ioc(config, tmp_path, globus):
    fake, server = globus
    env = {"GLOBUS_SDK_SERVICE_URL_AUTH": server.url_for("/auth/"),
           "GLOBUS_SDK_SERVICE_URL_TRANSFER": server.url_for("/transfer/")}  # fmt: skip
    with IOC(globus_config(config, tmp_path), tmp_path, extra_env=env) as ioc:
        yield ioc, fake


def rules_on(fake: FakeGlobus) -> list[tuple[str, str, str]]:
    return sorted((r["principal"], r["path"], r["permissions"]) for r in fake.rules.values())


def create(ioc: IOC) -> tuple[str, int]:
    ioc.put("TimeOffsetDays", IN_SECOND)
    ioc.command("Refresh")
    return ioc.command("Create")


def test_access_rules_follow_create_remove_user_and_delete(globus_ioc):
    ioc, fake = globus_ioc
    status, severity = create(ioc)
    assert severity == 0, status
    emails = ("jl.darcy@example.fr", "zoe.mueller@example.de", "sven.oberg@example.se")  # the contact has none
    assert rules_on(fake) == sorted((fake.identity(e), PATH, "r") for e in emails)
    assert ioc.get("Globus:Health") == "OK"
    assert COLLECTION in ioc.get("GlobusURL") and "2026-11" in ioc.get("GlobusURL")

    create(ioc)  # again: no duplicate rule
    assert len(fake.rules) == 3

    ioc.put("Badges", "310012")
    status, severity = ioc.command("RemoveUser")
    assert severity == 0 and "Globus" in status, status
    assert fake.identity("sven.oberg@example.se") not in {r["principal"] for r in fake.rules.values()}
    assert len(fake.rules) == 2

    ioc.put("DeleteConfirm", NAME)
    status, severity = ioc.command("Delete")
    assert severity == 0, status
    assert fake.rules == {}


def test_a_globus_failure_half_way_then_a_rerun_completes(globus_ioc):
    ioc, fake = globus_ioc
    fake.fail[("POST", "_create_rule")] = {2, 3, 4, 5}  # the second rule creation answers 500, retries too
    status, severity = create(ioc)
    assert severity == MAJOR and "Globus" in status, status
    assert ioc.get("Globus:Health") == "Error" and ioc.severity("Globus:Health") == MAJOR
    status, severity = ioc.command("Create")
    assert severity == 0, status
    assert len(fake.rules) == 3 and len({r["principal"] for r in fake.rules.values()}) == 3
    assert ioc.get("Globus:Health") == "OK"
    ioc.stop()
    assert SECRET not in ioc.log()


def test_a_redirect_from_globus_is_an_error_and_the_secret_goes_nowhere_else(config, tmp_path, globus):
    """The token request (the client secret in its Basic header) meets a redirect to another server."""
    fake, server = globus
    with Hostile(answer_ok) as elsewhere, Hostile(redirect_to(elsewhere)) as auth:
        env = {"GLOBUS_SDK_SERVICE_URL_AUTH": f"{auth.url}/auth/",
               "GLOBUS_SDK_SERVICE_URL_TRANSFER": server.url_for("/transfer/")}  # fmt: skip
        with IOC(globus_config(config, tmp_path), tmp_path, extra_env=env) as ioc:
            status, severity = create(ioc)

            assert severity == MAJOR, status
            assert f"answered HTTP 307 (a redirect to 127.0.0.1:{elsewhere.port}): redirects are not" in status
            assert ioc.get("Globus:Health") == "Error" and ioc.severity("Globus:Health") == MAJOR
            ioc.stop()
            assert SECRET not in ioc.log()
        assert elsewhere.received == []
        assert len(auth.received) == 1 and b"Authorization: Basic " in auth.received[0]
    assert fake.rules == {}
