"""Translates a planned ContainerSpec into a `pulumi_docker.Container` on its host.

Shared by every component of the Docker target, so a spec means the same thing everywhere.
"""
from __future__ import annotations

from typing import Mapping, Optional

import pulumi
import pulumi_docker as docker

from components.docker.host import DockerHost
from fleet.docker.container_spec import ContainerSpec


def container(resource_name: str, spec: ContainerSpec, host: DockerHost, parent: pulumi.Resource,
              secrets: Mapping[str, pulumi.Output[str]], uploads: Optional[pulumi.Input[Mapping[str, str]]] = None,
              depends_on: Optional[list[pulumi.Resource]] = None,
              delete_before_replace: bool = False,
              triggers: Optional[Mapping[str, pulumi.Input[str]]] = None) -> docker.Container:
    """`uploads` (path -> content) may be an Output, e.g. a config rendered from other resources' outputs.

    `delete_before_replace`: free the old container's name and GPUs before its replacement starts.
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
            tests=hc.test, interval=hc.interval, timeout=hc.timeout, retries=hc.retries, start_period=hc.start_period)
        if hc else None,
        labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in spec.labels.items()]
        + [docker.ContainerLabelArgs(label=f"vllm-fleet.trigger.{k}", value=v) for k, v in (triggers or {}).items()],
        capabilities=docker.ContainerCapabilitiesArgs(adds=spec.capabilities) if spec.capabilities else None,
        restart="no" if spec.one_shot else spec.restart,
        must_run=not spec.one_shot,
        attach=spec.one_shot,  # `pulumi up` waits for a job to finish before what depends on it
        stop_timeout=spec.stop_grace_s,
        destroy_grace_seconds=spec.stop_grace_s,
        wait=hc is not None,
        wait_timeout=spec.start_timeout_s if hc else None,
        opts=pulumi.ResourceOptions(parent=parent, provider=host.provider, depends_on=depends_on or [],
                                    delete_before_replace=delete_before_replace,
                                    custom_timeouts=pulumi.CustomTimeouts(create=f"{spec.start_timeout_s}s")
                                    if spec.one_shot else None),
    )
