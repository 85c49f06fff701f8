"""Channel Access: the PV declarations served by caproto, the PV groups, the CA server, autosave, access."""
