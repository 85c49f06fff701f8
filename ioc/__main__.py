"""`dmagic-ioc`: parse arguments, load the config, build the adapters, run the IOC."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import signal
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from caproto.server import template_arg_parser

from .app.services import Adapters, Services
from .app.supervisor import Supervisor
from .demo import demo_folder, write_demo
from .domain.errors import DMagicError
from .domain.naming import plural
from .domain.ports import Access, DataManagement, Mailer, SchedulingSource, Transfer, Walks
from .epics.audit import open_audit_log
from .epics.caserver.context import serve
from .epics.declarations import every_pv
from .epics.groups.status import package_version
from .epics.logs import quiet_expected_errors
from .epics.server import DMagicIOC, StartupProblem
from .settings.load import ConfigError, load_config
from .settings.preflight import preflight_problems
from .settings.rules import prefix_warning
from .settings.schema import Settings
from .statefiles import PrivateRotatingFileHandler, StateDirInUse, lock_state_dir, private_dir, tighten_state

log = logging.getLogger("dmagic_ioc")


def build_adapters(settings: Settings) -> Adapters:
    """The adapters the config selects; each backend's modules are imported only when chosen."""
    from ..adapters.records import StorageRecords
    from ..adapters.registry.store import Registry
    from ..adapters.tag import CaTag

    state_dir = settings.ioc.state_dir
    registry = Registry(state_dir / "registry.sqlite")
    dm_cfg, tz = settings.dm, settings.beamline.tz

    scheduling: SchedulingSource
    if settings.scheduling.backend == "aps":
        from ..adapters.aps_scheduling import ApsScheduling

        scheduling = ApsScheduling(
            settings.scheduling.url, settings.beamline.name, settings.scheduling.credentials,
            settings.scheduling.timeout, tz, allow_insecure=settings.scheduling.allow_insecure,
        )  # fmt: skip
    else:
        from ..adapters.schedule_file import FileSchedule

        assert settings.scheduling.path is not None  # the config requires it of the file backend
        scheduling = FileSchedule(settings.scheduling.path, tz)

    dm: DataManagement
    transfer: Transfer | None
    walks: Walks | None = None
    if dm_cfg.backend == "aps":
        from ..adapters.dm.aps import ApsDM
        from ..adapters.dm.aps_daq import ApsDaq

        dm = ApsDM(settings.beamline.station, dm_cfg.data_top_dir, tz=tz)
        transfer = ApsDaq(settings.beamline.station, dm_cfg.data_top_dir, dm_cfg.data_host,
                          found_record=state_dir / "dm-files.sqlite")  # fmt: skip
    else:
        from ..adapters.dm.local import LocalDM
        from ..adapters.dm.walks import StorageWalks

        walks = StorageWalks(state_dir / "walks.json")
        dm = LocalDM(registry, dm_cfg.storage_root, dm_cfg.data_top_dir, dm_cfg.data_host, dm_cfg.group,
                     layout=dm_cfg.layout, subdirs=dm_cfg.subdirs, beamline=settings.beamline.name,
                     posix_group=dm_cfg.posix.group, user_account=dm_cfg.posix.user_account,
                     staff_groups=dm_cfg.posix.staff_groups, walks=walks)  # fmt: skip
        transfer = None

    access: Access | None = None
    if settings.globus.enabled:
        from ..adapters.globus.access import GlobusAccess
        from ..adapters.globus.transfer import GlobusTransfer

        g = settings.globus
        access = GlobusAccess(g.collection_id, g.client_id, g.client_secret_file, dm_cfg.storage_root)
        if dm_cfg.transfer == "globus":
            transfer = GlobusTransfer(access, g.source_collection_id, state_dir / "globus-transfer.json")
    if transfer is None:
        from ..adapters.transfer.local import LocalTransfer

        transfer = LocalTransfer(
            state_dir / "transfers.sqlite", settle_time=dm_cfg.settle_time, checksum=dm_cfg.checksum,
            workers=dm_cfg.transfer_workers, source_top=dm_cfg.data_top_dir,
        )  # fmt: skip

    mailer: Mailer | None = None
    if settings.email.enabled:
        from ..adapters.email import OutboxMailer, SmtpMailer
        from ..adapters.email_message import load_template

        e = settings.email
        template = load_template(e.template)  # a bad template is refused at start
        if e.outbox is not None:
            mailer = OutboxMailer(e.outbox, template=template, sender=e.sender)
        else:
            mailer = SmtpMailer(e.smtp_host, e.smtp_port, starttls=e.starttls, credentials=e.credentials,
                                template=template, sender=e.sender, allow_insecure=e.allow_insecure)  # fmt: skip

    metadata = None
    if settings.metadata.pvs:
        from ..adapters.metadata import CaMetadata

        metadata = CaMetadata()

    catalogue = None
    if settings.scicat.enabled:
        from ..adapters.scicat.catalogue import ScicatCatalogue
        from ..adapters.scicat.client import ScicatClient

        s = settings.scicat
        assert s.credentials is not None  # the config requires it when scicat.enabled
        catalogue = ScicatCatalogue(ScicatClient(s.url, s.credentials, s.timeout), state_dir / "catalog.sqlite")

    return Adapters(scheduling=scheduling, dm=dm, state=registry, transfer=transfer, tag=CaTag(),
                    access=access, mailer=mailer, metadata=metadata, catalogue=catalogue,
                    records=StorageRecords(), walks=walks)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """caproto's standard server options (--interfaces, --list-pvs, -v, ...) plus ours."""
    caproto_parser, _ = template_arg_parser(
        desc="dmagic-ioc: the beamline's scheduling and data management as EPICS PVs",
        default_prefix="",
        argv=argv,
        supported_async_libs=["asyncio"],
    )
    # caproto's options through `parents`; "resolve" lets our --prefix (with its help) replace caproto's.
    parser = argparse.ArgumentParser(
        prog="dmagic-ioc", description=caproto_parser.description, epilog=caproto_parser.epilog,
        parents=[caproto_parser], conflict_handler="resolve",
    )  # fmt: skip
    parser.add_argument("--prefix", default="", help="PV prefix, e.g. 2bmb:DM: (default: ioc.prefix of the config)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--config", type=Path, help="YAML config (default: the bundled demo)")
    parser.add_argument(
        "--check", action="store_true",
        help="validate the config, its files and folders (what Create and the transfer need), then exit",
    )  # fmt: skip
    parser.add_argument("--print-pvs", action="store_true", help="print every PV name, one a line, and exit")
    return parser.parse_args(argv)


