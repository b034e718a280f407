"""`make plan STACK=<name>`: the capacity plan of a stack, before anything is deployed.

Prints, per model, the GPUs of a replica, parameters, weights / KV budget per GPU, the KV tokens
and the sequences of max_model_len that fit at once; then where every replica runs (host -> GPU
ids -> replica) and notes. Reads the stack file only: secrets are not decrypted (only whether they
are set matters), nothing is deployed. `plan_text(cfg)` is the same text, for the offline render.

Usage: python -m tools.plan_report STACK [--stacks-dir DIR]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fleet import rollout, vllm_command as vc
from fleet.config import images
from fleet.config.schema import SECRET_KEYS, FleetConfig
from fleet.config.load import parse_config
from fleet.config.errors import PROJECT, ConfigError
from fleet.config.secrets import SHOWN
from fleet.config.gpus import GPU_MODELS
from fleet.capacity.memory import (CPU_BLOCK_SIZE, GPU_BLOCK_SIZE, GPU_FIXED_OVERHEAD, MULTI_GPU_OVERHEAD, FleetCapacity,
                                   GiB, ModelMemory)
from fleet.docker.plan import DockerPlan, build_plan
from fleet.ports import NGINX_STOP_GRACE_S
from fleet.k8s.plan import K8sPlan, build_k8s_plan
from fleet.render.files import affinity_bound, affinity_load_factor
from tools.mock_run import read_stack_file, stack_config


def raw_values(doc: dict[str, Any]) -> dict[str, Any]:
    """A stack file's `vllm-fleet:*` values, as parse_config takes them; secrets are only marked set."""
    config, secret_keys, _ = stack_config(doc, None)
    raw: dict[str, Any] = {}
    prefix = f"{PROJECT}:"
    for key, text in config.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if key in secret_keys or name in SECRET_KEYS:
            raw[name] = True if name in SECRET_KEYS else SHOWN  # a secret under an unknown key: named, never shown
            if name == "client_keys" and text.startswith("{"):
                raw[name] = list(json.loads(text))  # set with --path: the names are plain, only the keys are secret
            continue
        try:
            raw[name] = json.loads(text)
        except ValueError:
            raw[name] = text
    return raw


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    fmt = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]]


def _layout(p: ModelMemory) -> str:
    m = p.model
    if p.device == "cpu":
        return "CPU"
    return f"{p.gpus} x {p.device} (tp {m.tensor_parallel_size} x pp {m.pipeline_parallel_size})"


def _precision(p: ModelMemory) -> str:
    pr = p.precision
    text = pr.weight_dtype + (f" + {pr.quantization}" if pr.quantization else "")
    return text + (f", KV {pr.kv_dtype}" if pr.kv_dtype != pr.weight_dtype else "")


def model_lines(cap: FleetCapacity) -> list[str]:
    rows = []
    for i, m in enumerate(cap.cfg.models):
        if i in cap.unplanned:
            rows.append([m.name, str(m.replicas), "-", "-", "-", "-", "-", "-", "-", cap.unplanned[i]])
            continue
        for p in cap.plans.get(i, {}).values():
            budget = "CPU " + _gib(p.kv_budget_per_gpu) if p.device == "cpu" else _gib(p.kv_budget_per_gpu)
            rows.append([
                m.name, str(m.replicas), _layout(p), _params(p.params), _precision(p),
                _gib(p.weight_bytes_per_gpu) if p.device != "cpu" else f"{_gib(p.weight_bytes)} (RAM)",
                budget, f"{p.kv_tokens:,}", f"{p.max_model_len:,}",
                f"{p.max_concurrency:.1f} (max_num_seqs {p.max_num_seqs})",
            ])
    return _table(rows, ["model", "replicas", "per replica", "params", "precision", "weights/GPU", "KV budget/GPU",
                         "KV tokens", "max_model_len", "sequences at once"])


