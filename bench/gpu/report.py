"""Merges what device calls brought back into bench/results/gpu-h100.{json,md,png}.

    python -m bench.gpu.report --call call3:A:/work/.device/4/results.tgz --call call4:A:... \\
        --single-warmup call3 call4

Each `--call NAME:LEASE:PATH` is one device call's results.tgz (or its unpacked bench_state), in
the order they ran; LEASE names the machine (runs are compared with staging on the same machine).
A run is attributed to the first call whose archive holds it. `--single-warmup` names calls whose
load generator warmed up once (4 requests) instead of at every concurrency: their concurrency-16
rows include vLLM's one-time Triton JIT of the top-k/top-p sampler (a 3-5 s stall) and are left
out of the summary (kept in `runs`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tarfile
import tempfile
from pathlib import Path

from bench.gpu import startup_log
from bench.gpu.variants import VARIANTS, _stack_with

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
PINNED_VLLM = "0.32.0"
METRICS = ("output_tok_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")
ORDER = ["staging", "seed-bnb", "fp8", "kv-fp8", "no-prefix-cache", "mnbt-2048", "mns-64"]
LABEL = {
    "staging": "staging defaults (bf16)", "seed-bnb": "seed's bitsandbytes", "fp8": "fp8 weights",
    "kv-fp8": "fp8 KV cache", "no-prefix-cache": "prefix caching off", "mnbt-2048": "max-num-batched-tokens 2048",
    "mns-64": "max-num-seqs 64",
}


def _state_dir(path: Path, tmp: Path) -> Path:
    if path.is_dir():
        return path if (path / "results").exists() else path / "bench_state"
    dest = tmp / f"x{len(list(tmp.iterdir()))}"
    with tarfile.open(path) as t:
        t.extractall(dest, filter="data")
    return dest / "bench_state"


def load_runs(calls: list[tuple[str, str, Path]], single_warmup: set[str]) -> tuple[list[dict], dict]:
    runs, seen, machines = [], set(), {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for call, lease, path in calls:
            state = _state_dir(path, tmp)
            machines.setdefault(lease, json.loads((state / "machine.json").read_text()))
            for f in sorted((state / "results").glob("*.json")):
                if f.name.endswith("_dummy_failed.json"):
                    continue
                r = json.loads(f.read_text())
                key = (lease, r["tag"])
                if key in seen:
                    continue
                seen.add(key)
                logf = state / "logs" / f"server_{r['tag'].replace('#', '_')}.log"
                if logf.exists():  # re-read with the current parser (more fields than the device had)
                    r["startup"] = startup_log.parse(logf.read_text(errors="replace"))
                r.update(call=call, lease=lease,
                         warmup="once, 4 requests" if call in single_warmup else "at every concurrency")
                for sw in r.get("sweeps", []):
                    sw["valid"] = not (call in single_warmup and sw["concurrency"] == 16)
                runs.append(r)
    runs.sort(key=lambda r: r["started_at"])
    firsts = set()
    for r in runs:  # the log excerpt once per variant keeps the JSON small
        if r["variant"] in firsts:
            r["startup"].pop("lines", None)
        firsts.add(r["variant"])
    return runs, machines


def _summ(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values), "n": len(values)}


def summarize(runs: list[dict], variant: str, lease: str | None = None) -> dict:
    """workload -> concurrency -> metric -> {median, min, max, n} over the valid rows."""
    out: dict = {}
    for r in runs:
        if r["variant"] != variant or (lease and r["lease"] != lease):
            continue
        for sw in r.get("sweeps", []):
            if not sw.get("valid", True) or sw.get("errors"):
                continue
            cell = out.setdefault(sw["workload"], {}).setdefault(str(sw["concurrency"]), {})
            for m in METRICS:
                cell.setdefault(m, []).append(sw[m])
    return {w: {c: {m: _summ(v) for m, v in cell.items()} for c, cell in by_c.items()} for w, by_c in out.items()}


def _flag(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def startup_record(runs: list[dict], variant: str, model_config: dict) -> dict:
    mine = [r for r in runs if r["variant"] == variant and r.get("up")]
    first = mine[0]["startup"]
    argv = mine[0]["argv"]
    rec = {k: first.get(k) for k in (
        "weights_gib", "kv_cache_gib", "kv_cache_tokens", "max_concurrency", "max_concurrency_at_tokens",
        "peak_activation_gib", "non_torch_gib", "cuda_graph_gib", "requested_gib", "device_total_gib",
        "max_num_batched_tokens", "attention_backend")}
    rec.update(
        max_model_len=int(_flag(argv, "--max-model-len")),
        gpu_memory_utilization=float(_flag(argv, "--gpu-memory-utilization")),
        dtype=_flag(argv, "--dtype", "auto"), quantization=_flag(argv, "--quantization"),
        kv_cache_dtype=_flag(argv, "--kv-cache-dtype", "auto"),
        max_num_seqs=int(_flag(argv, "--max-num-seqs", 0)) or None,
        # vLLM logs the budget only when it picks it; a flag's value is the budget otherwise
        max_num_batched_tokens=first.get("max_num_batched_tokens") or int(_flag(argv, "--max-num-batched-tokens")),
        enable_prefix_caching="--no-enable-prefix-caching" not in argv,
        model_config=model_config,
        kv_cache_tokens_all_runs=[r["startup"].get("kv_cache_tokens") for r in mine],
        weights_gib_all_runs=[r["startup"].get("weights_gib") for r in mine],
        startup_s_all_runs=[r["startup_s"] for r in mine],
    )
    return rec


def model_config(variant: str) -> dict:
    """The staging model entry with the variant's changes, as the stack file read when measured."""
    _, _, raw = _stack_with(VARIANTS[variant][0])
    return raw["models"][0]


