"""Each shipped stack's resource graph, as the real program declares it under Pulumi's mocks."""
from __future__ import annotations

import json

import pytest
import yaml

from support.stacks import STACKS, stack_run, stack_secrets
from support.real_tools import upstream_servers as servers_of
from fleet.config import images
from tools.mock_run import SECRET_MARK, is_secret
from pulumi.runtime import rpc

CONTAINER = "docker:index/container:Container"


def unwrap(value):
    return value["value"] if rpc.is_rpc_secret(value) else value


def labels(res) -> dict[str, str]:
    return {item["label"]: item["value"] for item in res.inputs.get("labels", [])}


def uploads(res) -> dict[str, str]:
    return {u["file"]: u["content"] for u in unwrap(res.inputs.get("uploads") or [])}


def env(res) -> dict[str, str]:
    return dict(e.split("=", 1) for e in unwrap(res.inputs.get("envs") or []))


def vllm_containers(stack: str) -> dict:
    return {n: r for n, r in stack_run(stack).containers().items() if labels(r)["vllm-fleet.role"].startswith("vllm")}


def gpu_ids(res) -> list[str]:
    reqs = res.inputs.get("deviceRequests") or []
    return [i for req in reqs for i in req.get("deviceIds", [])]


def rendered_nginx_conf(run) -> str:
    """The nginx.conf the one-shot config job writes into the running Nginx's volume."""
    return uploads(run.containers()["lb-config"])["/incoming/nginx.conf"]


def nginx_beside(run) -> dict[str, str]:
    """The other files the config job writes beside nginx.conf (fleet.js, models.json), by name."""
    return {path.removeprefix("/incoming/"): text for path, text in uploads(run.containers()["lb-config"]).items()
            if path != "/incoming/nginx.conf"}


def upstream_servers(stack: str) -> dict[str, list[str]]:
    return servers_of(rendered_nginx_conf(stack_run(stack)))


def scrape_groups(stack_or_run, job: str) -> list[dict]:
    """The targets of `job`, as the targets job writes them for Prometheus's file discovery."""
    run = stack_run(stack_or_run) if isinstance(stack_or_run, str) else stack_or_run
    prom = yaml.safe_load(uploads(run.named("monitoring-prometheus"))["/etc/prometheus/prometheus.yml"])
    job_cfg = next(j for j in prom["scrape_configs"] if j["job_name"] == job)
    assert job_cfg["file_sd_configs"] == [{"files": [f"targets/{job}.json"], "refresh_interval": "30s"}]
    return json.loads(uploads(run.named("monitoring-prometheus-targets"))[f"/incoming/{job}.json"])


def scrape_targets(stack_or_run, job: str) -> list[str]:
    return [t for group in scrape_groups(stack_or_run, job) for t in group["targets"]]


# --- which containers on which hosts, with which GPUs -------------------------------------------

EXPECTED_REPLICAS = {
    "local": {"local-qwen-0": [], "local-qwen-1": []},
    "staging": {"staging-r1-distill-0": ["0"], "staging-r1-distill-1": ["1"]},
    "prod": {
        "prod-llama-70b-0": ["0", "1", "2", "3"],
        "prod-llama-70b-1": ["0", "1", "2", "3"],
        "prod-qwen-72b-0-node0": ["4", "5", "6", "7"],
        "prod-qwen-72b-0-node1": ["4", "5", "6", "7"],
        "prod-r1-distill-0": ["0"],
        "prod-r1-distill-1": ["1"],
    },
}
EXPECTED_HOSTS = {
    "prod-llama-70b-0": "h100-a", "prod-llama-70b-1": "h100-b", "prod-qwen-72b-0-node0": "h100-a",
    "prod-qwen-72b-0-node1": "h100-b", "prod-r1-distill-0": "l40s-a", "prod-r1-distill-1": "l40s-a",
}


@pytest.mark.parametrize("stack", STACKS)
def test_each_replica_container_owns_exactly_its_gpus(stack):
    assert {n: gpu_ids(r) for n, r in vllm_containers(stack).items()} == EXPECTED_REPLICAS[stack]


def test_prod_replicas_run_on_the_hosts_the_placement_chose():
    run = stack_run("prod")
    providers = {r.name: r.inputs["host"] for r in run.of_type("pulumi:providers:docker")}
    assert providers["h100-a-docker"] == "ssh://deploy@h100-a.prod.internal.example"
    on = {name: res.provider_name.removesuffix("-docker") for name, res in vllm_containers("prod").items()}
    assert on == EXPECTED_HOSTS
    # One Docker provider per host that runs something.
    assert sorted(providers) == ["edge-docker", "h100-a-docker", "h100-b-docker", "l40s-a-docker"]


