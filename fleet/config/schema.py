"""Typed stack configuration: the inventory of hosts, models, load balancer and monitoring.

Every default is defined here, once; stack files (`stacks/Pulumi.<env>.yaml`) only override.
`load_from_pulumi()` is the only code that reads `pulumi.Config`; everything else receives a
validated `FleetConfig`. Any mistake becomes one `ConfigError` before a resource exists.
"""
from __future__ import annotations

import difflib
import re
import typing
from typing import Any, Literal, Optional

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fleet.config import images
from fleet.config.errors import PROJECT, ConfigError
from fleet.config.gpus import GPU_MODELS

DNS_LABEL = r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$"
SECRET_KEYS = ("hf_token", "api_key", "grafana_admin_password")
TOP_LEVEL_KEYS = ("target", "hosts", "kubernetes", "models", "load_balancer", "monitoring", "nccl_debug", "environment")
K8S_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"
# Helm chart versions the Kubernetes target installs (a stack file may override them).
KUBE_PROMETHEUS_STACK_CHART = "75.6.2"
LWS_CHART = "0.8.0"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(Strict):
    name: str = Field(pattern=DNS_LABEL, description="Short host name; prefixes its resources.")
    docker_host: str = Field(
        "unix:///var/run/docker.sock",
        pattern=r"^(unix|ssh|tcp)://.+",
        description="Docker endpoint for this host: `unix:///var/run/docker.sock`, `ssh://user@host` or `tcp://host:2376`.",
    )
    address: str = Field(
        "127.0.0.1",
        pattern=r"^[A-Za-z0-9.:-]+$",
        description="Address the other hosts (load balancer, Prometheus, pipeline peers) reach this host on.",
    )
    gpus: int = Field(0, ge=0, le=16, description="Number of GPUs; 0 makes a CPU host for `device: cpu` models.")
    gpu_model: Optional[str] = Field(None, description=f"GPU model, one of {', '.join(GPU_MODELS)}; required when gpus > 0.")
    cpus: Optional[int] = Field(None, ge=1, le=1024, description="CPU cores; CPU replicas on this host get disjoint core ranges.")
    nccl_socket_ifname: Optional[str] = Field(
        None, pattern=r"^[A-Za-z0-9_.,^=-]+$", description="NIC NCCL and Gloo use (e.g. `eth0`); required for pipelines across hosts."
    )
    nvlink: bool = Field(False, description="GPUs joined by NVLink; when false, multi-GPU replicas get `NCCL_P2P_DISABLE=1`.")
    ssh_opts: list[str] = Field(default_factory=list, description="Extra ssh options for an `ssh://` docker_host.")
    hf_cache_dir: Optional[str] = Field(
        None, pattern=r"^/", description="Host directory for the Hugging Face cache; default: a named Docker volume."
    )


class Speculative(Strict):
    method: Literal["draft_model", "ngram", "eagle", "eagle3", "mtp"] = Field(
        "draft_model", description="Speculative decoding method."
    )
    model: Optional[str] = Field(None, description="Draft model (HF id); required for draft_model, eagle and eagle3.")
    num_speculative_tokens: int = Field(3, ge=1, le=16, description="Tokens proposed per step.")
    prompt_lookup_max: Optional[int] = Field(None, ge=1, le=16, description="n-gram window (method ngram).")


class Sampling(Strict):
    temperature: Optional[float] = Field(None, ge=0, le=2, description="Default temperature.")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="Default nucleus sampling mass.")
    top_k: Optional[int] = Field(None, ge=-1, description="Default top-k (-1 or 0: off).")
    min_p: Optional[float] = Field(None, ge=0, le=1, description="Default min-p.")
    repetition_penalty: Optional[float] = Field(None, gt=0, le=2, description="Default repetition penalty.")
    max_new_tokens: Optional[int] = Field(
        None, ge=1, description="Cap on every request's completion length (vLLM applies min(request max_tokens, this)).")


