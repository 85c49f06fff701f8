"""POSIX ACLs over a storage tree of 100,000 files: the descriptor walk (AddUser, RemoveUser) against
`find -P ... -exec setfacl` (what the IOC ran before), on the filesystem of --folder; then the local DM
backend's AddUser, RemoveUser and Delete with their walks in the background.

    python benchmarks/acl_bench.py [--files 100000] [--folder /tmp]

Times: a new entry given to every folder and file; the same again (nothing to change); a second entry;
the entry taken away; then find+setfacl giving it on a fresh tree, and setfacl -R -x taking it away.
Then, on a fresh experiment of as many files (every DM username is the account `nobody` there): how long
each call holds the command, and how long until its walk's end is said.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dmagic_ioc.adapters.dm import acl
from dmagic_ioc.adapters.dm.local import LocalDM
from dmagic_ioc.adapters.dm.walks import StorageWalks
from dmagic_ioc.adapters.registry.store import Registry
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser

FILES_PER_FOLDER = 1000
NOBODY, GROUP = 65534, 1


def make_tree(tree: Path, files: int) -> None:
    """`files` empty files (0644), 1,000 to a folder, as a transfer leaves them."""
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir()
    for index in range(files):
        folder = tree / f"scan{index // FILES_PER_FOLDER:03d}"
        if index % FILES_PER_FOLDER == 0:
            folder.mkdir()
        os.close(os.open(folder / f"proj_{index % FILES_PER_FOLDER:04d}.h5", os.O_CREAT | os.O_WRONLY, 0o644))
    os.sync()


def timed(what: str, work: Callable[[], object]) -> None:
    start = time.perf_counter()
    said = work()
    print(f"{what:<42} {time.perf_counter() - start:6.2f} s{f'  ({said})' if said else ''}")


def setfacl_grant(tree: Path) -> None:
    """What AddUser ran before: find -P calling setfacl on batches of paths, folders then files."""
    find = ["find", "-P", str(tree)]
    folders = ["-type", "d", "-exec", "setfacl", "-m", f"u:{NOBODY}:r-x,d:u:{NOBODY}:r-x", "--", "{}", "+"]
    files = ["!", "-type", "d", "!", "-type", "l", "-exec", "setfacl", "-m", f"u:{NOBODY}:r--", "--", "{}", "+"]
    subprocess.run([*find, *folders], check=True)
    subprocess.run([*find, *files], check=True)


def setfacl_revoke(tree: Path) -> None:
    subprocess.run(["setfacl", "-R", "-P", "-x", f"u:{NOBODY},d:u:{NOBODY}", str(tree)], check=True)


def in_background(folder: Path, files: int) -> None:
    """AddUser, RemoveUser and Delete of the local DM backend on an experiment of `files` files: the time each
    call takes (what the command waits for) and the time until its walk's end is said."""
    for root in ("gdata", "data"):
        (folder / root).mkdir()
    name = "2026-10-Bench-1"
    with Registry(folder / "state" / "registry.sqlite") as registry:
        walks = StorageWalks(folder / "state" / "walks.json")
        dm = LocalDM(registry, folder / "gdata", folder / "data", "localhost", user_account="nobody", walks=walks)
        storage = Path(dm.create_experiment(Experiment(name=name, year_month="2026-10"))[0].storage_directory)
        make_tree(storage / "data" / "tree", files)
        calls = {
            "AddUser": lambda: dm.add_users(name, [ExperimentUser("d1")]),
            "RemoveUser": lambda: dm.remove_users(name, ["d1"]),
            "Delete": lambda: dm.delete_experiment(name),
        }
        try:
            for what, call in calls.items():
                ended = len(walks.progress().ended)
                start = time.perf_counter()
                call()
                held = time.perf_counter() - start
                walks.claim(what)
                while len(walks.progress().ended) == ended:
                    time.sleep(0.01)
                said = time.perf_counter() - start
                walked = walks.progress().ended[-1].message.rsplit(": ", 1)[-1]
                print(f"{what + ' holds the command':<42} {held:6.2f} s  ({held / said:.0%} of the {said:.2f} s "
                      f"until its walk's end is said; the walk: {walked})")  # fmt: skip
        finally:
            walks.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="acl-bench-", dir=args.folder) as folder:
        tree = Path(folder) / "tree"
        make_tree(tree, args.files)
        fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
        try:
            reader, staff = acl.Entry(acl.USER, NOBODY, acl.READ), acl.Entry(acl.GROUP, GROUP, acl.WRITE)
            timed("grant a new entry", lambda: acl.grant(fd, tree, [reader]))
            timed("grant it again (nothing to change)", lambda: acl.grant(fd, tree, [reader]))
            timed("grant a second entry", lambda: acl.grant(fd, tree, [staff]))
            timed("revoke the first", lambda: acl.revoke(fd, tree, [(acl.USER, NOBODY)]))
        finally:
            os.close(fd)
        if shutil.which("setfacl") is not None:
            make_tree(tree, args.files)
            timed("find + setfacl -m (before)", lambda: setfacl_grant(tree))
            timed("setfacl -R -x (before)", lambda: setfacl_revoke(tree))
        else:
            print("setfacl is not installed: no comparison")
        shutil.rmtree(tree)
        in_background(Path(folder), args.files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
