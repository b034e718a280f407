"""The fleet plan: every container of a stack, as plain data, computed from a validated config.

`build_plan()` is pure: the Pulumi program, the offline render and the tests all start here.
A service is reached by its container name when its consumer runs on the same host (one Docker
network per host), otherwise through a port published on the host's inventory address only.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from fleet import rollout, vllm_command as vc
from fleet.docker import jobs
from fleet.capacity.memory import Devices, FleetCapacity, architectures, plan_fleet
from fleet.capacity.refusals import check_fit, check_models
from fleet.config.errors import ConfigError
from fleet.config.schema import FleetConfig, Host, Model
from fleet.docker.container_spec import ContainerSpec, HealthCheck, Mount, Port
from fleet.docker.ledger import check_claims, image_resource_names
from fleet.docker.placement import ReplicaPlacement, place
from fleet.ports import (DCGM_PORT, GRAFANA_PORT, NGINX_CONF_DIR, NGINX_EXPORTER_PORT, NGINX_PORT, NGINX_STATUS_PORT,
                         NGINX_STOP_GRACE_S, NGINX_TLS_DIR, NGINX_TLS_PORT, PROMETHEUS_PORT, TLS_CERT_FILE, TLS_KEY_FILE)
from fleet.render.files import PROMETHEUS_TARGETS_DIR, UPSTREAM_KEY_ENV, Scrape
from fleet.render.templates import static

VLLM_HOST_PORT_BASE = 8000
MASTER_PORT_BASE = 29500
UPLOAD_DIR = "/incoming"  # where a file writer job's uploads land
FILE_WRITER_TIMEOUT_S = 60
NGINX_CONF_UPLOAD = f"{UPLOAD_DIR}/nginx.conf"
NGINX_ENTRYPOINT = "/usr/local/bin/fleet-nginx.sh"


@dataclass
class ReplicaPlan:
    model: Model
    placement: ReplicaPlacement
    containers: list[ContainerSpec]  # the API server (node rank 0) first
    endpoint: str  # what Nginx proxies to
    metrics_target: str  # what Prometheus scrapes
    otel_target: Optional[str] = None
    # Runs once this replica is healthy; the next replica of the model waits for it (fleet/rollout.py).
    gate: Optional[ContainerSpec] = None

    @property
    def name(self) -> str:
        return self.placement.name

    @property
    def host(self) -> str:
        return self.placement.leader.host


@dataclass
class DockerPlan:
    cfg: FleetConfig
    placements: list[ReplicaPlacement]
    capacity: FleetCapacity
    replicas: list[ReplicaPlan]
    services: list[ContainerSpec]  # nginx, exporters, prometheus, grafana
    scrapes: list[Scrape]

    def replicas_of(self, model: str) -> list[ReplicaPlan]:
        return [r for r in self.replicas if r.model.name == model]

    def service(self, role: str) -> ContainerSpec:
        return next(s for s in self.services if s.role == role)

    @property
    def hosts_used(self) -> list[Host]:
        used = {c.host for c in self.containers()}
        return [h for h in self.cfg.hosts if h.name in used]

    @property
    def prometheus_url(self) -> str:
        """Prometheus as Grafana (on the same host and network) reaches it."""
        return f"http://{container_name(self.cfg, 'prometheus')}:{PROMETHEUS_PORT}"

    def containers(self) -> list[ContainerSpec]:
        return [c for r in self.replicas for c in (*r.containers, *([r.gate] if r.gate else []))] + self.services

    def image_names(self, host: str) -> dict[str, str]:
        """Image reference -> the Pulumi name suffix of its pull on `host` (fleet.docker.ledger)."""
        return image_resource_names(c.image for c in self.containers() if c.host == host)


def container_name(cfg: FleetConfig, suffix: str) -> str:
    return f"{cfg.stack}-{suffix}"


def reach(consumer: Host, provider: Host, name: str, internal: int, published: int) -> str:
    return f"{name}:{internal}" if consumer.name == provider.name else f"{provider.address}:{published}"


def labels(cfg: FleetConfig, role: str, **extra: str) -> dict[str, str]:
    return {"managed-by": "vllm-fleet", "vllm-fleet.stack": cfg.stack, "vllm-fleet.role": role, **extra}


def build_plan(cfg: FleetConfig) -> DockerPlan:
    """Places every replica once, refuses what would not fit there, then plans every container."""
    archs = architectures(cfg)
    check_models(cfg, archs)
    placements = place(cfg, archs)
    capacity = plan_fleet(cfg, archs, devices(cfg, placements))
    check_fit(capacity)
    next_port = {h.name: VLLM_HOST_PORT_BASE for h in cfg.hosts}
    cpu_slots = _cpu_slots(cfg, placements)
    replicas = []
    for p in placements:
        model = next(m for m in cfg.models if m.name == p.model)
        ports = {}
        for s in p.shards:
            ports[s.host] = next_port[s.host]
            next_port[s.host] += 1
        replicas.append(_replica(cfg, model, p, ports, cpu_slots.get(p.name)))
    services, scrapes = _services(cfg, replicas)
    plan = DockerPlan(cfg, placements, capacity, replicas, services, scrapes)
    check_claims(cfg, plan.containers())
    return plan


def devices(cfg: FleetConfig, placements: list[ReplicaPlacement]) -> Devices:
    """The placement as the capacity planner reads it: each replica's GPU model (its leader's host)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for p in placements:
        host = cfg.host(p.leader.host)
        out.setdefault(p.model, []).append((p.name, host.gpu_model if host.gpus else "cpu"))
    return Devices(out)


