"""The checks of loaded settings: choices, names, ranges, templates, and what one key needs of another.

`load` runs them on every config it binds; a problem refuses the config (at start and at `--check`).
Beyond the types, they look at the host only for the files the config names (the schedule, the
template, the secrets: there and private). What else `--check` probes on this machine is in `preflight`.
"""

from __future__ import annotations

import os
import pwd
import string
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfoNotFoundError

from ..addresses import host_problems
from ..domain.catalog_values import email_list_problem, source_host_problem
from ..domain.errors import InputError
from ..domain.naming import BADGE, EXPERIMENT_NAME_FIELDS, LAYOUT_FIELDS, POSIX_GROUP_FIELDS, POSIX_NAME, check_name
from ..domain.tag import TAG_FIELDS
from ..secrets import is_loopback, secret_file_problems
from .schema import (
    DMSettings,
    EmailSettings,
    MetadataSettings,
    PosixSettings,
    SchedulingSettings,
    ScicatSettings,
    Settings,
    TagSettings,
)

CHOICES = {
    "scheduling.backend": ("file", "aps"),
    "dm.backend": ("local", "aps"),
    "dm.transfer": ("builtin", "globus"),
}
SCICAT_GROUP_FIELDS = ("gup", "beamline", "station")  # scicat.owner_group's placeholders


def semantic_problems(s: Settings) -> list[str]:
    """What the types alone do not say: choices, names, ranges, and what one setting needs of another."""
    return [
        *_choice_problems(s),
        *_ioc_and_beamline_problems(s),
        *_name_and_range_problems(s),
        *_layout_problems(s.dm),
        *_scheduling_problems(s.scheduling),
        *_globus_problems(s),
        *_email_problems(s.email),
        *_tag_problems(s.tag),
        *scicat_problems(s.scicat),
        *_metadata_problems(s.metadata),
    ]


def prefix_warning(prefix: str) -> str:
    """A prefix that does not end in a separator glues the PV names to it (`32id:DM` -> `32id:DMStatus`):
    allowed, since some sites name PVs so, but said at --check and at start. '' when it ends in one."""
    if not prefix or not prefix[-1].isalnum():
        return ""
    return (
        f"ioc.prefix {prefix!r} does not end with a separator: the PVs are {prefix}Status, {prefix}Create, ...; "
        f"write {prefix + ':'!r} for {prefix}:Status"
    )


def _choice_problems(s: Settings) -> list[str]:
    problems = []
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(s, section), name)
        if value not in choices:
            problems.append(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return problems


def _ioc_and_beamline_problems(s: Settings) -> list[str]:
    problems = []
    try:
        _ = s.beamline.tz
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"beamline.timezone: unknown time zone {s.beamline.timezone!r}")
    if not s.ioc.prefix:
        problems.append("ioc.prefix: must not be empty")
    problems += host_problems(s.ioc.access.write_hosts)
    if s.ioc.access.max_circuits_per_host < 1:
        problems.append("ioc.access.max_circuits_per_host: must be at least 1")
    if not s.beamline.name:
        problems.append("beamline.name: must be set (the beamline id as the scheduling system spells it)")
    for badge in s.beamline.contacts:
        if not BADGE.fullmatch(badge):
            problems.append(f"beamline.contacts: {badge!r} is not a badge number")
    return problems


def _name_and_range_problems(s: Settings) -> list[str]:
    problems = _template_problems(s.dm.experiment_name)
    if s.dm.group is not None:
        problems += _name_problems("dm.group", s.dm.group)
    if s.scheduling.timeout <= 0:
        problems.append("scheduling.timeout: must be more than 0 seconds")
    if s.scheduling.refresh_period < 0:
        problems.append("scheduling.refresh_period: must be 0 (off) or more")
    if s.dm.settle_time < 0:
        problems.append("dm.settle_time: must be 0 or more seconds")
    if s.dm.transfer_workers < 1:
        problems.append("dm.transfer_workers: must be at least 1")
    return problems


