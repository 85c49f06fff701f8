"""The Bluesky example of docs/bluesky.md, as written, against the demo as the README starts it (`dmagic-ioc`, no
config); and the same over PV Access (`DataManagement("pva://demo:DM:")`), as docs/bluesky.md says it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..e2e.harness import DMAGIC_IOC
from ..helpers import REPO, wait_for
from ..loopback import EPICS_PORTS, epics_env

pytest.importorskip("ophyd_async", reason="the bluesky extra is not installed: pip install '.[bluesky]'")


def readme_example() -> str:
    """The first Python block of docs/bluesky.md."""
    page = (REPO / "docs" / "bluesky.md").read_text(encoding="utf-8")
    return page.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("protocol", ["", "pva://"], ids=["as-written", "over-pva"])
def test_the_readme_example_runs_as_written_against_the_demo(tmp_path, protocol):
    if protocol:
        pytest.importorskip("p4p", reason="PV Access needs p4p: pip install '.[pva]'")
    example = readme_example()
    assert example.count('DataManagement("demo:DM:")') == 1
    env = {**os.environ, **epics_env(EPICS_PORTS[0]), "DMAGIC_DEMO_DIR": str(tmp_path / "demo")}
    with (tmp_path / "demo.log").open("wb") as log:
        demo = subprocess.Popen([DMAGIC_IOC], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            probe = [sys.executable, "-c", "from caproto.sync.client import read; read('demo:DM:Heartbeat', "
                     "repeater=False, timeout=1)"]  # fmt: skip
            wait_for(lambda: subprocess.run(probe, env=env, capture_output=True).returncode == 0, 30,
                     what="the demo's Heartbeat")  # fmt: skip
            script = tmp_path / "example.py"
            over = example.replace('DataManagement("demo:DM:")', f'DataManagement("{protocol}demo:DM:")')
            script.write_text(over, encoding="utf-8")
            run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                                 timeout=120, cwd=tmp_path)  # fmt: skip
        finally:
            demo.terminate()
            demo.wait(10)
    assert run.returncode == 0, run.stdout + run.stderr
    start_line, files_line = run.stdout.strip().splitlines()[-2:]
    proposal, esaf, *rest = start_line.split()
    assert (proposal, esaf) == ("1013377", "281002") and "D'Arcy" in start_line, start_line
    storage = Path(start_line.split()[-1])
    assert storage.is_dir() and storage.name.endswith("-DArcy-1013377")  # the demo schedules around today
    assert "data/" in files_line and ".h5" in files_line, files_line
