"""E-mail adapter: templates, SmtpMailer against a real SMTP server on 127.0.0.1 (aiosmtpd), OutboxMailer
into a folder."""

from __future__ import annotations

import email
import email.policy
import logging
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from dmagic_ioc.adapters.email import OUTBOX_MODE, OutboxMailer, SmtpMailer
from dmagic_ioc.adapters.email_message import (
    PLACEHOLDERS,
    build_message,
    check_template,
    default_template,
    load_template,
)
from dmagic_ioc.ioc.domain.errors import EmailError, InputError

from ..helpers import free_port

SENDER = "2-BM beamline <tomo@aps.example.org>"
REFUSED = "nobody@example.org"
DROPS = "drops@example.org"  # the server answers 421 and closes the connection on its message
PASSWORD = "pa55-word-never-logged"
VALUES = {
    "experiment": "2026-03-Müller-1234",
    "title": 'Bones & <teeth> "in situ"',
    "pi": "Anna Müller",
    "beamline": "2-BM",
    "globus_url": "https://app.globus.org/file-manager?origin_id=abc&origin_path=%2F2026-03%2F",
    "storage_directory": "/gdata/dm/2BM/2026-03/2026-03-Müller-1234",
}


class Recorder:
    """An SMTP handler that keeps what it receives and refuses one address with 550."""

    def __init__(self):
        self.received: list[tuple[str, list[str], EmailMessage]] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() == REFUSED:
            return "550 5.1.1 <nobody@example.org>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if DROPS in envelope.rcpt_tos:
            return "421 4.3.2 Service shutting down"
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        success = (login, password) == ("beamline", PASSWORD)
        return AuthResult(success=success, handled=False)  # not handled: aiosmtpd answers 535 itself


@pytest.fixture
def smtp_server():
    recorder = Recorder()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=recorder.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    recorder.port = controller.port
    yield recorder
    controller.stop()


def credentials_file(tmp_path: Path, line: str, mode: int = 0o600) -> Path:
    path = tmp_path / "smtp_credentials"
    path.write_text(line + "\n")
    path.chmod(mode)
    return path


def message_for(address: str) -> EmailMessage:
    return build_message(default_template(), sender=SENDER, to=address, values=VALUES)


def bodies(message: EmailMessage) -> tuple[str, str]:
    plain = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return plain, html


# --------------------------------------------------------------------------
# Templates


def test_default_template_fills_every_placeholder_in_plain_and_html():
    message = message_for("ann@uni.edu")
    plain, html = bodies(message)

    assert message["Subject"] == "2-BM data access: 2026-03-Müller-1234"
    assert message["From"] == SENDER and message["To"] == "ann@uni.edu"
    assert message.get_content_type() == "multipart/alternative"
    for value in VALUES.values():
        assert value in plain
    assert "{" not in plain
    assert "Bones &amp; &lt;teeth&gt; &quot;in situ&quot;" in html
    assert "<teeth>" not in html
    assert '<a href="https://app.globus.org/file-manager?origin_id=abc&amp;origin_path=%2F2026-03%2F">' in html
    assert "Anna Müller" in html


def test_without_globus_the_bundled_message_says_nothing_of_globus():
    """Globus not enabled: no link, so the paragraph that points to Globus is left out, not left dangling."""
    message = build_message(default_template(), sender=SENDER, to="a@b.org", values={**VALUES, "globus_url": ""})
    plain, html = bodies(message)
    assert "globus" not in plain.lower() and "globus" not in html.lower()
    assert VALUES["storage_directory"] in plain and "\n\n\n" not in plain
    assert plain.startswith("Hello,\n\nThe data of the beamtime") and plain.rstrip().endswith("beamline staff")


def test_a_paragraph_of_a_custom_template_goes_only_with_the_globus_link():
    template = "Subject: {experiment}\nDear {pi},\n\nGlobus:\n  {globus_url}\n\nFolder: {storage_directory}\n"
    values = {**VALUES, "globus_url": "", "pi": ""}
    plain, _ = bodies(build_message(template, sender=SENDER, to="a@b.org", values=values))
    assert plain == f"Dear ,\n\nFolder: {VALUES['storage_directory']}\n"  # an empty {pi} stays empty
    with_link, _ = bodies(build_message(template, sender=SENDER, to="a@b.org", values=VALUES))
    assert f"Globus:\n  {VALUES['globus_url']}\n\nFolder:" in with_link


