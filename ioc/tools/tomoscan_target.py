"""A stand-in for tomoScan's user-info PVs, so that Tag can be tried from the demo.

    python -m dmagic_ioc.ioc.tools.tomoscan_target                # demo:TomoScan:*, UDP port 5066
    EPICS_CA_ADDR_LIST=127.0.0.1:5066 dmagic-ioc                  # the demo; its Tag writes there

It serves the PVs tomoScan's databases declare for the user information
(`tomoScan_*.template`), with their names, types and sizes: `stringout`
records (40 bytes, 39 usable) and two 256-element CHAR waveforms
(`UserInstitution`, `ProposalTitle`). The values are kept as bytes, as EPICS
base keeps them, and read back with `caget -S`. A caproto look-alike for
trying things, not the counterpart of record: the project's tests meet
tomoScan's records in EPICS base.

Two Channel Access servers on one host answer a search sent to one address
only when they listen on different UDP ports: this one takes `--port`
(default `$EPICS_CAS_SERVER_PORT`, else 5066), and the demo's own clients
find it through `EPICS_CA_ADDR_LIST`.
"""

from __future__ import annotations

import os
import sys

from caproto import ChannelType
from caproto.server import PVGroup, PvpropertyChar, pvproperty, run, template_arg_parser

from ..epics.logs import quiet_expected_errors
from ..epics.pvs import wire_bytes

DEFAULT_PREFIX = "demo:TomoScan:"
DEFAULT_PORT = 5066
WAVEFORM_ELEMENTS = 256  # tomoScan's UserInstitution and ProposalTitle: waveform, FTVL CHAR, NELM 256


def _stringout(name: str) -> pvproperty:
    """A stringout as tomoScan declares it: `VAL "Unknown"`. Latin-1 keeps whatever bytes are written."""
    return pvproperty(name=name, value="Unknown", dtype=ChannelType.STRING, doc=f"tomoScan {name} (stringout)")


class RawChar(PvpropertyChar):
    """A CHAR waveform that keeps the bytes written up to the first NUL, as EPICS base does: one NUL clears it
    (caproto's own conversion fails on it)."""

    async def write_from_dbr(self, data, data_type, metadata, *, flags=0):
        raw = wire_bytes(data, data_type)
        if raw is None:  # a number
            return await super().write_from_dbr(data, data_type, metadata, flags=flags)
        return await self.write(raw.decode(self.string_encoding), flags=flags)


def _char_waveform(name: str) -> pvproperty:
    """A waveform of 256 CHAR, empty at start."""
    return pvproperty(name=name, value="", dtype=ChannelType.CHAR, max_length=WAVEFORM_ELEMENTS,
                      doc=f"tomoScan {name} (waveform, FTVL CHAR, NELM {WAVEFORM_ELEMENTS})")  # fmt: skip


class TomoScanUserInfo(PVGroup):
    """tomoScan's user-information PVs: what dmagic-ioc's Tag writes."""

    type_map = {**PVGroup.type_map, ChannelType.CHAR: RawChar}

    user_name = _stringout("UserName")
    user_last_name = _stringout("UserLastName")
    user_email = _stringout("UserEmail")
    user_badge = _stringout("UserBadge")
    user_institution = _char_waveform("UserInstitution")
    user_info_update = _stringout("UserInfoUpdate")
    proposal_number = _stringout("ProposalNumber")
    proposal_title = _char_waveform("ProposalTitle")
    esaf_number = _stringout("ESAFNumber")
    experiment_year_month = _stringout("ExperimentYearMonth")


def main(argv: list[str] | None = None) -> None:
    parser, split_args = template_arg_parser(
        default_prefix=DEFAULT_PREFIX, desc=__doc__.splitlines()[0], supported_async_libs=["asyncio"], argv=argv
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("EPICS_CAS_SERVER_PORT") or DEFAULT_PORT),
        help=f"UDP port to answer searches on (default: $EPICS_CAS_SERVER_PORT, else {DEFAULT_PORT})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    # caproto's server takes its port from EPICS_CA_SERVER_PORT (EPICS base servers from EPICS_CAS_SERVER_PORT)
    os.environ["EPICS_CA_SERVER_PORT"] = os.environ["EPICS_CAS_SERVER_PORT"] = str(args.port)
    ioc_options, run_options = split_args(args)
    ioc = TomoScanUserInfo(**ioc_options)
    print(f"tomoscan_target: serving {len(ioc.pvdb)} PVs under {ioc_options['prefix']} on UDP port {args.port}; "
          f"clients find them with EPICS_CA_ADDR_LIST=127.0.0.1:{args.port}", file=sys.stderr)  # fmt: skip
    quiet_expected_errors()  # a beacon nobody listens for is one line, not a traceback each time
    run(ioc.pvdb, **run_options)


if __name__ == "__main__":
    main()
