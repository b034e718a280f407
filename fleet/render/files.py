"""Rendered configuration files: nginx.conf with its model routing table (models.json) and
script (fleet.js), Prometheus config and rules, Grafana provisioning.

Pure functions of plain values. The components call them inside `Output.apply` with the
replicas' real endpoints; the offline render and the tests call them with the planned ones.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fleet.config.images import NGINX_NJS_MODULE
from fleet.config.schema import FleetConfig, Model
from fleet.ports import (NGINX_PORT, NGINX_STATUS_PORT, NGINX_TLS_DIR, NGINX_TLS_PORT, NGINX_UPSTREAM_KEEPALIVE_S,
                         TLS_CERT_FILE, TLS_KEY_FILE)
from fleet.render.templates import HEADER, render, static

GRAFANA_DASHBOARD_DIR = "/etc/grafana/dashboards"
PROMETHEUS_TARGETS_DIR = "/etc/prometheus/targets"
# Nginx's files, all in one directory (NGINX_CONF_DIR in the containers). Docker's writer job copies
# them in name order and Nginx reloads when nginx.conf changes: the two it reads sort before it.
NGINX_JS = "fleet.js"
NGINX_KEYS = "keys.json"
NGINX_MODELS = "models.json"
NGINX_CONF = "nginx.conf"
# With client keys, the variable through which Nginx gets the fleet's own api_key (a secret in its
# environment, never in a file) to authenticate to the replicas.
UPSTREAM_KEY_ENV = "FLEET_UPSTREAM_KEY"
DEFAULT_AFFINITY_BOUND = 256
# Bounded-load consistent hashing's c (Mirrokni, Thorup, Zadimoghaddam 2016; Google's and Vimeo's
# choice): a replica takes new requests of its own conversations up to 1.25 x the mean in flight.
DEFAULT_AFFINITY_LOAD_FACTOR = 1.25
# The load-following bound never asks a replica running fewer than this to pass a conversation on:
# a second sequence costs a replica next to nothing, a lost prefix its whole prefill (and a request
# logged a moment after its client got the answer still counts). fleet.js (models.json) and the
# spill-over rule read it.
AFFINITY_MIN_BOUND = 2


@dataclass
class Scrape:
    """One Prometheus target: its job, `host:port` and labels."""

    job: str
    target: str
    labels: dict[str, str] = field(default_factory=dict)


def upstream_name(model: str) -> str:
    return "vllm_" + model.replace("-", "_")


def replica_upstreams(model: str, servers: list[str]) -> list[str]:
    """prefix_affinity: one upstream per replica (its server first, the others its backups), named
    by replica index: a replica's name, and so its conversations, stay when others come and go.
    The dot keeps them apart from every model's upstream (model names have none)."""
    return [f"{upstream_name(model)}.r{i}" for i in range(len(servers))]


def nginx_models(cfg: FleetConfig, upstreams: dict[str, list[str]]) -> str:
    """models.json, fleet.js's table: every name a client may send as `model` -> its upstream
    (`routes`), and the cards GET /v1/models answers (`models`, vLLM's ModelCard fields but
    `created`, which fleet.js stamps per request). `routing`: the policy, and under prefix_affinity
    each model upstream's replica upstreams and the load factor fleet.js places conversations with.

    The list is the config's, not gathered from the replicas: it answers while a model's replicas
    restart, costs no request to any of them, and is what routing accepts, so the two never
    disagree. LoRA adapters are more names routed to their base model's upstream."""
    routes: dict[str, str] = {}
    cards: list[dict] = []
    for m in cfg.models:
        card = {"id": m.client_model_name, "object": "model", "owned_by": "vllm", "root": m.hf_id, "parent": None}
        if m.max_model_len:
            card["max_model_len"] = m.max_model_len
        cards.append(card)
        routes[m.client_model_name] = upstream_name(m.name)
        for adapter in m.lora.adapters if m.lora else []:
            cards.append({"id": adapter.name, "object": "model", "owned_by": "vllm", "root": adapter.source,
                          "parent": m.client_model_name})
            routes[adapter.name] = upstream_name(m.name)
    lb = cfg.load_balancer
    routing = {"policy": lb.policy, "session_header": lb.session_header}
    if lb.policy == "prefix_affinity":
        routing["load_factor"] = affinity_load_factor(cfg)
        routing["min_bound"] = AFFINITY_MIN_BOUND
        routing["fail_timeout_s"] = lb.fail_timeout_s
        routing["replicas"] = {upstream_name(m.name): replica_upstreams(m.name, upstreams[m.name]) for m in cfg.models}
    return json.dumps({"managed_by": HEADER, "routes": routes, "models": cards, "routing": routing}, indent=1) + "\n"


