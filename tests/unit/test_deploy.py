"""The deployment examples stay in step with the config loader."""

from __future__ import annotations

import pytest
import yaml
from dmagic_ioc.ioc.settings.load import ConfigError, settings_from_dict

from ..helpers import REPO

DEPLOY = REPO / "deploy"


def test_example_config_has_every_key_right():
    """Only the files it names (absent here) are problems: no unknown key, no wrong type."""
    raw = yaml.safe_load((DEPLOY / "config.example.yaml").read_text(encoding="utf-8"))
    with pytest.raises(ConfigError) as error:
        settings_from_dict(raw, base=DEPLOY)
    assert all("cannot read /etc/dmagic-ioc/" in problem for problem in error.value.problems), error.value.problems


def test_service_checks_the_config_before_starting():
    unit = (DEPLOY / "dmagic-ioc.service").read_text(encoding="utf-8")
    assert "ExecStartPre=" in unit and "--check" in unit
