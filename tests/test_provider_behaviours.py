"""What a real `pulumi up` does with our resource graph, where the mocks accept anything.

Each test encodes a behaviour read in the pinned providers' or the engine's sources
(pulumi-docker 5.x = kreuzwerker/terraform-provider-docker v4.5; pulumi-kubernetes 4.34; the
Pulumi engine), named in the test, and checks the program against it.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading
import urllib.request

import pytest

from components.docker.container import go_duration
from fleet.config.load import parse_config
from fleet.docker.jobs import DONE_MARK
from fleet.docker.plan import build_plan
from fleet.ports import NGINX_UPSTREAM_KEEPALIVE_S, REPLICA_KEEPALIVE_S
from fleet.render.files import nginx_conf
from support.dataplane import adapt_nginx_conf, nginx_runtime_dir, write_nginx_files
from support.engine import CONTAINER, deleted_while_replacing, input_dependents
from support.jobs import start_job, wait_job
from support.processes import free_port, start, stop
from support.provider_schema import provider_value
from support.real_tools import promtool, require_nginx, write_prometheus_tree
from support.stacks import raw_stack, require_tool, run_raw, stack_run
from test_k8s_stack_graph import K8S_STACKS, k8s_run
from test_rollouts import scaled
from test_stack_graphs import env, labels, uploads

DOCKER_STACKS = ["local", "staging", "prod"]
IMAGE = "docker:index/remoteImage:RemoteImage"
SECONDS = {"s": 1, "m": 60, "h": 3600}


def seconds(duration: str) -> float:
    """A duration written as h/m/s parts ("720s", "10m0s", "1h30m") in seconds."""
    parts = re.findall(r"(\d+)([smh])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * SECONDS[u] for n, u in parts)


def role(res) -> str:
    return labels(res)["vllm-fleet.role"]


# --- 1. waits are bounded by the provider's create timeout (20 min unless set) --------------------


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_every_wait_fits_in_its_resources_timeouts(stack):
    """docker_container: Create (health wait included) and Delete (stop grace included) run under
    timeouts that default to 20 minutes; so does RemoteImage's pull."""
    run = stack_run(stack)
    for name, res in run.containers().items():
        assert res.create_timeout and res.delete_timeout, f"{name}: no custom timeouts, the provider's 20 min apply"
        if res.inputs.get("wait"):
            assert seconds(res.create_timeout) > res.inputs["waitTimeout"], name
        assert seconds(res.delete_timeout) > res.inputs["destroyGraceSeconds"], name
    for image in run.of_type(IMAGE):
        assert seconds(image.create_timeout) >= 3600, image.name


def test_a_slow_first_load_gets_the_models_own_start_budget_on_both_targets():
    raw = raw_stack("prod")
    raw["models"][0]["start_timeout_s"] = 7200  # a 400 GB download
    model = raw["models"][0]["name"]
    run = run_raw("prod", raw)
    server = run.named(f"{model}-0-server")
    assert server.inputs["waitTimeout"] == 7200 and seconds(server.create_timeout) > 7200
    assert server.inputs["healthcheck"]["startPeriod"] == "2h0m0s"
    default = run.named(f"{raw['models'][1]['name']}-0-server")
    assert default.inputs["waitTimeout"] == 1800  # 30 min unless the model says otherwise
    k8s = k8s_run("prod-k8s")
    for res in k8s.resources:
        if res.typ.endswith(("StatefulSet", "LeaderWorkerSet")):
            replicas = res.inputs["spec"].get("replicas") or res.inputs["spec"]["replicas"]
            # A rolling update starts the replicas one after another: each may take its whole budget.
            assert seconds(res.update_timeout) >= replicas * 1800 and seconds(res.create_timeout) >= 1800, res.name


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_each_hosts_image_pulls_get_that_hosts_pull_timeout(stack):
    raw = raw_stack(stack)
    raw["hosts"][0]["pull_timeout_s"] = 10800
    run = run_raw(stack, raw)
    first = raw["hosts"][0]["name"]
    for image in run.of_type(IMAGE):
        expected = 10800 if image.name.startswith(f"{first}-image-") else 3600
        assert seconds(image.create_timeout) == expected, image.name


