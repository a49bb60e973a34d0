"""Errors worded for the operator; none of them ever carries a secret value."""

from __future__ import annotations


class CredentialError(Exception):
    """A credential problem the operator can act on (bad input, wrong key, failed step)."""


class MasterKeyError(CredentialError):
    """The master key is missing, unreadable, too open, or not the one the store was written with."""


class UnknownCredential(CredentialError):
    def __init__(self, name: str):
        super().__init__(f"no credential named {name!r} (see `homelab-ops creds list`)")
        self.name = name


class RotationError(CredentialError):
    """A rotation step failed; the pending version stays so the next run can finish it."""

    def __init__(self, name: str, step: str, message: str):
        super().__init__(f"rotating {name!r} failed at step {step!r}: {message}")
        self.name = name
        self.step = step


class RotationBusy(CredentialError):
    """Another process is rotating the same credential right now."""
