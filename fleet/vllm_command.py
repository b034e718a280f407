"""The `vllm serve` command line and environment of one replica (or one machine of a replica).

Shared by both targets, so it takes neutral inputs (how many machines, which rank, the machine's
interconnect), never a target's own types. Everything here follows vLLM's documented flags for
the pinned release; a test runs vLLM's own argument parser over every command line it produces.
"""
from __future__ import annotations

import json
from typing import Optional

from fleet.config.schema import HF_CACHE_MOUNT, FleetConfig, Model
from fleet.ports import REPLICA_KEEPALIVE_S

API_PORT = 8000
OTEL_PORT = 9464
HF_HOME = HF_CACHE_MOUNT
ENTRYPOINT = ["vllm", "serve"]


def _json(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def speculative_config(model: Model) -> dict | None:
    spec = model.speculative
    if spec is None:
        return None
    out: dict = {"method": spec.method, "num_speculative_tokens": spec.num_speculative_tokens}
    if spec.model:
        out["model"] = spec.model
    if spec.prompt_lookup_max is not None:
        out["prompt_lookup_max"] = spec.prompt_lookup_max
    return out


def lora_args(model: Model) -> list[str]:
    """`--enable-lora` and its adapters. Each adapter is one JSON `--lora-modules` value (vLLM's
    LoRAParserAction reads `name=path` or JSON; JSON also names the parent, which `/v1/models`
    shows: vLLM keeps base_model_name only when it is a name the replica serves)."""
    lora = model.lora
    if lora is None:
        return []
    modules = [_json({"name": a.name, "path": a.source, "base_model_name": model.client_model_name})
               for a in lora.adapters]
    args = ["--enable-lora", "--lora-modules", *modules,
            "--max-loras", str(lora.max_loras), "--max-lora-rank", str(lora.max_lora_rank)]
    if lora.max_cpu_loras is not None:
        args += ["--max-cpu-loras", str(lora.max_cpu_loras)]
    return args


def generation_overrides(model: Model) -> dict:
    return model.sampling.model_dump(exclude_none=True)


def serve_args(model: Model, *, port: int, bind: str = "0.0.0.0", nodes: int = 1, node_rank: object = 0,
               master_addr: str = "", master_port: int = 0) -> list[str]:
    """The argv after `vllm serve` for machine `node_rank` of `nodes` of a replica. `bind`: the
    address the API listens on; `node_rank` may be a placeholder the platform expands."""
    args = [model.hf_id, "--host", bind, "--port", str(port),
            "--served-model-name", model.client_model_name]
    if model.revision:
        args += ["--revision", model.revision]
    if model.device == "gpu":
        args += ["--tensor-parallel-size", str(model.tensor_parallel_size),
                 "--pipeline-parallel-size", str(model.pipeline_parallel_size),
                 "--gpu-memory-utilization", str(model.gpu_memory_utilization)]
    if model.dtype != "auto":
        args += ["--dtype", model.dtype]
    if model.quantization:
        args += ["--quantization", model.quantization]
    if model.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", model.kv_cache_dtype]
    if model.max_model_len:
        args += ["--max-model-len", str(model.max_model_len)]
    if model.max_num_seqs:
        args += ["--max-num-seqs", str(model.max_num_seqs)]
    if model.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(model.max_num_batched_tokens)]
    if model.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if model.enable_prefix_caching else "--no-enable-prefix-caching")
    if model.trust_remote_code:
        args.append("--trust-remote-code")
    spec = speculative_config(model)
    if spec:
        args += ["--speculative-config", _json(spec)]
    args += lora_args(model)
    overrides = generation_overrides(model)
    if overrides:
        args += ["--override-generation-config", _json(overrides)]
    # SIGTERM (docker stop, a pod's termination) lets requests in flight finish; vLLM's own
    # default (0) aborts them. The flag exists since vLLM 0.18: 0 leaves it out for older images.
    if model.drain_timeout_s:
        args += ["--shutdown-timeout", str(model.drain_timeout_s)]
    if nodes > 1:
        # vLLM's multiprocessing multi-node mode: every node runs `vllm serve` with the same
        # parallel sizes; rank 0 serves the API, the others run headless workers.
        args += ["--nnodes", str(nodes), "--node-rank", str(node_rank),
                 "--master-addr", master_addr, "--master-port", str(master_port)]
        if node_rank != 0:
            args.append("--headless")
    return args + list(model.extra_args)


# After the drain: engine teardown and freeing GPU memory, before Docker or the kubelet SIGKILLs.
TEARDOWN_S = 30


def stop_grace_s(model: Model) -> int:
    """How long a replica's container may take to stop after SIGTERM."""
    return model.drain_timeout_s + TEARDOWN_S


def replica_env(cfg: FleetConfig, model: Model, *, nodes: int = 1, nvlink: bool = False,
                nccl_socket_ifname: Optional[str] = None, host_ip: Optional[str] = None,
                cpu_bind: Optional[str] = None) -> dict[str, str]:
    """`host_ip`: the machine's address for a multi-machine replica (None where the platform sets
    VLLM_HOST_IP itself, e.g. a pod's own IP)."""
    env = {"HF_HOME": HF_HOME, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(REPLICA_KEEPALIVE_S)}
    if model.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(model.cpu_kvcache_space_gib)
        if cpu_bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind
    elif model.gpus_per_replica > 1 or nodes > 1:
        env["NCCL_DEBUG"] = cfg.nccl_debug
        if not nvlink:
            # PCIe-only GPUs: peer-to-peer transfers stall or fail; NCCL falls back to shared memory.
            env["NCCL_P2P_DISABLE"] = "1"
        if nccl_socket_ifname:
            env["NCCL_SOCKET_IFNAME"] = nccl_socket_ifname
            env["GLOO_SOCKET_IFNAME"] = nccl_socket_ifname
        if nodes > 1 and host_ip:
            env["VLLM_HOST_IP"] = host_ip
    return {**env, **model.env}


def replica_secret_env(cfg: FleetConfig) -> dict[str, str]:
    out = {}
    if cfg.has_api_key:
        out["VLLM_API_KEY"] = "api_key"
    if cfg.has_hf_token:
        out["HF_TOKEN"] = "hf_token"
    return out