def _cpu_slots(cfg: FleetConfig, placements: list[ReplicaPlacement]) -> dict[str, str]:
    """Disjoint core ranges for CPU replicas: vLLM's CPU backend otherwise pins every server to core 0."""
    out: dict[str, str] = {}
    for j, h in enumerate(cfg.hosts):
        mine = [p for p in placements if p.leader.host == h.name and not p.leader.gpu_ids]
        if not mine:
            continue
        count = ", ".join(f"{m}: {n}" for m, n in Counter(p.model for p in mine).items())
        if not h.cpus:
            raise ConfigError(f"hosts[{j}].cpus", None, f"host `{h.name}` runs CPU replicas ({count}) but does not say how "
                              "many cores it has, so they cannot get cores of their own (vLLM pins each to core 0)",
                              "the host's core count (`nproc`)", f"set `hosts[{j}].cpus`")
        if len(mine) > h.cpus:
            raise ConfigError(f"hosts[{j}].cpus", h.cpus, f"host `{h.name}` has {h.cpus} cores for {len(mine)} CPU "
                              f"replicas ({count}): two would share cores", "at least one core per CPU replica",
                              "lower the CPU models' replicas, add a CPU host, or correct the core count")
        per = h.cpus // len(mine)
        for k, p in enumerate(mine):
            lo = k * per
            out[p.name] = f"{lo}-{lo + per - 1}" if per > 1 else str(lo)
    return out


