"""`dmagic-ioc --check`, `--print-pvs`, `--version` through the installed command.

`--check` lists, before the first command, everything Create and the transfer would trip on, all at
once; credentials that would travel in clear are refused there and at start; without `--config` it
writes nothing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from .harness import DMAGIC_IOC

pytestmark = pytest.mark.e2e

PASSWORD = "pw-Zq81!never-shown"


def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DMAGIC_IOC, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=cwd
    )


def write(config: dict, tmp_path: Path) -> Path:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def private(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return str(path)


def problems(result: subprocess.CompletedProcess) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]


def test_a_ready_config_passes(config, tmp_path):
    result = run("--config", str(write(config, tmp_path)), "--check")
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def test_missing_storage_and_data_folders_are_both_named_at_once(config, tmp_path):
    """The copied-demo case: before, --check said "valid" and Create failed on one, then on the other."""
    config["dm"]["storage_root"] = str(tmp_path / "unmounted" / "storage")
    config["dm"]["data_top_dir"] = str(tmp_path / "unmounted" / "data")
    result = run("--config", str(write(config, tmp_path)), "--check")
    assert result.returncode != 0
    assert "the config has 2 problems:" in result.stderr
    found = problems(result)
    assert [p.split(":")[0] for p in found] == ["dm.storage_root", "dm.data_top_dir"], found
    assert all("does not exist" in p for p in found)
    assert not (tmp_path / "unmounted").exists()  # checking creates nothing


def test_one_problem_is_one_problem(config, tmp_path):
    config["dm"]["group"] = "no-such-group-dmagic"
    result = run("--config", str(write(config, tmp_path)), "--check")
    assert result.returncode != 0
    assert "the config has 1 problem:" in result.stderr and "problem(s)" not in result.stderr
    assert problems(result) == [
        "dm.group: unix group 'no-such-group-dmagic' does not exist on this host; create it or set dm.group: null"
    ]


def test_everything_is_listed_together(config, tmp_path):
    """Config errors, folders, group, credentials, template, schedule and clear-text logins in one run."""
    creds = private(tmp_path / "smtp_credentials", f"beamline|{PASSWORD}\n", 0o644)
    (tmp_path / "bad_template.txt").write_text("no subject line {nope}\n", encoding="utf-8")
    (tmp_path / "schedule.yaml").write_text("beamtimes: [{gup: 1}]\n", encoding="utf-8")
    config["ioc"]["colour"] = "red"
    config["dm"]["storage_root"] = str(tmp_path / "nowhere")
    config["dm"]["group"] = "no-such-group-dmagic"
    config["scheduling"]["path"] = str(tmp_path / "schedule.yaml")
    config["email"] = {"enabled": True, "sender": "dm@example.org", "smtp_host": "smtp.example.org",
                       "credentials": creds, "template": str(tmp_path / "bad_template.txt")}  # fmt: skip
    result = run("--config", str(write(config, tmp_path)), "--check")
    assert result.returncode != 0
    keys = [p.split(":")[0] for p in problems(result)]
    assert set(keys) == {
        "ioc.colour", "email.credentials", "email.starttls", "dm.storage_root", "dm.group", "scheduling.path",
        "email.template",
    }, result.stderr  # fmt: skip
    assert f"the config has {len(keys)} problems:" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_credentials_for_plain_http_are_refused_at_check_and_at_start(config, tmp_path):
    creds = private(tmp_path / "scheduling_credentials", f"beamline|{PASSWORD}\n")
    config["scheduling"] = {"backend": "aps", "url": "http://scheduling.example.org", "credentials": creds,
                            "refresh_period": 0}  # fmt: skip
    path = write(config, tmp_path)
    checked = run("--config", str(path), "--check")
    assert checked.returncode != 0
    (problem,) = problems(checked)
    assert problem.startswith("scheduling.url:") and "in clear" in problem
    started = run("--config", str(path), "--prefix", "never:")  # refused before serving anything
    assert started.returncode != 0 and "scheduling.url:" in started.stderr
    config["scheduling"]["allow_insecure"] = True
    assert run("--config", str(write(config, tmp_path)), "--check").returncode == 0
    config["scheduling"].update(url="http://127.0.0.1:9", allow_insecure=False)  # loopback never leaves the host
    assert run("--config", str(write(config, tmp_path)), "--check").returncode == 0
    for output in (checked, started):
        assert PASSWORD not in output.stdout + output.stderr


def test_smtp_login_without_starttls_is_refused_unless_allowed(config, tmp_path):
    creds = private(tmp_path / "smtp_credentials", f"beamline|{PASSWORD}\n")
    config["email"] = {"enabled": True, "sender": "dm@example.org", "smtp_host": "smtp.example.org",
                       "credentials": creds}  # fmt: skip
    result = run("--config", str(write(config, tmp_path)), "--check")
    assert result.returncode != 0 and [p.split(":")[0] for p in problems(result)] == ["email.starttls"]
    for fix in ({"starttls": True}, {"allow_insecure": True}, {"smtp_host": "localhost"}):
        fixed = {**config, "email": {**config["email"], **fix}}
        assert run("--config", str(write(fixed, tmp_path)), "--check").returncode == 0, fix


def test_check_and_print_pvs_without_config_write_nothing(tmp_path):
    home, demo, cwd, scratch = (tmp_path / name for name in ("home", "demo", "cwd", "scratch"))
    for folder in (home, cwd, scratch):
        folder.mkdir()
    env = {"HOME": str(home), "DMAGIC_DEMO_DIR": str(demo), "TMPDIR": str(scratch)}
    checked = run("--check", env=env, cwd=cwd)
    assert checked.returncode == 0, checked.stderr
    assert "bundled demo config is valid" in checked.stdout
    listed = run("--print-pvs", env=env, cwd=cwd)
    assert listed.returncode == 0 and "demo:DM:Status" in listed.stdout.split()
    assert not demo.exists()
    assert [list(folder.iterdir()) for folder in (home, cwd, scratch)] == [[], [], []]


def test_version_and_prefix_help():
    from importlib.metadata import version

    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dmagic-ioc {version('dmagic-ioc')}"
    helped = run("--help")
    prefix_help = helped.stdout.rsplit("--prefix PREFIX", 1)[1].split("--", 1)[0]  # the option, not the usage
    assert "PV prefix" in prefix_help and "ioc.prefix" in " ".join(prefix_help.split())


def test_print_pvs_takes_the_prefix(config, tmp_path):
    listed = run("--config", str(write(config, tmp_path)), "--print-pvs", "--prefix", "X:").stdout.split()
    assert "X:Status" in listed and all(name.startswith("X:") for name in listed)


def test_an_unreadable_registry_is_named_and_left_as_it_is(config, tmp_path):
    registry = Path(config["ioc"]["state_dir"]) / "registry.sqlite"
    registry.parent.mkdir(parents=True)
    registry.write_bytes(b"not a database" * 100)
    result = run("--config", str(write(config, tmp_path)), "--check")
    assert result.returncode != 0
    (problem,) = problems(result)
    assert problem.startswith("ioc.state_dir:") and "registry.sqlite cannot be read" in problem
    assert registry.read_bytes() == b"not a database" * 100
    assert sorted(p.name for p in registry.parent.iterdir()) == ["registry.sqlite"]  # nothing set aside, no WAL
