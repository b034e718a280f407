"""The Kubernetes target's config: placement on node pools, and broken configs refused early.

Each broken config runs the real program under Pulumi's mocks and must fail with one ConfigError
naming the key, the value, what is allowed and the fix, before any resource is registered.
"""
from __future__ import annotations

import pytest

from fleet.config.schema import Model
from fleet.config.errors import ConfigError
from fleet.capacity.layout import machines_per_replica
from fleet.k8s.plan import build_k8s_plan
from support.refusals import assert_refused_before_any_resource
from support.stacks import raw_stack, run_raw
from test_k8s_stack_graph import of_kind, vllm_workloads

STACK = "prod-k8s"


# --- single node or several: tensor groups stay within a node, pipeline stages split evenly ---------

@pytest.mark.parametrize("gpus_per_node, tp, pp, nodes", [
    (8, 1, 1, 1),
    (8, 4, 1, 1),
    (8, 4, 2, 1),    # 8 GPUs fill one node: no network between the stages
    (8, 8, 2, 2),    # 16 GPUs: one stage per node
    (8, 8, 4, 4),
    (8, 4, 3, 3),    # 12 GPUs: 3 nodes of 4 (2 nodes would split a stage)
    (8, 4, 4, 2),    # 16 GPUs: 2 stages per node
    (4, 4, 4, 4),
    (8, 16, 1, None),  # a tensor group larger than a node
    (8, 8, 1, 1),
    (2, 1, 3, 3),
    (4, 2, 3, 3),   # 6 GPUs: 3 nodes of 2; 2 nodes would need half a stage each
])
def test_pods_per_replica_follow_the_node_size(gpus_per_node, tp, pp, nodes):
    model = Model(name="m", hf_id="org/m", tensor_parallel_size=tp, pipeline_parallel_size=pp)
    assert machines_per_replica(model, gpus_per_node) == nodes


def pools(*specs):
    return [{"name": n, "gpus_per_node": g, "gpu_model": gm, **extra} for n, g, gm, extra in specs]


def test_a_model_goes_to_the_pool_that_names_it_else_the_first_general_pool_it_fits_on_one_node():
    raw = raw_stack(STACK)
    raw["kubernetes"]["node_pools"] = pools(
        ("small", 4, "H100-80GB", {}),            # llama-405b would need 4 nodes here...
        ("big", 8, "H100-80GB", {}),              # ...and 2 here; qwen-72b fits one node only here
        ("l40s", 4, "L40S", {"models": ["r1-distill"]}),
    )
    raw["kubernetes"]["autoscaling"] = []
    plan = build_k8s_plan(_with(raw))
    got = {w.model.name: (w.pool.name, w.nodes, w.gpus_per_pod) for w in plan.workloads}
    assert got == {"llama-70b": ("small", 1, 4), "qwen-72b": ("big", 1, 8), "llama-405b": ("big", 2, 8),
                   "r1-distill": ("l40s", 1, 1)}


def test_a_pool_without_the_gpu_generation_a_model_needs_is_passed_over():
    raw = raw_stack(STACK)
    raw["kubernetes"]["node_pools"][1]["models"] = []
    raw["kubernetes"]["node_pools"].insert(0, {"name": "a100", "gpus_per_node": 8, "gpu_model": "A100-80GB"})
    plan = build_k8s_plan(_with(raw))
    by_model = {w.model.name: w.pool.name for w in plan.workloads}
    assert by_model["r1-distill"] == "h100"  # fp8 needs Ada or Hopper: not the A100 pool
    assert by_model["llama-70b"] == "a100"


def test_stack_prod_k8s_makes_one_model_genuinely_multi_node():
    assert {m: w["kind"] for m, w in vllm_workloads(STACK).items()} == {
        "llama-70b": "StatefulSet", "qwen-72b": "StatefulSet", "llama-405b": "LeaderWorkerSet", "r1-distill": "StatefulSet"}


