"""Throwaway unix groups for the tests of filesystem ownership: made with a unique prefix, removed after.

Only root can make them: `needs_root` skips a test elsewhere, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("groupadd") is None,
    reason="makes throwaway unix groups: needs root and groupadd",
)


def unique_prefix() -> str:
    """A prefix no group on this host has: `dmt` and 5 hex digits."""
    return f"dmt{uuid.uuid4().hex[:5]}"


@contextlib.contextmanager
def throwaway_group(name: str) -> Iterator[str]:
    """Unix group `name`, removed at the end whatever happens."""
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)
