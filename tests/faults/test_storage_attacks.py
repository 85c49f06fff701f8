"""The beamline's people are not trusted: whoever may write a detector folder or an experiment's storage
(the proposal group) gains nothing by it. Symlinks and hard links to files and folders outside the storage
are planted in it, and swapped in while the ACLs are given and taken; a setuid program goes through Upload;
a symlink is planted where the metadata records go. Nothing outside the storage may change.

Runs as root, with throwaway accounts (tests/accounts.py), on the filesystem of /tmp.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pwd
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm import acl
from dmagic_ioc.adapters.dm.local import LocalDM
from dmagic_ioc.adapters.registry.store import Registry
from dmagic_ioc.ioc.domain.errors import PartialAccess
from dmagic_ioc.ioc.domain.experiment import ExperimentUser

from ..accounts import as_user, needs_acl, open_folder, throwaway_group, throwaway_user, unique_prefix
from ..adapters.test_local_dm import MAX_IV, NAME, experiment
from ..e2e.fixtures import IN_SECOND
from ..e2e.harness import IOC
from ..helpers import wait_for

pytestmark = pytest.mark.faults

OUTSIDE_FILES = OUTSIDE_FOLDERS = 10
FOLDERS, FILES_PER_FOLDER = 30, 100  # 3,000 files in storage
MINOR = 1
UPLOADED = "2026-11-DArcy-1013377"  # the e2e schedule's beamtime at IN_SECOND: run 2026-3, proposal 1013377

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _load_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # glibc before 2.28
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _load_renameat2()


def exchange(first: Path, second: Path) -> None:
    """Swap two names at once (renameat2 RENAME_EXCHANGE); by two renames where libc lacks it."""
    if _RENAMEAT2 is None:
        aside = first.with_name(first.name + ".aside")
        os.rename(first, aside)
        os.rename(second, first)
        os.rename(aside, second)
        return
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first))


class Swapper(threading.Thread):
    """Swaps each victim (a file or folder in storage) with a symlink to a target outside, back and forth in a
    tight loop, until stopped; every victim is back in place when it ends."""

    def __init__(self, pairs: list[tuple[Path, Path]]):
        super().__init__(name="swapper", daemon=True)
        self.pairs, self.halt, self.swaps, self.error = pairs, threading.Event(), 0, None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                for _ in range(2):  # in, then back: the symlinks stand in place while the others are swapped
                    for victim, link in self.pairs:
                        exchange(victim, link)
                self.swaps += 1
        except OSError as error:
            self.error = error

    def __enter__(self) -> Swapper:
        self.start()
        wait_for(lambda: self.swaps > 0 or self.error, what="the first swaps")
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        self.join(timeout=30)
        assert self.error is None, self.error


def make_outside(outside: Path, reader: str) -> tuple[list[Path], list[Path]]:
    """Root's files (0600) and folders (0700, each with a file), and one file with the reader's own ACL entry
    that nothing here may take away."""
    outside.mkdir(mode=0o755)
    files, folders = [], []
    for i in range(OUTSIDE_FILES):
        files.append(outside / f"root-file-{i}")
        files[-1].write_bytes(f"root's {i}\n".encode())
        files[-1].chmod(0o600)
    for i in range(OUTSIDE_FOLDERS):
        folders.append(outside / f"root-folder-{i}")
        folders[-1].mkdir(mode=0o700)
        (folders[-1] / "inside").write_bytes(b"root's\n")
        (folders[-1] / "inside").chmod(0o600)
    entries = acl.from_mode(0o600) | {(acl.USER, pwd.getpwnam(reader).pw_uid): 0o4}
    os.setxattr(files[0], acl.ACCESS, acl.encode(acl.with_mask(entries)))
    return files, folders


def snapshot(top: Path) -> dict[str, tuple]:
    """Everything about every file and folder under `top` an attack could change: mode, owner, group, ACLs
    (as getfacl shows them), contents; not the link count and ctime, which planting a hard link changes."""
    seen = {}
    for folder, folders, files in os.walk(top):
        for name in [".", *folders, *files]:
            path = Path(folder, name)
            info = os.lstat(path)
            acls = subprocess.run(["getfacl", "-p", "-n", "--", str(path)], capture_output=True, text=True).stdout
            data = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else ""
            seen[str(path)] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid, info.st_mtime_ns, acls, data)
    return seen


def populate(data: Path, outside_files: list[Path], outside_folders: list[Path]) -> list[tuple[Path, Path]]:
    """3,000 files in 30 folders; symlinks and hard links to the outside planted beside them; and (victim,
    symlink) pairs for the swapper: 10 files and 10 folders, each with a symlink to an outside target."""
    for i in range(FOLDERS):
        folder = data / f"scan{i:02d}"
        folder.mkdir()
        for j in range(FILES_PER_FOLDER):
            os.close(os.open(folder / f"proj_{j:04d}.h5", os.O_CREAT | os.O_WRONLY, 0o640))
    for i, (file, folder) in enumerate(zip(outside_files, outside_folders, strict=True)):
        (data / f"link-to-file-{i}").symlink_to(file)
        (data / f"link-to-folder-{i}").symlink_to(folder, target_is_directory=True)
        os.link(file, data / f"hard-link-{i}")  # root may; others where protected_hardlinks=0
    pairs = []
    for i, (file, folder) in enumerate(zip(outside_files, outside_folders, strict=True)):
        victim_file = data / f"scan{i:02d}" / "proj_0050.h5"
        victim_folder = data / f"scan{i + 10:02d}"
        for victim, target in ((victim_file, file), (victim_folder, folder)):
            link = victim.with_name(f".swap-{victim.name}")
            link.symlink_to(target)
            pairs.append((victim, link))
    return pairs


@needs_acl
def test_links_planted_and_swapped_in_during_the_walks_change_nothing_outside_the_storage(tmp_path):
    prefix = unique_prefix()
    with (
        open_folder() as top,
        throwaway_group(f"{prefix}st") as staff,
        throwaway_user(f"{prefix}310001") as reader,
        throwaway_user(f"{prefix}100001", groups=(staff,)) as member,
        Registry(tmp_path / "registry.sqlite") as registry,
    ):
        roots = top / "gdata", top / "data"
        for root in roots:
            root.mkdir(mode=0o711)
            root.chmod(0o711)
        outside_files, outside_folders = make_outside(top / "outside", reader)
        dm = LocalDM(registry, roots[0], roots[1], "localhost", None, layout=MAX_IV[0], subdirs=MAX_IV[1],
                     user_account=prefix + "{badge}", staff_groups=(staff,))  # fmt: skip
        storage = Path(dm.create_experiment(experiment())[0].storage_directory)
        pairs = populate(storage / "data", outside_files, outside_folders)
        before = snapshot(top / "outside")

        with Swapper(pairs) as swapper:
            for _ in range(3):
                with pytest.raises(PartialAccess, match=r"not given to 10 files with more than one hard link"):
                    dm.add_users(NAME, [ExperimentUser("d310001")])
                with pytest.raises(PartialAccess, match=r"not given to 10 files with more than one hard link"):
                    dm.create_experiment(experiment())  # again: rwx for the staff group over the whole tree
                assert dm.remove_users(NAME, ["d310001"]) == ["d310001"]
            with pytest.raises(PartialAccess, match=r"not given to 10 files with more than one hard link") as raised:
                dm.add_users(NAME, [ExperimentUser("d310001")])
        assert raised.value.done == ["d310001"]  # the warning is MINOR: the user has access
        assert swapper.swaps > 1

        assert snapshot(top / "outside") == before
        for file in outside_files:
            assert not as_user(member, "sh", "-c", f"echo staff >> {file}")
        assert not as_user(reader, "cat", str(outside_files[1]))
        assert not as_user(reader, "ls", str(outside_folders[0]))
        # The grant did not fail for everyone: files and folders the swapper never touched have the entries.
        assert as_user(reader, "cat", str(storage / "data" / "scan29" / "proj_0001.h5"))
        assert as_user(member, "touch", str(storage / "data" / "scan00" / "by-staff"))


def test_a_swapper_alone_cannot_make_the_walk_fail(tmp_path):
    """Not root: a tree where every folder and file is swapped with a symlink back and forth during the walk
    still gets its entries everywhere the walk found things in place; the walk never raises."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"o")
    tree.mkdir()
    (tree / "quiet").mkdir()  # never swapped: the walk must reach it whatever happens beside it
    (tree / "quiet" / "file").write_bytes(b"")
    pairs = []
    for i in range(20):  # f0..f9 hold a swapped file each; g0..g9 are swapped whole
        folder = tree / f"{'f' if i < 10 else 'g'}{i % 10}"
        folder.mkdir()
        for j in range(50):
            (folder / f"{j}").write_bytes(b"")
        if i < 10:
            pairs.append((folder / "0", folder / ".link"))
            (folder / ".link").symlink_to(outside / "file")
        else:
            pairs.append((folder, tree / f".link-{i}"))
            (tree / f".link-{i}").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with Swapper(pairs):
            for _ in range(5):
                assert acl.grant(fd, tree, [acl.Entry(acl.USER, 65534, acl.READ)]) == ""
                assert acl.revoke(fd, tree, [(acl.USER, 65534)]) == ""
            assert acl.grant(fd, tree, [acl.Entry(acl.USER, 65534, acl.READ)]) == ""
    finally:
        os.close(fd)
    assert snapshot(outside) == before
    assert (acl.USER, 65534) in acl.decode(os.getxattr(tree / "quiet" / "file", acl.ACCESS))


