"""The Nginx configs under test, rendered by the program (`fleet.render.files.nginx_files`) for
one policy each, adapted only where loopback requires it (tests/support/dataplane.py's
`adapt_nginx_conf`: listen ports, pid and temp paths). Runs here (it needs the program and its
dependencies); the GPU machine gets the rendered folders.
"""
from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from unittest import mock

from support import dataplane
from support.dataplane import adapt_nginx_conf, test_config, with_policy
from support.stacks import raw_stack

from bench.routing.runner import POLICIES, split_variant
from fleet.config.schema import FleetConfig, LoadBalancer
from fleet.render.files import NGINX_CONF, affinity_load_factor, nginx_files

# Where the GPU machine finds things (bench/routing/device.py uses the same paths).
DEVICE_NJS = "/tmp/nginx/root/usr/lib/nginx/modules/ngx_http_js_module.so"  # the tests' Nginx, unpacked
DEVICE_REPLICA_PORTS = (8001, 8002)
DEVICE_RUNTIME = "/tmp/routing/nginx"


def schema_policies() -> tuple[str, ...]:
    """The policies `load_balancer.policy` accepts in this checkout."""
    return typing.get_args(LoadBalancer.model_fields["policy"].annotation)


def bench_config(*, model_overrides: dict, extra_args: list[str]) -> FleetConfig:
    """The live tests' `local` stack (support.dataplane.test_config: tiny model, greedy, API key, one
    core per replica) with prefix caching on, the KV cache capped and `extra_args` added, validated
    by the program's own parser (it refuses flags the program manages)."""
    def stack(name: str) -> dict:
        raw = raw_stack(name)
        raw["models"][0].update(model_overrides)
        return raw

    def tweaked(raw: dict, stack_name: str):
        raw["models"][0]["extra_args"] = [*raw["models"][0].get("extra_args", []), *extra_args]
        return parse(raw, stack_name)

    parse = dataplane.parse_config
    with mock.patch.object(dataplane, "raw_stack", stack), mock.patch.object(dataplane, "parse_config", tweaked):
        return test_config()


def variant_config(cfg: FleetConfig, variant: str) -> FleetConfig:
    """`cfg` with the variant's policy, and for `prefix_affinity~C@N` its `load_balancer.affinity_load_factor`
    C and `affinity_bound` N (each where given; split_variant checked them against the schema's ranges)."""
    v = split_variant(variant)
    cfg = with_policy(cfg, v.policy)
    keys = {k: x for k, x in (("affinity_load_factor", v.load_factor), ("affinity_bound", v.bound)) if x is not None}
    return cfg.model_copy(update={"load_balancer": cfg.load_balancer.model_copy(update=keys)}) if keys else cfg


def policy_files(cfg: FleetConfig, policy: str, upstreams: dict[str, list[str]], *, listen_port: int, status_port: int,
                 runtime: Path, njs_module: str | None = None) -> dict[str, str]:
    """nginx.conf, fleet.js, models.json, keys.json for `policy` (a variant: `prefix_affinity~C@N` too);
    nginx.conf adapted to loopback and `runtime`. With `njs_module`, the module is loaded from that
    path (the GPU machine's unpacked copy of the tests' Nginx), else from the tests' own
    (support.real_tools.TEST_NJS_MODULE)."""
    files = nginx_files(variant_config(cfg, policy), upstreams, **({"njs_module": njs_module} if njs_module else {}))
    files[NGINX_CONF] = adapt_nginx_conf(files[NGINX_CONF], listen_port=listen_port, status_port=status_port,
                                         runtime_dir=runtime, njs=njs_module is None)
    return files


def max_conns(conf: str) -> list[int]:
    """The per-server `max_conns` of a rendered nginx.conf (prefix_affinity's bound), if any."""
    return sorted({int(n) for n in re.findall(r"\bmax_conns=(\d+)", conf)})


def affinity_settings(cfg: FleetConfig, variant: str, conf: str) -> dict:
    """prefix_affinity's bounds as `variant` renders them: the per-replica `max_conns` of its
    nginx.conf `conf` and the load factor fleet.js places conversations with (None: another policy)."""
    rendered = variant_config(cfg, variant)
    return {"max_conns": max_conns(conf), "load_factor": affinity_load_factor(rendered)
            if rendered.load_balancer.policy == "prefix_affinity" else None}


def write_files(files: dict[str, str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # Nginx's workers (user nobody when started as root) read it
    for name, text in files.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o644)


def render_device(cfg: FleetConfig, out: Path, variants: tuple[str, ...] = POLICIES) -> dict:
    """Each variant's files for the GPU machine in `out`/<variant>/ (upstreams 127.0.0.1:8001/8002,
    Nginx on 8101.., status on 8201..), and `out`/manifest.json naming ports and paths."""
    upstreams = {m.name: [f"127.0.0.1:{p}" for p in DEVICE_REPLICA_PORTS] for m in cfg.models}
    manifest = {"model": cfg.models[0].client_model_name, "session_header": cfg.load_balancer.session_header,
                "replica_ports": list(DEVICE_REPLICA_PORTS), "policies": {}, "schema_policies": list(schema_policies())}
    for i, policy in enumerate(variants):
        if split_variant(policy)[0] not in schema_policies():
            manifest["policies"][policy] = {"error": f"load_balancer.policy has no {policy!r} in this checkout"}
            continue
        runtime = Path(DEVICE_RUNTIME) / policy
        port, status = 8101 + i, 8201 + i
        write_files(policy_files(cfg, policy, upstreams, listen_port=port, status_port=status, runtime=runtime,
                                 njs_module=DEVICE_NJS), out / policy)
        lb = variant_config(cfg, policy).load_balancer
        conf = (out / policy / NGINX_CONF).read_text()
        manifest["policies"][policy] = {"port": port, "runtime": str(runtime), **affinity_settings(cfg, policy, conf),
                                        "load_balancer": json.loads(lb.model_dump_json(exclude={"keys", "tls"}))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
