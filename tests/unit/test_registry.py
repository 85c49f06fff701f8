"""The registry: round trips, order, atomic writes, schema version, state that survives reopening."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest
from dmagic_ioc.adapters.registry.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from dmagic_ioc.adapters.registry.store import Registry
from dmagic_ioc.ioc.domain.errors import DMError, InputError
from dmagic_ioc.ioc.domain.experiment import Experiment, ExperimentUser

CHICAGO = timezone(timedelta(hours=-5))


def experiment(name: str = "2026-10-Smith-1234", **changes) -> Experiment:
    values = dict(
        name=name,
        title="Imaging of fossil teeth — ünïcode title",
        gup="1234",
        esaf="271828",
        start=datetime(2026, 10, 14, 8, 0, tzinfo=CHICAGO),
        end=datetime(2026, 10, 17, 8, 0, tzinfo=CHICAGO),
        year_month="2026-10",
        storage_directory=f"/gdata/dm/2BM/2026-10/{name}",
        data_directory=f"/data3/2BM/{name}",
        users=(
            ExperimentUser("d310011", "Ann Smith", "ann@example.org", "Argonne", "proposal"),
            ExperimentUser("d310012", "Bo Li", "bo@example.org", "UChicago", "esaf"),
        ),
    )
    values.update(changes)
    return Experiment(**values)


@pytest.fixture
def registry(tmp_path):
    with Registry(tmp_path / "state" / "registry.sqlite") as registry:
        yield registry


def stored_names(path) -> list[str]:
    """The experiments' names in the registry's file, read by SQLite itself, not through the Registry."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM experiments")]


