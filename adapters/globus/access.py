"""`GlobusAccess`: read-only sharing of experiment folders on the guest collection that exposes
`dm.storage_root`. Every method blocks on the network: the IOC calls them off the event loop."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import globus_sdk

from ...ioc.domain.errors import GlobusError
from ...ioc.domain.experiment import Experiment, ExperimentUser
from .client import Clients, collection_path, describe_error

log = logging.getLogger(__name__)


class GlobusAccess:
    """`ports.Access` on a Globus guest collection: one read-only rule per user and folder.

    The collection's root is `storage_root`; an experiment's folder is shared
    as its storage directory relative to that root. Users are found by e-mail
    (Globus Auth identity lookup with provisioning); users without an e-mail
    are left out. Globus sends no notification of its own: the IOC e-mails.
    `timeout` is for each whole request, `max_retries` how often a failed
    connection or a transient answer is tried again (`client.BoundedTransport`).
    """

    def __init__(
        self,
        collection_id: str,
        client_id: str,
        client_secret_file: Path | None,
        storage_root: Path | str,
        *,
        max_retries: int = 2,
        timeout: float = 30.0,
        auth_client: globus_sdk.AuthClient | None = None,
        transfer_client: globus_sdk.TransferClient | None = None,
    ):
        self.collection_id = collection_id
        self.client_id = client_id
        self.client_secret_file = client_secret_file
        self.storage_root = PurePosixPath(storage_root)
        self.max_retries = max_retries
        self.timeout = timeout
        self._clients = Clients(
            client_id,
            client_secret_file,
            max_retries=max_retries,
            timeout=timeout,
            auth_client=auth_client,
            transfer_client=transfer_client,
        )

    def path(self, experiment: Experiment) -> str:
        """The experiment's folder as the guest collection sees it: `/2026-03/exp/`."""
        if not experiment.storage_directory:
            raise GlobusError(f"Globus: experiment {experiment.name} has no storage directory")
        return collection_path(self.storage_root, experiment.storage_directory)

    def url(self, experiment: Experiment) -> str:
        """The Globus web app's file manager opened on the experiment's folder.

        '' when the folder cannot be shared (no storage directory, or one
        outside `storage_root`): publishing a selection must not fail on it;
        `grant` reports why.
        """
        try:
            path = self.path(experiment)
        except GlobusError as error:
            log.warning("no Globus link for %s: %s", experiment.name, error)
            return ""
        query = urllib.parse.urlencode(
            {"origin_id": self.collection_id, "origin_path": path}, quote_via=urllib.parse.quote
        )
        webapp = globus_sdk.config.get_webapp_url().rstrip("/")
        return f"{webapp}/file-manager?{query}"

    def grant(self, experiment: Experiment, users: Sequence[ExperimentUser]) -> dict[str, str]:
        """Ensure one read-only rule per user with an e-mail: {username: rule_id}.

        Existing rules (same identity, same path) are reused. A user that fails
        does not stop the others (a network failure stops the round); the
        GlobusError names every failed user and carries in `done` the rules of
        the users that succeeded ({username: rule_id}, made or reused), so the
        caller records them; a rerun completes the job without duplicating a rule.
        """
        path = self.path(experiment)
        with_email = [user for user in users if user.email.strip()]
        if not with_email:
            return {}
        transfer = self._clients.transfer()
        existing = self._existing_rules(transfer, path)
        granted: dict[str, str] = {}
        failed: dict[str, str] = {}
        for user in with_email:
            try:
                identity = self._identity(user)
                rule_id = existing.get(identity)
                if rule_id is None:
                    rule_id = self._add_rule(transfer, identity, path)
                    existing[identity] = rule_id
                    log.info("Globus: read access to %s for %s (rule %s)", path, user.username, rule_id)
                else:
                    log.info("Globus: %s already has read access to %s (rule %s)", user.username, path, rule_id)
                granted[user.username] = rule_id
            except globus_sdk.NetworkError as error:
                raise GlobusError(
                    f"Globus: {describe_error(error)}; access for {user.username} not given", done=dict(granted)
                ) from None
            except (globus_sdk.GlobusAPIError, GlobusError) as error:
                reason = describe_error(error) if isinstance(error, globus_sdk.GlobusAPIError) else str(error)
                log.warning("Globus: access for %s to %s failed: %s", user.username, path, reason)
                failed[user.username] = reason
        if failed:
            shown = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            raise GlobusError(
                f"Globus access to {path} failed for {', '.join(failed)} ({shown}); rerun to complete", done=granted
            )
        return granted

    def revoke(self, experiment: Experiment, rules: Mapping[str, str]) -> list[str]:
        """Delete exactly these rules; one already gone counts as removed."""
        if not rules:
            return []
        transfer = self._clients.transfer()
        removed: list[str] = []
        failed: dict[str, str] = {}
        for username, rule_id in rules.items():
            try:
                transfer.delete_endpoint_acl_rule(self.collection_id, rule_id)
                log.info("Globus: removed rule %s of %s on %s", rule_id, username, experiment.name)
            except globus_sdk.GlobusAPIError as error:
                if error.http_status != 404:
                    log.warning("Globus: removing rule %s of %s failed: %s", rule_id, username, describe_error(error))
                    failed[username] = f"rule {rule_id}: {describe_error(error)}"
                    continue
                log.info("Globus: rule %s of %s was already gone", rule_id, username)
            except globus_sdk.NetworkError as error:
                raise GlobusError(f"Globus: {describe_error(error)}; access of {username} not removed") from None
            removed.append(username)
        if failed:
            shown = "; ".join(f"{name} {reason}" for name, reason in failed.items())
            raise GlobusError(f"Globus: could not remove access of {', '.join(failed)} ({shown})")
        return removed

    def _call(self, what: str, action):
        """Run one request; turn any Globus failure into a GlobusError naming `what`."""
        try:
            return action()
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as error:
            raise GlobusError(f"Globus: cannot {what}: {describe_error(error)}") from None

    def _existing_rules(self, transfer: globus_sdk.TransferClient, path: str) -> dict[str, str]:
        """{identity id: rule id} of the identity rules already on `path`."""
        response = self._call(
            f"list the access rules of collection {self.collection_id}",
            lambda: transfer.endpoint_acl_list(self.collection_id),
        )
        rules: dict[str, str] = {}
        for rule in response:
            if rule.get("principal_type") == "identity" and _same_folder(rule.get("path", ""), path):
                rules.setdefault(rule["principal"], rule["id"])
        return rules

    def _identity(self, user: ExperimentUser) -> str:
        """The Globus identity id for the user's e-mail, provisioned if new."""
        email = user.email.strip()
        response = self._clients.auth().get_identities(usernames=[email], provision=True)
        for identity in response.get("identities", []):
            if identity.get("id") and str(identity.get("username", "")).lower() == email.lower():
                return identity["id"]
        raise GlobusError(f"no Globus identity for {email}")

    def _add_rule(self, transfer: globus_sdk.TransferClient, identity: str, path: str) -> str:
        rule = {
            "DATA_TYPE": "access",
            "principal_type": "identity",
            "principal": identity,
            "path": path,
            "permissions": "r",
        }
        response = transfer.add_endpoint_acl_rule(self.collection_id, rule)
        return response["access_id"]


def _same_folder(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
