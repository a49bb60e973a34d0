"""What every backup source's settings share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SourceError(RuntimeError):
    """A source-side problem (the server refused, a tool is missing), said in words an operator can act on."""


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    # The folder under backups.local_dir and each S3 prefix, and what the asset keys are named by
    # (`backups/<name>_backup`, `offsite/<name>_offsite`, `restore_verification/<name>_verification` ...);
    # homelab_ops.backups.names judges it, as it judges database names.
    name: str
