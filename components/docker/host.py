"""DockerHost: one Docker engine of the inventory, its fleet network, volumes and pulled images."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_docker as docker

from fleet.config.schema import Host


@dataclass
class DockerHostArgs:
    host: Host
    stack: str
    volumes: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)  # reference -> resource name suffix (DockerPlan.image_names)


class DockerHost(pulumi.ComponentResource):
    def __init__(self, name: str, args: DockerHostArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:docker:Host", name, None, opts)
        self.host = args.host
        self._name = name
        self.provider = docker.Provider(
            f"{name}-docker", host=args.host.docker_host, ssh_opts=args.host.ssh_options or None,
            opts=pulumi.ResourceOptions(parent=self))
        self.child_opts = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.network = docker.Network(
            f"{name}-net", name=f"{args.stack}-net", driver="bridge",
            labels=[docker.NetworkLabelArgs(label="managed-by", value="vllm-fleet")], opts=self.child_opts)
        self.volumes = {
            v: docker.Volume(f"{name}-{v}", name=v, opts=self.child_opts.merge(pulumi.ResourceOptions(retain_on_delete=True)))
            for v in args.volumes
        }
        self._image_names = args.images
        self._images: dict[str, docker.RemoteImage] = {}
        self.register_outputs({"network": self.network.name})

    def image(self, ref: str) -> docker.RemoteImage:
        """The pulled image `ref` on this host (one pull per host and reference)."""
        if ref not in self._images:
            self._images[ref] = docker.RemoteImage(
                f"{self._name}-image-{self._image_names[ref]}", name=ref, keep_locally=True, opts=self.child_opts.merge(
                    pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=f"{self.host.pull_timeout_s}s"))))
        return self._images[ref]