def _replica(cfg: FleetConfig, model: Model, p: ReplicaPlacement, ports: dict[str, int],
             cpu_bind: Optional[str]) -> ReplicaPlan:
    leader_host = cfg.host(p.leader.host)
    lb, mon = cfg.lb_host, cfg.monitoring_host
    multi = p.multi_node
    host_port = ports[leader_host.name]
    api_port = host_port if multi else vc.API_PORT  # host networking: the API listens on the host port
    master_port = MASTER_PORT_BASE + (host_port - VLLM_HOST_PORT_BASE)
    secret_env = vc.replica_secret_env(cfg)
    containers = []
    for s in p.shards:
        host = cfg.host(s.host)
        leader = s.node_rank == 0
        name = container_name(cfg, p.name if not multi else f"{p.name}-node{s.node_rank}")
        needs_publish = leader and not multi and (leader_host.name != lb.name or
                                                  (cfg.monitoring.enabled and leader_host.name != mon.name))
        otel = model.runtime == "seed-otel"
        ports_out = []
        if needs_publish:
            ports_out.append(Port(vc.API_PORT, host_port, host.address))
            if otel:
                ports_out.append(Port(vc.OTEL_PORT, host_port + 1000, host.address))
        # Host networking (multi-node) would put a 0.0.0.0 listener on every interface of the
        # host: the API binds to the inventory address there.
        bind = host.address if multi else "0.0.0.0"
        probe = host.address if multi else "127.0.0.1"
        health = HealthCheck(
            test=["CMD", "python3", "-c",
                  f"import urllib.request; urllib.request.urlopen('http://{probe}:{api_port}/health', timeout=5)"],
            interval_s=15, timeout_s=10, retries=3, start_period_s=model.start_timeout_s) if leader else None
        containers.append(ContainerSpec(
            name=name, host=s.host, role="vllm" if leader else "vllm-worker",
            image=model.resolved_image,
            entrypoint=["/workspace/run.sh"] if otel else list(vc.ENTRYPOINT),
            command=vc.serve_args(model, port=api_port, bind=bind, nodes=len(p.shards), node_rank=s.node_rank,
                                  master_addr=leader_host.address, master_port=master_port),
            env=vc.replica_env(cfg, model, nodes=len(p.shards), nvlink=host.nvlink,
                               nccl_socket_ifname=host.nccl_socket_ifname, host_ip=host.address, cpu_bind=cpu_bind),
            secret_env=secret_env if leader else {k: v for k, v in secret_env.items() if k == "HF_TOKEN"},
            gpu_ids=s.gpu_ids if model.device == "gpu" else None,
            network_mode="host" if multi else "bridge",
            ipc_mode="host" if multi else None,
            shm_size_mb=None if multi else model.shm_size_mb,
            ports=ports_out,
            mounts=[Mount(vc.HF_HOME, host_path=host.hf_cache_dir) if host.hf_cache_dir
                    else Mount(vc.HF_HOME, volume=container_name(cfg, f"{host.name}-hf-cache"))],
            healthcheck=health,
            labels=labels(cfg, "vllm" if leader else "vllm-worker", **{"vllm-fleet.model": model.name, "vllm-fleet.replica": p.name,
                                          "vllm-fleet.node-rank": str(s.node_rank)}),
            capabilities=["SYS_NICE"] if model.device == "cpu" else [],
            start_timeout_s=model.start_timeout_s if leader else 120,
            stop_grace_s=vc.stop_grace_s(model),
        ))
    lead = containers[0]
    endpoint = reach(lb, leader_host, lead.name, api_port, host_port)
    target = reach(mon, leader_host, lead.name, api_port, host_port)
    otel_target = reach(mon, leader_host, lead.name, vc.OTEL_PORT, host_port + 1000) if model.runtime == "seed-otel" else None
    plan = ReplicaPlan(model, p, containers, endpoint, target, otel_target)
    if model.replicas > 1:  # a lone replica has no one to wait for it
        plan.gate = _rollout_gate(cfg, plan)
    return plan


def _rollout_gate(cfg: FleetConfig, r: ReplicaPlan) -> ContainerSpec:
    """A job on the load balancer's host that `pulumi up` waits for between replicas."""
    return jobs.job(
        name=container_name(cfg, f"{r.name}-rollout-gate"), host=cfg.lb_host.name, role="rollout-gate",
        image=cfg.load_balancer.image, script=rollout.GATE_SCRIPT, timeout_s=rollout.GATE_TIMEOUT_S,
        env={"FLEET_GATE_URL": f"http://{r.endpoint}/health", "FLEET_GATE_SETTLE_S": str(rollout.settle_s(cfg))},
        labels=labels(cfg, "rollout-gate", **{"vllm-fleet.model": r.model.name, "vllm-fleet.replica": r.name}))


