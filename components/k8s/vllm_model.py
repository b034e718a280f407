"""VllmModel: one model on the cluster, its replicas, their stable addresses and disruption rules.

A StatefulSet (one pod per replica) or, for replicas larger than a node, a LeaderWorkerSet (one
group of pods per replica); a Service per replica that Nginx targets; a PodDisruptionBudget; a
NetworkPolicy; and, when autoscaled, a KEDA ScaledObject.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi

from fleet.k8s import manifests as mf
from components.k8s.fleet_namespace import FleetNamespace
from components.k8s.resources import declare
from fleet.k8s.plan import K8sPlan, Workload


@dataclass
class VllmModelArgs:
    plan: K8sPlan
    workload: Workload
    fleet: FleetNamespace
    depends_on: list[pulumi.Resource] = field(default_factory=list)  # e.g. the LeaderWorkerSet controller


class VllmModel(pulumi.ComponentResource):
    endpoints: pulumi.Output[list[str]]

    def __init__(self, name: str, args: VllmModelArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:k8s:VllmModel", name, None, opts)
        plan, w = args.plan, args.workload
        base = args.fleet.child_opts.merge(pulumi.ResourceOptions(parent=self))
        headless = mf.headless_service(plan, w)
        self.headless_service = declare(f"{name}-pods", headless, base) if headless else None
        self.replica_services = [declare(f"{name}-{i}", mf.replica_service(plan, w, i), base) for i in range(w.max_replicas)]
        rollout = f"{mf.rollout_timeout_s(plan, w)}s"
        workload_opts = base.merge(pulumi.ResourceOptions(
            depends_on=[*args.fleet.ready, *args.depends_on, *([self.headless_service] if self.headless_service else [])],
            # vLLM downloads and loads weights before it is Ready: Pulumi waits that long per replica.
            custom_timeouts=pulumi.CustomTimeouts(create=rollout, update=rollout),
            # KEDA owns the replica count of an autoscaled model; Pulumi sets only its starting value.
            ignore_changes=["spec.replicas"] if w.autoscaling else None))
        self.workload = declare(f"{name}-{'group' if w.multi_node else 'set'}", mf.workload(plan, w), workload_opts)
        self.disruption_budget = declare(f"{name}-pdb", mf.disruption_budget(plan, w), base)
        self.network_policy = declare(f"{name}-netpol", mf.network_policy(plan, w), base)
        scaled = mf.scaled_object(plan, w)
        self.scaled_object = (declare(f"{name}-autoscale", scaled, base.merge(pulumi.ResourceOptions(depends_on=[self.workload])))
                              if scaled else None)
        if w.replicas == 1 and not w.multi_node:
            pulumi.log.warn(f"model `{w.model.name}` has one replica: a StatefulSet replaces it in place, so it is "
                            "unavailable while a changed pod loads its weights; run 2 replicas to roll without downtime",
                            resource=self)
        self.endpoints = pulumi.Output.from_input(w.endpoints)
        self.register_outputs({"endpoints": self.endpoints, "kind": w.kind, "pool": w.pool.name})
