"""An EPICS base IOC (pythonSoftIOC) serving the records of the database files named on its command line.

The tests run it in a subprocess to meet EPICS base records rather than a
caproto look-alike (see tests/e2e/epics_base.py, which starts it):

    python tests/e2e/softioc_target.py --db tests/data/tomoscan_user_info.db --macros P=ts1:,R=TomoScan:

It takes its Channel Access addresses and ports from the environment and
serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, action="append", required=True, help="a database file (repeatable)")
    parser.add_argument("--macros", default="", help="macro substitutions for every file, e.g. P=ts1:,R=TomoScan:")
    parser.add_argument("--acf", type=Path, help="an access security file")
    args = parser.parse_args(argv)

    # Imported here: loading EPICS base is this process's business, not that of a module importing this one.
    from epicscorelibs.ioc import iocshCmd
    from softioc import asyncio_dispatcher, softioc

    if args.acf is not None:
        iocshCmd(f'asSetFilename("{args.acf.resolve()}")'.encode())
    for database in args.db:
        softioc.dbLoadDatabase(str(database.resolve()), substitutions=args.macros)
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher(), enable_pva=False)
    softioc.non_interactive_ioc()


if __name__ == "__main__":
    main()
