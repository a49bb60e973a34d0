"""`disk_hygiene`: weekly fstrim of the configured mounts and every container's log size;
`dagster_run_retention`: weekly deletion of Dagster's old finished runs and their event logs."""

from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone

import dagster as dg

from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.maintenance import hygiene as h
from homelab_ops.maintenance import run_retention as rr


def _trim_table(results: list[h.TrimResult]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"mount": r.mount, "state": r.state,
                                 "trimmed_bytes": r.trimmed_bytes if r.trimmed_bytes is not None else -1,
                                 "detail": r.detail}) for r in results],
        schema=dg.TableSchema(columns=[dg.TableColumn("mount", "string"), dg.TableColumn("state", "string"),
                                       dg.TableColumn("trimmed_bytes", "int", description="-1: not trimmed"),
                                       dg.TableColumn("detail", "string")]),
    )


def _log_table(logs: h.DockerLogs) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"container": c.name, "driver": c.driver, "state": c.state,
                                 "log_bytes": c.log_bytes if c.log_bytes is not None else -1,
                                 "max_size": c.max_size or "unbounded"}) for c in logs.containers],
        schema=dg.TableSchema(columns=[dg.TableColumn("container", "string"), dg.TableColumn("driver", "string"),
                                       dg.TableColumn("state", "string"),
                                       dg.TableColumn("log_bytes", "int", description="-1: not visible here"),
                                       dg.TableColumn("max_size", "string",
                                                      description="json-file rotation; unbounded grows forever")]),
    )


def hygiene_metadata(trims: list[h.TrimResult], logs: h.DockerLogs) -> dict:
    largest = logs.containers[0] if logs.containers else None
    return {
        "fstrim": _trim_table(trims),
        "trimmed_bytes": dg.MetadataValue.int(sum(r.trimmed_bytes or 0 for r in trims)),
        "docker": dg.MetadataValue.text(f"{logs.state}: {logs.detail}"),
        "container_logs": _log_table(logs),
        "container_log_bytes": dg.MetadataValue.int(logs.total_bytes),
        "largest_log_bytes": dg.MetadataValue.int(largest.log_bytes or 0 if largest else 0),
        "largest_log": dg.MetadataValue.text(largest.name if largest else "-"),
    }


@dg.asset(
    key="disk_hygiene",
    group_name="backups",  # with retention: the two things that give disk space back
    kinds={"docker"},
    description="Weekly: `fstrim` on disk_hygiene.fstrim_mounts (so the NVMe drive knows its free blocks) "
                "and the size of every container's json log, largest first, so a runaway log is seen "
                "before the disk fills. 'not supported', 'not permitted' and 'no docker daemon' are "
                "reported as states, not failures.",
)
def disk_hygiene(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
    config = homelab.maintenance
    helper = h.Helper.of(config.docker_host, config.disk_hygiene.helper_image)
    trims = h.trim(config.disk_hygiene.fstrim_mounts, helper=helper)
    logs = h.container_logs(config.docker_host, helper=helper)
    for r in trims:
        context.log.info(f"fstrim {r.mount}: {r.state} {r.detail}")
    context.log.info(f"docker: {logs.state}: {logs.detail}")
    return dg.MaterializeResult(metadata=hygiene_metadata(trims, logs))


PAGE = 500  # runs (or materializations) read per query: memory stays flat with tens of thousands
TABLE_ROWS = 200  # deleted runs listed in the metadata table; the count has them all
EXAMPLES = 5  # reasons named per rule in the summary


def _utc(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc) if ts is not None else None


def runs_newest_first(instance: dg.DagsterInstance) -> Iterator[rr.Run]:
    """Every run in the instance, newest first, a page at a time.

    The next page is read before the current one is handed out: its cursor is the
    page's last run id, and once that run is deleted the cursor would match nothing
    and the listing would end early.
    """
    page = instance.get_run_records(limit=PAGE)
    while page:
        following = (instance.get_run_records(limit=PAGE, cursor=page[-1].dagster_run.run_id)
                     if len(page) == PAGE else [])
        for rec in page:
            run = rec.dagster_run
            yield rr.Run(run.run_id, run.job_name, run.status.value, rec.create_timestamp,
                         _utc(rec.start_time), _utc(rec.end_time))
        page = following


def latest_materialization_runs(instance: dg.DagsterInstance) -> dict[str, str]:
    """Run id -> why it stays: it holds the latest materialization (or observation) of an asset,
    or of one partition of a partitioned asset, or is the latest run that tried to materialize one
    (a failed attempt is the asset's current state). Deleting it would change that state in the UI."""
    held: dict[str, str] = {}
    for record in instance.get_asset_records():
        entry = record.asset_entry
        name = entry.asset_key.to_user_string()
        for what, event in (("materialization", entry.last_materialization_record),
                            ("observation", entry.last_observation_record)):
            if event is not None and event.run_id:
                held.setdefault(event.run_id, f"holds the latest {what} of {name}")
        if entry.last_run_id:
            held.setdefault(entry.last_run_id, f"is the latest run of {name}")
        last = entry.last_materialization_record
        if last is None or last.partition_key is None:
            continue
        # Partitioned: every partition's latest materialization, newest first; the first seen is the latest.
        seen: set[str] = set()
        cursor = None
        while True:
            result = instance.fetch_materializations(entry.asset_key, limit=PAGE, cursor=cursor)
            for event in result.records:
                partition = event.partition_key
                if partition is not None and partition not in seen and event.run_id:
                    seen.add(partition)
                    held.setdefault(event.run_id, f"holds the latest materialization of {name} [{partition}]")
            if not result.has_more:
                break
            cursor = result.cursor
    return held


def delete_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """The run, its event log and its captured stdout/stderr (files `delete_run` leaves).

    On a SQLite instance (`make demo`, not the Pi's PostgreSQL) Dagster keeps each run's emptied
    event-log file (history/runs/<run id>.db); removing it behind the storage's back breaks later
    reads in processes that opened it, so it stays."""
    instance.delete_run(run_id)
    instance.compute_log_manager.delete_logs(prefix=[run_id])


def _deleted_table(rows: list[rr.Run]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"run_id": r.run_id, "job": r.job_name, "status": r.status,
                                 "ended": r.finished_at.isoformat(timespec="seconds")}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn("run_id", "string"), dg.TableColumn("job", "string"),
                                       dg.TableColumn("status", "string"),
                                       dg.TableColumn("ended", "string", description="UTC")]),
    )