# --- 2. a failed job fails `pulumi up`, and the next `up` runs it again -------------------------


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_no_container_relies_on_attach_and_every_job_is_waited_for(stack):
    """`attach` waits for the container to stop and discards its exit status."""
    for name, res in stack_run(stack).containers().items():
        assert not res.inputs.get("attach"), f"{name}: with attach a failed job counts as created"
        # A create that failed is kept by the provider; replace_on_changes makes the engine replace
        # that failed resource on the next `up` (an init error counts as a change) instead of accepting it.
        assert res.replace_on_changes == ["*"], name
        if "name" not in res.inputs:  # a job
            assert res.inputs["wait"] is True and res.inputs["healthcheck"]["tests"] == ["CMD-SHELL", f"test -f {DONE_MARK}"], name
            assert res.inputs["restart"] == "no" and res.inputs["mustRun"] is True, name


def run_writer(spec, workdir, files: dict[str, str], target) -> tuple[bool, int, str]:
    """A file writer job's own script on this machine, its uploads and target directory local."""
    incoming = workdir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (incoming / name).write_text(text)
    proc, mark, log = start_job(spec, os.environ, workdir,
                                paths={"/incoming/": f"{incoming}/", spec.mounts[0].target + "/": f"{target}/"})
    passed = wait_job(proc, mark, timeout=10)
    return passed, proc.returncode, log.read_text()


def test_a_writer_job_that_cannot_write_fails_and_leaves_no_success_mark(tmp_path):
    spec = build_plan(parse_config(raw_stack("local"), "local")).service("nginx-config")
    target = tmp_path / "conf"
    target.mkdir()
    passed, code, log = run_writer(spec, tmp_path / "ok", {"nginx.conf": "events {}\n"}, target)
    assert passed and code == 0 and (target / "nginx.conf").read_text() == "events {}\n", log
    missing = tmp_path / "no-such-volume"
    passed, code, log = run_writer(spec, tmp_path / "bad", {"nginx.conf": "events {}\n"}, missing)
    assert not passed and code != 0 and "job failed" in log, log


# --- 3 and 4: what stays up while replicas are replaced -----------------------------------------


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_replacing_every_replica_never_takes_down_nginx_or_monitoring(stack):
    """The engine deletes, ahead of a delete-before-replace resource, every resource with an input
    that uses its outputs (transitively), and recreates them after it: tests/support/engine.py."""
    run = stack_run(stack)
    replicas = [r for r in run.of_type(CONTAINER) if role(r) in ("vllm", "vllm-worker")]
    assert replicas
    must_stay = {r.urn: r.name for r in run.of_type(CONTAINER)
                 if role(r) in ("nginx", "prometheus", "grafana", "nginx-exporter", "dcgm-exporter")}
    for replica in replicas:
        down = deleted_while_replacing(run, replica)
        assert not down & set(must_stay), f"replacing {replica.name} takes down {[must_stay[u] for u in down & set(must_stay)]}"
        siblings = {r.urn for r in replicas if r.urn != replica.urn and labels(r)["vllm-fleet.replica"] != labels(replica)["vllm-fleet.replica"]}
        assert not down & siblings, f"replacing {replica.name} takes another replica down with it"


def test_the_graph_check_sees_a_cascade_when_there_is_one():
    """The engine model itself: an input that uses a replica's outputs is deleted with it."""
    run = stack_run("prod")
    server = run.named("llama-70b-0-server")
    down = deleted_while_replacing(run, server)
    assert run.named("lb-config").urn in down  # the nginx.conf writer reads the replicas' endpoints
    assert run.named("llama-70b-0-rollout-gate").urn in down  # its trigger is the server's id
    assert input_dependents(run, server.urn)


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_no_monitoring_container_input_uses_a_replicas_outputs(stack):
    run = stack_run(stack)
    replica_urns = {r.urn for r in run.of_type(CONTAINER) if role(r) in ("vllm", "vllm-worker")}
    for res in run.of_type(CONTAINER):
        if role(res) in ("prometheus", "prometheus-targets", "grafana"):
            used = {u for urns in res.property_dependencies.values() for u in urns}
            assert not used & replica_urns, res.name


