"""Throwaway unix groups and accounts for the tests of ownership and ACLs: a unique prefix, removed after.

Only root can make them: `needs_root` and `needs_acl` skip a test elsewhere, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("groupadd") is None,
    reason="makes throwaway unix groups: needs root and groupadd",
)
needs_acl = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("useradd", "runuser", "getfacl")),
    reason="makes throwaway accounts and reads as them: needs root, useradd, runuser and getfacl (the acl package)",
)


def unique_prefix() -> str:
    """A prefix no group on this host has: `dmt` and 5 hex digits."""
    return f"dmt{uuid.uuid4().hex[:5]}"


@contextlib.contextmanager
def throwaway_group(name: str) -> Iterator[str]:
    """Unix group `name`, removed at the end whatever happens."""
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@contextlib.contextmanager
def throwaway_user(name: str, groups: tuple[str, ...] = ()) -> Iterator[str]:
    """Unix account `name` (no home, no login), in `groups`; removed at the end whatever happens."""
    extra = ["-G", ",".join(groups)] if groups else []
    subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", *extra, name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def as_user(user: str, *command: str) -> bool:
    """Whether `command` succeeds when run as `user` (runuser: its own groups, no root rights)."""
    return subprocess.run(["runuser", "-u", user, "--", *command], capture_output=True, timeout=30).returncode == 0


@contextlib.contextmanager
def open_folder() -> Iterator[Path]:
    """A folder every account can pass through (pytest's tmp_path is root's only), removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="dmt-acl-"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
