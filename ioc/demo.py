"""The bundled demo: a file schedule with a beamtime around today and a local DM in a user folder.

`dmagic-ioc` without `--config` writes `config.yaml` and `schedule.yaml` into
the demo folder (`$DMAGIC_DEMO_DIR`, else `~/.local/state/dmagic-ioc/demo`,
else a temporary folder) and starts on them, so a new user sees real values at
once and has a working config to copy. `--check` and `--print-pvs` without
`--config` write them to a temporary folder that is removed afterwards.

E-mail and Tag work in the demo too: `Email` writes each message into
`outbox/` of the demo folder (no mail server needed), and `Tag` writes into
`demo:TomoScan:`, which `python -m dmagic_ioc.ioc.tools.tomoscan_target`
serves (tomoScan's user-info PVs).
"""

from __future__ import annotations

import os
import tempfile
from datetime import date, timedelta
from pathlib import Path

import yaml

DEMO_PREFIX = "demo:DM:"
DEMO_TAG_PREFIX = "demo:TomoScan:"  # what `python -m dmagic_ioc.ioc.tools.tomoscan_target` serves by default

PEOPLE = [
    {"badge": 310010, "first_name": "Zoë", "last_name": "Müller-Łukasiewicz", "email": "zoe.mueller@example.de",
     "institution": "Universität Beispielstadt"},
    {"badge": 310011, "first_name": "Jean-Luc", "last_name": "D'Arcy", "email": "jl.darcy@example.fr",
     "institution": "Laboratoire Exemple", "pi": True},
    {"badge": 310012, "first_name": "Sven", "last_name": "Øberg", "email": "sven.oberg@example.se",
     "institution": "Exempel University"},
]  # fmt: skip


def demo_folder() -> Path:
    """The first writable of $DMAGIC_DEMO_DIR, the user's state folder, a temporary folder."""
    chosen = os.environ.get("DMAGIC_DEMO_DIR")
    candidates = [Path(chosen)] if chosen else []
    for folder in [*candidates, Path.home() / ".local/state/dmagic-ioc/demo"]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="dmagic-ioc-demo-"))


def write_demo(folder: Path, today: date) -> Path:
    """Write the demo schedule (beamtimes around `today`) and config; return the config's path."""

    def day(offset: int) -> str:
        return f"{today + timedelta(days=offset)} 08:00"

    schedule = {
        "runs": [{"name": f"{today.year}-demo", "start": day(-60), "end": day(60)}],
        "beamtimes": [
            {"gup": 1012039, "title": "Operando X-ray tomography of lithium dendrite growth in solid-state "
             "batteries under fast charging", "type": "General User", "start": day(-9), "end": day(-6),
             "esaf": 281001, "people": [
                 {"badge": 310001, "first_name": "Mei", "last_name": "Li", "email": "mei.li@example.edu",
                  "institution": "Example State University", "pi": True},
                 {"badge": 310003, "first_name": "Amara", "last_name": "Okafor",
                  "institution": "Example National Laboratory"}]},
            {"gup": 1013377, "title": "Fast 4D imaging of foam coarsening", "type": "General User",
             "start": day(-2), "end": day(3), "esaf": 281002, "mail_in": True, "people": PEOPLE},
            {"gup": 1014002, "title": "Beamline commissioning: new fast camera", "type": "Staff",
             "start": day(5), "end": day(8), "people": [
                 {"badge": 100001, "first_name": "Ada", "last_name": "Staff", "email": "ada.staff@example.gov",
                  "institution": "Example Light Source"}]},
        ],
    }  # fmt: skip
    config = {
        "ioc": {"prefix": DEMO_PREFIX, "state_dir": "state"},
        "beamline": {"name": "2-BM-A,B", "station": "2BM", "timezone": "America/Chicago", "contacts": [100001]},
        "scheduling": {"backend": "file", "path": "schedule.yaml", "refresh_period": 600},
        "dm": {"backend": "local", "data_host": "localhost", "data_top_dir": "data", "storage_root": "storage"},
        "email": {"enabled": True, "sender": "2-BM demo <dmagic-ioc@localhost>", "outbox": "outbox"},
        "tag": {"prefix": DEMO_TAG_PREFIX},
    }
    for name in ("state", "data", "storage", "outbox"):
        (folder / name).mkdir(exist_ok=True)
    (folder / "schedule.yaml").write_text(yaml.safe_dump(schedule, allow_unicode=True, sort_keys=False), "utf-8")
    config_path = folder / "config.yaml"
    header = "# dmagic-ioc demo config, written at each demo start; copy it to make your own.\n"
    config_path.write_text(header + yaml.safe_dump(config, sort_keys=False), "utf-8")
    return config_path
