"""YAML configuration -> validated, typed settings.

Every problem names its key (`dm.storage_root: ...`). Relative paths resolve
against the config file's folder and `~` expands. Loading collects every
problem before failing, so `--check` can list them all at once.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import os
import pwd
import string
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from .addresses import host_problems, resolution_problems
from .domain.catalog_values import email_list_problem, source_host_problem
from .domain.model import (
    BADGE,
    DEFAULT_LAYOUT,
    DEFAULT_SUBDIRS,
    EXPERIMENT_NAME_FIELDS,
    LAYOUT_FIELDS,
    POSIX_GROUP_FIELDS,
    POSIX_NAME,
    InputError,
    check_name,
)
from .secrets import is_loopback, read_credentials, read_secret, secret_file_problems


class ConfigError(Exception):
    """The config has problems; `problems` lists each, naming its key.

    `settings` is what could be built around them (the keys in error at their
    defaults), or None, so `--check` can look further at the rest.
    """

    def __init__(self, problems: list[str], settings: Settings | None = None):
        self.problems = problems
        self.settings = settings
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class AccessSettings:
    write_hosts: tuple[str, ...] = ()
    write_users: tuple[str, ...] = ()
    max_circuits_per_host: int = 64  # CA circuits one address may hold; past that a new one is closed at once

    @property
    def restricted(self) -> bool:
        return bool(self.write_hosts or self.write_users)


@dataclass(frozen=True)
class IocSettings:
    prefix: str = "dmagic:"
    state_dir: Path = Path("~/.local/state/dmagic-ioc").expanduser()
    access: AccessSettings = AccessSettings()


@dataclass(frozen=True)
class BeamlineSettings:
    name: str = ""
    station: str = ""
    timezone: str = "America/Chicago"
    contacts: tuple[str, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class SchedulingSettings:
    backend: str = "file"
    url: str = ""
    credentials: Path | None = None
    timeout: float = 10.0
    refresh_period: float = 600.0
    path: Path | None = None
    allow_insecure: bool = False  # true: Basic auth may go over plain http:// to a host other than loopback


@dataclass(frozen=True)
class PosixSettings:
    """dm.posix: ownership on the filesystem of each experiment's storage (local backend)."""

    group: str | None = None  # unix group of the experiment tree: a template ("p{gup}") or a fixed name
    user_account: str | None = None  # the account of a user, a template ("d{badge}"): set = an ACL entry per user
    staff_groups: tuple[str, ...] = ()  # groups given rwx on every experiment tree (staff, services)


@dataclass(frozen=True)
class DMSettings:
    backend: str = "local"
    experiment_name: str = "{year_month}-{pi_last_name}-{gup}"
    data_host: str = "localhost"
    data_top_dir: Path = Path("/data")
    storage_root: Path = Path("/gdata/dm")
    group: str | None = None
    transfer: str = "builtin"  # builtin | globus (addition, see docs/configuration.md)
    settle_time: float = 2.0  # seconds a file must stay unchanged before transfer
    checksum: bool = False  # verify a checksum after each copy (addition)
    transfer_workers: int = 4  # files copied in parallel (addition)
    follow_schedule: bool = False  # create/select the experiment of each new beamtime by itself
    layout: str = DEFAULT_LAYOUT  # local: where an experiment's storage goes (docs/interface.md section 7)
    subdirs: tuple[str, ...] = DEFAULT_SUBDIRS  # local: made at Create; raw -> the first, _rec -> the second
    posix: PosixSettings = PosixSettings()  # local: group ownership of the experiment tree


@dataclass(frozen=True)
class GlobusSettings:
    enabled: bool = False
    collection_id: str = ""
    client_id: str = ""
    client_secret_file: Path | None = None
    source_collection_id: str = ""  # data host collection, for dm.transfer: globus (addition)


@dataclass(frozen=True)
class EmailSettings:
    enabled: bool = False
    smtp_host: str = "localhost"
    smtp_port: int = 25
    starttls: bool = False
    credentials: Path | None = None
    sender: str = ""
    template: Path | None = None
    allow_insecure: bool = False  # true: SMTP AUTH may go without STARTTLS to a host other than loopback
    outbox: Path | None = None  # a folder: each message is written there as an .eml file, never sent (addition)


