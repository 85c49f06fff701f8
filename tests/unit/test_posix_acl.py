"""POSIX ACLs as xattrs (the kernel's include/uapi/linux/posix_acl_xattr.h): the encoder and decoder, and
the walk that grants and revokes, checked against the kernel, getfacl and setfacl where they are here."""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm import acl
from dmagic_ioc.ioc.settings.preflight import acl_support_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NO_ID = acl.UNDEFINED_ID
BASE = {"user": acl.USER_OBJ, "group": acl.GROUP_OBJ, "mask": acl.MASK, "other": acl.OTHER}
NAMED = {"user": acl.USER, "group": acl.GROUP}
NOBODY = 65534

needs_acl_tools = pytest.mark.skipif(
    not (shutil.which("setfacl") and shutil.which("getfacl")), reason="compares with setfacl and getfacl (acl package)"
)


@pytest.fixture
def acl_folder(tmp_path) -> Path:
    """tmp_path, on a filesystem with POSIX ACLs."""
    problem = acl_support_problem(tmp_path)
    if problem:
        pytest.skip(problem)
    return tmp_path


def perm_text(perm: int) -> str:
    return "".join(letter if perm & bit else "-" for letter, bit in (("r", 4), ("w", 2), ("x", 1)))


def getfacl(path: Path, *options: str) -> str:
    done = subprocess.run(
        ["getfacl", "-n", "-p", *options, "--", str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout


def getfacl_entries(path: Path, *, default: bool = False) -> acl.Acl:
    """getfacl's entries of `path` (access, or default) as the decoder gives them."""
    entries: acl.Acl = {}
    for line in getfacl(path, "--omit-header").splitlines():
        if not line or line.startswith("default:") != default:
            continue
        tag, qualifier, perm = line.removeprefix("default:").split("\t")[0].split(":")
        key = (NAMED[tag], int(qualifier)) if qualifier else (BASE[tag], NO_ID)
        entries[key] = sum(bit for letter, bit in zip(perm, (4, 2, 1), strict=True) if letter != "-")
    return entries


# --------------------------------------------------------------------------- the format

ids = st.integers(0, NO_ID - 1)
perms = st.integers(0, 7)


@st.composite
def acls(draw) -> acl.Acl:
    """A valid ACL: the three base entries, up to 6 named users and groups, and the mask setfacl computes."""
    entries = {(acl.USER_OBJ, NO_ID): draw(perms), (acl.GROUP_OBJ, NO_ID): draw(perms), (acl.OTHER, NO_ID): draw(perms)}
    for tag in (acl.USER, acl.GROUP):
        for ident in draw(st.sets(ids, max_size=6)):
            entries[(tag, ident)] = draw(perms)
    return acl.with_mask(entries)


@given(acls())
def test_encode_then_decode_gives_the_acl_back(entries):
    data = acl.encode(entries)
    assert len(data) == 4 + 8 * len(entries)
    assert acl.decode(data) == entries
    assert acl.encode(acl.decode(data)) == data


@given(acls())
def test_entries_are_in_the_kernels_order_with_the_mask_setfacl_computes(entries):
    data = acl.encode(entries)
    keys = [(tag, ident) for tag, _perm, ident in struct.iter_unpack("<HHI", data[4:])]
    assert keys == sorted(keys)  # by tag (USER_OBJ < USER < GROUP_OBJ < GROUP < MASK < OTHER), then id
    named = [perm for (tag, _), perm in entries.items() if tag in (acl.USER, acl.GROUP)]
    if named:
        group_class = entries[(acl.GROUP_OBJ, NO_ID)]
        for perm in named:
            group_class |= perm
        assert entries[(acl.MASK, NO_ID)] == group_class
    else:
        assert (acl.MASK, NO_ID) not in entries


@given(st.binary(max_size=80))
def test_any_bytes_decode_to_an_acl_or_a_value_error(data):
    try:
        decoded = acl.decode(data)
    except ValueError:
        return
    assert acl.decode(acl.encode(decoded)) == decoded


def test_the_layout_is_the_kernels():
    """user::rw- user:1000:r-- group::r-- mask::r-- other::---, little-endian, version 2."""
    entries = {(acl.USER_OBJ, NO_ID): 6, (acl.USER, 1000): 4, (acl.GROUP_OBJ, NO_ID): 4, (acl.MASK, NO_ID): 4,
               (acl.OTHER, NO_ID): 0}  # fmt: skip
    expected = bytes.fromhex("0200000001000600ffffffff02000400e803000004000400ffffffff10000400ffffffff20000000ffffffff")
    assert acl.encode(entries) == expected
    assert acl.decode(expected) == entries


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="not a POSIX ACL"):
        acl.decode(b"\x02\x00\x00")
    with pytest.raises(ValueError, match="version 1"):
        acl.decode(struct.pack("<I", 1))
    with pytest.raises(ValueError, match="not a POSIX ACL"):
        acl.decode(struct.pack("<I", 2) + b"\x01\x00")


def test_a_mode_is_its_minimal_acl_and_the_mask_is_kept_when_named_entries_go():
    assert acl.from_mode(0o4751) == {(acl.USER_OBJ, NO_ID): 7, (acl.GROUP_OBJ, NO_ID): 5, (acl.OTHER, NO_ID): 1}
    entries = acl.from_mode(0o640) | {(acl.MASK, NO_ID): 0}
    assert acl.with_mask(entries)[(acl.MASK, NO_ID)] == 4  # as setfacl -x leaves it: the owning group's


# --------------------------------------------------------------------------- against the kernel and getfacl


@needs_acl_tools
@pytest.mark.parametrize(
    "spec",
    ["u:65534:r--", "u:65534:rwx,g:1:r-x", "u:0:---,u:4294967294:rw-,g:65534:-w-,m::r--", "g:2:rwx,u:3:--x,o::r--"],
)
def test_what_setfacl_writes_decodes_to_what_getfacl_shows(acl_folder, spec):
    path = acl_folder / "file"
    path.write_bytes(b"")
    path.chmod(0o640)
    subprocess.run(["setfacl", "-m", spec, str(path)], check=True)
    data = os.getxattr(path, acl.ACCESS)
    assert acl.decode(data) == getfacl_entries(path)
    assert acl.encode(acl.decode(data)) == data


@needs_acl_tools
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=acls())
def test_what_is_written_getfacl_reads_back(acl_folder, entries):
    path = acl_folder / "file"
    path.write_bytes(b"")
    os.setxattr(path, acl.ACCESS, acl.encode(entries))  # without named entries the kernel keeps it as the mode
    assert getfacl_entries(path) == entries
    path.unlink()


