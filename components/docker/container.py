"""Translates a planned ContainerSpec into a `pulumi_docker.Container` on its host.

Shared by every component of the Docker target, so a spec means the same thing everywhere.
"""
from __future__ import annotations

from typing import Mapping, Optional

import pulumi
import pulumi_docker as docker

from components.docker.host import DockerHost
from fleet.docker.container_spec import ContainerSpec

TIMEOUT_MARGIN_S = 120  # creating and starting the container, removing it after its stop


def go_duration(seconds: int) -> str:
    """`seconds` as Go's `time.Duration.String()` ("15s", "10m0s", "1h0m0s"): the form the provider
    reads a healthcheck back in, so an unchanged healthcheck shows no diff after a refresh."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s" if m else f"{s}s"


def timeouts(spec: ContainerSpec) -> pulumi.CustomTimeouts:
    """The provider bounds a container's create (start, health wait or job run) and delete (stop
    grace) by 20 minutes unless told otherwise: give each the time the plan allows it, plus margin."""
    return pulumi.CustomTimeouts(create=f"{spec.start_timeout_s + TIMEOUT_MARGIN_S}s",
                                 delete=f"{spec.stop_grace_s + TIMEOUT_MARGIN_S}s")


def container(resource_name: str, spec: ContainerSpec, host: DockerHost, parent: pulumi.Resource,
              secrets: Mapping[str, pulumi.Output[str]], uploads: Optional[pulumi.Input[Mapping[str, str]]] = None,
              depends_on: Optional[list[pulumi.Resource]] = None,
              triggers: Optional[Mapping[str, pulumi.Input[str]]] = None) -> docker.Container:
    """`uploads` (path -> content) may be an Output, e.g. a config rendered from other resources' outputs.

    `triggers`: values (e.g. another container's id) whose change replaces this container; they
    become labels `vllm-fleet.trigger.<key>`.
    """
    plain_env = [f"{k}={v}" for k, v in spec.env.items()]
    secret_env = [pulumi.Output.secret(secrets[key]).apply(lambda v, k=k: f"{k}={v}") for k, key in spec.secret_env.items()]
    envs = pulumi.Output.all(*secret_env).apply(lambda s: plain_env + list(s)) if secret_env else plain_env
    all_uploads = pulumi.Output.from_input(uploads or {}).apply(
        lambda extra: [docker.ContainerUploadArgs(file=path, content=content)
                       for path, content in sorted({**spec.uploads, **extra}.items())])
    image = host.image(spec.image)
    hc = spec.healthcheck
    return docker.Container(
        resource_name,
        name=None if spec.one_shot else spec.name,
        image=image.image_id,
        entrypoints=spec.entrypoint or None,
        command=spec.command or None,
        envs=envs,
        device_requests=[docker.ContainerDeviceRequestArgs(
            driver="nvidia", device_ids=[str(i) for i in spec.gpu_ids], capabilities=["gpu"])] if spec.gpu_ids else None,
        gpus="all" if spec.all_gpus else None,
        network_mode=spec.network_mode,
        networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=host.network.name, aliases=[spec.name])]
        if spec.network_mode == "bridge" else None,
        ipc_mode=spec.ipc_mode,
        shm_size=spec.shm_size_mb,
        ports=[docker.ContainerPortArgs(internal=p.internal, external=p.external, ip=p.ip) for p in spec.ports] or None,
        mounts=[docker.ContainerMountArgs(target=m.target, type="volume" if m.volume else "bind",
                                          source=host.volumes[m.volume].name if m.volume else m.host_path,
                                          read_only=m.read_only) for m in spec.mounts] or None,
        uploads=all_uploads,
        healthcheck=docker.ContainerHealthcheckArgs(
            tests=hc.test, interval=go_duration(hc.interval_s), timeout=go_duration(hc.timeout_s), retries=hc.retries,
            start_period=go_duration(hc.start_period_s),
            start_interval=go_duration(hc.start_interval_s) if hc.start_interval_s else None)
        if hc else None,
        labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in spec.labels.items()]
        + [docker.ContainerLabelArgs(label=f"vllm-fleet.trigger.{k}", value=v) for k, v in (triggers or {}).items()],
        capabilities=docker.ContainerCapabilitiesArgs(adds=spec.capabilities) if spec.capabilities else None,
        restart=spec.restart,
        must_run=True,
        stop_timeout=spec.stop_grace_s,
        destroy_grace_seconds=spec.stop_grace_s,
        # `pulumi up` waits until the container is healthy (a job: until it passed).
        wait=hc is not None,
        wait_timeout=spec.start_timeout_s if hc else None,
        opts=pulumi.ResourceOptions(
            parent=parent, provider=host.provider, depends_on=depends_on or [],
            # A fixed name (and a replica's GPUs, Nginx's port) must be free before the replacement
            # starts; a job is autonamed, so its next version runs before the old one is removed.
            delete_before_replace=not spec.one_shot,
            # Any change replaces, also one the provider would apply in place without effect (a
            # health check), and so does a failed create: the provider keeps a container that never
            # became healthy, and without this the next `pulumi up` would accept it unchecked.
            replace_on_changes=["*"],
            custom_timeouts=timeouts(spec)),
    )
