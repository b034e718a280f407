"""Facts the stacks and the planner rely on, read from the recorded H100 run (bench/results/gpu-h100.json).

No GPU is used here: bench/gpu/ measured the real vLLM server on a lent H100 with the exact command
line the program renders for `staging`; these tests hold the stacks' defaults, the planner's
quantization advice and the planner's memory figures to those recorded numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.stacks import stack_run

RECORDED = Path(__file__).resolve().parent.parent / "bench" / "results" / "gpu-h100.json"
DOC = json.loads(RECORDED.read_text())
V = DOC["variants"]
GIB = 1 << 30
# Bytes per KV-cache token of the seed's architecture in bf16: 2 (K, V) x 28 layers x 2 KV heads x 128 x 2 B.
KV_BYTES_PER_TOKEN_BF16 = 2 * 28 * 2 * 128 * 2
# Flags that decide speed and memory: if the program renders other values for staging, the recorded
# numbers no longer describe the stack and bench/gpu must be rerun.
PERFORMANCE_FLAGS = ("--tensor-parallel-size", "--pipeline-parallel-size", "--gpu-memory-utilization", "--dtype",
                     "--quantization", "--max-model-len", "--max-num-seqs", "--max-num-batched-tokens",
                     "--enable-prefix-caching", "--no-enable-prefix-caching", "--kv-cache-dtype",
                     "--speculative-config", "--override-generation-config")


def ratio(variant: str, conc: int) -> list[float]:
    """Output tok/s of `variant` over staging's, on each lease (same machine, same hour)."""
    return [by_c[str(conc)]["output_tok_s_ratio"] for by_c in V[variant]["vs_staging_same_lease"].values()
            if str(conc) in by_c]


def median(variant: str, conc: int, metric: str, workload: str = "server-defaults") -> float:
    return V[variant]["summary"][workload][str(conc)][metric]["median"]


def perf_flags(argv: list[str]) -> dict[str, str | None]:
    out = {}
    for i, a in enumerate(argv):
        if a in PERFORMANCE_FLAGS:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[a] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_the_recording_names_an_h100_and_the_vllm_release_that_ran():
    assert "H100" in DOC["card"]
    assert DOC["vllm"] and DOC["vllm_pinned_by_program"]
    if DOC["vllm"] != DOC["vllm_pinned_by_program"]:
        assert "newest release built for its torch" in DOC["vllm_note"]


@pytest.mark.parametrize("variant", sorted(V))
def test_every_variant_records_what_vllm_reported_at_startup(variant):
    s = V[variant]["startup"]
    for key in ("weights_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency", "max_model_len",
                "gpu_memory_utilization", "dtype", "quantization", "kv_cache_dtype", "max_num_batched_tokens"):
        assert key in s, f"{variant}: no `{key}` in the recorded startup numbers"
    assert s["weights_gib"] > 0 and s["kv_cache_gib"] > 0 and s["kv_cache_tokens"] > 0


@pytest.mark.parametrize("variant", sorted(V))
def test_recorded_kv_tokens_agree_with_the_recorded_kv_gib_and_concurrency(variant):
    """A check of the log parsing: tokens x bytes per token is the KV memory vLLM reported."""
    s = V[variant]["startup"]
    per_token = KV_BYTES_PER_TOKEN_BF16 // (2 if s["kv_cache_dtype"].startswith("fp8") else 1)
    assert s["kv_cache_tokens"] * per_token / GIB == pytest.approx(s["kv_cache_gib"], rel=0.01)
    assert s["kv_cache_tokens"] / s["max_model_len"] == pytest.approx(s["max_concurrency"], rel=0.01)


def test_every_measured_request_got_its_full_prompt_and_output():
    for run in DOC["runs"]:
        for sw in run.get("sweeps", []):
            assert sw["errors"] == 0, f"{run['tag']} c={sw['concurrency']}: {sw['first_error']}"
            assert sw["prompt_tokens_mean"] == sw["prompt_len"] == 512
            assert sw["output_tokens"] == sw["ok"] * sw["max_tokens"]


def test_the_recorded_staging_command_is_the_one_the_program_renders_today():
    rendered = stack_run("staging").containers()["staging-r1-distill-0"].inputs["command"]
    recorded = V["staging"]["rendered_argv"][2:]  # after `vllm serve`
    assert perf_flags(rendered) == perf_flags(recorded), (
        "staging's vLLM flags changed since bench/results/gpu-h100.json was recorded: rerun bench/gpu "
        "(bench/gpu/README.md) so the H100 numbers describe the stack")


def test_the_measured_command_is_the_rendered_one_with_only_the_documented_swaps():
    for name, v in V.items():
        device, rendered = v["device_argv"][2:], v["rendered_argv"][2:]
        assert perf_flags(device) == perf_flags(rendered), name
        assert device[0].startswith("/tmp/bench_model/")
        extra = [a for a in device if a not in rendered]
        assert set(extra) <= {device[0], "127.0.0.1", "--load-format", "dummy"}, (name, extra)


