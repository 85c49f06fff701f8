"""Globus: read-only sharing of experiment folders (`access`), and Globus transfers (`transfer`; the job it
keeps across a restart, `job`; the files its tasks sent, `sent`), through one confidential client (`client`)."""