def build(runs: list[dict], machines: dict, variants_file: Path) -> dict:
    rendered = {v["name"]: v for v in json.loads(variants_file.read_text())["variants"]}
    names = [n for n in ORDER if any(r["variant"] == n for r in runs)]
    leases = sorted({r["lease"] for r in runs})
    variants = {}
    for n in names:
        v = rendered[n]
        same_lease = {}
        for lease in leases:
            mine, base = summarize(runs, n, lease), summarize(runs, "staging", lease)
            if n == "staging" or not mine or not base:
                continue
            same_lease[lease] = {
                c: {"output_tok_s_ratio": round(mine["server-defaults"][c]["output_tok_s"]["median"]
                                                / base["server-defaults"][c]["output_tok_s"]["median"], 3),
                    "ttft_p50_ratio": round(mine["server-defaults"][c]["ttft_p50_ms"]["median"]
                                            / base["server-defaults"][c]["ttft_p50_ms"]["median"], 3)}
                for c in mine.get("server-defaults", {}) if c in base.get("server-defaults", {})}
        variants[n] = {
            "label": LABEL[n], "changes": v["changes"], "why": v["why"],
            "rendered_by_program": v.get("rendered_by_program", True), "program_refusal": v.get("program_refusal"),
            "rendered_argv": v["rendered_argv"], "device_argv": ["vllm", "serve", *v["device_serve_args"]],
            "device_swaps": v["device_swaps"],
            "startup": startup_record(runs, n, model_config(n) if n != "seed-bnb" else
                                      {**model_config("staging"), "quantization": "bitsandbytes"}),
            "summary": summarize(runs, n),
            "vs_staging_same_lease": same_lease,
        }
    m0 = machines[leases[0]]
    return {
        "schema": 1,
        "card": m0["gpu"], "gpu_memory_total_mib": m0["gpu_memory_total_mib"], "driver": m0["driver"],
        "machines": machines,
        "vllm": m0["software"]["vllm"], "vllm_pinned_by_program": PINNED_VLLM,
        "vllm_note": "the device has no package index and vLLM 0.26.0 is the newest release built for its torch "
                     "2.11 / CUDA 13 (../shared/gpu); the bundle prunes flashinfer, so top-k/top-p sampling runs "
                     "vLLM's Triton kernel instead of FlashInfer's",
        "date": "/".join(sorted({r["started_at"][:10] for r in runs})),
        "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B architecture (Qwen2, 28 layers, hidden 1536, "
                 "12 heads, 2 KV heads, vocab 151936); dummy weights (--load-format dummy), or random bf16 "
                 "safetensors for bitsandbytes",
        "workload": {
            "prompt": "512 random token ids per request (the synthetic tokenizer encodes text to nothing)",
            "output_tokens": 256, "ignore_eos": True, "stream": True,
            "requests_per_level": "max(8, 4 x concurrency)",
            "server-defaults": "no sampling parameters in the request: the stack's defaults apply "
                               "(--override-generation-config temperature 0.6, top_p 0.95)",
            "greedy": "temperature 0 (how ../shared/gpu measured)",
            "shared-prefix": "server defaults; the first 448 of the 512 prompt tokens are the same in every request",
            "warmup": "one short level at each concurrency before it is measured (calls marked otherwise: see runs)",
        },
        "load_format_dummy": "the device has no weights: --load-format dummy gives real shapes, memory and speed "
                             "with random values; bitsandbytes cannot quantize dummy weights, so seed-bnb loads "
                             "random bf16 safetensors (bench/gpu/genweights.py)",
        "variants": variants,
        "runs": runs,
    }


