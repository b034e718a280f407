"""Cross-field rules of a stack config that no single field can check on its own.

Each rule raises one ConfigError naming the key path, the value, what is allowed and the fix.
"""
from __future__ import annotations

import datetime
import ipaddress
import posixpath
import re
from collections import Counter
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from fleet.config import image_refs, images
from fleet.config.schema import HF_CACHE_MOUNT, HF_ID, FleetConfig, Model
from fleet.config.errors import ConfigError
from fleet.config.secrets import SHOWN
from fleet.config.gpus import GPU_MODELS, lacks
from fleet.config.vllm_env import check_env
from fleet.config.vllm_flags import check_extra_args

NEEDS_DRAFT_MODEL = ("draft_model", "eagle", "eagle3")


def check_config(cfg: FleetConfig) -> None:
    if cfg.target == "kubernetes":
        _check_kubernetes(cfg)
    else:
        _check_docker_target(cfg)
        _check_hosts(cfg)
    _check_models(cfg)
    if cfg.target == "docker":
        _check_roles_and_ports(cfg)
    _check_balancing(cfg)
    _check_client_keys(cfg)
    _check_tls(cfg)
    _check_public_api(cfg)
    _check_images(cfg)


def _duplicate(names: list[str]) -> str | None:
    dup = [n for n, c in Counter(names).items() if c > 1]
    return dup[0] if dup else None


def _ip(key: str, value: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Docker publishes ports on IP addresses only: a host name here fails at `pulumi up`."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(key, value, "not an IP address", f"an IPv4 or IPv6 address: {what}",
                          f"set `{key}` to the IP address (resolve the name once, e.g. `getent hosts {value}`)") from None


def docker_endpoint(docker_host: str) -> str:
    """One Docker engine, however its endpoint is written: `ssh://deploy@gpu-1` and
    `ssh://root@GPU-1:22` reach the same daemon."""
    url = urlsplit(docker_host)
    if url.scheme == "unix":
        return f"unix://{url.path or url.netloc}"
    default = {"ssh": 22, "tcp": 2375}.get(url.scheme)
    try:
        port = url.port or default
    except ValueError:
        port = default
    return f"{url.scheme}://{(url.hostname or '').lower()}:{port}"


def _check_hosts(cfg: FleetConfig) -> None:
    # Two entries for one machine would double-book its ports, GPUs and cores, and name containers twice.
    for field, identity in (("name", lambda h: h.name), ("docker_host", lambda h: docker_endpoint(h.docker_host)),
                            ("address", lambda h: str(_ip(f"hosts[{cfg.hosts.index(h)}].address", h.address,
                                                          "the address the other hosts reach this host on")))):
        seen: dict[str, int] = {}
        for i, h in enumerate(cfg.hosts):
            ident = identity(h)
            if ident in seen:
                j = seen[ident]
                problem = ("two hosts share this name" if field == "name" else
                           f"host `{h.name}` is the same machine as `{cfg.hosts[j].name}` (hosts[{j}]): same {field}")
                raise ConfigError(f"hosts[{i}].{field}", getattr(h, field), problem,
                                  f"one inventory entry per machine, each with its own {field}",
                                  f"remove one of the two entries or correct `hosts[{i}].{field}`")
            seen[ident] = i
    for i, h in enumerate(cfg.hosts):
        if h.gpus > 0 and h.gpu_model is None:
            raise ConfigError(f"hosts[{i}].gpu_model", None, f"host `{h.name}` has {h.gpus} GPUs but no gpu_model",
                              ", ".join(GPU_MODELS), f"set `hosts[{i}].gpu_model`, e.g. H100-80GB")
        if h.gpu_model is not None and h.gpu_model not in GPU_MODELS:
            raise ConfigError(f"hosts[{i}].gpu_model", h.gpu_model, "unknown GPU model", ", ".join(GPU_MODELS),
                              "use the closest listed model (memory and generation matter)")
        if h.gpu_model is not None and h.gpus == 0:
            raise ConfigError(f"hosts[{i}].gpus", 0, f"host `{h.name}` names gpu_model {h.gpu_model} but has 0 GPUs",
                              "gpus >= 1 with a gpu_model, or no gpu_model for a CPU host",
                              f"set `hosts[{i}].gpus` or remove gpu_model")


