"""What a Docker plan claims on each host, checked for collisions before any resource exists.

Every container claims its name on its host's Docker engine; every published port, and every
port a host-network container listens on, claims an address:port of its host (0.0.0.0 and ::
claim the port on every address); every GPU replica claims its device ids and every pinned CPU
replica its cores; every pulled image claims a Pulumi resource name on its host. Two claims on
one thing are one ConfigError naming the config key that decides the claim the user can move.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fleet.config.errors import ConfigError
from fleet.config.schema import FleetConfig
from fleet.docker.container_spec import ContainerSpec


@dataclass(frozen=True)
class Claim:
    host: str
    thing: str  # what is claimed, in words: "port 8080 on 10.0.0.1", "GPU 3", "core 2", "container name x"
    resource: tuple  # what two claims must not share (address overlap is decided separately for ports)
    owner: str  # who claims it, in words
    key: str  # the config key that decides it
    movable: bool = False  # the user picks the value (a port key), rather than the plan


def _role_owner(cfg: FleetConfig, spec: ContainerSpec) -> tuple[str, str]:
    """Who a container is, and the config key that puts it where it is."""
    model = spec.labels.get("vllm-fleet.model")
    if model:
        i = next(i for i, m in enumerate(cfg.models) if m.name == model)
        replica = spec.labels.get("vllm-fleet.replica", model)
        return f"replica `{replica}` of model `{model}`", f"models[{i}].replicas"
    if spec.role == "dcgm-exporter":
        j = next(j for j, h in enumerate(cfg.hosts) if h.name == spec.host)
        return f"the GPU exporter of host `{spec.host}`", f"hosts[{j}].name"
    if spec.role in ("prometheus", "grafana", "prometheus-targets"):
        return spec.role.capitalize() if spec.role != "prometheus-targets" else "Prometheus' targets writer", "monitoring.host"
    return {"nginx": "the load balancer (Nginx)", "nginx-exporter": "the Nginx exporter",
            "nginx-config": "the Nginx config writer", "nginx-tls": "the Nginx certificate writer"}.get(spec.role, spec.role), \
        "load_balancer.host"


PORT_KEYS = {"nginx": "load_balancer.port", "prometheus": "monitoring.prometheus_port", "grafana": "monitoring.grafana_port"}


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _cores(bind: str) -> Iterator[int]:
    for part in bind.split(","):
        lo, _, hi = part.partition("-")
        yield from range(int(lo), int(hi or lo) + 1)


def claims(cfg: FleetConfig, containers: Iterable[ContainerSpec]) -> Iterator[Claim]:
    for spec in containers:
        owner, key = _role_owner(cfg, spec)
        yield Claim(spec.host, f"container name `{spec.name}`", ("name", spec.name), owner, key)
        for p in spec.ports:
            port_key = _port_key(cfg, spec.role, p.external)
            yield Claim(spec.host, f"port {p.external} on {p.ip}", ("port", p.external, p.ip), owner,
                        port_key or key, port_key is not None)
        if spec.network_mode == "host":
            # Host networking: vLLM's API listens on the host itself, and the leader's torch
            # rendezvous (master port) on every interface.
            port, master = _flag(spec.command, "--port"), _flag(spec.command, "--master-port")
            bind = _flag(spec.command, "--host") or "0.0.0.0"
            if spec.role == "vllm" and port:
                yield Claim(spec.host, f"port {port} on {bind}", ("port", int(port), bind), owner, key)
            if spec.role == "vllm" and master:
                yield Claim(spec.host, f"port {master} on 0.0.0.0", ("port", int(master), "0.0.0.0"),
                            f"{owner} (its pipeline rendezvous)", key)
        for gpu in spec.gpu_ids or ():
            yield Claim(spec.host, f"GPU {gpu}", ("gpu", gpu), owner, key)
        bind = spec.env.get("VLLM_CPU_OMP_THREADS_BIND")
        if bind and bind not in ("auto", "all"):
            for core in _cores(bind):
                yield Claim(spec.host, f"core {core}", ("core", core), owner, key)


def _port_key(cfg: FleetConfig, role: str, port: int) -> str | None:
    """The config key that chose `port` for a service of `role`, if the user picks it."""
    tls = cfg.load_balancer.tls
    if role == "nginx" and tls is not None and port == tls.port:
        return "load_balancer.tls.port"
    public = {"nginx": cfg.load_balancer.port, "prometheus": cfg.monitoring.prometheus_port,
              "grafana": cfg.monitoring.grafana_port}.get(role)
    return PORT_KEYS[role] if role in PORT_KEYS and port == public else None


def _overlap(a: tuple, b: tuple) -> bool:
    """Two claims on one resource; for ports, when their addresses overlap."""
    if a[0] != "port" or b[0] != "port":
        return a == b
    if a[1] != b[1]:
        return False
    ia, ib = ipaddress.ip_address(a[2]), ipaddress.ip_address(b[2])
    return ia == ib or (ia.is_unspecified and ia.version == ib.version) or (ib.is_unspecified and ia.version == ib.version)


def check_claims(cfg: FleetConfig, containers: Iterable[ContainerSpec]) -> None:
    held: dict[str, list[Claim]] = {}
    for claim in claims(cfg, containers):
        mine = held.setdefault(claim.host, [])
        first = next((c for c in mine if _overlap(c.resource, claim.resource)), None)
        if first is not None:
            raise _collision(first, claim)
        mine.append(claim)


def _collision(first: Claim, second: Claim) -> ConfigError:
    blame, other = (first, second) if first.movable and not second.movable else (second, first)
    kind = blame.resource[0]
    allowed = {"port": "a port no other service of that host uses", "name": "names that are unique on each Docker engine",
               "gpu": "each GPU in one replica", "core": "each core in one CPU replica"}[kind]
    fix = (f"change `{blame.key}`" if blame.movable else
           f"change `{blame.key}` or `{other.key}` so the two no longer meet on host `{blame.host}`")
    value = blame.resource[1]
    return ConfigError(blame.key, value, f"{blame.owner} needs {blame.thing} of host `{blame.host}`, "
                       f"which {other.owner} already uses", allowed, fix)


# --- Pulumi names of pulled images ---------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def image_resource_names(refs: Iterable[str]) -> dict[str, str]:
    """The Pulumi name suffix of each image pulled on one host: the slug of its last path component
    (`vllm-openai-v0-32-0`), unless another reference on the host has the same slug (the same image
    through a registry mirror, another namespace, `.` vs `-` in a tag): then each of those gets a
    short hash of its full reference, so no two resources share a name."""
    refs = sorted(set(refs))
    slugs = {ref: _slug(ref.rsplit("/", 1)[-1]) for ref in refs}
    shared = {s for s in slugs.values() if list(slugs.values()).count(s) > 1}
    return {ref: f"{s}-{hashlib.sha256(ref.encode()).hexdigest()[:8]}" if s in shared else s
            for ref, s in slugs.items()}
