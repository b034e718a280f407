"""`models[].env` checked before any resource: no override of what the program sets, no credential.

The program sets part of each replica's environment (fleet/vllm_command.py: cache location,
telemetry, keep-alive, CPU pinning, NCCL, the machine's address; the secrets VLLM_API_KEY and
HF_TOKEN; on Kubernetes the pod's IP). `models[].env` is merged over it, so the same name, or
another name for the same setting (HF_HUB_CACHE for HF_HOME, ROCR_VISIBLE_DEVICES for the GPUs
the container owns), would silently win. A test derives every variable the program generates and
checks each is in MANAGED_ENV. Credentials belong in Pulumi secrets: a variable named like one
or holding a credential-shaped value is refused, and no message shows the value.
"""
from __future__ import annotations

import difflib
import re

from fleet.config.errors import ConfigError
from fleet.config.images import VLLM_VERSION
from fleet.config.schema import Model
from fleet.config.secrets import SECRET_NAME, SHOWN, looks_secret
from fleet.config.vllm_flags import table

_CACHE = "the replicas' Hugging Face cache is the mounted volume (hosts[].hf_cache_dir, kubernetes.hf_cache)"
_GPUS = "derived from the inventory: the program gives each replica its GPUs (hosts[].gpus, tensor_parallel_size x pipeline_parallel_size)"
_NCCL = "the program sets NCCL from the host (nvlink, nccl_socket_ifname) and `nccl_debug`"
_NET = "the program sets the machine's address and ports of a replica"
_TELEMETRY = "the program turns vLLM's usage statistics off"
_CPU = "the program pins each CPU replica to its own cores and sizes its KV cache (cpu_kvcache_space_gib)"
_SECRET = "the program passes it as a Pulumi secret"

# name -> (what decides it, the fix). Names the program generates, then other names that
# override the same setting (vLLM and Hugging Face read several spellings of one thing).
MANAGED_ENV: dict[str, tuple[str, str]] = {
    "HF_HOME": (_CACHE, "set `hosts[].hf_cache_dir` or `kubernetes.hf_cache`"),
    "HF_HUB_CACHE": (_CACHE, "set `hosts[].hf_cache_dir` or `kubernetes.hf_cache`"),
    "HUGGINGFACE_HUB_CACHE": (_CACHE, "set `hosts[].hf_cache_dir` or `kubernetes.hf_cache`"),
    "TRANSFORMERS_CACHE": (_CACHE, "set `hosts[].hf_cache_dir` or `kubernetes.hf_cache`"),
    "VLLM_NO_USAGE_STATS": (_TELEMETRY, ""),
    "DO_NOT_TRACK": (_TELEMETRY, ""),
    "VLLM_DO_NOT_TRACK": (_TELEMETRY, ""),
    "VLLM_USAGE_STATS_SERVER": (_TELEMETRY, ""),
    "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": ("the load balancer's keep-alive to replicas is sized against it (fleet.ports)",
                                     ""),
    "VLLM_CPU_KVCACHE_SPACE": (_CPU, "set `models[].cpu_kvcache_space_gib`"),
    "VLLM_CPU_OMP_THREADS_BIND": (_CPU, "set `hosts[].cpus`"),
    "CUDA_VISIBLE_DEVICES": (_GPUS, "set `hosts[].gpus` and the model's parallel sizes"),
    "NVIDIA_VISIBLE_DEVICES": (_GPUS, "set `hosts[].gpus` and the model's parallel sizes"),
    "ROCR_VISIBLE_DEVICES": (_GPUS, "set `hosts[].gpus` and the model's parallel sizes"),
    "HIP_VISIBLE_DEVICES": (_GPUS, "set `hosts[].gpus` and the model's parallel sizes"),
    "NCCL_DEBUG": (_NCCL, "set `nccl_debug`"),
    "NCCL_P2P_DISABLE": (_NCCL, "set `hosts[].nvlink`"),
    "NCCL_P2P_LEVEL": (_NCCL, "set `hosts[].nvlink`"),
    "NCCL_SOCKET_IFNAME": (_NCCL, "set `hosts[].nccl_socket_ifname` (or the node pool's)"),
    "GLOO_SOCKET_IFNAME": (_NCCL, "set `hosts[].nccl_socket_ifname` (or the node pool's)"),
    "VLLM_HOST_IP": (_NET, "the host's `address` (or the pod's IP) is used"),
    "VLLM_PORT": (_NET, ""),
    "VLLM_API_KEY": (_SECRET, "`pulumi config set --secret api_key`"),
    "HF_TOKEN": (_SECRET, "`pulumi config set --secret hf_token`"),
    "HUGGING_FACE_HUB_TOKEN": (_SECRET, "`pulumi config set --secret hf_token`"),
}
# ParallelConfig falls back to these when no --data-parallel-size is given: data parallelism
# again, which the fleet does with `replicas`.
DATA_PARALLEL_ENV = ("VLLM_DP_", "vLLM's data parallelism is the fleet's `replicas`", "set `models[].replicas`")
# vLLM's own variable names count tokens ("..._TOKENS", "..._TOKEN_THRESHOLD"): not credentials.
_TOKEN_COUNT = re.compile(r"TOKENS?")


def credential_named(name: str) -> bool:
    if name in table().env:
        name = _TOKEN_COUNT.sub("", name)
    return bool(SECRET_NAME.search(name))


def check_env(model: Model, i: int) -> None:
    for name, value in model.env.items():
        key = f"models[{i}].env.{name}"
        shown = SHOWN if value and (looks_secret(value) or credential_named(name)) else value
        owned = MANAGED_ENV.get(name)
        if owned is None and name.startswith(DATA_PARALLEL_ENV[0]):
            owned = DATA_PARALLEL_ENV[1:]
        if owned:
            why, fix = owned
            raise ConfigError(key, shown, f"the program sets this for the replicas: {why}",
                              "variables the program does not set", f"remove `{key}`" + (f"; {fix}" if fix else ""))
        if credential_named(name) or looks_secret(value):
            what = "its name says it holds a credential" if credential_named(name) else "its value looks like a credential"
            raise ConfigError(key, SHOWN, f"{what}: in `env` it would sit in plain text in the stack file, the "
                              "rendered files and the Pulumi state", "no credentials in `env`",
                              f"remove `{key}`; pass tokens with `pulumi config set --secret hf_token` (or `api_key`)")
        if name.startswith("VLLM_") and name not in table().env:
            close = difflib.get_close_matches(name, sorted(table().env), n=1, cutoff=0.7)
            raise ConfigError(key, shown, f"vLLM {VLLM_VERSION} reads no such variable (it would ignore it, "
                              "or refuse to start with --fail-on-environ-validation)"
                              + (f"; did you mean `{close[0]}`?" if close else ""),
                              f"the VLLM_* variables of vLLM {VLLM_VERSION}",
                              f"rename it to `{close[0]}`" if close else "")
