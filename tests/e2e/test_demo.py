"""The operator's first day, on the installed `dmagic-ioc`: the demo with e-mail into its outbox and Tag into the
tomoScan stand-in it names, and what `--check` and a start say about a config with a slip in it."""

from __future__ import annotations

import email
import email.policy
import subprocess
import sys
import time
import uuid
from datetime import date

import pytest
import yaml
from dmagic_ioc.ioc.demo import DEMO_TAG_PREFIX, write_demo

from ..helpers import wait_for
from .epics_base import CAReader, IOCProcess
from .harness import DMAGIC_IOC, IOC

pytestmark = pytest.mark.e2e

NO_ALARM, MINOR = 0, 1


class Demo(IOC):
    """`dmagic-ioc` without --config: it writes the demo into `DMAGIC_DEMO_DIR` and starts on it."""

    def __init__(self, tmp_path):
        self.folder = tmp_path / "demo"
        super().__init__({}, tmp_path, extra_env={"DMAGIC_DEMO_DIR": str(self.folder)})
        self.config_path.unlink()  # the demo writes its own

    def start(self) -> Demo:
        self.started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([DMAGIC_IOC, "--prefix", self.prefix], stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env)  # fmt: skip
        self.wait_ready()
        return self


@pytest.fixture
def tomoscan(tmp_path):
    """The stand-in as the README starts it, with its default prefix (the demo's tag.prefix) on the session's
    second CA port: no other IOC answers there."""
    command = [sys.executable, "-m", "dmagic_ioc.ioc.tools.tomoscan_target"]
    with IOCProcess(command, f"{DEMO_TAG_PREFIX}UserName", tmp_path / "tomoscan.log") as target:
        yield target


@pytest.fixture
def reader():
    reader = CAReader()
    yield reader
    reader.close()


def test_the_demo_emails_into_its_outbox_and_tags_the_tomoscan_stand_in(tmp_path, tomoscan, reader):
    with Demo(tmp_path) as demo:
        wait_for(lambda: demo.get("ProposalNumber") == "1013377", what="the demo's current beamtime")
        assert demo.get("TagPrefix") == DEMO_TAG_PREFIX and demo.get("Email:Health") == "OK"
        status, severity = demo.command("Create")
        assert severity == NO_ALARM and status.startswith("created experiment"), status
        experiment = demo.get("ExperimentName")

        status, severity = demo.command("Email")
        assert status.startswith(f"e-mailed 3 users of {experiment}"), status  # the contact has no address: MINOR
        outbox = sorted((demo.folder / "outbox").glob("*.eml"))
        assert len(outbox) == 3 and all(path.stat().st_mode & 0o777 == 0o640 for path in outbox)
        messages = [email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in outbox]
        assert {m["To"] for m in messages} == {"zoe.mueller@example.de", "jl.darcy@example.fr", "sven.oberg@example.se"}
        plain = messages[0].get_body(preferencelist=("plain",)).get_content()
        assert experiment in plain and "globus" not in plain.lower()  # the demo has no Globus: not a word of it
        assert sorted(demo.get("EmailedUsers").split(",")) == ["d310010", "d310011", "d310012"]

        status, severity = demo.command("Tag")
        assert (status, severity) == (f"tagged {DEMO_TAG_PREFIX} with proposal 1013377", NO_ALARM)
        assert reader.text(f"{DEMO_TAG_PREFIX}UserLastName") == "D'Arcy"
        assert reader.text(f"{DEMO_TAG_PREFIX}UserInstitution") == "Laboratoire Exemple"
        assert reader.text(f"{DEMO_TAG_PREFIX}ProposalTitle") == "Fast 4D imaging of foam coarsening"

        # A manual experiment without a GUP, its badges typed with a space: Tag names its person and clears
        # the proposal number and the (empty) institution in the target.
        for name, value in {"Manual:LastName": "Müller-Łukasiewicz", "Manual:FirstName": "Zoë", "Manual:GUP": 0,
                            "Manual:Badges": "310010, 310012"}.items():  # fmt: skip
            demo.put(name, value)
        status, severity = demo.command("CreateManual")
        assert severity == NO_ALARM and "-MullerLukasiewicz-0 with 3 users" in status, status
        assert demo.get("Users:Names") == "Zoë Müller-Łukasiewicz,Sven Øberg"  # the schedule knows 310012
        assert demo.get("ProposalNumber") == ""
        status, severity = demo.command("Tag")
        assert (status, severity) == (f"tagged {DEMO_TAG_PREFIX} with Zoë Müller-Łukasiewicz (no proposal)", NO_ALARM)
        assert reader.text(f"{DEMO_TAG_PREFIX}ProposalNumber") == ""
        assert reader.text(f"{DEMO_TAG_PREFIX}UserInstitution") == ""
        assert reader.text(f"{DEMO_TAG_PREFIX}UserName") == "Zoë"


def demo_config(tmp_path) -> dict:
    """The demo's config, written as the demo writes it, as a dict to spoil."""
    path = write_demo(tmp_path, date.today())
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def check(tmp_path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return subprocess.run([DMAGIC_IOC, "--config", str(path), "--check"], capture_output=True, text=True)


def test_check_names_a_misspelled_timezone_in_one_line(tmp_path):
    config = demo_config(tmp_path)
    config["beamline"]["timezone"] = "America/Chicgo"
    checked = check(tmp_path, config)
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == ["dmagic-ioc: the config has 1 problem:",
                                           "  beamline.timezone: unknown time zone 'America/Chicgo'"]  # fmt: skip
    assert checked.stdout == ""


def test_check_names_an_unknown_key_of_a_schedule_person(tmp_path):
    config = demo_config(tmp_path)
    schedule = tmp_path / "schedule.yaml"
    schedule.write_text(schedule.read_text(encoding="utf-8").replace("first_name: Zoë", "firstname: Zoë"), "utf-8")
    checked = check(tmp_path, config)
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    assert f"scheduling.path: {schedule}: beamtimes[1].people[0].firstname: unknown key of a person" in checked.stderr


def test_a_prefix_without_a_separator_is_a_warning_at_check_and_at_start(tmp_path):
    config = demo_config(tmp_path)
    config["ioc"]["prefix"] = "32id:DM"
    checked = check(tmp_path, config)
    assert checked.returncode == 0, checked.stderr
    assert "ioc.prefix '32id:DM' does not end with a separator: the PVs are 32id:DMStatus" in checked.stderr

    config["scheduling"]["refresh_period"] = 0
    ioc = IOC(config, tmp_path)
    ioc.prefix = f"t{uuid.uuid4().hex[:8]}DM"  # --prefix overrides the config's: it is the one said
    with ioc:
        assert ioc.get("Status").startswith("dmagic-ioc ")  # served as {prefix}Status
    assert f"warning: ioc.prefix '{ioc.prefix}' does not end with a separator" in ioc.log()
