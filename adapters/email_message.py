"""The data-access message: its template, checked, and the message built from it for one recipient.

Template syntax: the first line is `Subject: ...`, the rest is the body.
Placeholders are written `{name}`; the known ones are `PLACEHOLDERS`
(`{experiment}`, `{title}`, `{pi}`, `{beamline}`, `{globus_url}`,
`{storage_directory}`); a literal brace is doubled (`{{`, `}}`). A paragraph
(lines between blank lines) holding `{globus_url}` is left out when there is
no link (Globus not enabled), so the message never points to Globus then.
Every message goes out as plain text with an HTML alternative (values
escaped, links made clickable). The bundled default is
`templates/data_access_email.txt`.
"""

from __future__ import annotations

import html
import importlib.resources
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path

from ..ioc.domain.errors import InputError

PLACEHOLDERS = ("experiment", "title", "pi", "beamline", "globus_url", "storage_directory")
DEFAULT_TEMPLATE = "templates/data_access_email.txt"

_URL = re.compile(r"https?://\S+")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # between two paragraphs
OPTIONAL_PARAGRAPHS = ("globus_url",)  # a paragraph holding one of these goes when it has no value


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
