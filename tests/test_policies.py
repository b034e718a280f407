"""The policy pack (policy/) over everything the program registers, and over deliberately bad resources.

The policies get `ResourceValidationArgs` built the way the engine's Analyze call builds them (the
real program under Pulumi's mocks supplies the resources), and, for a few cases, go through
pulumi-policy's own Analyze/AnalyzeStack handlers with wire-format requests, secrets and unknowns
included, exactly as `pulumi preview --policy-pack policy` would feed them.
"""
from __future__ import annotations

import copy
import functools
import re
import runpy
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
import pulumi_kubernetes as k8s
import pulumi_policy
import pytest
import yaml
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import mocks, proto, settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await
from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)
from pulumi_policy.deserialize import SPECIAL_SECRET_SIG, SPECIAL_SIG_KEY, deserialize_properties
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from fleet.config.errors import PROJECT
from tools.mock_run import ROOT, FleetMocks, MockRun, Recorded, read_stack_file, run_program, stack_config
from policy import vllm_fleet_policies as pol
from support import stacks as shipped

# Every stack file, including ones tests/support/stacks.py does not list (their secrets are then
# stand-ins, still Pulumi secrets, which is all a policy looks at).
STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))
TARGETS = {s: (read_stack_file(s).get("config") or {}).get(f"{PROJECT}:target", "docker") for s in STACKS}
DOCKER_STACKS = [s for s in STACKS if TARGETS[s] == "docker"]
K8S_STACKS = [s for s in STACKS if TARGETS[s] == "kubernetes"]


@functools.lru_cache(maxsize=None)
def stack_run(stack: str) -> MockRun:
    """This module's own run of each stack, not support.stacks' shared one: the policies must judge
    exactly what the program registers, whatever another test did to a shared run's records."""
    config, secret_keys, _ = stack_config(read_stack_file(stack), shipped.PASSPHRASES.get(stack))
    return run_program(stack, config, secret_keys)


CONTAINER = pol.CONTAINER
POLICY_NAMES = [p.name for p in pol.RESOURCE_POLICIES]
NO_OPTS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)


# --- building what the engine would hand a policy -----------------------------------------------