def test_a_cluster_without_multi_node_models_and_monitoring_declares_no_custom_resources():
    raw = raw_stack(STACK)
    raw["models"] = [m for m in raw["models"] if m["name"] in ("llama-70b", "r1-distill")]
    raw["kubernetes"].update(install_lws=False, autoscaling=[])
    raw["monitoring"] = {"enabled": False}
    run = run_raw(STACK, raw)
    kinds = {r.typ for r in run.resources}
    assert not [k for k in kinds if k.split(":")[1].split("/")[0] in ("leaderworkerset.x-k8s.io", "monitoring.coreos.com", "keda.sh", "helm.sh")]
    assert set(of_kind(run, "StatefulSet")) == {"vllm-llama-70b", "vllm-r1-distill"}
    assert "grafana_admin_password" not in run.outputs


def test_an_existing_prometheus_operator_gets_monitors_and_rules_with_its_selector_labels_and_no_chart():
    raw = raw_stack(STACK)
    raw["kubernetes"]["monitoring"] = {"mode": "existing-operator", "namespace": "observability",
                                       "monitor_labels": {"release": "kube-prometheus-stack"},
                                       "prometheus_url": "http://prometheus-operated.observability.svc:9090"}
    run = run_raw(STACK, raw)
    assert not [r for r in run.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "kube-prometheus-stack"]
    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        for m in of_kind(run, kind).values():
            assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert of_kind(run, "ConfigMap")["prod-k8s-grafana-dashboards"]["metadata"]["namespace"] == "observability"
    trigger = of_kind(run, "ScaledObject")["vllm-llama-70b"]["spec"]["triggers"][0]
    assert trigger["metadata"]["serverAddress"] == "http://prometheus-operated.observability.svc:9090"
    assert "observability" not in of_kind(run, "Namespace")  # it exists already: not ours to create