@dataclass(frozen=True)
class ScicatSettings:
    """scicat: the catalogue each acquisition becomes a raw dataset in."""

    enabled: bool = False
    url: str = ""  # the SciCat API base, e.g. https://scicat.example.org/api/v3
    credentials: Path | None = None  # "user|password" file of a functional account
    owner_group: str = "{gup}"  # the dataset's ownerGroup, a template of the proposal's fields
    access_groups: tuple[str, ...] = ()  # more groups that may read the dataset
    creation_location: str = ""  # e.g. "APS/2-BM-A,B"
    contact_email: str = ""  # the datasets' contactEmail when the PI has no address SciCat takes ("a@x.org;b@x.org")
    source_folder_host: str = ""  # sourceFolderHost, a host with a domain (nfs://data.aps.anl.gov); "" = this one
    timeout: float = 10.0  # seconds for a whole request (not per read)
    stuck_after: float = 900.0  # seconds a dataset may wait in the queue before Catalog:Health says Error
    allow_insecure: bool = False  # true: the password may go over plain http:// to a host other than loopback


@dataclass(frozen=True)
class MetadataSettings:
    """metadata: the PVs read at DaqStart and at the end of each acquisition (docs/interface.md section 10)."""

    pvs: dict[str, str] = field(default_factory=dict, hash=False)  # key -> PV name


SCICAT_GROUP_FIELDS = ("gup", "beamline", "station")  # scicat.owner_group's placeholders


# The fields Tag writes, named as tomoScan's databases name their PVs (docs/interface.md section 6).
TAG_FIELDS = {  # Tag's fields (tomoScan's user-info record names) -> the `UserInfo` value each takes
    "UserName": "first_name",
    "UserLastName": "last_name",
    "UserEmail": "email",
    "UserBadge": "badge",
    "UserInstitution": "institution",
    "UserInfoUpdate": "updated",
    "ProposalNumber": "proposal",
    "ProposalTitle": "title",
    "ESAFNumber": "esaf",
    "ESAFDOINumber": "esaf_doi",
    "ExperimentYearMonth": "year_month",
}
OPTIONAL_TAG_FIELDS = ("ESAFDOINumber",)


@dataclass(frozen=True)
class TagSettings:
    prefix: str = ""
    # field -> PV name under the prefix, or None to leave the field out; a field not listed keeps its own name
    fields: dict[str, str | None] = field(default_factory=dict, hash=False)

    def targets(self) -> dict[str, str]:
        """Each field Tag writes -> the name of its PV under the prefix."""
        named = {name: self.fields.get(name, name) for name in TAG_FIELDS}
        return {name: pv for name, pv in named.items() if pv is not None}

    def optional_pvs(self) -> frozenset[str]:
        """The PVs whose absence from the target is normal: the optional fields the config does not name."""
        targets = self.targets()
        return frozenset(targets[name] for name in OPTIONAL_TAG_FIELDS if name in targets and name not in self.fields)


@dataclass(frozen=True)
class Settings:
    ioc: IocSettings = IocSettings()
    beamline: BeamlineSettings = BeamlineSettings()
    scheduling: SchedulingSettings = SchedulingSettings()
    dm: DMSettings = DMSettings()
    globus: GlobusSettings = GlobusSettings()
    email: EmailSettings = EmailSettings()
    tag: TagSettings = TagSettings()
    scicat: ScicatSettings = ScicatSettings()
    metadata: MetadataSettings = MetadataSettings()
    source: Path | None = field(default=None, compare=False)  # the YAML file it came from


CHOICES = {
    "scheduling.backend": ("file", "aps"),
    "dm.backend": ("local", "aps"),
    "dm.transfer": ("builtin", "globus"),
}