def test_template_with_literal_braces_and_missing_values():
    template = "Subject: Data {experiment}\n\nUse {{curly}} braces; PI: {pi}.\n"
    message = build_message(template, sender=SENDER, to="a@b.org", values={"experiment": "E1"})

    plain, _ = bodies(message)
    assert message["Subject"] == "Data E1"
    assert plain.strip() == "Use {curly} braces; PI: ."


def test_a_line_break_in_a_value_does_not_break_the_subject():
    message = build_message(
        "Subject: {title}\nBody", sender=SENDER, to="a@b.org", values={"title": "one\r\nBcc: x@y.org"}
    )
    assert message["Subject"] == "one Bcc: x@y.org"
    assert message["Bcc"] is None


@pytest.mark.parametrize(
    "template, problem",
    [
        ("Subject: {experiment}\nDear {name},", r"unknown placeholder\(s\) \{name\}"),
        ("Subject: x\n{title!r} {pi:>10}", r"\{title!r\}, \{pi:>10\}"),
        ("Subject: x\n{pi.__class__}", r"\{pi.__class__\}"),
        ("Subject: x\nan { alone", "brace"),
        ("Dear {pi},\nno subject line", "first line must be 'Subject: ...'"),
        ("Subject:\nbody", "first line must be 'Subject: ...'"),
    ],
)
def test_bad_templates_give_a_clear_error(template, problem):
    with pytest.raises(InputError, match=problem):
        build_message(template, sender=SENDER, to="a@b.org", values=VALUES)
    with pytest.raises(InputError, match=problem):
        check_template(template)


def test_the_error_lists_the_known_placeholders():
    with pytest.raises(InputError) as failure:
        check_template("Subject: {experimnet}\n")
    for name in PLACEHOLDERS:
        assert "{" + name + "}" in str(failure.value)


def test_extra_values_are_placeholders_too():
    message = build_message("Subject: Hi {name}\n", sender=SENDER, to="a@b.org", values={"name": "Ann"})
    assert message["Subject"] == "Hi Ann"


def test_load_template(tmp_path):
    assert load_template(None) == default_template()
    custom = tmp_path / "message.txt"
    custom.write_text("Subject: {experiment}\nHello\n", encoding="utf-8")
    assert load_template(custom).startswith("Subject: {experiment}")
    with pytest.raises(InputError, match="email.template: cannot read"):
        load_template(tmp_path / "absent.txt")
    custom.write_text("Subject: {oops}\n", encoding="utf-8")
    with pytest.raises(InputError, match="oops"):
        load_template(custom)


# --------------------------------------------------------------------------
# SMTP


def test_one_message_per_recipient_and_the_refused_one_fails_alone(smtp_server):
    mailer = SmtpMailer("127.0.0.1", smtp_server.port, sender=SENDER)
    recipients = [("d1001", "ann@uni.edu"), ("d1002", REFUSED), ("d1003", ""), ("d1004", "carl@lab.org")]

    delivery = mailer.send(recipients, VALUES)

    assert delivery.delivered == ("d1001", "d1004")
    assert delivery.skipped == ("d1003",)
    assert set(delivery.failed) == {"d1002"}
    assert "550" in delivery.failed["d1002"] and REFUSED in delivery.failed["d1002"]
    assert [rcpt for _, rcpt, _ in smtp_server.received] == [["ann@uni.edu"], ["carl@lab.org"]]
    for (mail_from, _, message), address in zip(smtp_server.received, ["ann@uni.edu", "carl@lab.org"], strict=True):
        assert mail_from == "tomo@aps.example.org"
        assert message["To"] == address
        assert REFUSED not in message.as_string()
        plain, html = bodies(message)
        assert VALUES["globus_url"] in plain and "&lt;teeth&gt;" in html


