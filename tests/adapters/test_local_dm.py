"""The local DM backend on a real disk: directories, modes, idempotence, failures and reruns, delete."""

from __future__ import annotations

import errno
import grp
import json
import os
import shutil
import socket
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dmagic_ioc.adapters.dm import local as local_dm
from dmagic_ioc.adapters.dm import tree
from dmagic_ioc.adapters.dm.local import LocalDM
from dmagic_ioc.adapters.dm.marker import STORAGE_MARKER, read_storage_marker, write_storage_marker
from dmagic_ioc.adapters.dm.tree import DIR_MODE, SHARED_DIR_MODE
from dmagic_ioc.adapters.hosts import is_this_host
from dmagic_ioc.adapters.registry.store import Registry
from dmagic_ioc.ioc.domain.errors import DMError, InputError
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser
from dmagic_ioc.ioc.settings.preflight import acl_support_problem

from ..accounts import (
    as_user,
    needs_acl,
    needs_root,
    open_folder,
    throwaway_group,
    throwaway_user,
    unique_prefix,
)

CHICAGO = timezone(timedelta(hours=-5))
NAME = "2026-10-Smith-1234"


def experiment(name: str = NAME, **changes) -> Experiment:
    values = dict(
        name=name,
        title="Fossil teeth",
        gup="1234",
        start=datetime(2026, 10, 14, 8, tzinfo=CHICAGO),
        end=datetime(2026, 10, 17, 8, tzinfo=CHICAGO),
        year_month="2026-10",
    )
    values.update(changes)
    return Experiment(**values)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def roots(tmp_path):
    storage_root, data_top_dir = tmp_path / "gdata", tmp_path / "data"
    storage_root.mkdir()
    data_top_dir.mkdir()
    return storage_root, data_top_dir


@pytest.fixture
def registry(tmp_path):
    with Registry(tmp_path / "state" / "registry.sqlite") as registry:
        yield registry


@pytest.fixture
def dm(registry, roots):
    storage_root, data_top_dir = roots
    return LocalDM(registry, storage_root, data_top_dir, "localhost", None)


def other_group() -> grp.struct_group:
    """A group the test process is not already in by default, to see chown work."""
    for group in grp.getgrall():
        if group.gr_gid != os.getgid():
            return group
    pytest.skip("this host has a single group")


def test_create_makes_storage_and_raw_folders_with_setgid(dm, roots):
    storage_root, data_top_dir = roots
    created, is_new = dm.create_experiment(experiment())
    storage = storage_root / "2026-10" / NAME
    assert is_new is True
    assert created.storage_directory == str(storage)
    assert created.data_directory == str(data_top_dir / NAME)
    for path in (storage, storage / "data", storage / "analysis", storage.parent):
        assert path.is_dir()
        assert mode(path) == DIR_MODE == 0o2770
        assert path.stat().st_mode & stat.S_ISGID
    for path in (data_top_dir / NAME, data_top_dir / f"{NAME}_rec"):
        assert path.is_dir()
        assert mode(path) == DIR_MODE
    assert dm.get_experiment(NAME) == created
    assert dm.list_experiments() == [NAME]


def test_year_month_comes_from_start_when_missing(dm, roots):
    created, _ = dm.create_experiment(experiment(year_month=""))
    assert created.year_month == "2026-10"
    assert Path(created.storage_directory).parent == roots[0] / "2026-10"


def test_a_bad_year_month_is_refused_before_anything_is_made(dm, roots):
    with pytest.raises(InputError, match="YYYY-MM"):
        dm.create_experiment(experiment(year_month="../x", start=None))
    assert list(roots[0].iterdir()) == []


def test_create_is_idempotent(dm, roots):
    first, _ = dm.create_experiment(experiment())
    dm.add_users(NAME, [ExperimentUser("d1")])
    marker = Path(first.storage_directory) / "data" / "scan_001.h5"
    marker.write_bytes(b"data")
    again, is_new = dm.create_experiment(experiment(title="another title"))
    assert is_new is False
    assert again.usernames == ("d1",)
    assert again.title == "Fossil teeth"  # an existing experiment is found, not changed
    assert marker.read_bytes() == b"data"
    assert dm.list_experiments() == [NAME]


