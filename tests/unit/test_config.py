"""Config: every problem names its key, all are listed at once, paths resolve, secrets are private."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from dmagic_ioc.ioc.domain.errors import InputError
from dmagic_ioc.ioc.secrets import is_loopback, read_credentials, read_secret
from dmagic_ioc.ioc.settings.load import ConfigError, load_config, settings_from_dict
from dmagic_ioc.ioc.settings.preflight import environment_problems
from dmagic_ioc.ioc.settings.schema import Settings

CHICAGO = ZoneInfo("America/Chicago")


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


def test_layout_and_subdirs_default_to_the_year_month_tree(base):
    dm = settings_from_dict(minimal(), base=base).dm
    assert dm.layout == "{storage_root}/{year_month}/{experiment}"
    assert dm.subdirs == ("data", "analysis")


@pytest.mark.parametrize(
    "layout, subdirs",
    [
        ("{storage_root}/{year}/{gup}", ["raw", "processed", "shared", "logs"]),  # ESS
        ("{storage_root}/{year}/{gup}", None),  # MAX IV
        ("{storage_root}/{run}/pass-{gup}", None),  # NSLS-II
        ("{storage_root}/{beamline}/{year}/{pi_last_name}-{experiment}", None),
    ],
)
def test_facility_layouts_are_accepted(base, layout, subdirs):
    dm_section = {"layout": layout} if subdirs is None else {"layout": layout, "subdirs": subdirs}
    dm = settings_from_dict(minimal(dm=dm_section), base=base).dm
    assert dm.layout == layout
    assert dm.subdirs == tuple(subdirs or ("data", "analysis"))


@pytest.mark.parametrize(
    "layout, words",
    [
        ("{storage_root}/{year}/{proposal}", "unknown placeholder(s) {proposal}"),
        ("{storage_root}/{}/{gup}", "unknown placeholder(s) {}"),
        ("{storage_root}/{gup.real}", "unknown placeholder(s) {gup.real}"),
        ("{storage_root}/{year}/{gup", "dm.layout"),
        ("/gdata/{year}/{gup}", "must start with {storage_root}/"),
        ("{year}/{storage_root}/{gup}", "must start with {storage_root}/"),
        ("{storage_root}{gup}", "must start with {storage_root}/"),
        ("{storage_root}/{storage_root}/{gup}", "name it once"),
        ("{storage_root}/../{gup}", "'..'"),
        ("{storage_root}/{year}/..{gup}", "'..'"),
        ("{storage_root}/{year}", "{experiment} or {gup}"),
        ("{storage_root}//{gup}", "empty folder name"),
        ("{storage_root}/{gup}/", "empty folder name"),
        ("{storage_root}/.hidden/{gup}", "escape"),
        ("{storage_root}/{gup:05}", "no format spec"),
        ("{storage_root}/{gup!r}", "no format spec"),
    ],
)
def test_a_bad_layout_is_named_and_refused(base, layout, words):
    assert words in one_problem(minimal(dm={"layout": layout}), base, "dm.layout")


@pytest.mark.parametrize(
    "subdirs, words",
    [
        (["raw"], "at least two"),
        ([], "at least two"),
        (["raw", "../x"], "escape"),
        (["raw", ".hidden"], "escape"),
        (["raw", "a/b"], "escape"),
        (["raw", "raw"], "twice"),
        ("raw", "list"),
    ],
)
def test_bad_subdirs_are_named_and_refused(base, subdirs, words):
    assert words in one_problem(minimal(dm={"subdirs": subdirs}), base, "dm.subdirs")


def test_layout_and_subdirs_belong_to_the_local_backend(base):
    raw = minimal(dm={"backend": "aps", "layout": "{storage_root}/{year}/{gup}", "subdirs": ["raw", "proc"]})
    problems = problems_of(raw, base)
    assert any(p.startswith("dm.layout: used by the local backend only") for p in problems), problems
    assert any(p.startswith("dm.subdirs: used by the local backend only") for p in problems), problems


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


# --------------------------------------------------------------------------- credentials never in clear


def aps_at(base: Path, url: str, **scheduling) -> dict:
    secret(base / "creds", "user|password\n")
    return minimal(scheduling={"backend": "aps", "url": url, "credentials": "creds", **scheduling})


@pytest.mark.parametrize(
    "url",
    ["http://scheduling.example.org", "http://10.0.0.5:8080/x", "http://[2001:db8::1]", "http://127.0.0.1.nip.io"],
)
def test_basic_auth_over_plain_http_is_refused(base, url):
    problem = one_problem(aps_at(base, url), base, "scheduling.url")
    assert "in clear" in problem and "https://" in problem and "scheduling.allow_insecure" in problem


@pytest.mark.parametrize(
    "url",
    ["https://scheduling.example.org", "http://localhost:8080", "http://127.0.0.1", "http://127.3.4.5:81",
     "http://[::1]:8080", "http://LOCALHOST."],
)  # fmt: skip
def test_https_and_loopback_are_allowed(base, url):
    assert settings_from_dict(aps_at(base, url), base=base).scheduling.url == url


def test_allow_insecure_lets_plain_http_through(base):
    settings = settings_from_dict(aps_at(base, "http://sched.lan", allow_insecure=True), base=base)
    assert settings.scheduling.allow_insecure is True
    assert settings_from_dict(minimal(), base=base).scheduling.allow_insecure is False


def test_a_password_in_the_url_is_refused_and_never_repeated(base):
    problem = one_problem(aps_at(base, "https://beamline:hunter2@sched.example.org"), base, "scheduling.url")
    assert "scheduling.credentials" in problem and "hunter2" not in problem


def email(base: Path, **values) -> dict:
    secret(base / "smtp", "beamline|s3cr3t\n")
    return minimal(email={"enabled": True, "sender": "dm@example.org", "credentials": "smtp", **values})


def test_smtp_auth_without_starttls_is_refused(base):
    problem = one_problem(email(base, smtp_host="smtp.example.org"), base, "email.starttls")
    assert "in clear" in problem and "email.allow_insecure" in problem and "smtp.example.org" in problem


@pytest.mark.parametrize(
    "values",
    [
        {"smtp_host": "smtp.example.org", "starttls": True},
        {"smtp_host": "smtp.example.org", "allow_insecure": True},
        {"smtp_host": "localhost"},
        {"smtp_host": "127.0.0.1"},
        {"smtp_host": "::1"},
    ],
)
def test_smtp_auth_over_tls_loopback_or_allowed_is_fine(base, values):
    settings_from_dict(email(base, **values), base=base)


def test_smtp_without_credentials_needs_no_tls(base):
    raw = minimal(email={"enabled": True, "sender": "dm@example.org", "smtp_host": "smtp.example.org"})
    assert settings_from_dict(raw, base=base).email.credentials is None


@pytest.mark.parametrize(
    "host, loopback",
    [("localhost", True), ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("[::1]", True),
     ("::ffff:127.0.0.1", True), ("localhost.example.org", False), ("128.0.0.1", False), ("10.0.0.1", False),
     ("0.0.0.0", False), ("", False), ("my.localhost", False)],
)  # fmt: skip
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_adapters_refuse_clear_credentials_on_their_own(tmp_path):
    """Even when built without the config's checks, the adapters never log in over a plain connection."""
    from dmagic_ioc.adapters.aps_scheduling import ApsScheduling
    from dmagic_ioc.adapters.email import SmtpMailer
    from dmagic_ioc.ioc.domain.errors import EmailError, SchedulingError

    creds = secret(tmp_path / "creds", "user|password\n")
    with pytest.raises(SchedulingError, match="in clear"):
        ApsScheduling("http://sched.example.org", "2-BM-A,B", creds, 1.0, CHICAGO)
    ApsScheduling("http://sched.example.org", "2-BM-A,B", creds, 1.0, CHICAGO, allow_insecure=True)
    ApsScheduling("http://127.0.0.1:9", "2-BM-A,B", creds, 1.0, CHICAGO)
    with pytest.raises(EmailError, match="in clear"):
        SmtpMailer("smtp.example.org", 25, credentials=creds)
    SmtpMailer("smtp.example.org", 25, credentials=creds, starttls=True)
    SmtpMailer("smtp.example.org", 25, credentials=creds, allow_insecure=True)
    SmtpMailer("smtp.example.org", 25)  # no login, nothing to protect


