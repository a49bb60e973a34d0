"""Words for alerts: a check's notice, a failed run, a failed asset check. Pure functions."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import quote

from homelab_ops import units
from homelab_ops.health.checks import FAIL, OK, UNKNOWN, WARN
from homelab_ops.health.machine import FLAPPING, Notice
from homelab_ops.notify.alert import Alert

_ICON = {FAIL: "🔴", WARN: "🟠", UNKNOWN: "❔", OK: "✅", FLAPPING: "🔁"}
_WORD = {FAIL: "FAIL", WARN: "WARN", UNKNOWN: "UNKNOWN", OK: "OK"}
ERROR_LINES = 12


def notice_alert(n: Notice, now: float, tz, remedies: list[str] = ()) -> Alert:
    """One check's notice as an alert; `remedies` names the jobs this tick started for it."""
    word = _WORD.get(n.state, n.state.upper())
    if n.kind == FLAPPING:
        title = f"{_ICON[FLAPPING]} FLAPPING {n.check}"
    elif n.kind == "recovered":
        took = f" after {units.duration(now - n.since)}" if n.since is not None else ""
        title = f"{_ICON[OK]} RECOVERED {n.check}{took}"
    elif n.kind == "settled":
        title = f"{_ICON.get(n.state, '')} SETTLED {n.check}: {word}"
    elif n.kind == "reminder":
        title = f"{_ICON.get(n.state, '')} STILL {word} {n.check}"
    else:
        title = f"{_ICON.get(n.state, '')} {word} {n.check}"
    body = n.reason
    if n.kind == "reminder" and n.since is not None:
        body += f"\nSince {datetime.fromtimestamp(n.since, timezone.utc).astimezone(tz):%a %H:%M} " \
                f"({units.duration(now - n.since)})."
    if n.kind == "changed" and n.previous:
        body += f"\nWas: {_WORD.get(n.previous, n.previous)}."
    if remedies:
        body += f"\nRemedy started: {', '.join(remedies)}."
    return Alert("check", n.check, n.kind, n.severity, title, body)


def run_link(base_url: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/runs/{quote(run_id)}"


def first_lines(text: str, n: int = ERROR_LINES, width: int = 300) -> str:
    lines = [line[:width] for line in (text or "").strip().splitlines()]
    return "\n".join(lines[:n]) + ("\n…" if len(lines) > n else "")


def run_failure_alert(job: str, run_id: str, failed_steps: list[tuple[str, str]], run_message: str,
                      base_url: str) -> Alert:
    """`failed_steps` is (step key, error text); without any, the run's own failure message is shown
    (a run stopped for exceeding dagster/max_runtime has no failed step)."""
    steps = [s for s, _ in failed_steps]
    if steps:
        body = f"Failed step{'s' if len(steps) > 1 else ''}: {', '.join(steps[:5])}" + \
               (f" and {len(steps) - 5} more" if len(steps) > 5 else "")
        error = first_lines(failed_steps[0][1])
    else:
        body = "No step failed: the run itself did."
        error = first_lines(run_message)
    return Alert("run", job, "run_failed", "fail", f"❌ Run failed: {job}", body, link=run_link(base_url, run_id),
                 link_text="Open the run", run_id=run_id, preformatted=error)


def asset_check_alert(n: Notice, asset: str, check: str, description: str, run_id: str | None,
                      base_url: str) -> Alert:
    """An ERROR-severity asset check's failure (or recovery), as the state machine announced it."""
    if n.kind == "recovered":
        title = f"✅ RECOVERED asset check {check} on {asset}"
    elif n.kind == "reminder":
        title = f"🔴 STILL FAILING asset check {check} on {asset}"
    elif n.kind == FLAPPING:
        title = f"🔁 FLAPPING asset check {check} on {asset}"
    else:
        title = f"🔴 Asset check failed: {check} on {asset}"
    return Alert("asset_check", n.check, n.kind if n.kind != "problem" else "check_failed", n.severity, title,
                 description or n.reason, link=run_link(base_url, run_id) if run_id else None,
                 link_text="Open the run", run_id=run_id)
