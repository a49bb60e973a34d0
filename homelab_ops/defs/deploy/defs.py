"""The deploy domain: deploy_monitoring, deploy_traefik and tune_monitoring (op graphs, run by hand),
and the services they run as the `deploy` group's assets, which the ops report.

No schedules: a deploy changes running services and is started by a person (or a CI hook).
"""

import dagster as dg

from homelab_ops.defs.deploy.ops import RESOURCES, build_jobs
from homelab_ops.defs.deploy.resources import docker_resource
from homelab_ops.defs.deploy.services import service_specs
from homelab_ops.settings import current


@dg.definitions
def defs() -> dg.Definitions:
    settings = current()
    services = service_specs(settings.monitoring, settings.traefik, settings.pitr.enabled)
    return dg.Definitions(assets=services, jobs=build_jobs(), resources={"docker": docker_resource(), **RESOURCES})
