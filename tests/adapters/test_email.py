"""E-mail adapter: templates, and SmtpMailer against a real SMTP server on 127.0.0.1 (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
import logging
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from dmagic_ioc.adapters.email import (
    PLACEHOLDERS,
    SmtpMailer,
    build_message,
    check_template,
    default_template,
    load_template,
)
from dmagic_ioc.ioc.domain.model import EmailError, InputError

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
