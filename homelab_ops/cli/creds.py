"""`homelab-ops creds ...`: the credential store from the command line.

Values are printed only by `get` (audited like every read) and taken only from
stdin or a hidden prompt, never from the command line where `ps` and shell
history would keep them.
"""

from __future__ import annotations

import contextlib
import sys
import typing
from pathlib import Path

import click
from pydantic import SecretStr

from homelab_ops import units
from homelab_ops.credentials import kinds, policy
from homelab_ops.credentials.envfile import render_env_file
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.keys import ENV_VAR
from homelab_ops.credentials.kinds import KindOptions
from homelab_ops.credentials.rotation import STEPS, rotate, run_step, set_value
from homelab_ops.credentials.store import cli_actor, init_store, open_store, rekey


@contextlib.contextmanager
def _errors():
    try:
        yield
    except CredentialError as e:
        raise click.ClickException(str(e)) from None


@contextlib.contextmanager
def _store(obj):
    with _errors(), open_store(obj.credentials, cli_actor()) as store:
        yield store


def _table(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


@click.group()
def creds() -> None:
    """Credentials: an encrypted, versioned store with rotation and an audit trail."""


@creds.command("init")
@click.pass_obj
def init(obj) -> None:
    """Create the master key file (mode 0600, never overwritten) and the store's tables."""
    with _errors():
        path, kid, created = init_store(obj.credentials, cli_actor())
    if path is None:
        click.echo(f"store ready; master key from ${ENV_VAR} (key id {kid})")
    else:
        click.echo(f"store ready; master key {'created in' if created else 'read from'} {path} (key id {kid})")
        if created:
            click.echo("Back up the key file somewhere safe: without it the store cannot be read.")


def _kind_options(command):
    """One `--option` per field of the kind models (homelab_ops/credentials/kinds/), so `creds add`
    takes exactly what the settings file takes; the model validates the values."""
    fields: dict[str, dict[str, list[str]]] = {}  # option -> its description -> the kinds that say it
    first = {}
    for kind, module in kinds.MODULES.items():
        for name, f in module.Options.model_fields.items():
            if name not in KindOptions.model_fields and name != "kind":
                first.setdefault(name, f)
                fields.setdefault(name, {}).setdefault(f.description or name, []).append(kind)
    for name, meanings in sorted(fields.items(), reverse=True):
        f = first[name]
        types = set(typing.get_args(f.annotation)) - {type(None)} or {f.annotation}
        flag = bool in types
        help_ = "; ".join(f"{'/'.join(used_by)}: {text}" for text, used_by in meanings.items()) + (
            ". Stored encrypted." if SecretStr in types else ".")
        command = click.option(f"--{name.replace('_', '-')}", name, is_flag=flag or None, default=None, help=help_,
                               type=None if flag else next((t for t in (int, float) if t in types), str))(command)
    return command


@creds.command("add")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(kinds.KINDS))
@click.option("--period", default="30d", show_default=True, help="Rotate (or warn) after this long: 30d, 12h, 1w.")
@click.option("--consumer", "consumers", multiple=True, help="A service that uses it (repeat).")
@click.option("--description", default=None)
@_kind_options
@click.pass_obj
def add(obj, name: str, kind: str, **options) -> None:
    """Register a credential to manage (its first value comes from `rotate`, or `set` for manual ones)."""
    options["consumers"] = list(options["consumers"])
    with _errors():
        # An unset flag (False) is not an option given; an option another kind takes is the model's to refuse.
        d = policy.make_definition(name, kind, {k: v for k, v in options.items() if v is not False})
    with _store(obj) as store:
        if name in obj.settings.credentials.managed:
            raise click.ClickException(f"{name} is defined in {obj.settings.source}; change it there")
        store.define(d)
    click.echo(f"added {name} ({d.kind}, period {d.period}); "
               + (f"create its first value with `homelab-ops creds rotate {name}`" if kinds.kind_for(d.kind).rotatable
                  else f"store a value with `homelab-ops creds set {name}`"))


@creds.command("list")
@click.pass_obj
def list_(obj) -> None:
    """Names, kinds, ages and stages; never values."""
    with _store(obj) as store:
        rows = []
        for d in store.definitions():
            st = store.status(d.name)
            state = "pending" if st.pending else ("OVERDUE" if st.overdue else "ok")
            rows.append((d.name, d.kind, d.period, units.duration(st.age_seconds), st.stages, state,
                         ", ".join(d.consumers)))
    if not rows:
        click.echo("no credentials yet (homelab-ops creds add NAME --kind KIND)")
        return
    _table(("NAME", "KIND", "PERIOD", "AGE", "STAGES", "STATE", "CONSUMERS"), rows)