def _layout_problems(dm: DMSettings) -> list[str]:
    """`dm.layout` names known placeholders and stays inside storage_root; `dm.subdirs` are folder names."""
    if dm.backend != "local":
        default = DMSettings()
        return [f"dm.{key}: used by the local backend only; leave it out with dm.backend: {dm.backend}"
                for key in ("layout", "subdirs", "posix") if getattr(dm, key) != getattr(default, key)]  # fmt: skip
    problems = []
    if len(dm.subdirs) < 2:
        problems.append("dm.subdirs: needs at least two folders (raw data goes to the first, _rec to the second)")
    for sub in dm.subdirs:
        problems += _name_problems("dm.subdirs", sub)
    if len(set(dm.subdirs)) != len(dm.subdirs):
        problems.append(f"dm.subdirs: names a folder twice: {', '.join(dm.subdirs)}")
    problems += _posix_account_problems(dm.posix)
    if dm.posix.group is not None:
        problems += _posix_group_problems(dm.posix.group)
        if dm.group is not None:
            problems.append("dm.posix.group: dm.group is set too; set one (dm.group is the fixed-name shorthand)")
    return problems + _layout_template_problems(dm.layout)


def _posix_group_problems(template: str) -> list[str]:
    """`dm.posix.group` is a fixed group name, or a template of one with known placeholders."""
    key = "dm.posix.group"
    names, problems = _placeholders(key, template, POSIX_GROUP_FIELDS)
    if problems:
        return problems
    if not POSIX_NAME.fullmatch(template.format(**{name: "1" for name in POSIX_GROUP_FIELDS})):
        return [f"{key}: {template!r} does not make a unix group name (a letter or _, then letters, digits, "
                "_ . -; at most 32; e.g. p{gup})"]  # fmt: skip
    return []


def _posix_account_problems(posix: PosixSettings) -> list[str]:
    """`user_account` makes a unix user name of a badge; `staff_groups` are group names."""
    problems: list[str] = []
    if posix.user_account is not None:
        key = "dm.posix.user_account"
        names, problems = _placeholders(key, posix.user_account, ("badge",))
        if not problems and "badge" not in names:
            problems.append(f"{key}: must hold {{badge}} (e.g. d{{badge}}), or every user would be one account")
        elif not problems and not POSIX_NAME.fullmatch(posix.user_account.format(badge="1")):
            problems.append(f"{key}: {posix.user_account!r} does not make a unix user name (e.g. d{{badge}})")
    for group in posix.staff_groups:
        if not POSIX_NAME.fullmatch(group):
            problems.append(f"dm.posix.staff_groups: {group!r} is not a unix group name")
    return problems


def _placeholders(key: str, template: str, fields: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the placeholders `template` names, its problems: malformed, unknown names, format specs)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        return [], [f"{key}: {error}"]
    names = [name for _, name, _, _ in parsed if name is not None]
    unknown = sorted({"{" + name + "}" for name in names if name not in fields})
    if unknown:
        known = ", ".join("{" + f + "}" for f in fields)
        return names, [f"{key}: unknown placeholder(s) {', '.join(unknown)}; use {known}"]
    if any(spec or conversion for _, name, spec, conversion in parsed if name is not None):
        return names, [f"{key}: placeholders take no format spec or conversion (write {{gup}}, not {{gup:05}})"]
    return names, []


def _layout_template_problems(layout: str) -> list[str]:
    """What is wrong with a `dm.layout` template: unknown placeholders, or a way out of storage_root."""
    key = "dm.layout"
    names, problems = _placeholders(key, layout, LAYOUT_FIELDS)
    if problems:
        return problems
    if not layout.startswith("{storage_root}/") or names.count("storage_root") != 1:
        return [f"{key}: must start with {{storage_root}}/ and name it once, so storage stays inside dm.storage_root"]
    if ".." in layout:
        return [f"{key}: must not hold '..': it could lead out of dm.storage_root"]
    if not {"experiment", "gup"} & set(names):
        return [f"{key}: must hold {{experiment}} or {{gup}}, so each experiment gets a folder of its own"]
    sample = layout.format(**{name: "x" for name in LAYOUT_FIELDS})
    for part in sample.split("/")[1:]:
        problems = _name_problems(key, part) if part else [f"{key}: has an empty folder name ('//' or a final '/')"]
        if problems:
            return problems
    return []


