"""Kubernetes manifests of the fleet, as plain dicts (the API's camelCase), from a `K8sPlan`.

Pure functions, no Pulumi: the components declare exactly these objects, and the tests validate
them (kubernetes-validate, the LeaderWorkerSet schema in files/k8s/, checkov) as the cluster will
see them. Secret values never appear here: a Secret's keys are planned, its values are added by
the component as Pulumi secrets.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
from typing import Any, Optional

import yaml

from fleet import rollout, vllm_command as vc
from fleet.k8s.plan import (
    ALERT_RULES, API_PORT, FLEET_SECRET, HF_CACHE_CLAIM, NGINX_NAME, OTEL_MONITOR, SERVICE_ACCOUNT, SERVICE_PORT_NAME,
    NGINX_TLS_SECRET, SHM_PATH, VLLM_MONITOR, K8sPlan, PodRole, Workload, dashboards_name, dcgm_exporter_name, grafana_admin_name, labels,
    pod_ports, selector_labels, workload_labels,
)
from fleet.ports import (DCGM_PORT, NGINX_CONF_DIR, NGINX_EXPORTER_PORT, NGINX_PORT, NGINX_STATUS_PORT, NGINX_STOP_GRACE_S,
                         NGINX_TLS_DIR, NGINX_TLS_PORT, TLS_CERT_FILE, TLS_KEY_FILE)
from fleet.render.files import UPSTREAM_KEY_ENV
from fleet.render.templates import static

Manifest = dict[str, Any]

NGINX_UID = 10101  # nginx runs unprivileged: every path it writes is an emptyDir, its ports are > 1024
EXPORTER_UID = 65534
KPS_FULLNAME = "vllm-fleet"  # fullnameOverride of kube-prometheus-stack: stable service names
KPS_REPO = "https://prometheus-community.github.io/helm-charts"
LWS_CHART = "oci://registry.k8s.io/lws/charts/lws"
LWS_NAMESPACE = "lws-system"
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"
GRAFANA_FOLDER_ANNOTATION = "grafana_folder"
SECRET_KEYS = ("api_key", "hf_token")
CHECKSUM_ANNOTATION = "vllm-fleet/nginx-conf-sha256"
PRESTOP_S = 10  # the Service drops a terminating pod before vLLM stops accepting requests
ROLLOUT_MARGIN_S = 300  # scheduling, image pull of a cached image, container start


def min_ready_s(plan: "K8sPlan") -> int:
    """A replaced vLLM pod counts as available only after this long Ready (Nginx's bench, fleet/rollout.py)."""
    return max(30, rollout.settle_s(plan.cfg))


def rollout_timeout_s(plan: "K8sPlan", w: "Workload") -> int:
    """How long `pulumi up` waits for a workload: its replicas start one after another on an update."""
    return w.max_replicas * (w.model.start_timeout_s + min_ready_s(plan) + ROLLOUT_MARGIN_S)


CHECKOV_SKIPS = "k8s/checkov-skips.yaml"


@functools.lru_cache(maxsize=1)
def _reviewed_skips() -> tuple[dict, ...]:
    return tuple(yaml.safe_load(static(CHECKOV_SKIPS))["skips"])


def checkov_skips(manifest: Manifest) -> dict[str, str]:
    """The reviewed skips (files/k8s/checkov-skips.yaml) that apply to this object, as checkov's
    own annotations (`checkov.io/skipN: CHECK=comment`), so every checkov run on the cluster's
    objects or our render, `make checkov` and a user's own CI included, honours the same list."""
    spec = manifest.get("spec") or {}
    if "template" not in spec and "leaderWorkerTemplate" not in spec:
        return {}  # every reviewed skip is about containers: objects without pods need none
    md = manifest["metadata"]
    resource = f"{manifest['kind']}.{md.get('namespace', 'default')}.{md['name']}"
    checks = [c for skip in _reviewed_skips()
              if any(fnmatch.fnmatchcase(resource, pattern) for pattern in skip["resources"]) for c in skip["checks"]]
    # checkov splits the value on "=": the comment must not contain one.
    return {f"checkov.io/skip{i}": f"{check}=reviewed in files/{CHECKOV_SKIPS}"
            for i, check in enumerate(dict.fromkeys(checks), start=1)}


def with_checkov_skips(manifest: Manifest) -> Manifest:
    skips = checkov_skips(manifest)
    if not skips:
        return manifest
    md = manifest["metadata"]
    return {**manifest, "metadata": {**md, "annotations": {**md.get("annotations", {}), **skips}}}


def meta(name: str, namespace: Optional[str], lbls: dict[str, str], annotations: Optional[dict[str, str]] = None) -> dict:
    out: dict[str, Any] = {"name": name, "labels": dict(lbls)}
    if namespace:
        out["namespace"] = namespace
    if annotations:
        out["annotations"] = dict(annotations)
    return out


# --- namespace-wide objects ------------------------------------------------------------------------


def namespace(plan: K8sPlan, name: str, pod_security: str) -> Manifest:
    lbls = labels(plan.cfg, "vllm-fleet", name, "namespace")
    lbls |= {f"pod-security.kubernetes.io/{mode}": pod_security for mode in ("enforce", "audit", "warn")}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta(name, None, lbls)}