# --- what the defaults and the planner's quantization advice rest on ------------------------------

def test_bf16_beats_the_seeds_bitsandbytes_flags_under_load():
    """The seed's --quantization bitsandbytes: at least 30% fewer tokens/s at 64 streams and 40% fewer
    at 16, on every lease (measured: 0.67-0.69x and 0.54x)."""
    assert ratio("seed-bnb", 64) and max(ratio("seed-bnb", 64)) <= 1 / 1.3
    assert ratio("seed-bnb", 16) and max(ratio("seed-bnb", 16)) <= 0.6
    assert median("staging", 64, "output_tok_s") >= 1.3 * median("seed-bnb", 64, "output_tok_s")


def test_fp8_weights_buy_memory_not_speed_for_a_small_model_on_an_h100():
    """fp8 weights run within 20% of bf16 at every concurrency (measured 1.00-1.09x), hold at most 70%
    of bf16's weight memory and leave at least as many KV tokens: quantize a model this small only
    when memory, not speed, is the problem."""
    for conc in (1, 16, 64, 128):
        for r in ratio("fp8", conc):
            assert 0.8 <= r <= 1.2, f"fp8/bf16 at {conc} streams: {r}"
    assert V["fp8"]["startup"]["weights_gib"] <= 0.7 * V["staging"]["startup"]["weights_gib"]
    assert V["fp8"]["startup"]["kv_cache_tokens"] >= V["staging"]["startup"]["kv_cache_tokens"]


def test_an_fp8_kv_cache_doubles_the_tokens_at_the_same_speed():
    assert V["kv-fp8"]["startup"]["kv_cache_tokens"] >= 1.95 * V["staging"]["startup"]["kv_cache_tokens"]
    for conc in (16, 64, 128):
        for r in ratio("kv-fp8", conc):
            assert r >= 0.85, f"kv-fp8/bf16 at {conc} streams: {r}"


def test_a_max_num_seqs_below_the_offered_load_queues_requests():
    assert median("mns-64", 128, "ttft_p50_ms") >= 2 * median("staging", 128, "ttft_p50_ms")
    assert V["mns-64"]["startup"]["kv_cache_tokens"] == pytest.approx(V["staging"]["startup"]["kv_cache_tokens"], rel=0.01)


def test_the_small_chunked_prefill_budget_slows_first_tokens_on_an_h100():
    """2048 (vLLM's budget for cards under 70 GiB) against the H100 default 8192: TTFT p50 up at 16-128 streams."""
    assert V["staging"]["startup"]["max_num_batched_tokens"] == 8192
    for conc in (16, 64, 128):
        assert median("mnbt-2048", conc, "ttft_p50_ms") >= 1.2 * median("staging", conc, "ttft_p50_ms")


def test_prefix_caching_costs_nothing_measurable():
    for conc in (16, 64, 128):
        assert median("staging", conc, "output_tok_s") >= 0.8 * median("no-prefix-cache", conc, "output_tok_s")


# --- the planner against what vLLM reported ---------------------------------------------------------

# Tolerances: KV-cache tokens and maximum concurrency within 1%; weights within 5% (vLLM's "Model
# loading took" counts what torch allocated while loading, a little over the parameters' bytes).
KV_TOLERANCE = 0.01
WEIGHTS_TOLERANCE = 0.05
PLANNED = [n for n in V if V[n]["rendered_by_program"]]  # the program refuses bitsandbytes


@pytest.mark.parametrize("variant", PLANNED)
def test_the_planner_agrees_with_vllm_on_the_h100(variant):
    memory_plan = pytest.importorskip("fleet.capacity.memory")
    from fleet.capacity import architecture
    from fleet.config.schema import Model

    s = V[variant]["startup"]
    model = Model(**s["model_config"])
    arch = architecture.find(model.hf_id)
    assert arch is not None, f"no cached architecture for {model.hf_id}"
    plan = memory_plan.plan_model(model, arch, "H100-80GB")
    assert plan.max_model_len == s["max_model_len"]
    assert plan.kv_tokens == pytest.approx(s["kv_cache_tokens"], rel=KV_TOLERANCE), (
        f"{variant}: planner {plan.kv_tokens:,} KV tokens, vLLM {s['kv_cache_tokens']:,}")
    assert plan.max_concurrency == pytest.approx(s["max_concurrency"], rel=KV_TOLERANCE)
    assert plan.weight_bytes_per_gpu / GIB == pytest.approx(s["weights_gib"], rel=WEIGHTS_TOLERANCE), (
        f"{variant}: planner {plan.weight_bytes_per_gpu / GIB:.3f} GiB of weights, vLLM {s['weights_gib']} GiB")