def state_problems(settings: Settings, registry) -> list[StartupProblem]:
    """What the IOC's state looked like at start: a registry kept aside (DM:Health Error), an
    empty registry beside a storage root that holds experiments. Runs before the event loop."""
    problems = []
    if registry.problem:
        problems.append(StartupProblem(registry.problem, system="DM"))
    if settings.dm.backend == "local":
        empty = registry.storage_problem(settings.dm.storage_root, advice=not registry.problem)
        if empty:
            problems.append(StartupProblem(empty))
    return problems


def check(config_path: Path, prefix: str, *, demo: bool) -> int:
    """`--check`: every problem of the config and of what it names on this machine, all at once."""
    settings, problems = None, []
    try:
        settings = load_config(config_path)
    except ConfigError as error:
        settings, problems = error.settings, list(error.problems)
    if settings is not None:
        named = {_key(problem) for problem in problems}
        problems += [p for p in preflight_problems(settings) if _key(p) not in named]
    if problems:
        print_problems(problems)
        return 2
    assert settings is not None  # load_config returned it, or raised with problems
    what = "the bundled demo config" if demo else f"config {settings.source}"
    prefix = prefix or settings.ioc.prefix
    print(f"dmagic-ioc: {what} is valid (prefix {prefix})")
    if warning := prefix_warning(prefix):
        print(f"dmagic-ioc: warning: {warning}", file=sys.stderr)
    return 0


def _key(problem: str) -> str:
    return problem.split(":", 1)[0]