def _check_models(cfg: FleetConfig) -> None:
    dup = _duplicate([m.name for m in cfg.models])
    if dup:
        i = [m.name for m in cfg.models].index(dup)
        raise ConfigError(f"models[{i}].name", dup, "two models share this name", "unique model names",
                          "rename one of the models")
    dup = _duplicate([m.client_model_name for m in cfg.models])
    if dup:
        i = [m.client_model_name for m in cfg.models].index(dup)
        raise ConfigError(f"models[{i}].served_model_name", dup, "two models are served under the same name",
                          "unique served names", "set a distinct `served_model_name`")
    gpu_hosts = [h for h in cfg.hosts if h.gpus > 0]
    cpu_hosts = [h for h in cfg.hosts if h.gpus == 0]
    for i, m in enumerate(cfg.models):
        k = f"models[{i}]"
        if cfg.target == "kubernetes":
            pass  # devices and GPU generations are matched against node pools (_check_kubernetes, fleet.k8s.plan)
        elif m.device == "cpu":
            if not cpu_hosts:
                raise ConfigError(f"{k}.device", "cpu", "no CPU host (gpus: 0) in the inventory",
                                  "`gpu` on GPU hosts, `cpu` on hosts with gpus: 0", f"add a CPU host or set `{k}.device: gpu`")
            if m.gpus_per_replica or m.tensor_parallel_size * m.pipeline_parallel_size > 1:
                raise ConfigError(f"{k}.tensor_parallel_size", m.tensor_parallel_size * m.pipeline_parallel_size,
                                  "CPU replicas run unsharded", "tensor_parallel_size and pipeline_parallel_size 1 for device cpu",
                                  "scale CPU models with `replicas`")
            if m.quantization in ("fp8", "bitsandbytes", "awq_marlin", "gptq_marlin"):
                raise ConfigError(f"{k}.quantization", m.quantization, "not available on vLLM's CPU backend",
                                  "none, awq, gptq or compressed-tensors", f"remove `{k}.quantization`")
        else:
            if not gpu_hosts:
                raise ConfigError(f"{k}.device", "gpu", "the inventory has no GPU host", "a host with gpus >= 1",
                                  f"add a GPU host or set `{k}.device: cpu`")
            _check_gpu_generation(cfg, i)
        spec = m.speculative
        if spec is not None:
            if spec.method in NEEDS_DRAFT_MODEL and not spec.model:
                raise ConfigError(f"{k}.speculative.model", None, f"method {spec.method} needs a draft model",
                                  "a Hugging Face id of a smaller model with the same tokenizer",
                                  f"set `{k}.speculative.model`, or use method ngram")
            if spec.method == "ngram" and spec.model:
                raise ConfigError(f"{k}.speculative.model", spec.model, "ngram speculation uses no draft model",
                                  "no model with method ngram", f"remove `{k}.speculative.model`")
            if spec.method != "ngram" and spec.prompt_lookup_max is not None:
                raise ConfigError(f"{k}.speculative.prompt_lookup_max", spec.prompt_lookup_max,
                                  "only ngram speculation looks up the prompt", "prompt_lookup_max with method ngram",
                                  f"remove it or set `{k}.speculative.method: ngram`")
        if m.runtime == "seed-otel" and not m.image:
            raise ConfigError(f"{k}.image", None, "runtime seed-otel needs the image built from files/vllm/Dockerfile",
                              "a pinned image reference pushed to your registry",
                              f"`docker build -t REGISTRY/vllm-otel:TAG files/vllm`, push it, set `{k}.image`")
        if m.lora is not None:
            _check_lora(cfg, i)
        # vLLM's own option table (fleet.config.vllm_flags) and the program's environment (vllm_env).
        check_extra_args(m, i)
        check_env(m, i)


# Headers that name the client, the body or the connection rather than a conversation: hashing
# one would put all of a client's conversations (or every request) on one replica.
NOT_SESSION_HEADERS = ("authorization", "host", "content-type", "content-length", "transfer-encoding", "connection",
                       "user-agent", "accept", "accept-encoding", "cookie", "x-forwarded-for", "x-real-ip",
                       "x-forwarded-proto")


