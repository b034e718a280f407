"""HostMonitoring (type token `vllm-fleet:docker:Monitoring`, kept for the URNs): Prometheus (scraping every replica, Nginx and each GPU host), Grafana and exporters."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi

from components.docker.container import container
from components.docker.host import DockerHost
from components.grafana_password import grafana_admin_password
from fleet.render.files import grafana_files, prometheus_files
from fleet.docker.plan import DockerPlan


@dataclass
class HostMonitoringArgs:
    plan: DockerPlan
    hosts: Mapping[str, DockerHost]
    replica_targets: list[pulumi.Output[str]]  # one per job "vllm" scrape, in plan order
    secrets: Mapping[str, pulumi.Output[str]]
    depends_on: list[pulumi.Resource]


class HostMonitoring(pulumi.ComponentResource):
    prometheus_yml: pulumi.Output[str]
    grafana_admin_password: pulumi.Output[str]

    def __init__(self, name: str, args: HostMonitoringArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:docker:Monitoring", name, None, opts)
        plan, cfg = args.plan, args.plan.cfg
        self.grafana_admin_password = grafana_admin_password(name, args.secrets, self)

        def scrapes_with(targets: list[str]):
            it = iter(targets)
            return [dataclasses.replace(s, target=next(it)) if s.job == "vllm" else s for s in plan.scrapes]

        files = pulumi.Output.all(*args.replica_targets).apply(lambda t: prometheus_files(cfg, scrapes_with(t)))
        self.prometheus_yml = files.apply(lambda f: f["/etc/prometheus/prometheus.yml"])
        self.containers = {}
        for spec in plan.services:
            if spec.role in ("nginx", "nginx-config"):
                continue
            uploads = files if spec.role == "prometheus" else grafana_files(cfg, plan.prometheus_url) if spec.role == "grafana" else None
            self.containers[spec.role + ("" if spec.role != "dcgm-exporter" else f"-{spec.host}")] = container(
                f"{name}-{spec.name.removeprefix(cfg.stack + '-')}", spec, args.hosts[spec.host], self,
                {"grafana_admin_password": self.grafana_admin_password}, uploads=uploads, depends_on=args.depends_on)
        mon = cfg.monitoring
        self.prometheus_url = pulumi.Output.from_input(f"http://{mon.bind_address}:{mon.prometheus_port}")
        self.grafana_url = pulumi.Output.from_input(f"http://{mon.bind_address}:{mon.grafana_port}")
        self.register_outputs({"prometheus_url": self.prometheus_url, "grafana_url": self.grafana_url,
                               "grafana_admin_password": self.grafana_admin_password})
