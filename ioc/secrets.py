"""Credentials and secret files, and where a password may travel in clear.

A secret file holds one line (a Globus client secret, or `user|password`)
and must be readable by its owner only. The adapters read their secrets here
when they need them, and the config checks the same files at load and with
`--check`. Plain Python and the domain only: an adapter that imports this
module loads neither the config nor caproto.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from .domain.errors import InputError


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1: what never leaves this machine."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def secret_file_problems(key: str, path: Path | None, *, required: bool) -> list[str]:
    """A credentials or secret file must exist and be readable by its owner only."""
    if path is None:
        return [f"{key}: must be set"] if required else []
    try:
        mode = path.stat().st_mode
    except OSError as error:
        return [f"{key}: cannot read {path}: {error.strerror}"]
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"{key}: {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"]
    if not os.access(path, os.R_OK):
        return [f"{key}: {path} is not readable by this user"]
    return []


def read_secret(key: str, path: Path) -> str:
    """The stripped first line of a secret file, after the mode check."""
    problems = secret_file_problems(key, path, required=True)
    if problems:
        raise InputError(problems[0])
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{key}: {path} is empty")
    return lines[0].strip()


def read_credentials(key: str, path: Path) -> tuple[str, str]:
    """`user|password` or `user password` on one line -> (user, password)."""
    line = read_secret(key, path)
    user, sep, password = line.partition("|") if "|" in line else line.partition(" ")
    if not sep or not user.strip() or not password.strip():
        raise InputError(f"{key}: {path} must hold one line 'user|password' (or 'user password')")
    return user.strip(), password.strip()
