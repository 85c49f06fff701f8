"""A local stand-in for SciCat's backend (the NestJS one, routes under /api/v3), as strict as it is.

No SciCat runs here (it needs MongoDB), so this one answers the routes the
catalogue calls by the rules of SciCat's backend, SciCatProject/backend at
783086a07edfa0fdf3874fab4186b4e39a5a0837; each rule is marked with where it
comes from, as `file:line` in that commit. Abbreviations:
  DC   src/datasets/datasets.controller.ts
  OWN  src/common/dto/ownable.dto.ts
  UDO  src/datasets/dto/update-dataset-obsolete.dto.ts
  URO  src/datasets/dto/update-raw-dataset-obsolete.dto.ts
  CRO  src/datasets/dto/create-raw-dataset-obsolete.dto.ts
  UOD  src/origdatablocks/dto/update-origdatablock.dto.ts
  CDOD src/origdatablocks/dto/create-dataset-origdatablock.ts
  DFD  src/common/dto/datafile.dto.ts
  ABL  src/casl/abilities/datasets.ability.ts
The values' rules are those of the validator library the backend uses
(validator 13.15.26: isEmail, isFQDN, isURL) and of luxon's `fromISO` (3.7.2),
written here from their documented behaviour. Where this stand-in is
stricter than SciCat it says so: a body it takes, SciCat takes.

The account (`username`/`password`) has `groups`; what it may do follows
SciCat's permission groups, set per stand-in as SciCat's environment sets them
(`admin_groups`, `privileged_groups` = CREATE_DATASET_PRIVILEGED_GROUPS,
`with_pid_groups`, `create_groups`). `stop()` and `start()` again on the same
port stand for SciCat going down and coming back; what it holds stays.
`forget_tokens()` stands for SciCat's JWT secret changed (a token it no longer
takes: the call goes on anonymous), `expire_tokens()` for tokens past their
lifetime.

Sick modes, for the IOC's hardening: `fail_with` (every call but login answers
that status), `answer_all` (every call but login answers that status and
body: a SciCat saying `200 {"status": "ok"}` to everything), `redirect_to`
(every call answers 307 to that base URL), `slow` (an Event every call waits
for, up to HOLD_LIMIT seconds: a SciCat that answers, but slowly).
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from .helpers import free_port

BASE = "/api/v3/"  # src/main.ts:31,36-39: global prefix `api`, URI versioning, default version 3
BODY_LIMIT = 16 * 1024 * 1024  # src/main.ts:90-95, src/config/configuration.ts:216: MAX_FILE_UPLOAD_SIZE "16mb"
HOLD_LIMIT = 30.0  # seconds a `slow` stand-in holds a call at most: a test that forgets to release never hangs

# ------------------------------------------------------------------ values (validator 13.15.26, luxon 3.7.2)

_FQDN_TLD = re.compile(r"([a-z\u00a1-\u00a8\u00aa-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]{2,}|xn[a-z0-9-]{2,})", re.I)
_FQDN_PART = re.compile(r"[a-z_\u00a1-\uffff0-9-]+", re.I)
_EMAIL_USER = re.compile(r"[a-z\d!#$%&'*+\-/=?^_`{|}~\u00a1-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]+", re.I)
_EMAIL_QUOTED = re.compile(
    r"([\s\x01-\x08\x0b\x0c\x0e-\x1f\x7f\x21\x23-\x5b\x5d-\x7e\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]"
    r"|(\\[\x01-\x09\x0b\x0c\x0d-\x7f\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef]))*",
    re.I,
)


def _js_length(text: str) -> int:
    """A string's length as JavaScript counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def is_fqdn(name: str) -> bool:
    """isFQDN with its defaults: a TLD required (two letters or more, or xn--), no underscore, no trailing
    dot, labels of at most 63, none starting or ending with a hyphen."""
    labels = name.split(".")
    tld = labels[-1]
    if len(labels) < 2 or not _FQDN_TLD.fullmatch(tld) or re.search(r"\s", tld) or tld.isdigit():
        return False
    return all(
        len(label) <= 63
        and _FQDN_PART.fullmatch(label)
        and not re.search(r"[\uff01-\uff5e]", label)
        and not label.startswith("-")
        and not label.endswith("-")
        and "_" not in label
        for label in labels
    )


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def is_email(address: str) -> bool:
    """isEmail with its defaults: no display name, a TLD required, no IP domain, a UTF-8 name allowed, at most
    254 characters, 64 bytes before the @ and 254 after."""
    if _js_length(address) > 254 or "@" not in address:
        return False
    user, _, domain = address.rpartition("@")
    if len(user.encode()) > 64 or len(domain.encode()) > 254 or not is_fqdn(domain):
        return False
    if len(user) >= 2 and user[0] == '"' and user[-1] == '"':
        return bool(_EMAIL_QUOTED.fullmatch(user[1:-1]))
    return all(_EMAIL_USER.fullmatch(part) for part in user.split("."))