def kept_summary(counts: Counter, examples: dict[str, list[str]], deleted: int, shown: int) -> str:
    """Markdown: how many runs each rule kept, with a few of its reasons."""
    lines = ["| kept because | runs | e.g. |", "|---|---:|---|"]
    for rule, n in counts.most_common():
        named = "; ".join(examples.get(rule, [])).replace("|", "\\|")  # multi-partition keys hold a |
        lines.append(f"| {rule} | {n} | {named} |")
    if len(lines) == 2:
        lines.append("| (no runs kept) | 0 | |")
    lines.append("")
    lines.append(f"Deleted {deleted} runs" + (f"; the table lists the newest {shown}." if deleted > shown else "."))
    return "\n".join(lines)


@dg.asset(
    key="dagster_run_retention",
    group_name="backups",  # with disk_hygiene: the weekly job that gives space back
    kinds={"dagster"},
    description="Weekly: deletes finished Dagster runs (SUCCESS, FAILURE, CANCELED) whose end is older "
                "than disk_hygiene.run_retention (default 90d; 0 keeps every run), with their event logs "
                "and captured stdout/stderr, so Dagster's PostgreSQL storage stops growing (a SQLite "
                "instance keeps an emptied file per run). Never deletes a run that is queued or still "
                "running, the newest finished run of each job, a run that holds an asset's (or a partition's) latest "
                "materialization, or an asset's latest run (a failed attempt included). Metadata: deleted "
                "and kept counts, the deleted runs, and why runs were kept.",
)
def dagster_run_retention(context: dg.AssetExecutionContext, homelab: HomelabSettings) -> dg.MaterializeResult:
    setting = homelab.maintenance.disk_hygiene.run_retention
    instance = context.instance
    protected = latest_materialization_runs(instance)
    decisions = rr.decide(runs_newest_first(instance), protected=protected, now=datetime.now(timezone.utc),
                          retention_seconds=setting.seconds, retention_label=str(setting))
    kept: Counter = Counter()
    examples: dict[str, list[str]] = {}
    deleted: list[rr.Run] = []
    n_deleted = 0
    this_run = context.run.run_id
    for d in decisions:
        if d.delete and d.run.run_id != this_run:  # this run is STARTED, so never deleted; a guard all the same
            delete_run(instance, d.run.run_id)
            n_deleted += 1
            if len(deleted) < TABLE_ROWS:
                deleted.append(d.run)
            continue
        kept[d.rule] += 1
        named = examples.setdefault(d.rule, [])
        if len(named) < EXAMPLES and d.reason not in named:
            named.append(d.reason)
    context.log.info(f"run retention {setting}: deleted {n_deleted} runs, kept {sum(kept.values())} "
                     f"({', '.join(f'{rule}: {n}' for rule, n in kept.most_common()) or 'none'})")
    return dg.MaterializeResult(metadata={
        "run_retention": dg.MetadataValue.text(str(setting)),
        "deleted": dg.MetadataValue.int(n_deleted),
        "kept": dg.MetadataValue.int(sum(kept.values())),
        "protected_runs": dg.MetadataValue.int(len(protected)),
        "deleted_runs": _deleted_table(deleted),
        "kept_because": dg.MetadataValue.md(kept_summary(kept, examples, n_deleted, len(deleted))),
    })
