"""Start the installed `dmagic-ioc` in a subprocess and talk to it with pyepics (libca)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import epics
import yaml

from ..helpers import CA_TIMEOUT, wait_for
from ..loopback import EPICS_PORTS, epics_env

STARTUP_TIMEOUT = 20.0
# The installed console script: beside this interpreter (a venv), else on PATH.
DMAGIC_IOC = (
    str(Path(sys.executable).with_name("dmagic-ioc"))
    if Path(sys.executable).with_name("dmagic-ioc").exists()
    else (shutil.which("dmagic-ioc") or "dmagic-ioc")
)


def base_config(tmp: Path, schedule: Path) -> dict:
    """A file-schedule, local-DM config entirely under `tmp`."""
    for folder in ("data", "storage"):
        (tmp / folder).mkdir(exist_ok=True)
    return {
        "ioc": {"prefix": "unused:", "state_dir": str(tmp / "state")},
        "beamline": {"name": "2-BM-A,B", "station": "2BM", "timezone": "America/Chicago", "contacts": [100001]},
        "scheduling": {"backend": "file", "path": str(schedule), "refresh_period": 0},
        "dm": {
            "backend": "local",
            "data_host": "localhost",
            "data_top_dir": str(tmp / "data"),
            "storage_root": str(tmp / "storage"),
            "settle_time": 0.3,
        },
    }


def write_schedule(folder: Path, schedule: dict) -> Path:
    """`schedule` written as the file backend reads it, to `folder`/schedule.yaml."""
    path = folder / "schedule.yaml"
    path.write_text(yaml.safe_dump(schedule, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


class IOC:
    """One running dmagic-ioc, with a random prefix, on the session's loopback port."""

    def __init__(self, config: dict, tmp: Path, extra_env: dict | None = None):
        self.tmp = tmp
        self.prefix = f"t{uuid.uuid4().hex[:8]}:"
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        self.log_path = tmp / f"ioc-{self.prefix[:-1]}.log"
        self.env = {**os.environ, **epics_env(EPICS_PORTS[0]), **(extra_env or {})}
        self.process: subprocess.Popen | None = None
        self._pvs: dict[str, epics.PV] = {}

    def start(self) -> IOC:
        command = [DMAGIC_IOC, "--config", str(self.config_path), "--prefix", self.prefix]
        self.started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.wait_ready()
        return self

    def wait_ready(self) -> float:
        """Poll Heartbeat until it answers; return the seconds from start."""

        def answered():
            if self.process.poll() is not None:
                raise AssertionError(f"dmagic-ioc exited with {self.process.returncode}:\n{self.log()}")
            return epics.PV(self.prefix + "Heartbeat", auto_monitor=False).wait_for_connection(0.5)

        wait_for(answered, STARTUP_TIMEOUT, interval=0.1, what=f"{self.prefix}Heartbeat")
        self.startup_seconds = time.monotonic() - self.started
        return self.startup_seconds

    def stop(self, sig=signal.SIGINT) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    # ---------------------------------------------------------------- CA access

    def pv(self, name: str) -> epics.PV:
        """A connected PV (after a restart, a cached one waits until it has reconnected)."""
        full = self.prefix + name
        if full not in self._pvs:
            self._pvs[full] = epics.PV(full, auto_monitor=False)
        pv = self._pvs[full]
        if not pv.wait_for_connection(CA_TIMEOUT):
            raise AssertionError(f"{full} did not connect")
        return pv

    def get(self, name: str):
        """Read a PV now (no monitor cache); text comes back as str, decoded as UTF-8."""
        pv = self.pv(name)
        if pv.type.endswith("char") or pv.type == "char":
            raw = pv.get(use_monitor=False, as_numpy=False, timeout=CA_TIMEOUT)
            raw = [raw] if isinstance(raw, int) else raw
            return bytes(b & 0xFF for b in raw).split(b"\0")[0].decode("utf-8")
        if pv.type.endswith("enum"):
            return pv.get(use_monitor=False, as_string=True, timeout=CA_TIMEOUT)
        return pv.get(use_monitor=False, timeout=CA_TIMEOUT)  # DBR_STRING: pyepics decodes UTF-8 itself

    def severity(self, name: str) -> int:
        return self.pv(name).get_with_metadata(use_monitor=False, form="time", timeout=CA_TIMEOUT)["severity"]

    def put(self, name: str, value, wait: bool = True, timeout: float = 30.0):
        """Write a PV; text goes as UTF-8 bytes (pyepics would send Latin-1)."""
        pv = self.pv(name)
        if isinstance(value, str) and (pv.type.endswith("char") or pv.type == "char"):
            value = list(value.encode("utf-8")) + [0]
        return pv.put(value, wait=wait, timeout=timeout)

    def command(self, name: str, timeout: float = 30.0) -> tuple[str, int]:
        """Run a command with put completion; return (Status, its severity)."""
        self.put(name, 1, wait=True, timeout=timeout)
        return self.get("Status"), self.severity("Status")

    def __enter__(self) -> IOC:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        for pv in self._pvs.values():
            pv.disconnect()
