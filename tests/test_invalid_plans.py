"""A catalogue of stacks the capacity planner refuses: each would pass every field rule, and each
would make vLLM fail at startup (or serve nothing useful). Every case runs the real program under
Pulumi's mocks and fails with one error that names the key, the value, what is allowed and the fix,
before any resource is registered.
"""
from __future__ import annotations

import json

import pytest

from fleet.capacity import architecture
from support.refusals import assert_refused_before_any_resource, host, model, setk
from support.stacks import raw_stack, run_raw


@pytest.fixture(autouse=True)
def never_fetch(monkeypatch):
    monkeypatch.setenv("VLLM_FLEET_OFFLINE", "1")
    architecture.fetch_config.cache_clear()


SEED = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
QWEN_SMALL = "Qwen/Qwen2.5-0.5B-Instruct"


def cached(hf_id: str, **overrides) -> dict:
    """A cached config.json with some values changed: an inline `architecture`."""
    return {**json.loads(architecture.cache_path(hf_id).read_text()), **overrides}


LLAMA_8B = cached("meta-llama/Llama-3.3-70B-Instruct", hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32)
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}
GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}


def both(*mutations):
    def mutate(raw):
        for m in mutations:
            m(raw)
    return mutate


def drop_key(key, i=0):
    return lambda raw: raw["models"][i].pop(key, None)


