"""Tools around the IOC: the EPICS database and the PV table of docs/pvs.md, generated from the PV definitions; a
tomoScan stand-in for the demo's Tag (`python -m dmagic_ioc.ioc.tools.tomoscan_target`)."""