def app_pod_security(plan: K8sPlan) -> str:
    """`baseline` admits vLLM (root in its image, no added capability); a hostPath cache needs more."""
    return "privileged" if plan.k8s.hf_cache.type == "host_path" else "baseline"


def service_account(plan: K8sPlan, name: str, ns: str) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(name, ns, labels(plan.cfg, "vllm-fleet", name, "service-account")),
            "automountServiceAccountToken": False}


def fleet_secret(plan: K8sPlan, keys: list[str]) -> Manifest:
    """The Secret the vLLM pods read the API key and HF token from; its values come from Pulumi."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": meta(FLEET_SECRET, plan.namespace, labels(plan.cfg, "vllm-fleet", FLEET_SECRET, "secret")),
            "stringData": {k: "" for k in keys}}


def hf_cache_claim(plan: K8sPlan) -> Optional[Manifest]:
    cache = plan.k8s.hf_cache
    if cache.type != "pvc":
        return None
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": cache.size}}}
    if cache.storage_class:
        spec["storageClassName"] = cache.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": meta(HF_CACHE_CLAIM, plan.namespace, labels(plan.cfg, "vllm-fleet", HF_CACHE_CLAIM, "hf-cache")),
            "spec": spec}


# --- vLLM workloads --------------------------------------------------------------------------------


def _env(plan: K8sPlan, role: PodRole) -> list[dict]:
    env = [{"name": k, "value": v} for k, v in role.env.items()]
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": FLEET_SECRET, "key": key}}}
            for k, key in role.secret_env.items()]
    env += [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": path}}} for k, path in role.field_env.items()]
    return env


def _probe(period: int, failures: int, timeout: int) -> dict:
    return {"httpGet": {"path": "/health", "port": SERVICE_PORT_NAME}, "periodSeconds": period,
            "failureThreshold": failures, "timeoutSeconds": timeout}


def _pool_scheduling(w: Workload) -> dict:
    out: dict[str, Any] = {}
    if w.pool.node_selector:
        out["nodeSelector"] = dict(w.pool.node_selector)
    if w.pool.tolerations:
        out["tolerations"] = [t.model_dump(exclude_none=True) for t in w.pool.tolerations]
    return out


def _spread(match: dict[str, str]) -> dict:
    """Prefer different nodes for pods of the same set (a node failure takes one replica only)."""
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": dict(match)}}}]}}


def vllm_pod(plan: K8sPlan, w: Workload, role: PodRole) -> dict:
    """The pod template of one role of a workload: GPUs of its pool, shm, HF cache, secrets."""
    server = role.role == "server"
    gpus = str(w.gpus_per_pod)
    memory = f"{w.memory_gib}Gi"
    container: dict[str, Any] = {
        "name": "vllm" if server else "vllm-worker",
        "image": w.model.resolved_image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(role.command),
        "args": list(role.args),
        "env": _env(plan, role),
        "resources": {"requests": {"cpu": w.cpu, "memory": memory, "nvidia.com/gpu": gpus},
                      "limits": {"memory": memory, "nvidia.com/gpu": gpus}},
        "volumeMounts": [{"name": "hf-cache", "mountPath": vc.HF_HOME}, {"name": "dshm", "mountPath": SHM_PATH}],
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]}},
    }
    ports = pod_ports(w, role)
    if ports:
        container["ports"] = ports
    if server:
        # How long the replica may download and load its weights before Kubernetes restarts it.
        container["startupProbe"] = _probe(10, -(-w.model.start_timeout_s // 10), 5)
        container["readinessProbe"] = _probe(10, 3, 5)
        container["livenessProbe"] = _probe(15, 4, 10)
        # Let the Service drop this pod before vLLM stops accepting requests.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": PRESTOP_S}}}
    cache = plan.k8s.hf_cache
    hf_volume = ({"name": "hf-cache", "persistentVolumeClaim": {"claimName": HF_CACHE_CLAIM}} if cache.type == "pvc"
                 else {"name": "hf-cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}})
    spec: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        # Service links would put VLLM_*-named variables (from `vllm-...` Services) into vLLM's environment.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": PRESTOP_S + vc.stop_grace_s(w.model),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        **_pool_scheduling(w),
        "containers": [container],
        "volumes": [hf_volume, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{w.shm_mib}Mi"}}],
    }
    if not w.multi_node:
        spec["affinity"] = _spread(selector_labels("vllm", w.name))
    return spec


def _template(plan: K8sPlan, w: Workload, role: PodRole) -> dict:
    container = "vllm" if role.role == "server" else "vllm-worker"
    return {"metadata": {"labels": workload_labels(plan, w, role.role),
                         "annotations": {"kubectl.kubernetes.io/default-container": container}},
            "spec": vllm_pod(plan, w, role)}


def statefulset(plan: K8sPlan, w: Workload) -> Manifest:
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta(w.name, plan.namespace, workload_labels(plan, w, "server")),
        "spec": {
            "serviceName": w.name,
            "replicas": w.replicas,
            # Replicas load their weights side by side; start order buys nothing here. Updates still
            # replace one pod at a time and wait for it to be Ready for minReadySeconds: at least
            # until Nginx's bench on it has expired (fleet/rollout.py).
            "podManagementPolicy": "Parallel",
            "minReadySeconds": min_ready_s(plan),
            "revisionHistoryLimit": 5,
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "partition": 0}},
            "selector": {"matchLabels": selector_labels("vllm", w.name)},
            "template": _template(plan, w, w.server),
        },
    }


def leaderworkerset(plan: K8sPlan, w: Workload) -> Manifest:
    """One group of `w.nodes` pods per replica, the way vLLM documents multi-node serving on LWS."""
    assert w.worker is not None
    # With one replica, a new group comes up before the old one goes (it needs a free set of nodes;
    # until then the rollout waits and the old group keeps serving). With more, one at a time.
    rolling = {"maxUnavailable": 0, "maxSurge": 1} if w.replicas == 1 else {"maxUnavailable": 1, "maxSurge": 0}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
        "metadata": meta(w.name, plan.namespace, workload_labels(plan, w, "server"),
                         {"pulumi.com/waitFor": "condition=Available"}),
        "spec": {
            "replicas": w.replicas,
            "startupPolicy": "LeaderCreated",
            "networkConfig": {"subdomainPolicy": "Shared"},
            "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": rolling},
            "leaderWorkerTemplate": {
                "size": w.nodes,
                # A pipeline stage that dies leaves the others hanging in NCCL: restart the whole group.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _template(plan, w, w.server),
                "workerTemplate": _template(plan, w, w.worker),
            },
        },
    }


def workload(plan: K8sPlan, w: Workload) -> Manifest:
    return leaderworkerset(plan, w) if w.multi_node else statefulset(plan, w)


def headless_service(plan: K8sPlan, w: Workload) -> Optional[Manifest]:
    """The StatefulSet's governing Service (a LeaderWorkerSet creates its own, named like it)."""
    if w.multi_node:
        return None
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta(w.name, plan.namespace, workload_labels(plan, w, "server")),
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": selector_labels("vllm", w.name),
                     "ports": [{"name": SERVICE_PORT_NAME, "port": API_PORT, "targetPort": SERVICE_PORT_NAME, "protocol": "TCP"}]}}