def _scheduling_problems(scheduling: SchedulingSettings) -> list[str]:
    """What the chosen backend needs: the aps service's URL and credentials, or the file's path."""
    problems = []
    if scheduling.backend == "aps":
        problems += _scheduling_url_problems(scheduling)
        problems += secret_file_problems("scheduling.credentials", scheduling.credentials, required=True)
    if scheduling.backend == "file":
        if scheduling.path is None:
            problems.append("scheduling.path: the file backend needs the schedule's path")
        elif why := unreachable(scheduling.path):
            problems.append(f"scheduling.path: {scheduling.path} cannot be reached by user {user_name()} ({why})")
        elif not scheduling.path.exists() or scheduling.path.is_dir():
            problems.append(f"scheduling.path: no schedule file at {scheduling.path}")
    return problems


def _globus_problems(s: Settings) -> list[str]:
    problems = []
    if s.globus.enabled:
        for key in ("collection_id", "client_id"):
            if not getattr(s.globus, key):
                problems.append(f"globus.{key}: must be set when globus.enabled is true")
        problems += secret_file_problems("globus.client_secret_file", s.globus.client_secret_file, required=True)
    if s.dm.transfer == "globus" and not s.globus.enabled:
        problems.append("dm.transfer: 'globus' needs globus.enabled: true")
    return problems


def _email_problems(email: EmailSettings) -> list[str]:
    if not email.enabled:
        return []
    problems = []
    if not email.sender:
        problems.append("email.sender: must be set when email.enabled is true")
    problems += secret_file_problems("email.credentials", email.credentials, required=False)
    login = email.credentials is not None and email.outbox is None  # with an outbox nothing goes to SMTP
    if login and not email.starttls and not email.allow_insecure and not is_loopback(email.smtp_host):
        problems.append(
            f"email.starttls: logging in to {email.smtp_host} without STARTTLS would send the "
            "email.credentials password in clear; set email.starttls: true, or email.allow_insecure: true "
            "only on a network you trust"
        )
    if email.template is not None and (why := unreachable(email.template)):
        problems.append(f"email.template: {email.template} cannot be reached by user {user_name()} ({why})")
    elif email.template is not None and not email.template.is_file():
        problems.append(f"email.template: no template file at {email.template}")
    return problems


def _tag_problems(tag: TagSettings) -> list[str]:
    """`tag.fields` names known fields, each to a PV name of its own, and leaves something to write."""
    problems = []
    for name, pv in tag.fields.items():
        if name not in TAG_FIELDS:
            problems.append(f"tag.fields.{name}: unknown field (known: {', '.join(TAG_FIELDS)})")
        elif pv is not None and (not pv.strip() or any(c.isspace() or c in "\"'" for c in pv)):
            problems.append(f"tag.fields.{name}: {pv!r} is not a PV name (no spaces or quotes)")
    writers: dict[str, list[str]] = {}
    for name, pv in tag.targets().items():
        writers.setdefault(pv, []).append(name)
    for pv, names in writers.items():
        if len(names) > 1:
            problems.append(f"tag.fields: {' and '.join(names)} would write the same PV, {pv}")
    if not writers:
        problems.append("tag.fields: leaves out every field; Tag would write nothing")
    return problems


def scicat_problems(scicat: ScicatSettings) -> list[str]:
    """What scicat.enabled needs: an API base that keeps the password safe, the credentials, a group template,
    a contact address and a source host SciCat takes (it would refuse every dataset for either)."""
    problems = []
    if scicat.timeout <= 0:
        problems.append("scicat.timeout: must be more than 0 seconds")
    if scicat.stuck_after <= 0:
        problems.append("scicat.stuck_after: must be more than 0 seconds")
    _, template_problems = _placeholders("scicat.owner_group", scicat.owner_group, SCICAT_GROUP_FIELDS)
    problems += template_problems
    if not scicat.owner_group.strip():
        problems.append("scicat.owner_group: must not be empty (every dataset needs an ownerGroup)")
    for group in scicat.access_groups:
        if not group.strip() or any(c.isspace() for c in group):
            problems.append(f"scicat.access_groups: {group!r} is not a group name")
    if not scicat.enabled:
        return problems
    problems += _url_problems("scicat.url", scicat.url, "needs the SciCat API base (https://.../api/v3)",
                              insecure_ok=scicat.allow_insecure or scicat.credentials is None)  # fmt: skip
    problems += secret_file_problems("scicat.credentials", scicat.credentials, required=True)
    if not scicat.creation_location.strip():
        problems.append("scicat.creation_location: must be set when scicat.enabled is true (e.g. APS/2-BM-A,B)")
    if not scicat.contact_email.strip():
        problems.append("scicat.contact_email: must be set when scicat.enabled is true: the contact of a dataset "
                        "whose PI has no e-mail address SciCat takes (e.g. 2bm-staff@aps.anl.gov)")  # fmt: skip
    elif why := email_list_problem(scicat.contact_email):
        problems.append(f"scicat.contact_email: {why} (one address, or several separated by ;)")
    if scicat.source_folder_host and (why := source_host_problem(scicat.source_folder_host)):
        problems.append(f"scicat.source_folder_host: {why}; SciCat takes a host name with a domain "
                        "(e.g. data.aps.anl.gov, nfs://data.aps.anl.gov)")  # fmt: skip
    return problems


