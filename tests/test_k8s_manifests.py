"""Every manifest the Kubernetes stack declares, checked by what will consume it.

The manifests are the program's recorded inputs under Pulumi's mocks (tools.offline_render), so
they are what `pulumi up` would send: core objects through kubernetes-validate in strict mode
(unknown fields fail), LeaderWorkerSets through the CRD schema kept in files/k8s/ plus their pod
templates as core PodTemplates, the rendered nginx.conf through `nginx -t`, the PrometheusRule
through `promtool check rules`, and every vLLM command line through vLLM's own parser.
"""
from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tools.offline_render import manifest_path, render_stack
from support.real_tools import nginx_test, promtool, require_nginx
from support.stacks import require_tool
from support.vllm_cli import parse_serve_args
from test_k8s_stack_graph import K8S_PASSPHRASES, K8S_STACKS, k8s_secrets, manifests, of_kind, pod_templates

ROOT = Path(__file__).resolve().parent.parent
LWS_SCHEMA = ROOT / "files/k8s/leaderworkerset-v1.schema.yaml"
# The oldest Kubernetes we claim (StatefulSet pod-index labels, preStop sleep: 1.30) and the newest
# kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.33.0", kubernetes_validate.latest_version())
# Custom resources: what checks them instead of kubernetes-validate (which has no CRD schemas).
CUSTOM = {"LeaderWorkerSet": "files/k8s/leaderworkerset-v1.schema.yaml",
          "PodMonitor": "tests/test_k8s_stack_graph.py", "ServiceMonitor": "tests/test_k8s_stack_graph.py",
          "PrometheusRule": "promtool check rules", "ScaledObject": "tests/test_k8s_stack_graph.py"}


def core_manifests():
    for stack in K8S_STACKS:
        for m in manifests(stack):
            if m["kind"] not in CUSTOM:
                yield pytest.param(stack, m, id=f"{stack}:{m['kind']}/{m['metadata']['name']}")


def lws_schema() -> dict:
    return yaml.safe_load(LWS_SCHEMA.read_text())