def replica_selector(w: Workload, i: int) -> dict[str, str]:
    if w.multi_node:
        return {"leaderworkerset.sigs.k8s.io/name": w.name, "leaderworkerset.sigs.k8s.io/group-index": str(i),
                "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    return {"statefulset.kubernetes.io/pod-name": w.replica_service(i)}


def replica_service(plan: K8sPlan, w: Workload, i: int) -> Manifest:
    """Replica `i`'s stable address: a ClusterIP that follows its pod across reschedules."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta(w.replica_service(i), plan.namespace,
                             workload_labels(plan, w, "server") | {"vllm-fleet/replica": w.replica_name(i)}),
            "spec": {"type": "ClusterIP", "selector": replica_selector(w, i),
                     "ports": [{"name": SERVICE_PORT_NAME, "port": API_PORT, "targetPort": API_PORT, "protocol": "TCP"}]}}


def disruption_budget(plan: K8sPlan, w: Workload) -> Manifest:
    """At most one pod (so one replica, or one group) of a model disrupted at a time; a single
    replica can still be drained."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": meta(w.name, plan.namespace, workload_labels(plan, w, "server")),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels("vllm", w.name)},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def _from_monitoring(plan: K8sPlan) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": plan.k8s.monitoring.namespace}}}


def network_policy(plan: K8sPlan, w: Workload) -> Manifest:
    """Only Nginx reaches the API, only Prometheus the metrics, and only group peers the NCCL ports."""
    api = [{"port": API_PORT, "protocol": "TCP"}]
    rules: list[dict] = [{"from": [{"podSelector": {"matchLabels": nginx_selector(plan)}}], "ports": api}]
    if plan.cfg.monitoring.enabled:
        ports = api + ([{"port": vc.OTEL_PORT, "protocol": "TCP"}] if w.model.runtime == "seed-otel" else [])
        rules.append({"from": [_from_monitoring(plan)], "ports": ports})
    if w.multi_node:
        rules.append({"from": [{"podSelector": {"matchLabels": selector_labels("vllm", w.name)}}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(w.name, plan.namespace, workload_labels(plan, w, "server")),
            "spec": {"podSelector": {"matchLabels": selector_labels("vllm", w.name)}, "policyTypes": ["Ingress"],
                     "ingress": rules}}


def prometheus_url(plan: K8sPlan) -> str:
    mon = plan.k8s.monitoring
    if mon.prometheus_url:
        return mon.prometheus_url
    return f"http://{KPS_FULLNAME}-prometheus.{mon.namespace}.svc.cluster.local:9090"


def waiting_query(w: Workload) -> str:
    return f'sum(vllm:num_requests_waiting{{job="vllm", model="{w.model.name}"}})'


def scaled_object(plan: K8sPlan, w: Workload) -> Optional[Manifest]:
    """KEDA scales the model between its `replicas` and `max_replicas` on waiting requests."""
    auto = w.autoscaling
    if auto is None:
        return None
    target = ({"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet"} if w.multi_node
              else {"apiVersion": "apps/v1", "kind": "StatefulSet"})
    one_at_a_time = [{"type": "Pods", "value": 1, "periodSeconds": 300}]  # a new replica loads for minutes
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": meta(w.name, plan.namespace, workload_labels(plan, w, "server")),
            "spec": {
                "scaleTargetRef": {**target, "name": w.name},
                "minReplicaCount": w.replicas, "maxReplicaCount": auto.max_replicas,
                "pollingInterval": auto.polling_interval_s, "cooldownPeriod": auto.cooldown_s,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 60, "policies": one_at_a_time},
                    "scaleDown": {"stabilizationWindowSeconds": auto.cooldown_s, "policies": one_at_a_time}}}},
                "triggers": [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
                    "serverAddress": prometheus_url(plan), "query": waiting_query(w),
                    "threshold": str(auto.waiting_per_replica), "ignoreNullValues": "true"}}],
            }}