def detail_lines(cap: FleetCapacity) -> list[str]:
    out = []
    for i, m in enumerate(cap.cfg.models):
        a = cap.archs[i]
        out.append(f"{m.name}: {m.hf_id} ({a.model_type}, {a.num_hidden_layers} layers, hidden {a.hidden_size}, "
                   f"{a.num_attention_heads} heads / {a.num_key_value_heads} KV heads x {a.head_dim}, vocab {a.vocab_size:,}; "
                   f"architecture from {a.source})")
        if m.lora:
            out.append(f"  LoRA: {len(m.lora.adapters)} adapter(s) ({', '.join(m.adapter_names)}); {m.lora.max_loras} "
                       f"slot(s) of rank {m.lora.max_lora_rank} on every layer")
        for p in cap.plans.get(i, {}).values():
            lora = f" + LoRA slots {_gib(p.lora_bytes_per_gpu)}" if m.lora else ""
            host = f"; host cache of adapters up to {_gib(p.lora_host_bytes)}" if m.lora else ""
            if p.device == "cpu":
                out.append(f"  CPU: weights {_gib(p.weight_bytes)}{lora} in RAM; KV cache = cpu_kvcache_space_gib "
                           f"{m.cpu_kvcache_space_gib} GiB at {p.kv_bytes_per_token:,} B/token, blocks of {CPU_BLOCK_SIZE}{host}")
                continue
            draft = f" (draft {p.draft} included)" if p.draft else ""
            out.append(
                f"  {p.device}: {GPU_MODELS[p.device].cuda_total_gib} GiB x gpu_memory_utilization "
                f"{m.gpu_memory_utilization} = {_gib(p.memory_per_gpu)} per GPU = weights {_gib(p.weight_bytes_per_gpu)}"
                f"{draft}{lora} + activations/CUDA graphs {_gib(p.overhead_per_gpu)} + KV {_gib(p.kv_budget_per_gpu)}; "
                f"KV {p.kv_bytes_per_token_per_gpu:,} B/token per GPU, blocks of {GPU_BLOCK_SIZE}{host}")
    return out


def placement_lines(plan: DockerPlan | K8sPlan) -> list[str]:
    """Where the target placed every replica: the same decision the deployment declares."""
    cfg = plan.cfg
    if isinstance(plan, K8sPlan):
        rows = [[w.pool.name, w.pool.gpu_model, w.model.name,
                 f"{w.replicas} x {w.gpus_per_replica} GPUs" + (f" ({w.nodes} pods each)" if w.multi_node else "")]
                for w in plan.workloads]
        return _table(rows, ["node pool", "GPU", "model", "replicas"])
    rows = []
    for p in plan.placements:
        for s in p.shards:
            host = cfg.host(s.host)
            ids = ",".join(map(str, s.gpu_ids)) if s.gpu_ids else "(CPU)"
            part = f" (node {s.node_rank} of {len(p.shards)})" if p.multi_node else ""
            rows.append([s.host, host.gpu_model or "-", ids, p.name + part])
    for h in cfg.hosts:
        used = {g for p in plan.placements for s in p.shards if s.host == h.name for g in s.gpu_ids}
        free = [g for g in range(h.gpus) if g not in used]
        if free:
            rows.append([h.name, h.gpu_model or "-", ",".join(map(str, free)), "(free)"])
    order = {h.name: n for n, h in enumerate(cfg.hosts)}
    rows.sort(key=lambda r: (order[r[0]], r[3] == "(free)"))
    return _table(rows, ["host", "GPU", "GPU ids", "replica"])


def notes(cap: FleetCapacity) -> list[str]:
    out = []
    for i, m in enumerate(cap.cfg.models):
        if m.replicas == 1:
            out.append(f"- {m.name} runs a single replica: a restart, an upgrade or a failed {m.device.upper()} takes it offline "
                       f"(replicas: 2 or more for zero-downtime updates).")
        for p in cap.plans.get(i, {}).values():
            if p.max_sequences < p.max_num_seqs and p.max_sequences < 8:
                out.append(f"- {m.name} on {p.device}: only {p.max_sequences} sequence(s) of {p.max_model_len:,} tokens fit "
                           "at once; longer queues, or lower max_model_len for more concurrency.")
        if i in cap.unplanned:
            out.append(f"- {m.name}: {cap.unplanned[i]}; vLLM's own startup check is the only memory check.")
    return out


def rollout_lines(cfg: FleetConfig) -> list[str]:
    """How a change that replaces replicas proceeds, per model (fleet/rollout.py)."""
    rows = []
    for m in cfg.models:
        order = "one at a time" if m.replicas > 1 else "all at once: downtime"
        nxt = f"healthy + {rollout.settle_s(cfg)} s" if m.replicas > 1 else "-"
        drain = f"{m.drain_timeout_s} s (killed at {vc.stop_grace_s(m)} s)" if m.drain_timeout_s else "none: aborted"
        rows.append([m.name, str(m.replicas), order, drain, nxt])
    return _table(rows, ["model", "replicas", "replaced", "requests in flight drain", "next replica once"])