def test_a_pipeline_larger_than_a_host_spans_two_hosts_the_way_vllm_documents_multi_node():
    containers = vllm_containers("prod")
    node0, node1 = containers["prod-qwen-72b-0-node0"].inputs, containers["prod-qwen-72b-0-node1"].inputs
    for node, rank in ((node0, "0"), (node1, "1")):
        cmd = node["command"]
        assert node["networkMode"] == "host" and node["ipcMode"] == "host"
        assert cmd[cmd.index("--tensor-parallel-size") + 1] == "4"
        assert cmd[cmd.index("--pipeline-parallel-size") + 1] == "2"
        assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--node-rank") + 1] == rank
        assert cmd[cmd.index("--master-addr") + 1] == "10.30.1.11"
    assert "--headless" in node1["command"] and "--headless" not in node0["command"]
    assert env(containers["prod-qwen-72b-0-node1"])["VLLM_HOST_IP"] == "10.30.1.12"
    assert "healthcheck" not in node1 or node1.get("healthcheck") is None  # headless: no HTTP server


@pytest.mark.parametrize("name, expected", [
    ("prod-llama-70b-0", {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0"}),
    ("prod-qwen-72b-0-node0", {"NCCL_DEBUG": "WARN", "NCCL_SOCKET_IFNAME": "eth0", "VLLM_HOST_IP": "10.30.1.11"}),
])
def test_multi_gpu_replicas_get_the_nccl_environment_of_their_host(name, expected):
    e = env(vllm_containers("prod")[name])
    assert expected.items() <= e.items()
    assert "NCCL_P2P_DISABLE" not in e  # the H100 hosts have NVLink


def test_pcie_only_multi_gpu_replicas_disable_nccl_p2p():
    from support.stacks import raw_stack, run_raw

    raw = raw_stack("staging")
    raw["models"][0].update(replicas=1, tensor_parallel_size=2)
    run = run_raw("staging", raw)
    e = env(run.containers()["staging-r1-distill-0"])
    assert e["NCCL_P2P_DISABLE"] == "1" and e["NCCL_SOCKET_IFNAME"] == "eth0"
    assert gpu_ids(run.containers()["staging-r1-distill-0"]) == ["0", "1"]
    assert run.containers()["staging-r1-distill-0"].inputs["shmSize"] == 8192


def test_single_gpu_replicas_carry_no_nccl_settings():
    for res in vllm_containers("staging").values():
        assert not [k for k in env(res) if k.startswith("NCCL")]


def test_cpu_replicas_get_disjoint_cores_and_the_pinned_cpu_image():
    containers = vllm_containers("local")
    assert [env(r)["VLLM_CPU_OMP_THREADS_BIND"] for r in containers.values()] == ["0-1", "2-3"]
    run = stack_run("local")
    images_pulled = {r.inputs["name"] for r in run.of_type("docker:index/remoteImage:RemoteImage")}
    assert images.VLLM_CPU in images_pulled


@pytest.mark.parametrize("stack", STACKS)
def test_every_replica_is_health_checked_restarted_and_labelled(stack):
    for name, res in vllm_containers(stack).items():
        i = res.inputs
        assert i["restart"] == "unless-stopped" and i["mustRun"] is True
        assert labels(res)["managed-by"] == "vllm-fleet" and labels(res)["vllm-fleet.stack"] == stack
        if labels(res)["vllm-fleet.role"] == "vllm":
            assert "/health" in " ".join(i["healthcheck"]["tests"])
            assert i["wait"] is True and i["waitTimeout"] >= 600
        assert {m["target"] for m in i["mounts"]} == {"/root/.cache/huggingface"}
        assert i["entrypoints"] == ["vllm", "serve"]


@pytest.mark.parametrize("stack", STACKS)
def test_vllm_images_are_pinned_to_the_tested_vllm_release(stack):
    pulled = {r.inputs["name"] for r in stack_run(stack).of_type("docker:index/remoteImage:RemoteImage")}
    vllm_images = {i for i in pulled if "vllm" in i}
    assert vllm_images and all(i.endswith(f":v{images.VLLM_VERSION}") for i in vllm_images)
    assert all(images.is_pinned(i) for i in pulled)


# --- the load balancer and Prometheus follow the replicas ---------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_nginx_upstreams_are_exactly_the_replicas(stack):
    run = stack_run(stack)
    replicas = run.outputs["replicas"]
    expected = {}
    for name, info in replicas.items():
        model = name.rsplit("-", 1)[0]
        expected.setdefault("vllm_" + model.replace("-", "_"), []).append(info["endpoint"])
    assert upstream_servers(stack) == expected


@pytest.mark.parametrize("stack", STACKS)
def test_prometheus_scrapes_every_replica_and_nothing_else_as_vllm(stack):
    endpoints = sorted(info["endpoint"] for info in stack_run(stack).outputs["replicas"].values())
    targets = scrape_targets(stack, "vllm")
    if stack == "prod":  # Nginx and Prometheus share the edge host: both reach replicas the same way
        assert sorted(targets) == endpoints
    else:
        assert sorted(targets) == endpoints


def test_prod_reaches_remote_replicas_on_their_inventory_address_only():
    containers = vllm_containers("prod")
    ports = containers["prod-llama-70b-0"].inputs["ports"]
    assert ports == [{"internal": 8000, "external": 8000, "ip": "10.30.1.11", "protocol": "tcp"}] or \
        [(p["internal"], p["external"], p["ip"]) for p in ports] == [(8000, 8000, "10.30.1.11")]
    assert sorted(upstream_servers("prod")["vllm_llama_70b"]) == ["10.30.1.11:8000", "10.30.1.12:8000"]


def test_gpu_hosts_get_a_dcgm_exporter_scraped_by_prometheus():
    assert sorted(scrape_targets("prod", "dcgm")) == ["10.30.1.11:9400", "10.30.1.12:9400", "10.30.2.11:9400"]
    assert scrape_targets("staging", "dcgm") == ["staging-gpu-staging-dcgm-exporter:9400"]
    assert not [n for n in stack_run("local").containers() if "dcgm" in n]  # no GPUs, no exporter


def test_scaling_replicas_in_the_config_changes_upstreams_and_targets_together():
    from support.stacks import raw_stack, run_raw

    raw = raw_stack("local")
    raw["models"][0]["replicas"] = 3
    raw["hosts"][0]["cpus"] = 6
    run = run_raw("local", raw)
    conf = rendered_nginx_conf(run)
    assert servers_of(conf) == {"vllm_qwen": ["local-qwen-0:8000", "local-qwen-1:8000", "local-qwen-2:8000"]}
    assert [g["labels"]["replica"] for g in scrape_groups(run, "vllm")] == ["qwen-0", "qwen-1", "qwen-2"]


# --- secrets stay secret --------------------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_secret_environment_is_a_pulumi_secret_and_no_value_leaks_into_plain_inputs(stack):
    run = stack_run(stack)
    secrets = [v for v in stack_secrets(stack).values()]
    assert secrets
    for res in run.resources:
        plain = json.dumps(res.plain())
        for value in secrets:
            assert value not in plain, f"{res.typ} {res.name} carries a secret in plain text"
    for name, res in vllm_containers(stack).items():
        if labels(res)["vllm-fleet.role"] == "vllm":
            assert is_secret(res.inputs["envs"]), name
            assert "VLLM_API_KEY" in env(res)
            assert not any("api-key" in a for a in res.inputs["command"])  # never on the command line
    assert run.outputs["grafana_admin_password"] == SECRET_MARK


def test_grafana_password_is_generated_when_not_given_and_given_one_is_used():
    assert stack_run("local").of_type("random:index/randomPassword:RandomPassword")
    assert not stack_run("prod").of_type("random:index/randomPassword:RandomPassword")
    grafana = stack_run("prod").containers()["prod-grafana"]
    assert is_secret(grafana.inputs["envs"])
    assert env(grafana)["GF_SECURITY_ADMIN_PASSWORD"] == stack_secrets("prod")["vllm-fleet:grafana_admin_password"]


@pytest.mark.parametrize("stack", STACKS)
def test_metrics_and_admin_ports_are_not_published_to_the_world(stack):
    for name, res in stack_run(stack).containers().items():
        for p in res.inputs.get("ports") or []:
            if name.endswith("-nginx") and p["internal"] == 8080:
                continue  # the public API
            assert p["ip"] not in ("0.0.0.0", "::", None), f"{name} publishes {p} to every interface"


def test_readme_config_reference_matches_the_typed_config():
    from tools.config_reference import README, updated

    text = README.read_text()
    assert updated(text) == text, "README's config table is stale: run `python -m tools.config_reference`"


def test_the_seed_image_runtime_adds_its_opentelemetry_port_to_prometheus():
    from support.stacks import raw_stack, run_raw

    raw = raw_stack("prod")
    raw["models"][2].update(runtime="seed-otel", image="registry.example/vllm-otel:0.32.0")
    run = run_raw("prod", raw)
    assert scrape_targets(run, "vllm-otel") == ["10.30.2.11:9000", "10.30.2.11:9001"]
    server = run.containers()["prod-r1-distill-0"].inputs
    assert server["entrypoints"] == ["/workspace/run.sh"]
    assert {(p["internal"], p["external"]) for p in server["ports"]} == {(8000, 8000), (9464, 9000)}
