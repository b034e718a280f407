"""A tiny LoRA adapter for the tiny test model (tests/support/tiny_model.py), in PEFT's format,
written without the `peft` package.

PEFT saves an adapter as a directory with `adapter_config.json` (its LoraConfig) and
`adapter_model.safetensors`, one `lora_A` (rank x the module's input) and one `lora_B` (the
module's output x rank) per targeted module, named
`base_model.model.model.layers.<i>.self_attn.<module>.lora_A.weight`. The shapes are read from
the model directory's config.json, so the adapter always fits the model it is made for.
Weights are random (seeded): a non-zero lora_B makes the adapter change the model's output.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

# module -> (input features, output features) as functions of the model's config.json
_SHAPES = {
    "q_proj": lambda c: (c["hidden_size"], c["num_attention_heads"] * _head_dim(c)),
    "k_proj": lambda c: (c["hidden_size"], c["num_key_value_heads"] * _head_dim(c)),
    "v_proj": lambda c: (c["hidden_size"], c["num_key_value_heads"] * _head_dim(c)),
    "o_proj": lambda c: (c["num_attention_heads"] * _head_dim(c), c["hidden_size"]),
    "gate_proj": lambda c: (c["hidden_size"], c["intermediate_size"]),
    "up_proj": lambda c: (c["hidden_size"], c["intermediate_size"]),
    "down_proj": lambda c: (c["intermediate_size"], c["hidden_size"]),
}
_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def make_tiny_adapter(directory: Path, model_dir: Path, *, rank: int = 8, alpha: int = 16,
                      targets: Sequence[str] = ("q_proj", "v_proj"), seed: int = 0) -> Path:
    """Write a PEFT LoRA adapter for the model in `model_dir` into `directory`; return it."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module in targets:
            fan_in, fan_out = _SHAPES[module](config)
            block = "self_attn" if module in _ATTENTION else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=gen) / fan_in ** 0.5).to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=gen) / rank).to(torch.bfloat16)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    return directory
