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
- LoRA adapter slots (`lora`), which vLLM allocates with the weights (they are part of "Model
  loading took"): `lora_bytes_of_stage`;
- the tokens that fit (whole KV blocks: 16 tokens on GPUs, 128 on vLLM's CPU backend) and the
  sequences of max_model_len that fit at once (vLLM's "Maximum concurrency").

The refusals built on it are in fleet.capacity.refusals; each target's plan runs them on the
devices it chose, before any resource exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from fleet.capacity import architecture as arch_mod
from fleet.capacity.architecture import Architecture
from fleet.config.schema import FleetConfig, Model
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


# --- LoRA adapter slots ---------------------------------------------------------------------------

# Architectures whose vLLM 0.32 class lists `embedding_modules` (embed_tokens, lm_head): LoRA also
# wraps their input embeddings and their logits (lm_head). Checked against vLLM's classes in the tests.
LORA_EMBEDDING_ARCHITECTURES = (
    "LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "MixtralForCausalLM", "Phi3ForCausalLM",
    "GraniteForCausalLM",
)


def lora_elements_per_rank(a: Architecture, tp: int, layers: int, first: bool, last: bool) -> int:
    """LoRA slot elements per unit of rank, per adapter slot, on one GPU of a stage holding `layers`.

    vLLM 0.32 (vllm/lora/layers/, LoRAModelManager._create_lora_modules) wraps every linear layer
    of the model and gives each wrapper, per slot, lora_a (max_lora_rank x its input) and lora_b
    (its output x max_lora_rank), zeroed at startup, in the model's dtype:
    - column-parallel layers (q/k/v, gate/up) keep their whole input per packed slice (q, k, v:
      3 x hidden) and the GPU's shard of their output;
    - row-parallel layers (o, down) take the GPU's shard of their input and their whole output;
    - an MoE layer holds every expert's gate/up/down the same way (3 x hidden + 3 x the expert's
      intermediate shard each), plus its router (hidden + experts);
    - architectures in LORA_EMBEDDING_ARCHITECTURES also wrap the embeddings (vocabulary + hidden)
      on the first stage and the logits (hidden + vocabulary) on the last."""
    h, d = a.hidden_size, a.head_dim
    q = a.num_attention_heads // tp * d
    kv = kv_heads_per_gpu(a, tp) * d
    attention = 3 * h + q + 2 * kv + q + h
    if a.num_experts:
        mlp = a.num_experts * (3 * h + 3 * (a.moe_intermediate_size // tp)) + h + a.num_experts
        if a.shared_expert_intermediate_size:
            mlp += 3 * h + 3 * (a.shared_expert_intermediate_size // tp)
    else:
        inter = a.intermediate_size // tp
        mlp = 3 * h + 3 * inter if a.gated_mlp else 2 * h + 2 * inter
    total = layers * (attention + mlp)
    if set(a.architectures) & set(LORA_EMBEDDING_ARCHITECTURES):
        total += (a.vocab_size + h if first else 0) + (h + a.vocab_size if last else 0)
    return total


def lora_bytes_of_stage(m: Model, a: Architecture, p: Precision, tp: int, layers: int, first: bool, last: bool) -> int:
    """GPU memory vLLM reserves for `m.lora`'s adapter slots on one GPU of a stage: max_loras x
    max_lora_rank x the elements above x the LoRA dtype's bytes (auto: the model's dtype)."""
    if m.lora is None:
        return 0
    per_rank = lora_elements_per_rank(a, tp, layers, first, last)
    return m.lora.max_loras * m.lora.max_lora_rank * per_rank * DTYPE_BYTES[p.weight_dtype]


def lora_host_bytes(m: Model, a: Architecture, p: Precision) -> int:
    """At most what vLLM's host-side adapter cache holds: max_cpu_loras adapters (each at most
    max_lora_rank on every layer, unsharded); the adapters' real size decides."""
    if m.lora is None:
        return 0
    per_rank = lora_elements_per_rank(a, 1, a.num_hidden_layers, True, True)
    return m.lora.cpu_slots * m.lora.max_lora_rank * per_rank * DTYPE_BYTES[p.weight_dtype]


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
    lora_bytes_per_gpu: int = 0  # LoRA adapter slots on the fullest GPU (CPU: in RAM), beside the weights
    lora_host_bytes: int = 0  # at most, the host-side cache of max_cpu_loras adapters

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
    lora = [lora_bytes_of_stage(m, a, p, tp, n, s == 0, s == pp - 1) for s, n in enumerate(parts)]
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
        budgets = [memory - w - lb - overhead for w, lb in zip(weights, lora)]
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
        lora_bytes_per_gpu=max(lora), lora_host_bytes=lora_host_bytes(m, a, p),
    )


# --- the whole fleet ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Devices:
    """Where a target decided the replicas run, as the planner needs it (fleet.docker.placement,
    fleet.k8s.plan choose; the planner never re-derives it)."""

    replicas: dict[str, list[tuple[str, str]]]  # model name -> [(replica name, GPU model or "cpu")]


@dataclass
class FleetCapacity:
    """Each model's plan, per kind of device its replicas run on."""

    cfg: FleetConfig
    archs: list[Architecture]
    devices: Devices
    plans: dict[int, dict[str, ModelMemory]] = field(default_factory=dict)  # model index -> device -> plan
    unplanned: dict[int, str] = field(default_factory=dict)  # model index -> why it is not sized


def architectures(cfg: FleetConfig) -> list[Architecture]:
    return [arch_mod.resolve(m, i) for i, m in enumerate(cfg.models)]


def draft_architecture(m: Model, i: int) -> Optional[Architecture]:
    spec = m.speculative
    if spec is None or spec.method != "draft_model" or not spec.model:
        return None
    return arch_mod.find(spec.model, None, f"models[{i}].speculative.model")


def fits(m: Model, a: Architecture, device: str, draft: Optional[Architecture] = None) -> bool:
    """Whether one sequence of max_model_len fits beside the weights on `device` (True when the
    planner cannot size the architecture: vLLM's own startup check decides then)."""
    if a.unsupported:
        return True
    plan = plan_model(m, a, device, draft)
    return plan.kv_budget_per_gpu > 0 and plan.num_blocks >= plan.blocks_per_sequence


def plan_fleet(cfg: FleetConfig, archs: list[Architecture], devices: Devices) -> FleetCapacity:
    cap = FleetCapacity(cfg, archs, devices)
    for i, m in enumerate(cfg.models):
        a = archs[i]
        if a.unsupported:
            cap.unplanned[i] = f"the planner does not size {a.unsupported}"
            continue
        draft = draft_architecture(m, i)
        cap.plans[i] = {}
        for _, device in devices.replicas.get(m.name, []):
            if device not in cap.plans[i]:
                cap.plans[i][device] = plan_model(m, a, device, draft)
    return cap
