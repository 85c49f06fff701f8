"""Fakes of the outside world: `ports` (in-process fakes of every port, for the use-case and PV-group tiers)
and `dm` (a fake of the APS DM SDK, imported as `dm` by the adapter tests)."""
