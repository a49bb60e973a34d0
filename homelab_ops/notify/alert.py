"""An alert as plain data, and the outcome of delivering it to one recipient."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

SEVERITIES = ("info", "warn", "fail")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def at_least(severity: str, minimum: str) -> bool:
    return _RANK[severity] >= _RANK[minimum]


@dataclass(frozen=True)
class Alert:
    source: str  # check, run, asset_check, test
    subject: str  # the check's name, the job's name, the asset check's key
    kind: str  # problem, changed, reminder, flapping, settled, recovered, run_failed, check_failed, test
    severity: str  # info, warn, fail: decides which chats receive it
    title: str  # one line, plain text
    body: str = ""  # plain text; may be long (split for Telegram)
    link: str | None = None
    link_text: str = "Open in Dagster"
    run_id: str | None = None
    preformatted: str = ""  # plain text shown monospaced (an error's first lines)

    def redacted(self, redact) -> Alert:
        return replace(self, subject=redact(self.subject), title=redact(self.title), body=redact(self.body),
                       link=redact(self.link) if self.link else None, preformatted=redact(self.preformatted))

    def plain(self) -> str:
        """The whole alert as plain text (one-way channels, the alerts table)."""
        parts = [self.title]
        if self.body:
            parts.append(self.body)
        if self.preformatted:
            parts.append(self.preformatted)
        if self.link:
            parts.append(self.link)
        return "\n".join(parts)


@dataclass
class Outcome:
    """One delivery: to whom, whether it arrived, after how many attempts, and why not."""

    to: str  # telegram:<chat id>, or a channel's name (ntfy, webhook)
    ok: bool
    attempts: int = 0
    detail: str = ""

    def to_json(self) -> dict:
        return {"to": self.to, "ok": self.ok, "attempts": self.attempts, "detail": self.detail}


@dataclass
class Delivered:
    alert: Alert
    outcomes: list[Outcome] = field(default_factory=list)
    recorded: bool = False

    @property
    def ok(self) -> bool:
        return any(o.ok for o in self.outcomes)
