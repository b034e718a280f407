"""Typed stack configuration: the inventory of hosts, models, load balancer and monitoring.

Every default is defined here, once; stack files (`stacks/Pulumi.<env>.yaml`) only override.
`fleet.config.load` turns a stack's values into a validated `FleetConfig` (or one `ConfigError`).
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from fleet.config import images
from fleet.config.gpus import GPU_MODELS

DNS_LABEL = r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$"
HF_ID = r"^[\w.-]+/[\w.-]+$"
# Where the replicas' Hugging Face cache is mounted (a host directory, a Docker volume or the
# cluster's claim): every replica of a model sees the same files there.
HF_CACHE_MOUNT = "/root/.cache/huggingface"
SECRET_KEYS = ("hf_token", "api_key", "grafana_admin_password", "client_keys", "tls_certificate", "tls_private_key")
# The secrets that carry Nginx's TLS certificate (PEM chain, server first) and its private key (PEM).
TLS_SECRET_KEYS = ("tls_certificate", "tls_private_key")
# FleetConfig fields the program fills in, never a stack file.
INTERNAL_FIELDS = ("stack", "has_api_key", "has_hf_token", "client_key_names", "tls_secrets")
# Shortest client key: the rendered config holds each key's SHA-256, which must not be guessable.
CLIENT_KEY_MIN_CHARS = 32
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
    ssh_opts: list[str] = Field(default_factory=list, description="Extra ssh options for an `ssh://` docker_host "
                                "(connection multiplexing is added unless these set ControlMaster or ControlPath).")
    hf_cache_dir: Optional[str] = Field(
        None, pattern=r"^/", description="Host directory for the Hugging Face cache; default: a named Docker volume."
    )
    pull_timeout_s: int = Field(3600, ge=60, le=86400, description="How long `pulumi up` may take to pull one image "
                                "on this host (the vLLM image is ~10 GB).")

    @property
    def ssh_options(self) -> list[str]:
        """`ssh_opts`, with one multiplexed SSH connection per host for an `ssh://` endpoint: the
        provider runs `ssh ... docker system dial-stdio` per operation, and a parallel `pulumi up`
        opens enough at once to hit sshd's MaxStartups (kreuzwerker/terraform-provider-docker#262)."""
        if not self.docker_host.startswith("ssh://"):
            return list(self.ssh_opts)
        if any(k in o.lower() for o in self.ssh_opts for k in ("controlmaster", "controlpath")):
            return list(self.ssh_opts)
        return ["-o", "ControlMaster=auto", "-o", "ControlPath=~/.ssh/vllm-fleet-%C", "-o", "ControlPersist=10m",
                *self.ssh_opts]


class Speculative(Strict):
    method: Literal["draft_model", "ngram", "eagle", "eagle3", "mtp"] = Field(
        "draft_model", description="Speculative decoding method."
    )
    model: Optional[str] = Field(None, description="Draft model (HF id); required for draft_model, eagle and eagle3.")
    num_speculative_tokens: int = Field(3, ge=1, le=16, description="Tokens proposed per step.")
    prompt_lookup_max: Optional[int] = Field(None, ge=1, le=16, description="n-gram window (method ngram).")


# vLLM 0.32's LoRAConfig: `max_lora_rank` is one of these (MaxLoRARanks), 16 by default; `max_loras` 1.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$"


class Adapter(Strict):
    name: str = Field(pattern=ADAPTER_NAME, description="Name clients send as `model` to use the adapter; unique in the fleet.")
    source: str = Field(description="Hugging Face id `org/name` (downloaded into the replicas' cache), or an absolute path "
                        f"under the cache mount `{HF_CACHE_MOUNT}/` (a custom `image` may hold it elsewhere).")