def urn_of(stack: str, typ: str, name: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{typ}::{name}"


def provider_of(res: Recorded) -> Optional[PolicyProviderResource]:
    if not res.provider:
        return None
    urn = res.provider.rsplit("::", 1)[0]
    return PolicyProviderResource(urn.split("::")[-2], {}, urn, res.provider_name)


def args_for(stack: str, res: Recorded, inputs: Optional[dict] = None) -> ResourceValidationArgs:
    props = pol.deserialize_keeping_secrets(copy.deepcopy(res.inputs if inputs is None else inputs))
    return ResourceValidationArgs(res.typ, unknown_checking_proxy(props), urn_of(stack, res.typ, res.name),
                                  res.name, NO_OPTS, provider_of(res))


def violations(args: ResourceValidationArgs, policies=None) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for policy in policies or pol.RESOURCE_POLICIES:
        policy.validate(args, lambda message, urn=None, name=policy.name: found.append((name, message)))
    return found


def stack_violations(stack: str, resources: list[Recorded]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    policy_resources = [PolicyResource(r.typ, unknown_checking_proxy(pol.deserialize_keeping_secrets(copy.deepcopy(r.inputs))),
                                       urn_of(stack, r.typ, r.name), r.name, NO_OPTS, provider_of(r), None, [], {})
                        for r in resources]
    for policy in pol.STACK_POLICIES:
        policy.validate(StackValidationArgs(policy_resources, None),
                        lambda message, urn=None, name=policy.name: found.append((name, message)))
    return found


def secret(value: Any) -> dict:
    return {SPECIAL_SIG_KEY: SPECIAL_SECRET_SIG, "value": value}


def reveal(value: Any) -> Any:
    return value["value"] if isinstance(value, dict) and value.get(SPECIAL_SIG_KEY) == SPECIAL_SECRET_SIG else value


def labels(res: Recorded) -> dict[str, str]:
    return {i["label"]: i["value"] for i in res.inputs.get("labels", [])}


def containers(stack: str, role: str) -> list[Recorded]:
    """By name: the order the engine registers resources in is not the program's to promise."""
    return sorted((r for r in stack_run(stack).of_type(CONTAINER) if labels(r).get("vllm-fleet.role") == role),
                  key=lambda r: r.name)


def gpu_ids(res: Recorded) -> list[str]:
    return [i for req in res.inputs.get("deviceRequests") or [] for i in req.get("deviceIds", [])]


def a_replica(stack: str, gpus: Optional[int] = None, role: str = "vllm") -> Recorded:
    return next(r for r in containers(stack, role) if gpus is None or len(gpu_ids(r)) == gpus)


def changed(res: Recorded, change: Callable[[dict], Any]) -> dict:
    inputs = copy.deepcopy(res.inputs)
    change(inputs)
    return inputs


def set_command_flag(inputs: dict, flag: str, value: str) -> None:
    cmd = inputs["command"]
    if flag in cmd:
        cmd[cmd.index(flag) + 1] = value
    else:
        cmd += [flag, value]


def registered(stack: str, program: Callable[[], None]) -> dict[str, Recorded]:
    """Resources a small program registers under the same mocks as the real one: Kubernetes
    workloads in shapes the Kubernetes target does not make (a Deployment, init containers,
    `-tp`, a Ray-style LeaderWorkerSet worker), so the rules are not fitted to one target's output."""
    run = MockRun(stack)
    pulumi.runtime.set_all_config({}, [])
    settings.set_root_resource(None)
    monitor = mocks.MockMonitor(FleetMocks(run))
    mocks.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    _sync_await(run_pulumi_func(program))
    return {r.name: r for r in run.resources}


def vllm_pod(name: str, argv: list[str], gpus: int, **extra) -> dict:
    return {"name": name, "image": "vllm/vllm-openai:v0.32.0", "command": ["vllm", "serve"], "args": argv,
            "resources": {"limits": {"memory": "64Gi", "nvidia.com/gpu": str(gpus)}}, **extra}


@functools.lru_cache(maxsize=None)
def k8s_workloads() -> dict[str, Recorded]:
    def program() -> None:
        meta = {"labels": {"app": "vllm"}}
        k8s.apps.v1.Deployment("qwen-deploy", spec={
            "selector": {"match_labels": meta["labels"]}, "template": {"metadata": meta, "spec": {
                "init_containers": [{"name": "fetch", "image": "busybox:1.37.0", "resources": {"limits": {"memory": "1Gi"}}}],
                "containers": [vllm_pod("vllm", ["Qwen/Qwen2.5-7B-Instruct", "--tensor-parallel-size", "2"], gpus=2,
                                        env=[{"name": "HF_TOKEN", "value_from": {"secret_key_ref": {"name": "hf", "key": "token"}}}])]}}})
        k8s.apps.v1.StatefulSet("qwen-sts", spec={
            "service_name": "qwen", "selector": {"match_labels": meta["labels"]}, "template": {"metadata": meta, "spec": {
                "containers": [vllm_pod("vllm", ["Qwen/Qwen2.5-7B-Instruct", "-tp", "4"], gpus=4)]}}})
        k8s.apiextensions.CustomResource("llama-lws", api_version="leaderworkerset.x-k8s.io/v1", kind="LeaderWorkerSet",
                                         spec={"replicas": 1, "leaderWorkerTemplate": {
                                             "size": 2,
                                             "leaderTemplate": {"spec": {"containers": [vllm_pod("leader", [
                                                 "meta-llama/Llama-3.3-70B-Instruct", "--tensor-parallel-size", "8",
                                                 "--pipeline-parallel-size", "2"], gpus=8)]}},
                                             "workerTemplate": {"spec": {"containers": [{
                                                 "name": "worker", "image": "vllm/vllm-openai:v0.32.0",
                                                 "command": ["sh", "-c", "ray start --block --address=$(LWS_LEADER_ADDRESS):6379"],
                                                 "resources": {"limits": {"memory": "64Gi", "nvidia.com/gpu": "8"}}}]}}}})
    return registered("prod", program)


# --- every shipped stack passes -----------------------------------------------------------------

@pytest.mark.parametrize("stack", STACKS)
def test_every_resource_of_every_shipped_stack_passes_every_policy(stack):
    found = [(res.name, *v) for res in stack_run(stack).resources for v in violations(args_for(stack, res))]
    assert found == []


@pytest.mark.parametrize("stack", STACKS)
def test_every_shipped_stack_passes_the_stack_policies(stack):
    assert stack_violations(stack, stack_run(stack).resources) == []


def test_the_kubernetes_workloads_of_the_examples_pass_every_policy():
    found = [(name, *v) for name, res in k8s_workloads().items() for v in violations(args_for("prod", res))]
    assert found == []


# --- the policies look at every real replica, host and port -------------------------------------

@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_every_replica_without_its_health_check_is_caught(stack):
    servers = containers(stack, "vllm")
    assert servers
    for res in servers:
        found = violations(args_for(stack, res, changed(res, lambda i: i.pop("healthcheck"))))
        assert [p for p, _ in found] == ["vllm-health-checked"], res.name
        assert f"`{res.name}`" in found[0][1]


@pytest.mark.parametrize("stack", [s for s in DOCKER_STACKS if s != "local"])
def test_every_gpu_container_with_one_gpu_less_is_caught(stack):
    gpu_containers = [r for r in stack_run(stack).of_type(CONTAINER) if gpu_ids(r)]
    assert gpu_containers
    for res in gpu_containers:
        found = violations(args_for(stack, res, changed(res, lambda i: i["deviceRequests"][0]["deviceIds"].pop())))
        assert [p for p, _ in found] == ["vllm-gpus-match-parallelism"], res.name
        assert f"`{res.name}`" in found[0][1] and f"requests {len(gpu_ids(res)) - 1} GPU" in found[0][1]


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_every_published_port_but_the_public_api_is_caught_on_all_interfaces(stack):
    published = [(r, i) for r in stack_run(stack).of_type(CONTAINER) for i, _ in enumerate(r.inputs.get("ports") or [])
                 if not (labels(r)["vllm-fleet.role"] == "nginx" and r.inputs["ports"][i]["internal"] == 8080)]
    assert published
    for res, i in published:
        def world(inputs, i=i):
            inputs["ports"][i]["ip"] = "0.0.0.0"
        found = violations(args_for(stack, res, changed(res, world)))
        assert [p for p, _ in found] == ["no-world-published-ports"], res.name
        assert f"`{res.name}`" in found[0][1]


@pytest.mark.parametrize("stack", DOCKER_STACKS)
def test_grafana_with_its_environment_in_plain_text_is_caught(stack):
    (grafana,) = containers(stack, "grafana")
    found = violations(args_for(stack, grafana, changed(grafana, lambda i: i.update(envs=reveal(i["envs"])))))
    assert ("grafana-admin-password-secret" in [p for p, _ in found]
            and any(f"`{grafana.name}`" in m and "plain text" in m for _, m in found))


def pod_containers(res: Recorded, inputs: dict) -> list[dict]:
    """The container dicts inside `inputs` (to change them in place) of a Kubernetes workload."""
    paths = pol.LWS_POD_SPEC_PATHS if res.typ.startswith(pol.LWS_PREFIX) else pol.K8S_POD_SPEC_PATHS.get(res.typ, [])
    found = []
    for path in paths:
        node = inputs
        for key in path:
            node = (node or {}).get(key)
        for kind in ("initContainers", "containers"):
            found += (node or {}).get(kind) or []
    return found


def workloads(stack: str) -> list[Recorded]:
    return [r for r in stack_run(stack).resources if pod_containers(r, r.inputs)]


@pytest.mark.parametrize("stack", K8S_STACKS)
def test_every_kubernetes_container_without_limits_is_caught(stack):
    cases = [(res, i) for res in workloads(stack) for i, _ in enumerate(pod_containers(res, res.inputs))]
    assert cases
    for res, i in cases:
        inputs = copy.deepcopy(res.inputs)
        pod_containers(res, inputs)[i].get("resources", {}).pop("limits", None)
        found = violations(args_for(stack, res, inputs))
        assert "kubernetes-resource-limits" in [p for p, _ in found], (res.name, i)
        assert all(f"`{res.name}`" in m for _, m in found)


@pytest.mark.parametrize("stack", K8S_STACKS)
def test_every_kubernetes_vllm_container_with_one_gpu_less_is_caught(stack):
    cases = [(res, i) for res in workloads(stack) for i, c in enumerate(pod_containers(res, res.inputs))
             if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) and "vllm" in c.get("command", [])]
    assert cases
    for res, i in cases:
        inputs = copy.deepcopy(res.inputs)
        limits = pod_containers(res, inputs)[i]["resources"]["limits"]
        limits["nvidia.com/gpu"] = str(int(limits["nvidia.com/gpu"]) - 1)
        found = violations(args_for(stack, res, inputs))
        assert [p for p, _ in found] == ["vllm-gpus-match-parallelism"], (res.name, i, found)
        assert f"`{res.name}`" in found[0][1]


# --- deliberately bad resources, one table per policy -------------------------------------------

def bad_container(stack: str, pick: Callable[[], Recorded], change: Callable[[dict], Any]) -> Callable[[], ResourceValidationArgs]:
    return lambda: (lambda res: args_for(stack, res, changed(res, change)))(pick())


def bad_resource(stack: str, typ: str, name: str, inputs: dict, provider: str = "") -> Callable[[], ResourceValidationArgs]:
    return lambda: args_for(stack, Recorded(typ, name, inputs, provider))


def bad_k8s(name: str, change: Callable[[dict], Any]) -> Callable[[], ResourceValidationArgs]:
    return lambda: (lambda res: args_for("prod", res, changed(res, change)))(k8s_workloads()[name])


def lb(stack: str) -> Recorded:
    return containers(stack, "nginx")[0]


def qwen_node1() -> Recorded:
    return next(r for r in containers("prod", "vllm-worker") if labels(r).get("vllm-fleet.node-rank") == "1")


def first_container(spec_path: tuple[str, ...]) -> Callable[[dict], dict]:
    def get(inputs: dict) -> dict:
        node = inputs
        for key in spec_path:
            node = node[key]
        return node
    return get


DEPLOY_POD = first_container(("spec", "template", "spec"))
STS_POD = first_container(("spec", "template", "spec"))
LWS_LEADER = first_container(("spec", "leaderWorkerTemplate", "leaderTemplate", "spec"))
LWS_WORKER = first_container(("spec", "leaderWorkerTemplate", "workerTemplate", "spec"))

BAD = [
    # images-pinned
    ("vLLM image on :latest in prod", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i.update(image="vllm/vllm-openai:latest")),
     "images-pinned", "floating tag `latest`"),
    ("pulled image without a tag in staging", bad_resource("staging", pol.REMOTE_IMAGE, "gpu-staging-image-vllm", {"name": "vllm/vllm-openai"}),
     "images-pinned", "no tag"),
    ("registry with a port but no tag", bad_resource("prod", pol.REMOTE_IMAGE, "edge-image-own", {"name": "registry.internal:5000/vllm-otel"}),
     "images-pinned", "no tag"),
    ("nightly vLLM build in prod", bad_resource("prod", pol.REMOTE_IMAGE, "h100-a-image-nightly", {"name": "vllm/vllm-openai:nightly"}),
     "images-pinned", "floating tag `nightly`"),
    ("Helm chart without a version", bad_resource("prod-k8s", pol.HELM_RELEASE, "lws-chart", {
        "chart": "oci://registry.k8s.io/lws/charts/lws", "name": "lws", "namespace": "lws-system"}), "images-pinned", "has no version"),
    ("Kubernetes pod image on :latest", bad_k8s("qwen-deploy", lambda i: DEPLOY_POD(i)["containers"][0].update(image="vllm/vllm-openai:latest")),
     "images-pinned", "container `vllm`"),
    # vllm-health-checked
    ("replica without a health check", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i.pop("healthcheck")),
     "vllm-health-checked", "no health check"),
    ("health check disabled", bad_container("staging", lambda: a_replica("staging"), lambda i: i.update(healthcheck={"tests": ["NONE"]})),
     "vllm-health-checked", "no health check"),
    ("health check on /metrics", bad_container("staging", lambda: a_replica("staging"), lambda i: i["healthcheck"].update(
        tests=["CMD", "curl", "-f", "http://127.0.0.1:8000/metrics"])), "vllm-health-checked", "does not call /health"),
    ("health check on the wrong port", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i["healthcheck"].update(
        tests=["CMD", "curl", "-f", "http://127.0.0.1:8001/health"])), "vllm-health-checked", "port 8001, but the server listens on 8000"),
    ("health check on /healthz", bad_container("local", lambda: a_replica("local"), lambda i: i["healthcheck"].update(
        tests=["CMD-SHELL", "curl -f http://127.0.0.1:8000/healthz"])), "vllm-health-checked", "does not call /health"),
    # vllm-gpus-match-parallelism
    ("TP 4 replica with 3 GPUs", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i["deviceRequests"][0]["deviceIds"].pop()),
     "vllm-gpus-match-parallelism", "requests 3 GPU(s), but --tensor-parallel-size 4 x --pipeline-parallel-size 1 needs 4"),
    ("TP 1 replica with 2 GPUs", bad_container("staging", lambda: a_replica("staging", 1), lambda i: i["deviceRequests"][0]["deviceIds"].append("7")),
     "vllm-gpus-match-parallelism", "requests 2 GPU(s)"),
    ("TP raised without more GPUs", bad_container("prod", lambda: a_replica("prod", 4), lambda i: set_command_flag(i, "--tensor-parallel-size", "8")),
     "vllm-gpus-match-parallelism", "needs 8"),
    ("GPU replica with no device request", bad_container("staging", lambda: a_replica("staging"), lambda i: i.pop("deviceRequests")),
     "vllm-gpus-match-parallelism", "requests 0 GPU(s)"),
    ("replica taking every GPU of the host", bad_container("prod", lambda: a_replica("prod", 4), lambda i: (i.pop("deviceRequests"), i.update(gpus="all"))),
     "vllm-gpus-match-parallelism", "every GPU of its host"),
    ("device request with count -1", bad_container("staging", lambda: a_replica("staging"), lambda i: i.update(
        deviceRequests=[{"driver": "nvidia", "count": -1.0, "capabilities": ["gpu"]}])), "vllm-gpus-match-parallelism", "every GPU of its host"),
    ("same GPU listed twice", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i["deviceRequests"][0].update(deviceIds=["0", "1", "2", "2"])),
     "vllm-gpus-match-parallelism", "lists GPU 2 more than once"),
    ("pipeline node with a whole replica's GPUs", bad_container("prod", qwen_node1, lambda i: i["deviceRequests"][0]["deviceIds"].extend(["0", "1", "2", "3"])),
     "vllm-gpus-match-parallelism", "/ --nnodes 2 needs 4"),
    ("pipeline over a node count that does not divide it", bad_container("prod", qwen_node1, lambda i: set_command_flag(i, "--nnodes", "3")),
     "vllm-gpus-match-parallelism", "cannot be split evenly over --nnodes 3"),
    ("unreadable tensor parallel size", bad_container("prod", lambda: a_replica("prod", 4), lambda i: set_command_flag(i, "--tensor-parallel-size", "auto")),
     "vllm-gpus-match-parallelism", "--tensor-parallel-size 'auto' is not a positive whole number"),
    ("Kubernetes pod with fewer GPUs than TP", bad_k8s("qwen-sts", lambda i: STS_POD(i)["containers"][0]["resources"]["limits"].update({"nvidia.com/gpu": "2"})),
     "vllm-gpus-match-parallelism", "gets 2 nvidia.com/gpu, but --tensor-parallel-size 4"),
    ("LeaderWorkerSet leader with the whole group's GPUs", bad_k8s("llama-lws", lambda i: LWS_LEADER(i)["containers"][0]["resources"]["limits"].update({"nvidia.com/gpu": "16"})),
     "vllm-gpus-match-parallelism", "/ 2 pods needs 8"),
    # no-world-published-ports
    ("vLLM API and metrics on 0.0.0.0", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i["ports"][0].update(ip="0.0.0.0")),
     "no-world-published-ports", "publishes port 8000 on 0.0.0.0"),
    ("port published without an address", bad_container("prod", lambda: containers("prod", "dcgm-exporter")[0], lambda i: i["ports"][0].pop("ip")),
     "no-world-published-ports", "publishes port 9400 on 0.0.0.0"),
    ("Prometheus on every IPv6 interface", bad_container("staging", lambda: containers("staging", "prometheus")[0], lambda i: i["ports"][0].update(ip="::")),
     "no-world-published-ports", "publishes port 9090 on ::"),
    ("Grafana on every interface", bad_container("local", lambda: containers("local", "grafana")[0], lambda i: i["ports"][0].update(ip="[::]")),
     "no-world-published-ports", "publishes port 3000"),
    ("Nginx status page next to the API", bad_container("prod", lambda: lb("prod"), lambda i: i["ports"].append({"ip": "0.0.0.0", "internal": 8081.0, "external": 8081.0})),
     "no-world-published-ports", "publishes port 8081"),
    ("another container on the API's port", bad_container("prod", lambda: containers("prod", "prometheus")[0], lambda i: i["ports"][0].update(ip="0.0.0.0", internal=8080.0)),
     "no-world-published-ports", "publishes port 8080"),
    # grafana-admin-password-secret
    ("Grafana password in plain text", bad_container("prod", lambda: containers("prod", "grafana")[0], lambda i: i.update(envs=reveal(i["envs"]))),
     "grafana-admin-password-secret", "in plain text"),
    ("Grafana without a password", bad_container("staging", lambda: containers("staging", "grafana")[0], lambda i: i.update(
        envs=secret([e for e in reveal(i["envs"]) if not e.startswith("GF_SECURITY_ADMIN_PASSWORD=")]))),
     "grafana-admin-password-secret", "default admin/admin login"),
    ("Grafana with the default password, even secret", bad_container("prod", lambda: containers("prod", "grafana")[0], lambda i: i.update(
        envs=secret([e for e in reveal(i["envs"]) if not e.startswith("GF_SECURITY_ADMIN_PASSWORD=")] + ["GF_SECURITY_ADMIN_PASSWORD=admin"]))),
     "grafana-admin-password-secret", "empty or default value"),
    # credentials-are-secrets
    ("API key in a plain environment", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i.update(envs=reveal(i["envs"]))),
     "credentials-are-secrets", "VLLM_API_KEY in plain text"),
    ("Kubernetes token as a literal", bad_k8s("qwen-deploy", lambda i: DEPLOY_POD(i)["containers"][0].update(env=[{"name": "HF_TOKEN", "value": "hf_plain"}])),
     "credentials-are-secrets", "sets HF_TOKEN as a plain value"),
    # kubernetes-resource-limits
    ("Deployment container with requests only", bad_k8s("qwen-deploy", lambda i: DEPLOY_POD(i)["containers"][0].update(
        resources={"requests": {"memory": "64Gi", "nvidia.com/gpu": "2"}})), "kubernetes-resource-limits", "container `vllm` has no resources.limits"),
    ("init container without limits", bad_k8s("qwen-deploy", lambda i: DEPLOY_POD(i)["initContainers"][0].pop("resources")),
     "kubernetes-resource-limits", "init container `fetch` has no resources.limits"),
    ("StatefulSet with empty limits", bad_k8s("qwen-sts", lambda i: STS_POD(i)["containers"][0].update(
        resources={"limits": {}, "requests": {"nvidia.com/gpu": "4"}})), "kubernetes-resource-limits", "no resources.limits"),
    ("LeaderWorkerSet worker with empty limits", bad_k8s("llama-lws", lambda i: LWS_WORKER(i)["containers"][0].update(resources={"limits": {}})),
     "kubernetes-resource-limits", "workerTemplate container `worker` has no resources.limits"),
]