# --------------------------------------------------------------------------- through the installed IOC


@needs_acl
def test_an_uploaded_setuid_program_is_not_setuid_and_the_record_is_readable_beside_the_data(config, tmp_path):
    """Upload of a setuid, setgid program; a symlink planted where the metadata records go is refused; then
    the record gets the data's group and mode, so the experiment's users read it."""
    prefix = unique_prefix()
    with open_folder() as top, throwaway_user(f"{prefix}310011") as pi:
        for name in ("data", "storage", "outside"):
            (top / name).mkdir(mode=0o711)
            (top / name).chmod(0o711)
        config["dm"].update(data_top_dir=str(top / "data"), storage_root=str(top / "storage"),
                            posix={"user_account": prefix + "{badge}"})  # fmt: skip
        storage = top / "storage" / "2026-11" / UPLOADED
        with IOC(config, tmp_path) as ioc:
            ioc.put("TimeOffsetDays", IN_SECOND)
            ioc.command("Refresh")
            status, severity = ioc.command("Create")
            assert severity == MINOR and f"no unix account {prefix}310010" in status, status  # only the PI has one

            raw = top / "data" / UPLOADED
            tool = raw / "bin" / "tool"
            tool.parent.mkdir(parents=True)
            tool.write_bytes(b"#!/bin/sh\nid -u\n")
            tool.chmod(0o6755)
            (storage / "metadata").symlink_to(top / "outside", target_is_directory=True)  # the proposal group may
            ioc.command("Upload")
            status = wait_for(lambda: "metadata record" in (text := ioc.get("Status")) and text, timeout=30,
                              what="the upload's end")  # fmt: skip
            assert "metadata record not written" in status and "a symbolic link, not followed" in status, status
            assert list((top / "outside").iterdir()) == []

            landed = storage / "data" / "bin" / "tool"
            assert stat.S_IMODE(landed.stat().st_mode) == 0o755
            assert as_user(pi, "cat", str(landed))

            (storage / "metadata").unlink()
            ioc.command("Upload")
            record = storage / "metadata" / f"{UPLOADED}-1.json"
            wait_for(record.exists, timeout=30, what="the record of the second upload")
            data_folder = (storage / "data").stat()
            assert stat.S_IMODE(record.stat().st_mode) == stat.S_IMODE(data_folder.st_mode) & 0o644 == 0o640
            assert record.stat().st_gid == data_folder.st_gid
            assert as_user(pi, "cat", str(record)), "the PI cannot read the record beside their data"