def schema_version(path) -> int:
    """The schema version the registry's file holds (`PRAGMA user_version`), read by SQLite itself."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def test_experiment_round_trip(registry):
    original = experiment()
    registry.put_experiment(original)
    assert registry.get_experiment(original.name) == original
    assert registry.get_experiment("2026-10-Nobody-0") is None
    assert original.name in stored_names(registry.path)


def test_experiment_without_dates_round_trips(registry):
    bare = Experiment(name="2026-11-Staff-0", year_month="2026-11")
    registry.put_experiment(bare)
    assert registry.get_experiment(bare.name) == bare


def test_update_keeps_creation_order_and_users(registry):
    registry.put_experiment(experiment("A"), created=1.0)
    registry.put_experiment(experiment("B"), created=2.0)
    registry.put_experiment(experiment("A", title="renamed", users=()))
    assert registry.experiment_names() == ["B", "A"]
    again = registry.get_experiment("A")
    assert again.title == "renamed"
    assert again.usernames == ("d310011", "d310012")


def test_names_newest_first_even_within_one_clock_tick(registry):
    for index in range(5):
        registry.put_experiment(Experiment(name=f"E{index}"), created=100.0)
    registry.put_experiment(Experiment(name="older"), created=50.0)
    assert registry.experiment_names() == ["E4", "E3", "E2", "E1", "E0", "older"]


def test_add_users_returns_only_new_ones_in_order(registry):
    registry.put_experiment(experiment(users=()))
    first = [ExperimentUser("d1"), ExperimentUser("d2")]
    assert registry.add_users("2026-10-Smith-1234", first) == ["d1", "d2"]
    assert registry.add_users("2026-10-Smith-1234", [ExperimentUser("d2"), ExperimentUser("d3")]) == ["d3"]
    assert registry.get_experiment("2026-10-Smith-1234").usernames == ("d1", "d2", "d3")


def test_remove_users_returns_those_that_had_access(registry):
    registry.put_experiment(experiment())
    assert registry.remove_users("2026-10-Smith-1234", ["d310012", "d999", "d310012"]) == ["d310012"]
    assert registry.get_experiment("2026-10-Smith-1234").usernames == ("d310011",)


def test_users_of_an_unknown_experiment_are_refused(registry):
    with pytest.raises(InputError, match="no experiment named"):
        registry.add_users("ghost", [ExperimentUser("d1")])
    with pytest.raises(InputError, match="no experiment named"):
        registry.remove_users("ghost", ["d1"])


def test_delete_removes_experiment_and_its_users(registry, tmp_path):
    registry.put_experiment(experiment())
    assert registry.delete_experiment("2026-10-Smith-1234") is True
    assert registry.delete_experiment("2026-10-Smith-1234") is False
    assert registry.get_experiment("2026-10-Smith-1234") is None
    # Foreign keys cascade: no orphan user rows are left.
    count = sqlite3.connect(registry.path).execute("SELECT COUNT(*) FROM experiment_users").fetchone()[0]
    assert count == 0


def test_a_failure_inside_a_write_leaves_nothing_half_written(registry):
    # The second user violates NOT NULL after the experiment row was inserted.
    broken = experiment(users=(ExperimentUser("d1"), ExperimentUser(None)))  # type: ignore[arg-type]
    with pytest.raises(DMError, match="registry"):
        registry.put_experiment(broken)
    assert registry.get_experiment(broken.name) is None
    assert registry.experiment_names() == []


def test_a_crash_between_two_writes_of_one_transaction_commits_neither(registry):
    class Crash(Exception):
        pass

    with pytest.raises(Crash), registry.transaction() as conn:
        conn.execute("INSERT INTO experiments (name, created) VALUES ('half', 1.0)")
        raise Crash
    assert registry.experiment_names() == []
    registry.put_experiment(Experiment(name="whole"))  # the connection is usable afterwards
    assert registry.experiment_names() == ["whole"]


def test_an_interrupted_process_leaves_no_trace(tmp_path):
    """A writer that dies (no commit, no close) leaves the file as it was before."""
    path = tmp_path / "registry.sqlite"
    Registry(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("INSERT INTO experiments (name, created) VALUES ('half', 1.0)")
    del raw  # dropped without commit, as a crash would
    with Registry(path) as reopened:
        assert reopened.experiment_names() == []


def test_schema_version_and_pragmas(registry):
    assert schema_version(registry.path) == SCHEMA_VERSION == 2
    conn = sqlite3.connect(registry.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(experiments)")}
    assert "experiments_by_created" in indexes


def test_migrate_is_a_no_op_on_a_current_file(registry):
    assert migrate(sqlite3.connect(registry.path, isolation_level=None)) == SCHEMA_VERSION


def test_a_file_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "registry.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DMError, match="newer than this dmagic-ioc"):
        Registry(path)
    assert asides(path) == [] and path.exists()  # refused, not taken for unreadable and set aside


def test_an_unopenable_path_is_a_dm_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DMError, match="cannot open the registry"):
        Registry(blocker / "registry.sqlite")


def test_selection_emailed_and_rules_survive_reopening(tmp_path):
    path = tmp_path / "registry.sqlite"
    with Registry(path) as registry:
        assert registry.selected() == ""
        registry.select("2026-10-Smith-1234")
        registry.mark_emailed("2026-10-Smith-1234", ["d1", "d2"])
        registry.mark_emailed("2026-10-Smith-1234", ["d2", "d3"])
        registry.record_rules("2026-10-Smith-1234", {"d1": "rule-1", "d2": "rule-2"})
        registry.record_rules("2026-10-Smith-1234", {"d2": "rule-2b"})
        registry.put_experiment(experiment())
    with Registry(path) as registry:
        assert registry.selected() == "2026-10-Smith-1234"
        assert registry.emailed("2026-10-Smith-1234") == ["d1", "d2", "d3"]
        assert registry.rules("2026-10-Smith-1234") == {"d1": "rule-1", "d2": "rule-2b"}
        assert registry.get_experiment("2026-10-Smith-1234") == experiment()


def test_select_replaces_and_empty_clears(registry):
    registry.select("A")
    registry.select("B")
    assert registry.selected() == "B"
    registry.select("")
    assert registry.selected() == ""


def test_forget_rules_and_experiment(registry):
    registry.select("A")
    registry.mark_emailed("A", ["d1"])
    registry.mark_emailed("B", ["d1"])
    registry.record_rules("A", {"d1": "r1", "d2": "r2"})
    registry.forget_rules("A", ["d1", "d9"])
    assert registry.rules("A") == {"d2": "r2"}
    registry.put_experiment(Experiment(name="A"))
    registry.forget_experiment("A")
    assert (registry.selected(), registry.emailed("A"), registry.rules("A")) == ("", [], {})
    assert registry.emailed("B") == ["d1"]
    assert "A" in stored_names(registry.path)  # the row belongs to the DM backend


def test_forget_experiment_keeps_another_selection(registry):
    registry.select("B")
    registry.forget_experiment("A")
    assert registry.selected() == "B"


def test_calls_from_several_threads_one_at_a_time_or_not(registry):
    errors = []

    def work(index: int) -> None:
        try:
            for step in range(20):
                registry.put_experiment(Experiment(name=f"T{index}-{step}"))
                registry.experiment_names()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(registry.experiment_names()) == 80


# --------------------------------------------------------------------------- a file that cannot be read


def filled_registry(path, count: int = 200) -> bytes:
    """A registry of `count` experiments (many pages), closed; its bytes."""
    with Registry(path) as registry:
        for number in range(count):
            registry.put_experiment(experiment(f"2026-10-Smith-{number}", title="x" * 300))
    return path.read_bytes()


def corrupt_pages(path) -> bytes:
    """Overwrite every page after the first (the header and schema stay): what a bad disk leaves."""
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xab" * (len(data) - 4096)
    path.write_bytes(bytes(data))
    return bytes(data)


def asides(path) -> list:
    """The kept copies of `path` (their -wal and -shm companions left out)."""
    return sorted(p for p in path.parent.glob(path.name + ".corrupt-*") if not p.name.endswith(("-wal", "-shm")))


def garbage(path) -> bytes:
    path.write_bytes(b"this is not a database\n" * 100)
    return path.read_bytes()


def zero_bytes(path) -> bytes:
    path.write_bytes(b"")
    return b""


def truncated(path) -> bytes:
    path.write_bytes(filled_registry(path)[:6000])
    return path.read_bytes()


@pytest.mark.parametrize(
    "damage, reason",
    [(garbage, "not a database"), (zero_bytes, "empty"), (corrupt_pages, "malformed|integrity check"),
     (truncated, "malformed|integrity check")],
    ids=["garbage", "zero-bytes", "corrupt-pages", "truncated"],
)  # fmt: skip
def test_an_unreadable_file_is_kept_aside_and_an_empty_registry_starts(tmp_path, damage, reason):
    path = tmp_path / "registry.sqlite"
    filled_registry(path, count=5)
    original = damage(path)
    with Registry(path) as registry:
        (aside,) = asides(path)
        assert aside.read_bytes() == original  # byte for byte, never overwritten
        assert aside.name in registry.problem and path.name in registry.problem
        assert re.search(reason, registry.problem), registry.problem
        assert registry.experiment_names() == []
        registry.put_experiment(experiment())  # the new one works
        assert registry.experiment_names() == ["2026-10-Smith-1234"]
    with Registry(path) as again:
        assert again.problem == "" and again.experiment_names() == ["2026-10-Smith-1234"]
    assert asides(path) == [aside]


def test_a_readable_file_is_never_set_aside(tmp_path):
    path = tmp_path / "registry.sqlite"
    filled_registry(path, count=3)
    with Registry(path) as registry:
        assert registry.problem == "" and len(registry.experiment_names()) == 3
    assert asides(path) == []


def test_the_wal_follows_the_file_it_belongs_to(tmp_path):
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"garbage" * 1000)
    wal = tmp_path / "registry.sqlite-wal"
    wal.write_bytes(b"frames of the lost file")
    with Registry(path) as registry:
        (aside,) = asides(path)
        assert (tmp_path / f"{aside.name}-wal").read_bytes() == b"frames of the lost file"
        assert registry.problem


def test_a_second_unreadable_file_gets_its_own_name(tmp_path):
    path = tmp_path / "registry.sqlite"
    for text in (b"first garbage", b"second garbage"):
        path.write_bytes(text * 300)
        Registry(path).close()
    kept = asides(path)
    assert sorted(p.read_bytes() for p in kept) == sorted([b"first garbage" * 300, b"second garbage" * 300])


def test_cannot_keep_aside_is_a_dm_error_and_the_file_stays(tmp_path, monkeypatch):
    from dmagic_ioc.adapters.registry import file as module

    def refuse(path, companions=()):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(module, "keep_aside", refuse)
    path = tmp_path / "registry.sqlite"
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(DMError, match="nor kept aside"):
        Registry(path)
    assert path.read_bytes() == b"garbage" * 100


# --------------------------------------------------------------------------- an empty registry beside full storage


def test_an_empty_registry_beside_experiment_folders_is_not_taken_as_the_truth(registry, tmp_path):
    storage = tmp_path / "storage"
    (storage / "2026-11" / "2026-11-DArcy-1013377" / "data").mkdir(parents=True)
    (storage / "2026-10" / "2026-10-Li-1012039").mkdir(parents=True)
    problem = registry.storage_problem(storage)
    assert "lists no experiment" in problem and str(storage) in problem
    assert "2026-10/2026-10-Li-1012039" in problem and "2026-11/2026-11-DArcy-1013377" in problem
    assert "backup" in problem and "Create" in problem  # what to do


def test_storage_without_experiments_or_a_registry_with_some_is_fine(registry, tmp_path):
    storage = tmp_path / "storage"
    assert registry.storage_problem(storage) == ""  # not even there: --check names it
    storage.mkdir()
    (storage / ".snapshot" / "daily").mkdir(parents=True)  # hidden: not an experiment
    (storage / "2026-11").mkdir()  # a month folder alone
    (storage / "README").write_text("x")
    assert registry.storage_problem(storage) == ""
    (storage / "2026-11" / "2026-11-DArcy-1013377").mkdir()
    assert registry.storage_problem(storage)
    registry.put_experiment(experiment())
    assert registry.storage_problem(storage) == ""


def test_unreadable_says_why_and_changes_nothing(tmp_path):
    from dmagic_ioc.adapters.registry.file import unreadable

    path = tmp_path / "registry.sqlite"
    assert unreadable(path) == ""  # none yet
    filled_registry(path, count=2)
    assert unreadable(path) == ""
    original = corrupt_pages(path)
    assert "integrity check" in unreadable(path)
    assert path.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["registry.sqlite"]
    path.write_bytes(b"")
    assert unreadable(path) == "the file is empty"


def test_a_kept_proposal_comes_back_whole_and_goes_with_its_experiment(registry):
    from datetime import datetime, timezone

    from dmagic_ioc.ioc.domain.beamtime import Beamtime
    from dmagic_ioc.ioc.domain.esaf import Esaf
    from dmagic_ioc.ioc.domain.people import Person
    from dmagic_ioc.ioc.domain.proposal import Proposal

    start = datetime(2026, 11, 18, 8, 0, tzinfo=timezone.utc)
    pi = Person("310011", "Jean-Luc", "D'Arcy", "jl@example.fr", "Lab", is_pi=True)
    proposal = Beamtime(Proposal("1013377", "Foam — ünïcødé", (pi,), "General User", mail_in=True),
                        start, start.replace(day=25), Esaf("281002", people=(Person("310099", "Eva"),)))  # fmt: skip
    assert registry.proposal("E1") is None
    registry.keep_proposal("E1", proposal)
    assert registry.proposal("E1") == proposal
    registry.forget_experiment("E1")
    assert registry.proposal("E1") is None


def test_the_followed_beamtime_is_kept(registry):
    assert registry.followed() == ""
    registry.mark_followed("1013377@2026-11-18T08:00:00-06:00")
    registry.mark_followed("1014002@2026-12-01T08:00:00-06:00")
    assert registry.followed() == "1014002@2026-12-01T08:00:00-06:00"


def test_a_version_1_registry_is_upgraded_keeping_its_experiments(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO selection (id, name) VALUES (1, 'E1')")
    conn.close()
    with Registry(path) as upgraded:
        assert schema_version(path) == 2 and upgraded.selected() == "E1"
        assert upgraded.followed() == ""
