"""Tools around the IOC: the EPICS database and the README PV table, generated from the PV definitions."""