def test_create_on_existing_completes_missing_directories(dm, roots):
    created, _ = dm.create_experiment(experiment())
    analysis = Path(created.storage_directory) / "analysis"
    analysis.rmdir()
    (roots[1] / f"{NAME}_rec").rmdir()
    _, is_new = dm.create_experiment(experiment())
    assert is_new is False
    assert analysis.is_dir() and mode(analysis) == DIR_MODE
    assert (roots[1] / f"{NAME}_rec").is_dir()


def test_a_failure_half_way_then_a_rerun_completes(dm, roots, monkeypatch):
    """Tests run as root, where chmod does not stop writes: inject the failure into mkdir."""
    storage = roots[0] / "2026-10" / NAME
    real_mkdir = os.mkdir

    def full_disk(name, *args, **kwargs):
        if os.path.basename(name) == "analysis":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return real_mkdir(name, *args, **kwargs)

    monkeypatch.setattr(local_dm.os, "mkdir", full_disk)
    with pytest.raises(DMError, match=r"cannot create folder .*analysis: No space left on device \(the disk is full\)"):
        dm.create_experiment(experiment())
    assert (storage / "data").is_dir()
    assert dm.get_experiment(NAME) is None  # no registry row before the directories exist
    assert dm.list_experiments() == []

    monkeypatch.setattr(local_dm.os, "mkdir", real_mkdir)
    created, is_new = dm.create_experiment(experiment())
    assert is_new is True
    assert (storage / "analysis").is_dir() and mode(storage / "analysis") == DIR_MODE
    assert dm.list_experiments() == [NAME]
    assert created.storage_directory == str(storage)


def test_a_file_where_a_folder_must_be_is_a_clear_error_and_a_rerun_completes(dm, roots):
    storage = roots[0] / "2026-10" / NAME
    storage.mkdir(parents=True)
    (storage / "data").write_text("oops")
    with pytest.raises(DMError, match=r"cannot create folder .*/data: a file of that name is in the way"):
        dm.create_experiment(experiment())
    assert dm.get_experiment(NAME) is None
    (storage / "data").unlink()
    _, is_new = dm.create_experiment(experiment())
    assert is_new is True
    assert (storage / "data").is_dir()


def test_a_registry_failure_after_the_directories_is_completed_by_a_rerun(dm, registry, monkeypatch):
    real_put = registry.put_experiment

    def failing_put(*args, **kwargs):
        raise DMError("registry: disk I/O error")

    monkeypatch.setattr(registry, "put_experiment", failing_put)
    with pytest.raises(DMError, match="disk I/O error"):
        dm.create_experiment(experiment())
    monkeypatch.setattr(registry, "put_experiment", real_put)
    created, is_new = dm.create_experiment(experiment())
    assert is_new is True
    assert Path(created.storage_directory, "analysis").is_dir()


def test_permission_denied_names_the_path_and_the_reason(dm, roots, monkeypatch):
    def denied(fd, mode):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(local_dm.os, "fchmod", denied)
    with pytest.raises(DMError, match=r"cannot set permissions on .*2026-10: Permission denied"):
        dm.create_experiment(experiment())


def test_missing_storage_root_is_refused_not_created(registry, tmp_path, roots):
    dm = LocalDM(registry, tmp_path / "not-mounted", roots[1], "localhost", None)
    with pytest.raises(DMError, match="dm.storage_root: .*not-mounted does not exist"):
        dm.create_experiment(experiment())
    assert not (tmp_path / "not-mounted").exists()


def test_raw_folders_are_not_made_for_another_data_host(registry, roots):
    dm = LocalDM(registry, roots[0], roots[1], "tomodata3.example.invalid", None)
    created, _ = dm.create_experiment(experiment())
    assert created.data_directory == str(roots[1] / NAME)
    assert not (roots[1] / NAME).exists()
    assert Path(created.storage_directory).is_dir()


