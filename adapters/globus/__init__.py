"""Globus: read-only sharing of experiment folders (`access`), and Globus transfers (`transfer`),
through one confidential client (`client`)."""