class Model(Strict):
    name: str = Field(pattern=DNS_LABEL, description="Short name; names the replicas and the `/models/<name>/` route.")
    hf_id: str = Field(pattern=r"^[\w.-]+/[\w.-]+$", description="Hugging Face model id, `org/name`.")
    served_model_name: Optional[str] = Field(None, description="Name clients send as `model`; default: hf_id.")
    revision: Optional[str] = Field(None, description="Model revision (commit) to pin.")
    device: Literal["gpu", "cpu"] = Field("gpu", description="`gpu`, or `cpu` (the vLLM CPU image on hosts with gpus: 0).")
    replicas: int = Field(1, ge=1, le=64, description="Independent servers behind the load balancer.")
    tensor_parallel_size: int = Field(1, ge=1, le=16, description="GPUs per pipeline stage (within one host).")
    pipeline_parallel_size: int = Field(1, ge=1, le=16, description="Pipeline stages; may span hosts.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field("auto", description="Weight/activation dtype.")
    quantization: Optional[Literal["fp8", "awq", "gptq", "bitsandbytes", "compressed-tensors", "awq_marlin", "gptq_marlin"]] = Field(
        None, description="Weight quantization; default: none."
    )
    max_model_len: Optional[int] = Field(None, ge=16, le=10_000_000, description="Context length; default: the model's.")
    gpu_memory_utilization: float = Field(0.9, gt=0.05, le=0.98, description="Share of each GPU's memory vLLM may use.")
    max_num_seqs: Optional[int] = Field(None, ge=1, le=4096, description="Concurrent sequences per replica.")
    enable_prefix_caching: Optional[bool] = Field(None, description="Override vLLM's prefix caching default.")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="KV cache precision; `fp8` doubles KV capacity (measured on an H100 at the same speed)."
    )
    max_num_batched_tokens: Optional[int] = Field(None, ge=16, description="Chunked-prefill token budget per step.")
    cpu_kvcache_space_gib: int = Field(4, ge=1, le=1024, description="KV cache size for `device: cpu` (VLLM_CPU_KVCACHE_SPACE).")
    trust_remote_code: bool = Field(False, description="Allow the model repository's own code.")
    speculative: Optional[Speculative] = Field(None, description="Speculative decoding (`--speculative-config`).")
    sampling: Sampling = Field(default_factory=Sampling, description="Server-side default sampling (`--override-generation-config`).")
    image: Optional[str] = Field(None, description="Container image; default: the pinned official vLLM image for the device.")
    runtime: Literal["official", "seed-otel"] = Field(
        "official", description="`seed-otel`: the seed's image (files/vllm) with OpenTelemetry metrics on port 9464; needs `image`."
    )
    architecture: Optional[dict[str, Any]] = Field(
        None, description="The model's Hugging Face `config.json`, inline, for offline planning of a model not cached in files/models/."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra vLLM flags, appended verbatim.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the replicas.")
    shm_size_mb: int = Field(8192, ge=64, description="Shared memory for multi-GPU replicas without host IPC.")
    drain_timeout_s: int = Field(
        60, ge=0, le=3600, description="On stop or replacement, how long a replica may finish its requests in flight "
        "(vLLM `--shutdown-timeout`, vLLM >= 0.18); 0 aborts them at once and omits the flag."
    )

    @property
    def gpus_per_replica(self) -> int:
        return 0 if self.device == "cpu" else self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def client_model_name(self) -> str:
        return self.served_model_name or self.hf_id

    @property
    def resolved_image(self) -> str:
        return self.image or (images.VLLM_CPU if self.device == "cpu" else images.VLLM_GPU)


class LoadBalancer(Strict):
    host: Optional[str] = Field(None, description="Host that runs Nginx; default: the first host (docker target).")
    port: int = Field(80, ge=1, le=65535, description="Public port of the OpenAI-compatible API.")
    bind_address: str = Field("0.0.0.0", description="Address the public port binds to (docker target).")
    policy: Literal["least_conn", "round_robin", "session_affinity"] = Field(
        "least_conn", description="Balancing policy; `session_affinity` hashes `session_header`."
    )
    session_header: str = Field("X-Session-ID", pattern=r"^[A-Za-z0-9-]+$", description="Header that pins a session to a replica.")
    connect_timeout_s: int = Field(5, ge=1, le=75, description="Upstream connect timeout.")
    read_timeout_s: int = Field(3600, ge=60, le=86400, description="Longest silence while a generation runs.")
    send_timeout_s: int = Field(600, ge=10, le=86400, description="Longest pause sending a request upstream.")
    max_body_mb: int = Field(32, ge=1, le=1024, description="Largest request body (long prompts).")
    max_fails: int = Field(1, ge=1, le=100, description="Failures before a replica is benched for fail_timeout_s.")
    fail_timeout_s: int = Field(10, ge=1, le=3600, description="How long a failed replica is benched.")
    keepalive: int = Field(64, ge=1, le=4096, description="Idle keepalive connections kept per Nginx worker.")
    image: str = Field(images.NGINX, description="Nginx image.")


class Monitoring(Strict):
    enabled: bool = Field(True, description="Deploy Prometheus, Grafana and exporters.")
    host: Optional[str] = Field(None, description="Host for Prometheus and Grafana; default: the load balancer's host (docker target).")
    bind_address: str = Field("127.0.0.1", description="Address Prometheus and Grafana ports bind to, reached over SSH (docker target).")
    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus UI/API port (docker target).")
    grafana_port: int = Field(3000, ge=1, le=65535, description="Grafana port (docker target).")
    scrape_interval_s: int = Field(15, ge=1, le=300, description="Prometheus scrape interval.")
    retention: str = Field("15d", pattern=r"^[0-9]+(h|d|w|y)$", description="Prometheus retention.")
    replica_down_for: str = Field("1m", pattern=r"^[0-9]+(s|m|h)$", description="How long a replica is down before the alert fires.")
    queue_alert_threshold: int = Field(32, ge=1, description="Waiting requests per replica that count as a backlog.")
    ttft_p99_alert_s: float = Field(5.0, gt=0, description="p99 time to first token that alerts.")
    gpu_exporter: bool = Field(True, description="Run the DCGM exporter on every GPU host.")
    nginx_exporter: bool = Field(True, description="Run the Nginx exporter beside the load balancer.")
    prometheus_image: str = Field(images.PROMETHEUS, description="Prometheus image (docker target; on Kubernetes the chart pins it).")
    grafana_image: str = Field(images.GRAFANA, description="Grafana image (docker target; on Kubernetes the chart pins it).")
    nginx_exporter_image: str = Field(images.NGINX_EXPORTER, description="Nginx exporter image.")
    dcgm_exporter_image: str = Field(images.DCGM_EXPORTER, description="NVIDIA DCGM exporter image.")


# --- the Kubernetes target --------------------------------------------------------------------


class Toleration(Strict):
    key: Optional[str] = Field(None, description="Taint key to tolerate (none with operator Exists: every taint).")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="`Equal` matches key and value; `Exists` the key alone.")
    value: Optional[str] = Field(None, description="Taint value (operator Equal).")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(
        None, description="Taint effect to tolerate; default: all effects.")


