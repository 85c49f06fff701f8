"""The `scicat:` and `metadata:` sections (docs/interface.md sections 3 and 10): typed, validated, every problem
named by key."""

from __future__ import annotations

from pathlib import Path

import pytest
from dmagic_ioc.ioc.settings.load import ConfigError, settings_from_dict
from dmagic_ioc.ioc.settings.schema import MetadataSettings, ScicatSettings


@pytest.fixture
def base(tmp_path) -> Path:
    (tmp_path / "schedule.yaml").write_text("beamtimes: []\n", encoding="utf-8")
    secret = tmp_path / "scicat.cred"
    secret.write_text("ingestor|secret\n", encoding="utf-8")
    secret.chmod(0o600)
    return tmp_path


def config(**sections) -> dict:
    return {"beamline": {"name": "2-BM-A,B"}, "scheduling": {"path": "schedule.yaml"}, **sections}


ENABLED = {"enabled": True, "url": "https://scicat.example.org/api/v3", "credentials": "scicat.cred",
           "creation_location": "APS/2-BM-A,B", "contact_email": "2bm@aps.anl.gov"}  # fmt: skip


def problems(raw: dict, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as error:
        settings_from_dict(raw, base=base)
    return error.value.problems


def test_absent_sections_are_off_and_empty(base):
    settings = settings_from_dict(config(), base=base)
    assert settings.scicat == ScicatSettings() and not settings.scicat.enabled
    assert settings.metadata == MetadataSettings() and settings.metadata.pvs == {}


def test_a_full_catalogue_config_is_read_typed(base):
    raw = config(
        scicat={**ENABLED, "owner_group": "p{gup}", "access_groups": ["2bm-staff", "aps"]},
        metadata={"pvs": {"energy": "2bma:Energy", "sample_x": "2bmb:m1.RBV"}},
    )
    settings = settings_from_dict(raw, base=base)
    assert settings.scicat.credentials == base / "scicat.cred"
    assert settings.scicat.owner_group == "p{gup}" and settings.scicat.access_groups == ("2bm-staff", "aps")
    assert settings.metadata.pvs == {"energy": "2bma:Energy", "sample_x": "2bmb:m1.RBV"}


@pytest.mark.parametrize(
    ("scicat", "said"),
    [
        ({"url": ""}, "scicat.url: needs the SciCat API base"),
        ({"url": "ftp://scicat"}, "scicat.url: needs the SciCat API base"),
        ({"url": "https://u:p@scicat.example.org/api/v3"}, "scicat.url: must not hold a user name or password"),
        ({"url": "http://scicat.example.org/api/v3"}, "scicat.url: http:// to scicat.example.org would send"),
        ({"credentials": None}, "scicat.credentials: must be set"),
        ({"creation_location": ""}, "scicat.creation_location: must be set"),
        ({"owner_group": "{proposal}"}, "scicat.owner_group: unknown placeholder(s) {proposal}"),
        ({"owner_group": ""}, "scicat.owner_group: must not be empty"),
        ({"access_groups": ["two words"]}, "scicat.access_groups: 'two words' is not a group name"),
        ({"timeout": 0}, "scicat.timeout: must be more than 0 seconds"),
        ({"colour": "red"}, "scicat.colour: unknown key"),
    ],
)
def test_each_scicat_problem_names_its_key(base, scicat, said):
    found = problems(config(scicat={**ENABLED, **scicat}), base)
    assert any(problem.startswith(said) for problem in found), found


def test_plain_http_is_taken_on_loopback_or_when_allowed(base):
    for scicat in (
        {"url": "http://127.0.0.1:8123/api/v3"},
        {"url": "http://scicat:3000/api/v3", "allow_insecure": True},
    ):
        settings_from_dict(config(scicat={**ENABLED, **scicat}), base=base)


def test_a_readable_credentials_file_is_refused_and_its_content_never_shown(base):
    (base / "scicat.cred").chmod(0o644)
    found = problems(config(scicat=ENABLED), base)
    assert [p for p in found if p.startswith("scicat.credentials:")], found
    assert not any("secret" in p and "ingestor" in p for p in found)


def test_a_disabled_scicat_needs_no_url_nor_credentials(base):
    settings_from_dict(config(scicat={"enabled": False}), base=base)


@pytest.mark.parametrize(
    ("pvs", "said"),
    [
        ({"energy": "two words"}, "metadata.pvs.energy: 'two words' is not a PV name"),
        ({"a": "bl:E", "b": "bl:E"}, "metadata.pvs.b: bl:E is read under a already"),
        ({"a b": "bl:E"}, "metadata.pvs: 'a b' is not a key name"),
        ({"energy": ["bl:E"]}, "metadata.pvs.energy: expected text"),
    ],
)
def test_each_metadata_problem_names_its_key(base, pvs, said):
    found = problems(config(metadata={"pvs": pvs}), base)
    assert any(problem.startswith(said) for problem in found), found