@pytest.mark.parametrize("build, policy, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_resource_is_caught_by_its_policy_with_a_message_naming_it(build, policy, fragment):
    args = build()
    found = violations(args)
    assert {p for p, _ in found} == {policy}, found
    assert any(fragment in m for _, m in found), found
    assert all(f"`{args.name}`" in m for _, m in found), found


def test_every_policy_has_a_bad_case():
    assert {b[2] for b in BAD} == set(POLICY_NAMES)


# --- and what they let through ------------------------------------------------------------------

GOOD = [
    ("the local stack may float its images", bad_container("local", lambda: a_replica("local"), lambda i: i.update(image="vllm/vllm-openai:latest"))),
    ("a digest pins an image", bad_resource("prod", pol.REMOTE_IMAGE, "edge-image-x", {"name": f"nginx@sha256:{'a' * 64}"})),
    ("an image ID pins an image", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i.update(image=f"sha256:{'b' * 64}"))),
    ("the Nginx API may listen on every interface", bad_container("local", lambda: lb("local"), lambda i: i["ports"][0].update(ip="0.0.0.0"))),
    ("the short -tp alias is read", bad_container("prod", lambda: a_replica("prod", 4), lambda i: (
        i["command"].remove("--tensor-parallel-size"), i["command"].remove("4"), i["command"].extend(["-tp", "4"])))),
    ("--flag=value and underscores are read", bad_container("prod", lambda: a_replica("prod", 4), lambda i: (
        i["command"].remove("--tensor-parallel-size"), i["command"].remove("4"), i["command"].append("--tensor_parallel_size=4")))),
    ("vllm started from a shell script is read", bad_container("prod", lambda: a_replica("prod", 4), lambda i: i.update(
        entrypoints=["/bin/sh", "-c"], command=["exec vllm serve m --port 8000 --tensor-parallel-size 4"]))),
    ("a password secret by itself, in a plain list", bad_container("prod", lambda: containers("prod", "grafana")[0], lambda i: i.update(
        envs=[secret(e) if e.startswith("GF_SECURITY_ADMIN_PASSWORD=") else e for e in reveal(i["envs"])]))),
    ("Grafana reading its password from a file", bad_container("prod", lambda: containers("prod", "grafana")[0], lambda i: i.update(
        envs=[e for e in reveal(i["envs"]) if not e.startswith("GF_SECURITY_ADMIN_PASSWORD=")] + ["GF_SECURITY_ADMIN_PASSWORD__FILE=/run/secrets/gf"]))),
]


