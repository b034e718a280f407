"""The Kubernetes stack's resource graph, as the real program declares it under Pulumi's mocks.

Every assertion reads the objects the program registered (its recorded inputs, turned into the
manifests the cluster would receive), never the planner's own data.
"""
from __future__ import annotations

import functools
import json
import re

import pytest
import yaml

from fleet.render.files import alert_rules
from fleet.k8s.plan import build_k8s_plan
from tools.mock_run import MockRun, is_secret, read_stack_file, run_program, stack_config
from tools.offline_render import k8s_manifests
from fleet.render.templates import static
from support.stacks import raw_stack, run_raw, stack_run
from support.real_tools import upstream_servers

# Kubernetes stacks are kept apart from support.stacks.STACKS: those tests are about Docker containers.
K8S_STACKS = ("prod-k8s",)
K8S_PASSPHRASES = {"prod-k8s": "vllm-fleet-example-only"}
HELM = "kubernetes:helm.sh/v3:Release"


@functools.lru_cache(maxsize=None)
def k8s_run(stack: str) -> MockRun:
    config, secret_keys, _ = stack_config(read_stack_file(stack), K8S_PASSPHRASES[stack])
    return run_program(stack, config, secret_keys)


@functools.lru_cache(maxsize=None)
def k8s_secrets(stack: str) -> dict[str, str]:
    return stack_config(read_stack_file(stack), K8S_PASSPHRASES[stack])[2]


def manifests(stack_or_run) -> list[dict]:
    run = k8s_run(stack_or_run) if isinstance(stack_or_run, str) else stack_or_run
    return k8s_manifests(run)


def of_kind(stack_or_run, kind: str) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in manifests(stack_or_run) if m["kind"] == kind}


def pod_templates(m: dict) -> dict[str, dict]:
    """role -> pod template of a StatefulSet, Deployment, DaemonSet or LeaderWorkerSet."""
    if m["kind"] == "LeaderWorkerSet":
        lwt = m["spec"]["leaderWorkerTemplate"]
        return {"leader": lwt["leaderTemplate"], "worker": lwt["workerTemplate"]}
    return {"server": m["spec"]["template"]}


def vllm_workloads(stack_or_run) -> dict[str, dict]:
    """model name -> its StatefulSet or LeaderWorkerSet."""
    out = {}
    for kind in ("StatefulSet", "LeaderWorkerSet"):
        for name, m in of_kind(stack_or_run, kind).items():
            out[m["metadata"]["labels"]["vllm-fleet/model"]] = m
    return out


