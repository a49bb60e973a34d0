"""`disk_hygiene`: weekly fstrim of the configured mounts and every container's log size."""

import dagster as dg

from homelab_ops.backups import hygiene as h
from homelab_ops.defs.resources import HomelabSettings


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
    s = homelab.settings
    trims = h.trim(s.disk_hygiene.fstrim_mounts)
    logs = h.container_logs(s.docker.host)
    for r in trims:
        context.log.info(f"fstrim {r.mount}: {r.state} {r.detail}")
    context.log.info(f"docker: {logs.state}: {logs.detail}")
    return dg.MaterializeResult(metadata=hygiene_metadata(trims, logs))
