"""The built-in transfer engine: raw data folders -> DM storage, whole files only (`local.LocalTransfer`).

Why it polls rather than use inotify, how copies are made durable, the storage marker, ledger recovery:
docs/transfer.md. Modules: `local` (the port), `run` (one run: its thread and copy workers), `tracker`
(the files of a run and their states), `files` (its records), `scan` (a source folder), `copying` (a batch
of copies), `bytecopy` (a file's bytes), `storage` (the storage's marker), `ledger`, `folders` (no symlink
followed).
"""
