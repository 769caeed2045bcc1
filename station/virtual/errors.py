"""The virtual authenticator's own exceptions (it imports nothing else of the station)."""

from __future__ import annotations


class VirtualError(Exception):
    """A virtual key cannot be created, opened or asked for something its model lacks."""


class KeyBusy(VirtualError):
    """Another process holds the virtual key open (the state file's lock is taken)."""