def _file_writer(cfg: FleetConfig, role: str, host: Host, image: str, volume: str, target_dir: str,
                 private: bool = False) -> ContainerSpec:
    """A job that writes its uploads (under UPLOAD_DIR) into `volume` at `target_dir`, each file
    atomically (a reader never sees half a file); a failed write fails `pulumi up`. `private`:
    the files are written mode 0600 (a private key: only Nginx's master, root, reads it).

    A changed file changes only this job's uploads: the long-running reader (Nginx, Prometheus)
    mounts the volume, notices the new file itself and is never replaced for it."""
    script = ("umask 077; " if private else "") + (f'for f in {UPLOAD_DIR}/*; do n=$(basename "$f"); '
              f'cp "$f" "{target_dir}/.$n.new"; mv -f "{target_dir}/.$n.new" "{target_dir}/$n"; done')
    return jobs.job(name=container_name(cfg, role), host=host.name, role=role, image=image, script=script,
                    timeout_s=FILE_WRITER_TIMEOUT_S, mounts=[Mount(target_dir, volume=volume)], labels=labels(cfg, role))


def _nginx_tls(cfg: FleetConfig) -> tuple[Optional[ContainerSpec], list[Mount], list[Port]]:
    """Where Nginx's certificate and key come from (NGINX_TLS_DIR in its container), and the HTTPS
    port it publishes: from the TLS secrets, a job writes them into a volume of their own (its
    uploads are Pulumi secrets, so neither file is in any plain input or rendered file); from
    paths on the host, read-only bind mounts."""
    tls = cfg.load_balancer.tls
    if tls is None:
        return None, [], []
    ports = [Port(NGINX_TLS_PORT, tls.port, cfg.load_balancer.bind_address)]
    if tls.certificate_path:
        return None, [Mount(f"{NGINX_TLS_DIR}/{TLS_CERT_FILE}", host_path=tls.certificate_path, read_only=True),
                      Mount(f"{NGINX_TLS_DIR}/{TLS_KEY_FILE}", host_path=tls.private_key_path, read_only=True)], ports
    volume = container_name(cfg, "nginx-tls")
    writer = _file_writer(cfg, "nginx-tls", cfg.lb_host, cfg.load_balancer.image, volume, NGINX_TLS_DIR, private=True)
    return writer, [Mount(NGINX_TLS_DIR, volume=volume, read_only=True)], ports