# --------------------------------------------------------------------------- the walk, against setfacl


def tree_with_every_case(top: Path) -> Path:
    """A storage tree as the field has them: modes from 0600 to 0755, an executable, a folder whose mask
    chmod cut, a file and a folder with ACL entries of their own, a default ACL already there."""
    top.mkdir()
    (top / "data" / "scan1").mkdir(parents=True)
    (top / "analysis").mkdir(mode=0o700)
    for name, mode in (("data/a.h5", 0o644), ("data/secret.h5", 0o600), ("data/scan1/run.sh", 0o755),
                       ("analysis/b.tiff", 0o660), ("top.txt", 0o640)):  # fmt: skip
        (top / name).write_bytes(b"x")
        (top / name).chmod(mode)
    subprocess.run(["setfacl", "-m", "u:1:rw-,g:2:r--", str(top / "data" / "a.h5")], check=True)
    subprocess.run(["setfacl", "-m", "d:u:3:r-x,u:4:rwx", str(top / "data" / "scan1")], check=True)
    (top / "data" / "scan1" / "run.sh").chmod(0o751)  # the mask of a file with an ACL follows chmod
    (top / "analysis").chmod(0o2750)
    return top


def by_setfacl_grant(tree: Path, folders: str, files: str) -> None:
    """What the IOC ran before: find -P calling setfacl."""
    subprocess.run(["find", "-P", str(tree), "-type", "d", "-exec", "setfacl", "-m", folders, "--", "{}", "+"],
                   check=True)  # fmt: skip
    subprocess.run(["find", "-P", str(tree), "!", "-type", "d", "!", "-type", "l", "-exec", "setfacl", "-m", files,
                    "--", "{}", "+"], check=True)  # fmt: skip


def acls_of(tree: Path) -> str:
    return getfacl(tree, "-R").replace(str(tree), "TREE")


def walk(tree: Path, change, *args, **options) -> str:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return change(fd, tree, *args, **options)
    finally:
        os.close(fd)


