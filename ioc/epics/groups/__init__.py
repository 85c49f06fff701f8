"""One PVGroup per concern: status, proposal, experiment, daq."""