def _services(cfg: FleetConfig, replicas: list[ReplicaPlan]) -> tuple[list[ContainerSpec], list[Scrape]]:
    lb, mon, m = cfg.lb_host, cfg.monitoring_host, cfg.monitoring
    conf_volume = container_name(cfg, "nginx-conf")
    tls, tls_mounts, tls_ports = _nginx_tls(cfg)
    services = [ContainerSpec(
        name=container_name(cfg, "nginx"), host=lb.name, role="nginx", image=cfg.load_balancer.image,
        entrypoint=["/bin/sh", NGINX_ENTRYPOINT],
        uploads={NGINX_ENTRYPOINT: static("nginx/fleet-nginx.sh")},
        ports=[Port(NGINX_PORT, cfg.load_balancer.port, cfg.load_balancer.bind_address), *tls_ports]
        + ([Port(NGINX_STATUS_PORT, NGINX_STATUS_PORT, lb.address)] if m.enabled and m.nginx_exporter and lb.name != mon.name else []),
        mounts=[Mount(NGINX_CONF_DIR, volume=conf_volume, read_only=True), *tls_mounts],
        healthcheck=HealthCheck(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{NGINX_STATUS_PORT}/stub_status"],
                                interval_s=10, timeout_s=5, retries=3, start_period_s=10),
        labels=labels(cfg, "nginx"), start_timeout_s=60, stop_grace_s=NGINX_STOP_GRACE_S,
        # With client keys, Nginx authenticates to the replicas with the fleet's own api_key.
        secret_env={UPSTREAM_KEY_ENV: "api_key"} if cfg.load_balancer.keys and cfg.has_api_key else {},
    ),
        # Writes each new nginx.conf (and fleet.js, models.json beside it) into the volume the
        # running Nginx watches (see fleet-nginx.sh).
        _file_writer(cfg, "nginx-config", lb, cfg.load_balancer.image, conf_volume, NGINX_CONF_DIR)]
    if tls is not None:
        services.append(tls)
    scrapes = [Scrape("vllm", r.metrics_target, {"model": r.model.name, "replica": r.name, "host": r.host})
               for r in replicas]
    scrapes += [Scrape("vllm-otel", r.otel_target, {"model": r.model.name, "replica": r.name, "host": r.host})
                for r in replicas if r.otel_target]
    if not m.enabled:
        return services, scrapes
    if m.nginx_exporter:
        status = reach(lb, lb, container_name(cfg, "nginx"), NGINX_STATUS_PORT, NGINX_STATUS_PORT)
        exporter = ContainerSpec(
            name=container_name(cfg, "nginx-exporter"), host=lb.name, role="nginx-exporter", image=m.nginx_exporter_image,
            command=[f"--nginx.scrape-uri=http://{status}/stub_status"],
            ports=[Port(NGINX_EXPORTER_PORT, NGINX_EXPORTER_PORT, lb.address)] if lb.name != mon.name else [],
            labels=labels(cfg, "nginx-exporter"), start_timeout_s=60)
        services.append(exporter)
        scrapes.append(Scrape("nginx", reach(mon, lb, exporter.name, NGINX_EXPORTER_PORT, NGINX_EXPORTER_PORT), {"host": lb.name}))
    if m.gpu_exporter:
        for h in cfg.hosts:
            if h.gpus == 0:
                continue
            dcgm = ContainerSpec(
                name=container_name(cfg, f"{h.name}-dcgm-exporter"), host=h.name, role="dcgm-exporter",
                image=m.dcgm_exporter_image, all_gpus=True, capabilities=["SYS_ADMIN"],
                ports=[Port(DCGM_PORT, DCGM_PORT, h.address)] if h.name != mon.name else [],
                labels=labels(cfg, "dcgm-exporter"), start_timeout_s=120)
            services.append(dcgm)
            scrapes.append(Scrape("dcgm", reach(mon, h, dcgm.name, DCGM_PORT, DCGM_PORT), {"host": h.name}))
    prometheus = ContainerSpec(
        name=container_name(cfg, "prometheus"), host=mon.name, role="prometheus", image=m.prometheus_image,
        command=["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                 f"--storage.tsdb.retention.time={m.retention}", "--web.enable-lifecycle"],
        ports=[Port(PROMETHEUS_PORT, m.prometheus_port, m.bind_address)],
        mounts=[Mount("/prometheus", volume=container_name(cfg, "prometheus-data"))],
        healthcheck=HealthCheck(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready"],
                                interval_s=10, timeout_s=5, retries=5, start_period_s=10),
        labels=labels(cfg, "prometheus"), start_timeout_s=120)
    scrapes.append(Scrape("prometheus", f"127.0.0.1:{PROMETHEUS_PORT}", {"host": mon.name}))
    targets_volume = container_name(cfg, "prometheus-targets")
    prometheus.mounts.append(Mount(PROMETHEUS_TARGETS_DIR, volume=targets_volume, read_only=True))
    grafana = ContainerSpec(
        name=container_name(cfg, "grafana"), host=mon.name, role="grafana", image=m.grafana_image,
        env={"GF_SECURITY_ADMIN_USER": "admin", "GF_USERS_ALLOW_SIGN_UP": "false", "GF_AUTH_ANONYMOUS_ENABLED": "false",
             "GF_ANALYTICS_REPORTING_ENABLED": "false", "GF_ANALYTICS_CHECK_FOR_UPDATES": "false"},
        secret_env={"GF_SECURITY_ADMIN_PASSWORD": "grafana_admin_password"},
        ports=[Port(GRAFANA_PORT, m.grafana_port, m.bind_address)],
        mounts=[Mount("/var/lib/grafana", volume=container_name(cfg, "grafana-data"))],
        healthcheck=HealthCheck(["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{GRAFANA_PORT}/api/health"],
                                interval_s=10, timeout_s=5, retries=5, start_period_s=20),
        labels=labels(cfg, "grafana"), start_timeout_s=180)
    # Writes the scrape targets Prometheus discovers from files (fleet/render/files.py).
    services += [prometheus, _file_writer(cfg, "prometheus-targets", mon, m.prometheus_image, targets_volume,
                                          PROMETHEUS_TARGETS_DIR), grafana]
    return services, scrapes
