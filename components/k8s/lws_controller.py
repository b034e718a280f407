"""LwsController: the LeaderWorkerSet controller (its Helm chart, pinned), for multi-node models."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from fleet.k8s import manifests as mf
from components.k8s.fleet_namespace import FleetNamespace
from fleet.k8s.plan import K8sPlan


@dataclass
class LwsControllerArgs:
    plan: K8sPlan
    fleet: FleetNamespace


class LwsController(pulumi.ComponentResource):
    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: LwsControllerArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:k8s:LwsController", name, None, opts)
        self.release = k8s.helm.v3.Release(
            f"{name}-chart", name="lws", chart=mf.LWS_CHART, version=args.plan.k8s.lws_chart_version,
            namespace=mf.LWS_NAMESPACE, create_namespace=True, atomic=True, timeout=600,
            opts=pulumi.ResourceOptions(parent=self, provider=args.fleet.provider))
        self.register_outputs({"version": self.release.version})
