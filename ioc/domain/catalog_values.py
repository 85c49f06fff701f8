"""The values the catalogue (SciCat) takes in its checked fields: an e-mail address, a list of them, a host.

SciCat refuses a whole dataset for one value its validators refuse, and refuses
it again on every retry. So the IOC checks these values itself: its own config
keys when the config is read, the proposal's e-mails and this host's name when
it builds a dataset (a field SciCat would refuse is left out, or a configured
one used). The rules are those of the validators SciCat's backend applies
(isEmail, isFQDN and isURL with their defaults), a little stricter where that
is simpler: a host name in ASCII (an IDN as `xn--`), no quoted name in an
address, no user name in a host. An address SciCat takes is first one the
schedule's rule takes (`text.email_problem`: one plain address, nothing that
could write a mail header).
"""

from __future__ import annotations

import ipaddress
import re

from .text import email_problem

_NAME_BYTES = 64  # an address's part before the @
_HOST_CHARS = 253
_URL_CHARS = 2082  # a sourceFolderHost, scheme and path included

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)
_TOP_LEVEL = re.compile(r"[a-z]{2,}|xn--[a-z0-9-]+", re.IGNORECASE)
_NAME_ATOM = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~\-\u00a1-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]+", re.IGNORECASE)
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*", re.IGNORECASE)
_PORT = re.compile(r"[0-9]{1,5}")


def host_name_problem(name: str) -> str:
    """What makes `name` other than a host name with a domain (`dmagic.aps.anl.gov`), in a few words;
    '' when it is one. A name without a domain (`2bmb-ws1`, `localhost`) is refused by SciCat."""
    if not name:
        return "empty"
    if len(name) > _HOST_CHARS:
        return f"over {_HOST_CHARS} characters"
    if name.endswith("."):
        return "ends with a dot"
    labels = name.split(".")
    if len(labels) < 2:
        return "no domain (a name such as host.example.org is needed)"
    for label in labels:
        if not _LABEL.fullmatch(label):
            return f"{label!r} is not letters, digits and inner hyphens (at most 63)"
    if not _TOP_LEVEL.fullmatch(labels[-1]):
        return f"its top-level domain {labels[-1]!r} is not two letters or more"
    return ""


def catalog_email_problem(address: str) -> str:
    """What makes `address` other than one e-mail address SciCat takes (`name@host.domain`), in a few
    words; '' when it is one: `email_problem`'s rules, then SciCat's own on each side of the @. A display
    name, a list, an IP or a domain without a dot are refused."""
    if why := email_problem(address):
        return why
    name, _, domain = address.rpartition("@")
    if len(name.encode("utf-8")) > _NAME_BYTES or not all(_NAME_ATOM.fullmatch(atom) for atom in name.split(".")):
        return f"{name!r} before the @ is not a plain name (at most {_NAME_BYTES} bytes)"
    why = host_name_problem(domain)
    return f"its domain {domain!r}: {why}" if why else ""


def email_list_problem(text: str) -> str:
    """`catalog_email_problem` of each address of a `;`-separated list (SciCat's contactEmail); '' when
    every one is an address."""
    for address in text.split(";"):
        why = catalog_email_problem(address.strip(" "))
        if why:
            return f"{address.strip(' ')!r}: {why}"
    return ""


def source_host_problem(value: str) -> str:
    """What makes `value` other than a sourceFolderHost SciCat takes, in a few words; '' when it is one:
    a host name with a domain or an IP address, with an optional scheme (`nfs://`), port and path."""
    if len(value) > _URL_CHARS:
        return f"over {_URL_CHARS} characters"
    if any(char.isspace() or char in "<>?#@\\" for char in value):
        return "holds a space, <, >, ?, #, @ or \\"
    scheme, separator, rest = value.partition("://")
    if not separator:
        scheme, rest = "", value
    elif not _SCHEME.fullmatch(scheme):
        return f"{scheme!r} is not a scheme"
    authority = rest.split("/", 1)[0]
    if authority.startswith("["):
        host, closed, after = authority[1:].partition("]")
        if not closed or not _is_ip(host, version=6) or (after and not after.startswith(":")):
            return f"{authority!r} is not an IPv6 address in brackets"
        has_port, port = bool(after), after[1:]
    else:
        host, colon, port = authority.partition(":")
        has_port = bool(colon)
        why = "" if _is_ip(host, version=4) else host_name_problem(host)
        if why:
            return f"host {host!r}: {why}"
    if has_port and (not _PORT.fullmatch(port) or not 0 < int(port) <= 65535):
        return f"port {port!r} is not a number from 1 to 65535"
    return ""


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False
