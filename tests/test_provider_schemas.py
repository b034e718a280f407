"""Every input of every resource of every stack, against the pinned providers' schemas (through
their generated SDKs: tests/support/provider_schema.py), plus the constraints those schemas cannot
express, which the providers (kreuzwerker's `ValidateFunc`s) or the Docker daemon enforce only at
`pulumi up`. Custom resources (LeaderWorkerSet, PodMonitor, ...) have no SDK type; the rendered
Kubernetes objects, custom ones included where we ship a schema, are also validated by
kubernetes-validate (tests/test_k8s_manifests.py)."""
from __future__ import annotations

import copy
import ipaddress
import re

import pytest

from support.provider_schema import args_class, check_resource, is_provider_resource
from support.stacks import stack_run
from test_k8s_stack_graph import K8S_STACKS, k8s_run

DOCKER_STACKS = ["local", "staging", "prod"]
CONTAINER = "docker:index/container:Container"
DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # the daemon's rule for container, volume, network names
GO_DURATION = re.compile(r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$")


def runs():
    for stack in DOCKER_STACKS:
        yield stack, stack_run(stack)
    for stack in K8S_STACKS:
        yield stack, k8s_run(stack)


@pytest.fixture(scope="module")
def all_runs():
    return dict(runs())


def test_every_resource_input_of_every_stack_matches_its_providers_schema(all_runs):
    checked = set()
    problems = []
    for stack, run in all_runs.items():
        for res in run.resources:
            if not is_provider_resource(res.typ) or args_class(res.typ) is None:
                continue
            checked.add(res.typ)
            problems += [f"{stack}: {p}" for p in check_resource(res.typ, res.name, res.inputs)]
    assert not problems, "\n".join(problems[:40])
    # Every kind of resource the stacks register went through the check.
    assert {CONTAINER, "docker:index/remoteImage:RemoteImage", "docker:index/network:Network", "docker:index/volume:Volume",
            "pulumi:providers:docker", "kubernetes:apps/v1:StatefulSet", "kubernetes:helm.sh/v3:Release",
            "pulumi:providers:kubernetes", "random:index/randomPassword:RandomPassword"} <= checked


def a_container(all_runs):
    return copy.deepcopy(next(r for r in all_runs["prod"].of_type(CONTAINER) if r.name == "llama-70b-0-server"))


@pytest.mark.parametrize("change, expected", [
    (lambda i: i.update(waitTimeOut=60), "waitTimeOut: no such property"),
    (lambda i: i.pop("image"), "image: required"),
    (lambda i: i["ports"][0].update(internal="8000/tcp"), "ports[0].internal: expected int"),
    (lambda i: i["healthcheck"].update(retries=True), "healthcheck.retries: expected int"),
    (lambda i: i.update(mounts={"target": "/x"}), "mounts: expected a list"),
    (lambda i: i["labels"][0].pop("value"), "labels[0].value: required"),
])
def test_the_schema_check_catches_each_kind_of_mistake(all_runs, change, expected):
    res = a_container(all_runs)
    change(res.inputs)
    problems = check_resource(res.typ, res.name, res.inputs)
    assert any(expected in p for p in problems), problems


def test_the_schema_check_reaches_into_kubernetes_specs(all_runs):
    res = copy.deepcopy(next(r for r in all_runs["prod-k8s"].resources if r.typ == "kubernetes:apps/v1:StatefulSet"))
    vllm = next(c for c in res.inputs["spec"]["template"]["spec"]["containers"] if "readinessProbe" in c)
    vllm["readinessProbe"]["periodSecond"] = 5
    res.inputs["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = [1]
    res.inputs["kind"] = "Statefulset"
    problems = "\n".join(check_resource(res.typ, res.name, res.inputs))
    assert "readinessProbe.periodSecond: no such property of ProbeArgs" in problems
    assert "rollingUpdate.maxUnavailable" in problems and "'Statefulset' is not one of ['StatefulSet']" in problems


# --- what the schemas cannot express -------------------------------------------------------------


def docker_constraint_problems(res) -> list[str]:
    """kreuzwerker/terraform-provider-docker v4.5's validators and the Docker daemon's own rules
    for the inputs we set (read in resource_docker_container.go and the daemon's name check)."""
    i, out = res.inputs, []
    if "name" in i and not DOCKER_NAME.match(i["name"]):
        out.append(f"name {i['name']!r}: Docker accepts [a-zA-Z0-9][a-zA-Z0-9_.-]+")
    if not re.fullmatch(r"no|on-failure|always|unless-stopped", i.get("restart", "no")):
        out.append(f"restart {i['restart']!r}")
    for m in i.get("mounts") or []:
        if m.get("type") not in ("bind", "volume", "tmpfs"):
            out.append(f"mount type {m.get('type')!r}")
        if not str(m["target"]).startswith("/"):
            out.append(f"mount target {m['target']!r} is not absolute")
    for p in i.get("ports") or []:
        if not (1 <= p["internal"] <= 65535 and 1 <= p.get("external", 1) <= 65535):
            out.append(f"port {p}")
        ipaddress.ip_address(p.get("ip", "0.0.0.0"))
    if i.get("shmSize") is not None and i["shmSize"] < 0:
        out.append("shmSize < 0")
    if i.get("gpus") and i.get("deviceRequests"):
        out.append("gpus conflicts with deviceRequests")
    hc = i.get("healthcheck")
    if hc:
        for key in ("interval", "timeout", "startPeriod", "startInterval"):
            if key in hc and not (hc[key] and GO_DURATION.match(hc[key])):
                out.append(f"healthcheck.{key} {hc[key]!r} is not a Go duration")
        if hc.get("retries", 0) < 0:
            out.append("healthcheck.retries < 0")
    if i.get("wait") and not i.get("waitTimeout", 0) > 0:
        out.append("wait without a positive waitTimeout")
    for key in ("stopTimeout", "destroyGraceSeconds"):
        if i.get(key) is not None and i[key] < 0:
            out.append(f"{key} < 0")
    return out


def test_docker_inputs_meet_the_provider_and_daemon_constraints(all_runs):
    problems = []
    for stack in DOCKER_STACKS:
        run = all_runs[stack]
        for res in run.of_type(CONTAINER):
            problems += [f"{stack} {res.name}: {p}" for p in docker_constraint_problems(res)]
        for typ in ("docker:index/network:Network", "docker:index/volume:Volume"):
            for res in run.of_type(typ):
                if not DOCKER_NAME.match(res.inputs["name"]):
                    problems.append(f"{stack} {res.name}: name {res.inputs['name']!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("change", [
    lambda i: i.update(restart="unless_stopped"),
    lambda i: i.update(name="prod/llama"),
    lambda i: i["healthcheck"].update(interval="15"),
    lambda i: i["mounts"][0].update(type="volumes"),
    lambda i: i.update(gpus="all"),
])
def test_the_constraint_check_catches_what_the_provider_would_refuse(all_runs, change):
    res = a_container(all_runs)
    change(res.inputs)
    assert docker_constraint_problems(res)
