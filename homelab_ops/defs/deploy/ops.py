"""The deploy and tune graphs: thin ops over homelab_ops.deploy (plan, engine, tune).

Outputs stay in memory (`deploy_io`): plans carry rendered configs with secrets,
which must not be pickled into Dagster's storage. A failed run is re-run whole;
the engine converges from whatever it left.
"""

import dataclasses
import re
import time
from pathlib import Path

import dagster as dg

from homelab_ops.credentials.errors import CredentialError
from homelab_ops.defs.deploy.resources import DockerResource
from homelab_ops.defs.deploy.services import deployed, service_reported
from homelab_ops.defs.resources import HomelabSettings
from homelab_ops.deploy import engine, tune
from homelab_ops.deploy.auth import stored_users
from homelab_ops.deploy.config import DeployConfig
from homelab_ops.deploy.plan import PlanError, StackPlan, build_monitoring_plan, build_traefik_plan
from homelab_ops.deploy.spec import ContainerSpec

IO = "deploy_io"
REPO_ROOT = Path(__file__).resolve().parents[3]


class ServicesConfig(dg.Config):
    """Which services to converge; empty means the whole stack."""

    services: list[str] = []


class TuneConfig(dg.Config):
    window_seconds: float = 600.0  # measure over a busy stretch: the limits are only as good as it
    headroom: float = 1.5  # limit = peak x headroom when the budget allows
    min_headroom: float = 1.2  # the least any service gets over its peak
    dry_run: bool = False  # propose and report, apply nothing


def _dashboards(deploy: DeployConfig) -> dict[str, bytes]:
    d = Path(deploy.monitoring.services.grafana.dashboards_dir or REPO_ROOT / "deploy/grafana/dashboards")
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.json"))} if d.is_dir() else {}


def _fail(e: Exception, deploy: DeployConfig | None = None, specs=()) -> dg.Failure:
    """The failure's text, scrubbed of every secret the settings and the store know, and of
    the secret files and environment the deploy gave `specs`: a deploy error carries container
    log tails, which may print a password."""
    text = str(e)
    if deploy is not None:
        placed = [v.decode(errors="replace") for s in specs for v in s.secrets.values()]
        # An owner's own env for a service may still carry a secret; a *_FILE variable holds only
        # the path of one (the deploy's own secrets are in s.secrets), which errors keep readable.
        placed += [v for s in specs for k, v in s.env.items()
                   if re.search(r"TOKEN|PASSWORD|SECRET", k) and not k.endswith("_FILE")]
        text = deploy.redactor(*placed)(text)
    return dg.Failure(description=text)


def _grafana_login(deploy: DeployConfig) -> tuple[str, str] | None:
    """Grafana's read-only role and password from the credential store (audited read)."""
    name = deploy.monitoring.services.grafana.postgres_credential
    if not name:
        return None
    from homelab_ops.credentials import current_value

    return (current_value(deploy.credentials, name, actor="deploy_monitoring", field="username"),
            current_value(deploy.credentials, name, actor="deploy_monitoring"))


def monitoring_plan(deploy: DeployConfig, docker: DockerResource) -> StackPlan:
    """Settings and the host's facts -> the plan; a refused plan fails the op, naming why."""
    with docker.client() as client:
        facts = engine.host_facts(client, docker_host=docker.host, textfile_dir=deploy.textfile_dir,
                                  backups_dir=deploy.backups_dir)
    try:
        return build_monitoring_plan(deploy, facts, dashboards=_dashboards(deploy),
                                     tuned=tune.load_tuned(deploy.monitoring.state_dir),
                                     grafana_login=_grafana_login(deploy))
    except (PlanError, CredentialError) as e:
        raise _fail(e, deploy) from None


