"""The capacity planner: what each replica puts on each GPU, and the checks that refuse a
deployment vLLM could not start.

Per model and replica, from the model's architecture (fleet.capacity.architecture):
- parameters: embeddings, attention q/k/v/o (grouped-query: k and v have num_key_value_heads),
  MLP gate/up/down (or experts), norms, and the lm_head unless tied to the embeddings;
- weight bytes by dtype and quantization, and per GPU after vLLM's split: tensor parallelism
  shards every linear layer and the (64-padded) vocabulary, pipeline parallelism gives each stage
  its layers (vLLM's get_pp_indices), the embeddings to the first stage and the lm_head to the last;
- KV cache bytes per token per GPU: 2 (K and V) x layers of the stage x KV heads on the GPU
  (num_key_value_heads / tp, at least 1: vLLM replicates KV heads when tp > num_key_value_heads)
  x head_dim x the KV dtype's bytes;
- the KV budget per GPU, as vLLM computes it: the GPU's memory x gpu_memory_utilization, minus the
  weights, minus what the profiling run and CUDA graphs hold (`gpu_overhead_bytes`); on a CPU
  replica exactly `cpu_kvcache_space_gib` (VLLM_CPU_KVCACHE_SPACE);
- the tokens that fit (whole KV blocks: 16 tokens on GPUs, 128 on vLLM's CPU backend) and the
  sequences of max_model_len that fit at once (vLLM's "Maximum concurrency").

`check_memory(cfg)` runs at the end of fleet.checks.check_fleet: before any resource exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from fleet.capacity import architecture as arch_mod
from fleet.config import images
from fleet.capacity.architecture import Architecture
from fleet.config.schema import FleetConfig, Model
from fleet.config.errors import ConfigError
from fleet.config.gpus import GPU_MODELS, GpuModel

GiB = 1 << 30
VOCAB_PADDING = 64  # vLLM pads the vocabulary of embeddings and lm_head to a multiple of 64
GPU_BLOCK_SIZE = 16
CPU_BLOCK_SIZE = 128
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

# What the profiling run and CUDA graphs hold on each GPU besides weights and KV cache.
# vLLM measures it at startup; we estimate it as a fixed part plus the larger of the sampler's
# float32 logits (max_num_seqs x vocab) and one prefill chunk's MLP activations. The fixed part is
# calibrated on the one GPU measurement we have (DeepSeek-R1-Distill-Qwen-1.5B, bf16,
# max-model-len 4096, utilization 0.92, H100 80GB, vLLM 0.26: KV cache 2,569,232 tokens):
# 0.92 x 79.18 GiB - 68.61 GiB KV - 3.34 GiB planned weights = 0.90 GiB, of which 0.58 GiB are
# the logits of 1024 sequences x 151,936 tokens x 4 B; 0.32 GiB remain.
GPU_FIXED_OVERHEAD = int(0.32 * GiB)
# Replicas of several GPUs also hold NCCL and custom all-reduce buffers: an allowance, not measured.
MULTI_GPU_OVERHEAD = int(0.5 * GiB)


def vllm_batch_defaults(gpu_name: str) -> tuple[int, int]:
    """vLLM 0.32's serving defaults (engine/arg_utils.py) by the GPU's memory: max_num_seqs and
    max_num_batched_tokens. A100s keep the small ones."""
    gpu = GPU_MODELS[gpu_name]
    if gpu.cuda_total_gib >= 160:
        return 1024, 16384
    if gpu.cuda_total_gib >= 70 and not gpu_name.startswith("A100"):
        return 1024, 8192
    return 256, 2048


# Least compute capability of vLLM's kernels per quantization (get_min_capability in vLLM 0.32;
# the Marlin kernels need Ampere). fp8 and bfloat16 are checked in fleet.checks.
MIN_CAPABILITY = {"awq": 7.5, "awq_marlin": 8.0, "gptq": 6.0, "gptq_marlin": 8.0, "compressed-tensors": 7.0}
# Quantizations that load a checkpoint quantized ahead of time, by the quant_method its config.json names.
PREQUANTIZED = {"awq": "awq", "awq_marlin": "awq", "gptq": "gptq", "gptq_marlin": "gptq",
                "compressed-tensors": "compressed-tensors"}
# The pinned vLLM release no longer has these `--quantization` methods.
NOT_IN_PINNED_VLLM = ("bitsandbytes",)


# --- parameters and bytes -------------------------------------------------------------------


def pad_vocab(vocab: int) -> int:
    return -(-vocab // VOCAB_PADDING) * VOCAB_PADDING


def kv_heads_per_gpu(a: Architecture, tp: int) -> int:
    return max(1, a.num_key_value_heads // tp)


@dataclass(frozen=True)
class LayerParams:
    """One decoder layer's parameters on one GPU: the linear weights of attention and of the MLP
    (what quantization shrinks) and the rest (biases, norms, router), kept in the activation dtype."""

    attention: int
    mlp: int
    other: int

    @property
    def total(self) -> int:
        return self.attention + self.mlp + self.other


def layer_params(a: Architecture, tp: int = 1) -> LayerParams:
    h, d = a.hidden_size, a.head_dim
    q_heads = a.num_attention_heads // tp
    kv = kv_heads_per_gpu(a, tp)
    attention = h * q_heads * d + 2 * h * kv * d + q_heads * d * h
    other = (q_heads + 2 * kv) * d if a.qkv_bias else 0
    other += h if a.o_bias else 0
    if a.num_experts:
        inter = a.moe_intermediate_size // tp
        mlp = a.num_experts * 3 * h * inter
        other += h * a.num_experts  # router
        if a.shared_expert_intermediate_size:
            mlp += 3 * h * (a.shared_expert_intermediate_size // tp)
            other += h  # shared expert gate
    else:
        inter = a.intermediate_size // tp
        mlp = (3 if a.gated_mlp else 2) * h * inter
        if a.mlp_bias:
            other += (2 if a.gated_mlp else 1) * inter + h
    other += (4 if not a.gated_mlp else 2) * h  # two norms per layer (LayerNorm has a bias too)
    if a.qk_norm:
        other += 2 * d
    return LayerParams(attention, mlp, other)


def count_params(a: Architecture) -> int:
    """All parameters, as the checkpoint has them (no vocabulary padding, no sharding)."""
    embed = a.vocab_size * a.hidden_size
    final_norm = a.hidden_size * (1 if a.gated_mlp else 2)
    return embed + a.num_hidden_layers * layer_params(a).total + final_norm + (0 if a.tie_word_embeddings else embed)


def linear_bytes_per_param(quant: Optional[str], dtype_bytes: int, a: Architecture) -> float:
    """Bytes per weight of a quantized linear layer, scales and zero points included."""
    qc = a.quantization_config or {}
    if quant is None:
        return dtype_bytes
    if quant in ("fp8", "fbgemm_fp8", "modelopt", "experts_int8"):
        return 1.0  # one scale per tensor, channel or block: negligible
    if quant in ("mxfp4", "gpt_oss_mxfp4"):
        return 0.5 + 1 / 32  # 4-bit values and one 8-bit scale per 32
    if quant in ("awq", "awq_marlin", "gptq", "gptq_marlin"):
        bits = int(qc.get("bits") or qc.get("w_bit") or 4)
        group = int(qc.get("group_size") or qc.get("q_group_size") or 128)
        group = group if group > 0 else 4096  # -1: one group per output channel
        return bits / 8 + (2 + bits / 8) / group  # a 16-bit scale and a packed zero point per group
    if quant == "bitsandbytes":
        return 0.5 + 4 / 64  # 4-bit NF4 and a float32 absmax per block of 64
    if quant == "compressed-tensors":
        bits = 8
        for group in (qc.get("config_groups") or {}).values():
            bits = int(((group or {}).get("weights") or {}).get("num_bits") or bits)
        return bits / 8 + (2 / 128 if bits < 8 else 0)
    return dtype_bytes


def kept_in_16_bit(a: Architecture, part: str) -> bool:
    """Whether a pre-quantized checkpoint leaves the attention (or MLP) layers unquantized, as its
    config.json's modules_to_not_convert / ignored_layers / ignore list says (Meta's FP8 Llama
    checkpoints keep attention in bf16)."""
    qc = a.quantization_config or {}
    names = qc.get("modules_to_not_convert") or qc.get("ignored_layers") or qc.get("ignore") or []
    keys = {"attention": ("self_attn", "attn", "q_proj", "qkv"),
            "mlp": ("mlp", "gate_proj", "up_proj", "down_proj", "experts")}[part]
    return any(k in str(name) for name in names for k in keys)


def pp_partitions(layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, as vLLM's get_pp_indices splits them."""
    parts = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        parts[-i] += 1
    return parts


