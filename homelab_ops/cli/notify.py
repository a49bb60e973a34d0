"""`homelab-ops notify ...`: who receives alerts, and a test alert."""

from __future__ import annotations

from datetime import datetime, timezone

import click
import psycopg

from homelab_ops.errors import first_line
from homelab_ops.notify import chats as chats_mod
from homelab_ops.notify.alert import SEVERITIES, Alert

SEVERITY = click.Choice(SEVERITIES)
# Group chats have negative ids: `notify add -100123` must not read them as options.
CHAT_ID = {"ignore_unknown_options": True}


def _conn(obj):
    try:
        return chats_mod.state_connection(obj.settings.state, obj.settings.postgres)
    except psycopg.Error as e:
        raise click.ClickException(f"state database not reachable: {first_line(e)}") from None


@click.group()
def notify() -> None:
    """Alert recipients: list, approve, add, remove; send a test alert."""


@notify.command("list")
@click.pass_obj
def list_(obj) -> None:
    """Every chat the bot knows, approved and pending."""
    with _conn(obj) as conn:
        chats_mod.sync_static(conn, obj.settings.notify.telegram.chats)
        chats = chats_mod.list_chats(conn)
    if not chats:
        click.echo("no chats yet: send /start to the bot, then `homelab-ops notify approve CHAT_ID`")
        return
    now = datetime.now(timezone.utc)
    tz = obj.settings.tz
    rows = [("CHAT_ID", "STATUS", "MIN_SEVERITY", "MUTED_UNTIL", "TITLE")]
    for c in chats:
        muted = c.muted_until.astimezone(tz).strftime("%Y-%m-%d %H:%M") if c.muted_until and c.muted_until > now else ""
        rows.append((str(c.chat_id), c.status, c.min_severity, muted, c.title))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@notify.command(context_settings=CHAT_ID)
@click.argument("chat_id", type=int)
@click.option("--min-severity", type=SEVERITY, default=None, help="Lowest severity this chat receives.")
@click.pass_obj
def approve(obj, chat_id: int, min_severity: str | None) -> None:
    """Approve a chat that sent /start to the bot."""
    with _conn(obj) as conn:
        chat = chats_mod.approve(conn, chat_id, min_severity)
    if chat is None:
        raise click.ClickException(f"chat {chat_id} never sent /start to the bot; `notify add` approves it anyway")
    click.echo(f"approved {chat.chat_id} {chat.title} (receives {chat.min_severity} and above)".replace("  ", " "))


@notify.command(context_settings=CHAT_ID)
@click.argument("chat_id", type=int)
@click.option("--title", default="", help="A name for `notify list`.")
@click.option("--min-severity", type=SEVERITY, default="warn", show_default=True)
@click.pass_obj
def add(obj, chat_id: int, title: str, min_severity: str) -> None:
    """Approve a chat by its id (known from elsewhere), or change its minimum severity."""
    with _conn(obj) as conn:
        chat = chats_mod.add(conn, chat_id, title, min_severity)
    click.echo(f"approved {chat.chat_id} (receives {chat.min_severity} and above)")


@notify.command(context_settings=CHAT_ID)
@click.argument("chat_id", type=int)
@click.pass_obj
def remove(obj, chat_id: int) -> None:
    """Stop sending to a chat (or reject a pending one)."""
    if chat_id in obj.settings.notify.telegram.chats:
        raise click.ClickException(f"chat {chat_id} is listed in notify.telegram.chats; remove it from the settings file")
    with _conn(obj) as conn:
        gone = chats_mod.remove(conn, chat_id)
    if not gone:
        raise click.ClickException(f"no chat {chat_id}")
    click.echo(f"removed {chat_id}")


@notify.command()
@click.option("--severity", type=SEVERITY, default="warn", show_default=True)
@click.option("--text", default="This is a test alert from homelab-ops.", show_default=True)
@click.pass_obj
def test(obj, severity: str, text: str) -> None:
    """Send a test alert through every channel; exits non-zero when nothing arrived."""
    from homelab_ops.notify.dispatch import dispatcher_for

    dispatcher = dispatcher_for(obj.notify)
    if dispatcher.telegram is not None:
        me, why = dispatcher.telegram.get_me()  # a wrong token shows here, not as N failed chats
        click.echo(f"telegram bot: @{me.get('username')}" if me else f"telegram bot: FAILED {dispatcher.redact(why)}")
    alert = Alert("test", "notify test", "test", severity, "🔔 Test alert", text)
    delivered, _ = dispatcher.deliver([alert])
    d = delivered[0]
    for o in d.outcomes:
        click.echo(f"{o.to}: {'ok' if o.ok else 'FAILED ' + o.detail}")
    if not d.outcomes:
        raise click.ClickException("no recipient: configure a bot token and approve a chat, or add an entry to notify.channels")
    if not d.ok:
        raise click.ClickException("the test alert reached nobody")
