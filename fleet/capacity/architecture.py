"""A model's architecture (its Hugging Face `config.json`), as the capacity planner needs it.

Where it comes from, first match wins:
1. `models[].architecture` in the stack file (the config.json inline, for offline planning);
2. the repository's cache, `files/models/<org>/<name>/config.json` (every model the shipped
   stacks use is there, so preview, render and tests never need the network);
3. the Hugging Face hub, `https://huggingface.co/<id>/resolve/<revision>/config.json`, with
   `HF_TOKEN` from the environment for gated models. Skipped when `VLLM_FLEET_OFFLINE`,
   `HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` is set.
When none has it, the model's config is refused with one ConfigError that says how to add it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fleet.config.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "files" / "models"
HUB_URL = "https://huggingface.co/{hf_id}/resolve/{revision}/config.json"
FETCH_TIMEOUT_S = (5, 15)  # connect, read
OFFLINE_ENV = ("VLLM_FLEET_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Families whose attention projections q, k and v carry a bias although config.json says nothing.
QKV_BIAS_FAMILIES = ("qwen2", "qwen2_moe")
# Families whose MLP is a plain up/down projection (no gate), with LayerNorm weight and bias.
UNGATED_FAMILIES = ("gpt2", "gpt_neox", "gptj", "opt", "falcon", "bloom", "phi", "starcoder2", "gpt_bigcode")
# rope_scaling types for which vLLM multiplies max_position_embeddings by the factor
# (llama3 and longrope already state the extended length in max_position_embeddings).
ROPE_TYPES_EXTENDING_CONTEXT = ("linear", "dynamic", "yarn", "mrope")
DTYPE_NAMES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


@dataclass(frozen=True)
class Architecture:
    """The facts of one model's config.json that decide its memory and its parallel layout."""

    hf_id: str
    source: str  # where it came from, for the plan and for error messages
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    torch_dtype: str  # bfloat16, float16 or float32
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    gated_mlp: bool = True
    qk_norm: bool = False
    num_experts: int = 0  # 0: dense
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    num_nextn_predict_layers: int = 0  # MTP layers, for speculative method mtp
    rope_scaling: Optional[dict] = None
    quantization_config: Optional[dict] = None  # a pre-quantized checkpoint's
    unsupported: Optional[str] = None  # why the planner cannot size this architecture, if it cannot
    architectures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def checkpoint_quantization(self) -> Optional[str]:
        return (self.quantization_config or {}).get("quant_method") or None

    @property
    def context_limit(self) -> int:
        """The longest max_model_len vLLM accepts for this model without VLLM_ALLOW_LONG_MAX_MODEL_LEN."""
        scaling = self.rope_scaling or {}
        kind = scaling.get("rope_type") or scaling.get("type")
        factor = scaling.get("factor")
        if kind in ROPE_TYPES_EXTENDING_CONTEXT and isinstance(factor, (int, float)) and factor > 1:
            return int(self.max_position_embeddings * factor)
        return self.max_position_embeddings


