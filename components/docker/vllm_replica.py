"""VllmReplica: one vLLM server (one container, or one per node for a multi-host pipeline)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi

from components.docker.container import container
from components.docker.host import DockerHost
from fleet.docker.plan import ReplicaPlan


@dataclass
class VllmReplicaArgs:
    plan: ReplicaPlan
    hosts: Mapping[str, DockerHost]
    secrets: Mapping[str, pulumi.Output[str]]
    # Rolling updates: the previous replica of the same model. This replica's containers are
    # registered only after that one is healthy and its rollout gate has passed (Nginx serves
    # from it again), so replacements happen one at a time.
    after: Optional["VllmReplica"] = None


class VllmReplica(pulumi.ComponentResource):
    endpoint: pulumi.Output[str]
    metrics_target: pulumi.Output[str]

    def __init__(self, name: str, args: VllmReplicaArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:docker:VllmReplica", name, None, opts)
        plan = args.plan
        # Worker nodes first: the API server (rank 0) waits for them at startup, and `pulumi up`
        # waits for the API server's health check.
        previous = [args.after.ready] if args.after else []
        workers = [container(f"{name}-node{c.labels['vllm-fleet.node-rank']}", c, args.hosts[c.host], self, args.secrets,
                             depends_on=previous) for c in plan.containers[1:]]
        self.server = container(f"{name}-server", plan.containers[0], args.hosts[plan.containers[0].host], self, args.secrets,
                                depends_on=workers + previous)
        self.containers = [self.server, *workers]
        # Replaced whenever the server is (its id is a trigger): the next replica waits for it.
        self.ready = self.server if plan.gate is None else container(
            f"{name}-rollout-gate", plan.gate, args.hosts[plan.gate.host], self, args.secrets,
            depends_on=[self.server], triggers={"server-id": self.server.id})
        if plan.model.replicas == 1:
            pulumi.log.warn(f"model `{plan.model.name}` has a single replica: a change that replaces it means "
                            "downtime until the new one is healthy (set replicas >= 2 to roll without it)", resource=self)
        # Endpoints come from the container's own outputs: the name Docker gave it, on its network.
        lead = plan.containers[0]
        self.endpoint = self._address(plan.endpoint, lead.name)
        self.metrics_target = self._address(plan.metrics_target, lead.name)
        self.register_outputs({"endpoint": self.endpoint, "metrics_target": self.metrics_target,
                               "host": plan.host, "gpus": [list(c.gpu_ids or ()) for c in plan.containers]})

    def _address(self, planned: str, planned_name: str) -> pulumi.Output[str]:
        host_part, port = planned.rsplit(":", 1)
        if host_part == planned_name:
            return self.server.name.apply(lambda n: f"{n}:{port}")
        published = self.server.ports.apply(lambda ps: next(
            (f"{p.ip}:{p.external}" for p in ps or [] if str(p.external) == port), planned))
        return published