def test_an_smtp_reply_never_carries_the_password_into_status(tmp_path, monkeypatch):
    """A server that echoes what it was sent (AUTH PLAIN, AUTH LOGIN) in its refusal."""
    import base64
    import smtplib

    from dmagic_ioc.adapters import email as email_module
    from dmagic_ioc.ioc.domain.errors import EmailError

    plain = base64.b64encode(b"\0beamline\0s3cr3t").decode()
    login = base64.b64encode(b"s3cr3t").decode()

    class EchoingSMTP:
        def __init__(self, *args, **kwargs):
            pass

        def ehlo(self):
            pass

        def quit(self):
            pass

        def login(self, user, password):
            raise smtplib.SMTPAuthenticationError(535, f"bad: {plain} / {login} / {password}".encode())

    monkeypatch.setattr(email_module.smtplib, "SMTP", EchoingSMTP)
    creds = secret(tmp_path / "smtp", "beamline|s3cr3t\n")
    mailer = email_module.SmtpMailer("127.0.0.1", 25, credentials=creds)
    with pytest.raises(EmailError) as error:
        mailer.send([("d1", "a@b.org")], {})
    said = str(error.value)
    assert "beamline" in said and "535" in said
    assert "s3cr3t" not in said and plain not in said and login not in said


@pytest.mark.parametrize("key", ["credentials", "client_secret_file"])
def test_a_value_under_a_secret_key_is_never_quoted(base, key):
    section = "scheduling" if key == "credentials" else "globus"
    problems = problems_of(minimal(**{section: {key: {"user": "beamline", "password": "hunter2"}}}), base)
    assert not any("hunter2" in problem for problem in problems), problems
    assert any(problem.startswith(f"{section}.{key}:") for problem in problems)