@dataclass(frozen=True)
class Precision:
    weight_dtype: str  # the activation dtype: bfloat16, float16 or float32
    quantization: Optional[str]
    kv_dtype: str  # bfloat16, float16, float32 or fp8

    @property
    def kv_bytes(self) -> int:
        return 1 if self.kv_dtype.startswith("fp8") else DTYPE_BYTES[self.kv_dtype]


def precision(m: Model, a: Architecture, gpu: Optional[GpuModel]) -> Precision:
    dtype = m.dtype
    if dtype == "auto":
        dtype = a.torch_dtype
        if dtype == "float32":  # vLLM serves float32 checkpoints in 16 bits unless asked
            dtype = "bfloat16"
        if dtype == "bfloat16" and gpu is not None and not gpu.supports_bf16:
            dtype = "float16"
    kv = "fp8" if m.kv_cache_dtype == "fp8" else dtype
    return Precision(dtype, m.quantization or a.checkpoint_quantization, kv)


def rope_cache_bytes(a: Architecture, p: Precision) -> int:
    """vLLM's rotary embedding keeps a cos/sin table of every position (one per GPU, shared by the layers)."""
    if not a.gated_mlp:
        return 0
    return a.context_limit * a.head_dim * DTYPE_BYTES[p.weight_dtype]


