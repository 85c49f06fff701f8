"""Fixtures of the fault tests: a small disk of its own (tmpfs) to fill, unmount or swap."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., Path]]:
    """`tmpfs(folder, size="64m")` mounts a tmpfs of that size on `folder` (made if missing) and returns it;
    whatever is still mounted is unmounted at the end. Mounting needs root (CI runs the suite as root):
    the test skips elsewhere, or where the mount fails."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    mounted: list[Path] = []

    def mount(point: Path, size: str = "64m") -> Path:
        point.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "dmagic-test", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            if os.path.ismount(point):
                subprocess.run(["umount", "-l", str(point)], check=False)
