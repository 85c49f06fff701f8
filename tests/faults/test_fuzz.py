"""A hostile client: every writable PV written with every CA data type and wild values.

Bounded to about two thousand puts. Ends with the IOC alive, Heartbeat ticking, every PV of the contract
readable, nothing written outside storage and the state folder, and the same after a restart (autosave
brings back whatever the fuzz left in the settings).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from caproto import CaprotoError, ChannelType
from caproto.sync.client import write as caproto_write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..e2e.fixtures import SCHEDULE
from ..e2e.harness import IOC, base_config, write_schedule
from ..helpers import CA_TIMEOUT, contract_pvs, wait_for

pytestmark = pytest.mark.faults

# Tag waits seconds for an absent target at a random prefix: left out to keep the run short, not for safety.
WRITABLE = [name for name, _, _, access in contract_pvs() if access == "RW" and name != "Tag"]
PUTS_PER_EXAMPLE = 40
EXAMPLES = 50

wild_text = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"", b"\0", b"..", b"../../etc", b"1", b"Busy", b"nan", b"-inf", b"1e308", b"\xff\xfe"]),
)
wild_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.sampled_from([0, 1, 2, -1, 7, 255, 1e-9, 3660, 86400]),
)


@st.composite
def a_put(draw):
    """(PV, data, data type): any type, one value or a short array."""
    name = draw(st.sampled_from(WRITABLE))
    data_type = draw(st.sampled_from([ChannelType.STRING, ChannelType.CHAR, ChannelType.INT, ChannelType.LONG,
                                      ChannelType.FLOAT, ChannelType.DOUBLE, ChannelType.ENUM]))  # fmt: skip
    count = draw(st.integers(min_value=0, max_value=3))
    if data_type == ChannelType.STRING:
        data = [draw(wild_text)[:39] for _ in range(max(count, 1))]
    elif data_type == ChannelType.CHAR:
        data = draw(wild_text)
    else:
        numbers = [draw(wild_number) for _ in range(max(count, 1))]
        if data_type in (ChannelType.INT, ChannelType.LONG, ChannelType.ENUM):
            limit = {ChannelType.INT: 2**15, ChannelType.ENUM: 2**15, ChannelType.LONG: 2**31}[data_type]
            numbers = [int(n) % limit if n == n and abs(n) != float("inf") else 0 for n in numbers]
        elif data_type == ChannelType.FLOAT:
            numbers = [n if abs(n) < 3e38 or n != n else 3e38 for n in numbers]
        data = numbers
    return name, data, data_type


def files_outside(tmp: Path, kept: tuple[str, ...]) -> set[str]:
    """Every file under `tmp` but for the folders the IOC may write in and the test's own logs."""
    found = set()
    for folder, _, files in os.walk(tmp):
        relative = Path(folder).relative_to(tmp)
        if relative.parts[:1] and relative.parts[0] in kept:
            continue
        found.update(str(relative / f) for f in files if not f.startswith("ioc-"))
    return found


def all_readable(ioc: IOC) -> None:
    for name, *_ in contract_pvs():
        ioc.get(name)  # raises when a PV cannot be read


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    config = base_config(tmp, write_schedule(tmp, SCHEDULE))
    with IOC(config, tmp) as ioc:
        yield ioc, tmp


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])  # fmt: skip
@given(puts=st.lists(a_put(), min_size=PUTS_PER_EXAMPLE, max_size=PUTS_PER_EXAMPLE))
def test_no_put_stops_the_ioc_or_makes_a_pv_unreadable(fuzzed, puts):
    ioc, _ = fuzzed
    for name, data, data_type in puts:
        with contextlib.suppress(CaprotoError):  # refused or not: what matters is what follows
            caproto_write(ioc.prefix + name, data, notify=True, data_type=data_type, timeout=CA_TIMEOUT,
                          repeater=False)  # fmt: skip
        assert ioc.process.poll() is None, f"the IOC died after {name} <- {data!r} as {data_type.name}:\n{ioc.log()}"
    all_readable(ioc)


def test_after_the_fuzz_it_lives_and_lives_again_after_a_restart(fuzzed):
    ioc, tmp = fuzzed
    outside = files_outside(tmp, kept=("state", "storage"))
    assert outside <= {"config.yaml", "schedule.yaml"}, outside  # nothing written into data/ or elsewhere
    beat = ioc.get("Heartbeat")
    wait_for(lambda: ioc.get("Heartbeat") > beat + 1, timeout=5, what="Heartbeat ticking")
    all_readable(ioc)
    ioc.stop()
    ioc.start()  # autosaved settings from the fuzz come back
    beat = ioc.get("Heartbeat")
    wait_for(lambda: ioc.get("Heartbeat") > beat + 1, timeout=5, what="Heartbeat ticking after a restart")
    all_readable(ioc)
    assert "Traceback" not in ioc.log(), ioc.log()  # tracebacks are for bugs
