"""Host and container metrics as assets: the 15-minute snapshots with their threshold checks, and the daily rollup.

Thin on purpose: reading the host is `homelab_ops.metrics.collect`, judging it the health checks
(`homelab_ops.metrics.thresholds` shows their judgement as asset checks), the containers
`homelab_ops.metrics.containers`,
storing both `homelab_ops.metrics.store`.
"""

import time
from datetime import date, datetime, timezone

import dagster as dg

from homelab_ops import units
from homelab_ops.defs.resources import HomelabSettings, PostgresResource
from homelab_ops.metrics import containers, textfile, thresholds
from homelab_ops.metrics.collect import PI_PREFIX, take_snapshot
from homelab_ops.metrics.store import previous_container_values, roll_up_day, write_container_snapshot, write_snapshot
from homelab_ops.settings import MetricsSettings

GROUP = "metrics"
_PI_SENSORS = {"get_throttled", "vcgencmd", "rpi_volt"}


def _check_result(o: thresholds.Outcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=o.check, passed=o.passed, severity=dg.AssetCheckSeverity(o.severity),
                               description=o.description, metadata=o.metadata)


@dg.asset(
    name="host_metrics",
    group_name=GROUP,
    kinds={"postgres"},
    description="A snapshot of the host appended to homelab_ops.host_metrics (long format, node_exporter "
                "names): temperature, Pi throttling and under-voltage, CPU frequency and governor, load, CPU, "
                "memory, swap, disk per mount, uptime. The Pi-only figures also go to node_exporter's "
                "textfile collector (homelab_pi.prom). A sensor the host lacks is recorded as absent.",
    # The health sensor alerts on these conditions (it reads the host every minute); the checks show them here.
    check_specs=[dg.AssetCheckSpec(name, asset="host_metrics", description=thresholds.CHECK_DESCRIPTIONS[name],
                                   metadata={"alerted_by": thresholds.ALERTED_BY})
                 for name in thresholds.CHECKS],
)
def host_metrics(context: dg.AssetExecutionContext, homelab: HomelabSettings,
                 state_database: PostgresResource) -> dg.MaterializeResult:
    started = time.perf_counter()
    config = homelab.metrics
    snap = take_snapshot(config.metrics)
    with state_database.open_state() as conn:
        rows = write_snapshot(conn, snap)
    pi = snap.pi_samples + [s for s in snap.values("homelab_sensor_present") if s.labels["sensor"] in _PI_SENSORS]
    path = textfile.write_atomically(config.metrics.textfile_dir,
                                     textfile.render(pi, snap.taken_at.timestamp()))
    for sensor, why in sorted(snap.absent.items()):
        context.log.info(f"absent: {sensor}: {why}")
    outcomes = thresholds.evaluate(snap.samples, config.thresholds)
    temps = [s.value for s in snap.values("node_thermal_zone_temp") if s.value is not None]
    meta = {
        "samples": dg.MetadataValue.int(rows),
        "absent": dg.MetadataValue.text(", ".join(sorted(snap.absent)) or "none"),
        "textfile": dg.MetadataValue.path(str(path)),
        "duration_ms": dg.MetadataValue.int(round((time.perf_counter() - started) * 1000)),
        "pi_figures": dg.MetadataValue.int(len([s for s in snap.samples if s.metric.startswith(PI_PREFIX)])),
    }
    if temps:
        meta["temperature_c"] = dg.MetadataValue.float(round(max(temps), 1))
    total, avail = snap.value("node_memory_MemTotal_bytes"), snap.value("node_memory_MemAvailable_bytes")
    if total and avail is not None:
        meta["memory_available_pct"] = dg.MetadataValue.float(round(100 * avail / total, 1))
    return dg.MaterializeResult(metadata=meta, check_results=[_check_result(o) for o in outcomes])


def _container_table(snap: containers.ContainerSnapshot) -> str:
    lines = ["| container | state | health | CPU % | memory | limit | restarts |", "|---|---|---|---:|---:|---:|---:|"]
    sized = (lambda v: "-" if not v else units.size(v))
    for c in sorted(snap.containers, key=lambda c: c.name):
        cpu = c.samples.get("homelab_container_cpu_percent")
        lines.append(f"| {c.name} | {c.status} | {c.health or '-'} | {'-' if cpu is None else f'{cpu:.1f}'} | "
                     f"{sized(c.samples.get('container_memory_working_set_bytes'))} | {sized(c.memory_limit)} | "
                     f"{c.restart_count} |")
    return "\n".join(lines)


