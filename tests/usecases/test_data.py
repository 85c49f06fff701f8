"""E-mail and the data transfer: who is sent what, what is remembered, which system each call contacts."""

from __future__ import annotations

from dataclasses import replace

import pytest
from dmagic_ioc.ioc.app.messages import CreateManual, DaqStart, DaqStop, Email, ResumeTransfer, Select, Upload
from dmagic_ioc.ioc.app.queries import Queries
from dmagic_ioc.ioc.app.state import ManualRequest, Outcome
from dmagic_ioc.ioc.domain.errors import DMError, EmailError, InputError
from dmagic_ioc.ioc.domain.experiment import Experiment
from dmagic_ioc.ioc.domain.ports import TransferProgress, TransferState

from ..fakes.ports import EXPERIMENT, TITLE
from .conftest import Beamline

ADDRESSES = [("d310001", "mei@example.edu"), ("d310002", "bo@example.org"), ("d310009", "eva@example.org")]
EMAILED = Outcome(f"e-mailed 3 users of {EXPERIMENT}; no address: d100001", warning=True)  # the contact has none


def with_dm(beamline: Beamline, **dm) -> Beamline:
    """`beamline` with these `dm` settings (the backend, the transfer) changed."""
    beamline.services.settings = replace(beamline.settings, dm=replace(beamline.settings.dm, **dm))
    return beamline


# --------------------------------------------------------------------------- e-mail


def test_email_sends_each_user_with_an_address_the_experiments_values_and_remembers_them(created, fakes, tmp_path):
    assert created.run(Email(everyone=False)) == EMAILED
    assert fakes.mailer.sent == [(ADDRESSES, {
        "experiment": EXPERIMENT,
        "title": TITLE,
        "pi": "Mei Müller-Łukasiewicz",
        "beamline": "2-BM-A,B",
        "globus_url": f"https://app.globus.org/file-manager?path=/{EXPERIMENT}/",
        "storage_directory": str(tmp_path / "storage" / "2026-10" / EXPERIMENT),
    })]  # fmt: skip
    assert fakes.state.emailed(EXPERIMENT) == ["d310001", "d310002", "d310009"]
    assert created.state.emailed == ("d310001", "d310002", "d310009")
    assert created.contacts()[0] == ("Email", True)


def test_email_again_sends_nothing_and_everyone_sends_to_all_again(created, fakes):
    created.run(Email(everyone=False))
    created.contacts()
    assert created.run(Email(everyone=False)) == Outcome(
        "e-mail: nothing sent, everyone with an address was already e-mailed; no address: d100001"
    )
    assert len(fakes.mailer.sent) == 1
    assert created.contacts() == []  # the mail server was not contacted

    assert created.run(Email(everyone=True)) == EMAILED
    assert [recipients for recipients, _ in fakes.mailer.sent] == [ADDRESSES, ADDRESSES]


def test_email_with_nobody_having_an_address_sends_nothing(beamline, fakes):
    beamline.run(CreateManual(ManualRequest()))
    assert beamline.run(Email(everyone=False)) == Outcome(
        "e-mail: nothing sent, nobody has an e-mail address; no address: d100001"
    )
    assert fakes.mailer.sent == []


def test_email_refused_for_some_is_a_warning_and_a_rerun_sends_only_to_them(created, fakes):
    fakes.mailer.refused = {"d310002": "550 mailbox unavailable"}
    assert created.run(Email(everyone=False)) == Outcome(
        f"e-mailed 2 users of {EXPERIMENT}; no address: d100001; failed: d310002 (550 mailbox unavailable)",
        warning=True,
    )
    assert fakes.state.emailed(EXPERIMENT) == ["d310001", "d310009"]

    fakes.mailer.refused = {}
    assert created.run(Email(everyone=False)) == Outcome(f"e-mailed 1 user of {EXPERIMENT}; no address: d100001",
                                                    warning=True)  # fmt: skip
    assert fakes.mailer.sent[-1][0] == [("d310002", "bo@example.org")]
    assert sorted(fakes.state.emailed(EXPERIMENT)) == ["d310001", "d310002", "d310009"]


def test_email_refused_for_everyone_fails_and_marks_nobody(created, fakes):
    fakes.mailer.refused = {username: "550 mailbox unavailable" for username, _ in ADDRESSES}
    with pytest.raises(EmailError) as failed:
        created.run(Email(everyone=False))
    assert str(failed.value) == (
        f"e-mailed 0 users of {EXPERIMENT}; no address: d100001; failed: d310001 (550 mailbox unavailable), "
        "d310002 (550 mailbox unavailable), d310009 (550 mailbox unavailable)"
    )
    assert fakes.state.emailed_users == {}


