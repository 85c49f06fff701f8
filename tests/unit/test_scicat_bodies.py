"""What the IOC sends SciCat, against the stand-in's validators (tests/scicat_standin.py, SciCat's rules).

Every body the builder makes, for any names, e-mails, hosts, paths, sizes and metadata, passes the strict
validators; the IOC's own value checks never take what SciCat refuses; and the bodies an earlier version
sent are refused, which shows the validators are as strict as SciCat.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from datetime import datetime, timezone

import pytest
from dmagic_ioc.adapters.scicat.bodies import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_FILES,
    Datablocks,
    scicat_datablocks,
    scicat_dataset,
    scicat_time,
)
from dmagic_ioc.ioc.domain.catalog_ports import CatalogFile, Dataset
from dmagic_ioc.ioc.domain.catalog_values import (
    catalog_email_problem,
    email_list_problem,
    host_name_problem,
    source_host_problem,
)
from dmagic_ioc.ioc.domain.text import email_problem
from dmagic_ioc.ioc.settings.load import ConfigError, settings_from_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..scicat_standin import (
    BODY_LIMIT,
    ORIGDATABLOCK,
    RAW_DATASET,
    dataset_problems,
    is_email,
    is_email_list,
    is_source_host,
    origdatablock_problems,
)

PID = "0b1c2d3e-4f50-4a1b-8c2d-3e4f5a6b7c8d"


def dataset(**changes) -> Dataset:
    fields = dict(
        pid=PID, name="2026-11-DArcy-1013377-1", description="Fast 4D imaging", owner="Jean-Luc D'Arcy",
        contact_email="jl.darcy@example.fr", principal_investigator="Jean-Luc D'Arcy", owner_group="p1013377",
        access_groups=("2bm-staff",), proposal_id="1013377", source_folder="/gdata/dm/2BM/2026-11/DArcy",
        creation_location="APS/2-BM-A,B", creation_time="2026-11-20T12:00:00-06:00",
        end_time="2026-11-20T12:30:00-06:00", files=(CatalogFile("data/p0.h5", 1000, "2026-11-20T18:10:00+00:00"),),
        scientific_metadata={"snapshots": {"start": {"pvs": {"energy": {"value": 25.5, "units": "keV"}}}}},
        owner_email="jl.darcy@example.fr", run_number="1",
    )  # fmt: skip
    return Dataset(**{**fields, **changes})


def wire(body: dict) -> object:
    """`body` as SciCat receives it: JSON as requests sends it (allow_nan=False: a NaN would fail here)."""
    return json.loads(json.dumps(body, allow_nan=False))


def test_the_body_the_ioc_posts_is_exactly_what_scicat_declares_and_takes():
    body = wire(scicat_dataset(dataset(), "dmagic.aps.anl.gov"))
    assert dataset_problems(body) == []
    assert set(body) <= set(RAW_DATASET) and not {"size", "numberOfFiles"} & set(body)  # SciCat counts them itself
    assert body["ownerEmail"] == body["contactEmail"] == "jl.darcy@example.fr"
    assert body["sourceFolderHost"] == "dmagic.aps.anl.gov" and body["runNumber"] == "1"
    assert body["creationTime"] == "2026-11-20T18:00:00+00:00" and body["type"] == "raw"
    (block,) = (wire(b) for b in scicat_datablocks(dataset().files))
    assert origdatablock_problems(block) == [] and set(block) == {"size", "dataFileList"}
    assert block == {"size": 1000, "dataFileList": [{"path": "data/p0.h5", "size": 1000,
                                                     "time": "2026-11-20T18:10:00+00:00"}]}  # fmt: skip


def test_a_host_without_a_domain_an_email_scicat_refuses_and_an_empty_proposal_are_left_out():
    body = scicat_dataset(dataset(owner_email="a@x.org;b@x.org", proposal_id="", description=""), "2bmb-ws1")
    assert not {"ownerEmail", "sourceFolderHost", "proposalId", "description"} & set(body)
    assert dataset_problems(wire(body)) == []
    configured = scicat_dataset(dataset(source_folder_host="nfs://data.aps.anl.gov"), "localhost")
    assert configured["sourceFolderHost"] == "nfs://data.aps.anl.gov"


def test_metadata_that_is_no_json_nan_and_infinity_goes_as_text():
    snapshot = {"pvs": {"x": {"value": math.nan}, "y": {"value": [1.0, math.inf, -math.inf]}}}
    body = wire(scicat_dataset(dataset(scientific_metadata={"snapshots": {"end": snapshot}})))
    pvs = body["scientificMetadata"]["snapshots"]["end"]["pvs"]
    assert pvs == {"x": {"value": "NaN"}, "y": {"value": [1.0, "Infinity", "-Infinity"]}}


def test_times_go_in_utc_with_a_t_a_time_without_an_offset_taken_as_utc():
    assert scicat_time("2026-11-20T12:00:00.123456-06:00") == "2026-11-20T18:00:00.123456+00:00"
    assert scicat_time("2026-11-20 12:00:00") == "2026-11-20T12:00:00+00:00"
    assert scicat_time("1912-01-01T00:00:00-00:16:08") == "1912-01-01T00:16:08+00:00"  # luxon takes no offset seconds


def test_files_go_in_blocks_of_at_most_10000_one_checksum_algorithm_each_none_without_files():
    assert scicat_datablocks(()) == []
    files = [CatalogFile(f"p{i}.h5", i, "2026-11-20T18:10:00+00:00", f"md5:{i:032x}") for i in range(25_001)]
    files += [CatalogFile("extra.h5", 7, "2026-11-20T18:10:00+00:00", "blake2b:ab" * 32),
              CatalogFile("bare.h5", 3, "2026-11-20T18:10:00+00:00")]  # fmt: skip
    blocks = scicat_datablocks(files)
    assert [len(b["dataFileList"]) for b in blocks] == [MAX_BLOCK_FILES, MAX_BLOCK_FILES, 5001, 1, 1]
    assert [b.get("chkAlg") for b in blocks] == ["md5", "md5", "md5", "blake2b", None]
    assert blocks[0]["dataFileList"][5]["chk"] == f"{5:032x}" and "chk" not in blocks[4]["dataFileList"][0]
    assert sum(b["size"] for b in blocks) == sum(f.size for f in files)
    assert all(origdatablock_problems(wire(b)) == [] for b in blocks)


def test_long_paths_split_a_block_before_its_json_grows_past_the_bound():
    files = [CatalogFile("d/" * 900 + f"{i}.h5", 1, "2026-11-20T18:10:00+00:00") for i in range(3000)]
    blocks = scicat_datablocks(files, max_bytes=1024 * 1024)
    assert len(blocks) == 6 and all(len(json.dumps(b)) <= 1024 * 1024 + 2000 for b in blocks)
    assert sum(len(b["dataFileList"]) for b in blocks) == 3000


# ------------------------------------------------------------------ the earlier bodies: refused


def test_the_bodies_an_earlier_version_sent_are_refused_as_scicat_refuses_them():
    earlier_block = {"datasetId": PID, "size": 3, "ownerGroup": "p1", "accessGroups": ["2bm"],
                     "dataFileList": [{"path": "a.h5", "size": 3, "time": "2026-11-20T18:10:00+00:00"}]}  # fmt: skip
    assert origdatablock_problems(earlier_block) == ["property datasetId should not exist",
                                                     "property ownerGroup should not exist",
                                                     "property accessGroups should not exist"]  # fmt: skip
    assert origdatablock_problems({**earlier_block, "dataFileList": []})[-1] == "dataFileList should not be empty"
    file = {"path": "a.h5", "size": 3, "time": "2026-11-20T18:10:00+00:00", "mtime": 1}
    assert origdatablock_problems({"size": 3, "dataFileList": [file]}) == [
        "property dataFileList.0.mtime should not exist"
    ]
    good = wire(scicat_dataset(dataset(), "dmagic.aps.anl.gov"))
    for change, why in [
        ({"sourceFolderHost": "2bmb-ws1"}, "sourceFolderHost must be a URL address"),
        ({"sourceFolderHost": "localhost"}, "sourceFolderHost must be a URL address"),
        ({"contactEmail": ""}, "contactEmail must be an email or emails separated by ;"),
        ({"ownerEmail": "a@x.org;b@x.org"}, "ownerEmail must be an email"),
        ({"creationTime": "2026-11-20 12:00:00"}, "creationTime must be a valid ISO 8601 date string"),
        ({"size": 1.5}, "size must be an integer number"),
        ({"proposalId": ["1013377"]}, "proposalId must be a string"),
        ({"datasetId": PID}, "property datasetId should not exist"),
    ]:
        assert dataset_problems({**good, **change}) == [why], change
    assert dataset_problems({k: v for k, v in good.items() if k != "principalInvestigator"}) == [
        "principalInvestigator must be a string"
    ]
    assert dataset_problems({k: v for k, v in good.items() if k != "datasetName"}) == []  # made of sourceFolder
    assert set(ORIGDATABLOCK) == {"size", "chkAlg", "dataFileList", "isPublished"}


# ------------------------------------------------------------------ any input: what the IOC sends is taken

_LABEL = st.text(string.ascii_lowercase + string.digits + "-", min_size=1, max_size=12)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.text(string.ascii_letters + string.digits + ".-_:/[]@ ", max_size=30),
    st.sampled_from(
        [
            "localhost",
            "2bmb-ws1",
            "dmagic.aps.anl.gov",
            "nfs://data.aps.anl.gov:2049/x",
            "127.0.0.1",
            "[::1]:22",
            "xn--bcher-kva.example",
            "host.123",
            "a.b",
            "ex.com.",
        ]
    ),  # fmt: skip
)
_NAMES = st.text(string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~.-\"@ <>éü", min_size=0, max_size=20)
_EMAILS = st.one_of(st.emails(), st.builds("{}@{}".format, _NAMES, _HOSTS), _NAMES)
_TEXT = st.text(max_size=40)
_TIMES = st.datetimes(datetime(1971, 1, 1), datetime(2200, 1, 1), timezones=st.timezones()).map(datetime.isoformat)
_FILES = st.lists(
    st.builds(CatalogFile, _TEXT, st.integers(0, 2**53), _TIMES,
              st.one_of(st.just(""), st.from_regex(r"(md5|blake2b):[0-9a-f]{32}", fullmatch=True))),
    max_size=30,
)  # fmt: skip
_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**53), 2**53) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(owner=_TEXT, email=_EMAILS, host=_HOSTS, configured_host=st.one_of(st.just(""), _HOSTS), title=_TEXT,
       gup=_TEXT, folder=_TEXT.filter(bool), start=_TIMES, end=_TIMES, files=_FILES,
       metadata=st.dictionaries(_TEXT, _JSON, max_size=4))  # fmt: skip
def test_every_body_the_builder_makes_passes_the_strict_validators(
    owner, email, host, configured_host, title, gup, folder, start, end, files, metadata
):
    built = dataset(owner=owner, principal_investigator=owner, owner_email=email, description=title,
                    proposal_id=gup, source_folder=folder, creation_time=start, end_time=end, files=tuple(files),
                    scientific_metadata=metadata, source_folder_host="" if source_host_problem(configured_host)
                    else configured_host)  # fmt: skip
    body = wire(scicat_dataset(built, host))
    assert dataset_problems(body) == [], body
    assert ("ownerEmail" in body) == (catalog_email_problem(email) == "")
    for block in scicat_datablocks(built.files):
        assert origdatablock_problems(wire(block)) == []


@settings(max_examples=500, deadline=None)
@given(address=_EMAILS)
def test_an_address_the_ioc_takes_scicat_takes(address):
    if not catalog_email_problem(address):
        assert is_email(address), address
        assert is_email_list(address) and not email_list_problem(address)


@settings(max_examples=500, deadline=None)
@given(address=st.one_of(_EMAILS, st.text(max_size=80), st.builds("{}@{}".format, st.text(max_size=20), _HOSTS)))
def test_an_address_scicat_takes_is_one_the_schedule_takes(address):
    """One rule set: SciCat's is the schedule's (`email_problem`) and more, never a rule of its own beside it."""
    if not catalog_email_problem(address):
        assert email_problem(address) == "", address
    elif email_problem(address):
        assert catalog_email_problem(address) == email_problem(address)  # said in the schedule's words


@settings(max_examples=300, deadline=None)
@given(addresses=st.lists(_EMAILS, min_size=1, max_size=3), spaces=st.sampled_from([";", " ;", "; ", " ; "]))
def test_a_contact_list_the_config_takes_scicat_takes(addresses, spaces):
    text = spaces.join(addresses)
    if not email_list_problem(text):
        assert is_email_list(text), text


@settings(max_examples=500, deadline=None)
@given(host=_HOSTS)
def test_a_source_host_the_ioc_takes_scicat_takes(host):
    if not source_host_problem(host):
        assert is_source_host(host), host
    if not host_name_problem(host):
        assert is_source_host(host) and is_email(f"ingestor@{host}"), host


def test_plain_names_of_hosts_and_people_are_taken():
    for address in ("jl.darcy@example.fr", "ü@example.com", "o'brien+2bm@aps.anl.gov"):
        assert not catalog_email_problem(address) and is_email(address)
    for host in ("dmagic.aps.anl.gov", "nfs://data.aps.anl.gov", "data.aps.anl.gov:2049/export", "10.1.2.3"):
        assert not source_host_problem(host) and is_source_host(host)


@settings(max_examples=200, deadline=None)
@given(files=_FILES, max_files=st.integers(1, 5), max_bytes=st.integers(1, 600),
       batches=st.lists(st.integers(1, 7), min_size=1, max_size=4))  # fmt: skip
def test_blocks_made_as_files_come_list_each_once_in_order_within_the_limits(files, max_files, max_bytes, batches):
    blocks, made, start = Datablocks(max_files, max_bytes), [], 0
    for size in itertools.cycle(batches):  # handed on a few at a time, as a dataset's end does
        if start >= len(files):
            break
        made += blocks.add(files[start : start + size])
        start += size
    made = [json.loads(text) for text in made + blocks.rest()]
    for algorithm in {file.checksum.partition(":")[0] if ":" in file.checksum else "" for file in files}:
        mine = [f for f in files if (f.checksum.partition(":")[0] if ":" in f.checksum else "") == algorithm]
        listed = [f for b in made if b.get("chkAlg", "") == algorithm for f in b["dataFileList"]]
        assert [f["path"] for f in listed] == [f.path for f in mine]  # each once, in the order they came
    for block in made:
        listed = block["dataFileList"]
        assert 1 <= len(listed) <= max_files and block["size"] == sum(f["size"] for f in listed)
        assert len(listed) == 1 or len(json.dumps(listed)) <= max_bytes + 2  # one file may be past the bound alone
        assert origdatablock_problems(wire(block)) == []


def test_a_full_block_of_the_longest_paths_is_well_within_what_scicat_takes_of_a_request():
    path = "é/" * 2047 + "x"  # PATH_MAX, each é sent as \u00e9 (6 bytes)
    blocks = scicat_datablocks([CatalogFile(path, 2**53, "2026-11-20T18:10:00.123456+00:00", "blake2b:" + "a" * 128)
                                for _ in range(2000)])  # fmt: skip
    assert len(blocks) > 1 and all(len(json.dumps(block).encode()) < MAX_BLOCK_BYTES + 30_000 for block in blocks)
    assert MAX_BLOCK_BYTES + 30_000 < BODY_LIMIT


_UTC_TIMES = st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?\+00:00", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(moment=st.one_of(_TIMES, st.datetimes(timezones=st.just(timezone.utc)).map(datetime.isoformat),
                        st.text("0123456789-T:.+ Z", max_size=34), _UTC_TIMES))  # fmt: skip
def test_a_time_already_as_scicat_takes_it_is_kept_any_other_made_so(moment):
    try:
        parsed = datetime.fromisoformat(moment)
    except ValueError:
        parsed = None
    if parsed is None:
        with pytest.raises(ValueError):
            scicat_time(moment)
        return
    made = (parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).isoformat()
    assert scicat_time(moment) == made


# ------------------------------------------------------------------ the config's keys, checked as SciCat will


def scicat_config_problems(tmp_path, **keys) -> list[str]:
    (tmp_path / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    (tmp_path / "scicat.cred").write_text("ingestor|secret\n", encoding="utf-8")
    (tmp_path / "scicat.cred").chmod(0o600)
    scicat = {"enabled": True, "url": "https://scicat.example.org/api/v3", "credentials": "scicat.cred",
              "creation_location": "APS/2-BM-A,B", **keys}  # fmt: skip
    raw = {"beamline": {"name": "2-BM-A,B"}, "scheduling": {"path": "schedule.yaml"}, "scicat": scicat}
    try:
        settings_from_dict(raw, base=tmp_path)
    except ConfigError as error:
        return [problem for problem in error.problems if problem.startswith("scicat.")]
    return []


def test_the_config_takes_a_contact_and_a_source_host_only_as_scicat_takes_them(tmp_path):
    assert scicat_config_problems(tmp_path) == [
        "scicat.contact_email: must be set when scicat.enabled is true: the contact of a dataset whose PI has no "
        "e-mail address SciCat takes (e.g. 2bm-staff@aps.anl.gov)"
    ]
    good = "2bm-staff@aps.anl.gov ; tomo@aps.anl.gov"
    assert scicat_config_problems(tmp_path, contact_email=good, source_folder_host="nfs://data.aps.anl.gov") == []
    assert scicat_config_problems(tmp_path, contact_email="2bm@localhost") == [
        "scicat.contact_email: '2bm@localhost': its domain 'localhost': no domain (a name such as host.example.org is "
        "needed) (one address, or several separated by ;)"
    ]
    assert scicat_config_problems(tmp_path, contact_email=good, source_folder_host="2bmb-ws1") == [
        "scicat.source_folder_host: host '2bmb-ws1': no domain (a name such as host.example.org is needed); SciCat "
        "takes a host name with a domain (e.g. data.aps.anl.gov, nfs://data.aps.anl.gov)"
    ]