# --- Nginx ------------------------------------------------------------------------------------------


def nginx_selector(plan: K8sPlan) -> dict[str, str]:
    return selector_labels("nginx", NGINX_NAME)


def nginx_labels(plan: K8sPlan) -> dict[str, str]:
    return labels(plan.cfg, "nginx", NGINX_NAME, "load-balancer")


def nginx_config_map(plan: K8sPlan, files: dict[str, str]) -> Manifest:
    """nginx.conf and the files it reads beside it (fleet/render/files.py `nginx_files`)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(NGINX_NAME, plan.namespace, nginx_labels(plan)),
            "data": dict(files)}


def conf_checksum(conf: str) -> str:
    return hashlib.sha256(conf.encode()).hexdigest()


def nginx_tls_secret(plan: K8sPlan) -> Manifest:
    """The Secret Nginx reads its certificate and key from, made from the TLS secrets (values added
    by the component as Pulumi secrets); with `tls.secret_name` the stack's own is mounted instead."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": meta(NGINX_TLS_SECRET, plan.namespace, nginx_labels(plan)),
            "stringData": {TLS_CERT_FILE: "", TLS_KEY_FILE: ""}}


def _nginx_tls(plan: K8sPlan) -> dict[str, list[dict]]:
    """What HTTPS adds to the Nginx pods: the port, and the TLS Secret mounted where nginx.conf
    reads it (group-readable by Nginx's group only; Nginx reads it at start, a config change rolls
    the pods, and a renewed Secret of `secret_name` reaches them when they restart)."""
    if plan.tls_secret is None:
        return {"ports": [], "mounts": [], "volumes": []}
    return {"ports": [{"name": "https", "containerPort": NGINX_TLS_PORT, "protocol": "TCP"}],
            "mounts": [{"name": "tls", "mountPath": NGINX_TLS_DIR, "readOnly": True}],
            "volumes": [{"name": "tls", "secret": {"secretName": plan.tls_secret, "defaultMode": 0o440}}]}


