"""The credential store: encrypted, versioned values with an audit trail, and their rotation.

`overdue(config)` is the entry point other domains (alerting) use; it needs no
master key because it reads ages, never values.
"""

from __future__ import annotations

from homelab_ops.credentials.config import CredentialsConfig


def overdue(config: CredentialsConfig, now=None):
    """Credentials whose current version is older than their period (or never set), as
    `store.CredentialAge` items (name, kind, period_seconds, age_seconds or None); oldest first."""
    from homelab_ops.credentials.store import overdue as _overdue

    return _overdue(config, now)


def current_value(config: CredentialsConfig, name: str, *, actor: str, field: str = "value") -> str:
    """One credential's current value for another domain (the Telegram bot token); the read is audited."""
    from homelab_ops.credentials.store import open_store

    with open_store(config, actor) as store:
        return store.value(name, field, purpose="current_value")
