"""LoRA in the capacity planner: the GPU memory vLLM reserves for adapter slots, checked against a
hand computation for the seed model; the embedding-wrapping architectures against vLLM's own
classes; the tiny test adapter against vLLM's own loader; `make plan`'s lines."""
from __future__ import annotations

import importlib
import json

import pytest

from fleet.capacity import architecture
from fleet.capacity.architecture import find
from fleet.capacity.memory import (LORA_EMBEDDING_ARCHITECTURES, lora_bytes_of_stage, lora_elements_per_rank,
                                   plan_model, precision)
from fleet.config.load import parse_config
from fleet.config.schema import Model
from support import offline
from support.stacks import raw_stack
from tools import plan_report

SEED = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # Qwen2: hidden 1536, 12 heads / 2 KV heads x 128, MLP 8960, 28 layers
ADAPTER = {"name": "sql", "source": "org/sql-lora"}


never_fetch = offline.never_fetch  # autouse: no test reaches the Hugging Face hub


def seed(**lora) -> Model:
    return Model(name="m", hf_id=SEED, max_model_len=4096, lora={"adapters": [ADAPTER], **lora} if lora is not None else None)


def test_the_seed_models_adapter_slot_is_its_layers_inputs_and_outputs_times_the_rank():
    h, q, kv, inter, layers = 1536, 12 * 128, 2 * 128, 8960, 28
    # qkv_proj: lora_a per packed slice (3 x hidden), lora_b q + k + v; o_proj: q in, hidden out;
    # gate_up_proj: 2 x hidden in, 2 x 8960 out; down_proj: 8960 in, hidden out.
    per_layer = (3 * h + q + 2 * kv) + (q + h) + (2 * h + 2 * inter) + (inter + h)
    assert per_layer == 41_216
    a = find(SEED)
    assert lora_elements_per_rank(a, 1, layers, True, True) == layers * per_layer == 1_154_048
    # vLLM's defaults, max_loras 1 and max_lora_rank 16, in bf16: 35.2 MiB per GPU
    m = seed()
    assert lora_bytes_of_stage(m, a, precision(m, a, None), 1, layers, True, True) == 1 * 16 * 1_154_048 * 2 == 36_929_536
    m = seed(max_loras=4, max_lora_rank=64)
    assert lora_bytes_of_stage(m, a, precision(m, a, None), 1, layers, True, True) == 4 * 64 * 1_154_048 * 2


def test_tensor_parallelism_shards_the_outputs_of_column_layers_and_the_inputs_of_row_layers():
    h, layers = 1536, 28
    q, kv, inter = 6 * 128, 1 * 128, 4480  # per GPU with tp 2
    per_layer = (3 * h + q + 2 * kv) + (q + h) + (2 * h + 2 * inter) + (inter + h)
    assert lora_elements_per_rank(find(SEED), 2, layers, True, True) == layers * per_layer


def test_the_slots_come_out_of_the_kv_cache_budget_on_a_gpu():
    a = find(SEED)
    plain = plan_model(Model(name="m", hf_id=SEED, max_model_len=4096), a, "H100-80GB")
    adapted = plan_model(seed(max_loras=2, max_lora_rank=32), a, "H100-80GB")
    assert adapted.lora_bytes_per_gpu == 2 * 32 * 1_154_048 * 2
    assert plain.kv_budget_per_gpu - adapted.kv_budget_per_gpu == adapted.lora_bytes_per_gpu
    assert adapted.num_blocks < plain.num_blocks and plain.lora_bytes_per_gpu == 0


def test_the_host_cache_holds_max_cpu_loras_adapters_at_most():
    a = find(SEED)
    p = plan_model(seed(max_loras=2, max_cpu_loras=8), a, "H100-80GB")
    assert p.lora_host_bytes == 8 * 16 * 1_154_048 * 2
    assert plan_model(seed(max_loras=2), a, "H100-80GB").lora_host_bytes == 2 * 16 * 1_154_048 * 2


