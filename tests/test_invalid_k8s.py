"""Kubernetes syntax and object names: what the API server would refuse is refused first, by
Kubernetes' own rules (fleet/k8s/names.py), and no two objects of the plan share a name (the
ledger, fleet/k8s/ledger.py).

The catalogue runs the real program under Pulumi's mocks on the prod-k8s stack: each case fails
with one ConfigError naming the key, before any resource is registered.
"""
from __future__ import annotations

import pytest

from fleet.config.errors import ConfigError
from fleet.config.load import parse_config
from fleet.k8s import names
from fleet.k8s.ledger import Claim, check_claims
from fleet.k8s.plan import build_k8s_plan, objects
from support.refusals import assert_refused_before_any_resource
from support.stacks import raw_stack, run_raw
from test_k8s_stack_graph import k8s_run
from tools.offline_render import k8s_manifests

STACK = "prod-k8s"
QWEN = "Qwen/Qwen2.5-0.5B-Instruct"  # a small model of files/models/, planned offline


def k8s(raw):
    return raw["kubernetes"]


def pool(raw, i=0):
    return raw["kubernetes"]["node_pools"][i]


def toleration(**t):
    return lambda raw: pool(raw).update(tolerations=[t])


def add_model(name):
    return lambda raw: raw["models"].append({"name": name, "hf_id": QWEN})


CASES = [
    # (case, mutation, key in the message, a fragment of the message)
    ("namespace with upper case and '_'", lambda r: k8s(r).update(namespace="Vllm_Prod"), "kubernetes.namespace", "pattern"),
    ("monitoring namespace with a dot", lambda r: k8s(r)["monitoring"].update(namespace="mon.prod"),
     "kubernetes.monitoring.namespace", "pattern"),
    ("node selector key with a space", lambda r: pool(r).update(node_selector={"nvidia.com/gpu product": "NVIDIA-L40S"}),
     "kubernetes.node_pools[0].node_selector.nvidia.com/gpu product", "label key"),
    ("node selector key with two slashes", lambda r: pool(r).update(node_selector={"nvidia.com/gpu/product": "x"}),
     "kubernetes.node_pools[0].node_selector.nvidia.com/gpu/product", "one '/'"),
    ("node selector value as nvidia-smi prints it", lambda r: pool(r).update(
        node_selector={"nvidia.com/gpu.product": "NVIDIA H100 80GB HBM3"}),
     "kubernetes.node_pools[0].node_selector.nvidia.com/gpu.product", "a label value: empty, or at most 63"),
    ("toleration key in taint syntax", toleration(key="nvidia.com/gpu:NoSchedule", operator="Exists"),
     "kubernetes.node_pools[0].tolerations[0].key", "name part must consist of alphanumeric"),
    ("toleration Exists with a value", toleration(key="nvidia.com/gpu", operator="Exists", value="present"),
     "kubernetes.node_pools[0].tolerations[0].value", "value must be empty when `operator` is 'Exists'"),
    ("toleration without a key and operator Equal", toleration(operator="Equal", value="true"),
     "kubernetes.node_pools[0].tolerations[0].operator", "operator must be Exists when `key` is empty"),
    ("toleration value with a space", toleration(key="dedicated", operator="Equal", value="gpu team"),
     "kubernetes.node_pools[0].tolerations[0].value", "a label value"),
    ("storage class with upper case and '_'", lambda r: k8s(r)["hf_cache"].update(storage_class="NFS_RWX"),
     "kubernetes.hf_cache.storage_class", "a DNS-1123 subdomain: at most 253"),
    ("annotation key as a URL", lambda r: k8s(r).update(service_annotations={"https://example.com/lb": "x"}),
     "kubernetes.service_annotations.https://example.com/lb", "an annotation key"),
    ("annotation key with a space", lambda r: k8s(r).update(
        service_annotations={"service.beta.kubernetes.io/aws-load-balancer scheme": "internal"}),
     "kubernetes.service_annotations.service.beta.kubernetes.io/aws-load-balancer scheme", "name part"),
    ("monitor label key with a space", lambda r: k8s(r)["monitoring"].update(monitor_labels={"release name": "kps"}),
     "kubernetes.monitoring.monitor_labels.release name", "a label key"),
    ("monitor label value with a slash", lambda r: k8s(r)["monitoring"].update(
        monitor_labels={"release": "prometheus-community/kube-prometheus-stack"}),
     "kubernetes.monitoring.monitor_labels.release", "a label value"),
    ("env var name starting with a digit", lambda r: r["models"][0].update(env={"1ST_BATCH_SIZE": "4"}),
     "models[0].env.1ST_BATCH_SIZE", "an environment variable name"),
    ("env var name with '='", lambda r: r["models"][1].update(env={"OMP=NUM_THREADS": "4"}),
     "models[1].env.OMP=NUM_THREADS", "an environment variable name"),
    ("model name longer than a Service name allows", lambda r: r["models"][0].update(name="llama-" + "x" * 60),
     "models[0].name", "pattern"),
    ("model named like the load balancer", add_model("fleet-nginx"), "models[4].name",
     "model `fleet-nginx`'s headless Service collides with the load balancer's Service"),
    ("model named like another's autoscaled replica", add_model("llama-70b-3"), "models[4].name",
     "collides with model `llama-70b`'s replica addresses (Service of replica 3)"),
    ("model named like a multi-node model's replica", add_model("llama-405b-0"), "models[4].name",
     "collides with model `llama-405b`'s"),
    ("monitoring chart in the fleet's own namespace", lambda r: k8s(r)["monitoring"].update(namespace="vllm-prod"),
     "kubernetes.monitoring.namespace", "the monitoring namespace collides with the fleet's namespace"),
]


