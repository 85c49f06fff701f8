"""What `--check` finds on this machine beyond the rules.

`environment_problems`: the folders, groups, ACLs and secrets the config names,
the write_hosts resolving. `preflight_problems` adds what the adapters can tell
(the registry, the schedule file read whole, the template and outbox, the SciCat
account); they are imported only when `--check` runs.
"""

from __future__ import annotations

import errno
import grp
import os
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfoNotFoundError

from ..addresses import resolution_problems
from ..domain.errors import DMagicError, InputError
from ..secrets import read_credentials, read_secret, secret_file_problems
from .rules import is_fixed_name, scicat_problems, unreachable, user_name
from .schema import Settings


def preflight_problems(settings: Settings) -> list[str]:
    """`--check` beyond the config's own checks: folders, group, secrets, the schedule file, the template."""
    from ...adapters.hosts import is_this_host
    from ...adapters.registry.file import unreadable

    problems = environment_problems(settings, data_is_local=is_this_host(settings.dm.data_host))
    registry = settings.ioc.state_dir / "registry.sqlite"
    if why := unreadable(registry):
        problems.append(f"ioc.state_dir: {registry} cannot be read ({why}); at start it is kept aside, "
                        "and an empty registry started: put back a backup first")  # fmt: skip
    try:
        tz = settings.beamline.tz
    except (ZoneInfoNotFoundError, ValueError):
        tz = None  # the config's own checks name beamline.timezone; the schedule's times cannot be read without it
    if settings.scheduling.backend == "file" and settings.scheduling.path is not None and tz is not None:
        from ...adapters.schedule_file import FileSchedule

        schedule = FileSchedule(settings.scheduling.path, tz)
        try:
            runs = schedule.runs()
            if runs:
                schedule.beamtimes(runs[0])  # reads every entry of the file
        except DMagicError as error:
            problems.append(f"scheduling.path: {error}")
    if settings.email.enabled:
        from ...adapters.email_message import load_template

        try:
            load_template(settings.email.template)
        except DMagicError as error:
            said = str(error)
            if not said.startswith("email.template"):
                said = f"email.template: {settings.email.template}: {said.removeprefix('email template: ')}"
            problems.append(said)
        if settings.email.outbox is not None:
            from ...adapters.email import outbox_problem

            if problem := outbox_problem(settings.email.outbox):
                problems.append(f"email.outbox: {problem}")
    problems += _scicat_account_problems(settings, problems)
    return problems


def _scicat_account_problems(settings: Settings, found: list[str]) -> list[str]:
    """When scicat.enabled and its keys are sound: log in and say what the account lacks (creating datasets
    under the IOC's pids, reading them back). Never with a config the checks refuse: its password could go
    where it must not."""
    s = settings.scicat
    if not s.enabled or s.credentials is None or scicat_problems(s) or any(p.startswith("scicat.") for p in found):
        return []
    from ...adapters.scicat.account import account_problems
    from ...adapters.scicat.client import ScicatClient

    return account_problems(ScicatClient(s.url, s.credentials, s.timeout), s.access_groups, s.contact_email)


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
        if s.dm.posix.group is not None and is_fixed_name(s.dm.posix.group):
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


def _folder_problems(key: str, path: Path, *, write: bool) -> list[str]:
    if why := unreachable(path):
        return [f"{key}: {path} cannot be reached by user {user_name()} ({why})"]
    if not path.exists():
        return [f"{key}: {path} does not exist (is the disk mounted?)"]
    if not path.is_dir():
        return [f"{key}: {path} is not a folder"]
    if not os.access(path, os.R_OK | os.X_OK):
        return [f"{key}: {path} cannot be read by user {user_name()}"]
    if write and not os.access(path, os.W_OK | os.X_OK):
        return [f"{key}: {path} is not writable by user {user_name()}"]
    return []


def _state_dir_problems(state_dir: Path) -> list[str]:
    """state_dir is created at start when missing: then the folder that would hold it must be writable."""
    if why := unreachable(state_dir):
        return [f"ioc.state_dir: {state_dir} cannot be reached by user {user_name()} ({why})"]
    if not state_dir.exists():
        parent = state_dir.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            return [
                f"ioc.state_dir: {state_dir} does not exist and cannot be made: "
                f"{parent} is not writable by user {user_name()}"
            ]
        return []
    problems = _folder_problems("ioc.state_dir", state_dir, write=True)
    for name in ("registry.sqlite", "autosave.json"):
        state_file = state_dir / name
        if not problems and state_file.exists() and not os.access(state_file, os.R_OK | os.W_OK):
            problems.append(f"ioc.state_dir: {state_file} cannot be read and written by user {user_name()}")
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


def _group_problems(key: str, name: str) -> list[str]:
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return [f"{key}: unix group {name!r} does not exist on this host; create it or set {key}: null"]
    if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
        return [f"{key}: user {user_name()} is not a member of group {name!r}, so Create could not give folders to it"]
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