class NodePool(Strict):
    name: str = Field(pattern=DNS_LABEL, description="Short pool name, used in errors and the plan.")
    gpus_per_node: int = Field(ge=1, le=16, description="GPUs of one node (`nvidia.com/gpu` allocatable); decides single- vs multi-node replicas.")
    gpu_model: str = Field(description=f"GPU model of the pool, one of {', '.join(GPU_MODELS)}.")
    nodes: Optional[int] = Field(
        None, ge=1, le=1000, description="Nodes in the pool (or its autoscaler's maximum); when set, the plan checks that every pod fits.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels that select the pool's nodes (pod `nodeSelector`).")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints of the pool's nodes that its pods tolerate.")
    models: list[str] = Field(
        default_factory=list, description="Models this pool serves; models named by no pool go to the first pool with an empty list that fits them.")
    nvlink: bool = Field(False, description="GPUs joined by NVLink; when false, multi-GPU pods get `NCCL_P2P_DISABLE=1`.")
    nccl_socket_ifname: str = Field(
        "eth0", pattern=r"^[A-Za-z0-9_.,^=-]+$", description="Pod network interface NCCL and Gloo use between the nodes of a replica.")
    cpu_per_gpu: float = Field(8, gt=0, le=256, description="CPU cores a vLLM pod requests per GPU it owns.")
    memory_gib_per_gpu: int = Field(96, ge=1, le=4096, description="Memory (GiB) a vLLM pod requests and is limited to per GPU, besides its /dev/shm.")


