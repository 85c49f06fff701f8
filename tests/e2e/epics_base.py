"""Start a target IOC in a subprocess for a test: EPICS base (tests/e2e/softioc_target.py, pythonSoftIOC) or another.

It serves on the session's second Channel Access port (conftest.EPICS_PORTS[1])
unless told another, with every address pinned to loopback, is ready once a PV
of its own answers (polled, never a fixed sleep), and stops with SIGINT, then a
kill. `CAReader` reads what the targets hold, as bytes.
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

from ..loopback import EPICS_PORTS, epics_env

SCRIPT = Path(__file__).with_name("softioc_target.py")
STARTUP_TIMEOUT = 30.0


class IOCProcess:
    """One IOC in a subprocess serving on `server_port`, ready once `ready_pv` reads; a context manager."""

    what = "the IOC"

    def __init__(self, command: list[str], ready_pv: str, log_path: Path, server_port: int = EPICS_PORTS[1]):
        self.command = command
        self.ready_pv = ready_pv
        self.log_path = log_path
        self.server_port = server_port
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> IOCProcess:
        env = {**os.environ, **epics_env(self.server_port)}
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
                    raise AssertionError(f"{self.what} exited with {self.process.returncode}:\n{self.log()}")
                context.broadcaster.search_now()  # search again now rather than after the client's back-off
                try:
                    pv.read(timeout=0.25)
                    return time.monotonic() - started
                except TimeoutError:
                    if time.monotonic() - started > STARTUP_TIMEOUT:
                        raise AssertionError(
                            f"{self.what} did not serve {self.ready_pv} within {STARTUP_TIMEOUT:g} s:\n{self.log()}"
                        ) from None
        finally:
            context.disconnect()

    def stop(self) -> None:
        """SIGINT, then a kill if it has not ended within 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


class SoftIOC(IOCProcess):
    """An EPICS base IOC (softioc_target.py) serving `databases` with `macros` on the second CA port."""

    what = "the EPICS base IOC"

    def __init__(
        self,
        databases: Sequence[Path],
        macros: dict[str, str],
        ready_pv: str,
        log_path: Path,
        acf: Path | None = None,
    ):
        command = [sys.executable, str(SCRIPT), "--macros", ",".join(f"{k}={v}" for k, v in macros.items())]
        for database in databases:
            command += ["--db", str(database)]
        if acf is not None:
            command += ["--acf", str(acf)]
        super().__init__(command, ready_pv, log_path)


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