@dg.op(out=dg.Out(StackPlan, io_manager_key=IO))
def plan_monitoring(context: dg.OpExecutionContext, config: ServicesConfig, homelab: HomelabSettings,
                    docker: DockerResource) -> StackPlan:
    """Render every config and check the budget; a refused plan changes nothing."""
    plan = monitoring_plan(homelab.deploy, docker)
    if config.services:
        unknown = set(config.services) - {s.service for s in plan.services}
        if unknown:
            raise dg.Failure(description=f"not in the plan: {sorted(unknown)}")
        plan = dataclasses.replace(plan, services=[s for s in plan.services if s.service in config.services])
    for w in plan.warnings:
        context.log.warning(w)
    context.log.info(f"plan: {len(plan.services)} services, {plan.memory_mb} MB of {plan.budget_mb} MB")
    return plan


@dg.op(out=dg.Out(StackPlan, io_manager_key=IO))
def plan_traefik(context: dg.OpExecutionContext, homelab: HomelabSettings, docker: DockerResource) -> StackPlan:
    """Traefik's flags, labels and file-provider routes; refused without basic-auth users."""
    deploy = homelab.deploy
    with docker.client() as client:
        facts = engine.host_facts(client, docker_host=docker.host, access_log_dir=deploy.traefik.access_log_dir)
    try:
        return build_traefik_plan(deploy, facts, stored_users=stored_users(deploy, f"dagster-run:{context.run_id}"))
    except (PlanError, CredentialError) as e:
        raise _fail(e, deploy) from None


@dg.op(out=dg.Out(StackPlan, io_manager_key=IO))
def pull_images(context: dg.OpExecutionContext, homelab: HomelabSettings, docker: DockerResource,
                plan: StackPlan) -> StackPlan:
    """Every image present before any container stops (`never`: a missing one is an error)."""
    deploy = homelab.deploy
    with docker.client() as client:
        try:
            pulled = engine.ensure_images(client, plan.images, deploy.monitoring.pull, context.log.info)
        except engine.DeployError as e:
            raise _fail(e, deploy) from None
    context.log.info(f"images ready; pulled: {pulled or 'none'}")
    return plan


@dg.op(out={"plan": dg.Out(StackPlan, io_manager_key=IO),
            "services": dg.DynamicOut(ContainerSpec, io_manager_key=IO)})
def prepare_stack(context: dg.OpExecutionContext, docker: DockerResource, plan: StackPlan):
    """The network and the host directories the mounts need; services switched off are
    removed; then one step per service."""
    with docker.client() as client:
        state = engine.ensure_network(client, plan.network)
        engine.remove_disabled(client, plan.disabled, context.log.info)
    engine.ensure_local_dirs(plan.local_dirs)
    engine.write_textfiles(plan.textfiles)
    context.log.info(f"network {plan.network}: {state}")
    yield dg.Output(plan, "plan")
    for spec in plan.services:
        yield dg.DynamicOutput(spec, output_name="services", mapping_key=spec.service)


@dg.op(out=dg.Out(engine.Outcome, io_manager_key=IO))
def deploy_service(context: dg.OpExecutionContext, homelab: HomelabSettings, docker: DockerResource,
                   spec: ContainerSpec) -> engine.Outcome:
    """Create or update one container, wait until healthy; roll back if it never is."""
    deploy = homelab.deploy
    with docker.client() as client:
        try:
            outcome = engine.converge(client, spec, wait_s=deploy.monitoring.health.wait.seconds,
                                      log=context.log.info)
        except engine.DeployError as e:
            raise _fail(e, deploy, [spec]) from None
    context.log.info(f"{spec.service}: {outcome.action} ({outcome.container_id[:12]})")
    context.log_event(deployed(outcome, spec.stack, context.job_def.name))
    return outcome


@dg.op(out=dg.Out(dict, io_manager_key=IO))
def verify_stack(context: dg.OpExecutionContext, homelab: HomelabSettings, docker: DockerResource,
                 plan: StackPlan, outcomes: list) -> dict:
    """End to end: healthy containers; for monitoring, Prometheus' targets, rules and Alertmanager."""
    deploy = homelab.deploy
    timeout = deploy.monitoring.health.verify.seconds
    with docker.client() as client:
        try:
            if plan.stack == "monitoring":
                checks = engine.verify_monitoring(client, plan, timeout_s=timeout, log=context.log.info)
            else:
                checks = engine.verify_containers(client, plan, timeout_s=timeout)
                if plan.stack == "traefik":
                    checks |= engine.verify_traefik_routes(client, plan.services[0].name, plan.network, plan.route_hosts,
                                                           timeout_s=timeout)
        except engine.DeployError as e:
            raise _fail(e, deploy, plan.services) from None
    return {"checks": checks, "outcomes": outcomes}