class Lora(Strict):
    adapters: list[Adapter] = Field(min_length=1, description="The LoRA adapters served beside the model (`--lora-modules`).")
    max_loras: int = Field(1, ge=1, description="Adapters one batch may mix (`--max-loras`); each one holds GPU memory "
                           "for the largest rank on every layer.")
    max_lora_rank: Literal[LORA_RANKS] = Field(  # type: ignore[valid-type]
        16, description="Largest adapter rank (`--max-lora-rank`); sizes the GPU memory reserved per adapter slot.")
    max_cpu_loras: Optional[int] = Field(
        None, ge=1, description="Adapters kept loaded in host memory (`--max-cpu-loras`); default: max_loras.")

    @property
    def cpu_slots(self) -> int:
        """vLLM's LoRAConfig: max_cpu_loras defaults to max_loras."""
        return self.max_cpu_loras or self.max_loras


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
    hf_id: str = Field(pattern=HF_ID, description="Hugging Face model id, `org/name`.")
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
    lora: Optional[Lora] = Field(None, description="LoRA adapters served with the model (`--enable-lora`; object below).")
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
    start_timeout_s: int = Field(
        1800, ge=60, le=86400, description="How long a replica may take to download and load its weights before it "
        "must answer `/health`: `pulumi up` waits that long per replica, and sizes its timeouts from it."
    )
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
    def adapter_names(self) -> list[str]:
        """The names clients send as `model` to reach one of this model's LoRA adapters."""
        return [a.name for a in self.lora.adapters] if self.lora else []

    @property
    def client_names(self) -> list[str]:
        """Every name a client may send as `model` to reach this model's replicas: its served
        name, then its adapters' names."""
        return [self.client_model_name, *self.adapter_names]

    @property
    def resolved_image(self) -> str:
        return self.image or (images.VLLM_CPU if self.device == "cpu" else images.VLLM_GPU)


class ClientKey(Strict):
    name: str = Field(pattern=DNS_LABEL, description="Key name, logged with every request (never the key); its value "
                      "is `client_keys.<name>` (`pulumi config set --secret --path 'client_keys.<name>' KEY`).")
    models: list[str] = Field(default_factory=list, description="Models (the names clients send as `model`, or "
                              "model `name`s) this key may use; empty: all of them.")
    requests_per_minute: Optional[int] = Field(None, ge=1, le=6_000_000, description="Requests per minute; beyond "
                                               "it 429 with Retry-After. Default: no limit.")
    max_concurrent: Optional[int] = Field(None, ge=1, le=65_535, description="Requests in flight at once; beyond "
                                          "it 429. Default: no limit.")


class Tls(Strict):
    port: int = Field(443, ge=1, le=65535, description="Public HTTPS port of the API (published on the load balancer's "
                      "host; the Service's port on Kubernetes). Its certificate comes from one source: the "
                      "`tls_certificate` and `tls_private_key` secrets, the two paths, or `secret_name`.")
    certificate_path: Optional[str] = Field(None, pattern=r"^/", description="Certificate chain (PEM, server first) on "
                                            "the load balancer's host, mounted read-only (docker target).")
    private_key_path: Optional[str] = Field(None, pattern=r"^/", description="Its private key (PEM, unencrypted) on "
                                            "that host, mounted read-only (docker target).")
    secret_name: Optional[str] = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", description="An "
                                       "existing `kubernetes.io/tls` Secret in the fleet's namespace, e.g. the one a "
                                       "cert-manager Certificate writes (kubernetes target).")
    redirect_http: bool = Field(True, description="The plain `load_balancer.port` answers 308 to https (but `/health`); "
                                "false: it keeps serving the API too.")
    hsts: bool = Field(False, description="Send Strict-Transport-Security (max-age one year) on HTTPS answers: "
                       "browsers then refuse plain HTTP to that host.")