def is_email_list(text: object) -> bool:
    """SciCat's CustomEmailList (src/datasets/utils/email-list-validator.util.ts:14-26): split at `;`, each
    part trimmed, each an e-mail address; "" is none."""
    return isinstance(text, str) and all(is_email(part.strip()) for part in text.split(";"))


def is_source_host(url: object) -> bool:
    """isURL with require_valid_protocol and require_protocol false (UDO:87-92): any scheme or none, then
    an IP or an FQDN (isFQDN's defaults), an optional user:password, port and path."""
    if not isinstance(url, str) or not url or re.search(r"[\s<>]", url) or url.startswith("mailto:"):
        return False
    if len(url) >= 2083:
        return False
    url = url.split("#", 1)[0].split("?", 1)[0]
    scheme, separator, rest = url.partition("://")
    if not separator:
        if url.startswith("//"):  # protocol-relative: not allowed by default
            return False
        rest = url
    if rest == "":
        return False
    authority = rest.split("/", 1)[0]
    if "@" in authority:
        auth, _, authority = authority.rpartition("@")
        if auth.count(":") != 1:
            return False
    wrapped = re.fullmatch(r"\[([^\]]+)\](?::([0-9]+))?", authority)
    if wrapped:
        host, ipv6, port = "", wrapped.group(1), wrapped.group(2)
    else:
        host, colon, port = authority.partition(":")
        ipv6, port = "", port if colon else None
    if port is not None and (not re.fullmatch(r"[0-9]+", port) or not 0 < int(port) <= 65535):
        return False
    return _is_ip(host) or (bool(host) and is_fqdn(host)) or (bool(ipv6) and _is_ip(ipv6, 6))


_ISO_EXTENDED = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,]\d+)?)?)?"
    r"(?P<z>Z|[+-]\d{2}(?::?\d{2})?)?)?"
)
_ISO_BASIC = re.compile(
    r"(?P<y>\d{4})(?P<mo>\d{2})(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})(?:[.,]\d+)?)?)?"
    r"(?P<z>Z|[+-]\d{2}(?::?\d{2})?)?)?"
)


def is_scicat_time(value: object) -> bool:
    """A time SciCat keeps: luxon's fromISO takes it (UTC interceptor, src/common/utils.ts:361-372, then
    IsDateString). A `T` between date and time, a real calendar date. Stricter than luxon: a whole date is
    needed (luxon also reads `2024` or `2024-W01`)."""
    if not isinstance(value, str):
        return False
    found = _ISO_EXTENDED.fullmatch(value) or _ISO_BASIC.fullmatch(value)
    if not found:
        return False
    year, month, day = int(found["y"]), int(found["mo"]), int(found["d"])
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    hour, minute, second = (int(found[key] or 0) for key in ("h", "mi", "s"))
    return hour <= 23 and minute <= 59 and second <= 59


# ------------------------------------------------------------------ the DTOs


def _string(value: object) -> bool:
    return isinstance(value, str)