def _check_balancing(cfg: FleetConfig) -> None:
    lb = cfg.load_balancer
    for key in ("affinity_bound", "affinity_load_factor"):
        value = getattr(lb, key)
        if value is not None and lb.policy != "prefix_affinity":
            raise ConfigError(f"load_balancer.{key}", value, f"only prefix_affinity bounds a replica's load; "
                              f"policy is {lb.policy}", f"{key} with policy: prefix_affinity",
                              f"remove {key}, or set `load_balancer.policy: prefix_affinity`")
    if lb.session_header.lower() in NOT_SESSION_HEADERS:
        raise ConfigError("load_balancer.session_header", lb.session_header, "a header that names the client or the "
                          "request, not a conversation: every request of one client would reach one replica",
                          "a header of the client's own, e.g. X-Session-ID", "set another header name")


def _check_lora(cfg: FleetConfig, i: int) -> None:
    """One model's adapters: names no other model or adapter answers to (the load balancer routes
    by them), sources vLLM can load in every replica, and the limits vLLM 0.32 checks at startup."""
    m = cfg.models[i]
    lora = m.lora
    k = f"models[{i}].lora"
    taken: dict[str, str] = {}  # a name clients (or /models/<name>/ routes) use -> who answers to it
    for other in cfg.models:
        taken.setdefault(other.client_model_name, f"the served name of model `{other.name}`")
        taken.setdefault(other.name, f"the name of model `{other.name}` (its `/models/{other.name}/` route)")
    for n, other in enumerate(cfg.models[:i]):
        for j, a in enumerate(other.adapter_names):
            taken.setdefault(a, f"an adapter of model `{other.name}` (models[{n}].lora.adapters[{j}])")
    for j, adapter in enumerate(lora.adapters):
        key = f"{k}.adapters[{j}]"
        if adapter.name in taken:
            raise ConfigError(f"{key}.name", adapter.name, f"already {taken[adapter.name]}: a request for it "
                              "could reach only one of them", "adapter names used by no model and no other adapter "
                              "in the fleet", f"rename the adapter (e.g. `{m.name}-{adapter.name}`)")
        taken[adapter.name] = f"an adapter of model `{m.name}` ({key})"
        _check_adapter_source(m, f"{key}.source", adapter.source)
    if lora.max_cpu_loras is not None and lora.max_cpu_loras < lora.max_loras:
        raise ConfigError(f"{k}.max_cpu_loras", lora.max_cpu_loras, f"below max_loras ({lora.max_loras}): vLLM "
                          "refuses it (LoRAConfig)", f"max_cpu_loras >= {lora.max_loras}, or unset (= max_loras)",
                          f"raise `{k}.max_cpu_loras` or remove it")
    spec = m.speculative
    if spec is not None and m.max_num_batched_tokens and m.max_num_seqs:
        need = m.max_num_seqs * (spec.num_speculative_tokens + 1)
        if m.max_num_batched_tokens < need:
            raise ConfigError(f"models[{i}].max_num_batched_tokens", m.max_num_batched_tokens,
                              f"with LoRA and speculative decoding vLLM refuses fewer batched tokens than max_num_seqs "
                              f"x (num_speculative_tokens + 1) = {need} (EngineArgs.create_engine_config)",
                              f">= {need}", f"raise `models[{i}].max_num_batched_tokens` or lower max_num_seqs")


