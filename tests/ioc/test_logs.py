"""caproto's beacon failure, said once per address with advice that fits the EPICS environment set."""

from __future__ import annotations

import errno
import logging

import caproto as ca
import pytest
from dmagic_ioc.ioc.epics.logs import BeaconFailures, beacon_failure

LOOPBACK = {"EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_BEACON_PORT": "5999", "EPICS_CA_REPEATER_PORT": "5999"}  # fmt: skip


def caproto_error(cause: OSError) -> ca.CaprotoNetworkError:
    """What caproto's UDP transport raises: its own error, the socket's as the cause."""
    try:
        raise ca.CaprotoNetworkError("Failed to send to 127.0.0.1:5999") from cause
    except ca.CaprotoNetworkError as error:
        return error


def beacon_record(address, error: Exception) -> logging.LogRecord:
    """caproto's record of a beacon it could not send (`log.exception` in its beacon loop)."""
    msg = ("Failed to send beacon to %r. Try setting EPICS_CAS_AUTO_BEACON_ADDR_LIST=no and "
           "EPICS_CAS_BEACON_ADDR_LIST=<addresses>.")  # fmt: skip
    return logging.LogRecord("caproto.ctx", logging.ERROR, __file__, 1, msg, (address,),
                             (type(error), error, error.__traceback__))  # fmt: skip


def test_nothing_listening_is_a_harmless_warning_once_without_caprotos_advice():
    beacons = BeaconFailures(LOOPBACK)
    refused = caproto_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    record = beacon_record(("127.0.0.1", 5999), refused)
    assert beacons.filter(record)
    line = record.getMessage()
    assert line == ("beacons: nothing listens on 127.0.0.1:5999 (no caRepeater running); harmless for clients "
                    "that search (said once per address)")  # fmt: skip
    assert record.levelname == "WARNING" and record.exc_info is None and "Try setting" not in line
    assert not beacons.filter(beacon_record(("127.0.0.1", 5999), refused))  # once per address
    assert beacons.filter(beacon_record(("127.0.0.2", 5999), refused))


def test_a_beacon_port_other_than_the_repeaters_is_named():
    environ = {name: value for name, value in LOOPBACK.items() if name != "EPICS_CAS_BEACON_PORT"}
    harmless, line = beacon_failure(("127.0.0.1", 5065), ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
                                    environ)  # fmt: skip
    assert harmless and "set EPICS_CAS_BEACON_PORT=5999" in line and "EPICS_CA_REPEATER_PORT 5999" in line
    _, line = beacon_failure(("127.0.0.1", 5065), ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
                             {**LOOPBACK, "EPICS_CAS_BEACON_PORT": "5065"})  # fmt: skip
    assert "EPICS_CAS_BEACON_PORT 5065 differs from EPICS_CA_REPEATER_PORT 5999" in line


@pytest.mark.parametrize(
    ("environ", "address", "advice"),
    [
        ({}, "255.255.255.255", "set EPICS_CAS_AUTO_BEACON_ADDR_LIST=NO and EPICS_CAS_BEACON_ADDR_LIST to the"),
        ({"EPICS_CAS_BEACON_ADDR_LIST": "10.0.0.255"}, "255.255.255.255",
         "set EPICS_CAS_AUTO_BEACON_ADDR_LIST=NO to send only to EPICS_CAS_BEACON_ADDR_LIST"),
        ({"EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO"}, "255.255.255.255",
         "EPICS_CAS_AUTO_BEACON_ADDR_LIST=NO needs EPICS_CAS_BEACON_ADDR_LIST"),
        ({"EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO", "EPICS_CAS_BEACON_ADDR_LIST": "10.9.9.255:5065"}, "10.9.9.255",
         "10.9.9.255 is in EPICS_CAS_BEACON_ADDR_LIST: correct it or leave it out"),
    ],
)  # fmt: skip
def test_an_unreachable_address_gets_the_advice_that_fits_what_is_set(environ, address, advice):
    unreachable = caproto_error(OSError(errno.ENETUNREACH, "Network is unreachable"))
    harmless, line = beacon_failure((address, 5065), unreachable, environ)
    assert not harmless
    assert line.startswith(f"beacons to {address}:5065 not sent (Network is unreachable): ") and advice in line
