"""The domain: types and rules (errors, text, times, naming, people, proposal, esaf, beamtime, experiment,
tag), and what the IOC needs of the outside world (ports)."""