def affinity_bound(cfg: FleetConfig, m: Model) -> int:
    """Requests in flight one replica of `m` takes under `prefix_affinity` at most, whatever the
    others' load (its `max_conns`; when every replica is there, the least busy one queues the
    request): `load_balancer.affinity_bound`, else what vLLM runs at once (the model's
    max_num_seqs, or 256, vLLM's default on CPUs and smaller GPUs): past that a replica only
    queues. The alert rules read the same number."""
    return cfg.load_balancer.affinity_bound or m.max_num_seqs or DEFAULT_AFFINITY_BOUND


def affinity_load_factor(cfg: FleetConfig) -> float:
    """`prefix_affinity`: a replica takes new requests of its own conversations while it has fewer
    than this times the mean in flight of its model's replicas (fleet.js)."""
    lb = cfg.load_balancer
    return lb.affinity_load_factor if lb.affinity_load_factor is not None else DEFAULT_AFFINITY_LOAD_FACTOR


def key_hash(key: str) -> str:
    """What Nginx keeps of a client key (fleet.js hashes the presented one the same way)."""
    return _sha256(key)


def key_hashes(client_keys: str) -> dict[str, str]:
    """The `client_keys` secret (JSON: name -> key) as Nginx keeps it: name -> `key_hash`."""
    return {name: key_hash(value) for name, value in json.loads(client_keys).items()}


def nginx_keys(cfg: FleetConfig, key_hashes: Mapping[str, str]) -> str:
    """keys.json, fleet.js's key table: SHA-256 of each client key -> its name and the names it may
    send as `model` (null: all). Only hashes: a key (32+ random characters) cannot be recovered
    from them. `enabled` false: no `load_balancer.keys`, the replicas check the fleet's api_key.
    A declared key without a hash (none given) cannot authenticate: the table fails closed."""
    client = cfg.client_names()
    table = {}
    for k in cfg.load_balancer.keys:
        if k.name not in key_hashes:
            continue
        allowed = None
        if k.models:
            allowed = list(dict.fromkeys(n for want in k.models for n in (client.get(want) or [want])))
        table[key_hashes[k.name]] = {"name": k.name, "models": allowed}
    return json.dumps({"managed_by": HEADER, "enabled": bool(cfg.load_balancer.keys), "keys": table},
                      indent=1, sort_keys=True) + "\n"


def nginx_files(cfg: FleetConfig, upstreams: dict[str, list[str]], *, key_hashes: Mapping[str, str] = MappingProxyType({}),
                njs_module: str = NGINX_NJS_MODULE, tls_sha256: str = "") -> dict[str, str]:
    """Everything Nginx reads, file name -> content, to be written into one directory.
    `key_hashes`: client key name -> `key_hash` of its value (from the `client_keys` secret);
    `tls_sha256`: `certificate_sha256` of the `tls_certificate` secret, when Nginx's certificate is it."""
    keys = nginx_keys(cfg, key_hashes)
    return {NGINX_JS: static(f"nginx/{NGINX_JS}"), NGINX_KEYS: keys, NGINX_MODELS: nginx_models(cfg, upstreams),
            NGINX_CONF: nginx_conf(cfg, upstreams, njs_module=njs_module, keys_sha256=_sha256(keys),
                                   tls_sha256=tls_sha256)}