def _filled(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _strings(value: object) -> bool:
    """Stricter than SciCat's IsString({each: true}), which also takes one plain string."""
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _integer(value: object) -> bool:
    """IsInt. Stricter: 1.0 is refused (JSON cannot tell it from 1 in JavaScript)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _boolean(value: object) -> bool:
    return isinstance(value, bool)


def _object(value: object) -> bool:
    return isinstance(value, dict)


def _techniques(value: object) -> bool:
    """IsArray + ValidateNested(CreateTechniqueDto: pid, name, both strings; src/datasets/dto/
    create-technique.dto.ts:11-20), no other key."""
    return isinstance(value, list) and all(
        isinstance(item, dict) and set(item) == {"pid", "name"} and all(map(_string, item.values())) for item in value
    )


def _refused(value: object) -> bool:
    return False


Rule = tuple[Callable[[object], bool], str, bool]  # (check, what it must be, required)

# Every key SciCat's v3 raw-dataset DTO declares (CRO > URO > UDO > OWN; the whitelist: DC:657-665).
RAW_DATASET: dict[str, Rule] = {
    "pid": (_string, "must be a string", False),  # CRO:13-15
    "type": (lambda v: v == "raw", "must be raw", True),  # CRO:17-18; DC:587-598 picks the raw DTO by it
    "version": (_string, "must be a string", False),  # CRO:25-27 (the server overwrites it)
    "datasetName": (_string, "must be a string", False),  # CRO:35-42 (absent: made of sourceFolder)
    "ownerGroup": (_filled, "should not be empty", True),  # OWN:10-12
    "accessGroups": (_strings, "must be a list of strings", False),  # OWN:20-24
    "instrumentGroup": (_string, "must be a string", False),  # OWN:31-33
    "owner": (_string, "must be a string", True),  # UDO:39-40
    "ownerEmail": (lambda v: isinstance(v, str) and is_email(v), "must be an email", False),  # UDO:48-50
    "orcidOfOwner": (_string, "must be a string", False),  # UDO:58-60
    "contactEmail": (is_email_list, "must be an email or emails separated by ;", True),  # UDO:68-69
    "sourceFolder": (_filled, "should not be empty", True),  # UDO:77-79
    "sourceFolderHost": (is_source_host, "must be a URL address", False),  # UDO:87-92
    "size": (_integer, "must be an integer number", False),  # UDO:104-106
    "packedSize": (_integer, "must be an integer number", False),  # UDO:115-117
    "numberOfFiles": (_integer, "must be an integer number", False),  # UDO:126-128
    "numberOfFilesArchived": (_integer, "must be an integer number", False),  # UDO:136-138
    "creationTime": (is_scicat_time, "must be a valid ISO 8601 date string", True),  # UDO:146-147, DC:545
    "validationStatus": (_string, "must be a string", False),  # UDO:155-157
    "keywords": (_strings, "must be a list of strings", False),  # UDO:165-169
    "description": (_string, "must be a string", False),  # UDO:176-178
    "classification": (_string, "must be a string", False),  # UDO:196-198
    "license": (_string, "must be a string", False),  # UDO:205-207
    "isPublished": (_boolean, "must be a boolean value", False),  # UDO:216-218
    "techniques": (_techniques, "must be a list of {pid, name}", False),  # UDO:227-231
    "sharedWith": (_strings, "must be a list of strings", False),  # UDO:240-244
    "scientificMetadata": (_object, "must be an object", False),  # UDO:277-280 (stricter: an object only)
    "scientificMetadataSchema": (_string, "must be a string", False),  # UDO:287-289
    "scientificMetadataValid": (_boolean, "must be a boolean value", False),  # UDO:297-299
    "comment": (_string, "must be a string", False),  # UDO:306-308
    "dataQualityMetrics": (_number, "must be a number", False),  # UDO:316-318
    "proposalId": (_string, "must be a string", False),  # UDO:325-327
    "runNumber": (_string, "must be a string", False),  # UDO:335-337
    "principalInvestigator": (_string, "must be a string", True),  # URO:13-14
    "startTime": (is_scicat_time, "must be a valid ISO 8601 date string", False),  # URO:22-24 (stricter: luxon's)
    # URO:32-34, DC:546: SciCat turns an endTime luxon cannot read into null and drops it; refused here
    "endTime": (is_scicat_time, "must be a valid ISO 8601 date string", False),
    "creationLocation": (_string, "must be a string", True),  # URO:42-43
    "dataFormat": (_string, "must be a string", False),  # URO:51-53
    "sampleId": (_string, "must be a string", False),  # URO:60-62
    "instrumentId": (_string, "must be a string", False),  # URO:69-71
    # Declared but meaningless on a raw dataset, or not checked by SciCat at all: refused here (stricter).
    "relationships": (_refused, "is not taken by this stand-in", False),  # UDO:255-259
    "datasetlifecycle": (_refused, "is not taken by this stand-in", False),  # UDO:268-269
    "investigator": (_refused, "is not taken on a raw dataset by this stand-in", False),  # URO:73-86
    "inputDatasets": (_refused, "is not taken on a raw dataset by this stand-in", False),
    "usedSoftware": (_refused, "is not taken on a raw dataset by this stand-in", False),
    "jobParameters": (_refused, "is not taken on a raw dataset by this stand-in", False),
    "jobLogData": (_refused, "is not taken on a raw dataset by this stand-in", False),
}

# CDOD:4-7: the nested route's DTO is CreateOrigDatablockDto without datasetId, ownerGroup, accessGroups and
# instrumentGroup; what is left (UOD:17-67):
ORIGDATABLOCK: dict[str, Rule] = {
    "size": (_integer, "must be an integer number", True),  # UOD:23-24
    "chkAlg": (_filled, "should not be empty", False),  # UOD:32-35
    "dataFileList": (lambda v: isinstance(v, list) and bool(v), "should not be empty", True),  # UOD:43-47
    "isPublished": (_boolean, "must be a boolean value", False),  # UOD:65-67
}

DATA_FILE: dict[str, Rule] = {  # DFD:10-90
    "path": (_string, "must be a string", True),  # DFD:16-17
    "size": (_number, "must be a number", True),  # DFD:24-25
    "time": (is_scicat_time, "must be a valid ISO 8601 date string", True),  # DFD:33-34, DC:1924-1928
    "chk": (_string, "must be a string", False),  # DFD:42-44
    "uid": (_string, "must be a string", False),  # DFD:51-53
    "gid": (_string, "must be a string", False),  # DFD:60-62
    "perm": (_string, "must be a string", False),  # DFD:69-71
    "type": (_string, "must be a string", False),  # DFD:78-80
    "metadata": (_object, "must be an object", False),  # DFD:88-90
}


def _findings(body: object, rules: dict[str, Rule], where: str = "") -> list[tuple[str, str]]:
    """(property, why) of each refusal of class-validator with whitelist, forbidNonWhitelisted and
    forbidUnknownValues (src/main.ts:57-84, DC:657-665): every key not declared is refused, every declared
    one checked. IsOptional lets null through."""
    if not isinstance(body, dict):
        return [(where, f"{where or 'the body'} must be an object")]
    found = [(where + key, f"property {where}{key} should not exist") for key in body if key not in rules]
    for key, (check, must, required) in rules.items():
        if key not in body or (body[key] is None and not required):
            if required:
                found.append((where + key, f"{where}{key} {must}"))
        elif not check(body[key]):
            found.append((where + key, f"{where}{key} {must}"))
    return found


def _dataset_findings(body: object) -> list[tuple[str, str]]:
    if isinstance(body, dict) and "datasetName" not in body and isinstance(body.get("sourceFolder"), str):
        body = {**body, "datasetName": _name_of(body["sourceFolder"])}
    return _findings(body, RAW_DATASET)


def _name_of(source_folder: str) -> str:
    """A dataset's name when it has none: the last two parts of its sourceFolder (CRO:37-41)."""
    return "/".join([part for part in source_folder.split("/") if part][-2:])


def dataset_problems(body: object) -> list[str]:
    """Why SciCat refuses `body` as a raw dataset (POST datasets), [] when it takes it."""
    return [why for _, why in _dataset_findings(body)]


def origdatablock_problems(body: object) -> list[str]:
    """Why SciCat refuses `body` as an origdatablock of a dataset (POST datasets/{pid}/origdatablocks)."""
    found = _findings(body, ORIGDATABLOCK)
    files = body.get("dataFileList") if isinstance(body, dict) else None
    for number, item in enumerate(files if isinstance(files, list) else []):  # ValidateNested (UOD:45-46)
        found += _findings(item, DATA_FILE, f"dataFileList.{number}.")
    return [why for _, why in found]


def _body(request: BaseHTTPRequestHandler, raw: bytes) -> object:
    """The request's JSON body (None when empty): JSON only (src/main.ts:90-95), and as JSON.parse reads it:
    NaN and Infinity are no JSON (Python's json would read them). ValueError saying why not."""
    if not raw:
        return None
    if request.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
        raise ValueError("the body must be application/json")

    def refuse(constant: str) -> None:
        raise ValueError(f"body is not JSON: {constant}")

    try:
        return json.loads(raw, parse_constant=refuse)
    except json.JSONDecodeError as error:
        raise ValueError(f"body is not JSON: {error}") from None


# ------------------------------------------------------------------ the server


class ScicatStandIn:
    """What SciCat holds (`datasets`, `datablocks`, every request in `calls`), served while started."""

    def __init__(self, username: str = "ingestor", password: str = "s3cret-pw", port: int = 0, *,
                 groups: Iterable[str] = ("ingestor",), privileged_groups: Iterable[str] = ("ingestor",),
                 admin_groups: Iterable[str] = (), with_pid_groups: Iterable[str] = (),
                 create_groups: Iterable[str] = ("#all",), pid_pattern: str = "",
                 token_ttl: float = 3600.0):  # fmt: skip
        self.username, self.password = username, password
        self.port = port or free_port()
        self.groups = set(groups)  # the account's currentGroups (src/auth/strategies/jwt.strategy.ts:24-52)
        # SciCat's environment (src/config/configuration.ts:10-17, 231-241; defaults: #all and nothing)
        self.privileged_groups = set(privileged_groups)  # CREATE_DATASET_PRIVILEGED_GROUPS
        self.admin_groups = set(admin_groups)  # ADMIN_GROUPS
        self.with_pid_groups = set(with_pid_groups)  # CREATE_DATASET_WITH_PID_GROUPS
        self.create_groups = set(create_groups)  # CREATE_DATASET_GROUPS
        self.pid_pattern = pid_pattern  # DATASET_CREATION_VALIDATION_REGEX (src/config/configuration.ts:20-23)
        self.token_ttl = token_ttl
        self.datasets: dict[str, dict] = {}
        self.datablocks: dict[str, list[dict]] = {}
        self.calls: list[tuple[str, str, str]] = []  # (method, path, Authorization header)
        self.posted: list[tuple[str, object]] = []  # (path, body) of each POST but the login's (a password)
        self.tokens: dict[str, float] = {}  # token -> when it expires (time.monotonic())
        self.fail_with: int | None = None  # set: every call but login answers this status (a sick SciCat)
        self.answer_all: tuple[int, object] | None = None  # set: every call but login answers (status, body)
        self.redirect_to: str | None = None  # set: every call answers 307 to this base URL (another host)
        self.slow: threading.Event | None = None  # set: every call waits for this Event before it is answered
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE.rstrip('/')}"

    def start(self) -> ScicatStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                standin._handle(self, "GET")

            def do_POST(self):
                standin._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="scicat-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScicatStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def forget_tokens(self) -> None:
        """SciCat's JWT secret changed: the tokens it gave are no longer verified (the calls go on anonymous)."""
        self.tokens.clear()

    def expire_tokens(self) -> None:
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    # ------------------------------------------------------------------ the API

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self.calls.append((method, path, auth))
        length = int(request.headers.get("Content-Length") or 0)
        if length > BODY_LIMIT:
            return _answer(request, 413, {"message": "request entity too large", "statusCode": 413})
        raw = request.rfile.read(length)
        if self.slow is not None:
            self.slow.wait(HOLD_LIMIT)
        if self.redirect_to is not None:
            return _redirect(request, self.redirect_to.rstrip("/") + request.path)
        try:
            body = _body(request, raw)
        except ValueError as error:
            return _bad(request, [str(error)])
        if not path.lower().startswith(BASE):  # routes are case-insensitive (Express's default)
            return _answer(request, 404, {"message": f"Cannot {method} {path}", "statusCode": 404})
        segments = path[len(BASE) :].split("/")
        route = [segment.lower() for segment in segments]
        if method == "POST" and route == ["auth", "login"]:
            return _answer(request, *self._login(body))
        if method == "POST":
            with self._lock:
                self.posted.append((path, body))
        if method == "POST" and route == ["users", "login"]:  # src/users/users.controller.ts:193-211: deprecated
            return _answer(request, 201, None)
        user = self._user(auth)
        if user == "expired":  # src/auth/guards/jwt-auth.guard.ts:41-43
            return _answer(request, 401, {"message": "SESSION_EXPIRED", "statusCode": 401})
        if self.fail_with is not None:
            return _answer(request, self.fail_with, {"message": "stand-in told to fail"})
        if self.answer_all is not None:
            return _answer(request, *self.answer_all)
        pid = unquote(segments[1]) if len(segments) > 1 else ""
        with self._lock:
            _answer(request, *self._route(method, route, pid, body, signed_in=user == "signed in"))

    def _user(self, auth: str) -> str:
        """'signed in', 'expired' or 'anonymous': the token only from `Authorization: Bearer` (any case of the
        scheme; src/auth/strategies/jwt.strategy.ts:18); an unknown one goes on anonymous, no 401
        (src/auth/guards/jwt-auth.guard.ts:37-48)."""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token not in self.tokens:
            return "anonymous"
        return "signed in" if self.tokens[token] > time.monotonic() else "expired"

    def _login(self, body) -> tuple[int, object]:
        """src/auth/auth.controller.ts:39-47, src/auth/auth.service.ts:54-66: 201 and the token twice."""
        if not isinstance(body, dict) or (body.get("username"), body.get("password")) != (self.username, self.password):
            return 401, {"message": "Unauthorized", "statusCode": 401}  # src/auth/strategies/local.strategy.ts:28-31
        token = secrets.token_hex(16)
        self.tokens[token] = time.monotonic() + self.token_ttl
        created = datetime.now(timezone.utc).isoformat()
        user = {"_id": "u-1", "username": self.username, "email": f"{self.username}@example.org"}
        return 201, {"access_token": token, "id": token, "expires_in": self.token_ttl, "ttl": self.token_ttl,
                     "created": created, "userId": "u-1", "user": user}  # fmt: skip

    def _route(self, method: str, route: list[str], pid: str, body, *, signed_in: bool) -> tuple[int, object]:
        if route == ["auth", "whoami"] and method == "GET":  # src/auth/auth.controller.ts:128-134
            return 200, self._whoami() if signed_in else None
        if not route or route[0] != "datasets":
            return 404, {"message": "no such route", "statusCode": 404}
        if method == "POST" and route == ["datasets"]:
            return self._create_dataset(body, signed_in)
        if method == "POST" and route == ["datasets", "isvalid"]:
            return self._is_valid(body, signed_in)
        if method == "GET" and len(route) == 2:
            return self._read(pid, signed_in, lambda held: {**held, "history": []})  # DC:1149-1155
        if method == "POST" and route[2:] == ["origdatablocks"]:
            return self._create_datablock(pid, body, signed_in)
        if method == "GET" and route[2:] == ["origdatablocks"]:  # DC:2022-2057
            return self._read(pid, signed_in, lambda held: self.datablocks.get(pid, []))
        if method == "GET" and route[2:] == ["origdatablocks", "count"]:  # DC:2059-2104
            return self._read(pid, signed_in, lambda held: {"count": len(self.datablocks.get(pid, []))})
        return 404, {"message": "no such route", "statusCode": 404}

    def _whoami(self) -> dict:
        return {"_id": "u-1", "username": self.username, "email": f"{self.username}@example.org",
                "currentGroups": sorted(self.groups), "authStrategy": "local"}  # fmt: skip

    # ABL: who may do what. ifOwner = ownerGroup among the account's groups, ifAccess = one of accessGroups (ABL:51-52)

    def _in(self, groups: set[str], all_too: bool = False) -> bool:
        return bool(self.groups & groups) or (all_too and "#all" in groups)

    def _may_create_some(self, signed_in: bool) -> bool:
        """The class-level guard of POST datasets (DC:540-543, src/casl/guards/policies.guard.ts:14-33)."""
        anything = self._in(self.admin_groups | self.privileged_groups)
        return signed_in and (anything or self._in(self.with_pid_groups, True) or self._in(self.create_groups, True))

    def _may_create(self, dataset: dict) -> bool:
        """DatasetCreate on {pid, ownerGroup} (DC:292-329): ABL:75-100 (no pid, ifOwner), ABL:102-124 (ifOwner),
        ABL:126-147 and ABL:149-174 (anything)."""
        owner = dataset.get("ownerGroup") in self.groups
        if self._in(self.admin_groups | self.privileged_groups):
            return True
        if self._in(self.with_pid_groups, True) and owner:
            return True
        return self._in(self.create_groups, True) and owner and not dataset.get("pid")

    def _may_read(self, dataset: dict, signed_in: bool) -> bool:
        """ABL:39-71: published, or ifOwner or ifAccess; ABL:149-174: admins read everything."""
        if dataset.get("isPublished"):
            return True
        access = set(dataset.get("accessGroups") or []) | {dataset.get("ownerGroup")}
        return signed_in and (self._in(self.admin_groups) or bool(self.groups & access))

    def _may_add(self, dataset: dict) -> bool:
        """DatasetOrigdatablockCreate: ifOwner (ABL:75-124), anything (ABL:126-174)."""
        owner = dataset.get("ownerGroup") in self.groups
        if self._in(self.admin_groups | self.privileged_groups):
            return True
        return owner and (self._in(self.with_pid_groups, True) or self._in(self.create_groups, True))

    def _create_dataset(self, body, signed_in: bool) -> tuple[int, object]:
        """DC:578-632: guard, validation (400, its errors as JSON text: DC:687-697), permission (403), pid taken
        (409, DC:623-627)."""
        if not self._may_create_some(signed_in):
            return 403, {"message": "Forbidden resource", "error": "Forbidden", "statusCode": 403}
        found = _dataset_findings(body)
        if found:
            errors = [{"property": name, "constraints": {"stand-in": why}} for name, why in found]
            return 400, {"status": 400, "message": json.dumps(errors)}
        refused = self._create_refusal(body)
        if refused:
            return refused
        pid = body.get("pid") or f"undefined/{secrets.token_hex(8)}"  # src/datasets/schemas/dataset.schema.ts:36-49
        if pid in self.datasets:
            return 409, {"message": f"A dataset with pid {pid} already exists!", "statusCode": 409}
        held = dict(body)
        held.setdefault("datasetName", _name_of(held["sourceFolder"]))
        if held["sourceFolder"] != "/":  # src/datasets/schemas/dataset.schema.ts:113-120
            held["sourceFolder"] = held["sourceFolder"].removesuffix("/")
        now = datetime.now(timezone.utc).isoformat()
        held.update(pid=pid, version="3", createdBy=self.username, updatedBy=self.username, createdAt=now,
                    updatedAt=now)  # fmt: skip  # src/datasets/datasets.service.ts:178-181, src/common/utils.ts:953-975
        held.setdefault("size", 0)  # the start of the origdatablocks' $inc
        held.setdefault("numberOfFiles", 0)
        self.datasets[pid] = held
        return 201, held

    def _is_valid(self, body, signed_in: bool) -> tuple[int, object]:
        """POST datasets/isValid (DC:702-788): the create permission first, then the DTO without its
        whitelist (extra keys pass)."""
        if not self._may_create_some(signed_in):
            return 403, {"message": "Forbidden resource", "error": "Forbidden", "statusCode": 403}
        refused = self._create_refusal(body if isinstance(body, dict) else {})
        if refused:
            return refused
        found = [problem for problem in dataset_problems(body) if not problem.startswith("property ")]
        return 200, {"valid": not found, **({"error": "; ".join(found)} if found else {})}

    def _create_refusal(self, dataset: dict) -> tuple[int, object] | None:
        """DC:310-347: 403 without the right to create this dataset, 400 for a pid the site's pattern refuses
        (`pid_pattern`, searched without flags as JavaScript's RegExp.test does)."""
        if not self._may_create(dataset):
            return 403, {"message": "Unauthorized to create this dataset", "error": "Forbidden", "statusCode": 403}
        if self.pid_pattern and dataset.get("pid") and not re.search(self.pid_pattern, dataset["pid"]):
            return 400, {"message": "PID is not following required standards", "statusCode": 400}
        return None

    def _read(self, pid: str, signed_in: bool, answer: Callable[[dict], object]) -> tuple[int, object]:
        """404 before 403 (DC:1134-1148, DC:217-241): a 403 says the dataset is there."""
        held = self.datasets.get(pid)
        if held is None:
            return 404, {"message": f"dataset: {pid} not found", "statusCode": 404}
        if not self._may_read(held, signed_in):
            return 403, {"message": "Unauthorized access", "error": "Forbidden", "statusCode": 403}
        return 200, answer(held)

    def _create_datablock(self, pid: str, body, signed_in: bool) -> tuple[int, object]:
        """DC:1919-1971: the guard (anonymous: 403), the global validation pipe (400), 404, 403; then the
        block stored with its dataset's groups (DC:1961-1967) and the dataset's totals raised by its own
        (src/origdatablocks/origdatablocks.service.ts:400-410,447-458; src/datasets/datasets.service.ts:738-757):
        a dataset sent with its totals counts them twice."""
        if not self._may_create_some(signed_in):  # DC:1920-1923
            return 403, {"message": "Forbidden resource", "error": "Forbidden", "statusCode": 403}
        found = origdatablock_problems(body)
        if found:
            return 400, {"message": found, "error": "Bad Request", "statusCode": 400}
        held = self.datasets.get(pid)
        if held is None:
            return 404, {"message": f"dataset: {pid} not found", "statusCode": 404}
        if not self._may_add(held):
            return 403, {"message": "Unauthorized access", "error": "Forbidden", "statusCode": 403}
        block = {**body, "_id": secrets.token_hex(8), "datasetId": pid, "ownerGroup": held["ownerGroup"],
                 "accessGroups": held.get("accessGroups", []), "createdBy": self.username}  # fmt: skip
        self.datablocks.setdefault(pid, []).append(block)  # no uniqueness: twice is twice
        held["size"] += body["size"]
        held["numberOfFiles"] += len(body["dataFileList"])
        return 201, block


def _answer(request: BaseHTTPRequestHandler, status: int, body: object) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(data)))
    request.end_headers()
    request.wfile.write(data)


def _bad(request: BaseHTTPRequestHandler, messages: list[str]) -> None:
    """The global pipe's refusal (src/loggers/logger.service.ts:82-97)."""
    _answer(request, 400, {"message": messages, "error": "Bad Request", "statusCode": 400})


def _redirect(request: BaseHTTPRequestHandler, location: str) -> None:
    request.send_response(307)
    request.send_header("Location", location)
    request.send_header("Content-Length", "0")
    request.end_headers()
