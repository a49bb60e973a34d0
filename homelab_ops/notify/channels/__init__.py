"""Push channels beside Telegram: one module per channel in this package, found by its `type`.

Telegram is the two-way channel (approvals, commands, per-chat quiet hours) and lives in
`homelab_ops.notify.telegram`. Every one-way channel is a module here that declares:

- `Config`: a pydantic model whose `type` field is `Literal["<module name>"]`, derived from
  `ChannelConfig` (so it has `name` and `min_severity`); the settings' `notify.channels` list is
  the union of every module's `Config`, discriminated on `type`;
- `build(config, *, timeout, retry, sleep) -> Channel`: the sender (a `JsonChannel` when the
  service takes one JSON POST per alert), whose
  `send(alert, deadline=...)` returns an `Outcome` and never raises.

Adding a channel is one new file here plus its test (docs/extending.md).
"""

from __future__ import annotations

from types import ModuleType
from typing import Annotated, Protocol, Union

from pydantic import Field

from homelab_ops.notify.alert import Alert, Outcome
from homelab_ops.notify.channels._base import ChannelConfig
from homelab_ops.plugins import discover_typed


class Channel(Protocol):
    name: str

    def send(self, alert: Alert, *, deadline: float | None = None) -> Outcome: ...


MODULES: dict[str, ModuleType] = discover_typed(__name__, __path__, requires=("build",))

# What `notify.channels` accepts: one entry per channel, its `type` picks the module.
ChannelSettings = Annotated[Union[tuple(m.Config for m in MODULES.values())], Field(discriminator="type")]


def build(config: ChannelConfig, **how) -> Channel:
    """The sender for one `notify.channels` entry."""
    return MODULES[config.type].build(config, **how)


__all__ = ["MODULES", "Channel", "ChannelConfig", "ChannelSettings", "build"]
