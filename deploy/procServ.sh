#!/bin/sh
# Run dmagic-ioc under procServ (console on a local port, restarts on exit), as at many EPICS beamlines.
# Connect to the console with: telnet localhost 4050   (Ctrl-X restarts the IOC, Ctrl-] then quit leaves)
# Adjust the paths, the port and the user; EPICS_CA_*/EPICS_CAS_* settings go in the environment below.
set -eu

CONFIG=/etc/dmagic-ioc/config.yaml
IOC=/opt/dmagic-ioc/venv/bin/dmagic-ioc
LOGDIR=/var/lib/dmagic-ioc/logs

# export EPICS_CAS_INTF_ADDR_LIST=192.0.2.10
# export EPICS_CA_MAX_ARRAY_BYTES=1000000

"$IOC" --config "$CONFIG" --check
mkdir -p "$LOGDIR"
# Port 4050 is bound to localhost only (no --allow).
exec procServ --name dmagic-ioc --logfile "$LOGDIR/procServ.log" --chdir /var/lib/dmagic-ioc \
    4050 "$IOC" --config "$CONFIG"
