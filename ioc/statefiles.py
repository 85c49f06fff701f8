"""State files the IOC cannot read are kept aside under a new name, never overwritten or deleted.

`keep_aside(path)` renames `autosave.json` to `autosave.json.corrupt-20261201T141500`
(`-2`, `-3`, ... when that name is taken), so the IOC can start afresh while the
original stays, byte for byte, for whoever repairs or restores it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

ASIDE_MARK = ".corrupt-"


def keep_aside(path: Path, companions: Sequence[str] = ()) -> Path:
    """Rename `path` to a new, unused `<name>.corrupt-<local time>` name beside it; return that name.

    `companions` are suffixes of files that belong to it (SQLite's `-wal`, `-shm`):
    each follows as `<new name><suffix>`, so the kept copy opens whole. Raises
    OSError when the rename fails (the original is then untouched).
    """
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = path.with_name(f"{path.name}{ASIDE_MARK}{stamp}")
    aside, number = base, 1
    while any(os.path.lexists(f"{aside}{suffix}") for suffix in ("", *companions)):
        number += 1
        aside = base.with_name(f"{base.name}-{number}")
    if os.path.lexists(path):
        os.rename(path, aside)
    for suffix in companions:
        companion = Path(f"{path}{suffix}")
        if os.path.lexists(companion):
            os.rename(companion, f"{aside}{suffix}")
    return aside