@pytest.mark.parametrize("build", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_an_unusual_but_sound_resource_passes(build):
    assert violations(build()) == []


def test_a_cpu_replica_needs_no_gpu():
    replica = a_replica("local")
    assert not gpu_ids(replica) and "VLLM_CPU_KVCACHE_SPACE" in " ".join(reveal(replica.inputs["envs"]))
    assert violations(args_for("local", replica), [pol.RESOURCE_POLICIES[POLICY_NAMES.index("vllm-gpus-match-parallelism")]]) == []


def test_two_containers_given_the_same_gpu_on_one_host_are_caught():
    run = stack_run("prod")
    a, b = [r for r in run.of_type(CONTAINER) if gpu_ids(r) and r.provider_name == "h100-a-docker"][:2]
    clash = Recorded(b.typ, b.name, changed(b, lambda i: i["deviceRequests"][0].update(deviceIds=gpu_ids(a)[:1])), b.provider)
    found = stack_violations("prod", [r if r.name != b.name else clash for r in run.resources])
    assert [p for p, _ in found] == ["gpus-not-shared"]
    assert f"`{a.name}`" in found[0][1] and f"`{b.name}`" in found[0][1] and "h100-a-docker" in found[0][1]


def test_the_same_gpu_id_on_two_hosts_is_no_clash():
    run = stack_run("prod")
    ids: dict[str, set[str]] = {}
    for r in run.of_type(CONTAINER):
        ids.setdefault(r.provider_name, set()).update(gpu_ids(r))
    assert ids["h100-a-docker"] & ids["h100-b-docker"]
    assert stack_violations("prod", run.resources) == []


# --- during preview: unknown values -------------------------------------------------------------

def test_an_image_id_unknown_until_the_update_is_not_a_violation():
    res = a_replica("prod", 4)
    assert violations(args_for("prod", res, changed(res, lambda i: i.update(image=UNKNOWN_STRING_VALUE)))) == []


UNKNOWN_DURING_PREVIEW = [
    ("a published port", lambda: a_replica("prod", 4), lambda i: i["ports"].__setitem__(0, UNKNOWN_STRING_VALUE)),
    ("a port's address", lambda: a_replica("prod", 4), lambda i: i["ports"][0].update(ip=UNKNOWN_STRING_VALUE)),
    ("a health check command", lambda: a_replica("prod", 4), lambda i: i["healthcheck"]["tests"].__setitem__(3, UNKNOWN_STRING_VALUE)),
    ("the device requests", lambda: a_replica("prod", 4), lambda i: i.update(deviceRequests=UNKNOWN_STRING_VALUE)),
    ("the gpus option", lambda: a_replica("prod", 4), lambda i: (i.pop("deviceRequests"), i.update(gpus=UNKNOWN_STRING_VALUE))),
]


@pytest.mark.parametrize("pick, change", [u[1:] for u in UNKNOWN_DURING_PREVIEW], ids=[u[0] for u in UNKNOWN_DURING_PREVIEW])
def test_a_value_unknown_during_preview_is_not_judged_rather_than_misjudged(pick, change):
    res = pick()
    args = args_for("prod", res, changed(res, change))
    reported = []
    raised = []
    for policy in pol.RESOURCE_POLICIES:
        try:
            policy.validate(args, lambda message, urn=None: reported.append((policy.name, message)))
        except UnknownValueError:
            raised.append(policy.name)
    assert reported == [] and raised


def test_a_grafana_environment_unknown_until_the_update_cannot_be_judged():
    (grafana,) = containers("staging", "grafana")
    args = args_for("staging", grafana, changed(grafana, lambda i: i.update(envs=secret(UNKNOWN_STRING_VALUE))))
    with pytest.raises(UnknownValueError):
        pol.validate_grafana_password(args, lambda *a: None)


# --- through pulumi-policy's own handlers, as the CLI drives them --------------------------------

def wire(value: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    json_format.ParseDict(value, s)
    return s


def analyze(stack: str, res: Recorded, inputs: Optional[dict] = None) -> list:
    pol.keep_secrets_visible()  # what policy/__main__.py does before serving
    servicer = _PolicyAnalyzerServicer("vllm-fleet", "0.1.0", pol.POLICIES, EnforcementLevel.MANDATORY)
    request = proto.AnalyzeRequest(urn=urn_of(stack, res.typ, res.name), type=res.typ, name=res.name,
                                   properties=wire(res.inputs if inputs is None else inputs))
    return list(servicer.Analyze(request, None).diagnostics)


def test_pulumi_policy_itself_drops_the_secret_mark_that_the_pack_keeps():
    props = {"envs": secret(["GF_SECURITY_ADMIN_PASSWORD=x"])}
    assert deserialize_properties(props) == {"envs": ["GF_SECURITY_ADMIN_PASSWORD=x"]}
    assert isinstance(pol.deserialize_keeping_secrets(props)["envs"], pulumi_policy.Secret)


@pytest.mark.parametrize("stack", STACKS)
def test_the_sdk_analyze_handler_passes_every_shipped_resource(stack):
    found = [(r.name, d.policyName, d.message) for r in stack_run(stack).resources for d in analyze(stack, r)]
    assert found == []


def test_the_sdk_analyze_handler_blocks_a_plain_grafana_password():
    grafana = containers("prod", "grafana")[0]
    (diag,) = analyze("prod", grafana, changed(grafana, lambda i: i.update(envs=reveal(i["envs"]))))
    assert diag.policyName == "grafana-admin-password-secret"
    assert diag.enforcementLevel == proto.MANDATORY
    assert f"`{grafana.name}`" in diag.message


def test_the_sdk_analyze_handler_reports_an_unknown_environment_as_advisory():
    grafana = containers("prod", "grafana")[0]
    (diag,) = analyze("prod", grafana, changed(grafana, lambda i: i.update(envs=secret(UNKNOWN_STRING_VALUE))))
    assert diag.enforcementLevel == proto.ADVISORY and "can't run policy 'grafana-admin-password-secret'" in diag.message


def test_the_sdk_analyze_stack_handler_blocks_a_shared_gpu():
    run = stack_run("prod")
    a, b = [r for r in run.of_type(CONTAINER) if gpu_ids(r) and r.provider_name == "h100-a-docker"][:2]
    resources = []
    for r in (a, b):
        inputs = changed(r, lambda i: i["deviceRequests"][0].update(deviceIds=["0"]))
        prov = r.provider.rsplit("::", 1)[0]
        resources.append(proto.AnalyzerResource(urn=urn_of("prod", r.typ, r.name), type=r.typ, name=r.name,
                                                properties=wire(inputs),
                                                provider=proto.AnalyzerProviderResource(urn=prov, type="pulumi:providers:docker",
                                                                                        name=r.provider_name)))
    servicer = _PolicyAnalyzerServicer("vllm-fleet", "0.1.0", pol.POLICIES, EnforcementLevel.MANDATORY)
    (diag,) = servicer.AnalyzeStack(proto.AnalyzeStackRequest(resources=resources), None).diagnostics
    assert diag.policyName == "gpus-not-shared" and diag.enforcementLevel == proto.MANDATORY


# --- the pack as the CLI loads it ---------------------------------------------------------------

def test_the_pack_entry_point_serves_every_policy_as_mandatory(monkeypatch):
    served = {}
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kw: served.update(kw))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "vllm_fleet_policies", raising=False)
    runpy.run_path(str(ROOT / "policy"), run_name="__main__")
    assert served["name"] == "vllm-fleet"
    assert served["enforcement_level"] == EnforcementLevel.MANDATORY
    assert [p.name for p in served["policies"]] == [p.name for p in pol.POLICIES]
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in served["policies"])
    from pulumi_policy import policy as sdk_policy
    assert getattr(sdk_policy.deserialize_properties, "keeps_secrets", False)


def test_the_pack_project_runs_python_from_its_own_virtualenv():
    project = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    venv = project["runtime"]["options"]["virtualenv"]
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert venv in ignored, f"policy/{venv} must be git-ignored"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            found[m.group(1).lower().replace("_", "-")] = m.group(2)
    return found


def test_the_pack_pins_the_same_pulumi_and_pulumi_policy_as_the_tests():
    pack = pins(ROOT / "policy" / "requirements.txt")
    project = {**pins(ROOT / "requirements.txt"), **pins(ROOT / "requirements-test.txt")}
    assert set(pack) == {"pulumi", "pulumi-policy"}
    assert {k: project.get(k) for k in pack} == pack
