"""The Kubernetes target: declares a `K8sPlan` (fleet.k8s.plan) as components, and returns the
stack outputs. `__main__` calls `deploy`; nothing is registered before the plan is validated."""
from __future__ import annotations

from typing import Any, Mapping

import pulumi

from components.k8s.cluster_monitoring import ClusterMonitoring, ClusterMonitoringArgs
from components.k8s.fleet_namespace import FleetNamespace, FleetNamespaceArgs
from components.k8s.lws_controller import LwsController, LwsControllerArgs
from components.k8s.nginx_gateway import NginxGateway, NginxGatewayArgs
from components.k8s.vllm_model import VllmModel, VllmModelArgs
from fleet.config.schema import FleetConfig
from fleet.k8s.plan import build_k8s_plan


def deploy(cfg: FleetConfig, secrets: Mapping[str, pulumi.Output[str]]) -> dict[str, Any]:
    plan = build_k8s_plan(cfg)  # node pools and capacity are refused here, before any resource
    fleet = FleetNamespace("fleet", FleetNamespaceArgs(plan, secrets))
    lws = LwsController("lws", LwsControllerArgs(plan, fleet)) if plan.k8s.install_lws else None
    models = [VllmModel(w.model.name, VllmModelArgs(plan, w, fleet, depends_on=[lws.release] if lws else []))
              for w in plan.workloads]
    gateway = NginxGateway("lb", NginxGatewayArgs(plan, fleet, [s for m in models for s in m.replica_services], secrets))

    outputs: dict[str, Any] = {
        "url": gateway.url,
        "replicas": {w.replica_name(i): {"endpoint": w.endpoint(i), "kind": w.kind, "pool": w.pool.name,
                                         "pods": w.nodes, "gpus_per_pod": w.gpus_per_pod,
                                         "on_demand": i >= w.replicas}  # started by KEDA when busy
                     for w in plan.workloads for i in range(w.max_replicas)},
    }
    if cfg.monitoring.enabled:
        monitoring = ClusterMonitoring("monitoring", ClusterMonitoringArgs(plan, fleet, secrets))
        outputs["prometheus_url"] = monitoring.prometheus_url
        if monitoring.grafana_url is not None:
            outputs.update(grafana_url=monitoring.grafana_url, grafana_admin_password=monitoring.grafana_admin_password)
    return outputs
