"""One experiment at 10,000, 100,000 and 1,000,000 files: what each step of a beamtime costs as it grows.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--out docs]

Each size runs in a fresh process (so that its peak RSS is its own), on empty files in a temporary
folder of the local disk, spread over scan folders of 1,000 to 10,000 files as a tomography beamtime
writes them. The IOC's own pieces do the work: the config is the bundled demo's with
`dm.posix.user_account: d{badge}` and SciCat on (a stand-in on 127.0.0.1, in a process of its own);
the adapters are those `dmagic-ioc` builds from it; commands run through `handle(HANDLERS, ...)`,
as the supervisor runs them. Refresh and Create make the experiment; then the files, empty, in storage
as a transfer leaves them, and each one's raw file as a hard link to it (the same size and mtime:
the first scan finds every copy whole); the raw names go after DaqStop, before the ACL walks (which
leave a file of more than one link alone). Timed:

- first scan: from DaqStart until Daq:FilesDone counts every file: the transfer lists every folder,
  stats every file, finds its copy whole in storage (one stat: nothing copied) and adds its ledger row;
- poll, nothing new: the median of five polls of the running transfer (`poll_seconds`: the folders
  stat'ed, a 1,000-file audit), 3 s after the first scan;
- poll, one new file: the poll that finds a file written into the last scan folder (that folder listed);
- DaqStop: the handler: the transfer stopped (its ledger committed), the file list read from the
  ledger, the record written into storage and the SciCat dataset queued;
- SciCat send: from DaqStop's end until the catalogue's queue is empty (sent by its own thread);
- ledger on disk: the transfer ledger's files after DaqStop; RSS: VmRSS after the first scan, and
  VmHWM (the peak) at the end of the size's process;
- AddUser and RemoveUser of a throwaway account (made with useradd for the run, removed after): the
  handler (LocalDM: its ACL entry on the storage folder), and until the walk it leaves in the
  background (the entry on every folder and file) has ended (`Walks.progress`);
- Delete: the handler (the storage renamed aside, the ledger's rows forgotten), and until the walk
  that removes the storage has ended;
- `dmagic-ioc --check` on the config (the installed command, a subprocess).

Printed: a table (step x size) and each step's exponent (the slope of log value against log files
between the smallest and the largest size); drawn: a log-log plot, `scale.png` in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import yaml
from dmagic_ioc.adapters.dm import acl
from dmagic_ioc.ioc.__main__ import build_adapters
from dmagic_ioc.ioc.app.commands import HANDLERS
from dmagic_ioc.ioc.app.handling import handle
from dmagic_ioc.ioc.app.messages import (
    AddUser,
    Command,
    Create,
    DaqStart,
    DaqStop,
    Delete,
    ReadSelection,
    Refresh,
    RemoveUser,
)
from dmagic_ioc.ioc.app.services import Services
from dmagic_ioc.ioc.app.state import BeamlineState
from dmagic_ioc.ioc.demo import write_demo
from dmagic_ioc.ioc.settings.load import load_config

REPO = Path(__file__).resolve().parents[1]
BADGE = "999023"  # the throwaway account is d999023
ACCOUNT = f"d{BADGE}"
SCAN_FILES = (1_000, 1_500, 3_000, 6_000, 10_000)  # files per scan folder, in turn
MAKERS = 4  # threads making the files
# At 1,000,000 files (issue 23); a command holds the others back for at most a second.
TARGETS = {"poll_idle": 0.05, "peak_rss": 400.0, "daq_stop": 5.0, "add_user": 1.0, "remove_user": 1.0, "delete": 1.0}

# (key, label, unit)
STEPS = (
    ("first_scan", "first scan (DaqStart until every file is known)", "s"),
    ("poll_idle", "poll, nothing new", "s"),
    ("poll_new", "poll, one new file", "s"),
    ("daq_stop", "DaqStop (dataset and record)", "s"),
    ("scicat_send", "SciCat send (background, after DaqStop)", "s"),
    ("add_user", "AddUser (the command)", "s"),
    ("add_user_walk", "AddUser, until its ACL walk ended", "s"),
    ("remove_user", "RemoveUser (the command)", "s"),
    ("remove_user_walk", "RemoveUser, until its ACL walk ended", "s"),
    ("delete", "Delete (the command)", "s"),
    ("delete_walk", "Delete, until the storage is removed", "s"),
    ("check", "dmagic-ioc --check", "s"),
    ("ledger", "ledger on disk", "MB"),
    ("rss", "RSS after the first scan", "MB"),
    ("peak_rss", "peak RSS", "MB"),
)

STANDIN = """
import json, sys
from tests.scicat_standin import ScicatStandIn
with ScicatStandIn() as standin:
    print(json.dumps({"url": standin.url, "username": standin.username, "password": standin.password}), flush=True)
    sys.stdin.read()