class HfCache(Strict):
    type: Literal["pvc", "host_path"] = Field(
        "pvc", description="`pvc`: one shared ReadWriteMany claim for every vLLM pod; `host_path`: a directory on each node.")
    storage_class: Optional[str] = Field(None, description="StorageClass of the claim (ReadWriteMany: NFS, CephFS, EFS, Filestore, Lustre...); default: the cluster's default.")
    size: str = Field("1Ti", pattern=K8S_QUANTITY, description="Size of the claim.")
    host_path: Optional[str] = Field(None, pattern=r"^/", description="Node directory for type host_path.")


class K8sMonitoring(Strict):
    mode: Literal["kube-prometheus-stack", "existing-operator"] = Field(
        "kube-prometheus-stack",
        description="`kube-prometheus-stack`: install that Helm chart; `existing-operator`: a Prometheus Operator and Grafana already run.")
    namespace: str = Field("monitoring", pattern=DNS_LABEL, description="Namespace of Prometheus and Grafana (their dashboards and the GPU exporter go there).")
    chart_version: str = Field(KUBE_PROMETHEUS_STACK_CHART, pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", description="Pinned kube-prometheus-stack chart version.")
    monitor_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels an existing Prometheus selects monitors and rules by (e.g. `release: kube-prometheus-stack`).")
    prometheus_url: Optional[str] = Field(
        None, pattern=r"^https?://", description="Prometheus URL in the cluster, for KEDA; default: the installed chart's service.")


class Autoscaling(Strict):
    model: str = Field(description="Name of the model to scale; its `replicas` is the minimum.")
    max_replicas: int = Field(ge=1, le=64, description="Most replicas KEDA may run; Nginx upstreams cover all of them.")
    waiting_per_replica: int = Field(
        8, ge=1, le=10_000, description="Target `vllm:num_requests_waiting` per replica (KEDA Prometheus trigger, average value).")
    polling_interval_s: int = Field(30, ge=5, le=3600, description="How often KEDA queries Prometheus.")
    cooldown_s: int = Field(900, ge=60, le=86400, description="Quiet time before KEDA scales a model back down.")


class Kubernetes(Strict):
    kubeconfig: Optional[str] = Field(None, description="Path of the kubeconfig file; default: `$KUBECONFIG` or `~/.kube/config`.")
    context: Optional[str] = Field(None, description="kubeconfig context; default: its current context.")
    namespace: str = Field("vllm-fleet", pattern=DNS_LABEL, description="Namespace of the fleet's workloads.")
    create_namespace: bool = Field(True, description="Create the namespace (and the monitoring one when the chart is installed).")
    node_pools: list[NodePool] = Field(min_length=1, description="GPU node pools (list of pool objects below).")
    hf_cache: HfCache = Field(default_factory=HfCache, description="Hugging Face cache volume of the vLLM pods.")
    install_lws: bool = Field(False, description="Install the LeaderWorkerSet controller (Helm chart) for multi-node models; otherwise it must already run.")
    lws_chart_version: str = Field(LWS_CHART, pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$", description="Pinned LeaderWorkerSet chart version.")
    service_type: Literal["ClusterIP", "LoadBalancer", "NodePort"] = Field(
        "ClusterIP", description="Type of the Service in front of Nginx.")
    service_annotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations of that Service (cloud load balancer settings).")
    nginx_replicas: int = Field(2, ge=1, le=32, description="Nginx pods.")
    monitoring: K8sMonitoring = Field(default_factory=K8sMonitoring, description="Cluster monitoring (object below).")
    autoscaling: list[Autoscaling] = Field(
        default_factory=list, description="KEDA autoscaling of models on waiting requests (needs KEDA in the cluster).")


class FleetConfig(Strict):
    """The whole validated stack configuration."""

    stack: str = Field(pattern=DNS_LABEL)
    environment: Literal["local", "dev", "staging", "prod"] = Field(
        "prod", description="Kind of environment; only `local` may run unpinned images."
    )
    target: Literal["docker", "kubernetes"] = Field(
        "docker", description="Where the fleet runs: Docker `hosts`, or a Kubernetes cluster (`kubernetes`).")
    hosts: list[Host] = Field(
        default_factory=list, description="The Docker hosts (list of host objects below); at least 1 for target docker.")
    kubernetes: Optional[Kubernetes] = Field(None, description="The cluster (object below); required for target kubernetes.")
    models: list[Model] = Field(min_length=1, description="The models to serve (list of model objects below).")
    load_balancer: LoadBalancer = Field(default_factory=LoadBalancer, description="The Nginx load balancer.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Prometheus, Grafana, exporters, alerts.")
    nccl_debug: Literal["VERSION", "WARN", "INFO", "TRACE"] = Field("WARN", description="NCCL_DEBUG for multi-GPU replicas.")
    # Secrets are not part of the typed config: only whether they are set.
    has_api_key: bool = False
    has_hf_token: bool = False

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    @property
    def has_gpus(self) -> bool:
        if self.target == "kubernetes":
            return bool(self.kubernetes and self.kubernetes.node_pools)
        return any(h.gpus for h in self.hosts)

    @property
    def lb_host(self) -> Host:
        return self.host(self.load_balancer.host) if self.load_balancer.host else self.hosts[0]

    @property
    def monitoring_host(self) -> Host:
        return self.host(self.monitoring.host) if self.monitoring.host else self.lb_host


# --- turning raw values into a FleetConfig, or into one ConfigError ---------------------------


def key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_at(loc: tuple) -> tuple[Optional[type[BaseModel]], Optional[str]]:
    """The model class and field name a pydantic error location points at."""
    cls: Any = FleetConfig
    owner, name = None, None
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return owner, None if owner is None else part
        owner, name = cls, part
        cls = _inner_model(cls.model_fields[part].annotation)
    return owner, name


def _class_at(loc: tuple) -> type[BaseModel]:
    """The model class whose fields live at `loc` (the parent of an unknown key)."""
    cls: type[BaseModel] = FleetConfig
    for part in loc:
        if isinstance(part, str) and part in cls.model_fields:
            cls = _inner_model(cls.model_fields[part].annotation) or cls
    return cls


def _inner_model(annotation: Any) -> Any:
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        for inner in typing.get_args(arg):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def describe_allowed(field: pydantic.fields.FieldInfo) -> str:
    """What a field accepts, in words, from its annotation and constraints."""
    choices = [a for a in _flat_args(field.annotation) if not isinstance(a, type)]
    parts: list[str] = []
    if choices:
        parts.append("one of " + ", ".join(repr(c) for c in choices if c is not None))
    else:
        kinds = [a.__name__ for a in _flat_args(field.annotation) if isinstance(a, type) and a is not type(None)]
        parts.append(" or ".join(kinds) or "a value")
    for meta in field.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "at least"), ("max_length", "at most")):
            if getattr(meta, attr, None) is not None:
                parts.append(f"{word} {getattr(meta, attr)}" + (" items" if "length" in attr else ""))
        if getattr(meta, "pattern", None):
            parts.append(f"matching {meta.pattern}")
    if field.description:
        parts.append(f"({field.description})")
    return ", ".join(parts)