@pytest.mark.parametrize(
    "bad, problem",
    [
        ("eve@x.org\r\nBcc: all@example.org", "a line break"),
        ("eve@x.org\nX-Injected: yes", "a line break"),
        ("eve@x.org,mallory@example.org", "a comma"),
        ("eve@x.org;mallory@example.org", "a semicolon"),
        ("eve\x07@x.org", "a control character"),
    ],
)
def test_an_address_that_is_not_one_plain_address_fails_alone(smtp_server, bad, problem):
    """Second line of defence (the schedule's values are cleaned first): a line break must not write headers,
    a comma must not add recipients; that user fails, named, and the others get their message."""
    mailer = SmtpMailer("127.0.0.1", smtp_server.port, sender=SENDER)

    delivery = mailer.send([("d1001", "ann@uni.edu"), ("d1002", bad), ("d1003", "carl@lab.org")], VALUES)

    assert delivery.delivered == ("d1001", "d1003")
    assert set(delivery.failed) == {"d1002"}
    assert delivery.failed["d1002"].endswith(f"is not one plain e-mail address ({problem})")
    assert "\r" not in delivery.failed["d1002"] and "\n" not in delivery.failed["d1002"]
    assert [rcpt for _, rcpt, _ in smtp_server.received] == [["ann@uni.edu"], ["carl@lab.org"]]
    for _, _, message in smtp_server.received:
        assert message["Bcc"] is None and message["X-Injected"] is None and "mallory" not in message.as_string()


def test_only_bad_addresses_open_no_connection():
    mailer = SmtpMailer("127.0.0.1", free_port(), sender=SENDER)  # nothing listens: a connection would fail
    delivery = mailer.send([("d1", "a@x.org\r\nBcc: b@y.org"), ("d2", "")], VALUES)
    assert delivery.delivered == () and delivery.skipped == ("d2",) and set(delivery.failed) == {"d1"}


def test_connection_lost_half_way_fails_the_rest(smtp_server):
    delivery = SmtpMailer("127.0.0.1", smtp_server.port, sender=SENDER).send(
        [("d1", "a@x.org"), ("d2", DROPS), ("d3", "c@x.org")], VALUES
    )

    assert delivery.delivered == ("d1",)
    assert "421" in delivery.failed["d2"]
    assert "connection" in delivery.failed["d3"] and "lost" in delivery.failed["d3"]


def test_nothing_to_send_opens_no_connection():
    mailer = SmtpMailer("127.0.0.1", free_port())  # nothing listens: a connection would fail
    delivery = mailer.send([("d1", "")], VALUES)
    assert delivery.delivered == () and delivery.skipped == ("d1",) and not delivery.failed


def test_server_down_is_an_email_error():
    mailer = SmtpMailer("127.0.0.1", free_port(), timeout=5)
    with pytest.raises(EmailError, match=r"cannot reach the SMTP server 127\.0\.0\.1:\d+"):
        mailer.send([("d1001", "ann@uni.edu")], VALUES)


