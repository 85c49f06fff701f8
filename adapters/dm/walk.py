"""One walk of a storage tree (ACLs given or taken below the storage folder, a deleted storage removed), how
it is said, and the file that keeps the queue of them (`{state_dir}/walks.json`) across a restart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...ioc.domain.errors import DMError
from ...ioc.statefiles import keep_aside, private_file
from . import acl
from .marker import read_storage_marker
from .tree import Progress, remove_tree

log = logging.getLogger(__name__)

GRANT, REVOKE, REMOVE = "grant", "revoke", "remove"
SAID = {  # (doing, did) of each action, filled with `what` and the experiment
    GRANT: ("giving {what} to the files of {experiment}", "gave {what} to the files of {experiment}"),
    REVOKE: ("taking the access of {what} from the files of {experiment}",
             "took the access of {what} from the files of {experiment}"),
    REMOVE: ("removing the storage {what} of deleted experiment {experiment}",
             "removed the storage {what} of deleted experiment {experiment}"),
}  # fmt: skip
_TEXTS = ("action", "experiment", "tree", "root", "what", "marker", "by")


@dataclass(eq=False)
class Walk:
    """One walk: what it changes, on which tree, and how it is said (each one itself: two alike are two)."""

    action: str  # GRANT or REVOKE the `entries` below the storage folder; REMOVE the renamed storage
    experiment: str
    tree: str  # the storage folder; for REMOVE the name it was renamed to
    root: str  # the folder it is reached from, one name at a time (dm.storage_root); '' its parent
    what: str  # what is given ("d310001 access"), whose access is taken ("d310001"), the storage removed
    marker: str = ""  # the id of the storage's marker when queued ('' none): another tree is left alone
    entries: list[list[int]] = field(default_factory=list)  # GRANT: [tag, id, perm]; REVOKE: [tag, id]
    leave: list[str] = field(default_factory=list)  # GRANT: names in the storage folder left alone
    done: int = 0  # REMOVE: the files removed in the command (a walk of ACLs starts again from the top)
    by: str = ""  # the command that queued it (`StorageWalks.claim`)
    held: bool = False  # running in the command now, not the worker's (never saved)

    @property
    def doing(self) -> str:
        """'giving d310001 access to the files of 2026-10-Smith-1234': what it does, for its progress."""
        return SAID[self.action][0].format(what=self.what, experiment=self.experiment)

    @property
    def did(self) -> str:
        return SAID[self.action][1].format(what=self.what, experiment=self.experiment)

    def walk(self, fd: int, progress: Progress | None) -> str:
        """Change the tree below the storage open as `fd` (REMOVE: remove `tree` from its parent open as
        `fd`); a sentence naming what was left alone."""
        tree = Path(self.tree)
        if self.action == GRANT:
            entries = [acl.Entry(tag, ident, perm) for tag, ident, perm in self.entries]
            return acl.grant(fd, tree, entries, leave=self.leave, top=False, progress=progress)
        if self.action == REVOKE:
            keys = [(tag, ident) for tag, ident in self.entries]
            return acl.revoke(fd, tree, keys, top=False, progress=progress)
        return remove_tree(fd, tree.name, tree, progress)

    def folder(self) -> str:
        """The folder the walk opens: the storage; for REMOVE the folder that holds it."""
        return self.tree if self.action != REMOVE else os.path.dirname(self.tree)

    @classmethod
    def from_saved(cls, saved: dict) -> Walk:
        """A walk as the state file keeps it; ValueError or TypeError when it is not one."""
        if not all(isinstance(saved.get(key, ""), str) for key in _TEXTS) or saved["action"] not in SAID:
            raise ValueError(f"not a walk: {saved!r:.200}")
        entries = [[int(number) for number in entry] for entry in saved.get("entries", [])]
        if any(len(entry) != (3 if saved["action"] == GRANT else 2) for entry in entries):
            raise ValueError(f"not the entries of a walk: {entries!r:.200}")
        leave = [str(name) for name in saved.get("leave", [])]
        return cls(**{key: saved[key] for key in _TEXTS if key in saved}, entries=entries, leave=leave,
                   done=int(saved.get("done", 0)))  # fmt: skip

    def saved(self) -> dict[str, object]:
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "held"}


def marker_id(fd: int) -> str:
    """The id of the storage marker in the folder open as `fd`; '' when there is none that can be read."""
    try:
        return read_storage_marker(fd)["id"]
    except (OSError, ValueError):
        return ""


class WalkFile:
    """The queue of walks and the estimates (the files each experiment's storage had at its last walk), in
    one JSON file written whole at each change."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> tuple[list[Walk], dict[str, int], str]:
        """(walks, estimates, problem): none of either when the file is missing; one that cannot be read is kept
        aside and `problem` says so (the walks it held are not resumed)."""
        try:
            data = json.loads(self.path.read_bytes())
            walks = [Walk.from_saved(saved) for saved in data["walks"]]
            sizes = {str(name): int(files) for name, files in data["sizes"].items()}
        except FileNotFoundError:
            return [], {}, ""
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            why = error.strerror if isinstance(error, OSError) else str(error) or type(error).__name__
            try:
                aside = f"kept it as {keep_aside(self.path).name}"
            except OSError as failure:
                aside = f"not kept aside either ({failure.strerror}): move it away by hand"
            problem = (
                f"the queue of storage walks {self.path} could not be read ({why}): {aside}; the walks it "
                "held (ACLs of AddUser, RemoveUser, a Delete's removal) are not resumed: run them again"
            )
            log.error("%s", problem)
            return [], {}, problem
        return walks, sizes, ""

    def save(self, walks: list[Walk], sizes: dict[str, int]) -> None:
        """Write it: 0600 (it names experiments and folders), aside, made durable, renamed over the last one,
        so that a crash leaves one whole. DMError when it cannot be written."""
        data = {"walks": [walk.saved() for walk in walks], "sizes": sizes}
        aside = self.path.with_name(self.path.name + ".tmp")
        try:
            private_file(aside)
            fd = os.open(aside, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "wb") as file:
                file.write(json.dumps(data).encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(aside, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                aside.unlink(missing_ok=True)
            raise DMError(f"cannot write the queue of storage walks {self.path}: {error.strerror or error}") from error
