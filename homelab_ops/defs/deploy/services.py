"""The deployed services as assets of the `deploy` group: what runs, with which image and limits, and
when it was last deployed or tuned.

Nothing materializes them from the UI: a deploy changes running containers and is the op graphs'
job, started by a person. The ops report each service as they converge it (`deploy_service`) or
change its limits (`apply_limits`), so each box in the lineage is one container of the homelab,
and its history is the service's deploy history.
"""

import dagster as dg

from homelab_ops.deploy.engine import Outcome
from homelab_ops.deploy.plan import switched_off
from homelab_ops.deploy.spec import Limits
from homelab_ops.settings import MonitoringServices, MonitoringSettings, ServiceSettings, TraefikSettings

GROUP = "deploy"


def service_key(service: str) -> dg.AssetKey:
    return dg.AssetKey(["deploy", service])


def _spec(service: str, stack: str, image: str, memory_mb: int | None, off: str) -> dg.AssetSpec:
    limits = f", {memory_mb} MB" if memory_mb else ""
    return dg.AssetSpec(
        service_key(service), group_name=GROUP, kinds={"docker"},
        description=f"The {service} container of the {stack} stack (configured: {image}{limits}). "
                    f"deploy_{stack} reports its image, limits and what it did each time it converges "
                    f"it{', tune_monitoring when it changes its limits' if stack == 'monitoring' else ''}."
                    + (f" It is switched off ({off}): a deploy removes it." if off else ""),
        metadata={"stack": stack})


def service_specs(monitoring: MonitoringSettings, traefik: TraefikSettings, pitr_enabled: bool) -> list[dg.AssetSpec]:
    """One asset per service either stack can run, the switched-off ones too (their box says so)."""
    specs = []
    for name in MonitoringServices.model_fields:
        svc: ServiceSettings = getattr(monitoring.services, name)
        specs.append(_spec(name, "monitoring", svc.image, svc.memory_mb,
                           switched_off(name, monitoring.services, pitr_enabled)))
    specs.append(_spec("traefik", "traefik", traefik.image, None, ""))
    return specs


def service_reported(service: str, stack: str, *, action: str, image: str, limits: Limits, run_by: str,
                     container: str = "", config_hash: str = "") -> dg.AssetMaterialization:
    """One service as an op left it: the record its asset shows as the latest deploy."""
    metadata = {
        "stack": stack, "action": action, "image": image, "memory_mb": dg.MetadataValue.int(limits.memory_mb),
        "cpuset": limits.cpuset or "all", "cpus": "whole cpuset" if limits.cpus is None else str(limits.cpus),
        "by": run_by,
    }
    if container:
        metadata["container"] = container[:12]
    if config_hash:
        metadata["config_hash"] = config_hash
    return dg.AssetMaterialization(service_key(service), metadata=metadata,
                                   description=f"{service}: {action} by {run_by}")


def deployed(outcome: Outcome, stack: str, run_by: str) -> dg.AssetMaterialization:
    return service_reported(outcome.service, stack, action=outcome.action, image=outcome.image,
                            limits=outcome.limits, run_by=run_by, container=outcome.container_id,
                            config_hash=outcome.config_hash)
