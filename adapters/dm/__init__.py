"""Data management backends (`dm.backend`): `local` (this machine's disks and the registry; the folders it
makes, `tree`, and the storage's marker, `marker`), and the APS DM system through its SDK (`aps_sdk`): `aps`
for experiments and users, `aps_daq` for its DAQs and uploads (`first_found`: when each file was first seen)."""
