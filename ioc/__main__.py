"""`dmagic-ioc`: parse arguments, load the config, build the adapters, run the IOC."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
from datetime import datetime
from pathlib import Path

from caproto.asyncio.server import run
from caproto.server import template_arg_parser

from .app import Adapters, Beamline
from .config import ConfigError, Settings, load_config
from .demo import demo_folder, write_demo
from .model import DMagicError
from .server import DMagicIOC

log = logging.getLogger("dmagic_ioc")


def build_adapters(settings: Settings) -> Adapters:
    """The adapters the config selects; each backend's modules are imported only when chosen."""
    from ..adapters.registry import Registry
    from ..adapters.tag import CaTag

    state_dir = settings.ioc.state_dir
    registry = Registry(state_dir / "registry.sqlite")
    dm_cfg, tz = settings.dm, settings.beamline.tz

    if settings.scheduling.backend == "aps":
        from ..adapters.aps_scheduling import ApsScheduling

        scheduling = ApsScheduling(
            settings.scheduling.url, settings.beamline.name, settings.scheduling.credentials,
            settings.scheduling.timeout, tz,
        )  # fmt: skip
    else:
        from ..adapters.schedule_file import FileSchedule

        scheduling = FileSchedule(settings.scheduling.path, tz)

    if dm_cfg.backend == "aps":
        from ..adapters.aps_dm import ApsDaq, ApsDM

        dm = ApsDM(settings.beamline.station, dm_cfg.data_top_dir, tz=tz)
        transfer = ApsDaq(settings.beamline.station, dm_cfg.data_top_dir, dm_cfg.data_host)
    else:
        from ..adapters.local_dm import LocalDM

        dm = LocalDM(registry, dm_cfg.storage_root, dm_cfg.data_top_dir, dm_cfg.data_host, dm_cfg.group)
        transfer = None

    access = None
    if settings.globus.enabled:
        from ..adapters.globus import GlobusAccess, GlobusTransfer

        g = settings.globus
        access = GlobusAccess(g.collection_id, g.client_id, g.client_secret_file, dm_cfg.storage_root)
        if dm_cfg.transfer == "globus":
            transfer = GlobusTransfer(access, g.source_collection_id, state_dir / "globus-transfer.json")
    if transfer is None:
        from ..adapters.transfer import LocalTransfer

        transfer = LocalTransfer(
            state_dir / "transfers.sqlite", settle_time=dm_cfg.settle_time, checksum=dm_cfg.checksum,
            workers=dm_cfg.transfer_workers,
        )  # fmt: skip

    mailer, template = None, ""
    if settings.email.enabled:
        from ..adapters.email import SmtpMailer, load_template

        e = settings.email
        mailer = SmtpMailer(e.smtp_host, e.smtp_port, starttls=e.starttls, credentials=e.credentials)
        template = load_template(e.template)  # a bad template is refused at startup, not at the first Email

    return Adapters(scheduling=scheduling, dm=dm, state=registry, transfer=transfer, tag=CaTag(),
                    access=access, mailer=mailer, email_template=template)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """caproto's standard server options (--interfaces, --list-pvs, -v, ...) plus ours."""
    parser, _ = template_arg_parser(
        desc="dmagic-ioc: the beamline's scheduling and data management as EPICS PVs",
        default_prefix="",
        argv=argv,
        supported_async_libs=["asyncio"],
    )
    parser.add_argument("--config", type=Path, help="YAML config (default: the bundled demo)")
    parser.add_argument("--check", action="store_true", help="validate the config and its credentials files, then exit")
    parser.add_argument("--print-pvs", action="store_true", help="print every PV name, one a line, and exit")
    return parser.parse_args(argv)


def load(args) -> Settings:
    if args.config is None:
        from zoneinfo import ZoneInfo

        folder = demo_folder()
        config_path = write_demo(folder, datetime.now(ZoneInfo("America/Chicago")).date())
        print(f"dmagic-ioc: no --config, starting the demo from {config_path}", file=sys.stderr)
    else:
        config_path = args.config
    return load_config(config_path)


def setup_logging(state_dir: Path, quiet: bool, verbose: int | None) -> None:
    """Log to stderr and to a rotating file in state_dir."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    stream.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root.addHandler(stream)
    try:
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)
        file = logging.handlers.RotatingFileHandler(state_dir / "logs/dmagic-ioc.log", maxBytes=5_000_000,
                                                    backupCount=5, encoding="utf-8")  # fmt: skip
    except OSError as error:
        log.warning("no log file in %s: %s", state_dir, error)
        return
    file.setFormatter(fmt)
    root.addHandler(file)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load(args)
    except ConfigError as error:
        print(f"dmagic-ioc: the config has {len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    prefix = args.prefix or settings.ioc.prefix
    if args.check:
        print(f"dmagic-ioc: config {settings.source} is valid (prefix {prefix})")
        return 0

    if args.print_pvs:
        ioc = DMagicIOC(prefix, app=Beamline(settings, adapters=None))
        print("\n".join(ioc.pvdb))
        return 0

    setup_logging(settings.ioc.state_dir, args.quiet, args.verbose)
    try:
        settings.ioc.state_dir.mkdir(parents=True, exist_ok=True)
        app = Beamline(settings, build_adapters(settings))
    except (DMagicError, OSError) as error:
        log.error("cannot start: %s", error)
        return 1
    ioc = DMagicIOC(prefix, app=app)
    signal.signal(signal.SIGTERM, _interrupt)  # systemd stops with SIGTERM: shut down cleanly
    log.info("dmagic-ioc %s serving %d PVs under %s", ioc.status.version.value, len(ioc.pvdb), prefix)
    run(ioc.pvdb, startup_hook=ioc.startup, interfaces=args.interfaces, log_pv_names=args.list_pvs)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
