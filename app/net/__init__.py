"""Outbound network access on users' behalf."""
