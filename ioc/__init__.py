"""dmagic-ioc: the EPICS IOC layer (PV groups, command engine, entry point) and the domain model."""
