"""Streams completions at fixed concurrency and reports output tok/s, TTFT and ITL.

Adapted from ../shared/gpu/bench.py (the recipe that ran on the lent H100): prompts are lists of
token ids, because the carried model has a synthetic tokenizer on which text encodes to nothing.
Every request asks for exactly `max_tokens` tokens (`ignore_eos`) so runs are comparable.

Workloads:
  server-defaults  the request sets no sampling parameters, so the server's configured defaults
                   apply (staging: temperature 0.6, top_p 0.95) - what a client of the stack gets
  greedy           temperature 0 (the shared recipe's numbers were measured this way)
  shared-prefix    server defaults, every prompt starts with the same `prefix_len` tokens (a long
                   system prompt): what prefix caching is for
"""
from __future__ import annotations

import asyncio
import json
import random
import statistics
import time

import aiohttp


def make_prompt(rng: random.Random, length: int, prefix: list[int] | None = None) -> list[int]:
    head = list(prefix or [])
    return head + [rng.randint(10, 150000) for _ in range(length - len(head))]


async def _one(session, url, headers, body, res):
    t0 = time.perf_counter()
    ttft = last = None
    itls, chunks, usage = [], 0, None
    async with session.post(url, json=body, headers=headers) as r:
        if r.status != 200:
            res.append({"error": f"HTTP {r.status}: {(await r.text())[:300]}"})
            return
        async for raw in r.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            d = json.loads(data)
            if d.get("usage"):
                usage = d["usage"]
            ch = d.get("choices") or []
            if ch and ch[0].get("text"):
                now = time.perf_counter()
                chunks += 1
                if ttft is None:
                    ttft = now - t0
                else:
                    itls.append(now - last)
                last = now
    res.append({"ttft": ttft, "itls": itls, "lat": time.perf_counter() - t0, "chunks": chunks,
                "out": usage["completion_tokens"] if usage else chunks,
                "pin": usage["prompt_tokens"] if usage else None})


def _pct(a: list[float], p: float) -> float:
    return a[min(len(a) - 1, int(round(p / 100 * (len(a) - 1))))] if a else float("nan")


async def level(url: str, model: str, api_key: str | None, conc: int, nreq: int, seed: int, *,
                prompt_len: int, max_tokens: int, workload: str, prefix_len: int = 0) -> dict:
    rng = random.Random(seed)
    prefix = make_prompt(random.Random(12345), prefix_len) if workload == "shared-prefix" else None
    prompts = [make_prompt(rng, prompt_len, prefix) for _ in range(nreq)]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    res: list[dict] = []
    sem = asyncio.Semaphore(conc)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=900)) as s:
        async def worker(p):
            body = {"model": model, "prompt": p, "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}
            if workload == "greedy":
                body["temperature"] = 0.0
            async with sem:
                await _one(s, url, headers, body, res)
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(p) for p in prompts])
        dur = time.perf_counter() - t0
    ok = [r for r in res if "error" not in r]
    errs = [r["error"] for r in res if "error" in r]
    out = {"workload": workload, "concurrency": conc, "requests": nreq, "ok": len(ok), "errors": len(errs),
           "first_error": errs[0] if errs else None, "prompt_len": prompt_len, "max_tokens": max_tokens,
           "prefix_len": prefix_len if workload == "shared-prefix" else 0, "duration_s": round(dur, 3)}
    if not ok:
        return out
    ttfts = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    itls = sorted(x for r in ok for x in r["itls"])
    lats = sorted(r["lat"] for r in ok)
    total_out = sum(r["out"] for r in ok)
    out.update({
        "prompt_tokens_mean": statistics.mean(r["pin"] for r in ok) if ok[0]["pin"] is not None else None,
        "output_tokens": total_out, "output_tok_s": round(total_out / dur, 1), "req_s": round(len(ok) / dur, 3),
        "ttft_p50_ms": round(1000 * _pct(ttfts, 50), 2), "ttft_p99_ms": round(1000 * _pct(ttfts, 99), 2),
        "itl_p50_ms": round(1000 * _pct(itls, 50), 3), "itl_p99_ms": round(1000 * _pct(itls, 99), 3),
        "latency_p50_s": round(_pct(lats, 50), 3),
        "chunks_per_request": round(statistics.mean(r["chunks"] for r in ok), 1),
    })
    return out


async def sweep(url: str, model: str, api_key: str | None, levels: list[int], *, workload: str = "server-defaults",
                prompt_len: int = 512, max_tokens: int = 256, per_conc: int = 4, min_requests: int = 8,
                prefix_len: int = 448, log=print) -> list[dict]:
    """One warm-up level, then each concurrency with max(min_requests, per_conc x concurrency) requests."""
    results = []
    for c in levels:
        # warm-up at this concurrency: the first batch of a new size compiles kernels (seen: a 3-5 s stall)
        await level(url, model, api_key, c, c, 999 + c, prompt_len=prompt_len, max_tokens=32, workload=workload,
                    prefix_len=prefix_len)
        r = await level(url, model, api_key, c, max(min_requests, per_conc * c), c, prompt_len=prompt_len,
                        max_tokens=max_tokens, workload=workload, prefix_len=prefix_len)
        log(json.dumps(r))
        results.append(r)
    return results