def _metadata_problems(metadata: MetadataSettings) -> list[str]:
    """Each metadata key is a plain name and each PV a PV name; no PV read twice under two keys."""
    problems = []
    for key, pv in metadata.pvs.items():
        if not key.strip() or any(c.isspace() or c in "\"'{}" for c in key):
            problems.append(f"metadata.pvs: {key!r} is not a key name (no spaces, quotes or braces)")
        if not pv.strip() or any(c.isspace() or c in "\"'" for c in pv):
            problems.append(f"metadata.pvs.{key}: {pv!r} is not a PV name (no spaces or quotes)")
    seen: dict[str, str] = {}
    for key, pv in metadata.pvs.items():
        if pv in seen:
            problems.append(f"metadata.pvs.{key}: {pv} is read under {seen[pv]} already")
        seen.setdefault(pv, key)
    return problems


def _url_problems(key: str, url: str, missing: str, *, insecure_ok: bool, how: str = "") -> list[str]:
    """A base URL without a password in it, that sends none in clear unless `insecure_ok` (or to loopback)."""
    section = key.split(".")[0]
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number raises here
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        return [f"{key}: {missing}"]
    if parts.username is not None or parts.password is not None:
        return [f"{key}: must not hold a user name or password; put them in {section}.credentials"]
    if parts.scheme == "http" and not insecure_ok and not is_loopback(parts.hostname):
        where = parts.hostname if port is None else f"{parts.hostname}:{port}"
        return [
            f"{key}: http:// to {where} would send the {section}.credentials password in clear{how}; use https://, "
            f"or set {section}.allow_insecure: true only on a network you trust"
        ]
    return []


def _scheduling_url_problems(scheduling: SchedulingSettings) -> list[str]:
    """A base URL the aps backend can use without giving its password away."""
    return _url_problems("scheduling.url", scheduling.url, "the aps backend needs the service's base URL (https://...)",
                         insecure_ok=scheduling.allow_insecure, how=" (Basic auth)")  # fmt: skip


def _name_problems(key: str, value: str) -> list[str]:
    try:
        check_name(value, key)
    except InputError as error:
        return [f"{key}: {error}"]
    return []


def _template_problems(template: str) -> list[str]:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        return [f"dm.experiment_name: {error}"]
    unknown = fields - set(EXPERIMENT_NAME_FIELDS)
    if unknown:
        return [
            f"dm.experiment_name: unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"use {', '.join('{' + f + '}' for f in EXPERIMENT_NAME_FIELDS)}"
        ]
    return _name_problems("dm.experiment_name", template.format(year_month="2026-01", pi_last_name="X", gup="1"))


def is_fixed_name(template: str) -> bool:
    """A name without placeholders (a valid one: the config's own checks name a malformed template)."""
    return not _posix_group_problems(template) and all(
        name is None for _, name, _, _ in string.Formatter().parse(template)
    )


# The looks at the host the checks above make, shared with `preflight`.


def user_name() -> str:
    """The name of the user the IOC runs as (its number when the system has no name for it)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def unreachable(path: Path) -> str:
    """Why this user cannot even look at `path` (a folder on the way it may not enter): the reason, or ''
    when it can, there or not. `Path.exists()` raises then instead of answering."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return ""
    except OSError as error:
        return error.strerror or type(error).__name__
    return ""
