"""The README's config reference table, generated from the typed config (the single source).

`python -m tools.config_reference` rewrites the table in README.md; a test fails when it is stale.
"""
from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fleet.config.schema import (
    INTERNAL_FIELDS, SECRET_KEYS, Adapter, Autoscaling, ClientKey, FleetConfig, HfCache, Host, K8sMonitoring, Kubernetes,
    LoadBalancer, Lora, Model, Monitoring, NodePool, Sampling, Speculative, Tls, Toleration,
)

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("", FleetConfig), ("hosts[]", Host), ("models[]", Model), ("models[].speculative", Speculative),
    ("models[].sampling", Sampling), ("models[].lora", Lora), ("models[].lora.adapters[]", Adapter),
    ("load_balancer", LoadBalancer), ("load_balancer.keys[]", ClientKey), ("load_balancer.tls", Tls),
    ("monitoring", Monitoring),
    ("kubernetes", Kubernetes), ("kubernetes.node_pools[]", NodePool), ("kubernetes.node_pools[].tolerations[]", Toleration),
    ("kubernetes.hf_cache", HfCache), ("kubernetes.monitoring", K8sMonitoring), ("kubernetes.autoscaling[]", Autoscaling),
]
SECRET_DOCS = {
    "hf_token": "Hugging Face token for gated models (`pulumi config set --secret hf_token`).",
    "api_key": "API key vLLM requires on `/v1` (`VLLM_API_KEY`); clients send `Authorization: Bearer` (with "
               "`load_balancer.keys`, only Nginx uses it: clients send their own keys).",
    "grafana_admin_password": "Grafana admin password; generated (random, a secret output) when not set.",
    "client_keys": "Client API keys by name, for `load_balancer.keys` (`pulumi config set --secret --path "
                   "'client_keys.NAME' KEY`, 32+ characters); Nginx keeps only their SHA-256.",
    "tls_certificate": "Nginx's certificate chain, PEM, the server's first (`pulumi config set --secret tls_certificate "
                       "< fullchain.pem`), with `load_balancer.tls`; checked: valid now, matching the key.",
    "tls_private_key": "Its private key, PEM, unencrypted (`pulumi config set --secret tls_private_key < privkey.pem`); "
                       "written only into Nginx's TLS volume (mode 0600) or the `kubernetes.io/tls` Secret.",
}
INTERNAL = set(INTERNAL_FIELDS)


def _type(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is list:
        inner = typing.get_args(annotation)[0]
        return "list of objects" if isinstance(inner, type) and issubclass(inner, BaseModel) else f"list of {_type(inner)}"
    if origin is dict:
        return "map"
    if args and origin is not None:
        return " \\| ".join(_type(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.default_factory() if field.default_factory else field.default
    if isinstance(value, BaseModel):
        return "see below"
    if value in (None, [], {}):
        return "—"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def table() -> str:
    rows = ["| key (`vllm-fleet:` ...) | type | default | meaning |", "|---|---|---|---|"]
    for prefix, cls in SECTIONS:
        for name, field in cls.model_fields.items():
            if name in INTERNAL:
                continue
            key = f"{prefix}.{name}" if prefix else name
            rows.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {field.description or ''} |")
    for name in SECRET_KEYS:
        rows.append(f"| `{name}` | secret | — | {SECRET_DOCS[name]} |")
    return "\n".join(rows)


def updated(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    README.write_text(updated(README.read_text()))
    sys.exit(0)
