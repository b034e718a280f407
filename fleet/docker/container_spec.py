"""A plain, target-neutral description of one container.

The planner produces these from the config; the Docker components translate them 1:1 into
`pulumi_docker.Container` arguments, and the offline render writes them out for review. Secret
values never live here: `secret_env` maps a variable to the name of a Pulumi secret.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Port:
    internal: int
    external: int
    ip: str


@dataclass(frozen=True)
class Mount:
    target: str
    volume: Optional[str] = None  # a named volume, or
    host_path: Optional[str] = None  # a bind mount
    read_only: bool = False


@dataclass(frozen=True)
class HealthCheck:
    """Durations in whole seconds; the Docker component writes them in the provider's own form."""
    test: list[str]
    interval_s: int = 15
    timeout_s: int = 10
    retries: int = 3
    start_period_s: int = 30
    # Checks this often during start_period (Docker >= 25; older engines use `interval_s`).
    start_interval_s: Optional[int] = None


@dataclass
class ContainerSpec:
    name: str
    host: str
    role: str  # vllm, vllm-worker, nginx, nginx-exporter, prometheus, grafana, dcgm-exporter
    image: str
    command: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)
    gpu_ids: Optional[tuple[int, ...]] = None  # None: no GPU; () would mean none either
    all_gpus: bool = False
    network_mode: str = "bridge"  # "bridge" joins the host's fleet network; "host" for multi-node NCCL
    ipc_mode: Optional[str] = None
    shm_size_mb: Optional[int] = None
    ports: list[Port] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    uploads: dict[str, str] = field(default_factory=dict)  # path in container -> file content
    healthcheck: Optional[HealthCheck] = None
    labels: dict[str, str] = field(default_factory=dict)
    capabilities: list[str] = field(default_factory=list)
    restart: str = "unless-stopped"
    start_timeout_s: int = 120  # how long `pulumi up` waits for the container to become healthy (or a job to pass)
    # SIGTERM, then SIGKILL after this many seconds, on `docker stop` and when `pulumi up` replaces
    # or deletes the container (without it the provider removes a running container by force).
    stop_grace_s: int = 10
    # A job (fleet/docker/jobs.py) that runs once per version of its inputs. It gets a unique name
    # per version, so a change creates the new one before removing the old one; every other
    # container has a fixed name and is removed before its replacement starts.
    one_shot: bool = False

    def to_dict(self) -> dict:
        return asdict(self)
