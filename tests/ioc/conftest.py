"""The in-process rig (a DMagicIOC on fake adapters) for every test module of this folder."""

from .test_groups import rig  # noqa: F401