# --------------------------------------------------------------------------- what --check finds on this machine


@pytest.fixture
def folders(base) -> Path:
    for name in ("state", "data", "storage"):
        (base / name).mkdir()
    return base


def local(**dm) -> dict:
    return minimal(ioc={"state_dir": "state"}, dm={"data_top_dir": "data", "storage_root": "storage", **dm})


def environment_of(raw: dict, base: Path, **kwargs) -> list[str]:
    return environment_problems(settings_from_dict(raw, base=base), **kwargs)


def test_a_ready_machine_has_no_problems(folders):
    assert environment_of(local(), folders) == []


def test_missing_folders_are_all_listed(folders):
    raw = local(storage_root="gone/storage", data_top_dir="gone/data")
    problems = environment_of(raw, folders)
    assert [p.split(":")[0] for p in problems] == ["dm.storage_root", "dm.data_top_dir"], problems
    assert all("does not exist" in p and "mounted" in p for p in problems)
    assert str(folders / "gone" / "storage") in problems[0]


def test_a_file_where_a_folder_belongs(folders):
    (folders / "afile").write_text("x")
    (problem,) = environment_of(local(storage_root="afile"), folders)
    assert problem.startswith("dm.storage_root:") and "not a folder" in problem


def test_unwritable_folders_are_named(folders, monkeypatch):
    """Root writes everywhere: the permission answer is stubbed, as a service user would get it."""
    import dmagic_ioc.ioc.settings.preflight as preflight_module

    locked = {folders / "storage", folders / "state"}
    real_access = os.access
    monkeypatch.setattr(
        preflight_module.os, "access",
        lambda path, mode: real_access(path, mode) and not (Path(path) in locked and mode & os.W_OK),
    )  # fmt: skip
    problems = environment_of(local(), folders)
    assert {p.split(":")[0] for p in problems} == {"dm.storage_root", "ioc.state_dir"}, problems
    assert all("not writable by user" in p for p in problems)


def test_data_top_dir_must_be_writable_only_where_the_detectors_write(folders, monkeypatch):
    import dmagic_ioc.ioc.settings.preflight as preflight_module

    real_access = os.access
    monkeypatch.setattr(
        preflight_module.os, "access",
        lambda path, mode: real_access(path, mode) and not (Path(path) == folders / "data" and mode & os.W_OK),
    )  # fmt: skip
    assert [p.split(":")[0] for p in environment_of(local(), folders)] == ["dm.data_top_dir"]
    assert environment_of(local(), folders, data_is_local=False) == []  # read-only mount of a remote host's data


