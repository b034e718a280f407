"""The Docker target: declares a `DockerPlan` (fleet.docker.plan) as components, and returns the
stack outputs. `__main__` calls `deploy`; nothing is registered before the plan is validated."""
from __future__ import annotations

from typing import Any, Mapping

import pulumi

from components.docker.host import DockerHost, DockerHostArgs
from components.docker.load_balancer import NginxLoadBalancer, NginxLoadBalancerArgs
from components.docker.monitoring import HostMonitoring, HostMonitoringArgs
from components.docker.vllm_replica import VllmReplica, VllmReplicaArgs
from fleet.config.schema import FleetConfig
from fleet.docker.plan import build_plan


def deploy(cfg: FleetConfig, secrets: Mapping[str, pulumi.Output[str]]) -> dict[str, Any]:
    plan = build_plan(cfg)  # placement and capacity are refused here, before any resource
    hosts = {
        h.name: DockerHost(h.name, DockerHostArgs(
            h, cfg.stack, volumes=sorted({m.volume for c in plan.containers() if c.host == h.name for m in c.mounts if m.volume}),
            images=plan.image_names(h.name)))
        for h in plan.hosts_used
    }
    # Rolling updates: each replica of a model waits for the previous one, so a change that replaces
    # replicas takes them down one at a time and the rest keep serving (see docs/design-rollouts.md).
    replicas: dict[str, VllmReplica] = {}
    previous: dict[str, VllmReplica] = {}  # model name -> its last replica so far
    for r in plan.replicas:
        replicas[r.name] = VllmReplica(r.name, VllmReplicaArgs(r, hosts, secrets, after=previous.get(r.model.name)))
        previous[r.model.name] = replicas[r.name]
    nginx = plan.service("nginx")
    lb = NginxLoadBalancer("lb", NginxLoadBalancerArgs(
        cfg, nginx, plan.service("nginx-config"), hosts[nginx.host],
        {m.name: [replicas[r.name].endpoint for r in plan.replicas_of(m.name)] for m in cfg.models},
        list(replicas.values()), secrets, tls_spec=next((s for s in plan.services if s.role == "nginx-tls"), None)))

    outputs: dict[str, Any] = {
        "url": lb.url,
        "replicas": {r.name: {"host": r.host, "endpoint": replicas[r.name].endpoint,
                              "gpus": [list(c.gpu_ids or ()) for c in r.containers]} for r in plan.replicas},
    }
    if cfg.monitoring.enabled:
        monitoring = HostMonitoring("monitoring", HostMonitoringArgs(
            plan, hosts, secrets, depends_on=[lb]))
        outputs.update(prometheus_url=monitoring.prometheus_url, grafana_url=monitoring.grafana_url,
                       grafana_admin_password=monitoring.grafana_admin_password)
    return outputs
