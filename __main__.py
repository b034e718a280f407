"""vllm-fleet: wires the stack config into components. No logic lives here."""
import pulumi

from components.docker.host import DockerHost, DockerHostArgs
from components.k8s.cluster_monitoring import ClusterMonitoring, ClusterMonitoringArgs
from components.k8s.fleet_namespace import FleetNamespace, FleetNamespaceArgs
from components.k8s.lws_controller import LwsController, LwsControllerArgs
from components.k8s.nginx_gateway import NginxGateway, NginxGatewayArgs
from components.k8s.vllm_model import VllmModel, VllmModelArgs
from components.docker.load_balancer import NginxLoadBalancer, NginxLoadBalancerArgs
from components.docker.monitoring import Monitoring, MonitoringArgs
from components.docker.vllm_replica import VllmReplica, VllmReplicaArgs
from fleet.config.schema import load_from_pulumi
from fleet.k8s.plan import build_k8s_plan
from fleet.docker.plan import build_plan

cfg, secrets = load_from_pulumi()

if cfg.target == "kubernetes":
    k8s_plan = build_k8s_plan(cfg)  # places models on node pools: nothing is registered before this succeeds
    fleet = FleetNamespace("fleet", FleetNamespaceArgs(k8s_plan, secrets))
    lws = LwsController("lws", LwsControllerArgs(k8s_plan, fleet)) if k8s_plan.k8s.install_lws else None
    models = [VllmModel(w.model.name, VllmModelArgs(k8s_plan, w, fleet, depends_on=[lws.release] if lws else []))
              for w in k8s_plan.workloads]
    gateway = NginxGateway("lb", NginxGatewayArgs(k8s_plan, fleet, [s for m in models for s in m.replica_services]))

    pulumi.export("url", gateway.url)
    pulumi.export("replicas", {w.replica_name(i): {"endpoint": w.endpoint(i), "kind": w.kind, "pool": w.pool.name,
                                                   "pods": w.nodes, "gpus_per_pod": w.gpus_per_pod,
                                                   "on_demand": i >= w.replicas}  # started by KEDA when busy
                               for w in k8s_plan.workloads for i in range(w.max_replicas)})
    if cfg.monitoring.enabled:
        monitoring = ClusterMonitoring("monitoring", ClusterMonitoringArgs(k8s_plan, fleet, secrets))
        pulumi.export("prometheus_url", monitoring.prometheus_url)
        if monitoring.grafana_url is not None:
            pulumi.export("grafana_url", monitoring.grafana_url)
            pulumi.export("grafana_admin_password", monitoring.grafana_admin_password)
else:
    plan = build_plan(cfg)  # validates placement too: nothing is registered before this succeeds

    hosts = {
        h.name: DockerHost(h.name, DockerHostArgs(
            h, cfg.stack, volumes=sorted({m.volume for c in plan.containers() if c.host == h.name for m in c.mounts if m.volume})))
        for h in plan.hosts_used
    }
    # Rolling updates: each replica of a model waits for the previous one, so a change that replaces
    # replicas takes them down one at a time and the rest keep serving (see docs/design-rollouts.md).
    replicas: list[VllmReplica] = []
    for r in plan.replicas:
        previous = [rep for rep, p in zip(replicas, plan.replicas) if p.model.name == r.model.name]
        replicas.append(VllmReplica(r.name, VllmReplicaArgs(r, hosts, secrets, after=previous[-1] if previous else None)))
    lb_spec = next(s for s in plan.services if s.role == "nginx")
    lb = NginxLoadBalancer("lb", NginxLoadBalancerArgs(
        cfg, lb_spec, next(s for s in plan.services if s.role == "nginx-config"), hosts[lb_spec.host],
        {m.name: [rep.endpoint for rep, r in zip(replicas, plan.replicas) if r.model.name == m.name] for m in cfg.models},
        replicas))

    pulumi.export("url", lb.url)
    pulumi.export("replicas", {r.name: {"host": r.host, "endpoint": rep.endpoint,
                                        "gpus": [list(c.gpu_ids or ()) for c in r.containers]}
                               for r, rep in zip(plan.replicas, replicas)})
    if cfg.monitoring.enabled:
        monitoring = Monitoring("monitoring", MonitoringArgs(plan, hosts, [rep.metrics_target for rep in replicas],
                                                             secrets, depends_on=[lb]))
        pulumi.export("prometheus_url", monitoring.prometheus_url)
        pulumi.export("grafana_url", monitoring.grafana_url)
        pulumi.export("grafana_admin_password", monitoring.grafana_admin_password)