def test_a_missing_state_dir_is_fine_when_it_can_be_made(folders, monkeypatch):
    raw = minimal(ioc={"state_dir": "new/deeper/state"}, dm={"data_top_dir": "data", "storage_root": "storage"})
    assert environment_of(raw, folders) == []
    assert not (folders / "new").exists()  # checking made nothing

    import dmagic_ioc.ioc.settings.preflight as preflight_module

    real_access = os.access
    monkeypatch.setattr(
        preflight_module.os, "access",
        lambda path, mode: real_access(path, mode) and not (Path(path) == folders and mode & os.W_OK),
    )  # fmt: skip
    (problem,) = environment_of(raw, folders)
    assert problem.startswith("ioc.state_dir:") and "cannot be made" in problem and str(folders) in problem


def test_a_state_file_that_cannot_be_written_is_named(folders, monkeypatch):
    import dmagic_ioc.ioc.settings.preflight as preflight_module

    registry = folders / "state" / "registry.sqlite"
    registry.write_bytes(b"")
    real_access = os.access
    monkeypatch.setattr(
        preflight_module.os, "access", lambda path, mode: real_access(path, mode) and Path(path) != registry
    )
    (problem,) = environment_of(local(), folders)
    assert problem.startswith("ioc.state_dir:") and "registry.sqlite" in problem


def test_an_unknown_group_is_named(folders):
    (problem,) = environment_of(local(group="no-such-group-dmagic"), folders)
    assert problem.startswith("dm.group:") and "does not exist" in problem


def test_a_group_the_user_is_not_in(folders, monkeypatch):
    import grp

    import dmagic_ioc.ioc.settings.preflight as preflight_module

    other = next((g for g in grp.getgrall() if g.gr_gid not in os.getgroups() and g.gr_gid != os.getegid()), None)
    if other is None:
        pytest.skip("no group this user is outside of")
    monkeypatch.setattr(preflight_module.os, "geteuid", lambda: 4242)  # not root
    (problem,) = environment_of(local(group=other.gr_name), folders)
    assert problem.startswith("dm.group:") and "not a member" in problem


def test_aps_dm_does_not_need_local_folders(base):
    raw = minimal(dm={"backend": "aps", "storage_root": "/nowhere", "data_top_dir": "/nowhere"})
    assert [p for p in environment_of(raw, base) if p.startswith("dm.")] == []


@pytest.mark.parametrize(
    "section, key, text, words",
    [
        ("scheduling", "credentials", "only-a-user\n", "one line 'user|password'"),
        ("email", "credentials", "\n", "empty"),
        ("globus", "client_secret_file", "", "empty"),
        ("scheduling", "credentials", b"\xff\xfe\n", "not UTF-8"),
    ],
)
def test_credentials_that_cannot_be_used_are_named(folders, section, key, text, words):
    path = folders / "secret"
    if isinstance(text, bytes):
        path.write_bytes(text)
        path.chmod(0o600)
    else:
        secret(path, text)
    values = {
        "scheduling": {"backend": "aps", "url": "https://sched.example.org", "credentials": "secret"},
        "email": {"enabled": True, "sender": "a@b.org", "credentials": "secret", "starttls": True},
        "globus": {"enabled": True, "collection_id": "c", "client_id": "i", "client_secret_file": "secret"},
    }[section]
    raw = {**local(), section: {**local().get(section, {}), **values}}
    (problem,) = environment_of(raw, folders)
    assert problem.startswith(f"{section}.{key}:") and words in problem, problem


def test_config_problems_carry_what_could_be_built(base):
    with pytest.raises(ConfigError) as error:
        settings_from_dict(minimal(dm={"storage_root": "/x/storage", "settle_time": -1}), base=base)
    assert error.value.settings is not None
    assert error.value.settings.dm.storage_root == Path("/x/storage")


# --------------------------------------------------------------------------- dm.posix.group


@pytest.mark.parametrize("group", ["p{gup}", "bl-{beamline}", "e{experiment}", "staff_2bm", "g{year}.{gup}"])
def test_posix_group_takes_a_template_or_a_fixed_name(base, group):
    assert settings_from_dict(minimal(dm={"posix": {"group": group}}), base=base).dm.posix.group == group


