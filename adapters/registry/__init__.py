"""The registry: the IOC's durable state in one SQLite file, the local DM's experiments and the IOC's own memory.

It is the `ports.StateStore` of every backend (the selection, who was e-mailed,
the Globus rule ids) and the experiment registry of the `local` DM backend.
Modules: `store` (`Registry`, its reads and writes), `file` (the file opened, checked, kept aside
when it cannot be read), `schema` (its tables and their migrations, versioned with `PRAGMA user_version`).
"""
