"""E-mail: the data-access message, built from a template and sent over SMTP, or written to an outbox folder.

Template syntax: the first line is `Subject: ...`, the rest is the body.
Placeholders are written `{name}`; the known ones are `PLACEHOLDERS`
(`{experiment}`, `{title}`, `{pi}`, `{beamline}`, `{globus_url}`,
`{storage_directory}`); a literal brace is doubled (`{{`, `}}`). A paragraph
(lines between blank lines) holding `{globus_url}` is left out when there is
no link (Globus not enabled), so the message never points to Globus then.
Every message goes out as plain text with an HTML alternative (values
escaped, links made clickable). The bundled default is
`templates/data_access_email.txt`.

`email.outbox` (a folder) replaces SMTP by `OutboxMailer`: each message is
written there as an `.eml` file, to try e-mail without a mail server.
"""

from __future__ import annotations

import base64
import copy
import html
import importlib.resources
import logging
import os
import re
import smtplib
import ssl
import string
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path

from ..ioc.domain.model import EmailError, InputError, email_problem, printable
from ..ioc.domain.ports import Delivery
from ..ioc.secrets import is_loopback, read_credentials

log = logging.getLogger(__name__)

PLACEHOLDERS = ("experiment", "title", "pi", "beamline", "globus_url", "storage_directory")
DEFAULT_TEMPLATE = "templates/data_access_email.txt"

_URL = re.compile(r"https?://\S+")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # between two paragraphs
OPTIONAL_PARAGRAPHS = ("globus_url",)  # a paragraph holding one of these goes when it has no value
_NOT_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
OUTBOX_MODE = 0o640  # messages in the outbox: the IOC's account writes, its group reads
_SHOWN_CHARS = 80  # of an address refused before it is sent


# --------------------------------------------------------------------------
# Templates


def default_template() -> str:
    """The bundled data-access message template."""
    return importlib.resources.files(__package__).joinpath(DEFAULT_TEMPLATE).read_text(encoding="utf-8")


def load_template(path: Path | None) -> str:
    """The template at `path` (`email.template`), or the bundled one; checked before use."""
    if path is None:
        template = default_template()
    else:
        try:
            template = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise InputError(f"email.template: cannot read {path}: {reason}") from None
    check_template(template)
    return template


def check_template(template: str, known: Iterable[str] = PLACEHOLDERS) -> None:
    """Refuse a template without a subject line or with placeholders nobody fills."""
    _split(template)
    _fields(template, set(known))


def _split(template: str) -> tuple[str, str]:
    """(subject template, body template) from `Subject: ...` + body."""
    first, _, body = template.lstrip("\ufeff").partition("\n")
    name, colon, subject = first.partition(":")
    if not colon or name.strip().lower() != "subject" or not subject.strip():
        raise InputError("email template: the first line must be 'Subject: ...'")
    return subject.strip(), body.lstrip("\r\n")


def _fields(template: str, known: set[str]) -> list[tuple[str, str | None]]:
    """[(literal text, placeholder or None)], after checking every placeholder."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise InputError(f"email template: {error} (write a literal brace as '{{{{' or '}}}}')") from None
    unknown: list[str] = []
    chunks: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (name not in known or spec or conversion):
            whole = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            unknown.append(whole)
        chunks.append((literal, name))
    if unknown:
        allowed = ", ".join("{" + name + "}" for name in sorted(known))
        raise InputError(f"email template: unknown placeholder(s) {', '.join(unknown)}; use {allowed}")
    return chunks


def _render(chunks: Sequence[tuple[str, str | None]], values: Mapping[str, str], *, as_html: bool) -> str:
    parts = []
    for literal, name in chunks:
        parts.append(html.escape(literal) if as_html else literal)
        if name is not None:
            value = str(values.get(name) or "")
            parts.append(_html_value(value) if as_html else value)
    return "".join(parts)


def _html_value(value: str) -> str:
    """Escape a value; a lone URL becomes a link."""
    if _URL.fullmatch(value.strip()):
        url = html.escape(value.strip(), quote=True)
        return f'<a href="{url}">{url}</a>'
    return html.escape(value)


def _html_document(body: str) -> str:
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", body.replace("\r\n", "\n")) if p.strip()]
    inner = "\n".join("<p>" + p.replace("\n", "<br>\n") + "</p>" for p in paragraphs)
    return f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"></head>\n<body>\n{inner}\n</body>\n</html>\n'


def _without_empty_paragraphs(body: str, values: Mapping[str, str]) -> str:
    """`body` (checked) without the paragraphs about what has no value: one holding `{globus_url}` when there
    is no link."""
    empty = {name for name in OPTIONAL_PARAGRAPHS if not str(values.get(name) or "").strip()}
    if not empty:
        return body
    kept = []
    for paragraph in _BLANK_LINES.split(body):
        names = {name for _, name, _, _ in string.Formatter().parse(paragraph) if name is not None}
        if not names & empty:
            kept.append(paragraph)
    return "\n\n".join(kept)


def build_message(template: str, *, sender: str, to: str, values: Mapping[str, str]) -> EmailMessage:
    """The message for one recipient: subject and body filled from `values`.

    Placeholders are those of `PLACEHOLDERS` plus any key of `values`; one
    without a value is left empty. Raises InputError on a bad template.
    """
    known = set(PLACEHOLDERS) | set(values)
    subject_template, body_template = _split(template)
    subject = _render(_fields(subject_template, known), values, as_html=False)
    _fields(body_template, known)  # checked whole, before any paragraph is left out
    chunks = _fields(_without_empty_paragraphs(body_template, values), known)
    message = EmailMessage()
    message["Subject"] = " ".join(subject.split())  # a value with a line break must not end the header
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(localtime=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(_render(chunks, values, as_html=False))
    message.add_alternative(_html_document(_render(chunks, values, as_html=True)), subtype="html")
    return message


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
