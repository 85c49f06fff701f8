"""A path provider for ophyd-async detectors: files go into the selected experiment's `DataDirectory`.

That is the folder the IOC's transfer (DaqStart, Upload) sends into the experiment's storage. The
provider reads `DataDirectory` from the IOC at every call, so a detector prepared after a `Select`
writes into the newly selected experiment, with no monitor that could still hold the previous one.

ophyd-async calls a path provider synchronously from the event loop that runs the plan, where no
coroutine can be awaited; the read runs on an event loop of its own in a worker thread and the call
waits for it (a few milliseconds on a beamline network).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import PurePosixPath
from typing import Any, TypeVar

from ophyd_async.core import FilenameProvider, PathInfo, PathProvider, SignalR, UUIDFilenameProvider

from .commands import loud
from .devices import DataManagement

T = TypeVar("T")
READ_TIMEOUT = 5.0  # seconds the read of DataDirectory may take


class ExperimentPathProvider(PathProvider):
    """Detector files in `dm.data_directory`, read at each call; file names from `filename_provider` (UUIDs)."""

    def __init__(
        self,
        dm: DataManagement,
        filename_provider: FilenameProvider | None = None,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self._data_directory: SignalR[str] = dm.data_directory
        self._filename_provider = filename_provider or UUIDFilenameProvider()
        self._timeout = timeout

    def __call__(self, datakey_name: str | None = None) -> PathInfo:
        return PathInfo(
            directory_path=PurePosixPath(self.data_directory()),
            filename=self._filename_provider(datakey_name),
        )

    def data_directory(self) -> str:
        """The IOC's `DataDirectory` now; an error when no experiment is selected."""
        signal = self._data_directory
        directory = _worker.run(signal.get_value(cached=False), self._timeout)
        if not directory:
            raise RuntimeError(f"{signal.source}: empty, no experiment is selected (Create or Select one)")
        return directory


class _LoopThread:
    """An event loop in a daemon thread, started at first use, where synchronous callers run coroutines."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="dmagic-ioc-paths", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(loud(coroutine), self._loop).result(timeout)


_worker = _LoopThread()
