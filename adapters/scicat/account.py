"""`--check`: what the SciCat account lacks to create the IOC's datasets and read them back."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone

from ...ioc.domain.catalog_ports import Dataset
from ...ioc.domain.errors import CatalogError
from .bodies import scicat_dataset
from .client import Forbidden, ScicatClient, Unreachable


def account_problems(client: ScicatClient, access_groups: Sequence[str], contact_email: str) -> list[str]:
    """`--check`: log in as the IOC does and say what the account lacks, each under the config key that
    mends it: creating datasets under the IOC's pids (tried on datasets/isValid, which creates nothing,
    with an ownerGroup of no one), and reading them back (one of its groups in `access_groups`)."""
    try:
        client.login()
        groups = client.groups()
    except Unreachable as error:
        return [f"scicat.url: {error}"]
    except CatalogError as error:
        return [f"scicat.credentials: {error}"]
    who = f"the SciCat account {client.user}"
    theirs = f" (its groups: {', '.join(groups) or 'none'})" if groups is not None else ""
    problems = []
    try:
        if found := client.dataset_problem(_probe(access_groups, contact_email)):
            problems.append(f"scicat: SciCat finds a dataset as the IOC makes it not valid: {found}")
    except Forbidden:
        problems.append(f"scicat.credentials: {who} may not create datasets under the IOC's pids: it must be in "
                        f"SciCat's CREATE_DATASET_PRIVILEGED_GROUPS (or ADMIN_GROUPS){theirs}")  # fmt: skip
    except CatalogError as error:
        problems.append(f"scicat: a dataset under the IOC's pid (a lower-case UUID) is refused: {error}")
    if groups is not None and not set(groups) & set(access_groups):
        problems.append(f"scicat.access_groups: {who} is in none of them{theirs}: it could not read back the "
                        "datasets it creates; add one of its groups")  # fmt: skip
    return problems


def _probe(access_groups: Sequence[str], contact_email: str) -> dict:
    """A dataset as the IOC makes one, under a new pid and an ownerGroup no account is in: only an account
    that may create any dataset under a pid of its choosing may create it."""
    now = datetime.now(timezone.utc).isoformat()
    return scicat_dataset(Dataset(
        pid=str(uuid.uuid4()), name="dmagic-ioc-check", description="", owner="dmagic-ioc",
        contact_email=contact_email, principal_investigator="dmagic-ioc",
        owner_group=f"dmagic-ioc-check-{uuid.uuid4().hex[:8]}", access_groups=tuple(access_groups),
        proposal_id="", source_folder="/dmagic-ioc-check", creation_location="dmagic-ioc --check",
        creation_time=now, end_time=now, files=(), scientific_metadata={},
    ))  # fmt: skip