def weight_bytes_of_stage(a: Architecture, p: Precision, tp: int, layers: int, first: bool, last: bool,
                          pp: int) -> int:
    """Weight bytes on one GPU of a pipeline stage holding `layers` layers (with the rotary table)."""
    wb = DTYPE_BYTES[p.weight_dtype]
    lp = layer_params(a, tp)
    quantized = linear_bytes_per_param(p.quantization, wb, a)
    from_checkpoint = p.quantization is not None and p.quantization == a.checkpoint_quantization
    attention = wb if from_checkpoint and kept_in_16_bit(a, "attention") else quantized
    mlp = wb if from_checkpoint and kept_in_16_bit(a, "mlp") else quantized
    per_layer = lp.attention * attention + lp.mlp * mlp + lp.other * wb
    vocab_shard = pad_vocab(a.vocab_size) // tp * a.hidden_size * wb
    total = layers * per_layer + rope_cache_bytes(a, p)
    if first:
        total += vocab_shard
    if last:
        total += a.hidden_size * (1 if a.gated_mlp else 2) * wb  # final norm
        # a tied lm_head is the embedding itself, unless the embedding lives on another stage
        total += 0 if (a.tie_word_embeddings and pp == 1) else vocab_shard
    return int(total)


def kv_bytes_per_token_of_stage(a: Architecture, p: Precision, tp: int, layers: int) -> int:
    return 2 * layers * kv_heads_per_gpu(a, tp) * a.head_dim * p.kv_bytes


def total_weight_bytes(a: Architecture, p: Precision) -> int:
    return weight_bytes_of_stage(a, p, 1, a.num_hidden_layers, True, True, 1)


# --- the plan of one model on one kind of GPU (or on a CPU) ---------------------------------------