def test_scaling_changes_only_the_targets_job_never_prometheus(tmp_path):
    require_tool("promtool")
    two, three = scaled(2), scaled(3)
    prom2, prom3 = two.named("monitoring-prometheus"), three.named("monitoring-prometheus")
    assert prom2.inputs == prom3.inputs  # identical inputs: nothing to replace
    targets2, targets3 = uploads(two.named("monitoring-prometheus-targets")), uploads(three.named("monitoring-prometheus-targets"))
    vllm3 = json.loads(targets3["/incoming/vllm.json"])
    assert len(json.loads(targets2["/incoming/vllm.json"])) == 2 and len(vllm3) == 3
    assert vllm3[2] == {"targets": ["local-qwen-2:8000"], "labels": {"host": "local", "model": "qwen", "replica": "qwen-2"}}
    # Prometheus reads them from the volume the job writes: promtool checks the config with them in place.
    files = {**uploads(prom3), **{f"/etc/prometheus/targets/{p.rsplit('/', 1)[1]}": t for p, t in targets3.items()}}
    config = write_prometheus_tree(files, tmp_path)
    result = promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {m["target"] for m in prom3.inputs["mounts"]} >= {"/etc/prometheus/targets"}


# --- 5. Kubernetes: what outlives the stack is adopted, never recreated -------------------------


@pytest.mark.parametrize("stack", K8S_STACKS)
def test_namespaces_and_the_model_cache_survive_destroy_and_are_adopted(stack):
    """pulumi-kubernetes >= 4.29 fails the create of an existing object (AlreadyExists) unless its
    provider upserts; deleting a Namespace deletes everything in it, retained objects included."""
    run = k8s_run(stack)
    providers = {r.urn: r for r in run.of_type("pulumi:providers:kubernetes")}
    kept = [r for r in run.resources if r.typ in ("kubernetes:core/v1:Namespace", "kubernetes:core/v1:PersistentVolumeClaim")]
    assert kept
    for res in kept:
        provider = providers[res.provider.rsplit("::", 1)[0]]
        assert provider_input(provider, "upsertExistingObjects") is True, res.name
        assert res.retain_on_delete, f"{res.name}: destroy would delete it (and, for a namespace, the cache in it)"
    others = [r for r in run.resources if r.typ.startswith("kubernetes:") and r not in kept]
    for res in others:  # anything else that already exists is a collision, and stays an error
        provider = providers[res.provider.rsplit("::", 1)[0]]
        assert not provider_input(provider, "upsertExistingObjects"), res.name


# --- 6. durations in the form the provider reads back --------------------------------------------


@pytest.mark.parametrize("seconds_, text", [(0, "0s"), (5, "5s"), (59, "59s"), (60, "1m0s"), (90, "1m30s"),
                                            (600, "10m0s"), (3599, "59m59s"), (3600, "1h0m0s"), (7265, "2h1m5s")])
def test_go_duration_is_gos_own_string_form(seconds_, text):
    assert go_duration(seconds_) == text


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_every_healthcheck_duration_round_trips(stack):
    """The provider parses a healthcheck duration and stores Go's `Duration.String()`: "600s"
    comes back as "10m0s", a diff on every refreshed preview."""
    for name, res in stack_run(stack).containers().items():
        hc = res.inputs.get("healthcheck")
        for key in ("interval", "timeout", "startPeriod", "startInterval"):
            if hc and key in hc:
                assert hc[key] == go_duration(int(seconds(hc[key]))), f"{name}.{key} = {hc[key]}"


# --- 7. ssh:// hosts share one SSH connection ---------------------------------------------------


def provider_input(res, key):
    return provider_value(res.inputs.get(key))


def ssh_stack(ssh_opts):
    raw = raw_stack("staging")
    raw["hosts"][0]["docker_host"] = "ssh://deploy@gpu-a.example"
    raw["hosts"][0]["ssh_opts"] = ssh_opts
    return raw, run_raw("staging", raw)


