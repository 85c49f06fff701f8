"""What a run knows of each source folder and of each file in it: the records the engine works on."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .folders import shown
from .scan import Tree

# File states; a file whose copy failed is copying.FAILED until its retry
PENDING, QUEUED, DONE = "pending", "queued", "done"


@dataclass(slots=True)
class File:
    """A file of a source folder as the engine last saw it, and its state."""

    size: int
    mtime_ns: int
    state: str = PENDING
    stable_since: float = 0.0
    attempts: int = 0
    retry_at: float = 0.0
    audited: bool = False  # in its source's audit queue
    seen_at: float = -1.0  # the poll that last stat'ed it (no second stat in the same poll)


@dataclass
class Source:
    """One source folder, its destination, and what the run knows of its files."""

    root: str
    dest: str
    tree: Tree | None = None
    files: dict[str, File] = field(default_factory=dict)
    sent: dict[str, tuple[int, int]] = field(default_factory=dict)  # from the ledger, not seen yet
    pending: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    audit: deque[str] = field(default_factory=deque)
    error: str = ""


@dataclass(frozen=True)
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
