"""The capacity planner: its numbers, checked against published parameter counts, against
transformers' own models, and against what vLLM reported on a GPU; the shipped stacks' plans;
`make plan`'s output.

The live comparison with a real vLLM server is tests/live/test_planner_vs_vllm_live.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fleet.capacity import architecture
from fleet.capacity.architecture import find, parse
from fleet.config.schema import Model
from fleet.config.load import parse_config
from fleet.config.errors import ConfigError
from fleet.capacity.memory import (GiB, count_params, kv_heads_per_gpu, plan_model, pp_partitions,
                               weight_bytes_of_stage)
from tools.mock_run import ROOT, read_stack_file
from tools import plan_report
from support import offline
from support.stacks import STACKS

SEED = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
SEED_ROPE_TABLE = 131_072 * 128 * 2  # vLLM's cos/sin table: every position x head_dim, bf16
CACHED = {
    # hf_id: parameters as published on the model cards / counted by transformers
    SEED: 1_777_088_000,
    "Qwen/Qwen2.5-0.5B-Instruct": 494_032_768,
    "meta-llama/Llama-3.3-70B-Instruct": 70_553_706_496,
    "Qwen/Qwen2.5-72B-Instruct": 72_706_203_648,
}


never_fetch = offline.never_fetch  # autouse: no test reaches the Hugging Face hub


def model(**kw) -> Model:
    return Model(**{"name": "m", "hf_id": SEED, **kw})


def stack_cfg(stack: str):
    return parse_config(plan_report.raw_values(read_stack_file(stack)), stack)


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("hf_id, params", CACHED.items(), ids=list(CACHED))
def test_every_cached_model_has_its_published_parameter_count(hf_id, params):
    assert count_params(find(hf_id)) == params


def _transformers_count(raw: dict) -> int:
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**raw)
    with torch.device("meta"):  # shapes only: a 70B model costs no memory
        net = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in net.parameters())


SMALL_FAMILIES = {
    "qwen3 (q/k norms, tied)": dict(model_type="qwen3", hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                                    num_attention_heads=8, num_key_value_heads=2, head_dim=64, vocab_size=1000,
                                    tie_word_embeddings=True),
    "mixtral (experts)": dict(model_type="mixtral", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                              num_attention_heads=8, num_key_value_heads=2, vocab_size=1000, num_local_experts=4),
    "qwen2_moe (shared expert)": dict(model_type="qwen2_moe", hidden_size=256, intermediate_size=512,
                                      moe_intermediate_size=128, shared_expert_intermediate_size=256, num_experts=4,
                                      num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, vocab_size=1000),
    "llama with biases": dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                              num_attention_heads=8, num_key_value_heads=4, vocab_size=1000, attention_bias=True, mlp_bias=True),
    "gemma (tied by default)": dict(model_type="gemma", hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                    num_attention_heads=8, num_key_value_heads=1, head_dim=64, vocab_size=1000),
}


@pytest.mark.parametrize("hf_id", list(CACHED))
def test_the_parameter_count_equals_transformers_own_model(hf_id):
    raw = json.loads(architecture.cache_path(hf_id).read_text())
    assert count_params(find(hf_id)) == _transformers_count(raw)


@pytest.mark.parametrize("raw", SMALL_FAMILIES.values(), ids=list(SMALL_FAMILIES))
def test_other_families_are_counted_like_transformers_counts_them(raw):
    assert count_params(parse(raw, "test/family", "test", "k")) == _transformers_count(raw)


# --- the seed's model -------------------------------------------------------------------------


def test_the_seed_model_has_1_78_billion_parameters_with_its_untied_lm_head():
    a = find(SEED)
    assert not a.tie_word_embeddings
    assert count_params(a) == pytest.approx(1.78e9, rel=0.01)
    embedding = a.vocab_size * a.hidden_size
    assert count_params(a) - 2 * embedding == pytest.approx(1.31e9, rel=0.01)  # the 28 layers


def test_the_seed_model_weighs_3_3_to_3_6_gib_in_bf16():
    plan = plan_model(model(dtype="bfloat16", max_model_len=4096), find(SEED), "H100-80GB")
    assert 3.3 * GiB <= plan.weight_bytes <= 3.6 * GiB
    assert plan.weight_bytes == 1_777_088_000 * 2 + SEED_ROPE_TABLE


def test_the_seed_model_stores_28672_bytes_of_kv_cache_per_token():
    plan = plan_model(model(dtype="bfloat16", max_model_len=4096), find(SEED), "H100-80GB")
    assert plan.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2 == 28_672


# Recorded on an H100 80GB HBM3 (vLLM 0.26.0, /work/shared/gpu/README.md, 2026-11-24):
# `--dtype bfloat16 --max-model-len 4096`, gpu_memory_utilization 0.92, --load-format dummy.
H100_KV_TOKENS = 2_569_232  # "KV cache 68.61 GiB = 2,569,232 tokens"
H100_MAX_CONCURRENCY = 627  # "maximum concurrency 627x at 4,096 tokens"
H100_WEIGHTS_GIB = 3.45  # "Model loading took 3.45 GiB"
H100_BNB_WEIGHTS_GIB = 1.61  # the same with --quantization bitsandbytes (random bf16 safetensors)


def test_recorded_h100_kv_bytes_per_token_match_exactly():
    # 68.61 GiB / 2,569,232 tokens: vLLM's own KV bytes per token is the planner's.
    assert 68.61 * GiB / H100_KV_TOKENS == pytest.approx(28_672, rel=0.0002)


def test_recorded_h100_kv_tokens_within_half_a_percent():
    """The activation/CUDA-graph reserve's fixed part was calibrated on this very run, so this
    checks the calibration holds (and stays conservative), not an independent prediction."""
    plan = plan_model(model(dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.92), find(SEED), "H100-80GB")
    assert plan.kv_tokens == pytest.approx(H100_KV_TOKENS, rel=0.005)
    assert plan.kv_tokens <= H100_KV_TOKENS  # never promise more than vLLM found
    assert int(plan.max_concurrency) == H100_MAX_CONCURRENCY


def test_recorded_h100_weights_within_five_percent():
    """vLLM's figure is the memory the load took on the GPU: parameters, the rotary table and
    allocator/CUDA overhead; the planner counts the first two (3.34 GiB, 3.2% below)."""
    plan = plan_model(model(dtype="bfloat16", max_model_len=4096, gpu_memory_utilization=0.92), find(SEED), "H100-80GB")
    assert plan.weight_bytes / GiB == pytest.approx(H100_WEIGHTS_GIB, rel=0.05)
    assert plan.weight_bytes / GiB < H100_WEIGHTS_GIB


def test_recorded_h100_bitsandbytes_weights_within_five_percent():
    # bitsandbytes left vLLM after 0.26 (the pinned release refuses it); the byte model still holds.
    m = model(dtype="bfloat16", quantization="bitsandbytes", max_model_len=4096, gpu_memory_utilization=0.92)
    plan = plan_model(m, find(SEED), "H100-80GB")
    assert plan.weight_bytes / GiB == pytest.approx(H100_BNB_WEIGHTS_GIB, rel=0.05)


# --- how weights and KV split over GPUs --------------------------------------------------------


def test_pipeline_stages_split_layers_like_vllm():
    assert pp_partitions(80, 2) == [40, 40]
    assert pp_partitions(28, 3) == [9, 10, 9]  # the extra layer avoids the first and last stages
    assert pp_partitions(28, 1) == [28]


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    qwen = find("Qwen/Qwen2.5-0.5B-Instruct")  # 2 KV heads
    assert [kv_heads_per_gpu(qwen, tp) for tp in (1, 2, 7, 14)] == [2, 1, 1, 1]
    small = plan_model(model(hf_id=qwen.hf_id, tensor_parallel_size=2, max_model_len=4096), qwen, "H100-80GB")
    big = plan_model(model(hf_id=qwen.hf_id, tensor_parallel_size=14, max_model_len=4096), qwen, "H100-80GB")
    assert small.kv_bytes_per_token_per_gpu == big.kv_bytes_per_token_per_gpu == 2 * 24 * 1 * 64 * 2


def test_tensor_parallelism_divides_the_weights_and_the_kv_cache():
    llama = find("meta-llama/Llama-3.3-70B-Instruct")
    one = plan_model(model(hf_id=llama.hf_id, max_model_len=8192), llama, "H200-141GB")
    four = plan_model(model(hf_id=llama.hf_id, tensor_parallel_size=4, max_model_len=8192), llama, "H200-141GB")
    assert four.weight_bytes_per_gpu == pytest.approx(one.weight_bytes_per_gpu / 4, rel=0.001)
    assert four.kv_bytes_per_token_per_gpu * 4 == one.kv_bytes_per_token_per_gpu == 2 * 80 * 8 * 128 * 2


def test_a_pipeline_puts_the_embeddings_first_and_the_lm_head_last():
    qwen = find("Qwen/Qwen2.5-72B-Instruct")
    plan = plan_model(model(hf_id=qwen.hf_id, tensor_parallel_size=4, pipeline_parallel_size=2, max_model_len=32768),
                      qwen, "H100-80GB")
    from fleet.capacity.memory import precision

    p = precision(plan.model, qwen, None)
    first = weight_bytes_of_stage(qwen, p, 4, 40, True, False, 2)
    last = weight_bytes_of_stage(qwen, p, 4, 40, False, True, 2)
    assert plan.weight_bytes_per_gpu == max(first, last)
    assert abs(first - last) < 0.01 * first  # embedding vs lm_head: both one vocabulary shard
    assert plan.kv_bytes_per_token_per_gpu == 2 * 40 * 2 * 128 * 2


def test_a_tied_lm_head_costs_nothing_on_one_stage_and_a_copy_across_stages():
    qwen = find("Qwen/Qwen2.5-0.5B-Instruct")
    from fleet.capacity.memory import precision

    p = precision(model(hf_id=qwen.hf_id), qwen, None)
    whole = weight_bytes_of_stage(qwen, p, 1, 24, True, True, 1)
    split = weight_bytes_of_stage(qwen, p, 1, 12, True, False, 2) + weight_bytes_of_stage(qwen, p, 1, 12, False, True, 2)
    vocab = 151_936 * 896 * 2
    assert split - whole == pytest.approx(vocab + 32768 * 64 * 2, abs=1)  # a second embedding and rotary table


def test_fp8_halves_the_linear_layers_but_not_the_embeddings():
    a = find(SEED)
    bf16 = plan_model(model(dtype="bfloat16", max_model_len=4096), a, "L40S")
    fp8 = plan_model(model(dtype="bfloat16", quantization="fp8", max_model_len=4096), a, "L40S")
    sixteen_bit = 2 * 151_936 * 1536 * 2 + SEED_ROPE_TABLE
    assert fp8.weight_bytes - sixteen_bit == pytest.approx((bf16.weight_bytes - sixteen_bit) / 2, rel=0.01)
    assert fp8.precision.kv_dtype == "bfloat16"


def test_an_fp8_kv_cache_halves_kv_bytes():
    a = find(SEED)
    plan = plan_model(model(max_model_len=4096, kv_cache_dtype="fp8"), a, "H100-80GB")
    assert plan.kv_bytes_per_token == 28_672 // 2


def test_awq_checkpoints_weigh_about_a_quarter_plus_group_scales():
    raw = {**json.loads(architecture.cache_path(SEED).read_text()),
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    a = parse(raw, "org/seed-awq", "test", "k")
    plan = plan_model(model(hf_id="org/seed-awq", quantization="awq", dtype="float16"), a, "A10G")
    linear = count_params(a) - 2 * 151_936 * 1536
    expected = linear * (0.5 + 2.5 / 128) + 2 * 151_936 * 1536 * 2 + SEED_ROPE_TABLE
    assert plan.weight_bytes == pytest.approx(expected, rel=0.01)


def test_a_checkpoint_that_keeps_attention_in_bf16_is_weighed_part_by_part():
    """Meta's FP8 Llama checkpoints (fbgemm_fp8) quantize the MLPs and list every attention
    projection in modules_to_not_convert."""
    llama = json.loads(architecture.cache_path("meta-llama/Llama-3.3-70B-Instruct").read_text())
    all_fp8 = parse({**llama, "quantization_config": {"quant_method": "fbgemm_fp8"}}, "acme/l-fp8", "t", "k")
    mlp_fp8 = parse({**llama, "quantization_config": {"quant_method": "fbgemm_fp8", "modules_to_not_convert": [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "lm_head"]}}, "acme/l-fp8", "t", "k")
    m = model(hf_id="acme/l-fp8", tensor_parallel_size=4, max_model_len=8192)
    a, b = plan_model(m, all_fp8, "H100-80GB"), plan_model(m, mlp_fp8, "H100-80GB")
    attention = 80 * (8192 * 8192 * 2 + 2 * 8192 * 1024)
    assert a.precision.quantization == "fbgemm_fp8"
    assert b.weight_bytes - a.weight_bytes == attention  # 1 more byte per attention weight


def test_a_known_draft_model_adds_its_weights_and_kv_cache():
    a = find(SEED)
    draft = find("Qwen/Qwen2.5-0.5B-Instruct")
    alone = plan_model(model(max_model_len=4096), a, "H100-80GB")
    both = plan_model(model(max_model_len=4096), a, "H100-80GB", draft=draft)
    assert both.weight_bytes_per_gpu - alone.weight_bytes_per_gpu == pytest.approx(494_032_768 * 2, rel=0.01)
    assert both.kv_bytes_per_token_per_gpu - alone.kv_bytes_per_token_per_gpu == 2 * 24 * 2 * 64 * 2
    assert both.draft == draft.hf_id


def test_rope_scaling_extends_the_context_the_planner_allows():
    raw = {**json.loads(architecture.cache_path("Qwen/Qwen2.5-0.5B-Instruct").read_text()),
           "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    assert parse(raw, "org/qwen-yarn", "test", "k").context_limit == 131_072
    assert find("meta-llama/Llama-3.3-70B-Instruct").context_limit == 131_072  # llama3 rope: already extended


def test_cpu_replicas_get_exactly_the_kv_space_they_are_given():
    a = find("Qwen/Qwen2.5-0.5B-Instruct")
    plan = plan_model(model(hf_id=a.hf_id, device="cpu", cpu_kvcache_space_gib=2, max_model_len=4096), a, "cpu")
    assert plan.kv_budget_per_gpu == 2 * GiB and plan.overhead_per_gpu == 0
    assert plan.kv_tokens == (2 * GiB // (128 * 12_288)) * 128 == 174_720
    assert plan.max_concurrency == pytest.approx(174_720 / 4096)


# --- where the architecture comes from -----------------------------------------------------------


def test_an_inline_architecture_wins_over_the_cache():
    raw = {**json.loads(architecture.cache_path(SEED).read_text()), "num_hidden_layers": 14}
    a = architecture.resolve(model(architecture=raw), 0)
    assert a.num_hidden_layers == 14 and "inline" in a.source


def test_the_cache_serves_every_model_of_the_shipped_stacks():
    for stack in STACKS:
        for m in stack_cfg(stack).models:
            assert architecture.cache_path(m.hf_id).is_file(), m.hf_id


def test_an_unknown_model_offline_is_one_clear_error():
    with pytest.raises(ConfigError) as caught:
        architecture.resolve(model(hf_id="acme/unknown-7b"), 3)
    err = caught.value
    assert err.key == "models[3].architecture"
    assert "files/models/acme/unknown-7b/config.json" in str(err) and "Fix:" in str(err)


def test_the_hub_is_asked_with_a_timeout_and_the_token_when_online(monkeypatch):
    import requests

    seen = {}

    class Reply:
        status_code = 200

        def json(self):
            return json.loads(architecture.cache_path(SEED).read_text())

    def fake_get(url, headers, timeout):
        seen.update(url=url, headers=headers, timeout=timeout)
        return Reply()

    monkeypatch.delenv("VLLM_FLEET_OFFLINE")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(requests, "get", fake_get)
    a = architecture.resolve(model(hf_id="acme/fetched-1.5b", revision="abc123"), 0)
    assert seen["url"] == "https://huggingface.co/acme/fetched-1.5b/resolve/abc123/config.json"
    assert seen["headers"] == {"Authorization": "Bearer hf_test_token"}
    assert seen["timeout"]
    assert a.num_hidden_layers == 28 and a.source.startswith("https://huggingface.co/")


def test_a_hub_failure_falls_through_to_the_clear_error(monkeypatch):
    import requests

    def refuse(*args, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.delenv("VLLM_FLEET_OFFLINE")
    monkeypatch.setattr(requests, "get", refuse)
    with pytest.raises(ConfigError) as caught:
        architecture.resolve(model(hf_id="acme/unreachable-7b"), 0)
    assert caught.value.key == "models[0].architecture"


# --- the shipped stacks -------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_shipped_stack_passes_the_planner(stack):
    cap = plan_report.target_plan(stack_cfg(stack)).capacity
    for i, by_device in cap.plans.items():
        for plan in by_device.values():
            assert plan.max_sequences >= 1, (stack, plan.model.name, plan.device)
            if plan.device != "cpu":  # CPU weights live in RAM, beside the KV space
                assert plan.weight_bytes_per_gpu + plan.overhead_per_gpu + plan.kv_budget_per_gpu <= plan.memory_per_gpu


def test_prod_plans_llama_70b_at_15_sequences_of_32k_per_replica():
    cap = plan_report.target_plan(stack_cfg("prod")).capacity
    llama = cap.plans[0]["H100-80GB"]
    assert llama.gpus == 4
    assert 32 * GiB < llama.weight_bytes_per_gpu < 34 * GiB
    assert llama.max_sequences == 15
    qwen = cap.plans[1]["H100-80GB"]
    assert qwen.gpus == 8 and qwen.max_sequences >= 40
    r1 = cap.plans[2]["L40S"]
    assert r1.precision.quantization == "fp8" and r1.max_sequences >= 80


# --- make plan ----------------------------------------------------------------------------------


EXPECTED_IN_PLAN = {
    "local": ["qwen", "CPU", "174,720", "local  -    (CPU)    qwen-0", "cpu_kvcache_space_gib 2 GiB"],
    "staging": ["r1-distill", "1 x H100-80GB (tp 1 x pp 1)", "1.78 B", "3.34 GiB", "gpu-staging  H100-80GB  0        r1-distill-0",
                "gpu-staging  H100-80GB  1        r1-distill-1"],
    "prod": ["4 x H100-80GB (tp 4 x pp 1)", "8 x H100-80GB (tp 4 x pp 2)", "bfloat16 + fp8", "70.55 B", "72.71 B",
             "h100-a  H100-80GB  0,1,2,3  llama-70b-0", "h100-b  H100-80GB  4,5,6,7  qwen-72b-0 (node 1 of 2)",
             "l40s-a  L40S       1        r1-distill-1", "qwen-72b runs a single replica",
             "llama-70b   2         one at a time          60 s (killed at 90 s)     healthy + 12 s",
             "qwen-72b    1         all at once: downtime  60 s (killed at 90 s)     -"],
}


@pytest.mark.parametrize("stack", STACKS)
def test_make_plan_prints_each_model_and_the_placement(stack, capsys):
    assert plan_report.main([stack]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Capacity plan of stack `{stack}`")
    for fragment in EXPECTED_IN_PLAN[stack]:
        assert fragment in out, fragment
    assert plan_report.plan_text(stack_cfg(stack)) == out


@pytest.mark.skipif(not (ROOT / "stacks" / "Pulumi.prod-k8s.yaml").exists(), reason="no kubernetes stack")
def test_make_plan_plans_the_kubernetes_stack_by_node_pool(capsys):
    assert plan_report.main(["prod-k8s"]) == 0
    out = capsys.readouterr().out
    assert "node pool" in out and "H100-80GB" in out and "architecture from `models[" in out


def test_make_plan_runs_as_a_module_without_a_passphrase():
    done = subprocess.run([sys.executable, "-m", "tools.plan_report", "prod"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "VLLM_FLEET_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "llama-70b" in done.stdout and "Placement" in done.stdout


def test_make_plan_reports_a_config_error_in_one_line_and_exits_2(monkeypatch, capsys):
    doc = read_stack_file("staging")
    doc["config"]["vllm-fleet:models"][0]["max_model_len"] = 262144
    monkeypatch.setattr(plan_report, "read_stack_file", lambda stack: doc)
    assert plan_report.main(["staging"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid stack config `vllm-fleet:models[0].max_model_len`")
    assert "Traceback" not in captured.err


def test_make_plan_names_the_stacks_when_one_is_missing(capsys):
    assert plan_report.main(["no-such-stack"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no stack `no-such-stack`") and "prod" in err