"""


def say(size: int, text: str) -> None:
    print(f"[{size:>9,}] {text}", flush=True)


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of this process, in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field} in /proc/self/status")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(step)


def timed(work: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    said = work()
    return time.perf_counter() - started, said


def scans(files: int) -> Iterator[tuple[str, int]]:
    """(scan folder name, files in it) adding up to `files`."""
    number = 0
    while files > 0:
        count = min(files, SCAN_FILES[number % len(SCAN_FILES)])
        number += 1
        files -= count
        yield f"scan_{number:04d}", count


def make_files(size: int, raw: Path, copies: Path) -> int:
    """`size` empty files in storage, as the transfer leaves them, each with its raw file; the number of scans.

    A raw file is a hard link to its copy: the same size and mtime, so the first scan finds every copy
    whole (nothing to copy), and one inode made per file, not two. The raw names go after DaqStop
    (`remove_raw`), before the ACL walks, which leave a file of more than one link alone. Made by a
    few threads, one scan folder each: the kernel's work, not Python's.
    """
    made, started, shown = 0, time.monotonic(), 0
    listed = list(scans(size))
    with ThreadPoolExecutor(MAKERS) as makers:
        for count in makers.map(lambda scan: make_scan(raw / scan[0], copies / scan[0], scan[1]), listed):
            made += count
            if made * 10 // size > shown:
                shown = made * 10 // size
                say(size, f"making files: {made:,} ({time.monotonic() - started:.0f} s)")
    return len(listed)


def make_scan(raw: Path, copies: Path, count: int) -> int:
    raw.mkdir()
    copies.mkdir()
    raw_fd = os.open(raw, os.O_RDONLY | os.O_DIRECTORY)
    copy_fd = os.open(copies, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index in range(count):
            name = f"proj_{index:05d}.tif"
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=copy_fd))
            os.link(name, name, src_dir_fd=copy_fd, dst_dir_fd=raw_fd)
    finally:
        os.close(raw_fd)
        os.close(copy_fd)
    return count


def remove_raw(raw: Path) -> None:
    """The raw files (the storage's copies keep their data), leaving the raw folder as Create made it."""
    for scan in raw.iterdir():
        shutil.rmtree(scan)


@contextlib.contextmanager
def scicat_standin() -> Iterator[dict]:
    """The SciCat stand-in of the tests, in a process of its own (what it holds is not this one's RSS)."""
    process = subprocess.Popen([sys.executable, "-c", STANDIN], cwd=REPO, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def write_config(folder: Path, standin: dict) -> Path:
    """The bundled demo's config, with user ACLs and SciCat on (the stand-in)."""
    path = write_demo(folder, date.today())
    config = yaml.safe_load(path.read_text())
    credentials = folder / "scicat.cred"
    credentials.write_text(f"{standin['username']}|{standin['password']}\n")
    credentials.chmod(0o600)
    config["ioc"]["state_dir"] = str(folder / "state")
    config["dm"].update(data_top_dir=str(folder / "data"), storage_root=str(folder / "storage"),
                        posix={"user_account": "d{badge}"})  # fmt: skip
    config["scicat"] = {"enabled": True, "url": standin["url"], "credentials": str(credentials),
                        "owner_group": "p{gup}", "access_groups": ["ingestor"], "creation_location": "APS/2-BM-A,B",
                        "contact_email": "2bm-staff@aps.anl.gov", "source_folder_host": "data.aps.anl.gov"}  # fmt: skip
    for made in ("data", "storage"):
        (folder / made).mkdir(exist_ok=True)  # the demo writes them
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


class Beamline:
    """The IOC's adapters from a config, and its state as the handlers leave it."""

    def __init__(self, config: Path):
        self.settings = load_config(config)
        self.adapters = build_adapters(self.settings)
        self.services = Services(self.settings, self.adapters)
        self.state = BeamlineState()

    def run(self, command: Command) -> str:
        """Run `command`'s handler as the supervisor does; its outcome's message (raises what it raised)."""
        result = handle(HANDLERS, self.services, self.state, command)
        self.state = result.state
        if result.error is not None:
            raise result.error
        assert result.outcome is not None
        return result.outcome.message


def ledger_mb(state_dir: Path) -> float:
    return sum(path.stat().st_size for path in state_dir.glob("transfers.sqlite*")) / 1e6


def has_acl_entry(path: Path, uid: int) -> bool:
    try:
        return (acl.USER, uid) in acl.decode(os.getxattr(path, acl.ACCESS))
    except OSError:
        return False  # no ACL at all


def measure(size: int) -> dict:
    """Every step at `size` files, in this process; the figures by step key."""
    figures: dict = {"files": size}
    with tempfile.TemporaryDirectory(prefix="dmagic-scale-") as folder, scicat_standin() as standin:
        top = Path(folder)
        config = write_config(top, standin)
        beamline = Beamline(config)
        for command in (ReadSelection(), Refresh(), Create()):
            beamline.run(command)
        experiment = beamline.state.experiment
        assert experiment is not None
        raw, storage = Path(experiment.data_directory), Path(experiment.storage_directory)
        figures["make_files"], figures["folders"] = timed(lambda: make_files(size, raw, storage / "data"))
        os.sync()
        say(size, f"made {size:,} files in {figures['folders']} scans and their copies in "
                  f"{figures['make_files']:.0f} s; {experiment.name}")  # fmt: skip
        transfer_steps(size, beamline, raw / list(scans(size))[-1][0], figures)
        removed, _ = timed(lambda: remove_raw(raw))
        say(size, f"removed the raw files in {removed:.0f} s: each copy in storage has one link now")
        walk_steps(size, beamline, storage, figures)
        figures["check"] = check(config)
        say(size, f"--check {figures['check']:.2f} s")
        figures["delete"], figures["delete_walk"], said = walked(beamline, Delete(confirm=experiment.name))
        left = [files for _, _, files in os.walk(beamline.settings.dm.storage_root) if files]
        assert not storage.exists() and not left, f"{said}; left in storage: {left}"
        say(size, f"Delete {figures['delete']:.2f} s, storage removed after {figures['delete_walk']:.2f} s ({said})")
        beamline.adapters.transfer.close()
        figures["peak_rss"] = memory_mb("VmHWM")
    return figures


def transfer_steps(size: int, beamline: Beamline, last_scan: Path, figures: dict) -> None:
    """DaqStart's first scan, two polls, DaqStop's dataset and record, SciCat's send, the ledger."""
    transfer = beamline.adapters.transfer
    started = time.perf_counter()
    beamline.run(DaqStart())
    wait_until(lambda: transfer.progress().files_done >= size, 3600, "the first scan", step=0.02)
    figures["first_scan"] = time.perf_counter() - started
    figures["rss"] = memory_mb("VmRSS")
    say(size, f"first scan {figures['first_scan']:.2f} s, RSS {figures['rss']:.0f} MB")
    figures["poll_idle"] = idle_poll(transfer)
    figures["poll_new"] = new_file_poll(transfer, last_scan, size)
    say(size, f"polls: nothing new {figures['poll_idle'] * 1e3:.1f} ms, "
              f"one new file {figures['poll_new'] * 1e3:.1f} ms")  # fmt: skip

    figures["daq_stop"], said = timed(lambda: beamline.run(DaqStop()))
    assert f"{size + 1} files" in str(said).replace(",", ""), said  # the new file too
    catalogue = beamline.adapters.catalogue
    assert catalogue is not None
    started = time.perf_counter()
    wait_until(lambda: catalogue.status().pending == 0, 3600, "the dataset sent to SciCat", step=0.05)
    figures["scicat_send"] = time.perf_counter() - started
    sent = catalogue.status()
    assert sent.answered and sent.last_pid, sent
    figures["ledger"] = ledger_mb(beamline.settings.ioc.state_dir)
    say(size, f"DaqStop {figures['daq_stop']:.2f} s ({said}); SciCat send {figures['scicat_send']:.2f} s; "
              f"ledger {figures['ledger']:.1f} MB")  # fmt: skip


def idle_poll(transfer) -> float:
    """The median of five polls that find nothing new, once every folder is past the recheck the scan
    gives a folder for 2 s after listing it (against coarse timestamps)."""
    time.sleep(3.0)
    return statistics.median(next_poll(transfer) for _ in range(5))


def next_poll(transfer) -> float:
    """The seconds of the transfer's next poll."""
    last = transfer.poll_seconds
    wait_until(lambda: transfer.poll_seconds != last, 30, "a poll")
    return transfer.poll_seconds


def new_file_poll(transfer, folder: Path, size: int) -> float:
    """The poll that finds a new file in `folder` (it lists that folder again); waits for the file sent."""
    (folder / "proj_new.tif").write_bytes(b"x" * 4096)
    wait_until(lambda: transfer.progress().files_total > size, 60, "the poll that finds the new file")
    seconds = transfer.poll_seconds  # set by that poll before the progress counted the file
    wait_until(lambda: transfer.progress().files_done > size, 60, "the new file sent")
    return seconds


def walk_steps(size: int, beamline: Beamline, storage: Path, figures: dict) -> None:
    """AddUser and RemoveUser of the throwaway account: its ACL entry on every folder and file."""
    try:
        uid = pwd.getpwnam(ACCOUNT).pw_uid
    except KeyError:
        say(size, f"no account {ACCOUNT} (useradd needs root): AddUser's and RemoveUser's ACLs not measured")
        return
    sample = storage / "data" / "scan_0001" / "proj_00000.tif"
    figures["add_user"], figures["add_user_walk"], said = walked(beamline, AddUser(badges=BADGE))
    assert has_acl_entry(sample, uid), f"{said}; {sample} has no entry for {ACCOUNT}"
    figures["remove_user"], figures["remove_user_walk"], said = walked(beamline, RemoveUser(badges=BADGE))
    assert not has_acl_entry(sample, uid), f"{said}; {sample} still has the entry for {ACCOUNT}"
    say(size, f"AddUser {figures['add_user']:.2f} s, its ACLs {figures['add_user_walk']:.2f} s; "
              f"RemoveUser {figures['remove_user']:.2f} s, its ACLs {figures['remove_user_walk']:.2f} s")  # fmt: skip


def walked(beamline: Beamline, command: Command) -> tuple[float, float, str]:
    """(seconds of `command`'s handler, seconds until the walks it left in the background ended, its outcome)."""
    started = time.perf_counter()
    said = beamline.run(command)
    held = time.perf_counter() - started
    walks = beamline.adapters.walks
    if walks is not None:
        wait_until(lambda: idle(walks.progress()), 3600, f"the walk of {command.name}", step=0.01)
        ended = walks.progress().ended
        if ended and ended[-1].failed:
            raise RuntimeError(f"the walk of {command.name} failed: {ended[-1].message}")
    return held, time.perf_counter() - started, said


def idle(progress) -> bool:
    return not progress.doing and not progress.waiting


def check(config: Path) -> float:
    """Seconds of `dmagic-ioc --check` on `config` (the command installed beside this Python)."""
    command = Path(sys.executable).with_name("dmagic-ioc")
    found = str(command) if command.exists() else shutil.which("dmagic-ioc")
    if found is None:
        raise RuntimeError("dmagic-ioc is not installed: pip install -e .[bench]")
    seconds, done = timed(lambda: subprocess.run([found, "--check", "--config", str(config)],
                                                 capture_output=True, text=True))  # fmt: skip
    assert isinstance(done, subprocess.CompletedProcess)
    if done.returncode != 0:
        raise RuntimeError(f"dmagic-ioc --check failed: {done.stdout}{done.stderr}")
    return seconds


# ---------------------------------------------------------------- the sizes, the table, the plot


@contextlib.contextmanager
def throwaway_account() -> Iterator[None]:
    """The unix account AddUser gives access to (d + the badge), made for the run and removed after."""
    made = False
    try:
        pwd.getpwnam(ACCOUNT)
    except KeyError:
        try:
            useradd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment",
                       "dmagic-ioc benchmark, throwaway", ACCOUNT]  # fmt: skip
            made = subprocess.run(useradd, capture_output=True).returncode == 0
        except FileNotFoundError:
            made = False
    try:
        yield
    finally:
        if made:
            subprocess.run(["userdel", ACCOUNT], check=False)


def run_size(size: int) -> dict:
    """`size` measured in a fresh process (its peak RSS its own); its progress shown as it comes."""
    process = subprocess.Popen([sys.executable, __file__, "--one", str(size)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    figures = None
    for line in process.stdout:
        if line.startswith("RESULT "):
            figures = json.loads(line.removeprefix("RESULT "))
        else:
            print(line, end="", flush=True)
    if process.wait() != 0 or figures is None:
        raise SystemExit(f"the run at {size:,} files failed")
    return figures


def exponent(sizes: list[int], values: list[float | None]) -> float | None:
    """The slope of log value against log files between the smallest and the largest size."""
    if len(sizes) < 2 or not values[0] or not values[-1]:
        return None
    return math.log(values[-1] / values[0]) / math.log(sizes[-1] / sizes[0])


def shown(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(results: list[dict]) -> str:
    """The figures as a Markdown table: a step a row, a size a column, the step's exponent last."""
    sizes = [figures["files"] for figures in results]
    rows = ["| step | unit | " + " | ".join(f"{size:,} files" for size in sizes) + " | exponent |",
            "|---|---|" + "---:|" * (len(sizes) + 1)]  # fmt: skip
    for key, label, unit in STEPS:
        values = [figures.get(key) for figures in results]
        slope = exponent(sizes, values)
        cells = " | ".join(shown(value) for value in values)
        rows.append(f"| {label} | {unit} | {cells} | {'-' if slope is None else f'{slope:.2f}'} |")
    return "\n".join(rows)


def verdicts(results: list[dict]) -> str:
    """The issue's targets at 1,000,000 files, met or missed ('' without that size)."""
    largest = results[-1]
    if largest["files"] != 1_000_000:
        return ""
    labels = {key: label for key, label, _ in STEPS}
    said = []
    for key, target in TARGETS.items():
        value = largest.get(key)
        verdict = "not measured" if value is None else "met" if value < target else "MISSED"
        unit = "MB" if key.endswith("rss") else "s"
        said.append(f"{labels[key]} < {target:g} {unit}: {shown(value)} {unit}, {verdict}")
    return "targets at 1,000,000 files: " + "; ".join(said)


def plot(results: list[dict], path: Path) -> None:
    """Seconds and MB against files, log-log, each step labelled with its exponent; the targets dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [figures["files"] for figures in results]
    figure, (seconds, megabytes) = plt.subplots(1, 2, figsize=(13, 6.5))
    tab20 = plt.get_cmap("tab20").colors
    palettes, colors = {seconds: iter(tab20[::2] + tab20[1::2]), megabytes: iter(tab20[::2])}, {}
    for key, label, unit in STEPS:
        values = [figures.get(key) for figures in results]
        points = [(size, value) for size, value in zip(sizes, values, strict=True) if value]
        if not points:
            continue
        slope = exponent(sizes, values)
        command = key.removesuffix("_walk")  # a command and the walk it leaves: one colour, the walk dashed
        axis = seconds if unit == "s" else megabytes
        color = colors.setdefault(command, next(palettes[axis]))
        axis.loglog(*zip(*points, strict=True), marker="o", color=color, linestyle="--" if key != command else "-",
                    label=label + ("" if slope is None else f": n^{slope:.2f}"))  # fmt: skip
    lines = (
        (seconds, TARGETS["poll_idle"], "poll target"),
        (seconds, TARGETS["delete"], "command target"),
        (seconds, TARGETS["daq_stop"], "DaqStop target"),
        (megabytes, TARGETS["peak_rss"], "RSS target"),
    )
    for axis, target, what in lines:
        axis.axhline(target, color="grey", linestyle=":", linewidth=1)
        axis.annotate(f"{what} at 1M", (sizes[0], target), fontsize=7, color="grey", va="bottom")
    for axis, unit in ((seconds, "seconds"), (megabytes, "MB")):
        axis.set_xlabel("files in the experiment")
        axis.set_ylabel(unit)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    figure.suptitle(f"dmagic-ioc: one experiment from {sizes[0]:,} to {sizes[-1]:,} files ({os.cpu_count()} cores)")
    figure.savefig(path, dpi=100, bbox_inches="tight")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="files in the experiment, comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="folder of the plot, scale.png")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args()
    if args.one:
        import logging

        logging.basicConfig(level=logging.ERROR, format="    log: %(levelname)s %(name)s: %(message)s")
        print("RESULT " + json.dumps(measure(args.one)), flush=True)
        return 0
    sizes = sorted(int(size) for size in args.sizes.split(","))
    started = time.monotonic()
    with throwaway_account():
        results = [run_size(size) for size in sizes]
    print()
    print(table(results))
    print("\n".join(f"setup at {figures['files']:,} files: {figures['folders']} scans, files made in "
                    f"{figures['make_files']:.0f} s" for figures in results))  # fmt: skip
    if said := verdicts(results):
        print(said)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "scale.png")
    print(f"plot: {args.out / 'scale.png'}; whole run {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