def leaderworkersets():
    return [m for stack in K8S_STACKS for m in manifests(stack) if m["kind"] == "LeaderWorkerSet"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("stack, manifest", list(core_manifests()))
def test_every_core_manifest_passes_kubernetes_validate_strict(stack, manifest, version):
    kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("stack", K8S_STACKS)
def test_every_kind_the_program_declares_is_checked_by_something(stack):
    for m in manifests(stack):
        if m["kind"] in CUSTOM:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(m, "1.33.0", strict=True)
        else:
            kubernetes_validate.validate(m, "1.33.0", strict=True)


def test_strict_validation_would_catch_a_misspelt_field():
    sts = copy.deepcopy(next(m for m in manifests("prod-k8s") if m["kind"] == "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(sts, "1.33.0", strict=True)


# --- LeaderWorkerSet: the CRD's schema, and its pod templates as core objects ------------------------

def test_the_stack_has_a_leaderworkerset_to_check():
    assert [m["metadata"]["name"] for m in leaderworkersets()] == ["vllm-llama-405b"]


@pytest.mark.parametrize("lws", leaderworkersets(), ids=lambda m: m["metadata"]["name"])
def test_leaderworkerset_specs_validate_against_the_kept_crd_schema(lws):
    jsonschema.validate(lws, lws_schema(), cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("lws", leaderworkersets(), ids=lambda m: m["metadata"]["name"])
def test_leaderworkerset_pod_templates_are_valid_core_pod_templates(lws, version):
    for role, template in pod_templates(lws).items():
        as_core = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"{lws['metadata']['name']}-{role}", "namespace": lws["metadata"]["namespace"]},
                   "template": template}
        kubernetes_validate.validate(as_core, version, strict=True)


@pytest.mark.parametrize("path, value, message", [
    (("spec", "leaderWorkerTemplate", "sizee"), 2, "sizee"),
    (("spec", "leaderWorkerTemplate", "restartPolicy"), "Always", "Always"),
    (("spec", "rolloutStrategy", "rollingUpdateConfiguration", "maxSurge"), "one", "one"),
    (("spec", "networkConfig", "subdomainPolicy"), "PerPod", "PerPod"),
    (("spec", "startupPolicy"), "WorkersFirst", "WorkersFirst"),
])
def test_the_kept_schema_would_catch_what_the_api_server_would_prune_or_refuse(path, value, message):
    lws = copy.deepcopy(leaderworkersets()[0])
    node = lws
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(lws, lws_schema(), cls=jsonschema.Draft202012Validator)


def test_the_kept_schema_is_itself_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(lws_schema())


# --- the consumers of what we render ---------------------------------------------------------------------

@pytest.mark.parametrize("stack", K8S_STACKS)
def test_nginx_accepts_the_rendered_config(stack, tmp_path):
    require_nginx()
    data = of_kind(stack, "ConfigMap")["vllm-fleet-nginx"]["data"]
    result = nginx_test(data["nginx.conf"], tmp_path, {n: t for n, t in data.items() if n != "nginx.conf"})
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


@pytest.mark.parametrize("stack", K8S_STACKS)
def test_promtool_accepts_the_prometheus_rule(stack, tmp_path):
    require_tool("promtool")
    rule = next(m for m in manifests(stack) if m["kind"] == "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert int(checked.stdout.split("SUCCESS: ")[1].split()[0]) >= 10


def kubelet_expand(arg: str, pod: dict[str, str]) -> str:
    """What the kubelet makes of `$(VAR)` in args, with the variables LeaderWorkerSet injects."""
    for name, value in pod.items():
        arg = arg.replace(f"$({name})", value)
    return arg


def k8s_command_lines():
    for stack in K8S_STACKS:
        for m in manifests(stack):
            if m["kind"] not in ("StatefulSet", "LeaderWorkerSet"):
                continue
            for role, template in pod_templates(m).items():
                c = template["spec"]["containers"][0]
                yield pytest.param(m, role, c["command"], c["args"], id=f"{m['metadata']['name']}-{role}")


@pytest.mark.parametrize("workload, role, command, args", list(k8s_command_lines()))
def test_vllm_own_parser_accepts_every_command_line_as_the_kubelet_expands_it(workload, role, command, args):
    name, ns = workload["metadata"]["name"], workload["metadata"]["namespace"]
    injected = {"LWS_LEADER_ADDRESS": f"{name}-0.{name}.{ns}", "LWS_WORKER_INDEX": "1" if role == "worker" else "0"}
    expanded = [kubelet_expand(a, injected) for a in args]
    assert not [a for a in expanded if "$(" in a], "a variable the pod does not have"
    assert command == ["vllm", "serve"]
    ns_args = parse_serve_args(expanded)
    assert ns_args.model == expanded[0] and ns_args.port == 8000
    if workload["kind"] == "LeaderWorkerSet":
        assert ns_args.nnodes == workload["spec"]["leaderWorkerTemplate"]["size"]
        assert ns_args.node_rank == (1 if role == "worker" else 0)
        assert ns_args.headless == (role == "worker")


# --- the offline render ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", K8S_STACKS)
def test_offline_render_writes_every_manifest_under_k8s_and_no_secret(stack, tmp_path):
    out = tmp_path / stack
    files = render_stack(stack, out, passphrase=K8S_PASSPHRASES[stack])
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == set(files)
    expected = {manifest_path(m) for m in manifests(stack)}
    assert expected == {w for w in written if w.startswith("k8s/")}
    for path in expected:
        docs = [d for d in yaml.safe_load_all((out / path).read_text())]
        assert len(docs) == 1 and docs[0]["kind"] and docs[0]["metadata"]["name"]
    assert {"nginx/nginx.conf", "prometheus/rules/vllm-fleet.yml", "helm/kube-prometheus-stack.yaml", "helm/lws.yaml",
            "vllm/vllm-llama-405b-leader.sh", "vllm/vllm-llama-405b-worker.sh", "resources.txt", "outputs.json"} <= written
    everything = "".join((out / w).read_text() for w in written)
    for value in k8s_secrets(stack).values():
        assert value not in everything
    assert "[secret]" in (out / "k8s/vllm-prod/secret-vllm-fleet-secrets.yaml").read_text()
