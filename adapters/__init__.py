"""Adapters: one module per outside system (scheduling, DM, Globus, e-mail, Tag)."""