def print_problems(problems: list[str]) -> None:
    print(f"dmagic-ioc: the config has {plural(len(problems), 'problem')}:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def demo_today():
    """Today where the demo's beamline is, so its beamtimes surround now."""
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo("America/Chicago")).date()


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
        private_dir(state_dir / "logs")
        file = PrivateRotatingFileHandler(state_dir / "logs/dmagic-ioc.log", maxBytes=5_000_000,
                                          backupCount=5, encoding="utf-8")  # fmt: skip
    except OSError as error:
        log.warning("no log file in %s: %s", state_dir, error)
        return
    file.setFormatter(fmt)
    root.addHandler(file)
    try:
        open_audit_log(state_dir)
    except OSError as error:
        log.warning("no audit log in %s: %s", state_dir / "logs", error)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.config is None and (args.check or args.print_pvs):
        # They only look at the demo: written to a temporary folder, gone afterwards.
        with tempfile.TemporaryDirectory(prefix="dmagic-ioc-demo-") as folder:
            return run_on(args, write_demo(Path(folder), demo_today()))
    if args.config is None:
        config_path = write_demo(demo_folder(), demo_today())
        print(f"dmagic-ioc: no --config, starting the demo from {config_path}", file=sys.stderr)
        return run_on(args, config_path)
    return run_on(args, args.config)


def run_on(args: argparse.Namespace, config_path: Path) -> int:
    """Check, list the PVs of, or serve the config at `config_path`."""
    if args.check:
        return check(config_path, args.prefix, demo=args.config is None)
    try:
        settings = load_config(config_path)
    except ConfigError as error:
        print_problems(error.problems)
        return 2
    prefix = args.prefix or settings.ioc.prefix
    if (warning := prefix_warning(prefix)) and not args.print_pvs:
        print(f"dmagic-ioc: warning: {warning}", file=sys.stderr)

    if args.print_pvs:
        print("\n".join(prefix + pv.name for pv in every_pv()))
        return 0

    state_dir = settings.ioc.state_dir
    try:
        private_dir(state_dir.resolve())  # the configured folder may be a link; nothing in it is followed
        lock_state_dir(state_dir)  # held until the process ends: its descriptor is never closed
    except (StateDirInUse, OSError) as error:
        print(f"dmagic-ioc: cannot start: {error}", file=sys.stderr)
        return 1
    setup_logging(state_dir, args.quiet, args.verbose)
    quiet_expected_errors()
    try:
        adapters = build_adapters(settings)
        problems = state_problems(settings, adapters.state)
    except (DMagicError, OSError) as error:
        log.error("cannot start: %s", error)
        return 1
    for failure in tighten_state(state_dir):  # files an earlier version or another umask left readable
        log.warning("state file still readable by others: %s", failure)
    supervisor = Supervisor(Services(settings, adapters))
    ioc = DMagicIOC(prefix, supervisor=supervisor, startup_problems=problems)
    signal.signal(signal.SIGTERM, _interrupt)  # systemd stops with SIGTERM: shut down cleanly
    log.info("dmagic-ioc %s serving %d PVs under %s", package_version(), len(ioc.pvdb), prefix)
    serve(ioc.pvdb, write_access=ioc.write_access, max_circuits_per_host=settings.ioc.access.max_circuits_per_host,
          startup_hook=with_pva(ioc, settings), interfaces=args.interfaces, log_pv_names=args.list_pvs)  # fmt: skip
    return 0


def with_pva(ioc: DMagicIOC, settings: Settings):
    """The IOC's startup hook, serving its PVs over PV Access too (on caproto's event loop) while the IOC runs,
    when `pva.enabled`; without p4p that is one log line and Channel Access alone."""
    if not settings.pva.enabled:
        return ioc.startup
    try:
        from .epics.pvaserver import PvaServer
    except ImportError as error:
        log.warning("PV Access not served: %s (pip install 'dmagic-ioc[pva]', or pva.enabled: false); "
                    "Channel Access only", error)  # fmt: skip
        return ioc.startup
    pva = PvaServer(ioc.pvdb, write_access=ioc.write_access)

    async def startup(async_lib) -> None:
        await pva.start()
        try:
            await ioc.startup(async_lib)
        finally:
            pva.stop()

    return startup


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