def nginx_deployment(plan: K8sPlan, conf: str) -> Manifest:
    """Nginx pods on the rendered config; a config change rolls them (checksum annotation), one
    new pod ready before an old one goes."""
    lb, mon = plan.cfg.load_balancer, plan.cfg.monitoring
    tls = _nginx_tls(plan)
    drop_all = {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]}}
    nginx = {
        "name": "nginx", "image": lb.image, "imagePullPolicy": "IfNotPresent",
        # Straight to nginx: the image's entrypoint scripts rewrite files under /etc/nginx.
        "command": ["nginx"], "args": ["-e", "stderr", "-c", f"{NGINX_CONF_DIR}/nginx.conf", "-g", "daemon off;"],
        "ports": [{"name": "http", "containerPort": NGINX_PORT, "protocol": "TCP"},
                  {"name": "status", "containerPort": NGINX_STATUS_PORT, "protocol": "TCP"}, *tls["ports"]],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
        # Stop taking new connections, then let streams in flight finish (nginx -s quit), before SIGTERM.
        "lifecycle": {"preStop": {"exec": {"command": [
            "/bin/sh", "-c", "sleep 5; nginx -s quit -c /etc/nginx/fleet/nginx.conf; while pgrep -x nginx >/dev/null; do sleep 1; done"]}}},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": drop_all,
        # With client keys, Nginx authenticates to the replicas with the fleet's own api_key.
        **({"env": [{"name": UPSTREAM_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": FLEET_SECRET, "key": "api_key"}}}]}
           if lb.keys and plan.cfg.has_api_key else {}),
        "volumeMounts": [{"name": "conf", "mountPath": NGINX_CONF_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": "/var/cache/nginx"},
                         *tls["mounts"]],
    }
    containers = [nginx]
    if mon.enabled and mon.nginx_exporter:
        containers.append({
            "name": "nginx-exporter", "image": mon.nginx_exporter_image, "imagePullPolicy": "IfNotPresent",
            "args": [f"--nginx.scrape-uri=http://127.0.0.1:{NGINX_STATUS_PORT}/stub_status"],
            "ports": [{"name": "exporter", "containerPort": NGINX_EXPORTER_PORT, "protocol": "TCP"}],
            "readinessProbe": {"tcpSocket": {"port": "exporter"}, "periodSeconds": 10},
            "livenessProbe": {"tcpSocket": {"port": "exporter"}, "periodSeconds": 20},
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}},
            "securityContext": drop_all | {"runAsUser": EXPORTER_UID, "runAsGroup": EXPORTER_UID},
        })
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(NGINX_NAME, plan.namespace, nginx_labels(plan)),
        "spec": {
            "replicas": plan.k8s.nginx_replicas,
            "minReadySeconds": 5,
            "revisionHistoryLimit": 5,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": nginx_selector(plan)},
            "template": {
                "metadata": {"labels": nginx_labels(plan),
                             "annotations": {CHECKSUM_ANNOTATION: conf_checksum(conf),
                                             "kubectl.kubernetes.io/default-container": "nginx"}},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": NGINX_STOP_GRACE_S,  # streams finish on the old pod
                    "securityContext": {"runAsNonRoot": True, "runAsUser": NGINX_UID, "runAsGroup": NGINX_UID,
                                        "seccompProfile": {"type": "RuntimeDefault"},
                                        **({"fsGroup": NGINX_UID} if tls["volumes"] else {})},
                    "affinity": _spread(nginx_selector(plan)),
                    "containers": containers,
                    "volumes": [{"name": "conf", "configMap": {"name": NGINX_NAME}},
                                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                                {"name": "cache", "emptyDir": {"sizeLimit": "64Mi"}}, *tls["volumes"]],
                },
            },
        },
    }


