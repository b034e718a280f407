"""The stack config's strings that reach the cluster as written (namespaces, node labels,
tolerations, the storage class, annotation keys, monitor labels, env var names), checked by
Kubernetes' own rules (fleet.k8s.names) before any resource, so `pulumi up` is never the first to
refuse one. Names the plan derives from them are the ledger's (fleet.k8s.plan.objects).
"""
from __future__ import annotations

from fleet.config.errors import ConfigError
from fleet.config.schema import FleetConfig
from fleet.k8s import names


def _check(key: str, value: str, rule: names.Rule, what: str, fix: str) -> None:
    problems = rule(value)
    if problems:
        raise ConfigError(key, value, f"the API server refuses this {what}: {'; '.join(problems)}", rule.allowed, fix)


def _check_labels(key: str, labels: dict[str, str], what: str) -> None:
    for name, value in labels.items():
        _check(f"{key}.{name}", name, names.LABEL_KEY, f"{what} key", f"rename the key under `{key}`")
        _check(f"{key}.{name}", value, names.LABEL_VALUE, f"{what} value", f"change the value of `{key}.{name}`")


def check_inputs(cfg: FleetConfig) -> None:
    """One ConfigError for the first string the API server would refuse, in config order."""
    k8s = cfg.kubernetes
    _check("kubernetes.namespace", k8s.namespace, names.DNS_LABEL, "namespace name", "choose another namespace name")
    _check("kubernetes.monitoring.namespace", k8s.monitoring.namespace, names.DNS_LABEL, "namespace name",
                "choose another namespace name")
    for i, pool in enumerate(k8s.node_pools):
        key = f"kubernetes.node_pools[{i}]"
        _check_labels(f"{key}.node_selector", pool.node_selector, "node label")
        for j, t in enumerate(pool.tolerations):
            for field, problem in names.toleration(t.key, t.operator, t.value):
                tk = f"{key}.tolerations[{j}].{field}"
                allowed, fix = {
                    "key": (names.LABEL_KEY.allowed, "write the taint's key as `kubectl describe node` shows it"),
                    "operator": ("operator Exists without a key (every taint), or a key with Equal or Exists",
                                 f"set `{key}.tolerations[{j}].key`, or `operator: Exists` to tolerate every taint"),
                    "value": ((names.LABEL_VALUE.allowed if t.operator == "Equal" else "no value with operator Exists"),
                              ("write the taint's value as `kubectl describe node` shows it" if t.operator == "Equal"
                               else f"remove `{tk}`, or set `operator: Equal` to match it")),
                }[field]
                raise ConfigError(tk, getattr(t, field), f"the API server refuses this toleration: {problem}", allowed, fix)
    if k8s.hf_cache.storage_class is not None:
        _check("kubernetes.hf_cache.storage_class", k8s.hf_cache.storage_class, names.DNS_SUBDOMAIN,
                    "StorageClass name", "name a StorageClass as `kubectl get storageclass` lists it")
    for name in k8s.service_annotations:
        _check(f"kubernetes.service_annotations.{name}", name, names.ANNOTATION_KEY, "annotation key",
                    "write the key as your cloud's load balancer documents it")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in k8s.service_annotations.items())
    if size > names.ANNOTATIONS_TOTAL_MAX:
        raise ConfigError("kubernetes.service_annotations", f"<{size} bytes>", "annotations larger than the API server accepts",
                          f"at most {names.ANNOTATIONS_TOTAL_MAX} bytes of keys and values", "move large values elsewhere")
    _check_labels("kubernetes.monitoring.monitor_labels", k8s.monitoring.monitor_labels, "label")
    for i, m in enumerate(cfg.models):
        for name in m.env:
            _check(f"models[{i}].env.{name}", name, names.ENV_VAR_NAME, "environment variable name",
                        "rename the variable (e.g. MY_SETTING)")