def _flat_args(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    if typing.get_origin(annotation) in (list, dict):
        return [typing.get_origin(annotation)]
    return [leaf for a in args for leaf in _flat_args(a)]


def from_validation_error(err: pydantic.ValidationError, raw: dict, stack: str) -> ConfigError:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    key = key_path(loc)
    owner, name = _field_at(loc)
    where = f"stacks/Pulumi.{stack}.yaml"
    if first["type"] == "extra_forbidden":
        parent = _class_at(loc[:-1])
        known = [k for k in parent.model_fields if k not in ("stack", "has_api_key", "has_hf_token")]
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean `{guess[0]}`?" if guess else "remove it"
        return ConfigError(key, first.get("input"), "unknown key", ", ".join(known), f"{hint} (in {where})")
    if first["type"] == "missing":
        field = owner.model_fields[name] if owner and name in owner.model_fields else None
        return ConfigError(key, None, "is required but missing",
                           describe_allowed(field) if field else "a value", f"add `{loc[-1]}` in {where}")
    field = owner.model_fields.get(name) if owner and name else None
    allowed = describe_allowed(field) if field else first["msg"]
    return ConfigError(key, first.get("input"), first["msg"].rstrip(".").lower(), allowed,
                       f"set `{key}` to an allowed value in {where} (or `pulumi config set --path '{key}' VALUE`)")


def parse_config(raw: dict[str, Any], stack: str) -> FleetConfig:
    """Validate raw stack values (as in the YAML, without the `vllm-fleet:` prefix)."""
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS + SECRET_KEYS]
    if unknown:
        guess = difflib.get_close_matches(unknown[0], TOP_LEVEL_KEYS + SECRET_KEYS, n=1)
        raise ConfigError(unknown[0], raw[unknown[0]], "unknown key", ", ".join(TOP_LEVEL_KEYS + SECRET_KEYS),
                          f"did you mean `{guess[0]}`?" if guess else f"remove it from stacks/Pulumi.{stack}.yaml")
    values = {k: v for k, v in raw.items() if k in TOP_LEVEL_KEYS}
    if not re.match(DNS_LABEL, stack):
        raise ConfigError("(stack name)", stack, "a stack name must be a short DNS label",
                          "lowercase letters, digits and '-'", "rename the stack, e.g. `pulumi stack rename prod`")
    try:
        cfg = FleetConfig(stack=stack, has_api_key=bool(raw.get("api_key")), has_hf_token=bool(raw.get("hf_token")), **values)
    except pydantic.ValidationError as err:
        raise from_validation_error(err, raw, stack) from None
    from fleet.config.rules import check_fleet  # cross-field rules live with the planner's checks

    check_fleet(cfg)
    return cfg