CASES = [
    # (case, base stack, mutation, key in the message, a fragment of the message)
    # --- the model does not fit in its GPUs
    ("a 70B model on one H100", "staging",
     setk(model, hf_id="meta-llama/Llama-3.3-70B-Instruct", replicas=1),
     "models[0].tensor_parallel_size", "raise `models[0].tensor_parallel_size` to 2"),
    ("tp 1 sends a 70B replica to the L40S host, where it cannot fit", "prod", setk(model, tensor_parallel_size=1),
     "models[0].tensor_parallel_size", "does not fit on 1 x L40S"),
    ("a 70B model in bf16 on two L40S", "prod",
     lambda r: (model(r, 2).update(hf_id="meta-llama/Llama-3.3-70B-Instruct", served_model_name="llama-l40s",
                                   tensor_parallel_size=2, replicas=1),
                model(r, 2).pop("quantization"), model(r, 2).pop("speculative")),
     "models[2].tensor_parallel_size", "does not fit on 2 x L40S"),
    ("a 70B model on two A100-40GB, the whole host", "staging",
     both(setk(host, gpu_model="A100-40GB"),
          setk(model, hf_id="meta-llama/Llama-3.3-70B-Instruct", tensor_parallel_size=2, replicas=1)),
     "models[0].tensor_parallel_size", "pipeline_parallel_size"),
    # --- not even one max_model_len sequence fits in the KV cache
    ("a 72B model on two H100s leaves no room for a 16k sequence", "staging",
     setk(model, hf_id="Qwen/Qwen2.5-72B-Instruct", tensor_parallel_size=2, replicas=1),
     "models[0].max_model_len", "does not fit in the KV cache"),
    ("the seed model at 5.5% of an H100", "staging", setk(model, gpu_memory_utilization=0.055),
     "models[0].max_model_len", "tokens); vLLM refuses to start"),
    ("an unset max_model_len means the model's 128k context", "staging",
     both(drop_key("max_model_len"), setk(model, gpu_memory_utilization=0.09)),
     "models[0].max_model_len", "max_model_len is unset"),
    ("an 8B model's 32k context in 2 GiB of CPU KV space", "local",
     setk(model, hf_id="acme/llama-8b", architecture=LLAMA_8B, max_model_len=32768),
     "models[0].max_model_len", "raise `models[0].cpu_kvcache_space_gib` to 4"),
    # --- tensor parallelism against the attention heads
    ("tp 3 and 64 attention heads", "prod", setk(model, tensor_parallel_size=3),
     "models[0].tensor_parallel_size", "does not divide the 64 attention heads"),
    ("tp 4 and Qwen2.5-0.5B's 14 heads", "staging",
     both(setk(host, gpus=4), setk(model, hf_id=QWEN_SMALL, tensor_parallel_size=4, replicas=1)),
     "models[0].tensor_parallel_size", "a divisor of 14: 1, 2, 7, 14"),
    ("tp 3 and 2 KV heads", "staging", both(setk(host, gpus=4), setk(model, tensor_parallel_size=3, replicas=1)),
     "models[0].tensor_parallel_size", "vLLM needs one to divide the other"),
    ("tp 6 and 8 KV heads", "staging",
     both(setk(host, gpus=8), setk(model, hf_id="acme/wide", tensor_parallel_size=6, replicas=1,
                                   architecture=cached(SEED, num_attention_heads=24, num_key_value_heads=8, hidden_size=3072))),
     "models[0].tensor_parallel_size", "divides or is a multiple of 8"),
    # --- pipeline parallelism against the layers
    ("4 pipeline stages for 2 layers", "staging",
     setk(model, hf_id="acme/two-layers", pipeline_parallel_size=4, architecture=cached(SEED, num_hidden_layers=2)),
     "models[0].pipeline_parallel_size", "exceeds the 2 layers"),
    # --- max_model_len against the model's context
    ("64k context on a 32k model", "local", setk(model, max_model_len=65536), "models[0].max_model_len",
     "max_position_embeddings 32,768"),
    ("256k context on Llama 3.3 (its llama3 rope is already counted)", "prod", setk(model, max_model_len=262144),
     "models[0].max_model_len", "max_model_len <= 131,072"),
    ("256k context on a 4x yarn model", "staging",
     setk(model, hf_id="acme/yarn", max_model_len=262144, architecture=cached(
         QWEN_SMALL, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})),
     "models[0].max_model_len", "rope_scaling factor 4.0"),
    # --- quantization against the checkpoint and the GPUs
    ("awq on a bf16 checkpoint", "staging", setk(model, quantization="awq"), "models[0].quantization",
     "is not quantized"),
    ("compressed-tensors on a bf16 checkpoint", "staging", setk(model, quantization="compressed-tensors"),
     "models[0].quantization", "compressed-tensors loads a checkpoint quantized ahead of time"),
    ("gptq_marlin on an AWQ checkpoint", "staging",
     setk(model, hf_id="acme/r1-awq", quantization="gptq_marlin", architecture=cached(SEED, quantization_config=AWQ)),
     "models[0].quantization", "is a checkpoint quantized with awq"),
    ("fp8 on a GPTQ checkpoint", "staging",
     setk(model, hf_id="acme/r1-gptq", quantization="fp8", architecture=cached(SEED, quantization_config=GPTQ)),
     "models[0].quantization", "Quantization method specified in the model config does not match"),
    ("awq kernels on V100s", "staging",
     both(setk(host, gpu_model="V100-32GB"),
          setk(model, hf_id="acme/r1-awq", dtype="float16", quantization="awq", architecture=cached(SEED, quantization_config=AWQ))),
     "models[0].quantization", "compute capability 7.5 or newer"),
    ("Marlin kernels on T4s", "staging",
     both(setk(host, gpu_model="T4"),
          setk(model, hf_id="acme/r1-awq", dtype="float16", quantization="awq_marlin",
               architecture=cached(SEED, quantization_config=AWQ))),
     "models[0].quantization", "compute capability 8.0 or newer"),
    ("bitsandbytes, gone from the pinned vLLM", "staging", setk(model, quantization="bitsandbytes"),
     "models[0].quantization", "Unknown quantization method"),
    # --- speculative decoding
    ("a draft model with another vocabulary", "prod",
     setk(lambda r: model(r, 1), speculative={"method": "draft_model", "model": QWEN_SMALL, "num_speculative_tokens": 4}),
     "models[1].speculative.model", "vocabulary (151,936 tokens) differs"),
    ("a draft model whose heads do not split over tp 4", "staging",
     both(setk(host, gpus=4), setk(model, tensor_parallel_size=4, replicas=1,
                                   speculative={"method": "draft_model", "model": QWEN_SMALL})),
     "models[0].speculative.model", "do not split over 4 GPUs"),
    ("a draft model as large as the target", "staging", setk(model, speculative={"method": "draft_model", "model": SEED}),
     "models[0].speculative.model", "is not smaller than the target"),
    ("mtp on a model without MTP layers", "staging", setk(model, speculative={"method": "mtp"}),
     "models[0].speculative.method", "no multi-token-prediction layers"),
    ("3 mtp tokens over 2 MTP layers", "staging",
     setk(model, hf_id="acme/r1-mtp", architecture=cached(SEED, num_nextn_predict_layers=2),
          speculative={"method": "mtp", "num_speculative_tokens": 3}),
     "models[0].speculative.num_speculative_tokens", "1, 2, 4, 6"),
    # --- where the architecture comes from
    ("a model that is neither cached nor inline, offline", "staging", setk(model, hf_id="acme/private-13b"),
     "models[0].architecture", "files/models/acme/private-13b/config.json"),
    ("an inline architecture without its layers", "staging",
     setk(model, hf_id="acme/partial", architecture={"hidden_size": 1536, "num_attention_heads": 12, "vocab_size": 151936}),
     "models[0].architecture", "lacks num_hidden_layers"),
    ("an inline architecture of a second model overrides the cache", "local",
     setk(model, architecture=cached(QWEN_SMALL, max_position_embeddings=2048)), "models[0].max_model_len",
     "max_position_embeddings 2,048"),
]


@pytest.mark.parametrize("case, stack, mutate, key, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_plan_vllm_could_not_start_fails_with_one_clear_error_before_any_resource(case, stack, mutate, key, fragment):
    raw = raw_stack(stack)
    mutate(raw)
    assert_refused_before_any_resource(case, stack, raw, key, fragment)


def test_the_catalogue_covers_every_planner_check():
    assert len(CASES) >= 25
    keys = {c[3].split(".", 1)[1] for c in CASES}
    assert {"tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "quantization", "architecture",
            "speculative.model", "speculative.method", "speculative.num_speculative_tokens"} <= keys


def test_an_unknown_draft_model_is_left_to_vllm(monkeypatch):
    raw = raw_stack("staging")
    model(raw).update(speculative={"method": "draft_model", "model": "acme/uncached-draft"})
    run = run_raw("staging", raw)
    assert run.containers()  # deployed: nothing to compare the draft with offline


def test_a_draft_model_that_fits_is_accepted():
    raw = raw_stack("staging")
    model(raw).update(speculative={"method": "draft_model", "model": QWEN_SMALL, "num_speculative_tokens": 4})
    assert run_raw("staging", raw).containers()
