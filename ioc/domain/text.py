"""Text from the schedule and from PVs: each value cleaned on its own where a scheduling backend builds
the domain's types, so that one bad value (a line break in an e-mail, a control character, a 10 MB title)
affects that value alone. The limits are the sizes of the PVs that show the values, without their NUL."""

from __future__ import annotations

import re

TITLE_BYTES = 1023  # ProposalTitle
TEXT_BYTES = 255  # names, e-mail, institution, proposal type, ESAF DOI
STRING_BYTES = 39  # GUP, badge, ESAF number: EPICS strings
LIST_BYTES = 8191  # Users:Names, Users:Badges, Users:Emails
LIST_SEPARATOR = ","
EMAIL_CHARS = 254  # the longest address SMTP carries (RFC 5321)

# Control characters but line breaks and tabs (those are white space: they become a space), and lone
# surrogates (JSON can carry them; they are no text and cannot be encoded).
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")
_LINE_BREAKS = frozenset("\n\r\v\f\x85\u2028\u2029")
_PLAIN_ADDRESS = re.compile(r'[^@\s<>()\[\]":\\]+@[^@\s<>()\[\]":\\]+')


def clean_text(value: str, limit: int = TEXT_BYTES) -> tuple[str, str]:
    """`value` on one line, fit for a PV of `limit` bytes: white space (line breaks, tabs) runs become one
    space, other control characters go, and what passes `limit` UTF-8 bytes is cut at a character
    boundary. Returns the text and what was done to it, for a warning ('' when only spacing changed).

    Looks at no more of `value` than could be kept, so a 10 MB title costs what a short one does.
    """
    value = value.strip()
    head = value[: 4 * limit]
    head, controls = _CONTROL.subn("", head)
    text = " ".join(head.split())
    encoded = text.encode("utf-8")
    cut = len(value) > 4 * limit or len(encoded) > limit
    if cut:
        text = encoded[:limit].decode("utf-8", "ignore").rstrip()
    done = ["cleaned of control characters"] if controls else []
    done += [f"cut to {limit} bytes"] if cut else []
    return text, " and ".join(done)


def email_problem(address: str) -> str:
    """What makes `address` other than one plain e-mail address (`name@domain`), in a few words; ''
    when it is one. A line break would let a value write mail headers, a comma or semicolon would
    make it several addresses and the `Users:Emails` list ambiguous. SciCat's stricter rule builds on
    this one (`catalog_values.catalog_email_problem`)."""
    if len(address) > EMAIL_CHARS:
        return f"over {EMAIL_CHARS} characters"
    if any(char in _LINE_BREAKS for char in address):
        return "a line break"
    for char, name in ((",", "a comma"), (";", "a semicolon")):
        if char in address:
            return name
    if _CONTROL.search(address) or "\t" in address:
        return "a control character"
    if any(char.isspace() for char in address):
        return "a space"
    if "@" not in address:
        return "no @"
    if not _PLAIN_ADDRESS.fullmatch(address):
        return "not one plain address"
    return ""


def printable(text: str) -> str:
    """`text` with control characters shown as escapes (`\\x07`), fit for a one-line Status or log."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