def _check_adapter_source(m: Model, key: str, source: str) -> None:
    """vLLM reads an absolute path as it is and anything else as a Hugging Face repository id
    (vllm.lora.utils.get_adapter_absolute_path); a path must be one every replica has."""
    if not source.startswith("/"):
        if re.match(HF_ID, source) and ".." not in source and "--" not in source:
            return
        raise ConfigError(key, source, "neither a Hugging Face id nor an absolute path", "`org/name` (a Hugging Face "
                          f"adapter repository) or an absolute path under {HF_CACHE_MOUNT}/",
                          "write the repository id `org/name`, or the adapter directory's absolute path")
    if posixpath.normpath(source) != source.rstrip("/") or source.startswith("//"):
        raise ConfigError(key, source, "not a normalised path (`..`, `.` or `//`)", "an absolute path without `.`, `..` "
                          "or `//` components", f"write `{posixpath.normpath(source)}`")
    if not m.image and not source.startswith(HF_CACHE_MOUNT + "/"):
        raise ConfigError(key, source, f"outside the replicas' Hugging Face cache mount ({HF_CACHE_MOUNT}): the "
                          "official image has no such directory", f"a path under {HF_CACHE_MOUNT}/ (the host's "
                          "`hf_cache_dir`, the Docker volume or the cluster's cache claim), or a Hugging Face id",
                          f"copy the adapter into the cache (e.g. `<hf_cache_dir>/adapters/NAME` is "
                          f"`{HF_CACHE_MOUNT}/adapters/NAME`), use its Hugging Face id, or build an `image` that holds it")


def _check_docker_target(cfg: FleetConfig) -> None:
    if not cfg.hosts:
        raise ConfigError("hosts", cfg.hosts, "the docker target needs at least 1 host",
                          "a list of at least 1 host object (name, docker_host, address, gpus, ...)",
                          f"add the Docker hosts under `hosts` in stacks/Pulumi.{cfg.stack}.yaml, or set `target: kubernetes`")
    if cfg.kubernetes is not None:
        raise ConfigError("kubernetes", "<section>", "the `kubernetes` section is only read by the kubernetes target",
                          "no `kubernetes` section with target docker", "remove it, or set `target: kubernetes`")


# Keys that describe Docker hosts and published ports; on a cluster they would be silently ignored.
DOCKER_ONLY_KEYS = (("load_balancer", ("host", "bind_address")),
                    ("monitoring", ("host", "bind_address", "prometheus_port", "grafana_port", "prometheus_image", "grafana_image")))


