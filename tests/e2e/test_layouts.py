"""Facility layouts (dm.layout, dm.subdirs) through the installed IOC: Create places the storage,
Upload sends raw files into the first subdir and `_rec` files into the second; --check names a bad layout."""

from __future__ import annotations

import grp
import os
import stat
import time

import pytest

from ..accounts import as_user, needs_acl, needs_root, open_folder, throwaway_group, throwaway_user, unique_prefix
from ..helpers import wait_for
from .fixtures import IN_SECOND
from .harness import IOC
from .test_check import problems, run, write

pytestmark = pytest.mark.e2e

MINOR = 1
NAME = "2026-11-DArcy-1013377"  # the beamtime at IN_SECOND: run 2026-3, proposal 1013377

LAYOUTS = {
    "ESS": ("{storage_root}/{year}/{gup}", ["raw", "processed", "shared", "logs"], "2026/1013377"),
    "MAX IV": ("{storage_root}/{year}/{gup}", None, "2026/1013377"),
    "NSLS-II": ("{storage_root}/{run}/pass-{gup}", None, "2026-3/pass-1013377"),
}


def settled(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - 60, time.time() - 60))  # settled long ago: Upload takes it at once


@pytest.mark.parametrize("facility", LAYOUTS)
def test_create_and_upload_follow_the_layout(config, tmp_path, facility):
    layout, subdirs, where = LAYOUTS[facility]
    config["dm"]["layout"] = layout
    if subdirs is not None:
        config["dm"]["subdirs"] = subdirs
    subdirs = subdirs or ["data", "analysis"]
    storage = tmp_path / "storage" / where
    with IOC(config, tmp_path) as ioc:
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        status, severity = ioc.command("Create")
        assert severity == 0, status
        assert ioc.get("StorageDirectory") == str(storage)
        assert sorted(p.name for p in storage.iterdir() if not p.name.startswith(".")) == sorted(subdirs)

        raw = tmp_path / "data" / NAME
        settled(raw / "scan1" / "proj_000.h5", b"p" * 4000)
        settled(tmp_path / "data" / f"{NAME}_rec" / "recon_00001.tiff", b"r" * 1234)
        status, severity = ioc.command("Upload")
        assert severity == 0, status
        wait_for(lambda: "finished" in ioc.get("Status"), timeout=15, what="the upload summary")
        assert (storage / subdirs[0] / "scan1" / "proj_000.h5").read_bytes() == b"p" * 4000
        assert (storage / subdirs[1] / "recon_00001.tiff").read_bytes() == b"r" * 1234
        assert ioc.get("Daq:FilesDone") == 2
        assert NAME in ioc.get("Experiments")


def test_check_names_a_layout_that_could_leave_storage_root(config, tmp_path):
    config["dm"]["layout"] = "{storage_root}/../{proposal}"
    result = run("--config", str(write(config, tmp_path)), "--check")
    assert result.returncode != 0
    found = problems(result)
    assert len(found) == 1 and found[0].startswith("dm.layout: unknown placeholder(s) {proposal}"), found
    config["dm"]["layout"] = "{storage_root}/../{gup}"
    found = problems(run("--config", str(write(config, tmp_path)), "--check"))
    assert len(found) == 1 and "'..'" in found[0], found


@needs_root
def test_the_experiment_tree_belongs_to_the_proposals_group(config, tmp_path):
    prefix = unique_prefix()
    config["dm"]["layout"] = "{storage_root}/{year}/{gup}"
    config["dm"]["posix"] = {"group": prefix + "{gup}"}
    storage = tmp_path / "storage" / "2026" / "1013377"
    with throwaway_group(f"{prefix}1013377") as group, IOC(config, tmp_path) as ioc:
        gid = grp.getgrnam(group).gr_gid
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        status, severity = ioc.command("Create")
        assert severity == 0, status
        for folder in (storage, storage / "data", storage / "analysis"):
            assert folder.stat().st_gid == gid and folder.stat().st_mode & stat.S_ISGID
        settled(tmp_path / "data" / NAME / "proj_000.h5", b"p" * 100)
        ioc.command("Upload")
        wait_for(lambda: "finished" in ioc.get("Status"), timeout=15, what="the upload summary")
        assert (storage / "data" / "proj_000.h5").stat().st_gid == gid  # the transfer's file inherits it


def test_a_proposal_group_that_does_not_exist_is_a_minor_warning_naming_it(config, tmp_path):
    missing = unique_prefix()  # no group has this prefix
    config["dm"]["posix"] = {"group": missing + "{gup}"}
    with IOC(config, tmp_path) as ioc:
        ioc.put("TimeOffsetDays", IN_SECOND)
        ioc.command("Refresh")
        status, severity = ioc.command("Create")
        assert severity == MINOR, status
        assert f"unix group '{missing}1013377' does not exist" in status
        assert ioc.get("ExperimentName") == NAME and ioc.get("DM:Health") == "OK"
        assert (tmp_path / "storage" / "2026-11" / NAME / "data").is_dir()


@needs_acl
def test_users_read_their_files_in_place_and_others_cannot(config, tmp_path):
    """NSLS-II's layout with an ACL entry per user: Create, DAQ, RemoveUser, Delete through the installed IOC."""
    prefix = unique_prefix()
    with open_folder() as top, throwaway_user(f"{prefix}310011") as pi, throwaway_user(f"{prefix}310099") as outsider:
        for name in ("data", "storage"):
            (top / name).mkdir(mode=0o711)
        config["dm"].update(
            data_top_dir=str(top / "data"),
            storage_root=str(top / "storage"),
            layout="{storage_root}/{run}/pass-{gup}",
            posix={"user_account": prefix + "{badge}"},
        )
        storage = top / "storage" / "2026-3" / "pass-1013377"
        with IOC(config, tmp_path) as ioc:
            ioc.put("TimeOffsetDays", IN_SECOND)
            ioc.command("Refresh")
            status, severity = ioc.command("Create")  # 310010, 310012 and the contact 100001 have no account here
            assert severity == MINOR and f"no unix account {prefix}310010, {prefix}310012" in status, status
            assert "d310011" in ioc.get("ExperimentUsers")

            raw = top / "data" / NAME / "proj_000.h5"
            settled(raw, b"p" * 100)
            raw.chmod(0o644)
            ioc.command("Upload")
            wait_for(lambda: "finished" in ioc.get("Status"), timeout=15, what="the upload summary")
            landed = storage / "data" / "proj_000.h5"
            assert as_user(pi, "cat", str(landed))
            assert not as_user(outsider, "cat", str(landed)) and not as_user(outsider, "ls", str(storage))

            ioc.put("Badges", "310011")
            status, severity = ioc.command("RemoveUser")
            assert severity == 0, status
            assert not as_user(pi, "cat", str(landed))

            ioc.put("DeleteConfirm", NAME)
            status, severity = ioc.command("Delete")
            assert severity == 0, status
            assert not storage.exists()
