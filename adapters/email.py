"""E-mail delivery (`ports.Mailer`): the data-access message (`email_message`) for each recipient, sent over
SMTP, or written to an outbox folder.

`email.outbox` (a folder) replaces SMTP by `OutboxMailer`: each message is
written there as an `.eml` file, to try e-mail without a mail server.
"""

from __future__ import annotations

import base64
import copy
import logging
import os
import re
import smtplib
import ssl
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

from ..ioc.domain.errors import EmailError, InputError
from ..ioc.domain.ports import Delivery
from ..ioc.domain.text import email_problem, printable
from ..ioc.secrets import is_loopback, read_credentials
from .email_message import build_message, default_template

log = logging.getLogger(__name__)

_NOT_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
OUTBOX_MODE = 0o640  # messages in the outbox: the IOC's account writes, its group reads
_SHOWN_CHARS = 80  # of an address refused before it is sent


# --------------------------------------------------------------------------
# Delivery


class TemplateMailer:
    """`ports.Mailer`: renders the template for each recipient; subclasses deliver the messages.

    Each recipient is handled on their own: an address that is not one plain
    address, or a message that cannot be built, fails that user alone.
    """

    def __init__(self, *, template: str = "", sender: str = ""):
        self.template = template or default_template()
        self.sender = sender

    def send(self, recipients: Sequence[tuple[str, str]], values: Mapping[str, str]) -> Delivery:
        """The message, filled with `values`, to each (username, address); users without an address are skipped.

        An address that is not one plain address (a line break would write headers, a comma add
        recipients) fails that user alone, as does a message that cannot be built for them.
        """
        skipped = tuple(username for username, address in recipients if not (address or "").strip())
        pending: list[tuple[str, str, EmailMessage]] = []
        failed: dict[str, str] = {}
        for username, address in recipients:
            address = (address or "").strip()
            if not address:
                continue
            problem = email_problem(address)
            try:
                if problem:
                    failed[username] = f"{_shown(address)} is not one plain e-mail address ({problem})"
                else:
                    message = build_message(self.template, sender=self.sender, to=address, values=values)
                    pending.append((username, address, message))
            except ValueError as error:  # a header the e-mail library refuses to write
                failed[username] = f"not sent: {error}"
            if username in failed:
                log.warning("e-mail: message to %s %s", username, failed[username])
        return self._deliver(pending, skipped, failed)

    def _deliver(
        self, pending: Sequence[tuple[str, str, EmailMessage]], skipped: tuple[str, ...], failed: dict[str, str]
    ) -> Delivery:
        """Deliver each (username, address, message); `skipped` have no address, `failed` holds those already
        refused (username -> why)."""
        raise NotImplementedError


def outbox_problem(folder: Path) -> str:
    """Why messages cannot be written to `folder` (`email.outbox`), '' when they can."""
    try:
        if not Path(folder).is_dir():
            return f"{folder} is not a folder"
    except OSError as error:
        return f"{folder} cannot be reached: {error.strerror}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable by this user"
    return ""


class OutboxMailer(TemplateMailer):
    """`ports.Mailer` into a folder: each message is written there as `<time>-<username>-<id>.eml`, whole
    (aside, then renamed) and mode 0640; nothing is sent. For trying e-mail without a mail server (the demo)."""

    def __init__(self, folder: Path, *, template: str = "", sender: str = ""):
        super().__init__(template=template, sender=sender)
        self.folder = Path(folder)

    def _deliver(
        self, pending: Sequence[tuple[str, str, EmailMessage]], skipped: tuple[str, ...], failed: dict[str, str]
    ) -> Delivery:
        if not pending:
            return Delivery(skipped=skipped, failed=failed)
        if problem := outbox_problem(self.folder):
            raise EmailError(f"email.outbox: {problem}; nothing written")
        delivered: list[str] = []
        for username, _, message in pending:
            try:
                path = self._write(username, message)
            except OSError as error:
                failed[username] = f"not written to {self.folder}: {error.strerror or error}"
                log.warning("e-mail: message to %s %s", username, failed[username])
            else:
                delivered.append(username)
                log.info("e-mail: message to %s written to %s", username, path)
        return Delivery(delivered=tuple(delivered), skipped=skipped, failed=failed)

    def _write(self, username: str, message: EmailMessage) -> Path:
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{_NOT_IN_FILE_NAME.sub('_', username)[:64]}-{uuid.uuid4().hex[:8]}.eml"
        final = self.folder / name
        aside = self.folder / f".{name}.part"
        descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, OUTBOX_MODE)
        try:
            with os.fdopen(descriptor, "wb") as file:
                os.fchmod(file.fileno(), OUTBOX_MODE)  # whatever the umask
                file.write(message.as_bytes())
                file.flush()
                os.fsync(file.fileno())
            os.rename(aside, final)
        except BaseException:
            aside.unlink(missing_ok=True)
            raise
        return final


# --------------------------------------------------------------------------
# SMTP