def certificate_sha256(certificate: str) -> str:
    """The digest of the `tls_certificate` secret that nginx.conf names: a new certificate (and so
    its key, which must match it) changes nginx.conf, which reloads Nginx (Docker) or rolls its pods
    (Kubernetes). A certificate is public, and so is its digest; the key's never appears."""
    return _sha256(certificate.strip())


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def nginx_conf(cfg: FleetConfig, upstreams: dict[str, list[str]], *, njs_module: str = NGINX_NJS_MODULE,
               keys_sha256: str = "", tls_sha256: str = "") -> str:
    """`upstreams` maps each model name to its replicas' `host:port`, in replica order;
    `njs_module` is where the image keeps Nginx's JavaScript module; `keys_sha256` the digest of
    keys.json and `tls_sha256` the certificate's (their change must change nginx.conf, which is
    what triggers a reload)."""
    lb = cfg.load_balancer
    tls = None
    if lb.tls is not None:
        # Both targets put the certificate and key at the same paths (a Docker volume or bind
        # mounts, the Secret's volume on Kubernetes); redirects name the public port, not Nginx's.
        tls = {"listen_port": NGINX_TLS_PORT, "certificate": f"{NGINX_TLS_DIR}/{TLS_CERT_FILE}",
               "private_key": f"{NGINX_TLS_DIR}/{TLS_KEY_FILE}", "redirect": lb.tls.redirect_http,
               "hsts": lb.tls.hsts, "port_suffix": "" if lb.tls.port == 443 else f":{lb.tls.port}",
               "cert_sha256": tls_sha256}
    limits = [{"name": k.name, "var": "fleet_key_" + k.name.replace("-", "_"), "rpm": k.requests_per_minute,
               "concurrent": k.max_concurrent, "retry_after_s": math.ceil(60 / k.requests_per_minute)
               if k.requests_per_minute else 1} for k in lb.keys]
    default = cfg.models[0].name
    bounded = lb.policy == "prefix_affinity"
    blocks = [{"name": upstream_name(m.name), "servers": upstreams[m.name], "prefix": f"/models/{m.name}/",
               "bound": affinity_bound(cfg, m) if bounded else None,
               "replicas": replica_upstreams(m.name, upstreams[m.name]) if bounded else []} for m in cfg.models]
    largest = max(len(s) for s in upstreams.values())
    return render(
        "nginx/nginx.conf.j2", upstreams=blocks, default_upstream=upstream_name(default),
        njs_module=njs_module, js_file=NGINX_JS, models_file=NGINX_MODELS, keys_file=NGINX_KEYS,
        js_sha256=_sha256(static(f"nginx/{NGINX_JS}")), models_sha256=_sha256(nginx_models(cfg, upstreams)),
        keys_sha256=keys_sha256, tls=tls, client_keys=bool(lb.keys), limits=limits, upstream_key_env=UPSTREAM_KEY_ENV,
        bounded=bounded, njs_prefixed=bool(lb.keys) or bounded,
        # prefix_affinity: the replica's upstream fleet.js placed the request on, else the model's.
        proxied="$fleet_replica" if bounded else "$fleet_upstream",
        policy=lb.policy, session_header=lb.session_header, max_fails=lb.max_fails,
        fail_timeout_s=lb.fail_timeout_s, keepalive=lb.keepalive, keepalive_timeout_s=NGINX_UPSTREAM_KEEPALIVE_S,
        listen_port=NGINX_PORT,
        status_port=NGINX_STATUS_PORT, max_body_mb=lb.max_body_mb, connect_timeout_s=lb.connect_timeout_s,
        read_timeout_s=lb.read_timeout_s, send_timeout_s=lb.send_timeout_s, retries=max(2, min(largest, 5)),
    )


def prometheus_yml(cfg: FleetConfig, scrapes: list[Scrape]) -> str:
    jobs = list(dict.fromkeys(s.job for s in scrapes))
    return render("prometheus/prometheus.yml.j2", jobs=jobs, stack=cfg.stack,
                  scrape_interval_s=cfg.monitoring.scrape_interval_s)


def prometheus_targets(scrapes: list[Scrape]) -> dict[str, str]:
    """Prometheus's file-based discovery, one file per job: path in the container -> JSON."""
    by_job: dict[str, list[dict]] = defaultdict(list)
    for s in scrapes:
        by_job[s.job].append({"targets": [s.target], "labels": s.labels})
    return {f"{PROMETHEUS_TARGETS_DIR}/{job}.json": json.dumps(groups, indent=1, sort_keys=True) + "\n"
            for job, groups in by_job.items()}


def alert_rules(cfg: FleetConfig) -> str:
    m = cfg.monitoring
    # prefix_affinity only: each model's bound, the `max_conns` nginx_conf gives its servers.
    bounds = ([{"model": model.name, "bound": affinity_bound(cfg, model)} for model in cfg.models]
              if cfg.load_balancer.policy == "prefix_affinity" else [])
    return render("prometheus/alerts.yml.j2", replica_down_for=m.replica_down_for,
                  queue_alert_threshold=m.queue_alert_threshold, ttft_p99_alert_s=m.ttft_p99_alert_s,
                  gpu_alerts=m.gpu_exporter and cfg.has_gpus, nginx_alerts=m.nginx_exporter,
                  affinity_bounds=bounds, affinity_load_factor=affinity_load_factor(cfg),
                  affinity_min_bound=AFFINITY_MIN_BOUND,
                  prefix_cache_hit_alert=m.prefix_cache_hit_alert)


def grafana_files(cfg: FleetConfig, prometheus_url: str) -> dict[str, str]:
    """Grafana provisioning (path in the Grafana container -> content), its datasource at `prometheus_url`."""
    return {
        "/etc/grafana/provisioning/datasources/prometheus.yml": render(
            "grafana/provisioning/datasource.yml.j2", prometheus_url=prometheus_url,
            scrape_interval_s=cfg.monitoring.scrape_interval_s),
        "/etc/grafana/provisioning/dashboards/vllm-fleet.yml": static("grafana/provisioning/dashboards.yml"),
        f"{GRAFANA_DASHBOARD_DIR}/vllm-fleet.json": static("grafana/dashboards/vllm-fleet.json"),
    }


def prometheus_files(cfg: FleetConfig, scrapes: list[Scrape]) -> dict[str, str]:
    """Prometheus's own config and rules; the targets are `prometheus_targets`."""
    return {"/etc/prometheus/prometheus.yml": prometheus_yml(cfg, scrapes),
            "/etc/prometheus/rules/vllm-fleet.yml": alert_rules(cfg)}