def _ratios(doc: dict, variant: str, conc: str) -> list[float]:
    return [by_c[conc]["output_tok_s_ratio"] for by_c in doc["variants"][variant]["vs_staging_same_lease"].values()
            if conc in by_c]


def _med(doc: dict, variant: str, conc: str, metric: str, workload: str = "server-defaults") -> float:
    return doc["variants"][variant]["summary"][workload][conc][metric]["median"]


def findings(doc: dict) -> list[str]:
    """The facts the stacks and the planner rely on, in numbers from this document."""
    v, out = doc["variants"], []
    rng = lambda xs: f"{min(xs):.2f}" if len(xs) == 1 or min(xs) == max(xs) else f"{min(xs):.2f}-{max(xs):.2f}"
    base = v["staging"]["summary"]["server-defaults"]
    kv_vs_staging = lambda name: v[name]["startup"]["kv_cache_tokens"] / v["staging"]["startup"]["kv_cache_tokens"]
    a64 = [sw["output_tok_s"] for r in doc["runs"] if r["variant"] == "staging" and r["lease"] == "A"
           for sw in r.get("sweeps", []) if sw["workload"] == "server-defaults" and sw["concurrency"] == 64]
    if a64:
        out.append(f"Noise: the same staging server started {len(a64)} times on lease A gave {min(a64):,.0f}-"
                   f"{max(a64):,.0f} output tok/s at 64 streams; differences under ~20% are not findings.")
    if "seed-bnb" in v:
        out.append(f"The seed's `--quantization bitsandbytes` keeps single-stream speed "
                   f"({rng(_ratios(doc, 'seed-bnb', '1'))}x staging) but loses under load: "
                   f"{rng(_ratios(doc, 'seed-bnb', '16'))}x at 16 streams, {rng(_ratios(doc, 'seed-bnb', '64'))}x at 64, "
                   f"{rng(_ratios(doc, 'seed-bnb', '128'))}x at 128 (same lease); ITL p50 at 16 streams "
                   f"{_med(doc, 'seed-bnb', '16', 'itl_p50_ms'):.1f} vs {base['16']['itl_p50_ms']['median']:.1f} ms. "
                   f"It saves {v['staging']['startup']['weights_gib'] - v['seed-bnb']['startup']['weights_gib']:.2f} GiB "
                   f"of weights (+{kv_vs_staging('seed-bnb') - 1:.1%} KV tokens), "
                   "which a 1.5B model on an 80 GB card does not need. The pinned vLLM 0.32 has no bitsandbytes at all.")
    if "fp8" in v:
        xs = [x for c in ("1", "16", "64", "128") for x in _ratios(doc, "fp8", c)]
        out.append(f"fp8 weights: {rng(xs)}x staging's output tok/s across 1-128 streams (within noise); weights "
                   f"{v['fp8']['startup']['weights_gib']} vs {v['staging']['startup']['weights_gib']} GiB (embeddings and "
                   f"lm_head stay bf16), KV tokens +{kv_vs_staging('fp8') - 1:.1%}. "
                   "A 1.5B model's decode step is not bound by weight reads on an H100, so fp8 buys memory, not speed, here.")
    if "kv-fp8" in v:
        xs = [x for c in ("1", "16", "64", "128") for x in _ratios(doc, "kv-fp8", c)]
        out.append(f"fp8 KV cache: {v['kv-fp8']['startup']['kv_cache_tokens']:,} tokens vs "
                   f"{v['staging']['startup']['kv_cache_tokens']:,} "
                   f"({kv_vs_staging('kv-fp8'):.2f}x; "
                   f"max concurrency at 16,384 tokens {v['kv-fp8']['startup']['max_concurrency']} vs "
                   f"{v['staging']['startup']['max_concurrency']}) at {rng(xs)}x staging's output tok/s (one run).")
    if "mns-64" in v:
        out.append(f"`--max-num-seqs 64` below the offered concurrency queues requests: TTFT p50 at 128 streams "
                   f"{_med(doc, 'mns-64', '128', 'ttft_p50_ms'):,.0f} ms vs {base['128']['ttft_p50_ms']['median']:,.0f} ms, "
                   f"and no more throughput ({rng(_ratios(doc, 'mns-64', '128'))}x). It changed neither the KV cache "
                   "nor the profiled activation peak (the 8192-token prefill, not the sampler, sets it).")
    if "mnbt-2048" in v:
        rs = [_med(doc, "mnbt-2048", c, "ttft_p50_ms") / base[c]["ttft_p50_ms"]["median"] for c in ("16", "64", "128")]
        out.append(f"`--max-num-batched-tokens 2048` (vLLM's default below 70 GiB cards) raises TTFT p50 "
                   f"{min(rs):.2f}-{max(rs):.2f}x at 16-128 streams against the H100 default 8192, with no throughput "
                   f"gain ({rng([x for c in ('64', '128') for x in _ratios(doc, 'mnbt-2048', c)])}x at 64-128).")
    if "no-prefix-cache" in v and "shared-prefix" in v["staging"]["summary"]:
        hits = [r["startup"].get("prefix_cache_hit_rate_max_pct") for r in doc["runs"] if r["variant"] == "staging"]
        hits = [h for h in hits if h is not None]
        out.append(f"Prefix caching costs nothing measurable on unique prompts (off: "
                   f"{rng([x for c in ('16', '64') for x in _ratios(doc, 'no-prefix-cache', c)])}x at 16-64 streams) and, "
                   f"with 448 shared prompt tokens, hits (vLLM's hit rate up to {max(hits):.0f}%) without a measurable TTFT "
                   f"gain: p50 {_med(doc, 'staging', '64', 'ttft_p50_ms', 'shared-prefix'):.0f} ms on vs "
                   f"{_med(doc, 'no-prefix-cache', '64', 'ttft_p50_ms', 'shared-prefix'):.0f} ms off at 64 streams. A 512-token "
                   "prefill of a 1.5B model is too cheap to matter; TTFT here is queueing behind decode steps.")
    both = next((r for r in doc["runs"] if r["variant"] == "staging"
                 and {sw["workload"] for sw in r.get("sweeps", [])} >= {"greedy", "server-defaults"}), None)
    if both:
        row = {(sw["workload"], sw["concurrency"]): sw for sw in both["sweeps"]}
        s1, g1 = row[("server-defaults", 1)], row[("greedy", 1)]
        s64, g64 = row.get(("server-defaults", 64)), row.get(("greedy", 64))
        text = (f"The stack's sampling defaults (temperature 0.6, top_p 0.95) against greedy, same server: "
                f"single-stream ITL p50 {s1['itl_p50_ms']:.2f} vs {g1['itl_p50_ms']:.2f} ms")
        if s64 and g64:
            text += f"; at 64 streams {s64['output_tok_s']:,.0f} vs {g64['output_tok_s']:,.0f} tok/s"
        out.append(text + " (top-p runs vLLM's Triton kernel on this bundle). After every start the first batch "
                   "of a new size JIT-compiles `_topk_topp_kernel`: a 3-5 s TTFT stall at 16 streams unless warmed up.")
    return out