POLICY_USE = {
    "prefix_affinity": "each conversation stays on the replica that holds its prefix cache (no client header needed)",
    "session_affinity": "clients' session header alone picks the replica, with no bound",
    "least_conn": "the replica with the fewest requests in flight: for traffic that shares no prefixes",
    "round_robin": "replicas in turn: for equal, short, unrelated requests",
}


def balancing_lines(cfg: FleetConfig) -> list[str]:
    """Which replica a request reaches, and, under prefix affinity, its load bound and each model's cap."""
    lb = cfg.load_balancer
    lines = [f"Balancing: {lb.policy}: {POLICY_USE[lb.policy]}."]
    if lb.policy == "prefix_affinity":
        factor = affinity_load_factor(cfg)
        lines.append(f"Load bound: a replica takes new requests of its own conversations while it has fewer than "
                     f"{factor:g} x the mean in flight of its model's replicas (load_balancer.affinity_load_factor); "
                     f"past that they go to the conversation's next replica. Lower balances more, higher keeps more "
                     f"prefixes hit.")
        rows = [[m.name, str(m.replicas), str(affinity_bound(cfg, m))] for m in cfg.models]
        lines += _table(rows, ["model", "replicas", "most requests in flight per replica"])
        if lb.affinity_bound is None:
            lines.append("That cap is each model's max_num_seqs (else 256, load_balancer.affinity_bound): past it a "
                         "replica only queues, so when every replica is there the least busy one takes the request.")
    return lines


def target_plan(cfg: FleetConfig) -> DockerPlan | K8sPlan:
    """The plan the deployment itself builds: placement and capacity decided (and refused) once."""
    return build_k8s_plan(cfg) if cfg.target == "kubernetes" else build_plan(cfg)


def plan_text(cfg: FleetConfig) -> str:
    """The capacity plan of a validated config, as `make plan` prints it."""
    plan = target_plan(cfg)
    cap = plan.capacity
    lines = [f"Capacity plan of stack `{cfg.stack}` (vLLM {images.VLLM_VERSION})", ""]
    lines += model_lines(cap)
    lines += ["", *detail_lines(cap), "", "Placement", *placement_lines(plan)]
    lines += ["", "Rollouts (a change that replaces replicas)", *rollout_lines(cfg)]
    lines += ["", *balancing_lines(cfg), ""]
    if isinstance(plan, DockerPlan):
        lines += [f"Load balancer: upstream and Nginx settings reload the running Nginx; a new load_balancer.image, port or "
                  f"entry script replaces it: downtime from the old one's quit (streams finish, up to {NGINX_STOP_GRACE_S} s) "
                  "until the new one is healthy. Prometheus is never replaced by replica changes."]
    extra = notes(cap)
    if extra:
        lines += ["", "Notes", *extra]
    lines += ["", "How: parameters and KV bytes/token from each model's config.json; weights split over tp x pp as vLLM "
                  "shards them; KV budget = GPU memory x gpu_memory_utilization - weights - activations/CUDA graphs "
                  f"({GPU_FIXED_OVERHEAD / GiB:.2f} GiB + the larger of max_num_seqs x vocab float32 logits and one prefill chunk's MLP activations"
                  f", + {MULTI_GPU_OVERHEAD / GiB:.1f} GiB with several GPUs) - LoRA slots (max_loras x max_lora_rank x "
                  "(inputs + outputs of every wrapped layer) x dtype bytes); CPU: cpu_kvcache_space_gib."]
    return "\n".join(lines) + "\n"


def report(stack: str, stacks_dir: Path | None = None) -> str:
    doc = read_stack_file(stack, stacks_dir) if stacks_dir else read_stack_file(stack)
    return plan_text(parse_config(raw_values(doc), stack))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stacks_dir = None
    if len(args) == 3 and args[1] == "--stacks-dir":
        args, stacks_dir = args[:1], Path(args[2])
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m tools.plan_report STACK [--stacks-dir DIR]", file=sys.stderr)
        return 2
    try:
        text = report(args[0], stacks_dir)
    except ConfigError as err:  # StackFileError too: YAML, namespace and passphrase mistakes
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as err:  # read_stack_file: no such stack
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
