"""Start an EPICS base IOC (tests/e2e/softioc_target.py, pythonSoftIOC) in a subprocess for a test.

It serves on the session's second Channel Access port (conftest.EPICS_PORTS[1])
with every address pinned to loopback, is ready once a PV of its own answers
(polled, never a fixed sleep), and stops with SIGINT, then a kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from caproto import ChannelType
from caproto.threading.client import Context, SharedBroadcaster

from ..conftest import EPICS_PORTS, epics_env

SCRIPT = Path(__file__).with_name("softioc_target.py")
STARTUP_TIMEOUT = 30.0


class SoftIOC:
    """One EPICS base IOC serving `databases` with `macros`; use as a context manager."""

    def __init__(
        self,
        databases: Sequence[Path],
        macros: dict[str, str],
        ready_pv: str,
        log_path: Path,
        acf: Path | None = None,
    ):
        self.command = [sys.executable, str(SCRIPT), "--macros", ",".join(f"{k}={v}" for k, v in macros.items())]
        for database in databases:
            self.command += ["--db", str(database)]
        if acf is not None:
            self.command += ["--acf", str(acf)]
        self.ready_pv = ready_pv
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SoftIOC:
        env = {**os.environ, **epics_env(EPICS_PORTS[1])}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def wait_ready(self) -> float:
        """Poll `ready_pv` until it reads; return the seconds it took. Fails early if the IOC exits."""
        started = time.monotonic()
        context = Context(SharedBroadcaster())
        try:
            (pv,) = context.get_pvs(self.ready_pv, timeout=0.25)
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"EPICS base IOC exited with {self.process.returncode}:\n{self.log()}")
                context.broadcaster.search_now()  # search again now rather than after the client's back-off
                try:
                    pv.read(timeout=0.25)
                    return time.monotonic() - started
                except TimeoutError:
                    if time.monotonic() - started > STARTUP_TIMEOUT:
                        raise AssertionError(
                            f"EPICS base IOC did not serve {self.ready_pv} within {STARTUP_TIMEOUT:g} s:\n{self.log()}"
                        ) from None
        finally:
            context.disconnect()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class CAReader:
    """A caproto client of the test's own that reads PVs as raw bytes: what the record holds, undecoded."""

    def __init__(self):
        self.context = Context(SharedBroadcaster(), timeout=5.0)

    def close(self) -> None:
        # Searches still unanswered are cancelled first: one sent while the context closes fails in caproto's thread.
        self.context.broadcaster.cancel(*(name for name, _ in list(self.context.pvs)))
        self.context.disconnect()

    def pv(self, name: str):
        (pv,) = self.context.get_pvs(name, timeout=5.0)
        pv.wait_for_connection(timeout=5.0)
        return pv

    def raw(self, name: str) -> bytes:
        """A stringout's value (DBR_STRING, up to its NUL), or a CHAR waveform's elements (all NORD of them)."""
        pv = self.pv(name)
        if pv.channel.native_data_type == ChannelType.CHAR:
            return bytes(pv.read(data_type=ChannelType.CHAR).data)
        return bytes(pv.read(data_type=ChannelType.STRING).data[0])

    def text(self, name: str) -> str:
        """The value as text, decoded as UTF-8 (strict: a split character fails the test)."""
        return self.raw(name).split(b"\0", 1)[0].decode("utf-8")

    def write(self, name: str, value: str) -> None:
        """Write `value` in the record's own form (UTF-8; NUL-terminated for a CHAR waveform)."""
        pv = self.pv(name)
        if pv.channel.native_data_type == ChannelType.CHAR:
            data = value.encode() + b"\0"
            response = pv.write(data, wait=True, data_type=ChannelType.CHAR, data_count=len(data))
        else:
            response = pv.write([value.encode()], wait=True, data_type=ChannelType.STRING, data_count=1)
        assert response.status.success, f"{name}: {response.status.name}"