def container(template: dict) -> dict:
    return template["spec"]["containers"][0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def nginx_conf(stack_or_run) -> str:
    return of_kind(stack_or_run, "ConfigMap")["vllm-fleet-nginx"]["data"]["nginx.conf"]


# --- which workloads, on which pools, with which GPUs ----------------------------------------------

EXPECTED = {  # model: (kind, pods per replica, GPUs per pod, pool, replicas declared)
    "llama-70b": ("StatefulSet", 1, 4, "h100", 2),
    "qwen-72b": ("StatefulSet", 1, 8, "h100", 1),
    "llama-405b": ("LeaderWorkerSet", 2, 8, "h100", 1),
    "r1-distill": ("StatefulSet", 1, 1, "l40s", 2),
}
POOL_SELECTORS = {"h100": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "l40s": {"nvidia.com/gpu.product": "NVIDIA-L40S"}}


def test_each_model_runs_as_the_workload_its_size_needs():
    got = {}
    for model, m in vllm_workloads("prod-k8s").items():
        pods = m["spec"]["leaderWorkerTemplate"]["size"] if m["kind"] == "LeaderWorkerSet" else 1
        template = next(iter(pod_templates(m).values()))
        gpus = int(container(template)["resources"]["limits"]["nvidia.com/gpu"])
        pool = next(p for p, sel in POOL_SELECTORS.items() if template["spec"]["nodeSelector"] == sel)
        got[model] = (m["kind"], pods, gpus, pool, m["spec"]["replicas"])
    assert got == EXPECTED


def test_a_model_that_fits_one_node_stays_on_one_node_even_with_pipeline_stages():
    qwen = vllm_workloads("prod-k8s")["qwen-72b"]
    args = container(qwen["spec"]["template"])["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4" and args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert "--nnodes" not in args and "--headless" not in args


@pytest.mark.parametrize("model", list(EXPECTED))
def test_gpu_requests_equal_limits_and_pods_go_to_their_pool_with_its_tolerations(model):
    m = vllm_workloads("prod-k8s")[model]
    for template in pod_templates(m).values():
        res = container(template)["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == str(EXPECTED[model][2])
        assert res["requests"]["memory"] == res["limits"]["memory"]  # memory is never overcommitted
        assert template["spec"]["nodeSelector"] == POOL_SELECTORS[EXPECTED[model][3]]
        assert template["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_a_replica_larger_than_a_node_is_a_leaderworkerset_group_the_way_vllm_documents_it():
    lws = vllm_workloads("prod-k8s")["llama-405b"]
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = container(lwt["leaderTemplate"]), container(lwt["workerTemplate"])
    for c, rank in ((leader, "0"), (worker, "$(LWS_WORKER_INDEX)")):
        a = c["args"]
        assert c["command"] == ["vllm", "serve"]
        assert a[a.index("--tensor-parallel-size") + 1] == "8" and a[a.index("--pipeline-parallel-size") + 1] == "2"
        assert a[a.index("--nnodes") + 1] == "2" and a[a.index("--node-rank") + 1] == rank
        assert a[a.index("--master-addr") + 1] == "$(LWS_LEADER_ADDRESS)"
        assert env_of(c)["VLLM_HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert env_of(c)["NCCL_SOCKET_IFNAME"]["value"] == "eth0"
        assert "NCCL_P2P_DISABLE" not in env_of(c)  # the H100 pool has NVLink
    assert "--headless" in worker["args"] and "--headless" not in leader["args"]
    assert "VLLM_API_KEY" not in env_of(worker) and "HF_TOKEN" in env_of(worker)  # workers serve no API


def test_command_lines_are_the_same_as_on_the_docker_target():
    """Same config vocabulary, same argv builder: a model that fits one machine on both targets
    gets the identical `vllm serve` command line."""
    docker = stack_run("prod").containers()
    for model in ("llama-70b", "r1-distill"):
        k8s = container(vllm_workloads("prod-k8s")[model]["spec"]["template"])
        assert k8s["command"] == docker[f"prod-{model}-0"].inputs["entrypoints"]
        assert k8s["args"] == docker[f"prod-{model}-0"].inputs["command"]


@pytest.mark.parametrize("model", list(EXPECTED))
def test_every_vllm_server_has_startup_readiness_and_liveness_probes_on_health(model):
    for role, template in pod_templates(vllm_workloads("prod-k8s")[model]).items():
        c = container(template)
        if role == "worker":  # headless: no HTTP server to probe; a dead worker recreates its group
            assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(c)
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
        # Loading the weights may take long; the startup probe allows it, the liveness probe then watches.
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800
        assert c["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}


@pytest.mark.parametrize("model", list(EXPECTED))
def test_every_vllm_pod_has_memory_backed_shm_and_the_shared_hf_cache(model):
    claims = of_kind("prod-k8s", "PersistentVolumeClaim")
    assert claims["hf-cache"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["hf-cache"]["spec"]["storageClassName"] == "nfs-rwx"
    for template in pod_templates(vllm_workloads("prod-k8s")[model]).values():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8192Mi"}
        assert volumes["hf-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache"}
        mounts = {v["name"]: v["mountPath"] for v in container(template)["volumeMounts"]}
        assert mounts == {"dshm": "/dev/shm", "hf-cache": "/root/.cache/huggingface"}


# --- rollouts and disruptions never take the last ready replica away ------------------------------

def test_statefulsets_roll_one_ready_pod_at_a_time():
    for model, m in vllm_workloads("prod-k8s").items():
        if m["kind"] != "StatefulSet":
            continue
        spec = m["spec"]
        assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "partition": 0}}
        assert spec["minReadySeconds"] >= 30
        assert spec["podManagementPolicy"] == "Parallel"


def test_vllm_pods_drain_within_their_grace_and_stay_ready_past_nginx_bench():
    for model, m in vllm_workloads("prod-k8s").items():
        for template in pod_templates(m).values():
            c = container(template)
            if c["name"] != "vllm":
                continue
            drain = c["args"][c["args"].index("--shutdown-timeout") + 1]
            assert drain == "60", model  # vLLM finishes requests in flight on SIGTERM
            # preStop sleep, then the drain, then teardown: all before the kubelet's SIGKILL
            assert template["spec"]["terminationGracePeriodSeconds"] == 10 + 60 + 30, model
            assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
        if m["kind"] == "StatefulSet":
            assert m["spec"]["minReadySeconds"] >= 10 + 2  # load_balancer.fail_timeout_s + margin (fleet/rollout.py)


def test_a_single_group_rolls_by_surge_so_the_old_group_serves_until_the_new_one_is_ready():
    rollout = vllm_workloads("prod-k8s")["llama-405b"]["spec"]["rolloutStrategy"]
    assert rollout == {"type": "RollingUpdate", "rollingUpdateConfiguration": {"maxUnavailable": 0, "maxSurge": 1}}


def test_nginx_rolls_without_losing_capacity_and_keeps_a_pod_through_drains():
    nginx = of_kind("prod-k8s", "Deployment")["vllm-fleet-nginx"]
    assert nginx["spec"]["replicas"] == 2
    assert nginx["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert of_kind("prod-k8s", "PodDisruptionBudget")["vllm-fleet-nginx"]["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("model", list(EXPECTED))
def test_every_model_has_a_disruption_budget_of_one_pod_that_selects_all_its_pods(model):
    pdb = of_kind("prod-k8s", "PodDisruptionBudget")[f"vllm-{model}"]
    assert pdb["spec"]["maxUnavailable"] == 1
    for template in pod_templates(vllm_workloads("prod-k8s")[model]).values():
        assert pdb["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()


# --- secrets stay secret ----------------------------------------------------------------------------

def test_secrets_reach_the_pods_only_through_secret_key_refs():
    secret_vars = {"VLLM_API_KEY": "api_key", "HF_TOKEN": "hf_token"}
    seen = set()
    for m in vllm_workloads("prod-k8s").values():
        for template in pod_templates(m).values():
            for name, e in env_of(container(template)).items():
                if name in secret_vars:
                    assert "value" not in e and e["valueFrom"] == {
                        "secretKeyRef": {"name": "vllm-fleet-secrets", "key": secret_vars[name]}}
                    seen.add(name)
            assert not any("api-key" in a for a in container(template)["args"])  # never on the command line
    assert seen == set(secret_vars)


def test_kubernetes_secrets_are_pulumi_secrets_and_no_secret_appears_in_any_plain_input():
    run = k8s_run("prod-k8s")
    secrets = list(k8s_secrets("prod-k8s").values())
    assert len(secrets) == 3
    for res in run.resources:
        plain = json.dumps(res.plain())
        for value in secrets:
            assert value not in plain, f"{res.typ} {res.name} carries a secret in plain text"
    stored = {r.inputs["metadata"]["name"]: r for r in run.of_type("kubernetes:core/v1:Secret")}
    assert set(stored) == {"vllm-fleet-secrets", "prod-k8s-grafana-admin"}
    for res in stored.values():
        assert is_secret(res.inputs["stringData"])
    assert stored["vllm-fleet-secrets"].inputs["stringData"]["value"] == {
        "api_key": k8s_secrets("prod-k8s")["vllm-fleet:api_key"], "hf_token": k8s_secrets("prod-k8s")["vllm-fleet:hf_token"]}
    assert run.outputs["grafana_admin_password"] == "[secret]"


# --- Nginx's upstreams are exactly the replicas --------------------------------------------------------

def test_nginx_upstreams_are_exactly_the_replicas_and_each_address_reaches_only_its_replica():
    run = k8s_run("prod-k8s")
    expected: dict[str, list[str]] = {}
    for name, info in run.outputs["replicas"].items():
        expected.setdefault("vllm_" + name.rsplit("-", 1)[0].replace("-", "_"), []).append(info["endpoint"])
    assert upstream_servers(nginx_conf(run)) == expected
    services = of_kind(run, "Service")
    for name, info in run.outputs["replicas"].items():
        service = info["endpoint"].split(".")[0]
        assert info["endpoint"] == f"{service}.vllm-prod.svc.cluster.local:8000"
        selector = services[service]["spec"]["selector"]
        if info["kind"] == "StatefulSet":
            assert selector == {"statefulset.kubernetes.io/pod-name": f"vllm-{name}"}  # the pod of the same name
        else:  # the group's leader, which serves the API
            index = name.rsplit("-", 1)[1]
            assert selector == {"leaderworkerset.sigs.k8s.io/name": "vllm-llama-405b",
                                "leaderworkerset.sigs.k8s.io/group-index": index,
                                "leaderworkerset.sigs.k8s.io/worker-index": "0"}


def test_nginx_waits_for_the_replica_addresses_it_resolves_at_start():
    run = k8s_run("prod-k8s")
    deployment = next(r for r in run.resources if r.typ == "kubernetes:apps/v1:Deployment")
    waits_for = {d.rsplit("::", 1)[-1] for d in deployment.dependencies}
    assert {f"{info['endpoint'].split('.')[0].removeprefix('vllm-')}" for info in run.outputs["replicas"].values()} <= waits_for


def test_nginx_runs_the_rendered_config_and_a_config_change_rolls_its_pods():
    base = of_kind("prod-k8s", "Deployment")["vllm-fleet-nginx"]
    pod = base["spec"]["template"]
    assert container(pod)["args"] == ["-e", "stderr", "-c", "/etc/nginx/fleet/nginx.conf", "-g", "daemon off;"]
    assert {"name": "conf", "configMap": {"name": "vllm-fleet-nginx"}} in pod["spec"]["volumes"]
    raw = raw_stack("prod-k8s")
    raw["load_balancer"]["policy"] = "session_affinity"
    changed = run_raw("prod-k8s", raw)
    annotation = "vllm-fleet/nginx-conf-sha256"
    assert of_kind(changed, "Deployment")["vllm-fleet-nginx"]["spec"]["template"]["metadata"]["annotations"][annotation] != \
        pod["metadata"]["annotations"][annotation]
    assert "hash $http_x_session_id consistent;" in nginx_conf(changed)


def test_nginx_service_is_the_configured_type_on_the_configured_port():
    svc = of_kind("prod-k8s", "Service")["vllm-fleet-nginx"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}


# --- autoscaling ------------------------------------------------------------------------------------------

def test_an_autoscaled_model_scales_on_waiting_requests_between_its_replicas_and_its_maximum():
    scaled = of_kind("prod-k8s", "ScaledObject")
    assert set(scaled) == {"vllm-llama-70b"}
    spec = scaled["vllm-llama-70b"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "vllm-llama-70b"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 4)
    trigger = spec["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == 'sum(vllm:num_requests_waiting{job="vllm", model="llama-70b"})'
    assert trigger["metadata"]["threshold"] == "8"
    assert trigger["metadata"]["serverAddress"] == "http://vllm-fleet-prometheus.monitoring.svc.cluster.local:9090"
    # Upstreams and addresses cover every replica KEDA may start.
    assert len(upstream_servers(nginx_conf("prod-k8s"))["vllm_llama_70b"]) == 4
    assert {f"vllm-llama-70b-{i}" for i in range(4)} <= set(of_kind("prod-k8s", "Service"))


# --- monitoring ------------------------------------------------------------------------------------------

def test_prometheus_rule_is_exactly_our_alert_rules_including_gpu_and_nginx_alerts():
    run = k8s_run("prod-k8s")
    rule = of_kind(run, "PrometheusRule")["vllm-fleet-alerts"]
    cfg = build_k8s_plan(_cfg("prod-k8s")).cfg
    assert rule["spec"]["groups"] == yaml.safe_load(alert_rules(cfg))["groups"]
    assert {g["name"] for g in rule["spec"]["groups"]} == {"vllm-replicas", "prefix-affinity", "nginx", "gpu"}


def test_monitors_label_series_the_way_the_alerts_and_dashboard_expect():
    vllm = of_kind("prod-k8s", "PodMonitor")["vllm-fleet-vllm"]["spec"]
    assert vllm["selector"]["matchLabels"]["app.kubernetes.io/component"] == "server"  # leaders, not headless workers
    labels = {r["targetLabel"]: r for r in vllm["podMetricsEndpoints"][0]["relabelings"]}
    assert labels["job"]["replacement"] == "vllm"
    assert labels["model"]["sourceLabels"] == ["__meta_kubernetes_pod_label_vllm_fleet_model"]
    assert labels["host"]["sourceLabels"] == ["__meta_kubernetes_pod_node_name"]
    # replica: the pod name without its prefix, which is the Docker target's replica name.
    assert re.sub(labels["replica"]["regex"].replace("(.*)", "(.*)$"), "\\1", "vllm-llama-405b-0") == "llama-405b-0"
    nginx = of_kind("prod-k8s", "PodMonitor")["vllm-fleet-nginx"]["spec"]["podMetricsEndpoints"][0]
    assert nginx["port"] == "exporter" and nginx["relabelings"][0]["replacement"] == "nginx"
    dcgm = of_kind("prod-k8s", "ServiceMonitor")["prod-k8s-dcgm-exporter"]["spec"]["endpoints"][0]
    assert dcgm["relabelings"][0]["replacement"] == "dcgm"


def test_every_monitor_selects_pods_that_exist():
    all_pods = [t["metadata"]["labels"] for m in manifests("prod-k8s")
                if m["kind"] in ("StatefulSet", "LeaderWorkerSet", "Deployment", "DaemonSet") for t in pod_templates(m).values()]
    for m in of_kind("prod-k8s", "PodMonitor").values():
        want = m["spec"]["selector"]["matchLabels"]
        assert any(want.items() <= pod.items() for pod in all_pods), m["metadata"]["name"]


def test_grafana_gets_our_dashboard_from_a_sidecar_configmap_and_its_password_from_our_secret():
    dashboards = of_kind("prod-k8s", "ConfigMap")["prod-k8s-grafana-dashboards"]
    assert dashboards["metadata"]["namespace"] == "monitoring"
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboards["data"]["vllm-fleet.json"] == static("grafana/dashboards/vllm-fleet.json")
    release = next(r for r in k8s_run("prod-k8s").of_type(HELM) if r.inputs["chart"] == "kube-prometheus-stack")
    assert release.inputs["version"] == "75.6.2"
    assert release.inputs["repositoryOpts"]["repo"] == "https://prometheus-community.github.io/helm-charts"
    grafana = release.inputs["values"]["grafana"]
    assert grafana["admin"]["existingSecret"] == "prod-k8s-grafana-admin"
    assert grafana["sidecar"]["dashboards"]["label"] == "grafana_dashboard"
    assert grafana["sidecar"]["datasources"]["uid"] == "prometheus"  # the uid our dashboard's panels name
    assert "adminPassword" not in json.dumps(release.inputs["values"])


def test_the_gpu_exporter_runs_on_every_gpu_pool_and_nowhere_else():
    ds = of_kind("prod-k8s", "DaemonSet")["prod-k8s-dcgm-exporter"]["spec"]["template"]["spec"]
    terms = ds["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [{e["key"]: e["values"][0] for e in t["matchExpressions"]} for t in terms] == list(POOL_SELECTORS.values())
    assert ds["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_the_leaderworkerset_controller_is_installed_from_a_pinned_chart_before_the_groups():
    run = k8s_run("prod-k8s")
    lws = next(r for r in run.of_type(HELM) if r.inputs["name"] == "lws")
    assert lws.inputs["chart"] == "oci://registry.k8s.io/lws/charts/lws" and lws.inputs["version"] == "0.8.0"
    group = next(r for r in run.resources if r.typ.endswith(":LeaderWorkerSet"))
    assert any(d.endswith("::lws-chart") for d in group.dependencies)


def test_every_object_is_labelled_with_the_stack_and_namespaced_where_it_should_be():
    for m in manifests("prod-k8s"):
        meta = m["metadata"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "vllm-fleet", meta["name"]
        assert meta["labels"]["vllm-fleet/stack"] == "prod-k8s", meta["name"]
        if m["kind"] != "Namespace":
            assert meta["namespace"] in ("vllm-prod", "monitoring"), meta["name"]


def _cfg(stack: str):
    from fleet.config.load import parse_config

    raw = raw_stack(stack)
    return parse_config({**raw, "api_key": True, "hf_token": True}, stack)