class SmtpMailer(TemplateMailer):
    """`ports.Mailer` over SMTP: renders the template for each recipient; one connection per round.

    Each recipient is handled on their own: a refused address fails only that
    user. Logs in (after STARTTLS when set) only when `credentials` names a
    `user|password` file, read at each round; the password is never logged,
    and never sent over a plain connection to anything but loopback unless
    `allow_insecure` (email.allow_insecure).
    """

    def __init__(
        self,
        host: str,
        port: int,
        starttls: bool = False,
        credentials: Path | None = None,
        timeout: float = 10,
        *,
        template: str = "",
        sender: str = "",
        allow_insecure: bool = False,
    ):
        super().__init__(template=template, sender=sender)
        self.host = host
        self.port = port
        self.starttls = starttls
        self.credentials = credentials
        self.timeout = timeout
        self.allow_insecure = allow_insecure
        self._check_clear_login()

    def _check_clear_login(self) -> None:
        in_clear = self.credentials is not None and not self.starttls and not is_loopback(self.host)
        if in_clear and not self.allow_insecure:
            raise EmailError(
                f"email: logging in to {self.server} without STARTTLS would send the password in clear; "
                "set email.starttls: true, or email.allow_insecure: true"
            )

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def _deliver(
        self, pending: Sequence[tuple[str, str, EmailMessage]], skipped: tuple[str, ...], failed: dict[str, str]
    ) -> Delivery:
        """Send each (username, address, message) over one connection; `skipped` have no address, `failed`
        holds those already refused (username -> why)."""
        if not pending:
            return Delivery(skipped=skipped, failed=failed)
        delivered: list[str] = []
        smtp = self._connect()
        try:
            for index, (username, address, message) in enumerate(pending):
                try:
                    self._send_one(smtp, address, message)
                except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as error:
                    reason = f"not sent: the connection to {self.server} was lost ({_reason(error)})"
                    log.warning("SMTP: %s after %d message(s)", reason, index)
                    failed.update((name, reason) for name, _, _ in pending[index:])
                    break
                except (smtplib.SMTPException, OSError, ValueError) as error:
                    failed[username] = _refusal(address, error)
                    log.warning("SMTP: message to %s (%s) not sent: %s", username, address, failed[username])
                else:
                    delivered.append(username)
                    log.info("SMTP: message to %s sent", username)
        finally:
            _quit(smtp)
        return Delivery(delivered=tuple(delivered), skipped=skipped, failed=failed)

    def _connect(self) -> smtplib.SMTP:
        """Connect, STARTTLS and log in as configured; EmailError saying what failed."""
        self._check_clear_login()
        login = self._login()
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as error:
            raise EmailError(f"cannot reach the SMTP server {self.server}: {_reason(error)}") from None
        try:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if login is not None:
                smtp.login(*login)
                log.info("SMTP: logged in to %s as %s", self.server, login[0])
        except smtplib.SMTPAuthenticationError as error:
            _quit(smtp)
            assert login is not None  # only smtp.login refuses a login
            said = _redact(_reason(error), *login)  # a server may echo what it was sent
            raise EmailError(f"the SMTP server {self.server} refused the login of {login[0]}: {said}") from None
        except smtplib.SMTPNotSupportedError as error:
            _quit(smtp)
            raise EmailError(f"the SMTP server {self.server}: {error}") from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as error:
            _quit(smtp)
            what = "STARTTLS with" if self.starttls else "the greeting of"
            said = _redact(_reason(error), *login) if login else _reason(error)
            raise EmailError(f"{what} the SMTP server {self.server} failed: {said}") from None
        return smtp

    def _login(self) -> tuple[str, str] | None:
        if self.credentials is None:
            return None
        try:
            return read_credentials("email.credentials", Path(self.credentials))
        except InputError as error:
            raise EmailError(str(error)) from None

    def _send_one(self, smtp: smtplib.SMTP, address: str, message: EmailMessage) -> None:
        """Send a copy addressed to `address` alone, so no one sees another's address."""
        if not (message["Sender"] or message["From"]):
            raise ValueError("the message has no From address (email.sender)")
        own = copy.deepcopy(message)
        del own["To"], own["Cc"], own["Bcc"]
        own["To"] = address
        smtp.send_message(own, to_addrs=[address])


def _refusal(address: str, error: Exception) -> str:
    """Why one message was not sent, in words for Status."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code, reply = error.recipients.get(address, next(iter(error.recipients.values()), (0, b"")))
        return f"{address} refused by the server: {code} {_text(reply)}"
    if isinstance(error, smtplib.SMTPSenderRefused):
        return f"sender {_text(error.sender)} refused by the server: {error.smtp_code} {_text(error.smtp_error)}"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"refused by the server: {error.smtp_code} {_text(error.smtp_error)}"
    return _reason(error)


def _shown(address: str) -> str:
    """An address in a message, control characters escaped and shortened: it may be megabytes long."""
    return printable(address[:_SHOWN_CHARS]) + ("..." if len(address) > _SHOWN_CHARS else "")


def _redact(text: str, user: str, password: str) -> str:
    """`text` without the password, as sent or as AUTH PLAIN/LOGIN encode it."""
    plain = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    for secret in (plain, base64.b64encode(password.encode()).decode(), password):
        text = text.replace(secret, "***")
    return text


def _reason(error: BaseException) -> str:
    if isinstance(error, smtplib.SMTPResponseException):
        return f"{error.smtp_code} {_text(error.smtp_error)}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()
