"""The deploy domain: deploy_monitoring, deploy_traefik and tune_monitoring (op graphs, run by hand).

No schedules: a deploy changes running services and is started by a person (or a CI hook).
"""

import dagster as dg

from homelab_ops.defs.deploy.ops import RESOURCES, build_jobs
from homelab_ops.defs.deploy.resources import docker_resource


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=build_jobs(), resources={"docker": docker_resource(), **RESOURCES})
