"""Config: every problem names its key, all are listed at once, paths resolve, secrets are private."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from dmagic_ioc.ioc.config import (
    ConfigError,
    Settings,
    load_config,
    read_credentials,
    read_secret,
    settings_from_dict,
)
from dmagic_ioc.ioc.model import InputError


@pytest.fixture
def base(tmp_path) -> Path:
    (tmp_path / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    return tmp_path


def minimal(**sections) -> dict:
    """The smallest valid config (file schedule beside the config), with `sections` merged in."""
    raw = {"beamline": {"name": "2-BM-A,B"}, "scheduling": {"path": "schedule.yaml"}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return raw


def problems_of(raw: object, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as error:
        settings_from_dict(raw, base=base)
    assert str(error.value) == "\n".join(error.value.problems)
    return error.value.problems


def one_problem(raw: object, base: Path, key: str) -> str:
    """The problems of a config with one bad key: each names that key (exactly, as `key:`)."""
    problems = problems_of(raw, base)
    assert problems, problems
    assert all(problem.startswith(f"{key}:") for problem in problems), problems
    return "\n".join(problems)


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- valid configs


def test_minimal_config_and_defaults(base):
    settings = settings_from_dict(minimal(), base=base)
    assert isinstance(settings, Settings)
    assert settings.beamline.name == "2-BM-A,B"
    assert settings.scheduling.backend == "file"
    assert settings.scheduling.path == base / "schedule.yaml"
    assert settings.dm.backend == "local"
    assert settings.dm.experiment_name == "{year_month}-{pi_last_name}-{gup}"
    assert settings.beamline.tz.key == "America/Chicago"
    assert not settings.ioc.access.restricted


def test_full_config_types(base):
    raw = minimal(
        ioc={"prefix": "2bmb:DM:", "state_dir": "state", "access": {"write_hosts": ["tomo1"], "write_users": [2]}},
        beamline={"station": "2BM", "timezone": "Europe/Berlin", "contacts": [100001, "100002"]},
        scheduling={"timeout": 5, "refresh_period": 0},
        dm={"data_top_dir": "/data3/2BM", "storage_root": "store", "group": None, "transfer_workers": 2},
        email={"smtp_port": 587, "starttls": True},
        tag={"prefix": "2bmb:TomoScan:"},
    )
    settings = settings_from_dict(raw, base=base)
    assert settings.ioc.state_dir == base / "state"
    assert settings.ioc.access.write_hosts == ("tomo1",)
    assert settings.ioc.access.write_users == ("2",)
    assert settings.ioc.access.restricted
    assert settings.beamline.contacts == ("100001", "100002")
    assert settings.scheduling.timeout == 5.0 and isinstance(settings.scheduling.timeout, float)
    assert settings.scheduling.refresh_period == 0.0
    assert settings.dm.data_top_dir == Path("/data3/2BM")
    assert settings.dm.storage_root == base / "store"
    assert settings.dm.group is None
    assert settings.email.smtp_port == 587 and settings.email.starttls is True
    assert settings.tag.prefix == "2bmb:TomoScan:"


def test_empty_sections_take_defaults(base):
    settings = settings_from_dict(minimal(ioc=None, dm=None, tag=None), base=base)
    assert settings.ioc.prefix == "dmagic:"
    assert settings.tag.prefix == ""


# --------------------------------------------------------------------------- keys and types


def test_unknown_top_level_key(base):
    problem = one_problem(minimal(dmm={"backend": "local"}), base, "dmm")
    assert "unknown key" in problem
    assert "dm" in problem  # the known keys are listed


@pytest.mark.parametrize(
    "raw_section, key",
    [
        ({"dm": {"storage_rot": "/x"}}, "dm.storage_rot"),
        ({"ioc": {"access": {"write_host": ["tomo1"]}}}, "ioc.access.write_host"),
        ({"beamline": {"time_zone": "UTC"}}, "beamline.time_zone"),
    ],
)
def test_unknown_nested_key(base, raw_section, key):
    problem = one_problem(minimal(**raw_section), base, key)
    assert "unknown key" in problem


def test_source_is_not_a_config_key(base):
    one_problem({**minimal(), "source": "x.yaml"}, base, "source")


@pytest.mark.parametrize(
    "section, values, key, words",
    [
        ("scheduling", {"timeout": "10"}, "scheduling.timeout", "number"),
        ("scheduling", {"refresh_period": True}, "scheduling.refresh_period", "number"),
        ("email", {"smtp_port": 25.5}, "email.smtp_port", "whole number"),
        ("email", {"smtp_port": "25"}, "email.smtp_port", "whole number"),
        ("email", {"enabled": "yes"}, "email.enabled", "true or false"),
        ("email", {"starttls": 1}, "email.starttls", "true or false"),
        ("beamline", {"contacts": "100001"}, "beamline.contacts", "list"),
        ("beamline", {"contacts": [[100001]]}, "beamline.contacts", "list"),
        ("beamline", {"contacts": [None]}, "beamline.contacts", "list"),
        ("beamline", {"name": ["2-BM"]}, "beamline.name", "text"),
        ("dm", {"data_top_dir": 3}, "dm.data_top_dir", "path"),
        ("dm", {"experiment_name": {"a": 1}}, "dm.experiment_name", "text"),
    ],
)
def test_wrong_types_name_their_key(base, section, values, key, words):
    assert words in one_problem(minimal(**{section: values}), base, key)


@pytest.mark.parametrize("section", ["ioc", "dm", "email"])
def test_section_that_is_not_a_mapping(base, section):
    assert "mapping" in one_problem(minimal(**{section: [1, 2]}), base, section)


def test_top_level_that_is_not_a_mapping(base):
    assert "mapping" in one_problem(["a", "b"], base, "config")


@pytest.mark.parametrize(
    "section, values, key",
    [
        ("scheduling", {"backend": "google"}, "scheduling.backend"),
        ("dm", {"backend": "s3"}, "dm.backend"),
        ("dm", {"transfer": "rsync"}, "dm.transfer"),
    ],
)
def test_bad_choices(base, section, values, key):
    problem = one_problem(minimal(**{section: values}), base, key)
    assert repr(next(iter(values.values()))) in problem


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../etc/passwd", "America/Chicag"])
def test_unknown_time_zone(base, zone):
    problem = one_problem(minimal(beamline={"timezone": zone}), base, "beamline.timezone")
    assert "time zone" in problem


@pytest.mark.parametrize(
    "template, words",
    [
        ("{year_month}-{last_name}-{gup}", "last_name"),
        ("{year_month}-{pi_last_name}-{gup", "dm.experiment_name"),
        ("{0}-{gup}", "0"),
        ("{year_month}/{gup}", "escape"),
        ("../{gup}", "escape"),
    ],
)
def test_bad_experiment_name_template(base, template, words):
    assert words in one_problem(minimal(dm={"experiment_name": template}), base, "dm.experiment_name")


@pytest.mark.parametrize(
    "section, values, key",
    [
        ("ioc", {"prefix": ""}, "ioc.prefix"),
        ("beamline", {"contacts": [100001, "12a"]}, "beamline.contacts"),
        ("scheduling", {"timeout": 0}, "scheduling.timeout"),
        ("scheduling", {"refresh_period": -1}, "scheduling.refresh_period"),
        ("dm", {"settle_time": -0.5}, "dm.settle_time"),
        ("dm", {"transfer_workers": 0}, "dm.transfer_workers"),
        ("dm", {"group": "../wheel"}, "dm.group"),
        ("dm", {"transfer": "globus"}, "dm.transfer"),
    ],
)
def test_bad_values_name_their_key(base, section, values, key):
    one_problem(minimal(**{section: values}), base, key)


def test_beamline_name_is_required(base):
    one_problem({"scheduling": {"path": "schedule.yaml"}}, base, "beamline.name")


def test_file_backend_needs_an_existing_schedule(base):
    assert "schedule" in one_problem({"beamline": {"name": "x"}}, base, "scheduling.path")
    problem = one_problem(minimal(scheduling={"path": "missing.yaml"}), base, "scheduling.path")
    assert str(base / "missing.yaml") in problem


@pytest.mark.parametrize("key", ["data_top_dir", "storage_root"])
def test_required_path_cannot_be_empty(base, key):
    """An empty required path must be refused by name, not become None and crash the IOC later."""
    one_problem(minimal(dm={key: ""}), base, f"dm.{key}")


def test_state_dir_cannot_be_empty(base):
    one_problem(minimal(ioc={"state_dir": ""}), base, "ioc.state_dir")


def test_every_problem_is_listed_at_once(base):
    raw = {
        "ioc": {"prefix": "", "colour": "red"},
        "beamline": {"name": "2-BM", "timezone": "Nowhere/Land", "contacts": ["x1"]},
        "scheduling": {"backend": "aps", "url": "ftp://x", "timeout": "slow"},
        "dm": {"backend": "s3", "experiment_name": "{nope}", "extra": 1},
        "globus": {"enabled": True},
        "mystery": 1,
    }
    problems = problems_of(raw, base)
    keys = {problem.split(":")[0] for problem in problems}
    assert {
        "ioc.prefix",
        "ioc.colour",
        "beamline.timezone",
        "beamline.contacts",
        "scheduling.url",
        "scheduling.timeout",
        "scheduling.credentials",
        "dm.backend",
        "dm.experiment_name",
        "dm.extra",
        "globus.collection_id",
        "globus.client_id",
        "globus.client_secret_file",
        "mystery",
    } <= keys, problems


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "etc" / "dmagic"
    folder.mkdir(parents=True)
    (folder / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    config = folder / "ioc.yaml"
    raw = minimal(ioc={"state_dir": "../state"}, dm={"storage_root": "store/2BM"})
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    settings = load_config(os.path.relpath(config, tmp_path))
    assert settings.source == config
    assert settings.scheduling.path == folder / "schedule.yaml"
    assert settings.ioc.state_dir == tmp_path / "etc" / "state"
    assert settings.dm.storage_root == folder / "store" / "2BM"


def test_tilde_expands(base, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (home / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    settings = settings_from_dict(minimal(scheduling={"path": "~/schedule.yaml"}, ioc={"state_dir": "~/st"}), base=base)
    assert settings.scheduling.path == home / "schedule.yaml"
    assert settings.ioc.state_dir == home / "st"


def test_absolute_paths_stay(base):
    settings = settings_from_dict(minimal(dm={"data_top_dir": "/data3/2BM"}), base=base)
    assert settings.dm.data_top_dir == Path("/data3/2BM")


# --------------------------------------------------------------------------- load_config


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(error.value)


def test_load_config_bad_yaml(tmp_path):
    config = tmp_path / "ioc.yaml"
    config.write_text("beamline: {name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert len(error.value.problems) == 1
    assert "not valid YAML" in error.value.problems[0]


def test_load_config_lists_every_problem(base):
    config = base / "ioc.yaml"
    config.write_text("ioc: {prefix: '', colour: red}\nbeamline: {timezone: Nowhere/Land}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    keys = {problem.split(":")[0] for problem in error.value.problems}
    assert {"ioc.prefix", "ioc.colour", "beamline.timezone", "beamline.name"} <= keys


def test_load_config_empty_file_names_the_missing_keys(base):
    config = base / "ioc.yaml"
    config.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_config(config)
    keys = {problem.split(":")[0] for problem in error.value.problems}
    assert {"beamline.name", "scheduling.path"} <= keys


# --------------------------------------------------------------------------- secrets and credentials


def aps(credentials: str) -> dict:
    return minimal(scheduling={"backend": "aps", "url": "https://scheduling.example.org", "credentials": credentials})


def test_aps_backend_with_a_private_credentials_file(base):
    secret(base / "creds", "user|password\n")
    settings = settings_from_dict(aps("creds"), base=base)
    assert settings.scheduling.credentials == base / "creds"


def test_credentials_readable_by_others_is_refused_with_the_chmod_hint(base):
    creds = secret(base / "creds", "user|password\n", 0o644)
    problem = one_problem(aps("creds"), base, "scheduling.credentials")
    assert "group or others" in problem
    assert "0644" in problem
    assert f"chmod 600 {creds}" in problem


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_credentials_readable_by_group_or_others_are_refused(base, mode):
    secret(base / "creds", "user|password\n", mode)
    one_problem(aps("creds"), base, "scheduling.credentials")


def test_missing_credentials_file(base):
    assert str(base / "nope") in one_problem(aps("nope"), base, "scheduling.credentials")


def test_aps_backend_needs_credentials(base):
    raw = minimal(scheduling={"backend": "aps", "url": "https://scheduling.example.org"})
    one_problem(raw, base, "scheduling.credentials")


def test_globus_secret_file_mode_checked(base):
    secret(base / "secret", "s3cr3t\n", 0o644)
    raw = minimal(globus={"enabled": True, "collection_id": "c", "client_id": "i", "client_secret_file": "secret"})
    assert "chmod 600" in one_problem(raw, base, "globus.client_secret_file")


def test_email_credentials_optional_but_checked(base):
    raw = minimal(email={"enabled": True, "sender": "dm@example.org"})
    assert settings_from_dict(raw, base=base).email.credentials is None
    secret(base / "smtp", "u|p\n", 0o644)
    one_problem(minimal(email={"enabled": True, "sender": "dm@example.org", "credentials": "smtp"}), base,
                "email.credentials")  # fmt: skip


@pytest.mark.parametrize(
    "line, expected",
    [
        ("user|password", ("user", "password")),
        ("user password", ("user", "password")),
        ("  user | pass word  ", ("user", "pass word")),
        ("user|pa|ss", ("user", "pa|ss")),
        ("user|p@ss w0rd!", ("user", "p@ss w0rd!")),
    ],
)
def test_read_credentials(tmp_path, line, expected):
    path = secret(tmp_path / "creds", line + "\nignored second line\n")
    assert read_credentials("scheduling.credentials", path) == expected


@pytest.mark.parametrize("text", ["user", "user|", "|password", "   \n", "", "user |  \n"])
def test_read_credentials_bad_lines(tmp_path, text):
    path = secret(tmp_path / "creds", text)
    with pytest.raises(InputError) as error:
        read_credentials("scheduling.credentials", path)
    assert str(error.value).startswith("scheduling.credentials:")
    assert "password" not in str(error.value).replace("'user|password'", "").replace("'user password'", "")


def test_read_credentials_refuses_an_open_file(tmp_path):
    path = secret(tmp_path / "creds", "user|password\n", 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        read_credentials("scheduling.credentials", path)


def test_read_secret_first_line(tmp_path):
    path = secret(tmp_path / "secret", "  s3cr3t  \nother\n")
    assert read_secret("globus.client_secret_file", path) == "s3cr3t"