@dg.asset(
    name="container_metrics",
    group_name=GROUP,
    kinds={"docker", "postgres"},
    description="A snapshot of every container from the Docker Engine API (docker.host) appended to "
                "homelab_ops.container_metrics (long format, cAdvisor names): state, restarts, health, OOM kill, "
                "memory limit; for running ones CPU (seconds, and % averaged since the previous snapshot), memory usage and working set, "
                "network and block I/O. Fails when no Docker daemon answers.",
    check_specs=[dg.AssetCheckSpec(name, asset="container_metrics", description=containers.CHECK_DESCRIPTIONS[name],
                                   metadata={"alerted_by": thresholds.ALERTED_BY} if name in containers.ALERTED_BY_HEALTH
                                   else {})
                 for name in containers.CHECKS],
)
def container_metrics(context: dg.AssetExecutionContext, homelab: HomelabSettings,
                      state_database: PostgresResource) -> dg.MaterializeResult:
    started = time.perf_counter()
    config = homelab.metrics
    try:
        snap = containers.take_snapshot(config.docker_host, patterns=config.metrics.containers)
    except containers.DockerUnavailable as e:
        raise dg.Failure(description=str(e), allow_retries=False) from None
    with state_database.open_state() as conn:
        previous_at, previous = previous_container_values(conn, snap.taken_at)
        rows = write_container_snapshot(conn, snap, previous_at, previous)
    for c in snap.containers:
        if c.stats_error:
            context.log.warning(f"{c.name}: no stats: {c.stats_error}")
    outcomes = containers.evaluate(snap.containers, previous, config.thresholds)
    running = sum(c.running for c in snap.containers)
    return dg.MaterializeResult(metadata={
        "containers": dg.MetadataValue.int(len(snap.containers)),
        "running": dg.MetadataValue.int(running),
        "stopped": dg.MetadataValue.int(len(snap.containers) - running),
        "rows": dg.MetadataValue.int(rows),
        "docker_ms": dg.MetadataValue.int(snap.docker_ms),
        "duration_ms": dg.MetadataValue.int(round((time.perf_counter() - started) * 1000)),
        "docker_api": dg.MetadataValue.text(snap.api_version),
        "previous_snapshot": dg.MetadataValue.text(previous_at.isoformat() if previous_at else "none"),
        "stats_errors": dg.MetadataValue.text(", ".join(c.name for c in snap.containers if c.stats_error) or "none"),
        "containers_table": dg.MetadataValue.md(_container_table(snap)),
    }, check_results=[_check_result(o) for o in outcomes])


def daily_partitions(metrics: MetricsSettings, zone: str) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=metrics.history_start, timezone=zone)


_HEADLINE = ("node_thermal_zone_temp", "homelab_cpu_busy_ratio", "node_load1", "node_memory_MemAvailable_bytes",
             "node_filesystem_avail_bytes")


def host_metrics_daily_asset(metrics: MetricsSettings, zone: str) -> dg.AssetsDefinition:
    """One partition per day of `zone` since metrics.history_start."""
    @dg.asset(
        name="host_metrics_daily",
        group_name=GROUP,
        kinds={"postgres"},
        deps=[host_metrics, container_metrics],
        partitions_def=daily_partitions(metrics, zone),
        description=f"Min, mean and max per metric and series per day ({zone}) in "
                    "homelab_ops.host_metrics_daily, from the raw host and container snapshots (a container's "
                    "series carry the label `container`); raw snapshots older than "
                    f"{metrics.raw_retention_days} days (metrics.raw_retention_days) are deleted.",
    )
    def _daily(context: dg.AssetExecutionContext, homelab: HomelabSettings,
               state_database: PostgresResource) -> dg.MaterializeResult:
        config = homelab.metrics
        day = date.fromisoformat(context.partition_key)
        with state_database.open_state() as conn:
            out = roll_up_day(conn, day, config.timezone, retention_days=config.metrics.raw_retention_days,
                              now=datetime.now(timezone.utc))
        if out.kept_stored:
            context.log.warning(f"{day}: raw snapshots are past retention; the stored rollup is kept")
        lines = ["| metric | labels | samples | min | mean | max |", "|---|---|---:|---:|---:|---:|"]
        for r in out.rows:
            if r.metric in _HEADLINE:
                labels = ", ".join(f"{k}={v}" for k, v in sorted(r.labels.items()))
                fmt = (lambda v: "-" if v is None else f"{v:.4g}")
                lines.append(f"| {r.metric} | {labels} | {r.samples} | {fmt(r.min)} | {fmt(r.mean)} | {fmt(r.max)} |")
        return dg.MaterializeResult(metadata={
            "series": dg.MetadataValue.int(len(out.rows)),
            "raw_samples": dg.MetadataValue.int(out.raw_samples),
            "kept_stored": dg.MetadataValue.bool(out.kept_stored),
            "raw_rows_pruned": dg.MetadataValue.int(out.pruned),
            "headline": dg.MetadataValue.md("\n".join(lines)),
        })

    return _daily
