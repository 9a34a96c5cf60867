"""Clients written only from the public descriptions of the servers lorien replaces (never from lorien's code)."""