@pytest.mark.parametrize("case, mutate, key, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_string_kubernetes_would_refuse_fails_with_one_clear_error_before_any_resource(case, mutate, key, fragment):
    raw = raw_stack(STACK)
    mutate(raw)
    assert_refused_before_any_resource(case, STACK, raw, key, fragment)


def _cfg(raw: dict, secrets: bool = False):
    return parse_config({**raw, **({"api_key": True, "hf_token": True} if secrets else {})}, STACK)


def test_a_model_whose_derived_service_name_exceeds_63_characters_is_refused_by_the_ledger():
    """The schema keeps model names short; the ledger holds on its own should that ever loosen."""
    cfg = _cfg(raw_stack(STACK))
    long = cfg.models[1].model_copy(update={"name": "qwen-" + "x" * 60})
    with pytest.raises(ConfigError) as caught:
        build_k8s_plan(cfg.model_copy(update={"models": [cfg.models[0], long, *cfg.models[2:]]}))
    err = caught.value
    assert err.key == "models[1].name" and "headless Service" in err.problem
    assert "must be no more than 63 characters" in err.problem and "DNS-1035 label" in err.allowed


def _declared(run) -> set[tuple]:
    return {(f"{m['apiVersion']}/{m['kind']}", m["metadata"].get("namespace"), m["metadata"]["name"])
            for m in k8s_manifests(run)}


VARIANTS = {
    "no chart, an existing operator": lambda r: k8s(r).update(monitoring={
        "mode": "existing-operator", "namespace": "observability", "prometheus_url": "http://prometheus.observability:9090"}),
    "a host-path cache, no namespace created": lambda r: k8s(r).update(
        hf_cache={"type": "host_path", "host_path": "/data/hf"}, create_namespace=False),
    "no monitoring": lambda r: (r["monitoring"].update(enabled=False), k8s(r).update(autoscaling=[])),
}


@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_the_ledger_claims_every_object_the_program_declares(variant):
    """Guards the ledger against drifting from the components: each declared object is claimed."""
    if variant is None:
        run, cfg = k8s_run(STACK), _cfg(raw_stack(STACK), secrets=True)
    else:
        raw = raw_stack(STACK)
        VARIANTS[variant](raw)
        run, cfg = run_raw(STACK, raw), _cfg(raw)
    claimed = {(c.kind, c.namespace, c.name) for c in objects(cfg, build_k8s_plan(cfg).workloads)}
    declared = _declared(run)
    assert declared and declared <= claimed, sorted(declared - claimed)


def test_two_claims_on_one_name_name_both_owners_and_both_keys():
    a = Claim("v1/Service", "ns", "vllm-a-1", names.SERVICE_NAME, "models[0].name", "a", "model `a`'s replica addresses")
    b = Claim("v1/Service", "ns", "vllm-a-1", names.SERVICE_NAME, "models[1].name", "a-1", "model `a-1`'s headless Service")
    other_kind = Claim("apps/v1/StatefulSet", "ns", "vllm-a-1", names.STATEFULSET_NAME, "models[1].name", "a-1", "x")
    other_ns = Claim("v1/Service", "ns2", "vllm-a-1", names.SERVICE_NAME, "models[2].name", "b", "y")
    check_claims([a, other_kind, other_ns])  # a name is unique per kind and namespace only
    with pytest.raises(ConfigError) as caught:
        check_claims([a, other_kind, b])
    assert caught.value.key == "models[1].name" and "`models[0].name`" in caught.value.fix
    assert "Service `vllm-a-1` in namespace `ns`" in caught.value.problem


def test_a_statefulset_name_leaves_room_for_its_revision_hash_label():
    assert names.statefulset_name("a" * 52) == []
    assert "controller-revision-hash" in names.statefulset_name("a" * 53)[0]


# --- the rules themselves, against k8s.io/apimachinery's own examples (pkg/util/validation/validation_test.go) ---

DNS1123_LABEL_GOOD = ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", "1--a--b--2", "a" * 63]
DNS1123_LABEL_BAD = ["", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a", "a_b", "1_",
                     "_1", "1_2", ".", "a.", ".a", "a.b", "1.", ".1", "1.2", " ", "a ", " a", "a b", "1 ", " 1", "1 2",
                     "a" * 64]
DNS1123_SUBDOMAIN_GOOD = ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", "1--a--b--2",
                          "a.a", "ab.a", "abc.a", "a1.a", "a-1.a", "a--1--2--b.a", "a.1", "ab.1", "abc.1", "a1.1", "a-1.1",
                          "a--1--2--b.1", "0.a", "01.a", "012.a", "1a.a", "1-a.a", "0.1", "01.1", "012.1", "1a.1",
                          "1-a.1", "1--a--b--2.1", "a.b.c.d.e", "aa.bb.cc.dd.ee", "1.2.3.4.5", "11.22.33.44.55", "a" * 253]
