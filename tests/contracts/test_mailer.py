"""Mailer: SmtpMailer against an SMTP server on 127.0.0.1 (aiosmtpd) and FakeMailer deliver, skip and fail
alike, each recipient on their own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.controller import Controller
from dmagic_ioc.adapters.email import SmtpMailer
from dmagic_ioc.ioc.domain.errors import EmailError
from dmagic_ioc.ioc.domain.ports import Mailer

from ..fakes.ports import EXPERIMENT, FakeMailer
from ..helpers import free_port

MEI, BO, EVA = ("d310001", "mei@example.edu"), ("d310002", "bo@example.org"), ("d310009", "eva@example.org")
NO_ADDRESS = ("d100001", "")
VALUES = {"experiment": EXPERIMENT, "title": "Fossil teeth", "pi": "Mei Müller-Łukasiewicz", "beamline": "2-BM-A,B",
          "globus_url": "", "storage_directory": f"/gdata/dm/2BM/2026-10/{EXPERIMENT}"}  # fmt: skip


class Inbox:
    """An SMTP server's handler that takes every message but to the addresses in `refused`."""

    def __init__(self) -> None:
        self.refused: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address in self.refused:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 Message accepted"


@dataclass
class Case:
    mailer: Mailer

    def refuse(self, recipient: tuple[str, str]) -> None:
        """Have the mail server refuse `recipient` (username, address)."""
        raise NotImplementedError

    def go_down(self) -> None:
        """Have the mail server not answer."""
        raise NotImplementedError


@dataclass
class FakeCase(Case):
    mailer: FakeMailer

    def refuse(self, recipient: tuple[str, str]) -> None:
        self.mailer.refused[recipient[0]] = "550 5.1.1 mailbox unavailable"

    def go_down(self) -> None:
        self.mailer.fail = EmailError("cannot reach the SMTP server 127.0.0.1:25: Connection refused")


@dataclass
class SmtpCase(Case):
    mailer: SmtpMailer
    inbox: Inbox = field(default_factory=Inbox)

    def refuse(self, recipient: tuple[str, str]) -> None:
        self.inbox.refused.add(recipient[1])

    def go_down(self) -> None:
        self.mailer.port = free_port()  # nothing listens there


@pytest.fixture(params=["fake", "smtp"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    if request.param == "fake":
        yield FakeCase(FakeMailer())
        return
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield SmtpCase(SmtpMailer("127.0.0.1", controller.port, sender="2-BM <tomo@example.gov>", timeout=30), inbox)
    controller.stop()


def test_each_recipient_with_an_address_gets_it(case):
    delivery = case.mailer.send([MEI, BO], VALUES)
    assert (delivery.delivered, delivery.skipped) == (("d310001", "d310002"), ())
    assert not delivery.failed


def test_a_user_without_an_address_is_skipped_and_the_others_get_it(case):
    delivery = case.mailer.send([NO_ADDRESS, MEI], VALUES)
    assert (delivery.delivered, delivery.skipped) == (("d310001",), ("d100001",))
    assert not delivery.failed


def test_an_address_the_server_refuses_fails_that_user_alone_saying_why(case):
    case.refuse(BO)
    delivery = case.mailer.send([MEI, BO, EVA], VALUES)
    assert delivery.delivered == ("d310001", "d310009")
    assert delivery.failed is not None and list(delivery.failed) == ["d310002"]
    assert "550" in delivery.failed["d310002"]


def test_everyone_refused_is_delivered_to_nobody_each_failed(case):
    for recipient in (MEI, BO):
        case.refuse(recipient)
    delivery = case.mailer.send([MEI, BO], VALUES)
    assert delivery.delivered == ()
    assert delivery.failed is not None and sorted(delivery.failed) == ["d310001", "d310002"]


def test_a_mail_server_that_does_not_answer_is_an_email_error(case):
    case.go_down()
    with pytest.raises(EmailError):
        case.mailer.send([MEI], VALUES)
