"""A rotated credential's consumers, given the new value and proven healthy before the rotation finishes.

Between `test` and `finish` (the `restart` step) each service named in the credential's
`consumers` is found on the Docker Engine (`docker.host`) by its compose service label, else by
its container name. If the env template (`credentials.env_template`) has variables that name the
credential, the container is recreated with the same configuration and those variables set to the
pending value; otherwise it is restarted, for consumers that read the value from a file. Either
way it must turn healthy (its Docker healthcheck, else running) within `monitoring.health.wait`,
or the rotation stops before `finish`: the kind reverts `set` (a PostgreSQL role gets its current
password back; an old S3 key is still there), a recreated consumer is rolled back (the deploy
engine's swap), the pending version stays and the next run resumes. Containers the deploy graph
made (their secrets copied in) are left to the next deploy, and the asset lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from homelab_ops import docker_host
from homelab_ops.credentials.envfile import checked_template, environment_for
from homelab_ops.credentials.errors import CredentialError
from homelab_ops.credentials.kinds import Context, kind_for
from homelab_ops.credentials.store import payload_field
from homelab_ops.deploy import engine
from homelab_ops.deploy.spec import LABEL_SERVICE, NEXT_SUFFIX, PREVIOUS_SUFFIX

if TYPE_CHECKING:
    import docker

COMPOSE_SERVICE = "com.docker.compose.service"


def restart(ctx: Context) -> None:
    """The `restart` step: every consumer given the pending value and healthy, or a CredentialError
    naming the consumer (which the rotation records and stops on)."""
    d, config = ctx.definition, ctx.config
    if not d.consumers:
        return
    if config is None or not config.credentials.restart_consumers:
        ctx.left_to_restart.extend(d.consumers)
        ctx.notes.append(f"consumers not restarted (credentials.restart_consumers is off): restart "
                         f"{', '.join(d.consumers)} yourself")
        return
    env = pending_environment(ctx)
    from docker.errors import DockerException
    try:
        client = docker_host.connect(config.docker.host, 120)
    except DockerException as e:
        raise CredentialError(f"cannot reach the Docker Engine at docker.host to restart the consumers "
                              f"({', '.join(d.consumers)}): {type(e).__name__}") from None
    try:
        for service in d.consumers:
            what, done = refresh(client, service, env, wait_s=config.consumer_wait_seconds,
                                 prefix=config.docker.name_prefix, log=ctx.notes.append,
                                 revert=lambda: kind_for(d.kind).revert(ctx))
            ctx.notes.append(f"consumer {service}: {what}")
            if not done:
                ctx.left_to_restart.append(service)
    finally:
        client.close()


def pending_environment(ctx: Context) -> dict[str, str]:
    """The env template's variables that name this credential, rendered with the pending version
    (other credentials at their current one)."""
    template_path = ctx.config.credentials.env_template
    if not template_path:
        return {}
    template, _ = checked_template(template_path)
    _, pending = ctx.read("pending", "consumer restart")

    def lookup(name: str, field: str) -> str:
        if name == ctx.name:
            return payload_field(name, pending, field)
        value = ctx.store.value(name, field, purpose="consumer restart")
        ctx.secrets.add(value)
        return value

    return environment_for(template, ctx.name, lookup)


def find(client: docker.DockerClient, service: str, prefix: str = "") -> dict | None:
    """The consumer's container: compose's service label, else the container named `service` or
    `<docker.name_prefix><service>`; an interrupted recreate's `-previous`/`-next` is resolved first."""
    labelled = client.api.containers(all=True, filters={"label": f"{COMPOSE_SERVICE}={service}"})
    names = {n.lstrip("/") for c in labelled for n in c["Names"]}
    names = {n.removesuffix(PREVIOUS_SUFFIX).removesuffix(NEXT_SUFFIX) for n in names}
    if len(names) > 1:
        raise CredentialError(f"consumer {service}: {len(names)} containers carry its compose label "
                              f"({', '.join(sorted(names))}); name the container instead")
    for name in [*names, service, prefix + service]:
        info = engine.recover(client, name, service, 30, lambda _m: None)
        if info is not None:
            return info
    return None


def refresh(client: docker.DockerClient, service: str, env: dict[str, str], *, wait_s: float, prefix: str = "",
            log=print, revert=lambda: "") -> tuple[str, bool]:
    """Give one consumer `env` (recreate) or just restart it; returns what was done and whether the
    consumer now has the new value (False: it is left to the owner or the next deploy)."""
    info = find(client, service, prefix)
    if info is None:  # not deployed (yet): nothing holds the old value
        return "no container on the Docker Engine, nothing to restart", True
    if LABEL_SERVICE in (info["Config"].get("Labels") or {}):
        # Deployed by the deploy graph with its secrets copied in: a copy of its config would lack them.
        return "deployed by homelab-ops: the next deploy_monitoring/deploy_traefik gives it the new value", False
    from docker.errors import DockerException
    name, cid = info["Name"].lstrip("/"), info["Id"]
    current = info["Config"].get("Env") or []
    wanted = merged_env(current, env)
    if wanted == current:
        client.api.restart(cid, timeout=30)
        health = engine.wait_healthy(client, cid, wait_s)
        if not health.ok:
            raise CredentialError(f"consumer {service}: not healthy after a restart with the new value "
                                  f"({health.detail}); {revert()}")
        return "restarted, healthy", True
    try:
        new_id = client.api.create_container_from_config(recreate_config(info, wanted), name=name + NEXT_SUFFIX)["Id"]
        engine.swap(client, service, name, new_id, info, stop_timeout_s=30, wait_s=wait_s, log=log,
                    before_rollback=revert)
    except engine.DeployError as e:  # rolled back: name what failed, never the logs (they may print values)
        raise CredentialError(f"consumer {service}: {e.summary.removeprefix(service + ': ')}") from None
    except DockerException as e:  # the class name only: an API message could quote the config
        raise CredentialError(f"consumer {service}: Docker refused the recreate: {type(e).__name__}") from None
    return "recreated with the new value, healthy", True


def merged_env(current: list[str], env: dict[str, str]) -> list[str]:
    """`current` (KEY=VALUE entries) with the variables in `env` replaced; only variables the
    container already has change: a consumer is never given a variable it did not use."""
    out = []
    for entry in current:
        key = entry.split("=", 1)[0]
        out.append(f"{key}={env[key]}" if key in env else entry)
    return out


def recreate_config(info: dict, env: list[str]) -> dict:
    """The create body for a copy of the inspected container with `env`: its Config, HostConfig
    and networks (with their aliases), so compose still owns it by its labels."""
    config = {k: v for k, v in info["Config"].items() if k not in ("Hostname",)}
    if info["Config"].get("Hostname") and not info["Id"].startswith(info["Config"]["Hostname"]):
        config["Hostname"] = info["Config"]["Hostname"]  # set on purpose, not Docker's default
    config["Env"] = env
    config["HostConfig"] = info["HostConfig"]
    networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
    config["NetworkingConfig"] = {"EndpointsConfig": {
        net: {"Aliases": [a for a in (ep.get("Aliases") or []) if not info["Id"].startswith(a)] or None,
              "IPAMConfig": ep.get("IPAMConfig"), "Links": ep.get("Links")}
        for net, ep in networks.items()}}
    return config
