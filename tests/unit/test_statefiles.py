"""Every state file an earlier umask left readable is made private at start; other files are left alone."""

from __future__ import annotations

import os
import stat

from dmagic_ioc.ioc.statefiles import STATE_FILES, tighten_state


def test_every_state_file_the_walks_queue_included_is_tightened_and_nothing_else(tmp_path):
    for name in (*STATE_FILES, "registry.sqlite-wal", "notes.txt"):
        (tmp_path / name).write_text("x")
        os.chmod(tmp_path / name, 0o644)
    assert "walks.json" in STATE_FILES
    assert tighten_state(tmp_path) == []
    for name in (*STATE_FILES, "registry.sqlite-wal"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "notes.txt").stat().st_mode) == 0o644