def nginx_service(plan: K8sPlan) -> Manifest:
    spec: dict[str, Any] = {"type": plan.k8s.service_type, "selector": nginx_selector(plan),
                            "ports": [{"name": "http", "port": plan.cfg.load_balancer.port, "targetPort": "http", "protocol": "TCP"}]}
    if plan.tls_secret is not None:
        spec["ports"].append({"name": "https", "port": plan.cfg.load_balancer.tls.port, "targetPort": "https", "protocol": "TCP"})
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta(NGINX_NAME, plan.namespace, nginx_labels(plan), plan.k8s.service_annotations or None),
            "spec": spec}


def nginx_disruption_budget(plan: K8sPlan) -> Manifest:
    budget = {"minAvailable": 1} if plan.k8s.nginx_replicas > 1 else {"maxUnavailable": 1}
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": meta(NGINX_NAME, plan.namespace, nginx_labels(plan)),
            "spec": {**budget, "selector": {"matchLabels": nginx_selector(plan)}}}


def nginx_network_policy(plan: K8sPlan) -> Manifest:
    public = [NGINX_PORT] + ([NGINX_TLS_PORT] if plan.tls_secret is not None else [])
    rules: list[dict] = [{"ports": [{"port": p, "protocol": "TCP"} for p in public]}]  # the public API, from anywhere
    mon = plan.cfg.monitoring
    if mon.enabled and mon.nginx_exporter:
        rules.append({"from": [_from_monitoring(plan)], "ports": [{"port": NGINX_EXPORTER_PORT, "protocol": "TCP"}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(NGINX_NAME, plan.namespace, nginx_labels(plan)),
            "spec": {"podSelector": {"matchLabels": nginx_selector(plan)}, "policyTypes": ["Ingress"], "ingress": rules}}


# --- monitoring ------------------------------------------------------------------------------------------


def monitor_meta(plan: K8sPlan, name: str, ns: str, role: str) -> dict:
    return meta(name, ns, labels(plan.cfg, "vllm-fleet", name, role) | plan.k8s.monitoring.monitor_labels)


def _relabel(target: str, replacement: Optional[str] = None, source: Optional[list[str]] = None,
             regex: Optional[str] = None) -> dict:
    out: dict[str, Any] = {"action": "replace", "targetLabel": target}
    if source:
        out["sourceLabels"] = source
    if regex:
        out["regex"] = regex
    if replacement is not None:
        out["replacement"] = replacement
    return out


NODE = "__meta_kubernetes_pod_node_name"


def vllm_pod_monitor(plan: K8sPlan) -> Manifest:
    """Every vLLM API server (StatefulSet pods and group leaders; headless workers serve nothing),
    with the labels the alert rules and dashboard use: job, model, replica, host."""
    relabel = [
        _relabel("job", "vllm"),
        _relabel("model", source=["__meta_kubernetes_pod_label_vllm_fleet_model"]),
        _relabel("replica", "$1", source=["__meta_kubernetes_pod_name"], regex="vllm-(.*)"),
        _relabel("host", source=[NODE]),
    ]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": monitor_meta(plan, VLLM_MONITOR, plan.namespace, "monitor"),
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/component": "server",
                                                  "vllm-fleet/stack": plan.cfg.stack}},
                     "podMetricsEndpoints": [{"port": SERVICE_PORT_NAME, "path": "/metrics",
                                              "interval": f"{plan.cfg.monitoring.scrape_interval_s}s",
                                              "relabelings": relabel}]}}