def load_config(path: Path | str) -> Settings:
    """Read and validate a YAML config file; raise ConfigError listing every problem."""
    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError([f"cannot read config {path}: {error.strerror}"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{path} is not valid YAML: {error}"]) from None
    return settings_from_dict(raw or {}, base=path.parent, source=path)


def settings_from_dict(raw: object, *, base: Path, source: Path | None = None) -> Settings:
    problems: list[str] = []
    settings = _build(Settings, raw, "", base, problems)
    if settings is not None:
        settings = dataclasses.replace(settings, source=source)
        problems += _semantic_problems(settings)
    if problems:
        raise ConfigError(problems, settings)
    return settings


def _build(cls: type, raw: object, where: str, base: Path, problems: list[str]):
    """Build dataclass `cls` from a mapping, checking keys and types."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where.rstrip('.') or 'config'}: expected a mapping of keys, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    values = {}
    for key, value in raw.items():
        key_path = f"{where}{key}"
        if key not in known:
            problems.append(f"{key_path}: unknown key (known: {', '.join(sorted(known))})")
            continue
        converted = _convert(hints[key], value, key_path, base, problems)
        if converted is not _INVALID:
            values[key] = converted
    return cls(**values)


_INVALID = object()


def _convert(hint, value, key_path: str, base: Path, problems: list[str]):
    """`value` as the type `hint` says; _INVALID, its problem added to `problems`, when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        built = _build(hint, value, key_path + ".", base, problems)
        return _INVALID if built is None else built
    if origin in (typing.Union, types.UnionType):
        if value in (None, "") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key_path, base, problems)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key_path}: expected a mapping of names, got {type(value).__name__}")
            return _INVALID
        items = {str(k): _convert(args[1], v, f"{key_path}.{k}", base, problems) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not _INVALID}
    leaf = _LEAVES.get(origin or hint)
    if leaf is None:
        raise TypeError(f"no converter for {hint}")  # a programming error, not a config one
    try:
        return leaf(hint, value, base, _shown(key_path, value))
    except _Unfit as unfit:
        problems.append(f"{key_path}: {unfit}")
        return _INVALID


class _Unfit(Exception):
    """A config value of the wrong kind; the message follows the key in the problem."""