def _check_kubernetes(cfg: FleetConfig) -> None:
    """The kubernetes target: its section, its node pools and what it cannot honour."""
    k8s = cfg.kubernetes
    if k8s is None:
        raise ConfigError("kubernetes", None, "target kubernetes needs a `kubernetes` section",
                          "an object with at least `node_pools` (see the README's config reference)",
                          f"add `vllm-fleet:kubernetes` with its node pools to stacks/Pulumi.{cfg.stack}.yaml")
    if cfg.hosts:
        raise ConfigError("hosts", [h.name for h in cfg.hosts], "Docker hosts are not used by the kubernetes target",
                          "no `hosts` with target kubernetes (node pools describe the GPUs)",
                          "remove `hosts`, or set `target: docker`")
    for section, keys in DOCKER_ONLY_KEYS:
        obj = getattr(cfg, section)
        for key in keys:
            if key in obj.model_fields_set:
                raise ConfigError(f"{section}.{key}", getattr(obj, key), "a Docker-target key has no meaning on Kubernetes",
                                  "Kubernetes equivalents under `kubernetes` (service_type, monitoring.*)",
                                  f"remove `{section}.{key}`")
    pools = k8s.node_pools
    dup = _duplicate([p.name for p in pools])
    if dup:
        i = [p.name for p in pools].index(dup)
        raise ConfigError(f"kubernetes.node_pools[{i}].name", dup, "two node pools share this name",
                          "unique pool names", "rename one of the pools")
    model_names = [m.name for m in cfg.models]
    claimed: dict[str, str] = {}
    for i, pool in enumerate(pools):
        if pool.gpu_model not in GPU_MODELS:
            raise ConfigError(f"kubernetes.node_pools[{i}].gpu_model", pool.gpu_model, "unknown GPU model",
                              ", ".join(GPU_MODELS), "use the closest listed model (memory and generation matter)")
        for j, name in enumerate(pool.models):
            if name not in model_names:
                raise ConfigError(f"kubernetes.node_pools[{i}].models[{j}]", name, "no model has this name",
                                  ", ".join(model_names), "name a model of `models`")
            if name in claimed:
                raise ConfigError(f"kubernetes.node_pools[{i}].models[{j}]", name,
                                  f"model `{name}` is already assigned to pool `{claimed[name]}`",
                                  "each model in at most one pool's `models`", "remove it from one of the pools")
            claimed[name] = pool.name
    for i, m in enumerate(cfg.models):
        if m.device == "cpu":
            raise ConfigError(f"models[{i}].device", "cpu", "the kubernetes target serves GPU models only",
                              "`gpu` on the kubernetes target", "serve CPU models with the docker target")
        # Names derived from models (`vllm-<model>-<index>`...) are checked against every other object
        # of the plan by its ledger (fleet.k8s.plan.objects), not here.
    cache = k8s.hf_cache
    if cache.type == "host_path" and not cache.host_path:
        raise ConfigError("kubernetes.hf_cache.host_path", None, "hf_cache type host_path needs the node directory",
                          "an absolute path, e.g. /data/hf-cache", "set `kubernetes.hf_cache.host_path`")
    if cache.type == "pvc" and cache.host_path:
        raise ConfigError("kubernetes.hf_cache.host_path", cache.host_path, "host_path is only read with type host_path",
                          "no host_path with type pvc", "remove it, or set `kubernetes.hf_cache.type: host_path`")
    seen: set[str] = set()
    for i, auto in enumerate(k8s.autoscaling):
        key = f"kubernetes.autoscaling[{i}]"
        if auto.model not in model_names:
            raise ConfigError(f"{key}.model", auto.model, "no model has this name", ", ".join(model_names), "name a model of `models`")
        if auto.model in seen:
            raise ConfigError(f"{key}.model", auto.model, "this model is already autoscaled", "one entry per model",
                              "merge the entries")
        seen.add(auto.model)
        floor = cfg.models[model_names.index(auto.model)].replicas
        if auto.max_replicas < floor:
            raise ConfigError(f"{key}.max_replicas", auto.max_replicas, f"below the model's replicas ({floor}), its minimum",
                              f"max_replicas >= {floor}", f"raise `{key}.max_replicas` or lower the model's replicas")
        if not cfg.monitoring.enabled:
            raise ConfigError(f"{key}.model", auto.model, "autoscaling queries Prometheus, but monitoring is disabled",
                              "monitoring.enabled: true with autoscaling", "enable monitoring or remove `kubernetes.autoscaling`")
        if k8s.monitoring.mode == "existing-operator" and not k8s.monitoring.prometheus_url:
            raise ConfigError("kubernetes.monitoring.prometheus_url", None,
                              "autoscaling with an existing Prometheus needs its URL", "an http(s) URL reachable from KEDA",
                              "set `kubernetes.monitoring.prometheus_url`, e.g. http://prometheus-operated.monitoring.svc:9090")


def _check_gpu_generation(cfg: FleetConfig, i: int) -> None:
    """Some GPU of the inventory must run the model's precision (placement then uses only those)."""
    m = cfg.models[i]
    gens = cfg.gpu_models
    missing = {lacks(g, dtype=m.dtype, quantization=m.quantization if m.quantization == "fp8" else None) for g in gens}
    if None in missing:
        return
    if "quantization" in missing:
        raise ConfigError(f"models[{i}].quantization", "fp8", f"fp8 needs Ada or Hopper GPUs (compute 8.9+); the inventory has {', '.join(gens)}",
                          "fp8 on L4, L40S, RTX-4090, H100, H200, B200; awq/gptq elsewhere", "remove fp8 or add newer GPUs")
    raise ConfigError(f"models[{i}].dtype", "bfloat16", f"bfloat16 needs Ampere or newer (compute 8.0+); the inventory has {', '.join(gens)}",
                      "float16 on Turing/Volta", f"set `models[{i}].dtype: float16`")