def test_this_host_names():
    for host in ("localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn(), "LOCALHOST"):
        assert is_this_host(host), host
    assert not is_this_host("tomodata3.example.invalid")


def test_group_is_applied(registry, roots):
    group = other_group()
    dm = LocalDM(registry, roots[0], roots[1], "localhost", group.gr_name)
    created, _ = dm.create_experiment(experiment())
    storage = Path(created.storage_directory)
    for path in (storage, storage / "data", storage / "analysis", roots[1] / NAME):
        assert path.stat().st_gid == group.gr_gid
        assert mode(path) == DIR_MODE
    # setgid: what is written inside inherits the group.
    (storage / "data" / "scan.h5").write_bytes(b"x")
    assert (storage / "data" / "scan.h5").stat().st_gid == group.gr_gid


def test_unknown_group_is_refused_before_anything_is_made(registry, roots):
    dm = LocalDM(registry, roots[0], roots[1], "localhost", "no-such-group-dmagic")
    with pytest.raises(DMError, match="unix group 'no-such-group-dmagic' does not exist"):
        dm.create_experiment(experiment())
    assert list(roots[0].iterdir()) == []


def test_chown_not_permitted_is_a_clear_error(registry, roots, monkeypatch):
    group = other_group()

    def refused(fd, uid, gid):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(local_dm.os, "fchown", refused)
    dm = LocalDM(registry, roots[0], roots[1], "localhost", group.gr_name)
    with pytest.raises(DMError, match=f"cannot give .* to group '{group.gr_name}': Operation not permitted"):
        dm.create_experiment(experiment())


def test_add_and_remove_users(dm):
    dm.create_experiment(experiment())
    users = [ExperimentUser("d310011", "Ann Smith", "ann@example.org"), ExperimentUser("d310012")]
    assert dm.add_users(NAME, users) == ["d310011", "d310012"]
    assert dm.add_users(NAME, users[:1]) == []
    assert dm.remove_users(NAME, ["d310012", "d999"]) == ["d310012"]
    assert dm.get_experiment(NAME).users == (users[0],)


def test_users_of_an_unknown_experiment_are_refused(dm):
    with pytest.raises(InputError, match="no experiment named"):
        dm.add_users(NAME, [ExperimentUser("d1")])


def test_delete_removes_storage_and_registry_but_keeps_raw_data(dm, roots):
    created, _ = dm.create_experiment(experiment())
    storage = Path(created.storage_directory)
    (storage / "data" / "a.h5").write_bytes(b"a")
    (storage / "analysis" / "rec").mkdir()
    (storage / "analysis" / "rec" / "b.tiff").write_bytes(b"b")
    raw = roots[1] / NAME
    (raw / "a.h5").write_bytes(b"a")
    sentence = dm.delete_experiment(NAME)
    assert sentence == (
        f"deleted experiment {NAME}: registry entry and storage {storage} (2 files); raw data in {raw} kept"
    )
    assert not storage.exists()
    assert (raw / "a.h5").read_bytes() == b"a"
    assert (roots[1] / f"{NAME}_rec").is_dir()
    assert dm.get_experiment(NAME) is None
    assert dm.list_experiments() == []


def test_delete_says_one_file(dm):
    created, _ = dm.create_experiment(experiment())
    Path(created.storage_directory, "data", "a.h5").write_bytes(b"a")
    assert "(1 file);" in dm.delete_experiment(NAME)


def test_delete_when_storage_is_already_gone(dm):
    created, _ = dm.create_experiment(experiment())
    shutil.rmtree(created.storage_directory)
    assert f"storage {created.storage_directory} was already gone" in dm.delete_experiment(NAME)
    assert dm.get_experiment(NAME) is None


def test_delete_unknown_experiment_is_refused(dm):
    with pytest.raises(InputError, match="nothing deleted"):
        dm.delete_experiment(NAME)


def test_delete_refuses_a_storage_path_outside_the_root(dm, registry, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    registry.put_experiment(Experiment(name=NAME, storage_directory=str(outside)))
    with pytest.raises(DMError, match="not inside dm.storage_root"):
        dm.delete_experiment(NAME)
    assert outside.is_dir()
    assert dm.get_experiment(NAME) is not None


def test_delete_failure_keeps_the_registry_entry_for_a_rerun(dm, monkeypatch):
    """A storage that cannot be renamed aside (a mount point: EBUSY) is left whole, its experiment too."""
    created, _ = dm.create_experiment(experiment())
    Path(created.storage_directory, "data", "a.h5").write_bytes(b"a")

    def busy(source, *args, **kwargs):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(source))

    monkeypatch.setattr(tree.os, "rename", busy)
    with pytest.raises(DMError, match=r"cannot delete .*: Device or resource busy"):
        dm.delete_experiment(NAME)
    assert dm.get_experiment(NAME) is not None
    assert Path(created.storage_directory, "data", "a.h5").read_bytes() == b"a"
    monkeypatch.undo()
    assert dm.delete_experiment(NAME).startswith(f"deleted experiment {NAME}")


def test_a_file_delete_cannot_remove_is_named_and_the_experiment_is_deleted(dm, roots, monkeypatch):
    """The storage is set aside first: its name is free for a new Create; what stays there is named (MINOR)."""
    created, _ = dm.create_experiment(experiment())
    storage = Path(created.storage_directory)
    (storage / "data" / "kept.h5").write_bytes(b"k")
    (storage / "data" / "gone.h5").write_bytes(b"g")
    real_unlink = os.unlink

    def refused(name, *args, **kwargs):
        if name == "kept.h5":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_unlink(name, *args, **kwargs)

    monkeypatch.setattr(tree.os, "unlink", refused)
    with pytest.raises(local_dm.PartialAccess, match=r"not removed: .*1 file or folder that could not be removed "
                       r"\(Operation not permitted\) \(e\.g\. data/kept\.h5\)") as raised:  # fmt: skip
        dm.delete_experiment(NAME)
    assert raised.value.done.startswith(f"deleted experiment {NAME}: registry entry and storage {storage} (1 file)")
    assert dm.get_experiment(NAME) is None and not storage.exists()
    [aside] = [entry for entry in storage.parent.iterdir() if entry.name.startswith(f".{NAME}.deleted-")]
    assert sorted(path.name for path in aside.rglob("*")) == ["data", "kept.h5"]  # the marker went first
    assert dm.create_experiment(experiment())[1]  # made anew beside it


def test_a_symlink_where_the_storage_was_is_never_followed_by_delete(dm, roots):
    created, _ = dm.create_experiment(experiment())
    storage = Path(created.storage_directory)
    elsewhere = roots[0] / "elsewhere"
    storage.rename(elsewhere)
    storage.symlink_to(elsewhere, target_is_directory=True)  # inside storage_root: not refused by its path
    with pytest.raises(DMError, match=r"cannot delete .*: a symbolic link, not followed"):
        dm.delete_experiment(NAME)
    assert (elsewhere / "data").is_dir() and (elsewhere / local_dm.STORAGE_MARKER).exists()


@pytest.mark.parametrize("bad", ["../etc", "a/b", "..", ".hidden", "a\\b", "x\ny", ""])
def test_names_that_could_escape_are_refused(dm, roots, bad):
    for call in (
        lambda: dm.create_experiment(experiment(name=bad)),
        lambda: dm.delete_experiment(bad),
        lambda: dm.get_experiment(bad),
        lambda: dm.add_users(bad, [ExperimentUser("d1")]),
        lambda: dm.remove_users(bad, ["d1"]),
    ):
        with pytest.raises(InputError):
            call()
    assert list(roots[0].iterdir()) == []


def test_esaf_is_empty(dm):
    assert dm.esaf("271828") == ([], "")


# ------------------------------------------------------------------ storage identity (docs/interface.md section 8)


def test_create_marks_the_storage_and_a_rerun_keeps_the_mark(dm):
    created, _ = dm.create_experiment(experiment())
    storage = Path(created.storage_directory)
    marker = json.loads((storage / STORAGE_MARKER).read_text())
    assert marker["experiment"] == NAME and len(marker["id"]) == 32

    dm.create_experiment(experiment())

    assert json.loads((storage / STORAGE_MARKER).read_text())["id"] == marker["id"]
    assert sorted(p.name for p in storage.iterdir()) == sorted([STORAGE_MARKER, "analysis", "data"])


def test_the_marker_goes_into_the_folder_create_made_even_if_its_path_is_swapped(dm, roots, monkeypatch):
    """The storage's path is swapped for another folder right after Create made (and opened) it: the marker
    is written through Create's descriptor, in the folder Create made; the swapped-in one gets nothing."""
    real_make_storage = local_dm.make_storage
    storage = roots[0] / "2026-10" / NAME
    made = roots[0] / "2026-10" / "made-by-create"

    def make_storage(*args):
        fd = real_make_storage(*args)
        storage.rename(made)
        storage.mkdir()  # someone's folder at the storage's name
        return fd

    monkeypatch.setattr(local_dm, "make_storage", make_storage)

    dm.create_experiment(experiment())

    assert json.loads((made / STORAGE_MARKER).read_text())["experiment"] == NAME
    assert list(storage.iterdir()) == []


def test_a_storage_marked_for_another_experiment_is_refused(dm, roots):
    storage = roots[0] / "2026-10" / NAME
    storage.mkdir(parents=True)
    write_storage_marker(storage, "2026-10-Other-1")

    with pytest.raises(DMError, match="belongs to experiment '2026-10-Other-1'"):
        dm.create_experiment(experiment())
    assert dm.get_experiment(NAME) is None


def test_the_storage_of_a_registered_experiment_that_went_is_not_made_again(dm):
    created, _ = dm.create_experiment(experiment())
    storage = Path(created.storage_directory)
    shutil.rmtree(storage)  # deleted by hand, or its disk not mounted

    with pytest.raises(DMError, match=f"the storage {storage} of experiment {NAME} is gone .*not made again"):
        dm.create_experiment(experiment())
    assert not storage.exists()

    dm.delete_experiment(NAME)  # the way to make it anew
    created, is_new = dm.create_experiment(experiment())
    assert is_new and (storage / STORAGE_MARKER).is_file()


@pytest.mark.parametrize("where", ["data", "raw_rec"])
def test_a_symlink_where_a_folder_must_be_is_refused_and_its_target_left_alone(dm, roots, tmp_path, where):
    target = tmp_path / "etc"
    target.mkdir()
    os.chmod(target, 0o755)
    if where == "data":
        link = roots[0] / "2026-10" / NAME / "data"
        link.parent.mkdir(parents=True)
    else:
        link = roots[1] / f"{NAME}_rec"
    link.symlink_to(target, target_is_directory=True)

    with pytest.raises(DMError, match=f"{link} is a symbolic link, not a folder: refused"):
        dm.create_experiment(experiment())

    assert mode(target) == 0o755 and list(target.iterdir()) == []
    assert dm.get_experiment(NAME) is None


def test_the_storage_marker_is_read_through_a_folder_descriptor(dm):
    created, _ = dm.create_experiment(experiment())
    fd = os.open(created.storage_directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_storage_marker(fd)["experiment"] == NAME
        os.unlink(STORAGE_MARKER, dir_fd=fd)
        os.symlink("/etc/hostname", STORAGE_MARKER, dir_fd=fd)
        with pytest.raises(OSError):  # never through a symlink
            read_storage_marker(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- facility layouts (dm.layout, dm.subdirs)

ESS = ("{storage_root}/{year}/{gup}", ("raw", "processed", "shared", "logs"))
MAX_IV = ("{storage_root}/{year}/{gup}", ("data", "analysis"))
NSLS_II = ("{storage_root}/{run}/pass-{gup}", ("data", "analysis"))


def laid_out(registry, roots, layout: str, subdirs) -> LocalDM:
    return LocalDM(registry, roots[0], roots[1], "localhost", None, layout=layout, subdirs=subdirs, beamline="2-BM")


@pytest.mark.parametrize("layout, subdirs", [ESS, MAX_IV], ids=["ESS", "MAX IV"])
def test_a_year_and_proposal_layout_places_the_storage_and_makes_the_subdirs(registry, roots, layout, subdirs):
    dm = laid_out(registry, roots, layout, subdirs)
    created, is_new = dm.create_experiment(experiment())
    storage = roots[0] / "2026" / "1234"
    assert is_new and created.storage_directory == str(storage)
    assert sorted(p.name for p in storage.iterdir()) == sorted((*subdirs, STORAGE_MARKER))
    for path in (storage.parent, storage, *(storage / sub for sub in subdirs)):
        assert mode(path) == DIR_MODE
    assert json.loads((storage / STORAGE_MARKER).read_text())["experiment"] == NAME
    assert dm.get_experiment(NAME) == created


def test_the_nsls_ii_layout_takes_the_storage_the_use_case_placed_by_run(registry, roots):
    dm = laid_out(registry, roots, *NSLS_II)
    placed = roots[0] / "2026-3" / "pass-1234"
    created, _ = dm.create_experiment(experiment(storage_directory=str(placed)))
    assert created.storage_directory == str(placed)
    assert sorted(p.name for p in placed.iterdir()) == sorted(("data", "analysis", STORAGE_MARKER))


def test_a_layout_value_the_record_lacks_is_refused_before_anything_is_made(registry, roots):
    dm = laid_out(registry, roots, *NSLS_II)
    with pytest.raises(InputError, match=r"\{run\}"):
        dm.create_experiment(experiment())
    assert list(roots[0].iterdir()) == [] and dm.list_experiments() == []


@pytest.mark.parametrize("placed", ["{root}/../elsewhere/x", "/tmp/elsewhere", "{root}"])
def test_a_placed_storage_outside_storage_root_is_refused(registry, roots, placed):
    dm = laid_out(registry, roots, *MAX_IV)
    with pytest.raises(InputError, match="not inside dm.storage_root"):
        dm.create_experiment(experiment(storage_directory=placed.format(root=roots[0])))
    assert list(roots[0].iterdir()) == [] and dm.list_experiments() == []


def test_two_experiments_the_layout_puts_in_one_folder_the_second_is_refused(registry, roots):
    dm = laid_out(registry, roots, *MAX_IV)
    dm.create_experiment(experiment())
    with pytest.raises(DMError, match=f"belongs to experiment '{NAME}'"):
        dm.create_experiment(experiment(name="2026-11-Jones-1234", year_month="2026-11"))
    assert dm.list_experiments() == [NAME]


def test_a_new_layout_leaves_existing_experiments_where_the_registry_has_them(registry, roots):
    LocalDM(registry, roots[0], roots[1], "localhost", None).create_experiment(experiment())
    old_storage = roots[0] / "2026-10" / NAME
    dm = laid_out(registry, roots, *ESS)
    again, is_new = dm.create_experiment(experiment())
    assert not is_new and again.storage_directory == str(old_storage)
    assert not (roots[0] / "2026").exists()
    dm.create_experiment(experiment(name="2026-10-Jones-5678", gup="5678"))
    assert dm.list_experiments() == ["2026-10-Jones-5678", NAME]  # from the registry, whatever the folders


def test_delete_under_a_layout_removes_only_the_storage(registry, roots):
    dm = laid_out(registry, roots, *ESS)
    dm.create_experiment(experiment())
    dm.create_experiment(experiment(name="2026-10-Jones-5678", gup="5678"))
    dm.delete_experiment(NAME)
    assert not (roots[0] / "2026" / "1234").exists()
    assert (roots[0] / "2026" / "5678" / "raw").is_dir()


# --------------------------------------------------------------------------- dm.posix.group


@pytest.fixture
def prefix():
    return unique_prefix()


def grouped(registry, roots, template: str, layout=MAX_IV) -> LocalDM:
    return LocalDM(registry, roots[0], roots[1], "localhost", None, layout=layout[0], subdirs=layout[1],
                   posix_group=template)  # fmt: skip


@needs_root
def test_the_experiment_tree_is_owned_by_the_proposals_group_with_setgid(registry, roots, prefix):
    with throwaway_group(f"{prefix}1234") as name:
        gid = grp.getgrnam(name).gr_gid
        dm = grouped(registry, roots, prefix + "{gup}")
        created, _ = dm.create_experiment(experiment())
        storage = Path(created.storage_directory)
        for path in (storage, storage / "data", storage / "analysis"):
            assert path.stat().st_gid == gid and mode(path) == DIR_MODE
        (storage / "data" / "later.h5").write_bytes(b"x")  # as the transfer writes, later
        assert (storage / "data" / "later.h5").stat().st_gid == gid  # inherited through setgid
        year = storage.parent
        assert year.stat().st_gid != gid and mode(year) == SHARED_DIR_MODE  # others pass, never list
        assert (roots[1] / NAME).stat().st_gid != gid  # the raw folders are the detectors', not the proposal's


@needs_root
def test_a_fixed_posix_group_owns_every_experiment_tree(registry, roots, prefix):
    with throwaway_group(prefix) as name:
        dm = grouped(registry, roots, name)
        first, _ = dm.create_experiment(experiment())
        second, _ = dm.create_experiment(experiment(name="2026-10-Jones-5678", gup="5678"))
        gid = grp.getgrnam(name).gr_gid
        assert Path(first.storage_directory).stat().st_gid == Path(second.storage_directory).stat().st_gid == gid


def test_a_group_that_does_not_exist_is_named_and_the_rest_proceeds(registry, roots, prefix):
    dm = grouped(registry, roots, prefix + "{gup}")
    with pytest.raises(local_dm.PartialAccess, match=f"unix group '{prefix}1234' does not exist") as raised:
        dm.create_experiment(experiment())
    created, is_new = raised.value.done
    assert is_new and Path(created.storage_directory, "data").is_dir()
    assert dm.get_experiment(NAME) == created
    with pytest.raises(local_dm.PartialAccess) as again:  # a rerun says it again, and completes nothing else
        dm.create_experiment(experiment())
    assert again.value.done == (created, False)


def test_an_experiment_without_the_groups_placeholder_is_named_and_made(registry, roots, prefix):
    dm = grouped(registry, roots, prefix + "{gup}", layout=("{storage_root}/{year_month}/{experiment}", ("a", "b")))
    with pytest.raises(local_dm.PartialAccess, match=r"needs \{gup\}.*not given to a group") as raised:
        dm.create_experiment(experiment(gup=""))
    assert Path(raised.value.done[0].storage_directory, "a").is_dir()


# --------------------------------------------------------------------------- dm.posix.user_account, staff_groups


@pytest.fixture
def open_roots():
    """storage_root and data_top_dir every account can pass through, on a filesystem with ACLs."""
    with open_folder() as top:
        problem = acl_support_problem(top)
        if problem:
            pytest.skip(problem)
        roots = top / "gdata", top / "data"
        for root in roots:
            root.mkdir(mode=0o711)
            root.chmod(0o711)
        yield roots


def with_acls(registry, roots, prefix: str, staff_groups=()) -> LocalDM:
    return LocalDM(registry, roots[0], roots[1], "localhost", None, layout=MAX_IV[0], subdirs=MAX_IV[1],
                   user_account=prefix + "{badge}", staff_groups=staff_groups)  # fmt: skip


def getfacl(path: Path) -> str:
    return subprocess.run(["getfacl", "-p", "--omit-header", str(path)], capture_output=True, text=True).stdout


@needs_acl
def test_users_on_the_experiment_read_its_files_and_others_cannot(registry, open_roots, prefix):
    with throwaway_user(f"{prefix}310001") as on, throwaway_user(f"{prefix}310002") as off:
        dm = with_acls(registry, open_roots, prefix)
        created, _ = dm.create_experiment(experiment())
        assert dm.add_users(NAME, [ExperimentUser("d310001")]) == ["d310001"]
        storage = Path(created.storage_directory)
        (storage / "data" / "scan1").mkdir()  # as the transfer makes folders and files later
        later = storage / "data" / "scan1" / "proj_000.h5"
        later.write_bytes(b"x" * 100)
        later.chmod(0o640)  # the transfer keeps the source's mode: group bits (the ACL mask) r--
        assert f"user:{on}:r-x" in getfacl(storage / "data") and f"default:user:{on}:r-x" in getfacl(storage)
        # a file made later inherits the default entry r-x, cut to r-- by its mode's group bits (the mask)
        assert f"user:{on}:r-x\t#effective:r--" in getfacl(later)
        (storage / "data" / "before.h5").write_bytes(b"y")
        dm.add_users(NAME, [ExperimentUser("d310001")])  # again: files already there get r-- itself
        assert f"user:{on}:r--" in getfacl(storage / "data" / "before.h5")
        assert as_user(on, "cat", str(later)) and as_user(on, "ls", str(storage / "data" / "scan1"))
        assert not as_user(on, "touch", str(storage / "data" / "new"))  # read only
        assert not as_user(off, "cat", str(later)) and not as_user(off, "ls", str(storage))

        assert dm.remove_users(NAME, ["d310001"]) == ["d310001"]
        assert on not in getfacl(later) and on not in getfacl(storage / "data")
        assert not as_user(on, "cat", str(later))


@needs_acl
def test_a_user_without_an_account_is_named_and_the_others_get_access(registry, open_roots, prefix):
    with throwaway_user(f"{prefix}310001") as on:
        dm = with_acls(registry, open_roots, prefix)
        created, _ = dm.create_experiment(experiment())
        with pytest.raises(local_dm.PartialAccess, match=f"no unix account {prefix}310009 ") as raised:
            dm.add_users(NAME, [ExperimentUser("d310009"), ExperimentUser("d310001")])
        assert sorted(raised.value.done) == ["d310001", "d310009"]  # both DM users; one has the filesystem too
        assert as_user(on, "ls", str(Path(created.storage_directory) / "data"))
        assert dm.remove_users(NAME, ["d310009", "d310001"]) == ["d310009", "d310001"]


@needs_acl
def test_staff_groups_get_rwx_on_every_tree_and_a_missing_one_is_named(registry, open_roots, prefix):
    with throwaway_group(f"{prefix}st") as staff, throwaway_user(f"{prefix}100001", groups=(staff,)) as member:
        dm = with_acls(registry, open_roots, prefix, staff_groups=(staff, f"{prefix}gone"))
        with pytest.raises(local_dm.PartialAccess, match=f"staff_groups: unix group {prefix}gone does not exist"):
            dm.create_experiment(experiment())
        storage = open_roots[0] / "2026" / "1234"
        assert f"group:{staff}:rwx" in getfacl(storage / "analysis")
        assert f"default:group:{staff}:rwx" in getfacl(storage / "analysis")
        assert as_user(member, "touch", str(storage / "analysis" / "notes.txt"))


def test_a_filesystem_without_acls_is_a_clear_error(registry, roots, monkeypatch):
    def unsupported(target, name, *args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")  # as vfat or an NFS mount without ACLs answer

    monkeypatch.setattr(local_dm.acl.os, "getxattr", unsupported)
    monkeypatch.setattr(local_dm.acl.os, "setxattr", unsupported)
    dm = LocalDM(registry, roots[0], roots[1], "localhost", None, staff_groups=("root",))
    with pytest.raises(DMError, match=f"the filesystem of {roots[0]}/2026-10/{NAME} has no POSIX ACL support"):
        dm.create_experiment(experiment())
