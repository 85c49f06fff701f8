"""Errors: every message is written for the Status PV, for a beamline scientist."""

from __future__ import annotations

from collections.abc import Sequence


class DMagicError(Exception):
    """A failure whose message is fit for the Status PV."""


class InputError(DMagicError):
    """Bad input from a PV or the config: refused, nothing changed."""


class ServiceError(DMagicError):
    """An outside system failed; `system` names which (its Health PV).

    `done` carries what was achieved before the failure (e.g. the Globus rules
    created, the users added), so the caller can record it: a rerun then
    completes the job instead of starting over or duplicating it.
    """

    system = ""

    def __init__(self, message: str, done=None):
        super().__init__(message)
        self.done = done


class SchedulingError(ServiceError):
    system = "Scheduling"


class DMError(ServiceError):
    system = "DM"


class GlobusError(ServiceError):
    system = "Globus"


class EmailError(ServiceError):
    system = "Email"


class CatalogError(ServiceError):
    system = "Catalog"


class PartialAccess(DMagicError):
    """The work was done, but some access on the filesystem could not be given (a unix group or account
    that does not exist): a MINOR Status naming it. `done` holds the call's result."""

    def __init__(self, message: str, done):
        super().__init__(message)
        self.done = done


class TagError(DMagicError):
    """Tag could not write the target IOC."""


class MissingPVs(TagError):
    """Some of the target's PVs did not answer, so nothing was written; `missing` holds their names
    after the prefix, so that the others can be written."""

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = tuple(missing)


class DiskFull(DMError):
    """A disk the IOC writes has no space left (or the quota is spent): the message starts with where,
    "state_dir full: ..." or "storage full: ...". DM's Health shows Error until a DM call works again."""
