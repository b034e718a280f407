"""Runs on the lent GPU machine: each variant's real vLLM server, the load sweeps, the startup log.

    python3 -m bench.gpu.device_run --model-src .gpu/3/model --chunks .gpu/3 --budget-s 560 staging fp8 ...

Reads bench/gpu/variants.json (rendered here by `python -m bench.gpu.variants`), starts
`vllm serve` (as `python3 -m vllm.entrypoints.cli.main serve`, what the `vllm` script runs) with
each variant's arguments and environment, waits for /health, runs the sweeps, stops the server
by its process group and keeps everything under /tmp/bench_state (kept between calls on a warm
machine). After every variant it packs the state into $OUT/results.tgz, so a call cut off at its
limit still brings back what finished. A variant that would not finish inside --budget-s is
skipped and reported, to be run by the next call.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from bench.gpu import loadgen, startup_log

HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("BENCH_STATE", "/tmp/bench_state"))
MODEL_ROOT = Path("/tmp/bench_model")  # variants.json names this path (bench/gpu/variants.py)
WEIGHTS = Path("/tmp/bench_weights/model.safetensors")
SITE = os.environ.get("BENCH_SITE", "/tmp/site")  # the unpacked vLLM 0.26 bundle
PID_FILE = Path("/tmp/bench_server.pid")
PORT = 8000
LEVELS = [1, 16, 64, 128]
# Extra workloads: (workload, concurrencies) per variant, after the main server-defaults sweep.
# The shared-prefix workload runs wherever prefix caching is compared; greedy on the first staging run.
EXTRA = {
    "staging": [("greedy", [1, 16, 64]), ("shared-prefix", [16, 64])],
    "no-prefix-cache": [("shared-prefix", [16, 64])],
}
EXTRA_REPEAT = {"staging": [("shared-prefix", [16, 64])]}
EST_S = {"seed-bnb": 170}  # startup + sweeps, for the budget check
EST_DEFAULT_S = 120
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def sh(cmd: str, **kw) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw).stdout.strip()


def gpu_mem_used_mib() -> int:
    out = sh("nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits")
    return int(out.splitlines()[0]) if out else -1


def stop_server() -> None:
    if not PID_FILE.exists():
        return
    try:
        os.killpg(int(PID_FILE.read_text()), signal.SIGTERM)
    except (ProcessLookupError, ValueError):
        pass
    for _ in range(60):
        if gpu_mem_used_mib() < 3000:
            break
        time.sleep(1)
    else:
        try:
            os.killpg(int(PID_FILE.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
        time.sleep(3)
    PID_FILE.unlink(missing_ok=True)


def healthy() -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2)
        return True
    except Exception:
        return False


def machine_info() -> dict:
    env = {**os.environ, "PYTHONPATH": SITE}
    versions = subprocess.run(
        [sys.executable, "-c", "import json, vllm, torch, transformers; print(json.dumps({'vllm': vllm.__version__, "
         "'torch': torch.__version__, 'cuda': torch.version.cuda, 'transformers': transformers.__version__}))"],
        capture_output=True, text=True, env=env).stdout.strip().splitlines()
    q = sh("nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader")
    name, mem, driver, clock = ([x.strip() for x in q.splitlines()[0].split(",")] if q else ["?", "0 MiB", "?", "?"])
    return {"gpu": name, "gpu_memory_total_mib": int(mem.split()[0]), "driver": driver, "sm_clock_max": clock,
            "software": json.loads(versions[-1]) if versions else None, "python": sys.version.split()[0],
            "host_cpus": os.cpu_count()}


def prepare_model(name: str, src: Path, real_weights: bool) -> Path:
    d = MODEL_ROOT / name
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, d)
    if real_weights:
        if not WEIGHTS.exists():
            WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
            t = time.time()
            r = subprocess.run([sys.executable, str(HERE / "genweights.py"), str(WEIGHTS.parent)],
                               capture_output=True, text=True)
            log("genweights", round(time.time() - t, 1), "s", r.stdout.strip()[-200:], r.stderr.strip()[-500:])
        os.link(WEIGHTS, d / "model.safetensors")
    return d


def run_variant(v: dict, tag: str, src: Path, deadline: float, real_weights: bool) -> dict:
    args = list(v["device_serve_args"])
    if real_weights and "--load-format" in args:
        i = args.index("--load-format")
        del args[i:i + 2]
    prepare_model(v["name"], src, real_weights or v["needs_real_weights"])
    stop_server()
    logf = STATE / "logs" / f"server_{tag.replace('#', '_')}.log"
    env = {**os.environ, **v["device_env"], "PYTHONPATH": SITE, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *args]
    result = {"tag": tag, "variant": v["name"], "argv": ["vllm", "serve", *args],
              "env": {k: ("[bench key]" if k == "VLLM_API_KEY" else val) for k, val in v["device_env"].items()},
              "real_weights": real_weights or v["needs_real_weights"], "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ts = time.time()
    with open(logf, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    PID_FILE.write_text(str(proc.pid))
    up = False
    while time.time() < min(deadline, ts + 330):
        if healthy():
            up = True
            break
        if proc.poll() is not None:
            break
        time.sleep(1)
    result["startup_s"] = round(time.time() - ts, 1)
    result["up"] = up
    log(tag, "up" if up else "FAILED", result["startup_s"], "s")
    if up:
        result["gpu_mem_used_mib_idle"] = gpu_mem_used_mib()
        try:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5).read().decode()
            result["cache_config_info"] = [ln for ln in metrics.splitlines() if ln.startswith("vllm:cache_config_info")]
        except Exception as err:  # metrics are a nice-to-have
            result["cache_config_info"] = [f"error: {err}"]
        url = f"http://127.0.0.1:{PORT}/v1/completions"
        key = v["device_env"].get("VLLM_API_KEY")
        extra = EXTRA.get(tag) if "#" not in tag else EXTRA_REPEAT.get(v["name"], EXTRA.get(v["name"]))
        sweeps = [("server-defaults", LEVELS)] + (extra or [])
        result["sweeps"] = []
        for workload, levels in sweeps:
            if time.time() > deadline - 15:
                log(tag, "no time left for", workload)
                break
            res = asyncio.run(loadgen.sweep(url, v["served_model_name"], key, levels, workload=workload,
                                            log=lambda s: log(tag, s)))
            result["sweeps"].extend(res)
        result["gpu_mem_used_mib_after"] = gpu_mem_used_mib()
    stop_server()
    text = logf.read_text(errors="replace")
    result["startup"] = startup_log.parse(text)
    if not up:
        result["log_tail"] = text.splitlines()[-40:]
    return result


def pack(out: Path) -> None:
    tmp = out / "results.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as t:
        t.add(STATE, arcname="bench_state")
    tmp.rename(out / "results.tgz")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-src", default=".gpu/3/model")
    ap.add_argument("--chunks", nargs="*", default=[])
    ap.add_argument("--budget-s", type=float, default=560)
    ap.add_argument("tags", nargs="+", help="variant names; `name#2` runs a variant again")
    ns = ap.parse_args()
    deadline = T0 + ns.budget_s
    out = Path(os.environ.get("OUT", "/tmp/out"))
    out.mkdir(parents=True, exist_ok=True)
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    (STATE / "results").mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["bash", str(HERE / "unpack.sh"), *ns.chunks], capture_output=True, text=True,
                       env={**os.environ, "SITE": SITE})
    log("unpack rc", r.returncode, r.stdout[-300:], r.stderr[-300:])
    if r.returncode:
        return 1
    src = Path("/tmp/bench_model_src")
    if not src.exists():
        shutil.copytree(ns.model_src, src)
    info_path = STATE / "machine.json"
    if not info_path.exists():
        info_path.write_text(json.dumps(machine_info(), indent=1))
    log("machine", info_path.read_text().replace("\n", ""))
    variants = {v["name"]: v for v in json.loads((HERE / "variants.json").read_text())["variants"]}
    done = []
    try:
        for tag in ns.tags:
            v = variants[tag.split("#")[0]]
            if (STATE / "results" / f"{tag.replace('#', '_')}.json").exists():
                log(tag, "already measured on this machine")
                continue
            est = EST_S.get(v["name"], EST_DEFAULT_S)
            if time.time() + est > deadline:
                log(tag, "SKIPPED: not enough time left in this call")
                (STATE / "results" / f"skipped_{tag.replace('#', '_')}.txt").write_text(time.ctime())
                continue
            res = run_variant(v, tag, src, deadline, real_weights=False)
            if not res["up"] and not v["needs_real_weights"] and time.time() + est < deadline:
                (STATE / "results" / f"{tag.replace('#', '_')}_dummy_failed.json").write_text(json.dumps(res, indent=1))
                log(tag, "retrying with real (random) weights instead of --load-format dummy")
                res = run_variant(v, tag, src, deadline, real_weights=True)
            (STATE / "results" / f"{tag.replace('#', '_')}.json").write_text(json.dumps(res, indent=1))
            done.append(tag)
            pack(out)
            s = res.get("startup", {})
            log(tag, "weights", s.get("weights_gib"), "GiB kv", s.get("kv_cache_gib"), "GiB", s.get("kv_cache_tokens"),
                "tokens; conc", s.get("max_concurrency"))
    finally:
        stop_server()
        pack(out)
    for tag in done:
        res = json.loads((STATE / "results" / f"{tag.replace('#', '_')}.json").read_text())
        for sw in res.get("sweeps", []):
            print(f"{tag:16} {sw['workload']:15} c={sw['concurrency']:<4} tok/s={sw.get('output_tok_s')} "
                  f"ttft50={sw.get('ttft_p50_ms')} ttft99={sw.get('ttft_p99_ms')} itl50={sw.get('itl_p50_ms')} "
                  f"err={sw['errors']}")
    log("done", done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
