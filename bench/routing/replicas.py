"""What the benchmark reads from and does to the vLLM replicas directly (never through a balancer):
their Prometheus counters, an idle check, and the prefix-cache reset between variants.

The reset (`POST /reset_prefix_cache`, served with `VLLM_SERVER_DEV_MODE=1`) is verified with a
probe, because a reset refused while blocks are in use would silently hand the next variant a
warm cache: the probe prompt is sent once (now cached), the cache reset, the probe sent again and
its `cached_tokens` must be 0; then a last reset drops the probe itself.
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request

# name -> the names vLLM releases used for it (0.26 and 0.32 both have the first; older ones the second)
COUNTERS = {
    "hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "finished": ("vllm:request_success_total",),
    "preemptions": ("vllm:num_preemptions_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
}
GAUGES = {"running": ("vllm:num_requests_running",), "waiting": ("vllm:num_requests_waiting",),
          "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")}


def http(url: str, body: dict | None = None, *, method: str | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, str]:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def read_metrics(url: str) -> dict[str, float]:
    """The counters and gauges above from one replica's /metrics, each summed over its samples."""
    text = http(url + "/metrics", timeout=10)[1]
    out = {}
    for key, names in {**COUNTERS, **GAUGES}.items():
        for name in names:
            values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
            if values:
                out[key] = sum(float(v) for v in values)
                break
        else:
            out[key] = float("nan")
    return out


def snapshot(urls: list[str]) -> list[dict[str, float]]:
    return [read_metrics(u) for u in urls]


def deltas(before: list[dict], after: list[dict]) -> list[dict[str, float]]:
    return [{k: a[k] - b[k] for k in COUNTERS} for b, a in zip(before, after)]


def wait_idle(urls: list[str], timeout: float = 120) -> None:
    """Until no replica has a request running or waiting (a client that hung up is aborted by vLLM
    a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [(u, m["running"], m["waiting"]) for u, m in zip(urls, snapshot(urls)) if m["running"] or m["waiting"]]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"replicas still busy after {timeout:.0f} s: {busy}")
        time.sleep(0.2)


def probe(url: str, model: str, messages: list[dict], auth: dict) -> int:
    """Cached prompt tokens of one short request (`usage.prompt_tokens_details`)."""
    status, text = http(url + "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 1},
                        headers=auth, timeout=120)
    if status != 200:
        raise RuntimeError(f"probe to {url}: HTTP {status}: {text[:300]}")
    details = json.loads(text)["usage"].get("prompt_tokens_details")
    if details is None:
        raise RuntimeError(f"{url} reports no prompt_tokens_details: start it with --enable-prompt-tokens-details")
    return details.get("cached_tokens") or 0


def reset_prefix_caches(urls: list[str], model: str, probe_messages: list[dict], auth: dict) -> list[dict]:
    """Reset every replica's prefix cache and prove it with the probe; returns what each probe saw."""
    wait_idle(urls)
    seen = []
    for url in urls:
        probe(url, model, probe_messages, auth)
        before = probe(url, model, probe_messages, auth)  # cached now, unless the cache is tiny
        status, text = http(url + "/reset_prefix_cache", method="POST", headers=auth)
        if status != 200:
            raise RuntimeError(f"POST {url}/reset_prefix_cache: HTTP {status} {text[:200]} (VLLM_SERVER_DEV_MODE=1?)")
        after = probe(url, model, probe_messages, auth)
        if after != 0:
            raise RuntimeError(f"{url}: the probe still hit {after} cached tokens after /reset_prefix_cache")
        http(url + "/reset_prefix_cache", method="POST", headers=auth)
        seen.append({"replica": url, "probe_cached_before_reset": before, "probe_cached_after_reset": after})
    return seen