def test_a_llama_also_wraps_its_embeddings_on_the_first_stage_and_its_logits_on_the_last():
    a = find("meta-llama/Llama-3.3-70B-Instruct")
    layers_only = lora_elements_per_rank(a, 8, 40, False, False)
    assert lora_elements_per_rank(a, 8, 40, True, False) - layers_only == a.vocab_size + a.hidden_size
    assert lora_elements_per_rank(a, 8, 40, False, True) - layers_only == a.hidden_size + a.vocab_size
    assert lora_elements_per_rank(find(SEED), 1, 28, True, True) == 28 * 41_216  # Qwen2 does not


ARCHS = sorted({*LORA_EMBEDDING_ARCHITECTURES, "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen2MoeForCausalLM",
                "Gemma2ForCausalLM", "DeepseekV3ForCausalLM", *(find(i).architectures[0] for i in (
                    SEED, "Qwen/Qwen2.5-72B-Instruct", "meta-llama/Llama-3.3-70B-Instruct"))})


@pytest.mark.parametrize("arch", ARCHS)
def test_the_embedding_wrapping_architectures_are_those_vllm_lists_embedding_modules_for(arch):
    from vllm.model_executor.models.registry import _TEXT_GENERATION_MODELS
    module, cls = _TEXT_GENERATION_MODELS[arch]
    klass = getattr(importlib.import_module(f"vllm.model_executor.models.{module}"), cls)
    assert bool(getattr(klass, "embedding_modules", None)) == (arch in LORA_EMBEDDING_ARCHITECTURES)


def test_the_tiny_adapter_is_one_vllms_own_loader_accepts_with_the_shapes_of_the_tiny_model(tmp_path):
    import torch
    from vllm.config.lora import LoRAConfig
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

    from support.tiny_lora import make_tiny_adapter
    from support.tiny_model import make_tiny_model

    model_dir = make_tiny_model(tmp_path / "model")
    adapter = make_tiny_adapter(tmp_path / "adapter", model_dir, rank=8)
    helper = PEFTHelper.from_local_dir(str(adapter), 4096)
    helper.validate_legal(LoRAConfig(max_lora_rank=8))
    with pytest.raises(ValueError, match="greater than max_lora_rank"):
        helper.validate_legal(LoRAConfig(max_lora_rank=1))
    expected = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    loaded = LoRAModel.from_local_checkpoint(
        str(adapter), expected, peft_helper=helper, lora_model_id=1, device="cpu", dtype=torch.bfloat16,
        weights_mapper=Qwen2ForCausalLM.hf_to_vllm_mapper.get_rename_mapper())
    shapes = {name: (tuple(w.lora_a.shape), tuple(w.lora_b.shape)) for name, w in loaded.loras.items()}
    # hidden 128, 2 heads and 1 KV head of 64: q_proj 128 -> 128, v_proj 128 -> 64
    assert shapes == {f"model.layers.{i}.self_attn.{mod}": ((8, 128), (out, 8))
                      for i in range(2) for mod, out in (("q_proj", 128), ("v_proj", 64))}
    assert all(w.lora_b.abs().sum() > 0 for w in loaded.loras.values())  # it changes the output


def test_make_plan_shows_the_adapters_and_their_slots():
    raw = raw_stack("staging")
    raw["models"][0]["lora"] = {"adapters": [ADAPTER, {"name": "chat-de", "source": "org/chat-de"}], "max_loras": 2}
    text = plan_report.plan_text(parse_config(raw, "staging"))
    assert "LoRA: 2 adapter(s) (sql, chat-de); 2 slot(s) of rank 16 on every layer" in text
    assert "+ LoRA slots " in text and "host cache of adapters up to" in text


def test_lora_on_a_model_whose_logits_vllm_cannot_wrap_is_refused():
    from support.refusals import assert_refused_before_any_resource
    raw = raw_stack("staging")
    big = dict(json.loads(architecture.cache_path("meta-llama/Llama-3.3-70B-Instruct").read_text()),
               vocab_size=262_144, num_hidden_layers=2, hidden_size=1024, intermediate_size=2048,
               num_attention_heads=8, num_key_value_heads=8)
    raw["models"][0].update(hf_id="org/big-vocab", architecture=big, lora={"adapters": [ADAPTER]})
    assert_refused_before_any_resource("vocabulary over LoRA's limit", "staging", raw, "models[0].lora", "at most 258,048")