@creds.command("get")
@click.argument("name")
@click.option("--field", default="value", show_default=True, help="value, username, htpasswd, access_key_id.")
@click.option("--stage", default="current", show_default=True, type=click.Choice(policy.STAGES))
@click.pass_obj
def get(obj, name: str, field: str, stage: str) -> None:
    """Print a value (the read is audited)."""
    with _store(obj) as store, _errors():
        value = store.value(name, field, stage, purpose="creds get")
    from homelab_ops.notify.redact import disclosing

    with disclosing():  # printing the secret is this command's job; everything else stays redacted
        click.echo(value)


@creds.command("set")
@click.argument("name")
@click.pass_obj
def set_(obj, name: str) -> None:
    """Store a new value for a manual (or generated) credential, read from stdin or a hidden prompt."""
    if sys.stdin.isatty():
        value = click.prompt(f"new value for {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.read().rstrip("\r\n")
    with _store(obj) as store, _errors():
        version = set_value(store, name, value)
    click.echo(f"stored {name} v{version} as current")


@creds.command("rotate")
@click.argument("name")
@click.option("--step", type=click.Choice(STEPS), default=None, help="Run one rotation step only.")
@click.pass_obj
def rotate_(obj, name: str, step: str | None) -> None:
    """Rotate now (finishing an interrupted rotation first), whether or not it is due."""
    with _store(obj) as store, _errors():
        if step:
            notes = run_step(store, name, step, config=obj.credentials)
            click.echo(f"{name}: step {step} done; now {store.status(name).stages}")
        else:
            result = rotate(store, name, config=obj.credentials, force=True)
            notes = result.notes
            click.echo(f"rotated {name} to v{result.version}"
                       + (" (finished an interrupted rotation)" if result.resumed else ""))
            if result.restart:
                click.echo(f"restart: {', '.join(result.restart)}")
    for n in notes:
        click.echo(f"  {n}")


@creds.command("history")
@click.argument("name")
@click.option("--limit", default=50, show_default=True, help="Audit rows to show.")
@click.pass_obj
def history(obj, name: str, limit: int) -> None:
    """Versions with their stages, then the audit trail (no values in either)."""
    with _store(obj) as store, _errors():
        store.get_definition(name)
        versions = store.versions(name)
        audit = store.audit_rows(name, limit)

    def ts(t):
        return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"

    _table(("VERSION", "STAGE", "ORIGIN", "CREATED", "PROMOTED", "RETIRED", "BY"),
           [(v.version, v.stage or "retired", v.origin, ts(v.created_at), ts(v.promoted_at), ts(v.retired_at),
             v.created_by) for v in versions] or [("-",) * 7])
    click.echo()
    _table(("AT", "ACTOR", "ACTION", "VERSION", "OUTCOME", "DETAIL"),
           [(ts(a.at), a.actor, a.action, a.version or "", a.outcome, a.detail) for a in audit] or [("-",) * 6])


@creds.command("rekey")
@click.option("--new-key-file", type=click.Path(dir_okay=False), default=None,
              help=f"Where to write the new key (required when the key comes from ${ENV_VAR}).")
@click.pass_obj
def rekey_(obj, new_key_file: str | None) -> None:
    """Re-encrypt every value under a new master key, in one transaction."""
    import os

    from_env = bool(os.environ.get(ENV_VAR))
    if from_env and not new_key_file:
        raise click.ClickException(f"the master key comes from ${ENV_VAR}; give --new-key-file to write the new one")
    target = Path(new_key_file or obj.settings.credentials.key_file)
    with _store(obj) as store, _errors():
        kid = rekey(store, target)
    click.echo(f"re-encrypted under the new key {kid}, written to {target}")
    if from_env or new_key_file:
        click.echo(f"put its content into ${ENV_VAR} (or the key_file setting) before the next use")


@creds.command("render-env")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--template", default=None, help="Template with {{ cred(\"name\") }} placeholders "
                                               "(default: credentials.env_template).")
@click.pass_obj
def render_env(obj, file: str, template: str | None) -> None:
    """Write FILE (mode 0600) with the current values the template names."""
    template = template or obj.settings.credentials.env_template
    if not template:
        raise click.ClickException("no template: give --template or set credentials.env_template")
    with _store(obj) as store, _errors():
        names = render_env_file(store, template, file)
    click.echo(f"wrote {file} with {len(names)} credentials: {', '.join(names)}")
