"""The settings: one frozen dataclass per section of the config file, with the defaults of every key.

Plain data without yaml, so that the use cases can take them (they import this module only:
`load` reads the file, `rules` and `preflight` check it). docs/configuration.md has every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from ..domain.naming import DEFAULT_LAYOUT, DEFAULT_SUBDIRS
from ..domain.tag import OPTIONAL_TAG_FIELDS, TAG_FIELDS


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


@dataclass(frozen=True)
class PvaSettings:
    """pva: the same PVs over PV Access too (p4p, the `pva` extra); ports and addresses from EPICS_PVA*."""

    enabled: bool = True


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
    pva: PvaSettings = PvaSettings()
    source: Path | None = field(default=None, compare=False)  # the YAML file it came from
