"""What a run knows of each source folder and of each file in it: the records the engine works on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .folders import shown
from .scan import Tree

# The states of a file not sent yet; a file whose copy failed is copying.FAILED until its retry. A file
# sent has no `File`: see Source.
PENDING, QUEUED = "pending", "queued"


@dataclass(slots=True)
class File:
    """A file of a source folder as the engine last saw it, and its state."""

    size: int
    mtime_ns: int
    state: str = PENDING
    stable_since: float = 0.0
    attempts: int = 0
    retry_at: float = 0.0
    seen_at: float = -1.0  # the poll that last stat'ed it (no second stat in the same poll)


@dataclass
class Source:
    """One source folder, its destination, and what the run knows of its files.

    Only the files not sent yet have a `File` here; the tree knows every name, and a name it knows that is
    not in `files` is sent (the ledger has its size and mtime): a million files sent cost no object each.
    """

    root: str
    dest: str
    tree: Tree | None = None
    files: dict[str, File] = field(default_factory=dict)  # the files not sent yet
    pending: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    audited_to: str = ""  # the audit's place in the ledger's rows of this source ('': from the start)
    scanned: bool = False  # listed whole at least once (no folder left for a later poll)
    error: str = ""


@dataclass(frozen=True, slots=True)
class Job:
    """One file handed to the copy workers, with the size and mtime it had then."""

    source: Source
    rel: str
    size: int
    mtime_ns: int


def not_followed(sources: Sequence[Source]) -> str:
    """'; 2 not followed (symbolic links, special files): raw/scan1/link, ...' or ''."""
    names = [
        os.path.join(os.path.basename(source.root), rel)
        for source in sources
        if source.tree is not None
        for rel in source.tree.skipped
    ]
    if not names:
        return ""
    listed = ", ".join(shown(name) for name in names[:3]) + (", ..." if len(names) > 3 else "")
    return f"; {len(names)} not followed (symbolic links, special files): {listed}"