def _names(hint, value, base: Path, shown: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(isinstance(v, (dict, list, bool)) or v is None for v in value):
        raise _Unfit(f"expected a list of names or numbers, got {shown}")
    return tuple(str(v) for v in value)


def _path(hint, value, base: Path, shown: str) -> Path:
    if not isinstance(value, str):
        raise _Unfit(f"expected a path, got {shown}")
    if value == "":
        raise _Unfit("must not be empty")
    return (base / Path(value).expanduser()).resolve()


def _flag(hint, value, base: Path, shown: str) -> bool:
    if not isinstance(value, bool):
        raise _Unfit(f"expected true or false, got {shown}")
    return value


def _number(hint, value, base: Path, shown: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and not isinstance(value, int)):
        raise _Unfit(f"expected {'a whole number' if hint is int else 'a number'}, got {shown}")
    return hint(value)


def _text(hint, value, base: Path, shown: str) -> str:
    if isinstance(value, (dict, list, bool)) or value is None:
        raise _Unfit(f"expected text, got {shown}")
    return str(value)


_LEAVES = {tuple: _names, Path: _path, bool: _flag, int: _number, float: _number, str: _text}


_SECRET_WORDS = ("credential", "secret", "password", "token")


def _shown(key_path: str, value: object) -> str:
    """A value as a problem quotes it; never the value of a key that may hold a secret."""
    name = key_path.rsplit(".", 1)[-1].lower()
    return "a value (not shown: the key may hold a secret)" if any(w in name for w in _SECRET_WORDS) else repr(value)


def _semantic_problems(s: Settings) -> list[str]:
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
            problems.append(f"scheduling.path: {scheduling.path} cannot be reached by user {_user()} ({why})")
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
        problems.append(f"email.template: {email.template} cannot be reached by user {_user()} ({why})")
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


def environment_problems(s: Settings, *, data_is_local: bool = True) -> list[str]:
    """What the IOC, Create and the transfer would trip on in this machine's folders, groups and secrets.

    `--check` runs these on top of the config's own checks. They are not errors
    at start: a disk may be mounted later, and Create then says what is missing.
    `data_is_local`: the detectors write here (dm.data_host), so Create makes
    the raw folders under dm.data_top_dir.
    """
    problems = _state_dir_problems(s.ioc.state_dir)
    problems += resolution_problems(s.ioc.access.write_hosts)
    if s.dm.backend == "local":
        problems += _folder_problems("dm.storage_root", s.dm.storage_root, write=True)
        if s.dm.transfer == "builtin" or data_is_local:  # read by the built-in transfer, written by Create
            problems += _folder_problems("dm.data_top_dir", s.dm.data_top_dir, write=data_is_local)
        if s.dm.group is not None:
            problems += _group_problems("dm.group", s.dm.group)
        if s.dm.posix.group is not None and _is_fixed_name(s.dm.posix.group):
            problems += _group_problems("dm.posix.group", s.dm.posix.group)
        for group in s.dm.posix.staff_groups:
            problems += _group_problems("dm.posix.staff_groups", group)
        if s.dm.posix.user_account is not None or s.dm.posix.staff_groups:
            problems += _acl_problems(s.dm.storage_root)
    if s.scheduling.backend == "aps" and s.scheduling.credentials is not None:
        problems += _credentials_problems("scheduling.credentials", s.scheduling.credentials)
    if s.globus.enabled and s.globus.client_secret_file is not None:
        problems += _credentials_problems("globus.client_secret_file", s.globus.client_secret_file, pair=False)
    if s.email.enabled and s.email.credentials is not None:
        problems += _credentials_problems("email.credentials", s.email.credentials)
    if s.scicat.enabled and s.scicat.credentials is not None:
        problems += _credentials_problems("scicat.credentials", s.scicat.credentials)
    return problems


def _user() -> str:
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


def _folder_problems(key: str, path: Path, *, write: bool) -> list[str]:
    if why := unreachable(path):
        return [f"{key}: {path} cannot be reached by user {_user()} ({why})"]
    if not path.exists():
        return [f"{key}: {path} does not exist (is the disk mounted?)"]
    if not path.is_dir():
        return [f"{key}: {path} is not a folder"]
    if not os.access(path, os.R_OK | os.X_OK):
        return [f"{key}: {path} cannot be read by user {_user()}"]
    if write and not os.access(path, os.W_OK | os.X_OK):
        return [f"{key}: {path} is not writable by user {_user()}"]
    return []


def _state_dir_problems(state_dir: Path) -> list[str]:
    """state_dir is created at start when missing: then the folder that would hold it must be writable."""
    if why := unreachable(state_dir):
        return [f"ioc.state_dir: {state_dir} cannot be reached by user {_user()} ({why})"]
    if not state_dir.exists():
        parent = state_dir.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return [
                f"ioc.state_dir: {state_dir} does not exist and cannot be made: "
                f"{parent} is not writable by user {_user()}"
            ]
        return []
    problems = _folder_problems("ioc.state_dir", state_dir, write=True)
    for name in ("registry.sqlite", "autosave.json"):
        state_file = state_dir / name
        if not problems and state_file.exists() and not os.access(state_file, os.R_OK | os.W_OK):
            problems.append(f"ioc.state_dir: {state_file} cannot be read and written by user {_user()}")
    return problems


def _acl_problems(storage_root: Path) -> list[str]:
    """dm.posix.user_account and staff_groups give access by POSIX ACLs: a filesystem that has them."""
    if not storage_root.is_dir():
        return []  # named as dm.storage_root
    problem = acl_support_problem(storage_root)
    return [f"dm.posix: {problem}; user_account and staff_groups need POSIX ACLs"] if problem else []


# user::rw- group::--- other::---, as the xattr (version 2, then tag, perm, id per entry): what a 0600 file has
_OWNER_ONLY_ACL = bytes.fromhex("0200000001000600ffffffff04000000ffffffff20000000ffffffff")


def acl_support_problem(folder: Path) -> str:
    """Why `folder`'s filesystem cannot carry POSIX ACLs ('' when it can, or when `folder` is not writable:
    said elsewhere). Tried as the IOC sets them: the ACL xattr written on a temporary file there (one that
    changes nothing), then the file removed. A filesystem without ACLs answers EOPNOTSUPP."""
    try:
        fd, name = tempfile.mkstemp(prefix=".dmagic-acl-check-", dir=folder)
    except OSError:
        return ""
    try:
        os.setxattr(fd, "system.posix_acl_access", _OWNER_ONLY_ACL)
    except OSError as error:
        if error.errno == errno.EOPNOTSUPP:
            return f"the filesystem of {folder} has no POSIX ACL support (mount it with the acl option)"
    finally:
        os.close(fd)
        os.unlink(name)
    return ""


def _is_fixed_name(template: str) -> bool:
    """A name without placeholders (a valid one: the config's own checks name a malformed template)."""
    return not _posix_group_problems(template) and all(
        name is None for _, name, _, _ in string.Formatter().parse(template)
    )


def _group_problems(key: str, name: str) -> list[str]:
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return [f"{key}: unix group {name!r} does not exist on this host; create it or set {key}: null"]
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        return [f"{key}: user {_user()} is not a member of group {name!r}, so Create could not give folders to it"]
    return []


def _credentials_problems(key: str, path: Path, *, pair: bool = True) -> list[str]:
    """The file holds what the service needs (checked for its mode by the config's own checks)."""
    if secret_file_problems(key, path, required=True):
        return []  # already named by the config's own checks
    try:
        read_credentials(key, path) if pair else read_secret(key, path)
    except InputError as error:
        return [str(error)]
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        return [f"{key}: cannot read {path}: {reason}"]
    return []