class LoadBalancer(Strict):
    host: Optional[str] = Field(None, description="Host that runs Nginx; default: the first host (docker target).")
    port: int = Field(80, ge=1, le=65535, description="Public port of the OpenAI-compatible API.")
    bind_address: str = Field("0.0.0.0", description="Address the public port binds to (docker target).")
    policy: Literal["prefix_affinity", "least_conn", "round_robin", "session_affinity"] = Field(
        "prefix_affinity", description="Balancing policy. `prefix_affinity`: each conversation stays on the replica "
        "holding its prefix cache, keyed by `session_header` when sent, else by the request's start (system and "
        "first user message, or a prompt's first 2,048 characters); a replica with more than `affinity_load_factor` "
        "times its fair share of the model's requests in flight passes new ones to the conversation's next replica. "
        "`session_affinity` hashes `session_header` only, unbounded."
    )
    session_header: str = Field("X-Session-ID", pattern=r"^[A-Za-z0-9-]+$", description="Header that pins a session "
                                "to a replica (`session_affinity`, `prefix_affinity`).")
    affinity_bound: Optional[int] = Field(None, ge=1, le=65_535, description="`prefix_affinity`: the most requests in "
                                          "flight one replica takes, whatever the others' load (Nginx's max_conns); "
                                          "when every replica has that many, the least busy one queues the request. "
                                          "Default: the model's `max_num_seqs`, else 256 (vLLM's smallest default): "
                                          "beyond it a replica queues.")
    affinity_load_factor: Optional[float] = Field(None, ge=1.0, le=10.0, description="`prefix_affinity`: how far above "
                                                  "its fair share (the model's requests in flight / its replicas) a "
                                                  "replica may be loaded by its own conversations before new requests "
                                                  "go to their next replica. 1.0 balances strictly (and moves "
                                                  "conversations most); larger keeps more on their cache. Default 1.25.")
    connect_timeout_s: int = Field(5, ge=1, le=75, description="Upstream connect timeout.")
    read_timeout_s: int = Field(3600, ge=60, le=86400, description="Longest silence while a generation runs.")
    send_timeout_s: int = Field(600, ge=10, le=86400, description="Longest pause sending a request upstream.")
    max_body_mb: int = Field(32, ge=1, le=1024, description="Largest request body (long prompts).")
    max_fails: int = Field(1, ge=1, le=100, description="Failures before a replica is benched for fail_timeout_s.")
    fail_timeout_s: int = Field(10, ge=1, le=3600, description="How long a failed replica is benched.")
    keepalive: int = Field(64, ge=1, le=4096, description="Idle keepalive connections kept per Nginx worker.")
    image: str = Field(images.NGINX, description="Nginx image.")
    keys: list[ClientKey] = Field(default_factory=list, description="API keys clients use at the edge (list of key "
                                  "objects below), each with its models and limits; Nginx checks them and reaches the "
                                  "replicas with the fleet's own `api_key`.")
    tls: Optional[Tls] = Field(None, description="Serve the API over HTTPS (HTTP/2, TLS 1.2 and 1.3) on `tls.port` "
                               "(object below); default: plain HTTP only.")


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
    prefix_cache_hit_alert: float = Field(
        0.2, ge=0, le=1, description="`prefix_affinity`: share of a model's prompt tokens found in the prefix cache "
        "below which, with traffic, for 30 minutes, `VllmPrefixCacheHitRateLow` fires; 0 disables it. Each turn of a "
        "conversation kept on its replica re-reads the earlier turns from cache (often over half the prompt), so "
        "0.2 means affinity is not working or the workload shares no prefixes.")
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
    # The names under the `client_keys` secret (None: set but unreadable offline; its values never live here).
    client_key_names: Optional[tuple[str, ...]] = ()
    # Which of TLS_SECRET_KEYS are set (their values never live here).
    tls_secrets: tuple[str, ...] = ()

    def client_names(self) -> dict[str, list[str]]:
        """Model `name` -> every name a client may send as `model` for it (served name first, then
        its adapters), in config order; the load balancer routes each to that model's replicas."""
        return {m.name: m.client_names for m in self.models}

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    @property
    def has_gpus(self) -> bool:
        if self.target == "kubernetes":
            return bool(self.kubernetes and self.kubernetes.node_pools)
        return any(h.gpus for h in self.hosts)

    @property
    def gpu_models(self) -> list[str]:
        """The GPU models of the inventory (hosts with GPUs, or node pools), in config order."""
        names = ([p.gpu_model for p in self.kubernetes.node_pools] if self.target == "kubernetes" and self.kubernetes
                 else [h.gpu_model for h in self.hosts if h.gpus > 0 and h.gpu_model])
        return list(dict.fromkeys(n for n in names if n in GPU_MODELS))

    @property
    def gpus_per_machine(self) -> dict[str, int]:
        """GPU model -> the most GPUs one host (or node of a pool) of that model has."""
        machines = ([(p.gpu_model, p.gpus_per_node) for p in self.kubernetes.node_pools]
                    if self.target == "kubernetes" and self.kubernetes
                    else [(h.gpu_model, h.gpus) for h in self.hosts if h.gpus > 0 and h.gpu_model])
        most: dict[str, int] = {}
        for gpu, n in machines:
            most[gpu] = max(most.get(gpu, 0), n)
        return most

    @property
    def lb_host(self) -> Host:
        return self.host(self.load_balancer.host) if self.load_balancer.host else self.hosts[0]

    @property
    def monitoring_host(self) -> Host:
        return self.host(self.monitoring.host) if self.monitoring.host else self.lb_host