@dataclass(frozen=True)
class ModelMemory:
    """One replica's memory plan. Per-GPU figures are those of the fullest GPU (pipeline stages
    differ; vLLM gives every GPU the same number of KV blocks, so the tightest stage decides)."""

    model: Model
    arch: Architecture
    device: str  # a GPU model name, or "cpu"
    precision: Precision
    gpus: int  # per replica (0 on CPU)
    params: int
    weight_bytes: int  # the whole model at this precision (one copy, unsharded)
    weight_bytes_per_gpu: int
    memory_per_gpu: int  # what vLLM may use: GPU memory x gpu_memory_utilization (CPU: KV space)
    overhead_per_gpu: int
    kv_budget_per_gpu: int
    kv_bytes_per_token: int  # all layers, all KV heads (the model's, before sharding)
    kv_bytes_per_token_per_gpu: int
    block_size: int
    num_blocks: int
    max_model_len: int
    max_num_seqs: int
    draft: Optional[str] = None  # the draft model included in the figures, if any

    @property
    def kv_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def blocks_per_sequence(self) -> int:
        return -(-self.max_model_len // self.block_size)

    @property
    def max_concurrency(self) -> float:
        """Sequences of max_model_len tokens the KV cache holds at once (vLLM's "Maximum concurrency")."""
        return self.num_blocks / self.blocks_per_sequence

    @property
    def max_sequences(self) -> int:
        return math.floor(self.max_concurrency)


def gpu_overhead_bytes(m: Model, a: Architecture, p: Precision, gpu_name: str) -> int:
    seqs, tokens = vllm_batch_defaults(gpu_name)
    seqs = m.max_num_seqs or seqs
    tokens = m.max_num_batched_tokens or tokens
    logits = seqs * a.vocab_size * 4
    inter = (a.moe_intermediate_size if a.num_experts else a.intermediate_size) // m.tensor_parallel_size
    activations = tokens * 3 * inter * DTYPE_BYTES[p.weight_dtype]
    multi = MULTI_GPU_OVERHEAD if m.gpus_per_replica > 1 else 0
    return GPU_FIXED_OVERHEAD + max(logits, activations) + multi


def plan_model(m: Model, a: Architecture, device: str, draft: Optional[Architecture] = None) -> ModelMemory:
    """The memory plan of one replica of `m` on GPUs of model `device` (or "cpu")."""
    gpu = GPU_MODELS.get(device)
    p = precision(m, a, gpu)
    tp, pp = (m.tensor_parallel_size, m.pipeline_parallel_size) if device != "cpu" else (1, 1)
    parts = pp_partitions(a.num_hidden_layers, pp)
    weights = [weight_bytes_of_stage(a, p, tp, n, s == 0, s == pp - 1, pp) for s, n in enumerate(parts)]
    kv_token = [kv_bytes_per_token_of_stage(a, p, tp, n) for n in parts]
    if draft is not None:  # vLLM runs the draft with the target's tp, on the first stage's GPUs
        dp = precision(m.model_copy(update={"quantization": None}), draft, gpu)
        weights[0] += weight_bytes_of_stage(draft, dp, tp, draft.num_hidden_layers, True, True, 1)
        kv_token[0] += kv_bytes_per_token_of_stage(draft, dp, tp, draft.num_hidden_layers)
    max_len = m.max_model_len or a.context_limit
    if device == "cpu":
        memory = m.cpu_kvcache_space_gib * GiB
        overhead = 0
        budgets = [memory] * pp
        block = CPU_BLOCK_SIZE
        max_num_seqs = m.max_num_seqs or 256
    else:
        memory = int(gpu.cuda_total_gib * GiB * m.gpu_memory_utilization)
        overhead = gpu_overhead_bytes(m, a, p, device)
        budgets = [memory - w - overhead for w in weights]
        block = GPU_BLOCK_SIZE
        max_num_seqs = m.max_num_seqs or vllm_batch_defaults(device)[0]
    num_blocks = max(0, min(b // (block * t) for b, t in zip(budgets, kv_token)))
    tight = min(range(pp), key=lambda s: budgets[s] // (block * kv_token[s]))
    return ModelMemory(
        model=m, arch=a, device=device, precision=p, gpus=m.gpus_per_replica,
        params=count_params(a),
        weight_bytes=total_weight_bytes(a, p),
        weight_bytes_per_gpu=max(weights) if device != "cpu" else weights[0],
        memory_per_gpu=memory, overhead_per_gpu=overhead,
        kv_budget_per_gpu=min(budgets),
        kv_bytes_per_token=kv_bytes_per_token_of_stage(a, p, 1, a.num_hidden_layers),
        kv_bytes_per_token_per_gpu=kv_token[tight],
        block_size=block, num_blocks=num_blocks, max_model_len=max_len, max_num_seqs=max_num_seqs,
        draft=draft.hf_id if draft is not None else None,
    )


# --- the whole fleet ---------------------------------------------------------------------------


@dataclass
class FleetCapacity:
    """Each model's plan, per kind of device its replicas run on, and the placement."""

    cfg: FleetConfig
    archs: list[Architecture]
    plans: dict[int, dict[str, ModelMemory]] = field(default_factory=dict)  # model index -> device -> plan
    placements: list = field(default_factory=list)
    unplanned: dict[int, str] = field(default_factory=dict)  # model index -> why it is not sized


def replica_devices(cfg: FleetConfig, placements: list) -> dict[str, list[tuple[str, str]]]:
    """model name -> [(replica name, GPU model or "cpu")].

    Docker target: from the placement. Kubernetes target: the node pool that names the model, else
    the first pool that names none (models no pool can take are left out: the target's own checks
    report them).
    """
    out: dict[str, list[tuple[str, str]]] = {}
    if getattr(cfg, "target", "docker") == "kubernetes":
        pools = cfg.kubernetes.node_pools if cfg.kubernetes else []
        for m in cfg.models:
            pool = next((p for p in pools if m.name in p.models), None) or next((p for p in pools if not p.models), None)
            if pool is not None and pool.gpu_model in GPU_MODELS:
                out[m.name] = [(f"{m.name}-{r}", pool.gpu_model) for r in range(m.replicas)]
        return out
    for p in placements:
        host = cfg.host(p.leader.host)
        out.setdefault(p.model, []).append((p.name, host.gpu_model if host.gpus else "cpu"))
    return out


def inventory_gpu_models(cfg: FleetConfig) -> set[str]:
    if getattr(cfg, "target", "docker") == "kubernetes":
        return {p.gpu_model for p in (cfg.kubernetes.node_pools if cfg.kubernetes else []) if p.gpu_model in GPU_MODELS}
    return {h.gpu_model for h in cfg.hosts if h.gpus > 0 and h.gpu_model in GPU_MODELS}


def draft_architecture(m: Model, i: int) -> Optional[Architecture]:
    spec = m.speculative
    if spec is None or spec.method != "draft_model" or not spec.model:
        return None
    return arch_mod.find(spec.model, None, f"models[{i}].speculative.model")


def plan_fleet(cfg: FleetConfig, archs: Optional[list[Architecture]] = None) -> FleetCapacity:
    from fleet.docker.placement import place

    archs = archs or [arch_mod.resolve(m, i) for i, m in enumerate(cfg.models)]
    placements = place(cfg) if getattr(cfg, "target", "docker") == "docker" else []
    devices = replica_devices(cfg, placements)
    cap = FleetCapacity(cfg, archs, placements=placements)
    for i, m in enumerate(cfg.models):
        a = archs[i]
        if a.unsupported:
            cap.unplanned[i] = f"the planner does not size {a.unsupported}"
            continue
        draft = draft_architecture(m, i)
        cap.plans[i] = {}
        for _, device in devices.get(m.name, []):
            if device not in cap.plans[i]:
                cap.plans[i][device] = plan_model(m, a, device, draft)
    return cap


# --- checks ------------------------------------------------------------------------------------


def check_memory(cfg: FleetConfig) -> None:
    """Refuse, with one ConfigError, a model vLLM could not start the way the stack configures it."""
    archs = [arch_mod.resolve(m, i) for i, m in enumerate(cfg.models)]
    for i, m in enumerate(cfg.models):
        _check_layout(i, m, archs[i])
        _check_context(i, m, archs[i])
        _check_quantization(cfg, i, m, archs[i])
        _check_speculative(i, m, archs[i])
    cap = plan_fleet(cfg, archs)
    for i, by_device in cap.plans.items():
        for plan in by_device.values():
            _check_fit(cfg, i, plan)


def _divisors(n: int, limit: int = 16) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _kv_rule_ok(tp: int, kv: int) -> bool:
    return kv % tp == 0 or tp % kv == 0


def _check_layout(i: int, m: Model, a: Architecture) -> None:
    if m.device == "cpu":
        return
    k, tp, pp = f"models[{i}]", m.tensor_parallel_size, m.pipeline_parallel_size
    if a.num_attention_heads % tp:
        raise ConfigError(
            f"{k}.tensor_parallel_size", tp,
            f"tensor_parallel_size {tp} does not divide the {a.num_attention_heads} attention heads of `{a.hf_id}` "
            "(vLLM gives every GPU an equal share of the heads)",
            f"a divisor of {a.num_attention_heads}: {', '.join(map(str, _divisors(a.num_attention_heads)))}",
            f"set `{k}.tensor_parallel_size` to one of them (use pipeline_parallel_size for more GPUs)")
    if not _kv_rule_ok(tp, a.num_key_value_heads):
        ok = [d for d in _divisors(a.num_attention_heads) if _kv_rule_ok(d, a.num_key_value_heads)]
        raise ConfigError(
            f"{k}.tensor_parallel_size", tp,
            f"tensor_parallel_size {tp} and the {a.num_key_value_heads} KV heads of `{a.hf_id}`: vLLM needs one to "
            "divide the other (it shards KV heads over the GPUs, or replicates them when tp is a multiple)",
            f"tensor_parallel_size that divides or is a multiple of {a.num_key_value_heads} and divides "
            f"{a.num_attention_heads}: {', '.join(map(str, ok))}",
            f"set `{k}.tensor_parallel_size` to one of them")
    if pp > a.num_hidden_layers:
        raise ConfigError(
            f"{k}.pipeline_parallel_size", pp,
            f"pipeline_parallel_size {pp} exceeds the {a.num_hidden_layers} layers of `{a.hf_id}` "
            "(every pipeline stage needs at least one layer)",
            f"1 to {a.num_hidden_layers}",
            f"lower `{k}.pipeline_parallel_size` (use tensor_parallel_size for more GPUs)")


def _check_context(i: int, m: Model, a: Architecture) -> None:
    if m.max_model_len is None or m.max_model_len <= a.context_limit:
        return
    how = (f"max_position_embeddings {a.max_position_embeddings:,} x rope_scaling factor {a.rope_scaling['factor']}"
           if a.context_limit != a.max_position_embeddings else f"max_position_embeddings {a.max_position_embeddings:,}")
    raise ConfigError(
        f"models[{i}].max_model_len", m.max_model_len,
        f"longer than the context of `{a.hf_id}` ({how}); vLLM refuses to start "
        "(VLLM_ALLOW_LONG_MAX_MODEL_LEN would allow it, with garbage beyond the trained length)",
        f"max_model_len <= {a.context_limit:,}, or unset for the model's own",
        f"lower `models[{i}].max_model_len`, or pick a long-context variant of the model")


def _check_quantization(cfg: FleetConfig, i: int, m: Model, a: Architecture) -> None:
    k, q, ckpt = f"models[{i}].quantization", m.quantization, a.checkpoint_quantization
    if q is None:
        return
    if q in NOT_IN_PINNED_VLLM and m.device == "gpu" and m.image is None:
        raise ConfigError(
            k, q, f"the pinned vLLM release ({images.VLLM_VERSION}) has no `--quantization {q}`: the server would "
            "stop at startup with \"Unknown quantization method\"",
            "fp8, awq, gptq, awq_marlin, gptq_marlin, compressed-tensors",
            f"use `quantization: fp8` (halves 16-bit weights, no special checkpoint) or an AWQ/GPTQ checkpoint, "
            f"or remove `{k}`")
    want = PREQUANTIZED.get(q)
    if want and ckpt is None:
        kind = {"awq": "an AWQ", "gptq": "a GPTQ"}.get(want, f"a {want}")
        raise ConfigError(
            k, q, f"{q} loads a checkpoint quantized ahead of time, but `{a.hf_id}` is not quantized "
            f"(its config.json has no quantization_config): vLLM would fail loading its weights",
            f"{q} with {kind} checkpoint; fp8 quantizes a 16-bit checkpoint while loading",
            f"point `models[{i}].hf_id` at {kind} checkpoint of the model, or use `quantization: fp8`")
    if ckpt is not None and (want or q) != ckpt and not (q == "fp8" and ckpt == "fp8"):
        raise ConfigError(
            k, q, f"`{a.hf_id}` is a checkpoint quantized with {ckpt}; vLLM refuses `--quantization {q}` for it "
            "(\"Quantization method specified in the model config does not match\")",
            f"the checkpoint's own method ({ckpt}), or no quantization key (vLLM reads it from config.json)",
            f"remove `{k}` or set it to {ckpt}")
    need = MIN_CAPABILITY.get(q)
    if need is None or m.device != "gpu":
        return
    gpus = inventory_gpu_models(cfg)
    slow = sorted(g for g in gpus if GPU_MODELS[g].compute_capability < need)
    if slow and len(slow) == len(gpus):
        ok = sorted(g for g, spec in GPU_MODELS.items() if spec.compute_capability >= need)
        raise ConfigError(
            k, q, f"{q} kernels need compute capability {need} or newer; the inventory's GPUs are "
            + ", ".join(f"{g} ({GPU_MODELS[g].compute_capability})" for g in slow),
            f"{q} on {', '.join(ok)}" + ("; gptq runs on older GPUs too" if q != "gptq" else ""),
            "use a quantization these GPUs support (gptq from compute 6.0, awq from 7.5, Marlin kernels from 8.0) "
            "or newer GPUs")


def _check_speculative(i: int, m: Model, a: Architecture) -> None:
    spec = m.speculative
    if spec is None:
        return
    k = f"models[{i}].speculative"
    if spec.method == "mtp":
        n = a.num_nextn_predict_layers
        if n == 0:
            raise ConfigError(
                f"{k}.method", "mtp", f"`{a.hf_id}` has no multi-token-prediction layers (no num_nextn_predict_layers "
                "in its config.json); vLLM cannot draft with mtp",
                "mtp only for models trained with MTP layers (DeepSeek-V3/R1, Qwen3-Next, MiMo, GLM-4.5); "
                "ngram or a draft model otherwise",
                f"set `{k}.method: ngram`, or draft_model with a small model of the same tokenizer")
        if spec.num_speculative_tokens > n and spec.num_speculative_tokens % n:
            ok = [t for t in range(1, 17) if t <= n or t % n == 0]
            raise ConfigError(
                f"{k}.num_speculative_tokens", spec.num_speculative_tokens,
                f"`{a.hf_id}` has {n} MTP layers; vLLM reuses them in whole rounds, so more tokens than layers must "
                f"be a multiple of {n}",
                ", ".join(map(str, ok)), f"set `{k}.num_speculative_tokens` to one of them")
    if spec.method != "draft_model" or not spec.model:
        return
    draft = arch_mod.find(spec.model, None, f"{k}.model")
    if draft is None:
        return  # unknown draft: vLLM checks it at startup; nothing to compare here
    if draft.vocab_size != a.vocab_size:
        raise ConfigError(
            f"{k}.model", spec.model,
            f"the draft model's vocabulary ({draft.vocab_size:,} tokens) differs from `{a.hf_id}`'s "
            f"({a.vocab_size:,}); vLLM refuses the pair (\"Target and draft model should have the same vocabulary size\")",
            f"a draft model with the target's tokenizer and a vocab_size of {a.vocab_size:,}",
            f"choose a smaller model of the same family and vocabulary as `{a.hf_id}`, or use method ngram")
    tp = m.tensor_parallel_size if m.device == "gpu" else 1
    if draft.num_attention_heads % tp or not _kv_rule_ok(tp, draft.num_key_value_heads):
        raise ConfigError(
            f"{k}.model", spec.model,
            f"vLLM runs the draft with the target's tensor_parallel_size {tp}, but the draft's "
            f"{draft.num_attention_heads} attention heads / {draft.num_key_value_heads} KV heads do not split over {tp} GPUs",
            f"a draft model whose attention heads divide by {tp} (and whose KV heads divide or are divided by {tp})",
            "choose another draft model, or use method ngram")
    if count_params(draft) >= count_params(a):
        raise ConfigError(
            f"{k}.model", spec.model,
            f"the draft model ({count_params(draft) / 1e9:.2f} B parameters) is not smaller than the target "
            f"`{a.hf_id}` ({count_params(a) / 1e9:.2f} B): drafting would be slower than decoding",
            "a draft model much smaller than the target (typically 10-50x fewer parameters)",
            f"set `{k}.model` to a small model of the same family, or use method ngram")


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _smallest_fitting_tp(m: Model, a: Architecture, device: str, hosts_max: int) -> Optional[int]:
    """The smallest larger tensor_parallel_size, within one host, on which one sequence fits."""
    for tp in _divisors(a.num_attention_heads):
        if tp <= m.tensor_parallel_size or tp > hosts_max or not _kv_rule_ok(tp, a.num_key_value_heads):
            continue
        plan = plan_model(m.model_copy(update={"tensor_parallel_size": tp}), a, device)
        if plan.num_blocks >= plan.blocks_per_sequence:
            return tp
    return None


def _check_fit(cfg: FleetConfig, i: int, plan: ModelMemory) -> None:
    m, a, k = plan.model, plan.arch, f"models[{i}]"
    if plan.device == "cpu":
        if plan.num_blocks >= plan.blocks_per_sequence:
            return
        need = -(-plan.blocks_per_sequence * plan.block_size * plan.kv_bytes_per_token // GiB)
        raise ConfigError(
            f"{k}.max_model_len", plan.max_model_len,
            f"one sequence of {plan.max_model_len:,} tokens needs {_gib(plan.max_model_len * plan.kv_bytes_per_token)} "
            f"of KV cache ({plan.kv_bytes_per_token:,} B per token) but cpu_kvcache_space_gib is "
            f"{m.cpu_kvcache_space_gib} ({plan.kv_tokens:,} tokens); vLLM refuses to start",
            f"max_model_len <= {plan.kv_tokens:,} with {m.cpu_kvcache_space_gib} GiB of KV cache",
            f"lower `{k}.max_model_len` to {plan.kv_tokens:,} or less, or raise `{k}.cpu_kvcache_space_gib` to {need}")
    gpu = plan.device
    where = (f"{plan.gpus} x {gpu} (tensor_parallel_size {m.tensor_parallel_size} x pipeline_parallel_size "
             f"{m.pipeline_parallel_size})")
    if plan.kv_budget_per_gpu <= 0:
        if getattr(cfg, "target", "docker") == "kubernetes":
            hosts_max = max((p.gpus_per_node for p in cfg.kubernetes.node_pools if p.gpu_model == gpu), default=0)
        else:
            hosts_max = max((h.gpus for h in cfg.hosts if h.gpu_model == gpu), default=0)
        tp = _smallest_fitting_tp(m, a, gpu, hosts_max)
        hint = f"raise `{k}.tensor_parallel_size` to {tp}" if tp else "spread it over more GPUs (pipeline_parallel_size)"
        raise ConfigError(
            f"{k}.tensor_parallel_size", m.tensor_parallel_size,
            f"`{m.name}` ({a.hf_id}) does not fit on {where}: {_gib(plan.weight_bytes_per_gpu)} of weights per GPU "
            f"({plan.params / 1e9:.2f} B parameters, {plan.precision.quantization or plan.precision.weight_dtype}) "
            f"plus {_gib(plan.overhead_per_gpu)} of activations and CUDA graphs exceed the "
            f"{_gib(plan.memory_per_gpu)} vLLM may use ({m.gpu_memory_utilization} x {GPU_MODELS[gpu].cuda_total_gib} GiB)",
            f"weights per GPU below {_gib(plan.memory_per_gpu - plan.overhead_per_gpu)} on {gpu}, with room left for the KV cache",
            f"{hint}, quantize (`quantization: fp8` halves 16-bit weights), or use GPUs with more memory")
    if plan.num_blocks >= plan.blocks_per_sequence:
        return
    raise ConfigError(
        f"{k}.max_model_len", plan.max_model_len,
        f"one sequence of {plan.max_model_len:,} tokens does not fit in the KV cache of `{m.name}` ({a.hf_id}) on {where}: it "
        f"needs {_gib(plan.max_model_len * plan.kv_bytes_per_token_per_gpu)} per GPU, and "
        f"{_gib(plan.kv_budget_per_gpu)} is left after {_gib(plan.weight_bytes_per_gpu)} of weights and "
        f"{_gib(plan.overhead_per_gpu)} of activations ({plan.kv_tokens:,} tokens); vLLM refuses to start"
        + ("" if m.max_model_len else " (max_model_len is unset: the model's own context)"),
        f"max_model_len <= {plan.kv_tokens:,} on this layout",
        f"set `{k}.max_model_len` to {plan.kv_tokens:,} or less, raise `{k}.gpu_memory_utilization`, or add GPUs "
        f"(tensor_parallel_size)")