def _check_roles_and_ports(cfg: FleetConfig) -> None:
    _ip("load_balancer.bind_address", cfg.load_balancer.bind_address, "0.0.0.0 for every interface, or one of its own")
    if cfg.monitoring.enabled:
        mon = _ip("monitoring.bind_address", cfg.monitoring.bind_address, "127.0.0.1, reached over SSH")
        if mon.is_unspecified:
            raise ConfigError("monitoring.bind_address", cfg.monitoring.bind_address,
                              "Prometheus (no authentication, admin API on) and Grafana would listen on every interface",
                              "a loopback address (reach them with `ssh -L`) or one private interface's address",
                              "set `monitoring.bind_address: 127.0.0.1`")
    names = [h.name for h in cfg.hosts]
    for key, value in (("load_balancer.host", cfg.load_balancer.host), ("monitoring.host", cfg.monitoring.host)):
        if value is not None and value not in names:
            raise ConfigError(key, value, "no host has this name", ", ".join(names), f"set `{key}` to one of the hosts")
    taken: dict[tuple[str, int], str] = {(cfg.lb_host.name, cfg.load_balancer.port): "load_balancer.port"}
    if cfg.monitoring.enabled:
        mon = cfg.monitoring_host.name
        for key, port in (("monitoring.prometheus_port", cfg.monitoring.prometheus_port),
                          ("monitoring.grafana_port", cfg.monitoring.grafana_port)):
            if (mon, port) in taken:
                raise ConfigError(key, port, f"port {port} on host `{mon}` is already used by `{taken[(mon, port)]}`",
                                  "a free port on that host", f"change `{key}`")
            taken[(mon, port)] = key


def _check_client_keys(cfg: FleetConfig) -> None:
    """`load_balancer.keys` (names, models, limits) and the `client_keys` secret (name -> key) name the same keys."""
    keys = cfg.load_balancer.keys
    fix_value = "`pulumi config set --secret --path 'client_keys.NAME' \"sk-$(openssl rand -hex 24)\"`"
    dup = _duplicate([k.name for k in keys])
    if dup:
        i = [k.name for k in keys].index(dup, 1 + [k.name for k in keys].index(dup))
        raise ConfigError(f"load_balancer.keys[{i}].name", dup, "two keys share this name", "unique key names",
                          "rename or merge one of them")
    names = {n: m for m, client in cfg.client_names().items() for n in client} | {m.name: m.name for m in cfg.models}
    for i, k in enumerate(keys):
        for j, model in enumerate(k.models):
            if model not in names:
                raise ConfigError(f"load_balancer.keys[{i}].models[{j}]", model, "no model is served under this name",
                                  ", ".join(sorted(names)), "name a model as clients send it, or its `name`")
    secret = cfg.client_key_names
    if keys and secret == ():
        raise ConfigError("client_keys", None, f"`load_balancer.keys` names {len(keys)} key(s) but the `client_keys` "
                          "secret is not set", "one secret value per key name", f"set each one: {fix_value}")
    if secret is None:
        return  # set, but unreadable offline: the program checks the names
    declared = [k.name for k in keys]
    for name in secret:
        if name not in declared:
            raise ConfigError(f"client_keys.{name}", SHOWN, "no entry in `load_balancer.keys` for this key",
                              "a key per `load_balancer.keys[].name`", "add `{name: %s}` to `load_balancer.keys` "
                              "(with its models and limits), or remove the key" % name)
    for i, name in enumerate(declared):
        if name not in secret:
            raise ConfigError(f"load_balancer.keys[{i}].name", name, "the `client_keys` secret has no key of this name",
                              "a key per `load_balancer.keys[].name`", f"set it: {fix_value.replace('NAME', name)}")


TLS_FIX = ("`pulumi config set --secret tls_certificate < fullchain.pem` and `pulumi config set --secret "
           "tls_private_key < privkey.pem`")


