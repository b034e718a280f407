"""The Kubernetes plan: every vLLM workload of a stack on its GPU node pool, as plain data.

`build_k8s_plan()` is pure, like `fleet.docker.plan.build_plan()` for the Docker target: the
Pulumi components, the offline render and the tests all start here. It chooses every model's node
pool once, then asks the capacity planner about exactly those pools.

- Each model runs on one node pool: a pool that names it in `models`, otherwise a pool with an
  empty `models` list that can run it: the right GPU generation (fleet.config.gpus.lacks), then
  pools where the capacity planner says a replica fits, single-node fits, config order.
- A replica that fits one node (tp x pp <= gpus_per_node) is one pod of a StatefulSet; a larger
  one is one LeaderWorkerSet group of `nodes` pods, whole pipeline stages per pod, so tensor
  groups never cross nodes (fleet.capacity.layout, the same rule as Docker hosts).
- Every replica has a stable address, a ClusterIP Service of its own named like its pod
  (`vllm-<model>-<i>`): Nginx resolves it once at start, and it keeps pointing at the replica
  when the pod is rescheduled with a new IP.
- The vLLM command lines come from `fleet.vllm_command.serve_args`, as on Docker; only what the
  cluster decides at run time is left to Kubernetes' `$(VAR)` expansion (the group leader's
  address and the worker index that LeaderWorkerSet injects).
- Before capacity, the config's Kubernetes strings (fleet.k8s.inputs) and every object's name
  (`objects`, the ledger: fleet.k8s.ledger) are checked by Kubernetes' own rules and for collisions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, Optional

import yaml

from fleet import vllm_command as vc
from fleet.capacity.architecture import Architecture
from fleet.capacity.layout import machines_per_replica
from fleet.capacity.memory import Devices, FleetCapacity, architectures, draft_architecture, fits, plan_fleet
from fleet.capacity.refusals import check_fit, check_models
from fleet.config.errors import ConfigError
from fleet.config.gpus import lacks
from fleet.config.schema import Autoscaling, FleetConfig, Kubernetes, Model, NodePool
from fleet.k8s import names
from fleet.k8s.inputs import check_inputs
from fleet.k8s.ledger import Claim, check_claims
from fleet.render.files import alert_rules, nginx_files

API_PORT = vc.API_PORT
MASTER_PORT = 29500  # every pod has its own IP: one fixed rendezvous port is enough
SERVICE_PORT_NAME = "http"
SHM_PATH = "/dev/shm"
# What LeaderWorkerSet injects into every pod of a group (kubelet expands `$(VAR)` in args).
LWS_LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
LWS_WORKER_INDEX = "$(LWS_WORKER_INDEX)"
PART_OF = "vllm-fleet"
# The fleet's own objects: fixed names, so only the ledger (`objects`) keeps a model's from taking them.
SERVICE_ACCOUNT = "vllm-fleet"  # no API token: nothing in the fleet talks to the Kubernetes API
FLEET_SECRET = "vllm-fleet-secrets"
NGINX_NAME = "vllm-fleet-nginx"
# The `kubernetes.io/tls` Secret the fleet makes from the TLS secrets (`load_balancer.tls.secret_name` names another).
NGINX_TLS_SECRET = f"{NGINX_NAME}-tls"
HF_CACHE_CLAIM = "hf-cache"
VLLM_MONITOR = "vllm-fleet-vllm"
OTEL_MONITOR = "vllm-fleet-vllm-otel"
ALERT_RULES = "vllm-fleet-alerts"


def dcgm_exporter_name(stack: str) -> str:
    return f"{stack}-dcgm-exporter"


def grafana_admin_name(stack: str) -> str:
    return f"{stack}-grafana-admin"


def dashboards_name(stack: str) -> str:
    return f"{stack}-grafana-dashboards"


@dataclass(frozen=True)
class PodRole:
    """One pod template of a workload: the API server (rank 0) or a headless worker."""

    role: Literal["server", "worker"]
    command: list[str]
    args: list[str]
    env: dict[str, str]
    secret_env: dict[str, str]  # variable -> Pulumi secret name (api_key, hf_token)
    field_env: dict[str, str]  # variable -> pod field (status.podIP)


@dataclass
class Workload:
    """One model on the cluster: a StatefulSet, or a LeaderWorkerSet for multi-node replicas."""

    model: Model
    model_index: int
    pool: NodePool
    pool_index: int
    namespace: str
    nodes: int  # pods per replica
    gpus_per_pod: int
    max_replicas: int
    autoscaling: Optional[Autoscaling]
    server: PodRole
    worker: Optional[PodRole]

    @property
    def name(self) -> str:
        return f"vllm-{self.model.name}"

    @property
    def kind(self) -> Literal["StatefulSet", "LeaderWorkerSet"]:
        return "LeaderWorkerSet" if self.nodes > 1 else "StatefulSet"

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def replicas(self) -> int:
        """The replicas Pulumi declares; KEDA may run up to `max_replicas`."""
        return self.model.replicas

    def replica_name(self, i: int) -> str:
        return f"{self.model.name}-{i}"

    def replica_service(self, i: int) -> str:
        """The Service of replica `i`, named like its (leader) pod."""
        return f"{self.name}-{i}"

    def endpoint(self, i: int) -> str:
        return f"{self.replica_service(i)}.{self.namespace}.svc.cluster.local:{API_PORT}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in range(self.max_replicas)]

    @property
    def gpus_per_replica(self) -> int:
        return self.nodes * self.gpus_per_pod

    @property
    def shm_mib(self) -> int:
        return self.model.shm_size_mb

    @property
    def memory_gib(self) -> int:
        """Memory request and limit of a vLLM container (its /dev/shm counts against the pod's memory)."""
        return self.pool.memory_gib_per_gpu * self.gpus_per_pod + math.ceil(self.shm_mib / 1024)

    @property
    def cpu(self) -> str:
        cores = self.pool.cpu_per_gpu * self.gpus_per_pod
        return str(int(cores)) if float(cores).is_integer() else f"{int(cores * 1000)}m"


@dataclass
class K8sPlan:
    cfg: FleetConfig
    k8s: Kubernetes
    workloads: list[Workload]
    capacity: FleetCapacity

    @property
    def namespace(self) -> str:
        return self.k8s.namespace

    def upstreams(self) -> dict[str, list[str]]:
        return {w.model.name: w.endpoints for w in self.workloads}

    def nginx_files(self, key_hashes: Mapping[str, str] = MappingProxyType({}), tls_sha256: str = "") -> dict[str, str]:
        """The same renderer as the Docker target, with the replicas' Service addresses
        (`key_hashes`: client key name -> its SHA-256, from the `client_keys` secret; `tls_sha256`:
        the digest of the `tls_certificate` secret)."""
        return nginx_files(self.cfg, self.upstreams(), key_hashes=key_hashes, tls_sha256=tls_sha256)

    @property
    def tls_secret(self) -> Optional[str]:
        """The `kubernetes.io/tls` Secret Nginx's pods mount: the stack's own, or the fleet's."""
        tls = self.cfg.load_balancer.tls
        return None if tls is None else tls.secret_name or NGINX_TLS_SECRET

    def alert_rules(self) -> str:
        return alert_rules(self.cfg)

    def alert_groups(self) -> list[dict]:
        return yaml.safe_load(self.alert_rules())["groups"]


# --- naming and labels ---------------------------------------------------------------------------


def selector_labels(component: str, instance: str) -> dict[str, str]:
    """The stable subset of labels that selectors use (never changed once deployed)."""
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": instance}


def labels(cfg: FleetConfig, component: str, instance: str, role: str, **extra: str) -> dict[str, str]:
    return {**selector_labels(component, instance), "app.kubernetes.io/component": role,
            "app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": "vllm-fleet",
            "vllm-fleet/stack": cfg.stack, **extra}


def workload_labels(plan: K8sPlan, w: Workload, role: str) -> dict[str, str]:
    return labels(plan.cfg, "vllm", w.name, role, **{"vllm-fleet/model": w.model.name,
                                                     "vllm-fleet/runtime": w.model.runtime})


# --- planning ------------------------------------------------------------------------------------


def build_k8s_plan(cfg: FleetConfig) -> K8sPlan:
    k8s = cfg.kubernetes
    assert k8s is not None and cfg.target == "kubernetes", "build_k8s_plan needs a validated kubernetes stack"
    check_inputs(cfg)
    archs = architectures(cfg)
    check_models(cfg, archs)
    auto = {a.model: a for a in k8s.autoscaling}
    workloads = []
    for i, model in enumerate(cfg.models):
        j, nodes = choose_pool(cfg, i, archs[i])
        pool = k8s.node_pools[j]
        scaling = auto.get(model.name)
        workloads.append(_workload(cfg, k8s, i, model, j, pool, nodes, scaling))
    check_claims(objects(cfg, workloads))  # names before capacity: a refused name fails whatever fits
    capacity = plan_fleet(cfg, archs, devices(workloads))
    check_fit(capacity)
    _check_capacity(k8s, workloads)
    return K8sPlan(cfg, k8s, workloads, capacity)


# --- the ledger of objects ------------------------------------------------------------------------

NAMESPACE, SERVICE, POD, STATEFULSET = "v1/Namespace", "v1/Service", "v1/Pod", "apps/v1/StatefulSet"
PDB, NETPOL, CONFIGMAP, SECRET = "policy/v1/PodDisruptionBudget", "networking.k8s.io/v1/NetworkPolicy", "v1/ConfigMap", "v1/Secret"
SERVICE_ACCOUNT_KIND = "v1/ServiceAccount"
MONITORING = "monitoring.coreos.com/v1"


def objects(cfg: FleetConfig, workloads: list[Workload]) -> list[Claim]:
    """Every object the Kubernetes components declare (fleet.k8s.manifests), and those their
    controllers create from them (pods, a LeaderWorkerSet's Service and StatefulSets, KEDA's HPA),
    as claims for the ledger; the fleet's own come first, so a collision blames the later model."""
    k8s = cfg.kubernetes
    assert k8s is not None
    ns, mon = k8s.namespace, k8s.monitoring
    claims: list[Claim] = []

    def fleet(kind: str, name: str, what: str, rule: names.Rule = names.DNS_SUBDOMAIN) -> None:
        claims.append(Claim(kind, ns, name, rule, "kubernetes.namespace", ns, what, named_by_key=False))

    def monitoring(kind: str, name: str, what: str, rule: names.Rule = names.DNS_SUBDOMAIN) -> None:
        claims.append(Claim(kind, mon.namespace, name, rule, "kubernetes.monitoring.namespace", mon.namespace, what,
                            named_by_key=False))

    if k8s.create_namespace:
        claims.append(Claim(NAMESPACE, None, ns, names.DNS_LABEL, "kubernetes.namespace", ns, "the fleet's namespace"))
    fleet(SERVICE_ACCOUNT_KIND, SERVICE_ACCOUNT, "the fleet's service account")
    if cfg.has_api_key or cfg.has_hf_token:
        fleet(SECRET, FLEET_SECRET, "the fleet's Secret (API key, HF token)")
    tls = cfg.load_balancer.tls
    if tls is not None and not tls.secret_name:
        fleet(SECRET, NGINX_TLS_SECRET, "the load balancer's TLS Secret (from tls_certificate and tls_private_key)")
    if k8s.hf_cache.type == "pvc":
        fleet("v1/PersistentVolumeClaim", HF_CACHE_CLAIM, "the Hugging Face cache claim")
    for kind, rule in ((CONFIGMAP, names.DNS_SUBDOMAIN), ("apps/v1/Deployment", names.DNS_SUBDOMAIN),
                       (SERVICE, names.SERVICE_NAME), (PDB, names.DNS_SUBDOMAIN), (NETPOL, names.DNS_SUBDOMAIN)):
        fleet(kind, NGINX_NAME, f"the load balancer's {kind.rsplit('/', 1)[1]}", rule)
    if cfg.monitoring.enabled:
        install = mon.mode == "kube-prometheus-stack"
        if install and k8s.create_namespace:
            claims.append(Claim(NAMESPACE, None, mon.namespace, names.DNS_LABEL, "kubernetes.monitoring.namespace",
                                mon.namespace, "the monitoring namespace"))
        if install:
            monitoring(SECRET, grafana_admin_name(cfg.stack), "Grafana's admin Secret")
        monitoring(CONFIGMAP, dashboards_name(cfg.stack), "the Grafana dashboards' ConfigMap")
        fleet(f"{MONITORING}/PodMonitor", VLLM_MONITOR, "the vLLM PodMonitor")
        if any(w.model.runtime == "seed-otel" for w in workloads):
            fleet(f"{MONITORING}/PodMonitor", OTEL_MONITOR, "the OpenTelemetry PodMonitor")
        if cfg.monitoring.nginx_exporter:
            fleet(f"{MONITORING}/PodMonitor", NGINX_NAME, "the Nginx PodMonitor")
        fleet(f"{MONITORING}/PrometheusRule", ALERT_RULES, "the alert rules")
        if cfg.monitoring.gpu_exporter:
            dcgm = dcgm_exporter_name(cfg.stack)
            for kind, rule in ((SERVICE_ACCOUNT_KIND, names.DNS_SUBDOMAIN), ("apps/v1/DaemonSet", names.DNS_SUBDOMAIN),
                               (SERVICE, names.SERVICE_NAME), (NETPOL, names.DNS_SUBDOMAIN),
                               (f"{MONITORING}/ServiceMonitor", names.DNS_SUBDOMAIN)):
                monitoring(kind, dcgm, f"the DCGM exporter's {kind.rsplit('/', 1)[1]}", rule)
    for w in workloads:
        claims += _model_objects(w)
    return claims


def _model_objects(w: Workload) -> list[Claim]:
    model = f"model `{w.model.name}`"

    def claim(kind: str, name: str, what: str, rule: names.Rule = names.DNS_SUBDOMAIN) -> Claim:
        return Claim(kind, w.namespace, name, rule, f"models[{w.model_index}].name", w.model.name, f"{model}'s {what}")

    out = []
    if w.multi_node:
        out.append(claim("leaderworkerset.x-k8s.io/v1/LeaderWorkerSet", w.name, "LeaderWorkerSet"))
        # LeaderWorkerSet names its Service and leader StatefulSet like itself, each group's worker
        # StatefulSet like the group's leader pod, and the workers `<leader pod>-<index>`.
        out.append(claim(SERVICE, w.name, "Service of its groups (made by LeaderWorkerSet)", names.SERVICE_NAME))
        out.append(claim(STATEFULSET, w.name, "leader StatefulSet (made by LeaderWorkerSet)", names.STATEFULSET_NAME))
        for g in range(w.max_replicas):
            leader = w.replica_service(g)
            out.append(claim(STATEFULSET, leader, f"worker StatefulSet of replica {g}", names.STATEFULSET_NAME))
            out.append(claim(POD, leader, f"leader pod of replica {g}", names.DNS_LABEL))
            out += [claim(POD, f"{leader}-{k}", f"worker pod {k} of replica {g}", names.DNS_LABEL) for k in range(1, w.nodes)]
    else:
        out.append(claim(SERVICE, w.name, "headless Service", names.SERVICE_NAME))
        out.append(claim(STATEFULSET, w.name, "StatefulSet", names.STATEFULSET_NAME))
        # A StatefulSet's pod is named `<set>-<ordinal>` and uses that name as its host name: a DNS label.
        out += [claim(POD, w.replica_service(i), f"pod of replica {i}", names.DNS_LABEL) for i in range(w.max_replicas)]
    out += [claim(SERVICE, w.replica_service(i), f"replica addresses (Service of replica {i})", names.SERVICE_NAME)
            for i in range(w.max_replicas)]
    out.append(claim(PDB, w.name, "PodDisruptionBudget"))
    out.append(claim(NETPOL, w.name, "NetworkPolicy"))
    if w.autoscaling:
        out.append(claim("keda.sh/v1alpha1/ScaledObject", w.name, "ScaledObject"))
        out.append(claim("autoscaling/v2/HorizontalPodAutoscaler", f"keda-hpa-{w.name}", "HorizontalPodAutoscaler (made by KEDA)"))
    return out


def devices(workloads: list[Workload]) -> Devices:
    """The pools chosen, as the capacity planner reads them."""
    return Devices({w.model.name: [(w.replica_name(r), w.pool.gpu_model) for r in range(w.replicas)] for w in workloads})


def choose_pool(cfg: FleetConfig, i: int, arch: Architecture) -> tuple[int, int]:
    """The node pool (index) of `cfg.models[i]` and its pods per replica, or one ConfigError."""
    k8s = cfg.kubernetes
    model = cfg.models[i]
    pools = k8s.node_pools
    named = [j for j, p in enumerate(pools) if model.name in p.models]
    candidates = named or [j for j, p in enumerate(pools) if not p.models]
    if not candidates:
        raise ConfigError(f"models[{i}].name", model.name, "no node pool serves this model: every pool lists other models",
                          "a pool whose `models` names it, or a pool with an empty `models` list",
                          f"add `{model.name}` to a pool's `models` under `kubernetes.node_pools`")
    draft = draft_architecture(model, i)
    rejected: list[tuple[str, str]] = []
    ranked: list[tuple[bool, bool, int, int]] = []
    for j in candidates:
        pool = pools[j]
        missing = lacks(pool.gpu_model, dtype=model.dtype, quantization=model.quantization)
        if missing == "quantization":
            why = "no fp8 (needs Ada or Hopper)" if model.quantization == "fp8" else f"no {model.quantization} kernels"
            rejected.append((f"models[{i}].quantization", f"pool `{pool.name}` ({pool.gpu_model}) has {why}"))
            continue
        if missing == "dtype":
            rejected.append((f"models[{i}].dtype", f"pool `{pool.name}` ({pool.gpu_model}) has no bfloat16 (needs Ampere or newer)"))
            continue
        nodes = machines_per_replica(model, pool.gpus_per_node)
        if nodes is None:
            why = ("its tensor group is larger than a node" if model.tensor_parallel_size > pool.gpus_per_node
                   else "no split of its pipeline stages into equal parts fits a node")
            rejected.append((f"models[{i}].tensor_parallel_size",
                             f"pool `{pool.name}` has {pool.gpus_per_node} GPUs per node and {why}"))
            continue
        ranked.append((not fits(model, arch, pool.gpu_model, draft), nodes > 1, j, nodes))
    if not ranked:
        key = rejected[0][0]
        raise ConfigError(
            key, getattr(model, key.rsplit(".", 1)[1]),
            f"no node pool can run `{model.name}` (tensor_parallel_size {model.tensor_parallel_size} x "
            f"pipeline_parallel_size {model.pipeline_parallel_size}): " + "; ".join(r for _, r in rejected),
            "tensor groups within one node; pipeline stages split evenly over nodes; a GPU generation with the dtype and quantization",
            "lower tensor_parallel_size, raise pipeline_parallel_size to span nodes, or add a pool that fits",
        )
    _, _, j, nodes = min(ranked)  # fits first, then single-node, then config order
    return j, nodes


def _workload(cfg: FleetConfig, k8s: Kubernetes, i: int, model: Model, j: int, pool: NodePool, nodes: int,
              scaling: Optional[Autoscaling]) -> Workload:
    gpus_per_pod = model.gpus_per_replica // nodes
    # Docker passes a host's address as VLLM_HOST_IP; a pod's own IP is known only once it runs.
    env = vc.replica_env(cfg, model, nodes=nodes, nvlink=pool.nvlink, nccl_socket_ifname=pool.nccl_socket_ifname)
    field_env = {"VLLM_HOST_IP": "status.podIP"} if nodes > 1 else {}
    secret_env = vc.replica_secret_env(cfg)
    command = ["/workspace/run.sh"] if model.runtime == "seed-otel" else list(vc.ENTRYPOINT)

    def role_args(rank: object) -> list[str]:
        # One worker template serves every worker of a group: its rank comes from the pod.
        return vc.serve_args(model, port=API_PORT, nodes=nodes, node_rank=rank, master_addr=LWS_LEADER_ADDRESS,
                             master_port=MASTER_PORT)

    server = PodRole("server", command, role_args(0), env, secret_env, field_env)
    worker = None
    if nodes > 1:
        worker = PodRole("worker", command, role_args(LWS_WORKER_INDEX), env,
                         {k: v for k, v in secret_env.items() if k == "HF_TOKEN"}, field_env)
    return Workload(model=model, model_index=i, pool=pool, pool_index=j, namespace=k8s.namespace, nodes=nodes,
                    gpus_per_pod=gpus_per_pod, max_replicas=scaling.max_replicas if scaling else model.replicas,
                    autoscaling=scaling, server=server, worker=worker)


def _check_capacity(k8s: Kubernetes, workloads: list[Workload]) -> None:
    """When a pool states its node count, every pod (at the autoscaling maximum) must fit on it."""
    for j, pool in enumerate(k8s.node_pools):
        if pool.nodes is None:
            continue
        mine = [w for w in workloads if w.pool_index == j]
        pods = sorted((w.gpus_per_pod for w in mine for _ in range(w.max_replicas * w.nodes)), reverse=True)
        free = [pool.gpus_per_node] * pool.nodes
        for need in pods:  # first fit decreasing, as a scheduler would manage at best
            at = next((n for n, f in enumerate(free) if f >= need), None)
            if at is None:
                total = sum(w.gpus_per_replica * w.max_replicas for w in mine)
                detail = ", ".join(f"{w.model.name} {w.max_replicas} x {w.gpus_per_replica}" for w in mine)
                raise ConfigError(
                    f"kubernetes.node_pools[{j}].nodes", pool.nodes,
                    f"the models on pool `{pool.name}` need {total} GPUs ({detail}; autoscaling maximums included) "
                    f"in pods of up to {max(pods)} GPUs, which {pool.nodes} nodes of {pool.gpus_per_node} GPUs cannot hold",
                    "enough nodes for every replica at its maximum", "add nodes, lower replicas or max_replicas, or add a pool")
            free[at] -= need


def pod_ports(w: Workload, role: PodRole) -> list[dict]:
    if role.role == "worker":
        return []
    ports = [{"name": SERVICE_PORT_NAME, "containerPort": API_PORT, "protocol": "TCP"}]
    if w.model.runtime == "seed-otel":
        ports.append({"name": "otel", "containerPort": vc.OTEL_PORT, "protocol": "TCP"})
    return ports
