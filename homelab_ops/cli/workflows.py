"""`homelab-ops workflows ...`: find hard-coded secrets in n8n workflows and template them out.

`scan` doubles as a pre-commit hook (see .pre-commit-hooks.yaml): it takes file
names, needs no settings file, skips JSON that is not a workflow and exits 1
when it finds anything.
"""

from __future__ import annotations

import json

import click

from homelab_ops.n8n.workflow_scan import ScanError, scan_database, scan_paths, summary
from homelab_ops.n8n.workflow_templatize import templatize_files


@click.group()
def workflows() -> None:
    """n8n workflows: scan for hard-coded secrets, templatize them away."""


@workflows.command("scan")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--db", "from_db", is_flag=True, help="Also scan n8n's database (settings n8n.dsn).")
@click.option("--json", "as_json", is_flag=True, help="Findings as JSON lines.")
@click.pass_obj
def scan(obj, paths: tuple[str, ...], from_db: bool, as_json: bool) -> None:
    """Scan workflow JSON files or folders (default: n8n.workflows_dir); exit 1 on any finding."""
    findings = []
    try:
        if not paths and not from_db:
            folder = obj.settings.n8n.workflows_dir if obj.settings.n8n else None
            if not folder:
                raise click.UsageError("name files or folders, pass --db, or set n8n.workflows_dir")
            paths = (folder,)
        if paths:
            findings += scan_paths(paths)
        if from_db:
            if obj.settings.n8n is None:
                raise click.UsageError("--db needs n8n.dsn in the settings")
            n8n = obj.settings.n8n
            findings += scan_database(n8n.dsn.get_secret_value(), schema=n8n.db_schema, prefix=n8n.table_prefix)[0]
    except ScanError as e:
        raise click.ClickException(str(e)) from None
    for f in findings:
        click.echo(json.dumps(f.as_dict(), ensure_ascii=False) if as_json else str(f))
    if findings:
        counts = ", ".join(f"{n} {rule}" for rule, n in summary(findings).items())
        click.echo(f"{len(findings)} hard-coded secrets ({counts}); "
                   "fix with `homelab-ops workflows templatize FILE... --out DIR`", err=True)
        raise SystemExit(1)


@workflows.command("templatize")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the rewritten files.")
@click.option("--env-template", default=None, type=click.Path(dir_okay=False),
              help="Where to write the variables (default: OUT/.env.template).")
def templatize(files: tuple[str, ...], out_dir: str, env_template: str | None) -> None:
    """Rewrite each finding to an n8n expression `={{ $env.NAME }}` and write the matching .env.template."""
    try:
        result = templatize_files(files, out_dir, env_template)
    except ScanError as e:
        raise click.ClickException(str(e)) from None
    total = sum(n for _, n in result.written)
    click.echo(f"rewrote {total} findings in {len(result.written)} files into {out_dir}")
    for path in result.skipped:
        click.echo(f"  skipped {path}: not an n8n workflow")
    click.echo(f"variables ({len(result.vars)}) in {result.env_template}: "
               + (", ".join(v.name for v in result.vars) or "none"))