@needs_acl_tools
def test_grant_and_revoke_leave_what_setfacl_leaves(acl_folder):
    ours, theirs = tree_with_every_case(acl_folder / "ours"), tree_with_every_case(acl_folder / "theirs")
    assert acls_of(ours) == acls_of(theirs)

    assert walk(ours, acl.grant, [acl.Entry(acl.USER, NOBODY, acl.READ), acl.Entry(acl.GROUP, 2, acl.WRITE)]) == ""
    by_setfacl_grant(theirs, f"u:{NOBODY}:r-x,d:u:{NOBODY}:r-x,g:2:rwx,d:g:2:rwx", f"u:{NOBODY}:r--,g:2:rw-")
    assert acls_of(ours) == acls_of(theirs)
    assert f"user:{NOBODY}:r--" in getfacl(ours / "data" / "secret.h5")  # files get no x
    assert f"default:user:{NOBODY}:r-x" in getfacl(ours / "analysis")

    assert walk(ours, acl.grant, [acl.Entry(acl.USER, NOBODY, acl.READ)]) == ""  # again: nothing changes
    assert acls_of(ours) == acls_of(theirs)

    assert walk(ours, acl.revoke, [(acl.USER, NOBODY), (acl.USER, 3)]) == ""
    subprocess.run(["setfacl", "-R", "-P", "-x", f"u:{NOBODY},d:u:{NOBODY},u:3,d:u:3", str(theirs)], check=True)
    assert acls_of(ours) == acls_of(theirs)
    assert str(NOBODY) not in acls_of(ours) and "group:2:rw-" in getfacl(ours / "top.txt")


@needs_acl_tools
def test_a_grant_leaves_the_named_top_folders_alone(acl_folder):
    """Staff's write grant leaves the records' folder as the IOC made it: records nobody else may write."""
    tree = tree_with_every_case(acl_folder / "tree")
    (tree / "metadata").mkdir(mode=0o750)
    (tree / "metadata" / "exp-1.json").write_bytes(b"{}")
    (tree / "metadata" / "exp-1.json").chmod(0o640)
    before = getfacl(tree / "metadata", "-R")
    assert walk(tree, acl.grant, [acl.Entry(acl.GROUP, 2, acl.WRITE)], leave=("metadata",)) == ""
    assert getfacl(tree / "metadata", "-R") == before
    assert os.stat(tree / "metadata" / "exp-1.json").st_mode & 0o022 == 0
    assert "group:2:rw-" in getfacl(tree / "data" / "a.h5")  # the rest took it


def test_links_fifos_and_deep_folders_are_left_alone_and_said(acl_folder):
    tree, outside = acl_folder / "tree", acl_folder / "outside"
    tree.mkdir()
    outside.mkdir()
    (outside / "file").write_bytes(b"o")
    (outside / "file").chmod(0o600)
    (tree / "symlink").symlink_to(outside / "file")
    (tree / "folder-link").symlink_to(outside)
    os.link(outside / "file", tree / "hard1")
    os.link(tree / "hard1", tree / "hard2")
    os.mkfifo(tree / "fifo")
    deep = tree.joinpath(*["d"] * (acl.MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"")
    before = os.stat(outside / "file"), os.listxattr(outside / "file"), os.listxattr(outside)

    said = walk(tree, acl.grant, [acl.Entry(acl.USER, NOBODY, acl.READ)])
    assert said.startswith(f"ACLs of {tree}: not given to ")
    assert re.search(r"\b2 files with more than one hard link \(e\.g\. hard[12]\)", said), said
    deepest = "/".join(["d"] * acl.MAX_DEPTH)
    assert f"1 folder deeper than {acl.MAX_DEPTH} levels, not walked (e.g. {deepest})" in said
    assert said.count("(e.g.") == 2  # nothing about the fifo or the symlinks
    assert (os.stat(outside / "file"), os.listxattr(outside / "file"), os.listxattr(outside)) == before
    assert acl.ACCESS not in os.listxattr(tree / "fifo")
    assert acl.ACCESS in os.listxattr(tree.joinpath(*["d"] * (acl.MAX_DEPTH - 1)))

    said = walk(tree, acl.revoke, [(acl.USER, NOBODY)])
    assert said.startswith(f"ACLs of {tree}: not taken from ") and "2 files with more than one hard link" in said
    assert (os.stat(outside / "file"), os.listxattr(outside / "file"), os.listxattr(outside)) == before


def test_a_file_the_owner_may_not_read_gets_its_entry(acl_folder, monkeypatch):
    """By an O_PATH descriptor through /proc/self/fd: a transfer copies a 0200 detector file as 0200."""
    (acl_folder / "tree").mkdir()
    unreadable = acl_folder / "tree" / "write-only"
    unreadable.write_bytes(b"")
    unreadable.chmod(0o200)
    real_open = os.open

    def as_its_owner(path, flags, *args, **kwargs):  # root reads anything: refuse as the kernel refuses its owner
        if path == "write-only" and not flags & os.O_PATH:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(acl.os, "open", as_its_owner)
    assert walk(acl_folder / "tree", acl.grant, [acl.Entry(acl.USER, NOBODY, acl.READ)]) == ""
    monkeypatch.undo()
    assert acl.decode(os.getxattr(unreadable, acl.ACCESS))[(acl.USER, NOBODY)] == 4
