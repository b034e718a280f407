"""Packs every replica's tp x pp GPUs onto the inventory's hosts.

Rules, in order:
- Only hosts whose GPU generation runs the model's dtype and quantization (fleet.config.gpus.lacks)
  are candidates; among them, hosts whose GPU model the capacity planner says the replica fits
  come first (a T4 host and an H100 host: a 70B model goes to the H100 host).
- A replica stays on one host when any host has enough free GPUs. Among those, the host with the
  fewest replicas of the same model wins (replicas spread for availability), then the one with
  the fewest free GPUs (best fit keeps whole hosts free for large replicas), then config order.
- Otherwise a pipeline-parallel replica is split into equal parts over hosts of one GPU model
  (fleet.capacity.layout: tensor-parallel groups never cross hosts), the way vLLM serves one
  model across nodes.
- Each host hands out its lowest free GPU ids, so a replica's GPUs are contiguous when possible.
- Placement follows config order, so adding a model or a replica never moves existing ones.
CPU replicas go to hosts with no GPUs, spread evenly.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleet.capacity.architecture import Architecture
from fleet.capacity.layout import machine_splits
from fleet.capacity.memory import draft_architecture, fits
from fleet.config.errors import ConfigError
from fleet.config.gpus import lacks
from fleet.config.schema import FleetConfig, Host, Model


@dataclass(frozen=True)
class Shard:
    """The part of one replica that runs on one host."""

    host: str
    gpu_ids: tuple[int, ...]
    node_rank: int


@dataclass(frozen=True)
class ReplicaPlacement:
    model: str
    index: int
    shards: tuple[Shard, ...]

    @property
    def name(self) -> str:
        return f"{self.model}-{self.index}"

    @property
    def leader(self) -> Shard:
        return self.shards[0]

    @property
    def multi_node(self) -> bool:
        return len(self.shards) > 1


def place(cfg: FleetConfig, archs: list[Architecture]) -> list[ReplicaPlacement]:
    """Every replica's shards, in config order (`archs`: the models' architectures, in order)."""
    free = {h.name: list(range(h.gpus)) for h in cfg.hosts}
    count: dict[tuple[str, str], int] = {}
    placed: list[ReplicaPlacement] = []
    for i, model in enumerate(cfg.models):
        suitable = _suitable_gpus(cfg, i, archs[i]) if model.device == "gpu" else {}
        for r in range(model.replicas):
            if model.device == "cpu":
                shards = (_place_cpu(cfg, model, count),)
            else:
                shards = _place_gpu(cfg, i, model, r, free, count, suitable)
            for s in shards:
                count[(s.host, model.name)] = count.get((s.host, model.name), 0) + 1
            placed.append(ReplicaPlacement(model.name, r, shards))
    return placed


def _place_cpu(cfg: FleetConfig, model: Model, count: dict) -> Shard:
    hosts = [h for h in cfg.hosts if h.gpus == 0]
    load = {h.name: sum(c for (host, _), c in count.items() if host == h.name) for h in hosts}
    best = min(hosts, key=lambda h: (count.get((h.name, model.name), 0), load[h.name]))
    return Shard(best.name, (), 0)


def _take(free: dict[str, list[int]], host: str, n: int) -> tuple[int, ...]:
    ids = tuple(free[host][:n])
    del free[host][:n]
    return ids


def _suitable_gpus(cfg: FleetConfig, i: int, arch: Architecture) -> dict[str, bool]:
    """GPU model -> whether one replica of model i fits its memory, for the inventory's GPU models
    that run the model's precision at all."""
    m = cfg.models[i]
    draft = draft_architecture(m, i)
    return {g: fits(m, arch, g, draft) for g in cfg.gpu_models
            if lacks(g, dtype=m.dtype, quantization=m.quantization) is None}


def _place_gpu(cfg: FleetConfig, i: int, model: Model, r: int, free: dict[str, list[int]],
               count: dict, suitable: dict[str, bool]) -> tuple[Shard, ...]:
    need = model.gpus_per_replica
    order = {h.name: n for n, h in enumerate(cfg.hosts)}
    hosts = [h for h in cfg.hosts if h.gpus and h.gpu_model in suitable]

    def rank(h: Host) -> tuple:
        return (not suitable[h.gpu_model], count.get((h.name, model.name), 0), len(free[h.name]), order[h.name])

    whole = sorted((h for h in hosts if len(free[h.name]) >= need), key=rank)
    if whole:
        return (Shard(whole[0].name, _take(free, whole[0].name, need), 0),)
    pp = model.pipeline_parallel_size
    for nodes in machine_splits(model)[1:]:
        per = need // nodes
        candidates = sorted((h for h in hosts if len(free[h.name]) >= per), key=rank)
        # One GPU model per replica: the capacity plan sizes a replica for one model, and a
        # pipeline runs at the pace of its slowest stage.
        for gpu in dict.fromkeys(h.gpu_model for h in candidates):
            chosen = [h for h in candidates if h.gpu_model == gpu][:nodes]
            if len(chosen) == nodes:
                _require_nccl_nic(cfg, i, chosen)
                return tuple(Shard(h.name, _take(free, h.name, per), rank_) for rank_, h in enumerate(chosen))
    left = ", ".join(f"{h}: {len(ids)}" for h, ids in free.items())
    split = (" and no split of its pipeline stages over hosts of one GPU model fits either" if pp > 1
             else "; only pipeline stages (pipeline_parallel_size > 1) can span hosts")
    raise ConfigError(
        f"models[{i}].replicas", model.replicas,
        f"replica {r} of `{model.name}` needs {need} GPUs (tensor_parallel_size {model.tensor_parallel_size} x "
        f"pipeline_parallel_size {pp}) but no host has that many free{split} (free GPUs after earlier replicas: {left})",
        f"replicas x tp x pp within the inventory's {sum(h.gpus for h in cfg.hosts)} GPUs, tensor groups within one host",
        "lower replicas or parallel sizes, raise pipeline_parallel_size to span hosts, or add GPU hosts",
    )


def _require_nccl_nic(cfg: FleetConfig, i: int, hosts: list[Host]) -> None:
    for h in hosts:
        if not h.nccl_socket_ifname:
            j = cfg.hosts.index(h)
            raise ConfigError(
                f"hosts[{j}].nccl_socket_ifname", None,
                f"a replica of `{cfg.models[i].name}` spans hosts {', '.join(x.name for x in hosts)} "
                f"but host `{h.name}` names no NIC for NCCL",
                "the interface that carries traffic between the hosts (e.g. eth0, ens5, ib0)",
                f"set `hosts[{j}].nccl_socket_ifname` on every host of the pipeline",
            )