def test_a_host_path_cache_mounts_the_node_directory_and_relaxes_pod_security_for_it():
    raw = raw_stack(STACK)
    raw["kubernetes"]["hf_cache"] = {"type": "host_path", "host_path": "/data/hf-cache"}
    run = run_raw(STACK, raw)
    assert not of_kind(run, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in vllm_workloads(run)["llama-70b"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["hf-cache"]["hostPath"] == {"path": "/data/hf-cache", "type": "DirectoryOrCreate"}
    ns = of_kind(run, "Namespace")["vllm-prod"]["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "privileged"  # baseline forbids hostPath volumes


def test_the_docker_stacks_still_need_their_hosts():
    raw = raw_stack("local")
    raw["hosts"] = []
    with pytest.raises(ConfigError, match="at least 1"):
        run_raw("local", raw)


def _with(raw: dict):
    from fleet.config.load import parse_config

    return parse_config({**raw, "api_key": True, "hf_token": True}, STACK)


# --- broken configs ------------------------------------------------------------------------------------

def k8s(raw):
    return raw["kubernetes"]


def pool(i):
    return lambda raw: raw["kubernetes"]["node_pools"][i]


def setk(path_fn, **kv):
    def mutate(raw):
        path_fn(raw).update(kv)
    return mutate


def add_model(**model):
    return lambda raw: raw["models"].append({"hf_id": "Qwen/Qwen2.5-0.5B-Instruct", **model})


CASES = [
    ("kubernetes target without its section", lambda r: r.pop("kubernetes"), "kubernetes", "needs a `kubernetes` section"),
    ("Docker hosts on the kubernetes target", lambda r: r.update(hosts=[{"name": "gpu-a", "gpus": 8, "gpu_model": "H100-80GB"}]),
     "hosts", "not used by the kubernetes target"),
    ("a Docker load balancer host", lambda r: r["load_balancer"].update(host="edge"), "load_balancer.host", "Docker-target key"),
    ("a Docker monitoring port", lambda r: r["monitoring"].update(prometheus_port=9091), "monitoring.prometheus_port",
     "Docker-target key"),
    ("no node pools", setk(k8s, node_pools=[]), "kubernetes.node_pools", "at least 1"),
    ("unknown pool key (typo)", setk(pool(0), gpus_per_nod=8), "kubernetes.node_pools[0].gpus_per_nod",
     "did you mean `gpus_per_node`"),
    ("unknown GPU model in a pool", setk(pool(0), gpu_model="H100"), "kubernetes.node_pools[0].gpu_model", "unknown GPU model"),
    ("duplicate pool names", setk(pool(1), name="h100"), "kubernetes.node_pools[0].name", "share this name"),
    ("a pool names an unknown model", setk(pool(1), models=["r1"]), "kubernetes.node_pools[1].models[0]", "no model has this name"),
    ("a model in two pools", setk(pool(0), models=["r1-distill", "llama-70b", "qwen-72b", "llama-405b"]),
     "kubernetes.node_pools[1].models[0]", "already assigned"),
    ("no pool serves a model", setk(pool(0), models=["llama-70b"]), "models[1].name", "no node pool serves"),
    ("a CPU model on the cluster", add_model(name="tiny", device="cpu"), "models[4].device", "GPU models only"),
    ("a model named like another's replica", add_model(name="llama-70b-1", served_model_name="x"), "models[4].name",
     "collides with model `llama-70b`'s replica addresses"),
    ("bad toleration operator", lambda r: r["kubernetes"]["node_pools"][0]["tolerations"][0].update(operator="In"),
     "kubernetes.node_pools[0].tolerations[0].operator", "'Equal'"),
    ("unknown service type", setk(k8s, service_type="Ingress"), "kubernetes.service_type", "'LoadBalancer'"),
    ("cache size not a quantity", lambda r: r["kubernetes"]["hf_cache"].update(size="4TB"), "kubernetes.hf_cache.size", "pattern"),
    ("host_path cache without the directory", lambda r: r["kubernetes"].update(hf_cache={"type": "host_path"}),
     "kubernetes.hf_cache.host_path", "needs the node directory"),
    ("pvc cache with a host_path", lambda r: r["kubernetes"]["hf_cache"].update(host_path="/data"),
     "kubernetes.hf_cache.host_path", "only read with type host_path"),
    ("autoscaling an unknown model", lambda r: r["kubernetes"]["autoscaling"][0].update(model="llama"),
     "kubernetes.autoscaling[0].model", "no model has this name"),
    ("autoscaling below the replicas", lambda r: r["kubernetes"]["autoscaling"][0].update(max_replicas=1),
     "kubernetes.autoscaling[0].max_replicas", "below the model's replicas"),
    ("autoscaling twice", lambda r: r["kubernetes"]["autoscaling"].append({"model": "llama-70b", "max_replicas": 3}),
     "kubernetes.autoscaling[1].model", "already autoscaled"),
    ("autoscaling without monitoring", lambda r: r["monitoring"].update(enabled=False), "kubernetes.autoscaling[0].model",
     "monitoring is disabled"),
    ("autoscaling with an existing Prometheus of unknown address",
     lambda r: r["kubernetes"].update(monitoring={"mode": "existing-operator"}), "kubernetes.monitoring.prometheus_url",
     "needs its URL"),
    ("more replicas than the pool's nodes hold", setk(pool(0), nodes=4), "kubernetes.node_pools[0].nodes", "cannot hold"),
    ("fp8 on a pool without fp8", setk(pool(1), gpu_model="A100-80GB"), "models[3].quantization", "has no fp8"),
    ("a kubernetes section on the docker target", lambda r: r.update(target="docker"), "kubernetes",
     "only read by the kubernetes target"),
    ("unknown target", lambda r: r.update(target="nomad"), "target", "'kubernetes'"),
]


@pytest.mark.parametrize("case, mutate, key, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_broken_kubernetes_config_fails_with_one_clear_error_before_any_resource(case, mutate, key, fragment):
    raw = raw_stack(STACK)
    mutate(raw)
    if case == "a kubernetes section on the docker target":
        raw["hosts"] = [{"name": "gpu-a", "gpus": 8, "gpu_model": "H100-80GB"}]
    assert_refused_before_any_resource(case, STACK, raw, key, fragment)


def test_a_tensor_group_larger_than_every_node_is_refused_by_the_placement():
    raw = raw_stack(STACK)
    raw["kubernetes"]["node_pools"][0]["gpus_per_node"] = 4
    with pytest.raises(ConfigError) as caught:
        build_k8s_plan(_with(raw))
    assert caught.value.key == "models[2].tensor_parallel_size"
    assert "tensor group is larger than a node" in str(caught.value)
