#!/bin/sh
# dmagic-ioc under procServ: console on port 20001 (telnet localhost 20001), restarts on exit.
exec procServ --noautorestart=false --name dmagic-ioc --logfile /var/log/dmagic-ioc/procServ.log \
    --chdir /var/lib/dmagic-ioc 20001 \
    /opt/dmagic-ioc/.venv/bin/dmagic-ioc --config /etc/dmagic-ioc/config.yaml