def test_email_with_the_mail_server_down_fails_and_a_rerun_sends(created, fakes):
    fakes.mailer.fail = EmailError("SMTP server localhost:25 refused the connection")
    with pytest.raises(EmailError, match="refused the connection"):
        created.run(Email(everyone=False))
    assert fakes.state.emailed_users == {}
    assert created.contacts() == [("Email", False)]

    assert created.run(Email(everyone=False)) == EMAILED


# --------------------------------------------------------------------------- transfer


def test_daq_start_upload_and_stop_move_the_raw_and_rec_folders_into_storage(created, fakes, tmp_path):
    raw, storage = str(tmp_path / "data" / EXPERIMENT), tmp_path / "storage" / "2026-10" / EXPERIMENT
    sources = {raw: str(storage / "data"), f"{raw}_rec": str(storage / "analysis")}
    assert created.run(DaqStart()) == Outcome(f"transfer of {EXPERIMENT} started")
    with pytest.raises(InputError, match="a transfer of .* is running; stop it"):  # as the built-in engine
        created.run(Upload())
    dataset = f"dataset {EXPERIMENT}-1.json: 0 files, 0 bytes"  # the fake transfer sent nothing
    assert created.run(DaqStop()) == Outcome(f"transfer stopped; {dataset}")
    assert Queries(created.services).transfer_progress() == TransferProgress(state=TransferState.STOPPED)
    assert created.run(Upload()) == Outcome(f"transfer of {EXPERIMENT} started")
    assert fakes.transfer.starts == [(EXPERIMENT, sources, False), (EXPERIMENT, sources, True)]  # upload: once
    assert created.contacts() == []  # the built-in engine is no outside system


def test_an_experiment_dm_has_without_a_data_directory_is_transferred_from_data_top_dir(created, fakes, tmp_path):
    name = "2026-10-Ngo-1012040"
    fakes.dm.experiments[name] = Experiment(name, storage_directory="/gdata/dm/2BM/2026-10/" + name)  # as APS DM has it
    created.run(Select(name))
    created.run(DaqStart())
    raw = str(tmp_path / "data" / name)
    assert fakes.transfer.starts[-1][1] == {raw: f"/gdata/dm/2BM/2026-10/{name}/data",
                                            f"{raw}_rec": f"/gdata/dm/2BM/2026-10/{name}/analysis"}  # fmt: skip


@pytest.mark.parametrize(
    ("dm", "system"),
    [
        ({}, None),
        ({"backend": "aps"}, "DM"),
        ({"transfer": "globus"}, "Globus"),
        ({"backend": "aps", "transfer": "globus"}, "Globus"),
    ],
)
def test_each_transfer_call_is_a_contact_of_the_system_doing_the_transfer(created, dm, system):
    with_dm(created, **dm)
    created.run(DaqStart())
    Queries(created.services).transfer_progress()
    created.run(DaqStop())
    created.run(ResumeTransfer())
    assert created.contacts() == ([(system, True)] * 5 if system else [])  # DaqStop reads the files sent, too


def test_an_unreadable_progress_is_the_last_one_in_error_saying_why_and_the_next_read_recovers(created, fakes):
    with_dm(created, backend="aps")
    queries = Queries(created.services)
    running = TransferProgress(state=TransferState.RUNNING, files_done=3, files_total=10, last_file="c.h5")
    fakes.transfer.state = running
    assert queries.transfer_progress() == running

    def unreachable():
        raise DMError("DM service did not answer within 10 s")

    fakes.transfer.progress = unreachable
    assert queries.transfer_progress() == replace(
        running, state=TransferState.ERROR, message="transfer status not read: DM service did not answer within 10 s"
    )
    assert created.contacts() == [("DM", True), ("DM", False)]

    del fakes.transfer.progress  # the class's method again
    assert queries.transfer_progress() == running


def test_resume_says_what_it_resumed_or_nothing(created, fakes):
    assert created.run(ResumeTransfer()) == Outcome("")
    fakes.transfer.resume = lambda: f"transfer of {EXPERIMENT} resumed"
    assert created.run(ResumeTransfer()) == Outcome(f"transfer of {EXPERIMENT} resumed")
