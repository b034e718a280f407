"""ClusterMonitoring: kube-prometheus-stack (or an existing Prometheus Operator) watching the fleet.

Monitors for the vLLM servers and Nginx, our alert rules as a PrometheusRule, our Grafana
dashboard as a sidecar-loaded ConfigMap, and NVIDIA's DCGM exporter on the GPU nodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi
import pulumi_kubernetes as k8s

from fleet.k8s import manifests as mf
from components.grafana_password import grafana_admin_password
from components.k8s.fleet_namespace import FleetNamespace
from components.k8s.resources import declare
from fleet.k8s.plan import K8sPlan


@dataclass
class ClusterMonitoringArgs:
    plan: K8sPlan
    fleet: FleetNamespace
    secrets: Mapping[str, pulumi.Output[str]]


class ClusterMonitoring(pulumi.ComponentResource):
    prometheus_url: pulumi.Output[str]
    grafana_url: Optional[pulumi.Output[str]]
    grafana_admin_password: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: ClusterMonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:k8s:ClusterMonitoring", name, None, opts)
        plan, mon, k = args.plan, args.plan.cfg.monitoring, args.plan.k8s
        install = k.monitoring.mode == "kube-prometheus-stack"
        base = pulumi.ResourceOptions(parent=self, provider=args.fleet.provider)
        mon_ns = None
        if install and k.create_namespace:
            # node-exporter (host namespaces) and the DCGM exporter (CAP_SYS_ADMIN) need `privileged`.
            # Often there already (`monitoring` is a common name), and shared: adopted, never deleted.
            mon_ns = declare(f"{name}-namespace", mf.namespace(plan, k.monitoring.namespace, "privileged"),
                             args.fleet.kept_opts.merge(pulumi.ResourceOptions(parent=self)))
        in_mon = base.merge(pulumi.ResourceOptions(depends_on=[mon_ns] if mon_ns else []))
        self.grafana_admin_password = None
        self.grafana_url = None
        self.release = None
        if install:
            self.grafana_admin_password = grafana_admin_password(name, args.secrets, self)
            admin = mf.grafana_admin_secret(plan)
            self.grafana_secret = declare(f"{name}-grafana-admin", admin, in_mon, string_data={
                **admin["stringData"], "admin-password": self.grafana_admin_password})
            self.release = k8s.helm.v3.Release(
                f"{name}-kube-prometheus-stack", name="kube-prometheus-stack", chart="kube-prometheus-stack",
                version=k.monitoring.chart_version, namespace=k.monitoring.namespace,
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=mf.KPS_REPO),
                values=mf.kube_prometheus_stack_values(plan), atomic=True, timeout=900,
                opts=in_mon.merge(pulumi.ResourceOptions(depends_on=[self.grafana_secret])))
            self.grafana_url = pulumi.Output.from_input(mf.grafana_url(plan))
        # The operator's CRDs come with the chart: its custom resources wait for it.
        crds = base.merge(pulumi.ResourceOptions(depends_on=[r for r in (self.release, args.fleet.namespace_resource) if r]))
        self.dashboards = declare(f"{name}-dashboards", mf.dashboards_config_map(plan), in_mon)
        self.monitors = [declare(f"{name}-{m['metadata']['name']}", m, crds)
                         for m in (mf.vllm_pod_monitor(plan), mf.otel_pod_monitor(plan), mf.nginx_pod_monitor(plan)) if m]
        self.rules = declare(f"{name}-alert-rules", mf.prometheus_rule(plan), crds)
        if mon.gpu_exporter:
            self.dcgm_account = declare(f"{name}-dcgm-account", mf.dcgm_service_account(plan), in_mon)
            self.dcgm = declare(f"{name}-dcgm-exporter", mf.dcgm_daemonset(plan), in_mon.merge(
                pulumi.ResourceOptions(depends_on=[self.dcgm_account])))
            self.dcgm_service = declare(f"{name}-dcgm-service", mf.dcgm_service(plan), in_mon)
            self.dcgm_network_policy = declare(f"{name}-dcgm-netpol", mf.dcgm_network_policy(plan), in_mon)
            self.monitors.append(declare(f"{name}-dcgm-monitor", mf.dcgm_service_monitor(plan), crds))
        self.prometheus_url = pulumi.Output.from_input(mf.prometheus_url(plan))
        self.register_outputs({"prometheus_url": self.prometheus_url, "grafana_url": self.grafana_url,
                               "grafana_admin_password": self.grafana_admin_password})