def test_login_with_credentials_and_password_never_logged(smtp_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    mailer = SmtpMailer(
        "127.0.0.1", smtp_server.port, credentials=credentials_file(tmp_path, f"beamline|{PASSWORD}"), sender=SENDER
    )

    delivery = mailer.send([("d1001", "ann@uni.edu")], VALUES)

    assert delivery.delivered == ("d1001",)
    assert smtp_server.logins == [("beamline", PASSWORD)]
    assert PASSWORD not in caplog.text


def test_refused_login_is_an_email_error_without_the_password(smtp_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    mailer = SmtpMailer("127.0.0.1", smtp_server.port, credentials=credentials_file(tmp_path, "beamline wrong-pw"))

    with pytest.raises(EmailError, match="refused the login of beamline") as failure:
        mailer.send([("d1001", "ann@uni.edu")], VALUES)
    assert "wrong-pw" not in str(failure.value) and "wrong-pw" not in caplog.text
    assert smtp_server.received == []


def test_readable_credentials_file_is_refused(smtp_server, tmp_path):
    mailer = SmtpMailer(
        "127.0.0.1", smtp_server.port, credentials=credentials_file(tmp_path, f"beamline|{PASSWORD}", 0o644)
    )
    with pytest.raises(EmailError, match="chmod 600"):
        mailer.send([("d1001", "ann@uni.edu")], VALUES)
    assert smtp_server.received == []


def test_no_login_without_credentials(smtp_server):
    SmtpMailer("127.0.0.1", smtp_server.port, sender=SENDER).send([("d1001", "ann@uni.edu")], VALUES)
    assert smtp_server.logins == []
    assert len(smtp_server.received) == 1


def test_starttls_on_a_server_without_it_is_an_email_error(smtp_server):
    mailer = SmtpMailer("127.0.0.1", smtp_server.port, starttls=True)
    with pytest.raises(EmailError, match="STARTTLS"):
        mailer.send([("d1001", "ann@uni.edu")], VALUES)
    assert smtp_server.received == []


def test_a_mailer_without_a_sender_fails_each_message_saying_why(smtp_server):
    delivery = SmtpMailer("127.0.0.1", smtp_server.port).send([("d1001", "ann@uni.edu"), ("d1002", "bob@lab.org")],
                                                              VALUES)  # fmt: skip
    assert delivery.delivered == ()
    assert "From" in delivery.failed["d1001"] and "From" in delivery.failed["d1002"]


# --------------------------------------------------------------------------
# Outbox (email.outbox): each message written to a folder, nothing sent


def test_the_outbox_holds_one_whole_message_per_recipient_0640(tmp_path):
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    mailer = OutboxMailer(outbox, sender=SENDER)
    recipients = [("d310010", "zoe@example.de"), ("d310011", "jl@example.fr"), ("d100001", ""),
                  ("d310099", "a@b.org, c@d.org")]  # fmt: skip
    delivery = mailer.send(recipients, VALUES)
    assert delivery.delivered == ("d310010", "d310011") and delivery.skipped == ("d100001",)
    assert "not one plain e-mail address (a comma)" in delivery.failed["d310099"]
    files = sorted(outbox.iterdir())
    assert [f.name.split("-", 1)[1].rsplit("-", 1)[0] for f in files] == ["d310010", "d310011"]
    assert all(f.suffix == ".eml" and f.stat().st_mode & 0o777 == OUTBOX_MODE for f in files)
    message = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert message["To"] == "zoe@example.de" and message["From"] == SENDER
    assert VALUES["globus_url"] in bodies(message)[0]


def test_an_outbox_written_under_a_tight_umask_is_still_0640(tmp_path):
    import os

    old = os.umask(0o077)
    try:
        OutboxMailer(tmp_path, sender=SENDER).send([("d1", "a@b.org")], VALUES)
    finally:
        os.umask(old)
    (written,) = tmp_path.iterdir()
    assert written.stat().st_mode & 0o777 == OUTBOX_MODE


def test_a_missing_outbox_is_an_email_error_and_nothing_is_written(tmp_path):
    with pytest.raises(EmailError, match=r"email.outbox: .*gone is not a folder; nothing written"):
        OutboxMailer(tmp_path / "gone", sender=SENDER).send([("d1", "a@b.org")], VALUES)
    assert list(tmp_path.iterdir()) == []


def test_a_message_the_outbox_cannot_take_fails_alone_and_leaves_no_part_file(tmp_path, monkeypatch):
    import os

    mailer = OutboxMailer(tmp_path, sender=SENDER)
    real_rename = os.rename

    def full_for_the_second(source, destination):
        if "-d2-" in str(destination):
            raise OSError(28, "No space left on device")
        return real_rename(source, destination)

    monkeypatch.setattr(os, "rename", full_for_the_second)
    delivery = mailer.send([("d1", "a@b.org"), ("d2", "c@d.org")], VALUES)
    assert delivery.delivered == ("d1",) and "No space left on device" in delivery.failed["d2"]
    assert [p.suffix for p in tmp_path.iterdir()] == [".eml"]