def otel_pod_monitor(plan: K8sPlan) -> Optional[Manifest]:
    if not any(w.model.runtime == "seed-otel" for w in plan.workloads):
        return None
    relabel = [_relabel("job", "vllm-otel"), _relabel("model", source=["__meta_kubernetes_pod_label_vllm_fleet_model"]),
               _relabel("replica", "$1", source=["__meta_kubernetes_pod_name"], regex="vllm-(.*)"), _relabel("host", source=[NODE])]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": monitor_meta(plan, OTEL_MONITOR, plan.namespace, "monitor"),
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/component": "server",
                                                  "vllm-fleet/runtime": "seed-otel", "vllm-fleet/stack": plan.cfg.stack}},
                     "podMetricsEndpoints": [{"port": "otel", "path": "/metrics", "relabelings": relabel}]}}


def nginx_pod_monitor(plan: K8sPlan) -> Optional[Manifest]:
    mon = plan.cfg.monitoring
    if not mon.nginx_exporter:
        return None
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": monitor_meta(plan, NGINX_NAME, plan.namespace, "monitor"),
            "spec": {"selector": {"matchLabels": nginx_selector(plan)},
                     "podMetricsEndpoints": [{"port": "exporter", "path": "/metrics", "interval": f"{mon.scrape_interval_s}s",
                                              "relabelings": [_relabel("job", "nginx"), _relabel("host", source=[NODE])]}]}}


def prometheus_rule(plan: K8sPlan) -> Manifest:
    """Our alert rules (the same file the Docker target's Prometheus loads), as the operator's CR."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": monitor_meta(plan, ALERT_RULES, plan.namespace, "alert-rules"),
            "spec": {"groups": plan.alert_groups()}}


def dashboards_config_map(plan: K8sPlan) -> Manifest:
    """Grafana's dashboard sidecar loads ConfigMaps labelled grafana_dashboard=1."""
    name = dashboards_name(plan.cfg.stack)
    m = meta(name, plan.k8s.monitoring.namespace, labels(plan.cfg, "vllm-fleet", name, "dashboards") | {GRAFANA_DASHBOARD_LABEL: "1"},
             {GRAFANA_FOLDER_ANNOTATION: "vLLM fleet"})
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": m,
            "data": {"vllm-fleet.json": static("grafana/dashboards/vllm-fleet.json")}}


def grafana_secret_name(plan: K8sPlan) -> str:
    return grafana_admin_name(plan.cfg.stack)


def grafana_admin_secret(plan: K8sPlan) -> Manifest:
    name = grafana_secret_name(plan)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": meta(name, plan.k8s.monitoring.namespace, labels(plan.cfg, "vllm-fleet", name, "secret")),
            "stringData": {"admin-user": "admin", "admin-password": ""}}


def kube_prometheus_stack_values(plan: K8sPlan) -> dict:
    """Helm values: our retention and scrape interval, every namespace's monitors and rules, the
    Grafana admin from our Secret, a datasource uid our dashboard refers to, dashboards from ConfigMaps."""
    mon = plan.cfg.monitoring
    everywhere = {"podMonitorSelectorNilUsesHelmValues": False, "serviceMonitorSelectorNilUsesHelmValues": False,
                  "ruleSelectorNilUsesHelmValues": False}
    return {
        "fullnameOverride": KPS_FULLNAME,
        "prometheus": {"prometheusSpec": {"retention": mon.retention, "scrapeInterval": f"{mon.scrape_interval_s}s",
                                          **everywhere}},
        "grafana": {
            "fullnameOverride": f"{KPS_FULLNAME}-grafana",
            "admin": {"existingSecret": grafana_secret_name(plan), "userKey": "admin-user", "passwordKey": "admin-password"},
            "grafana.ini": {"users": {"allow_sign_up": False}, "auth.anonymous": {"enabled": False},
                            "analytics": {"reporting_enabled": False, "check_for_updates": False}},
            "sidecar": {
                "datasources": {"enabled": True, "defaultDatasourceEnabled": True, "uid": "prometheus"},
                "dashboards": {"enabled": True, "label": GRAFANA_DASHBOARD_LABEL, "labelValue": "1",
                               "folderAnnotation": GRAFANA_FOLDER_ANNOTATION,
                               "provider": {"foldersFromFilesStructure": True}},
            },
        },
    }


def grafana_url(plan: K8sPlan) -> str:
    return f"http://{KPS_FULLNAME}-grafana.{plan.k8s.monitoring.namespace}.svc.cluster.local"


def dcgm_name(plan: K8sPlan) -> str:
    return dcgm_exporter_name(plan.cfg.stack)


