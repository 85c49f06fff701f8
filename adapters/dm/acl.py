"""POSIX ACLs on an experiment's storage tree, through `setfacl` (the `acl` package).

`setfacl`, not pylibacl: pylibacl ships no wheel (it compiles against libacl's headers, so the IOC's
host would need a compiler and libacl1-dev), while `find ... -exec setfacl {} +` walks a tree in a
few processes: 100,000 files took about 1-2 s here (ext4), so AddUser sets them in its own worker
thread, no background walk. Symbolic links are never followed. Folders get the entry and a default
entry, so files made later (by the transfer) inherit it: r-x, cut to r-- by the file's group bits
(its ACL mask) unless the file is executable; files there at AddUser get r-- itself.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ...ioc.domain.model import DMError

SETFACL = "setfacl"
READ = "r-x"  # on folders; files get it without x: r--
WRITE = "rwx"  # on folders; files: rw-


def grant(tree: Path, entries: Sequence[str]) -> None:
    """Give `entries` (`u:name:r-x`, `g:name:rwx`) on every folder of `tree`, as is and as defaults, and
    without x on every file: two walks of `find`, each calling setfacl on batches of paths."""
    if not entries:
        return
    folders = ",".join(f"{entry},d:{entry}" for entry in entries)
    files = ",".join(entry[:-1] + "-" for entry in entries)
    _find_setfacl(tree, ["-type", "d"], "-m", folders)
    _find_setfacl(tree, ["!", "-type", "d", "!", "-type", "l"], "-m", files)


def revoke(tree: Path, qualifiers: Sequence[str]) -> None:
    """Remove the entries of `qualifiers` (`u:name`) from `tree`, access and default."""
    if qualifiers:
        _run(tree, ["-R", "-P", "-x", ",".join(f"{q},d:{q}" for q in qualifiers), "--", str(tree)])


def _find_setfacl(tree: Path, selection: list[str], action: str, spec: str) -> None:
    _run(tree, [str(tree), *selection, "-exec", "{setfacl}", action, spec, "--", "{}", "+"], find=True)


def _run(tree: Path, arguments: list[str], *, find: bool = False) -> None:
    """setfacl with `arguments`, or `find -P` calling it; a DMError saying why when it fails."""
    setfacl = shutil.which(SETFACL)
    if setfacl is None:
        raise DMError("dm.posix: setfacl is not installed on this host (install the acl package); access not given")
    if find:
        command = ["find", "-P", *(setfacl if a == "{setfacl}" else a for a in arguments)]
    else:
        command = [setfacl, *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DMError(f"setfacl on {tree} failed: {error}") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no reason given"])[0]
        if "not supported" in said.lower():
            raise DMError(f"the filesystem of {tree} has no POSIX ACL support (mount it with the acl option): {said}")
        raise DMError(f"setfacl on {tree} failed: {said}")
