"""The built-in transfer engine: raw data folders -> DM storage, whole files only (`local.LocalTransfer`).

Why it polls rather than use inotify, how copies are made durable, the storage marker, ledger recovery:
docs/transfer.md. Modules: `local` (the port), `engine` (one run), `files` (its records), `scan`
(a source folder), `copying`, `storage` (the storage's marker), `ledger`, `folders` (no symlink followed).
"""