def _cell(s: dict, m: str, digits: int = 0) -> str:
    if m not in s:
        return "–"
    x = s[m]
    fmt = f"{{:,.{digits}f}}"
    if x["n"] > 1 and m == "output_tok_s":
        return f"{fmt.format(x['median'])} ({fmt.format(x['min'])}–{fmt.format(x['max'])})"
    return fmt.format(x["median"])


def markdown(doc: dict) -> str:
    v = doc["variants"]
    lines = [
        f"# vLLM on one {doc['card']}: what the staging stack deploys",
        "",
        f"Card: **{doc['card']}** ({doc['gpu_memory_total_mib']:,} MiB, driver {doc['driver']}), "
        f"vLLM **{doc['vllm']}**, not the {doc['vllm_pinned_by_program']} the stacks pin: {doc['vllm_note']}. "
        f"Measured {doc['date']} (UTC) on two leases of one H100 each (A, B). Generated by `python -m bench.gpu.report` from `gpu-h100.json`; "
        "how to run it: `bench/gpu/README.md`.",
        "",
        "Model: " + doc["model"] + ". Command: exactly the `vllm serve` line the program renders for "
        "`staging-r1-distill-0`, with the model path, `--host` and `--load-format dummy` swapped in "
        "(see `variants.*.device_argv` in the JSON).",
        "",
        "Workload: 512-token prompts, 256 streamed output tokens (`ignore_eos`), the stack's sampling defaults "
        "(temperature 0.6, top_p 0.95), max(8, 4 × concurrency) requests per level. "
        "Cells: median over runs (n in the last column); output tok/s shows the range when n > 1.",
        "",
        "| variant | conc. | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rec in v.items():
        sd = rec["summary"].get("server-defaults", {})
        for c in sorted(sd, key=int):
            s = sd[c]
            lines.append(f"| {rec['label']} | {c} | {_cell(s, 'output_tok_s')} | {_cell(s, 'ttft_p50_ms')} | "
                         f"{_cell(s, 'ttft_p99_ms')} | {_cell(s, 'itl_p50_ms', 2)} | {s['output_tok_s']['n']} |")
    lines += ["", "## What it shows", "", *[f"- {f}" for f in doc.get("findings", [])]]
    lines += ["", "Same machine, same hour: output tok/s relative to the staging defaults (median of each; "
              "lease A ran 13 servers, lease B 5).", "",
              "| variant | lease | c=1 | c=16 | c=64 | c=128 |", "|---|---|---|---|---|---|"]
    for name, rec in v.items():
        for lease, by_c in rec["vs_staging_same_lease"].items():
            cells = [f"{by_c[c]['output_tok_s_ratio']:.2f}" if c in by_c else "–" for c in ("1", "16", "64", "128")]
            lines.append(f"| {rec['label']} | {lease} | " + " | ".join(cells) + " |")
    lines += ["", "## What vLLM reported at startup", "",
              "| variant | weights GiB | KV cache GiB | KV cache tokens | max concurrency (16,384-token requests) | "
              "peak activation GiB | CUDA graphs GiB | max_num_batched_tokens |",
              "|---|---|---|---|---|---|---|---|"]
    for name, rec in v.items():
        s = rec["startup"]
        lines.append(f"| {rec['label']} | {s['weights_gib']} | {s['kv_cache_gib']} | {s['kv_cache_tokens']:,} | "
                     f"{s['max_concurrency']} | {s['peak_activation_gib']} | {s['cuda_graph_gib']} | "
                     f"{s['max_num_batched_tokens']} |")
    st = v["staging"]["startup"]
    lines += ["", f"All at `--gpu-memory-utilization {st['gpu_memory_utilization']}` of {st['device_total_gib']} GiB "
              f"({st['requested_gib']} GiB), `--max-model-len {st['max_model_len']}`; non-torch memory "
              f"{st['non_torch_gib']} GiB; attention backend {st['attention_backend']}."]
    extra = []
    for name in ("staging", "no-prefix-cache"):
        for wl in ("greedy", "shared-prefix"):
            for c, s in sorted(v.get(name, {}).get("summary", {}).get(wl, {}).items(), key=lambda x: int(x[0])):
                extra.append(f"| {v[name]['label']} | {wl} | {c} | {_cell(s, 'output_tok_s')} | {_cell(s, 'ttft_p50_ms')} | "
                             f"{_cell(s, 'ttft_p99_ms')} | {_cell(s, 'itl_p50_ms', 2)} | {s['output_tok_s']['n']} |")
    if extra:
        lines += ["", "## Other workloads", "",
                  "`greedy`: temperature 0 (as ../shared/gpu measured). `shared-prefix`: 448 of the 512 prompt "
                  "tokens are common to all requests.", "",
                  "| variant | workload | conc. | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | n |",
                  "|---|---|---|---|---|---|---|---|", *extra]
    lines += ["", "## Runs", "",
              "| run | lease | call | started (UTC) | up after s | warm-up | JIT during inference |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(f"| {r['tag']} | {r['lease']} | {r['call']} | {r['started_at'][11:19]} | {r['startup_s']} | "
                     f"{r['warmup']} | {', '.join(r['startup'].get('jit_during_inference', [])) or '–'} |")
    lines += ["", "Calls warmed up once had a 3-5 s stall at concurrency 16 (vLLM logged `Triton kernel JIT "
              "compilation during inference: _topk_topp_kernel`); those rows are in the JSON (`valid: false`) "
              "but not in the tables."]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rec in doc["variants"].items():
        sd = rec["summary"].get("server-defaults", {})
        cs = sorted(sd, key=int)
        x = [int(c) for c in cs]
        a1.plot(x, [sd[c]["output_tok_s"]["median"] for c in cs], marker="o", label=rec["label"])
        a2.plot(x, [sd[c]["ttft_p50_ms"]["median"] for c in cs], marker="o", label=rec["label"])
    for ax, title in ((a1, "output tok/s (median)"), (a2, "TTFT p50 ms (median)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 16, 64, 128], ["1", "16", "64", "128"])
        ax.set_xlabel("concurrent streams")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.suptitle(f"{doc['card']}, vLLM {doc['vllm']}, R1-Distill-Qwen-1.5B architecture, 512 in / 256 out")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--call", action="append", default=[],
                    help="NAME:LEASE:PATH, in the order they ran; none: redraw the .md and .png from the recorded .json")
    ap.add_argument("--single-warmup", nargs="*", default=[])
    ap.add_argument("--variants", default=str(Path(__file__).with_name("variants.json")))
    ap.add_argument("--out", default=str(RESULTS))
    ns = ap.parse_args(argv)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    if ns.call:
        calls = [(c.split(":", 2)[0], c.split(":", 2)[1], Path(c.split(":", 2)[2])) for c in ns.call]
        runs, machines = load_runs(calls, set(ns.single_warmup))
        doc = build(runs, machines, Path(ns.variants))
        doc["findings"] = findings(doc)
        (out / "gpu-h100.json").write_text(json.dumps(doc, indent=1) + "\n")
    else:
        doc = json.loads((out / "gpu-h100.json").read_text())
        doc["findings"] = findings(doc)
    (out / "gpu-h100.md").write_text(markdown(doc))
    print("plot:", plot(doc, out / "gpu-h100.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
