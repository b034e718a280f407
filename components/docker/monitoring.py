"""HostMonitoring (type token `vllm-fleet:docker:Monitoring`, kept for the URNs): Prometheus (scraping every replica, Nginx and each GPU host), Grafana and exporters."""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi

from components.docker.container import container
from components.docker.host import DockerHost
from components.grafana_password import grafana_admin_password
from fleet.render.files import grafana_files, prometheus_files, prometheus_targets
from fleet.docker.plan import UPLOAD_DIR, DockerPlan


@dataclass
class HostMonitoringArgs:
    plan: DockerPlan
    hosts: Mapping[str, DockerHost]
    secrets: Mapping[str, pulumi.Output[str]]
    depends_on: list[pulumi.Resource]


class HostMonitoring(pulumi.ComponentResource):
    prometheus_yml: pulumi.Output[str]
    grafana_admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: HostMonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:docker:Monitoring", name, None, opts)
        plan, cfg = args.plan, args.plan.cfg
        self.grafana_admin_password = grafana_admin_password(name, args.secrets, self)

        # Prometheus's config and its targets are plain data of the plan, never a replica's outputs:
        # replacing replicas replaces nothing here, and a new target list replaces only its writer job.
        files = prometheus_files(cfg, plan.scrapes)
        self.prometheus_yml = pulumi.Output.from_input(files["/etc/prometheus/prometheus.yml"])
        targets = {f"{UPLOAD_DIR}/{posixpath.basename(path)}": text for path, text in prometheus_targets(plan.scrapes).items()}
        uploads = {"prometheus": files, "prometheus-targets": targets, "grafana": grafana_files(cfg, plan.prometheus_url)}
        self.containers = {}
        for spec in plan.services:
            if spec.role in ("nginx", "nginx-config", "nginx-tls"):  # the load balancer's own
                continue
            self.containers[spec.role + ("" if spec.role != "dcgm-exporter" else f"-{spec.host}")] = container(
                f"{name}-{spec.name.removeprefix(cfg.stack + '-')}", spec, args.hosts[spec.host], self,
                {"grafana_admin_password": self.grafana_admin_password}, uploads=uploads.get(spec.role),
                depends_on=args.depends_on)
        mon = cfg.monitoring
        self.prometheus_url = pulumi.Output.from_input(f"http://{mon.bind_address}:{mon.prometheus_port}")
        self.grafana_url = pulumi.Output.from_input(f"http://{mon.bind_address}:{mon.grafana_port}")
        self.register_outputs({"prometheus_url": self.prometheus_url, "grafana_url": self.grafana_url,
                               "grafana_admin_password": self.grafana_admin_password})