def dcgm_labels(plan: K8sPlan) -> dict[str, str]:
    return labels(plan.cfg, "dcgm-exporter", dcgm_name(plan), "gpu-exporter")


def dcgm_daemonset(plan: K8sPlan) -> Manifest:
    """NVIDIA's DCGM exporter on every node of the GPU pools (what the GPU alerts read)."""
    pools = plan.k8s.node_pools
    scheduling: dict[str, Any] = {}
    if all(p.node_selector for p in pools):
        terms = [{"matchExpressions": [{"key": k, "operator": "In", "values": [v]} for k, v in p.node_selector.items()]}
                 for p in pools]
        scheduling["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}
    else:  # a pool without a selector: every node NVIDIA's feature discovery marks as a GPU node
        scheduling["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    tolerations = []
    for p in pools:
        for t in p.tolerations:
            item = t.model_dump(exclude_none=True)
            if item not in tolerations:
                tolerations.append(item)
    if tolerations:
        scheduling["tolerations"] = tolerations
    ns = plan.k8s.monitoring.namespace
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": meta(dcgm_name(plan), ns, dcgm_labels(plan)),
        "spec": {
            "selector": {"matchLabels": selector_labels("dcgm-exporter", dcgm_name(plan))},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": dcgm_labels(plan)},
                "spec": {
                    "serviceAccountName": dcgm_name(plan),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    **scheduling,
                    "containers": [{
                        "name": "dcgm-exporter", "image": plan.cfg.monitoring.dcgm_exporter_image,
                        "imagePullPolicy": "IfNotPresent",
                        "env": [{"name": "DCGM_EXPORTER_KUBERNETES", "value": "true"},
                                {"name": "DCGM_EXPORTER_LISTEN", "value": f":{DCGM_PORT}"},
                                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                        "ports": [{"name": "metrics", "containerPort": DCGM_PORT, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/health", "port": "metrics"}, "periodSeconds": 10},
                        "livenessProbe": {"httpGet": {"path": "/health", "port": "metrics"}, "periodSeconds": 30,
                                          "initialDelaySeconds": 45},
                        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                        # DCGM reads GPU profiling counters: root with CAP_SYS_ADMIN, as NVIDIA's own chart runs
                        # it (its host engine also writes its log under /var/log).
                        "securityContext": {"runAsNonRoot": False, "runAsUser": 0,
                                            "capabilities": {"drop": ["NET_RAW"], "add": ["SYS_ADMIN"]}},
                        "volumeMounts": [{"name": "pod-resources", "mountPath": "/var/lib/kubelet/pod-resources", "readOnly": True}],
                    }],
                    "volumes": [{"name": "pod-resources", "hostPath": {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}}],
                },
            },
        },
    }


def dcgm_service(plan: K8sPlan) -> Manifest:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta(dcgm_name(plan), plan.k8s.monitoring.namespace, dcgm_labels(plan)),
            "spec": {"clusterIP": "None", "selector": selector_labels("dcgm-exporter", dcgm_name(plan)),
                     "ports": [{"name": "metrics", "port": DCGM_PORT, "targetPort": "metrics", "protocol": "TCP"}]}}


def dcgm_service_monitor(plan: K8sPlan) -> Manifest:
    ns = plan.k8s.monitoring.namespace
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": monitor_meta(plan, dcgm_name(plan), ns, "monitor"),
            "spec": {"selector": {"matchLabels": selector_labels("dcgm-exporter", dcgm_name(plan))},
                     "namespaceSelector": {"matchNames": [ns]},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": f"{plan.cfg.monitoring.scrape_interval_s}s",
                                    "relabelings": [_relabel("job", "dcgm"), _relabel("host", source=[NODE])]}]}}


def dcgm_service_account(plan: K8sPlan) -> Manifest:
    return service_account(plan, dcgm_name(plan), plan.k8s.monitoring.namespace)


def dcgm_network_policy(plan: K8sPlan) -> Manifest:
    """Only pods of the monitoring namespace (Prometheus) read the GPU metrics."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(dcgm_name(plan), plan.k8s.monitoring.namespace, dcgm_labels(plan)),
            "spec": {"podSelector": {"matchLabels": selector_labels("dcgm-exporter", dcgm_name(plan))},
                     "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": DCGM_PORT, "protocol": "TCP"}]}]}}