def parse(raw: dict[str, Any], hf_id: str, source: str, key: str) -> Architecture:
    """An Architecture from a config.json dict; `key` names the config key errors point at."""
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "an architecture must be the model's config.json as a map",
                          "a map with hidden_size, num_hidden_layers, num_attention_heads, ...",
                          f"paste the model's config.json under `{key}`")
    cfg = raw
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "quantization_config": cfg.get("quantization_config")}
    required = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in required if not isinstance(cfg.get(k), int) or isinstance(cfg.get(k), bool) or cfg.get(k) <= 0]
    if missing:
        raise ConfigError(key, f"<config.json from {source}>", f"the architecture of `{hf_id}` lacks {', '.join(missing)}",
                          "a Hugging Face config.json of a decoder model (hidden_size, num_hidden_layers, "
                          "num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, ...)",
                          f"copy the model's complete config.json into {source}")
    model_type = str(cfg.get("model_type", ""))
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or cfg.get("num_kv_heads") or heads
    if cfg.get("multi_query") is True:
        kv_heads = 1
    head_dim = cfg.get("head_dim") or hidden // heads
    max_pos = (cfg.get("max_position_embeddings") or cfg.get("n_positions") or cfg.get("max_seq_len")
               or cfg.get("seq_length") or 2048)
    dtype = DTYPE_NAMES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), "bfloat16")
    experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0)
    unsupported = None
    if cfg.get("kv_lora_rank"):
        unsupported = "multi-head latent attention (kv_lora_rank)"
    elif any(t in model_type for t in ("mamba", "jamba", "rwkv", "hybrid", "nemotron_h")) or cfg.get("layer_types") and any(
            t not in ("full_attention", "sliding_attention", "attention") for t in cfg["layer_types"]):
        unsupported = f"non-attention layers ({model_type})"
    elif "n_shared_experts" in cfg or "first_k_dense_replace" in cfg:
        unsupported = f"mixture of experts with shared/dense layers ({model_type})"
    return Architecture(
        hf_id=hf_id,
        source=source,
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=int(cfg.get("intermediate_size") or cfg.get("ffn_dim") or cfg.get("n_inner") or 4 * hidden),
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=int(kv_heads),
        head_dim=int(head_dim),
        vocab_size=cfg["vocab_size"],
        max_position_embeddings=int(max_pos),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma"))),
        torch_dtype=dtype,
        qkv_bias=bool(cfg.get("attention_bias", model_type in QKV_BIAS_FAMILIES) or cfg.get("qkv_bias", False)),
        o_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        gated_mlp=model_type not in UNGATED_FAMILIES,
        qk_norm=model_type.startswith("qwen3") or model_type.startswith("gemma3"),
        num_experts=experts,
        moe_intermediate_size=int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 0) if experts else 0,
        shared_expert_intermediate_size=int(cfg.get("shared_expert_intermediate_size") or 0),
        num_nextn_predict_layers=int(cfg.get("num_nextn_predict_layers") or 0),
        rope_scaling=cfg.get("rope_scaling") if isinstance(cfg.get("rope_scaling"), dict) else None,
        quantization_config=raw.get("quantization_config") if isinstance(raw.get("quantization_config"), dict) else None,
        unsupported=unsupported,
        architectures=tuple(cfg.get("architectures") or ()),
    )


def cache_path(hf_id: str) -> Path:
    return CACHE_DIR / hf_id / "config.json"


def offline() -> bool:
    return any(os.environ.get(name, "") not in ("", "0", "false", "False") for name in OFFLINE_ENV)


@functools.lru_cache(maxsize=64)
def fetch_config(hf_id: str, revision: str = "main") -> Optional[dict]:
    """config.json from the Hugging Face hub, or None when offline, not found or not allowed."""
    if offline():
        return None
    try:
        import requests
    except ImportError:
        return None
    headers = {"Authorization": f"Bearer {os.environ['HF_TOKEN']}"} if os.environ.get("HF_TOKEN") else {}
    try:
        resp = requests.get(HUB_URL.format(hf_id=hf_id, revision=revision), headers=headers, timeout=FETCH_TIMEOUT_S)
    except requests.RequestException:
        return None
    if resp.status_code != 200:
        return None
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _read_cache(hf_id: str) -> Optional[dict]:
    import json

    path = cache_path(hf_id)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def find(hf_id: str, revision: Optional[str] = None, key: str = "") -> Optional[Architecture]:
    """The architecture from the cache or the hub, or None: for models whose plan is optional
    (a speculative draft model)."""
    raw = _read_cache(hf_id)
    if raw is not None:
        return parse(raw, hf_id, str(cache_path(hf_id).relative_to(ROOT)), key)
    raw = fetch_config(hf_id, revision or "main")
    if raw is not None:
        return parse(raw, hf_id, HUB_URL.format(hf_id=hf_id, revision=revision or "main"), key)
    return None


def resolve(model: Any, index: int) -> Architecture:
    """The architecture of `cfg.models[index]`, or one ConfigError saying how to provide it."""
    key = f"models[{index}].architecture"
    if model.architecture is not None:
        return parse(model.architecture, model.hf_id, f"`{key}` (inline)", key)
    found = find(model.hf_id, model.revision, key)
    if found is not None:
        return found
    where = "offline" if offline() else "not reachable or not allowed (gated models need HF_TOKEN)"
    raise ConfigError(
        key, None,
        f"the architecture of `{model.hf_id}` is unknown: no inline architecture, no "
        f"{cache_path(model.hf_id).relative_to(ROOT)}, and the Hugging Face hub was {where}",
        "the model's config.json, inline or in the repository's cache",
        f"paste the model's config.json as `{key}` in the stack file, or save it as "
        f"{cache_path(model.hf_id).relative_to(ROOT)} (`curl -L {HUB_URL.format(hf_id=model.hf_id, revision='main')}`)",
    )
