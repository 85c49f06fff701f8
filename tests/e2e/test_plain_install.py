"""A plain `pip install .` (no extras) into a fresh venv, started as the README says, read with its clients.

What a new user does first: the README's first command, then its client examples as written. The test
extras (numpy through pyepics, ...) are not in that venv, so whatever the server needs must come with
the package itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ..helpers import REPO, wait_for
from ..loopback import EPICS_PORTS, epics_env

pytestmark = pytest.mark.e2e

NON_ASCII = {  # the demo's text PVs that hold letters outside ASCII, and what they must read
    "Users:Names": "Jean-Luc D'Arcy,Zoë Müller-Łukasiewicz,Sven Øberg",
    "UserLastName": "D'Arcy",
    "UserInstitution": "Laboratoire Exemple",
}


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory):
    """`python3 -m venv .venv && .venv/bin/pip install .` in a folder of its own."""
    home = tmp_path_factory.mktemp("plain")
    subprocess.run([sys.executable, "-m", "venv", str(home / ".venv")], check=True)
    pip = [str(home / ".venv/bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(REPO)], check=True, timeout=600)
    return home


@pytest.fixture(scope="module")
def demo(plain_venv):
    """The demo as the README starts it (`.venv/bin/dmagic-ioc`), on the session's loopback port."""
    env = {**os.environ, **epics_env(EPICS_PORTS[0]), "DMAGIC_DEMO_DIR": str(plain_venv / "demo")}
    env.pop("PYTHONPATH", None)
    log = (plain_venv / "demo.log").open("wb")
    process = subprocess.Popen([str(plain_venv / ".venv/bin/dmagic-ioc")], cwd=plain_venv, env=env,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def answered():
        assert process.poll() is None, (plain_venv / "demo.log").read_text()
        return run(plain_venv, env, ".venv/bin/caproto-get -t demo:DM:Heartbeat").returncode == 0

    wait_for(answered, timeout=30, interval=0.2, what="the demo's Heartbeat")
    yield plain_venv, env
    process.terminate()
    process.wait(10)
    log.close()


def run(home, env, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True, text=True, timeout=60)


def test_the_plain_install_has_no_test_extras(plain_venv):
    pip_list = subprocess.run([str(plain_venv / ".venv/bin/python"), "-m", "pip", "list"], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    assert "pyepics" not in pip_list and "pytest" not in pip_list


def test_non_ascii_text_reads_through_caproto_on_a_plain_install(demo):
    home, env = demo
    check = (
        "from caproto.sync.client import read\n"
        f"for name in {list(NON_ASCII)!r}:\n"
        "    data = read('demo:DM:' + name, repeater=False, timeout=5).data\n"
        "    print(name + '=' + bytes(data).split(b'\\0')[0].decode())\n"
    )
    result = subprocess.run([str(home / ".venv/bin/python"), "-c", check], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert dict(line.split("=", 1) for line in result.stdout.splitlines()) == NON_ASCII


def readme_client_examples() -> list[str]:
    """The commands of the README's first client block, as written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("With the demo running", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_client_examples_work_as_written(demo):
    home, env = demo
    examples = readme_client_examples()
    assert len(examples) >= 4
    outputs = []
    for command in examples:
        result = run(home, env, command)
        assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
        assert "ECA_" not in result.stdout + result.stderr, command
        outputs.append(result.stdout)
    text = "\n".join(outputs)
    assert "Fast 4D imaging of foam coarsening" in text
    assert re.search(r"created experiment \S+-DArcy-1013377", text), text
    assert "Zoë Müller-Łukasiewicz" in text  # through iconv, as the README says