def test_posix_group_defaults_to_none(base):
    assert settings_from_dict(minimal(), base=base).dm.posix.group is None


@pytest.mark.parametrize(
    "group, words",
    [
        ("p{proposal}", "unknown placeholder(s) {proposal}"),
        ("p{run}", "unknown placeholder(s) {run}"),
        ("p{gup", "dm.posix.group"),
        ("{gup}", "does not make a unix group name"),
        ("p {gup}", "does not make a unix group name"),
        ("p/{gup}", "does not make a unix group name"),
        ("p{gup:05}", "no format spec"),
    ],
)
def test_a_bad_posix_group_is_named_and_refused(base, group, words):
    assert words in one_problem(minimal(dm={"posix": {"group": group}}), base, "dm.posix.group")


def test_posix_group_and_dm_group_are_one_setting(base):
    problem = one_problem(minimal(dm={"group": "staff", "posix": {"group": "p{gup}"}}), base, "dm.posix.group")
    assert "set one" in problem


def test_posix_has_no_unknown_keys(base):
    assert "dm.posix.owner: unknown key" in one_problem(minimal(dm={"posix": {"owner": "x"}}), base, "dm.posix.owner")


def test_a_missing_fixed_posix_group_is_named_by_check_and_a_template_is_not(folders):
    (problem,) = environment_of(local(posix={"group": "no-such-group-dmagic"}), folders)
    assert problem.startswith("dm.posix.group:") and "'no-such-group-dmagic' does not exist" in problem
    assert environment_of(local(posix={"group": "nosuchgroup{gup}"}), folders) == []  # one per proposal: at Create


# --------------------------------------------------------------------------- dm.posix.user_account, staff_groups


def test_user_account_and_staff_groups(base):
    posix = settings_from_dict(
        minimal(dm={"posix": {"user_account": "d{badge}", "staff_groups": ["staff2bm", "dmsvc"]}}), base=base
    ).dm.posix
    assert (posix.user_account, posix.staff_groups) == ("d{badge}", ("staff2bm", "dmsvc"))


@pytest.mark.parametrize(
    "posix, key, words",
    [
        ({"user_account": "d{gup}"}, "dm.posix.user_account", "unknown placeholder(s) {gup}"),
        ({"user_account": "dmuser"}, "dm.posix.user_account", "must hold {badge}"),
        ({"user_account": "{badge}"}, "dm.posix.user_account", "does not make a unix user name"),
        ({"user_account": "d {badge}"}, "dm.posix.user_account", "does not make a unix user name"),
        ({"staff_groups": ["staff", "no good"]}, "dm.posix.staff_groups", "'no good' is not a unix group name"),
    ],
)
def test_bad_accounts_and_staff_groups_are_named(base, posix, key, words):
    assert words in one_problem(minimal(dm={"posix": posix}), base, key)


def test_check_names_a_filesystem_without_acls(folders, monkeypatch):
    import dmagic_ioc.ioc.settings.preflight as preflight_module

    raw = local(posix={"user_account": "d{badge}"})
    if preflight_module.acl_support_problem(folders / "storage") == "":
        assert environment_of(raw, folders) == []  # this host: a filesystem with ACLs (no setfacl needed)
    assert [p.name for p in (folders / "storage").iterdir()] == []  # the probe's file is gone

    def no_acls(target, name, value, *args, **kwargs):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(preflight_module.os, "setxattr", no_acls)
    (problem,) = environment_of(raw, folders)
    assert problem.startswith("dm.posix:") and "no POSIX ACL support" in problem and str(folders / "storage") in problem
    (problem,) = environment_of(local(posix={"staff_groups": ["root"]}), folders)
    assert problem.startswith("dm.posix:") and "no POSIX ACL support" in problem
    assert [p.name for p in (folders / "storage").iterdir()] == []


def test_check_names_a_staff_group_that_does_not_exist(folders):
    problems = environment_of(local(posix={"staff_groups": ["no-such-group-dmagic"]}), folders)
    assert any(p.startswith("dm.posix.staff_groups:") and "does not exist" in p for p in problems), problems
