"""Refusals of the capacity planner: a model vLLM could not start the way the stack configures it,
each one ConfigError (key, value, what is allowed, the fix).

`check_models` needs only the config and the architectures; `check_fit` needs the devices the
target chose (fleet.docker.placement, fleet.k8s.plan), so each target's plan runs it once it has chosen.
"""
from __future__ import annotations

from typing import Optional

from fleet.capacity import architecture as arch_mod
from fleet.capacity.architecture import Architecture
from fleet.capacity.memory import (LORA_EMBEDDING_ARCHITECTURES, NOT_IN_PINNED_VLLM, PREQUANTIZED, FleetCapacity, GiB,
                                   ModelMemory, count_params, plan_model)
from fleet.config import images
from fleet.config.errors import ConfigError
from fleet.config.gpus import GPU_MODELS, MIN_CAPABILITY
from fleet.config.schema import FleetConfig, Model



def check_models(cfg: FleetConfig, archs: list[Architecture]) -> None:
    """Refuse, with one ConfigError, a model vLLM could not start on any device: its layout,
    context, quantization and speculative decoding against its architecture."""
    for i, m in enumerate(cfg.models):
        _check_layout(i, m, archs[i])
        _check_context(i, m, archs[i])
        _check_quantization(cfg, i, m, archs[i])
        _check_speculative(i, m, archs[i])
        _check_lora(i, m, archs[i])


def check_fit(cap: FleetCapacity) -> None:
    """Refuse a replica that does not fit the devices its target chose for it."""
    for i, by_device in cap.plans.items():
        for plan in by_device.values():
            _check_fit(cap, i, plan)


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
    gpus = cfg.gpu_models
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


# LogitsProcessorWithLoRA.create_lora_weights (vLLM 0.32) refuses larger vocabularies.
LORA_MAX_VOCAB = 258048


def _check_lora(i: int, m: Model, a: Architecture) -> None:
    if m.lora and set(a.architectures) & set(LORA_EMBEDDING_ARCHITECTURES) and a.vocab_size > LORA_MAX_VOCAB:
        raise ConfigError(f"models[{i}].lora", f"{len(m.lora.adapters)} adapter(s)",
                          f"vLLM's LoRA wraps the logits of {a.architectures[0]} and refuses a vocabulary of "
                          f"{a.vocab_size:,} (at most {LORA_MAX_VOCAB:,})", "no LoRA adapters on this model",
                          f"remove `models[{i}].lora` (merge the adapter into a copy of the model instead)")


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


def _check_fit(cap: FleetCapacity, i: int, plan: ModelMemory) -> None:
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
        tp = _smallest_fitting_tp(m, a, gpu, cap.cfg.gpus_per_machine.get(gpu, 0))
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