def test_ssh_hosts_multiplex_one_connection_unless_told_otherwise():
    raw, run = ssh_stack(["-i", "/keys/deploy"])
    provider = run.named(f"{raw['hosts'][0]['name']}-docker")
    opts = provider_input(provider, "sshOpts")
    assert opts[:6] == ["-o", "ControlMaster=auto", "-o", "ControlPath=~/.ssh/vllm-fleet-%C", "-o", "ControlPersist=10m"]
    assert opts[6:] == ["-i", "/keys/deploy"]
    raw, run = ssh_stack(["-o", "ControlPath=/run/ssh/%C", "-o", "ControlMaster=auto"])
    assert provider_input(run.named(f"{raw['hosts'][0]['name']}-docker"), "sshOpts") == ["-o", "ControlPath=/run/ssh/%C", "-o", "ControlMaster=auto"]
    for res in stack_run("local").of_type("pulumi:providers:docker"):  # unix:// has no ssh
        assert "sshOpts" not in res.inputs


# --- 8. Nginx closes idle upstream connections first, and keeps request bodies in memory --------


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_nginx_closes_idle_upstream_connections_before_the_replicas_do(stack):
    run = stack_run(stack)
    conf = uploads(run.named("lb-config"))["/incoming/nginx.conf"]
    timeouts = re.findall(r"^\s*keepalive_timeout (\d+)s;", conf, re.M)
    assert timeouts and {int(t) for t in timeouts} == {NGINX_UPSTREAM_KEEPALIVE_S}
    for name, res in run.containers().items():
        if role(res) == "vllm":
            assert int(env(res)["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) == REPLICA_KEEPALIVE_S > NGINX_UPSTREAM_KEEPALIVE_S, name


def test_vllm_reads_the_keepalive_variable_the_program_sets():
    import vllm.envs

    assert "VLLM_HTTP_TIMEOUT_KEEP_ALIVE" in vllm.envs.environment_variables
    os.environ["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = str(REPLICA_KEEPALIVE_S)
    try:
        assert vllm.envs.environment_variables["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]() == REPLICA_KEEPALIVE_S
    finally:
        del os.environ["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]


def test_kubernetes_replicas_get_the_same_keepalive():
    for name, w in ((r.name, r) for r in k8s_run("prod-k8s").resources if r.typ.endswith("StatefulSet")):
        containers = w.inputs["spec"]["template"]["spec"]["containers"]
        vllm = next(c for c in containers if c["name"] == "vllm")
        values = {e["name"]: e.get("value") for e in vllm["env"]}
        assert values.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE") == str(REPLICA_KEEPALIVE_S), name


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = json.dumps({"received": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_real_nginx_keeps_a_long_prompt_in_memory(tmp_path):
    """A request body over 16 KB (Nginx's default buffer) went to a temporary file first."""
    nginx = require_nginx()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    cfg = parse_config(raw_stack("local"), "local")
    runtime = nginx_runtime_dir()
    port = free_port()
    upstreams = {cfg.models[0].name: [f"127.0.0.1:{upstream.server_port}"]}
    conf = adapt_nginx_conf(nginx_conf(cfg, upstreams), listen_port=port, status_port=free_port(), runtime_dir=runtime)
    (runtime / "nginx.conf").write_text(conf)
    (runtime / "nginx.conf").chmod(0o644)
    write_nginx_files(cfg, runtime, upstreams)
    proc = start([nginx, "-p", str(runtime), "-c", str(runtime / "nginx.conf"), "-g", "daemon off;"],
                 env=dict(os.environ), log_path=tmp_path / "nginx.log")
    try:
        body = json.dumps({"model": cfg.models[0].client_model_name, "prompt": "x" * 2_000_000}).encode()  # ~500k tokens
        for _ in range(100):
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert json.loads(response.read()) == {"received": len(body)}
                break
            except (ConnectionError, urllib.error.URLError):
                threading.Event().wait(0.1)
        else:
            raise AssertionError((tmp_path / "nginx.log").read_text())
    finally:
        stop(proc, timeout=10)
        upstream.shutdown()
    log = (tmp_path / "nginx.log").read_text()
    assert "buffered to a temporary file" not in log, log
    shutil.rmtree(runtime, ignore_errors=True)