def _check_tls(cfg: FleetConfig) -> None:
    """`load_balancer.tls` takes its certificate from exactly one source its target can reach."""
    tls, have = cfg.load_balancer.tls, cfg.tls_secrets
    if tls is None:
        if have:
            raise ConfigError(have[0], SHOWN, "a TLS secret is set but `load_balancer.tls` is not: nothing would "
                              "serve HTTPS", "the TLS secrets together with `load_balancer.tls`",
                              f"add `load_balancer: {{tls: {{}}}}` (HTTPS on port 443), or remove the secret "
                              f"(`pulumi config rm {have[0]}`)")
        return
    k = "load_balancer.tls"
    if len(have) == 1:
        missing = next(s for s in ("tls_certificate", "tls_private_key") if s not in have)
        raise ConfigError(missing, None, f"`{have[0]}` is set but `{missing}` is not", "both TLS secrets, or neither",
                          f"set it: `pulumi config set --secret {missing} < "
                          f"{'fullchain.pem' if missing == 'tls_certificate' else 'privkey.pem'}`")
    paths = [p for p in ("certificate_path", "private_key_path") if getattr(tls, p)]
    if len(paths) == 1:
        missing = next(p for p in ("certificate_path", "private_key_path") if p not in paths)
        raise ConfigError(f"{k}.{missing}", None, f"`{k}.{paths[0]}` is set but `{missing}` is not",
                          "both paths, or neither", f"set `{k}.{missing}`")
    sources = [name for name, on in (("the tls_certificate/tls_private_key secrets", bool(have)),
                                     (f"`{k}.certificate_path`/`private_key_path`", bool(paths)),
                                     (f"`{k}.secret_name`", bool(tls.secret_name))) if on]
    docker = cfg.target == "docker"
    if docker and tls.secret_name:
        raise ConfigError(f"{k}.secret_name", tls.secret_name, "a Kubernetes Secret has no meaning on the docker target",
                          "the TLS secrets, or certificate_path and private_key_path on the load balancer's host",
                          f"remove `{k}.secret_name`; {TLS_FIX}")
    if not docker and paths:
        raise ConfigError(f"{k}.{paths[0]}", getattr(tls, paths[0]), "paths on a host have no meaning on the "
                          "kubernetes target", "the TLS secrets, or `secret_name` of a `kubernetes.io/tls` Secret "
                          "(cert-manager writes one)", f"remove the paths and set `{k}.secret_name`, or {TLS_FIX}")
    if len(sources) != 1:
        where = "certificate_path and private_key_path" if docker else "secret_name"
        raise ConfigError(k, {f: getattr(tls, f) for f in ("certificate_path", "private_key_path", "secret_name")
                              if getattr(tls, f)} or None,
                          "HTTPS needs its certificate from exactly one source, " +
                          (f"and this stack gives {len(sources)}: {' and '.join(sources)}" if sources else "and none is set"),
                          f"the TLS secrets, or {where}", f"keep one: {TLS_FIX}, or set `{k}.{where.split(' and ')[0]}`")
    for part in paths:
        path = getattr(tls, part)
        if posixpath.normpath(path) != path or path.startswith("//"):
            raise ConfigError(f"{k}.{part}", path, "not a normalised absolute path (`..`, `.`, `//` or a trailing `/`)",
                              "an absolute path of a file on the load balancer's host",
                              f"write `{posixpath.normpath(path)}`")
    if tls.port == cfg.load_balancer.port:
        raise ConfigError(f"{k}.port", tls.port, "the HTTPS port is the plain HTTP port (`load_balancer.port`)",
                          "another port (443 by default)", f"change `{k}.port` or `load_balancer.port`")


