"""Summary, markdown and plot of a routing benchmark (the CPU run's and the GPU machine's runs).

Each policy is compared with least_conn and with session_affinity measured in the same round of
the same workload (minutes apart, same machine state): per-round ratios, summarised by their
median, because absolute numbers drift between rounds more than policies differ.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from bench.routing.runner import ROUTER, split_variant, variant_order
from bench.routing.workloads import WORKLOADS

LC, SA, PA = "least_conn", "session_affinity", "prefix_affinity"
METRICS = ("tok_s", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_s", "hit_rate")
# The issue's goal for prefix_affinity (no headers), checked for it and every prefix_affinity~C@N:
# (workload, metric, baseline, bound, direction)
GOALS = [
    ("W1", "tok_s", SA, 0.97, ">="), ("W1", "hit_rate", SA, 0.97, ">="), ("W1", "ttft_p50_ms", LC, 1.0, "<="),
    ("W2", "tok_s", LC, 0.97, ">="), ("W2", "ttft_p99_ms", LC, 1.1, "<="),
    ("W3", "tok_s", LC, 0.97, ">="), ("W3", "ttft_p99_ms", LC, 1.1, "<="),
]
LABEL = {"tok_s": "output tok/s", "ttft_p50_ms": "TTFT p50", "ttft_p99_ms": "TTFT p99", "hit_rate": "hit rate",
         "e2e_p50_s": "e2e p50"}


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else float("nan")


def _ratios(runs: list[dict], workload: str, variant: str, baseline: str, metric: str) -> list[float]:
    base = {r["round"]: r for r in runs if r["workload"] == workload and r["variant"] == baseline and not r.get("error")}
    out = []
    for r in runs:
        if r["workload"] == workload and r["variant"] == variant and not r.get("error") and r["round"] in base:
            b = base[r["round"]][metric]
            if b and not math.isnan(b) and not math.isnan(r[metric]):
                out.append(r[metric] / b)
    return out


def summarize(runs: list[dict]) -> dict[str, list[dict]]:
    out = {}
    names = variant_order(r["variant"] for r in runs)
    for w in WORKLOADS:
        rows = []
        for v in names:
            mine = [r for r in runs if r["workload"] == w and r["variant"] == v]
            if not mine:
                continue
            good = [r for r in mine if not r.get("error")]
            row = {"variant": v, "runs": len(mine), "good_runs": len(good),
                   "errors_text": sorted({r["error"] for r in mine if r.get("error")})}
            if good:
                row.update({m: _median([r[m] for r in good]) for m in METRICS})
                row["tok_s_runs"] = [r["tok_s"] for r in sorted(good, key=lambda r: r["round"])]
                row["errors"] = sum(r["errors"] for r in good)
                row["requests"] = sum(r["requests"] for r in good)
                shares = [r["replica_share"] for r in good]
                row["replica_share"] = [statistics.mean(s[i] for s in shares) for i in range(len(shares[0]))]
                spills = [r["spill_over"]["share"] for r in good if r.get("spill_over")]
                row["spill_over"] = _median(spills) if spills else None
                row["prompt_tokens_mean"] = _median([r["prompt_tokens_mean"] for r in good])
                row["preemptions"] = sum(r.get("preemptions", 0) for r in good)
                for name, base in (("vs_lc", LC), ("vs_sa", SA)):
                    row[name] = {m: _median(_ratios(runs, w, v, base, m)) for m in METRICS}
            rows.append(row)
        if rows:
            out[w] = rows
    return out


def _is_pa(variant: str) -> bool:
    return split_variant(variant)[0] == PA


def goals(summary: dict[str, list[dict]]) -> list[dict]:
    """The goal's lines for prefix_affinity and each prefix_affinity~C, @N, ~C@N measured
    (prefix_affinity's lines even when it was not measured)."""
    measured = variant_order(r["variant"] for rows in summary.values() for r in rows if _is_pa(r["variant"]))
    out = []
    for variant in variant_order([PA, *measured]):
        for w, metric, base, bound, op in GOALS:
            row = next((r for r in summary.get(w, []) if r["variant"] == variant and r.get("good_runs")), None)
            value = row[("vs_sa" if base == SA else "vs_lc")][metric] if row else float("nan")
            met = None if math.isnan(value) else (value >= bound if op == ">=" else value <= bound)
            out.append({"variant": variant, "workload": w, "metric": metric, "baseline": base, "bound": bound,
                        "op": op, "ratio": value, "met": met})
    return out


# --- markdown ------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def table(rows: list[dict]) -> list[str]:
    lines = ["| policy | output tok/s | × least_conn | × session_aff. | TTFT p50 ms (× lc) | TTFT p99 ms (× lc) | "
             "e2e p50 s | hit rate (× sa) | errors / requests | replica share % | spill-over |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if not r.get("good_runs"):
            lines.append(f"| {r['variant']} | error | | | | | | | {r['runs']} runs failed | | |")
            continue
        lc, sa = r["vs_lc"], r["vs_sa"]
        lines.append(
            f"| {r['variant']} | {r['tok_s']:,.0f} ({', '.join(f'{t:,.0f}' for t in r['tok_s_runs'])}) | "
            f"{_f(lc['tok_s'], '.3f')} | {_f(sa['tok_s'], '.3f')} | {r['ttft_p50_ms']:,.0f} ({_f(lc['ttft_p50_ms'], '.2f')}) | "
            f"{r['ttft_p99_ms']:,.0f} ({_f(lc['ttft_p99_ms'], '.2f')}) | {r['e2e_p50_s']:.2f} | "
            f"{100 * r['hit_rate']:.1f}% ({_f(sa['hit_rate'], '.2f')}) | {r['errors']} / {r['requests']} | "
            f"{'/'.join(f'{100 * s:.0f}' for s in r['replica_share'])} | "
            f"{_spill(r)} |")
    return lines


def _spill(r: dict) -> str:
    return "—" if r["spill_over"] is None else f"{100 * r['spill_over']:.1f}%"


def goal_lines(gs: list[dict]) -> list[str]:
    out = []
    for g in gs:
        verdict = "not measured" if g["met"] is None else ("met" if g["met"] else "NOT met")
        out.append(f"- {g['workload']}: {g.get('variant', PA)}'s {LABEL[g['metric']]} {_f(g['ratio'], '.3f')}× {g['baseline']}'s "
                   f"(goal {g['op']} {g['bound']}×): **{verdict}**")
    return out


def write_markdown(result: dict, path: Path) -> None:
    m, z, s = result["machine"], result["sizes"], result["summary"]
    lines = [f"# Load-balancing policies on {result['card_title']}", "",
             f"Machine: {m['description']}; run {m['date']}.",
             f"vLLM {m['vllm']}, Nginx {m['nginx']} (Debian, njs {m.get('njs', '?')}), vllm-router {m.get('vllm_router', '?')}, "
             f"Python {m['python']}.", "",
             *result["setup"], "",
             f"Every request is a streamed `/v1/chat/completions` with `messages` (what OpenAI clients send), "
             f"`ignore_eos`, max_tokens {z['out_tokens'][0]}-{z['out_tokens'][1]}; closed loop with {z['concurrency']} "
             f"requests in flight; a session sends its next turn only after its previous answer arrived (prompt = all "
             f"earlier turns + the answers received). W1: {z['sessions']} live chat sessions, each with its own "
             f"~{z['doc_tokens']:,}-token document, {z['turns']} turns of ~{z['user_tokens']}-token questions. W2: one "
             f"~{z['shared_system_tokens']:,}-token system prompt shared by every request, then {z['sessions']} "
             f"conversations of their own (~{z['first_user_tokens']}-token first message, {z['w2_turns']} turns). W3: W1 plus one "
             f"hot conversation (same document, first question and answer; a different follow-up each time) sending "
             f"{100 * z['hot_share']:.0f}% of all requests.", "",
             f"Per variant run: every replica's prefix cache reset (`POST /reset_prefix_cache`) and the reset "
             f"proven (a probe's cached tokens 0), a fresh balancer, {z['warmup_s']:.0f} s warm-up, {z['measure_s']:.0f} s "
             f"measured. Output tok/s counts tokens that arrived in the window; TTFT (request sent → first content "
             f"token) and e2e are over the requests sent in it; hit rate = Δ`vllm:prefix_cache_hits_total` / "
             f"Δ`vllm:prefix_cache_queries_total` summed over the replicas; replica share from Δ`vllm:request_success_total`; "
             f"spill-over (Nginx access log, where it logs a route key) = share of a key's requests that went to a "
             f"replica other than that key's most frequent one. Values are medians over rounds (each round's value in "
             f"brackets for tok/s); `× least_conn`, `× session_aff.` are medians of per-round ratios against the policy "
             f"measured in the same round. Variants run in a rotating order per round.", ""]
    for w, rows in s.items():
        lines += [f"## {w}", "", *table(rows), ""]
        errs = [(r["variant"], e) for r in rows for e in r["errors_text"]]
        if errs:
            lines += ["Errors:", ""] + [f"- {v}: {e}" for v, e in errs] + [""]
    lines += ["## Against the goal", "",
              "W1: prefix_affinity (no headers) ≥ 0.97× session_affinity's output tok/s and hit rate, TTFT p50 ≤ "
              "least_conn's; W2 and W3: ≥ 0.97× least_conn's output tok/s and TTFT p99 ≤ 1.1× least_conn's. "
              "Checked for prefix_affinity and for each of its variants measured: prefix_affinity~C "
              "(`load_balancer.affinity_load_factor` C), @N (`load_balancer.affinity_bound` N), ~C@N (both).",
              "",
              *goal_lines(result["goals"]), ""]
    if result.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    lines += [f"Every run: `{path.stem}.json`; plot: `{path.stem}.png`. {result['reproduce']}", ""]
    path.write_text("\n".join(lines))


def plot(result: dict, path: Path) -> str | None:
    """One panel per workload (output tok/s per policy, each round a dot; hit rate and TTFT p50
    written beside the bar). Returns why there is no plot, if there is none."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed: no plot"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, axes = plt.subplots(1, len(s), figsize=(6 * len(s), 4.5), squeeze=False)
    for ax, (w, rows) in zip(axes[0], s.items()):
        y = list(range(len(rows)))
        vals = [r.get("tok_s", 0) if r.get("good_runs") else 0 for r in rows]
        colors = ["#C44E52" if r["variant"] == PA else "#DD8452" if _is_pa(r["variant"]) else "#8172B2" if r["variant"] == ROUTER else "#4C72B0" for r in rows]
        ax.barh(y, vals, color=colors, alpha=0.85)
        for i, r in enumerate(rows):
            if not r.get("good_runs"):
                ax.annotate("error", (0, i), xytext=(4, -3), textcoords="offset points", fontsize=8)
                continue
            ax.plot(r["tok_s_runs"], [i] * len(r["tok_s_runs"]), "o", color="black", markersize=3)
            ax.annotate(f"hit {100 * r['hit_rate']:.0f}%, TTFT p50 {r['ttft_p50_ms']:.0f} ms", (r["tok_s"], i),
                        xytext=(4, 6), textcoords="offset points", fontsize=7)
        ax.set_yticks(y, [r["variant"] for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, max(vals + [1]) * 1.45)
        ax.set_xlabel("output tokens/s (bar: median; dots: rounds)")
        ax.set_title(w)
    m = result["machine"]
    fig.suptitle(f"Load-balancing policies, 2 vLLM replicas — {m['description']}, {m['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_all(result: dict, out: Path, stem: str) -> None:
    """`stem`.json, .md, .png in `out` (summary and goals computed from the runs here)."""
    result["summary"] = summarize(result["runs"])
    result["goals"] = goals(result["summary"])
    why = plot(result, out / f"{stem}.png")
    if why:
        result.setdefault("notes", []).append(why)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_markdown(result, out / f"{stem}.md")
