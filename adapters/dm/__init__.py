"""Data management backends (`dm.backend`): `local` (this machine's disks and the registry), and the APS DM
system through its SDK (`aps_sdk`): `aps` for experiments and users, `aps_daq` for its DAQs and uploads."""
