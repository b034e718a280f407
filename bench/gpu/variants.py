"""Renders the vLLM command lines the GPU benchmark runs, through the real program.

Each variant is the `staging` stack with at most a few keys of its model changed (what a user or
the planner could set in the stack file). The command line is taken from the Pulumi program run
under mocks (exactly what `pulumi up` would give Docker) and checked against `fleet.docker.plan`, then
only what a bare GPU machine needs is swapped: the model path (the seed's architecture with
dummy or random weights), the listen address, and `--load-format dummy` where no weights exist.

Usage: python -m bench.gpu.variants [--out bench/gpu/variants.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

from fleet.config.load import parse_config
from fleet.config.errors import PROJECT, ConfigError
from tools.mock_run import read_stack_file, run_program, stack_config
from fleet.docker.plan import build_plan

STACK = "staging"
REPLICA = "r1-distill-0"
CONTAINER = f"{STACK}-{REPLICA}"
DEVICE_MODEL_DIR = "/tmp/bench_model"  # the carried model/ dir is copied here on the device
DEVICE_HOST = "127.0.0.1"
DEVICE_API_KEY = "bench-not-a-secret"  # stands in for the stack's api_key secret (VLLM_API_KEY)

# name -> (changes to the staging model, why it is measured, needs real weights)
VARIANTS: dict[str, tuple[dict, str, bool]] = {
    "staging": ({}, "the staging stack as shipped: bf16, max_model_len 16384, gpu_memory_utilization 0.9, "
                    "prefix caching on, vLLM's H100 batch defaults", False),
    "seed-bnb": ({"quantization": "bitsandbytes"},
                 "the seed's flags (--dtype bfloat16 --quantization bitsandbytes) on the staging command line; "
                 "bitsandbytes quantizes at load, so it needs real (random) bf16 safetensors", True),
    "fp8": ({"quantization": "fp8"}, "online fp8 weight quantization (Hopper fp8 GEMMs), everything else as staging", False),
    "no-prefix-cache": ({"enable_prefix_caching": False}, "prefix caching off", False),
    "mnbt-2048": ({"max_num_batched_tokens": 2048},
                  "chunked-prefill budget 2048 tokens per step (vLLM's default below 70 GiB cards; H100 default 8192)", False),
    "mns-64": ({"max_num_seqs": 64}, "at most 64 running sequences (H100 default 1024)", False),
    "kv-fp8": ({"kv_cache_dtype": "fp8"}, "fp8 KV cache (twice the tokens per GiB), bf16 weights", False),
}


def _stack_with(changes: dict) -> tuple[dict[str, str], list[str], dict]:
    doc = copy.deepcopy(read_stack_file(STACK))
    models = doc["config"][f"{PROJECT}:models"]
    models[0].update(changes)
    config, secret_keys, _ = stack_config(doc, None)
    raw = {k.split(":", 1)[1]: v for k, v in doc["config"].items()
           if not (isinstance(v, dict) and "secure" in v)}
    raw.update({k.split(":", 1)[1]: True for k in secret_keys})
    return config, secret_keys, raw


# The seed's own flag: the program refuses it (the pinned vLLM 0.32 has no bitsandbytes), so its
# command line is the staging one with `--quantization bitsandbytes` placed where the program
# puts `--quantization`; the program's refusal is recorded beside it.
SEED_ONLY = {"seed-bnb"}


def render(name: str) -> dict:
    changes, why, real_weights = VARIANTS[name]
    refusal = None
    if name in SEED_ONLY:
        try:
            config, secret_keys, raw = _stack_with(changes)
            run_program(STACK, config, secret_keys)
        except ConfigError as err:
            refusal = str(err)
        base = render("staging")
        args = list(base["rendered_argv"])
        i = args.index("--dtype") + 2
        args[i:i] = ["--quantization", changes["quantization"]]
        device = swap_for_device(args[2:], name, real_weights)
        return {**base, "name": name, "changes": changes, "why": why, "needs_real_weights": real_weights,
                "rendered_argv": args, "rendered_by_program": False, "program_refusal": refusal,
                "device_serve_args": device["args"], "device_swaps": device["swaps"]}
    config, secret_keys, raw = _stack_with(changes)
    run = run_program(STACK, config, secret_keys)
    recorded = run.containers()[CONTAINER].inputs
    argv = list(recorded["entrypoints"]) + list(recorded["command"])
    replica = next(r for r in build_plan(parse_config(raw, STACK)).replicas if r.name == REPLICA)
    spec = replica.containers[0]
    if list(spec.command) != list(recorded["command"]):
        raise SystemExit(f"{name}: fleet.docker.plan and the Pulumi program disagree on the command line")
    device = swap_for_device(list(recorded["command"]), name, real_weights)
    env = dict(spec.env)
    secret_env = sorted(spec.secret_env)
    return {
        "name": name, "changes": changes, "why": why, "needs_real_weights": real_weights,
        "rendered_argv": argv, "rendered_by_program": True,  # what the staging container runs (`vllm serve ...`)
        "rendered_env": env, "rendered_secret_env": secret_env,
        "gpu_ids": list(spec.gpu_ids or []), "shm_size_mb": spec.shm_size_mb,
        "device_serve_args": device["args"], "device_swaps": device["swaps"],
        "device_env": {**env, **({"VLLM_API_KEY": DEVICE_API_KEY} if "VLLM_API_KEY" in secret_env else {})},
        "served_model_name": device["served_model_name"],
    }


def swap_for_device(args: list[str], name: str, real_weights: bool) -> dict:
    """Only the model path, the listen address and the weight source change."""
    out = list(args)
    swaps = [f"model {out[0]} -> {DEVICE_MODEL_DIR}/{name} (the seed's config.json, synthetic tokenizer)"]
    out[0] = f"{DEVICE_MODEL_DIR}/{name}"
    i = out.index("--host")
    swaps.append(f"--host {out[i + 1]} -> {DEVICE_HOST}")
    out[i + 1] = DEVICE_HOST
    port = out[out.index("--port") + 1]
    swaps.append(f"--port {port} (unchanged)")
    if not real_weights:
        out += ["--load-format", "dummy"]
        swaps.append("+ --load-format dummy (no weights on the device: random values, real shapes and speed)")
    else:
        swaps.append("random bf16 safetensors written on the device (genweights.py), loaded normally")
    served = out[out.index("--served-model-name") + 1]
    return {"args": out, "swaps": swaps, "served_model_name": served}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).with_name("variants.json")))
    ap.add_argument("names", nargs="*", default=list(VARIANTS))
    ns = ap.parse_args(argv)
    rendered = [render(n) for n in ns.names]
    root = Path(__file__).resolve().parents[2]
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()
    source = {"commit": git("rev-parse", "HEAD"),
              "uncommitted_program_files": git("status", "--porcelain", "--", "fleet", "__main__.py", "components").splitlines()}
    Path(ns.out).write_text(json.dumps({"stack": STACK, "container": CONTAINER, "program": source,
                                        "variants": rendered}, indent=1) + "\n")
    for v in rendered:
        print(v["name"], " ".join(v["device_serve_args"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