def check_tls_material(certificate: str, private_key: str, now: datetime.datetime | None = None) -> None:
    """The TLS secrets, read without ever showing them: a PEM certificate chain (the server's first)
    valid now, and an unencrypted PEM private key that belongs to it. What Nginx would refuse at
    start (or serve to clients' refusal) is refused here, before any resource."""
    fix_cert = "`pulumi config set --secret tls_certificate < fullchain.pem` (PEM: the server's certificate, then its chain)"
    fix_key = "`pulumi config set --secret tls_private_key < privkey.pem` (PEM, unencrypted)"
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode())
    except ValueError:
        raise ConfigError("tls_certificate", SHOWN, "not a PEM certificate", "`-----BEGIN CERTIFICATE-----` blocks, "
                          "the server's certificate first", fix_cert) from None
    try:
        key = serialization.load_pem_private_key(private_key.encode(), password=None)
    except TypeError:
        raise ConfigError("tls_private_key", SHOWN, "the private key is encrypted: Nginx would ask for its passphrase "
                          "at every start", "an unencrypted PEM private key",
                          f"decrypt it (`openssl pkey -in key.pem -out privkey.pem`), then {fix_key}") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError("tls_private_key", SHOWN, f"not a PEM private key ({type(e).__name__})",
                          "`-----BEGIN PRIVATE KEY-----` (or RSA/EC PRIVATE KEY)", fix_key) from None
    server = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != \
            server.public_key().public_bytes(serialization.Encoding.DER, public):
        raise ConfigError("tls_private_key", SHOWN, f"this key does not belong to the certificate of "
                          f"{server.subject.rfc4514_string()!r} (the first in `tls_certificate`)",
                          "the private key of the server's certificate, which comes first in the chain",
                          f"{fix_key} with the matching key, or put the server's certificate first")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if server.not_valid_after_utc <= now:
        raise ConfigError("tls_certificate", SHOWN, f"the certificate of {server.subject.rfc4514_string()!r} expired on "
                          f"{server.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", "a certificate valid now",
                          f"renew it, then {fix_cert}")
    if server.not_valid_before_utc > now:
        raise ConfigError("tls_certificate", SHOWN, f"the certificate of {server.subject.rfc4514_string()!r} is valid "
                          f"only from {server.not_valid_before_utc:%Y-%m-%d %H:%M} UTC", "a certificate valid now",
                          f"check the clock of the machine that issued it, or wait; then {fix_cert}")


def _check_public_api(cfg: FleetConfig) -> None:
    """Outside `environment: local`, an API anyone on the network can reach must ask for a key."""
    if cfg.environment == "local" or cfg.has_api_key or cfg.load_balancer.keys:
        return
    if cfg.target == "kubernetes":
        service = cfg.kubernetes.service_type
        if service == "ClusterIP":
            return
        where = f"a {service} Service"
    else:
        bind = cfg.load_balancer.bind_address
        try:
            if ipaddress.ip_address(bind).is_loopback:
                return
        except ValueError:
            pass  # refused as not an IP address
        where = f"{bind}:{cfg.load_balancer.port} on host `{cfg.lb_host.name}`"
    raise ConfigError("api_key", None, f"the {cfg.environment} API is published on {where} with no API key: "
                      "anyone who reaches it can use the fleet", "an API key whenever the API is reachable "
                      "beyond loopback (or a ClusterIP Service) outside environment local",
                      f"`pulumi config set --secret api_key \"$(openssl rand -hex 32)\" --stack {cfg.stack}`")


def _check_images(cfg: FleetConfig) -> None:
    refs = [(f"models[{i}].image", m.resolved_image) for i, m in enumerate(cfg.models)]
    refs.append(("load_balancer.image", cfg.load_balancer.image))
    monitoring = [(f"monitoring.{k}", getattr(cfg.monitoring, k)) for k in
                  ("prometheus_image", "grafana_image", "nginx_exporter_image", "dcgm_exporter_image")]
    for key, ref in refs + monitoring:  # in every environment: Docker and the kubelet refuse them
        try:
            image_refs.parse_ref(ref)
        except ValueError as e:
            raise ConfigError(key, ref, f"not a valid image reference: {e}", "[registry[:port]/]repository[:tag][@sha256:<64 hex>]"
                              ", lower-case repository", f"correct `{key}`, e.g. {images.VLLM_GPU}") from None
    for i, m in enumerate(cfg.models):
        old = image_refs.too_old(m)
        if old:
            row, release = old
            have = ".".join(map(str, release))
            need = ".".join(map(str, row.since))
            raise ConfigError(f"models[{i}].image", m.resolved_image,
                              f"vLLM {have} lacks `{row.flag}`, which `{row.key}` adds (vLLM >= {need}; {row.source})",
                              f"an image of vLLM >= {need}", f"use a newer image (e.g. {images.VLLM_GPU}) or set "
                              f"`models[{i}].{row.off}`")
    if cfg.environment == "local":
        return
    for key, ref in refs + (monitoring if cfg.monitoring.enabled else []):
        if not images.is_pinned(ref):
            raise ConfigError(key, ref, f"unpinned image in the {cfg.environment} environment",
                              "a version tag other than latest, or an @sha256 digest",
                              f"pin `{key}`, e.g. {images.VLLM_GPU}")