@dg.op
def report_deploy(context: dg.OpExecutionContext, plan: StackPlan, verified: dict) -> None:
    """What changed, per service, for the run's page."""
    outcomes = sorted(verified["outcomes"], key=lambda o: o.service)
    rows = [dg.TableRecord({"service": o.service, "action": o.action, "container": o.container_id[:12],
                            "image": o.image, "memory_mb": o.limits.memory_mb, "cpuset": o.limits.cpuset or "",
                            "config_hash": o.config_hash}) for o in outcomes]
    cols = [dg.TableColumn(c, "int" if c == "memory_mb" else "string")
            for c in ("service", "action", "container", "image", "memory_mb", "cpuset", "config_hash")]
    meta = {"services": dg.MetadataValue.table(rows, schema=dg.TableSchema(columns=cols)),
            "changed": dg.MetadataValue.int(sum(o.action in ("created", "replaced") for o in outcomes)),
            "checks": dg.MetadataValue.json(verified["checks"]),
            "warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in plan.warnings) or "none")}
    if plan.budget_mb:
        meta["memory_mb"] = dg.MetadataValue.text(f"{plan.memory_mb} of {plan.budget_mb}")
    context.add_output_metadata(meta)
    context.log.info(", ".join(f"{o.service}: {o.action}" for o in outcomes))


# --- tune_monitoring ---------------------------------------------------------------------------

@dg.op(out=dg.Out(dict, io_manager_key=IO))
def measure_usage(context: dg.OpExecutionContext, config: TuneConfig, homelab: HomelabSettings,
                  docker: DockerResource) -> dict:
    """The Engine's stats for every running service of the stack over the window."""
    plan = monitoring_plan(homelab.deploy, docker)
    with docker.client() as client:
        current, missing = {}, []
        for s in plan.services:
            info = engine.inspect(client, s.name)
            if info is None or info["State"]["Status"] != "running":
                missing.append(s.service)
            else:
                current[s.service] = engine.limits_of(info)
        if missing:
            raise dg.Failure(description=f"not running, deploy_monitoring first: {', '.join(missing)}")
        context.log.info(f"sampling {len(current)} containers for {config.window_seconds:.0f}s")
        usage = tune.sample_usage(client, {s.service: s.name for s in plan.services}, config.window_seconds)
    return {"plan": plan, "usage": usage, "current": current}


@dg.op(out=dg.Out(list, io_manager_key=IO))
def propose_limits(context: dg.OpExecutionContext, config: TuneConfig, homelab: HomelabSettings,
                   measured: dict) -> list:
    """Headroom over the peaks, fitted into the budget; a service that cannot fit fails the run."""
    plan = measured["plan"]
    try:
        proposals = tune.propose(measured["usage"], measured["current"],
                                 budget_mb=homelab.deploy.monitoring.memory_budget_mb,
                                 headroom=config.headroom, min_headroom=config.min_headroom,
                                 order=[s.service for s in plan.services])
    except tune.FitError as e:
        raise dg.Failure(description=str(e), metadata={"service": e.service}) from None
    for p in proposals:
        context.log.info(f"{p.service}: {p.before.memory_mb} MB -> {p.after.memory_mb} MB, "
                         f"cpus {p.before.cpus} -> {p.after.cpus}")
    return proposals


@dg.op(out=dg.Out(dict, io_manager_key=IO))
def apply_limits(context: dg.OpExecutionContext, config: TuneConfig, homelab: HomelabSettings,
                 docker: DockerResource, measured: dict, proposals: list) -> dict:
    """`docker update` in place; a container the kernel cannot shrink live is recreated instead."""
    mon = homelab.deploy.monitoring
    plan: StackPlan = measured["plan"]
    changed = [p for p in proposals if p.changed]
    if config.dry_run or not changed:
        return {"applied": [], "proposals": proposals, "usage": measured["usage"]}
    applied, after = [], {}
    with docker.client() as client:
        for p in changed:
            spec = plan.service(p.service)
            try:
                engine.update_limits(client, spec.name, p.after)
                how = "updated"
            except engine.LimitsRefused as e:
                context.log.warning(f"{p.service}: {e}; recreating")
                new_spec = dataclasses.replace(spec, limits=p.after)
                engine.converge(client, new_spec, wait_s=mon.health.wait.seconds,
                                log=context.log.info, force=True)
                how = "recreated"
            applied.append((p.service, how))
            # Reported as each changes: a later service's failure must not hide what already changed.
            after[p.service] = engine.limits_of(client.api.inspect_container(spec.name))
            context.log_event(service_reported(p.service, "monitoring", action=f"limits {how}", image=spec.image,
                                               limits=after[p.service], run_by=context.job_def.name))
    svcs = mon.services
    record = tune.load_tuned(mon.state_dir)
    record.update(tune.tuned_record(
        [p for p in proposals], {p.service: getattr(svcs, p.service) for p in proposals}, time.time()))
    path = tune.save_tuned(mon.state_dir, record)
    context.log.info(f"tuned limits kept in {path} (deploy_monitoring uses them until settings change)")
    return {"applied": applied, "after": after, "proposals": proposals, "usage": measured["usage"]}


@dg.op
def report_tuning(context: dg.OpExecutionContext, applied: dict) -> None:
    rows = tune.as_rows(applied["proposals"], applied["usage"])
    how = dict(applied["applied"])
    cols = list(rows[0]) + ["applied"] if rows else ["service"]
    records = [dg.TableRecord({k: ("" if v is None else v) for k, v in {**r, "applied": how.get(r["service"], "no")}.items()})
               for r in rows]
    context.add_output_metadata({
        "limits": dg.MetadataValue.table(records, schema=dg.TableSchema(
            columns=[dg.TableColumn(c, "string") for c in cols])),
        "applied": dg.MetadataValue.int(len(how)),
    })


# --- Jobs -------------------------------------------------------------------------------------

def _deploy_tail(plan):
    plan, services = prepare_stack(pull_images(plan))
    outcomes = services.map(deploy_service).collect()
    report_deploy(plan, verify_stack(plan, outcomes))


@dg.graph
def deploy_monitoring_graph():
    _deploy_tail(plan_monitoring())


@dg.graph
def deploy_traefik_graph():
    _deploy_tail(plan_traefik())


@dg.graph
def tune_monitoring_graph():
    measured = measure_usage()
    report_tuning(apply_limits(measured, propose_limits(measured)))


def _job(graph, name: str, description: str, max_runtime_s: int) -> dg.JobDefinition:
    return graph.to_job(
        name=name, description=description,
        executor_def=dg.in_process_executor,  # one process: Docker calls, no parallel step processes on a Pi
        tags={"dagster/max_runtime": str(max_runtime_s)},
    )


# Needed beside `homelab` and `docker` wherever the jobs run (defs.py, tests).
RESOURCES = {IO: dg.mem_io_manager}


def build_jobs() -> list[dg.JobDefinition]:
    return [
        _job(deploy_monitoring_graph, "deploy_monitoring",
             "Render configs, ensure the network, converge each monitoring service (rolling back a "
             "replacement that never turns healthy), verify Prometheus sees the stack, report.", 1800),
        _job(deploy_traefik_graph, "deploy_traefik",
             "Traefik v3 with the Docker provider, HTTPS redirect, ACME, basic auth on every UI.", 900),
        _job(tune_monitoring_graph, "tune_monitoring",
             "Measure the stack's memory and CPU, propose limits with headroom that fit the budget, "
             "apply them in place and report before and after.", 3600),
    ]