def load_from_pulumi() -> tuple[FleetConfig, dict[str, Any]]:
    """Read this stack's `vllm-fleet:*` config. Returns the config and the secret Outputs.

    Secrets must be set with `pulumi config set --secret`; a plain-text secret is an error.
    """
    import pulumi
    from pulumi.runtime import config as runtime_config

    conf = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    for key in TOP_LEVEL_KEYS:
        text = conf.get(key)
        if text is not None:
            raw[key] = _decode(text)
    secrets: dict[str, Any] = {}
    for key in SECRET_KEYS:
        if conf.get(key) is None:
            continue
        if not runtime_config.is_config_secret(f"{PROJECT}:{key}"):
            raise ConfigError(key, "<plain text, not shown>", "a secret is stored in plain text",
                              "an encrypted value (`secure:` in the stack file)",
                              f"run `pulumi config set --secret {key}` to encrypt it")
        secrets[key] = conf.require_secret(key)
        raw[key] = True
    stray = [k for k in _all_project_keys() if k not in TOP_LEVEL_KEYS + SECRET_KEYS]
    if stray:
        raw[stray[0]] = conf.get(stray[0])
    return parse_config(raw, pulumi.get_stack()), secrets


def _decode(text: str) -> Any:
    """Pulumi passes structured values as JSON and plain ones (`environment: prod`) as bare strings."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _all_project_keys() -> list[str]:
    from pulumi.runtime import config as runtime_config

    prefix = f"{PROJECT}:"
    return [k[len(prefix):] for k in runtime_config.CONFIG.get() if k.startswith(prefix)]
