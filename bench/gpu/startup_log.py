"""What vLLM reports at startup, read from its server log: weights, KV cache, concurrency, timings."""
from __future__ import annotations

import re

_NUM = r"([0-9][0-9,]*\.?[0-9]*)"
PATTERNS = {
    # "Model loading took 3.4513 GiB memory and 2.5 seconds" (older runner: "took X GiB and Y seconds")
    "weights_gib": rf"Model loading took {_NUM} GiB",
    "model_load_s": rf"Model loading took {_NUM} GiB(?: memory)? and {_NUM} seconds",
    "kv_cache_gib": rf"Available KV cache memory: {_NUM} GiB",
    "kv_cache_tokens": rf"GPU KV cache size: {_NUM} tokens",
    "max_concurrency": rf"Maximum concurrency for {_NUM} tokens per request: {_NUM}x",
    "cuda_graph_s": rf"Graph capturing finished in {_NUM} secs, took {_NUM} GiB",
    "init_engine_s": rf"init engine \(profile, create kv cache, warmup model\) took {_NUM} s",
    "compile_s": rf"init engine .* took {_NUM} s \(compilation: {_NUM} s",
    "max_num_batched_tokens": rf"max_num_batched_tokens={_NUM}",
    # "Free memory on device (78.66/79.18 GiB) on startup. Desired GPU memory utilization is (0.9, 71.26 GiB)."
    "device_free_gib": rf"Free memory on device \({_NUM}/{_NUM} GiB\) on startup",
    "requested_gib": rf"Desired GPU memory utilization is \({_NUM}, {_NUM} GiB\)",
    # "Actual usage is 3.45 GiB for weight, 0.56 GiB for peak activation, 0.22 GiB for non-torch memory,
    #  and 0.5 GiB for CUDAGraph memory."
    "usage": rf"Actual usage is {_NUM} GiB for weight, {_NUM} GiB for peak activation, {_NUM} GiB for "
             rf"non-torch memory, and {_NUM} GiB for CUDAGraph memory",
    "attention_backend": r"Using (\w+) attention backend",
}
KEEP = re.compile(r"KV cache|concurrency|Model loading|Graph captur|CUDA graph|compil|init engine|"
                  r"max_num_batched_tokens|quantiz|Using .*backend|attention backend|fp8|bitsandbytes|"
                  r"Traceback|Error|error:", re.I)


def _f(text: str) -> float:
    return float(text.replace(",", ""))


def parse(log: str) -> dict:
    """Numbers vLLM printed while starting, plus the lines they came from."""
    out: dict = {}
    for key, pat in PATTERNS.items():
        m = re.search(pat, log)
        if not m:
            continue
        if key == "model_load_s":
            out[key] = _f(m.group(2))
        elif key == "max_concurrency":
            out["max_concurrency_at_tokens"] = int(_f(m.group(1)))
            out[key] = _f(m.group(2))
        elif key == "cuda_graph_s":
            out[key] = _f(m.group(1))
            out["cuda_graph_gib"] = _f(m.group(2))
        elif key == "compile_s":
            out[key] = _f(m.group(2))
        elif key == "device_free_gib":
            out[key], out["device_total_gib"] = _f(m.group(1)), _f(m.group(2))
        elif key == "requested_gib":
            out["gpu_memory_utilization"], out[key] = _f(m.group(1)), _f(m.group(2))
        elif key == "usage":
            for name, g in zip(("weights_usage_gib", "peak_activation_gib", "non_torch_gib", "cuda_graph_usage_gib"),
                               m.groups()):
                out[name] = _f(g)
        elif key == "attention_backend":
            out[key] = m.group(1)
        else:
            out[key] = _f(m.group(1))
    for k in ("kv_cache_tokens", "max_num_batched_tokens"):
        if k in out:
            out[k] = int(out[k])
    hits = [float(x) for x in re.findall(r"Prefix cache hit rate: ([0-9.]+)%", log)]
    out["prefix_cache_hit_rate_max_pct"] = max(hits) if hits else None  # from the periodic stats, not startup
    out["jit_during_inference"] = sorted(set(re.findall(r"Triton kernel JIT compilation during inference: (\w+)", log)))
    out["lines"] = [ln.strip()[:400] for ln in log.splitlines() if KEEP.search(ln) and "it/s]" not in ln
                    and "POST /v1" not in ln and "GET /" not in ln][:60]
    return out