DNS1123_SUBDOMAIN_BAD = ["", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a", "a_b",
                         "1_", "_1", "1_2", ".", "a.", ".a", "a..b", "1.", ".1", "1..2", " ", "a ", " a", "a b", "1 ",
                         " 1", "1 2", "A.a", "aB.a", "ab.A", "A1.a", "a1.A", "A.1", "aB.1", "A1.1", "1A.1", "0.A", "01.A",
                         "012.A", "1A.a", "1a.A", "A.B.C.D.E", "AA.BB.CC.DD.EE", "a.B.c.d.e", "aa.bB.cc.dd.ee", "a@b",
                         "a,b", "a_b", "a;b", "a:b", "a%b", "a?b", "a$b", "a" * 254]
DNS1035_LABEL_GOOD = ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "a" * 63]
DNS1035_LABEL_BAD = ["0", "01", "012", "1a", "1-a", "1--a--b--2", "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-",
                     "-a", "1-", "-1", "_", "a_", "_a", "a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a.b", "1.", ".1",
                     "1.2", " ", "a ", " a", "a b", "1 ", " 1", "1 2", "a" * 64]
QUALIFIED_NAME_GOOD = ["simple", "now-with-dashes", "1-starts-with-num", "1234", "simple/simple", "now-with-dashes/simple",
                       "now-with-dashes/now-with-dashes", "now.with.dots/simple", "now-with.dashes-and.dots/simple",
                       "1-num.2-num/3-num", "1234/5678", "1.2.3.4/5678", "Uppercase_Is_OK_123",
                       "example.com/Uppercase_Is_OK_123", "requests.storage-foo", "a" * 63, "a" * 253 + "/" + "b" * 63]
QUALIFIED_NAME_BAD = ["nospecialchars%^=@", "cantendwithadash-", "-cantstartwithadash-", "only/one/slash", "Example.com/abc",
                      "example_com/abc", "example.com/", "/simple", "a" * 64, "a" * 254 + "/abc"]
LABEL_VALUE_GOOD = ["simple", "now-with-dashes", "1-starts-with-num", "end-with-num-1", "1234", "a" * 63, ""]
LABEL_VALUE_BAD = ["nospecialchars%^=@", "Tama-nui-te-rā.is.Māori.sun", "\\backslashes\\are\\bad", "-starts-with-dash",
                   "ends-with-dash-", ".starts.with.dot", "ends.with.dot.", "a" * 64]
# IsEnvVarName's own examples (its error message) and its hasChDirPrefix cases.
ENV_VAR_GOOD = ["my.env-name", "MY_ENV.NAME", "MyEnvName1", "_PRIVATE", "-dash"]
ENV_VAR_BAD = ["", "1ST", "MY ENV", "MY=ENV", "a!b", ".", "..", "..foo"]

RULE_CASES = [
    (names.dns1123_label, DNS1123_LABEL_GOOD, DNS1123_LABEL_BAD),
    (names.dns1123_subdomain, DNS1123_SUBDOMAIN_GOOD, DNS1123_SUBDOMAIN_BAD),
    (names.dns1035_label, DNS1035_LABEL_GOOD, DNS1035_LABEL_BAD),
    (names.qualified_name, QUALIFIED_NAME_GOOD, QUALIFIED_NAME_BAD),
    (names.label_value, LABEL_VALUE_GOOD, LABEL_VALUE_BAD),
    (names.env_var_name, ENV_VAR_GOOD, ENV_VAR_BAD),
]


@pytest.mark.parametrize("rule, good, bad", RULE_CASES, ids=[r[0].__name__ for r in RULE_CASES])
def test_each_rule_accepts_and_refuses_what_apimachinery_does(rule, good, bad):
    assert {v: rule(v) for v in good if rule(v)} == {}
    assert [v for v in bad if not rule(v)] == []


def test_an_annotation_key_is_checked_lower_cased_as_the_api_server_does():
    assert names.annotation_key("Example.com/abc") == [] and names.qualified_name("Example.com/abc") != []


@pytest.mark.parametrize("key, operator, value, fields", [
    ("nvidia.com/gpu", "Exists", None, []),
    (None, "Exists", None, []),  # every taint
    ("dedicated", "Equal", "gpu", []),
    ("dedicated", "Equal", None, []),  # an empty value is a valid label value
    (None, "Equal", "gpu", ["operator"]),
    ("nvidia.com/gpu", "Exists", "present", ["value"]),
    ("a/b/c", "Exists", None, ["key"]),
    ("dedicated", "Equal", "gpu team", ["value"]),
])
def test_tolerations_follow_validate_tolerations(key, operator, value, fields):
    assert [f for f, _ in names.toleration(key, operator, value)] == fields
