"""Raw stack values to a validated `FleetConfig`, or to one `ConfigError`.

`load_from_pulumi()` is the only code that reads `pulumi.Config`. `parse_config()` runs pydantic's
field validation, then the cross-field rules (`fleet.config.rules`). What depends on where replicas
run (GPU generations per device, memory) is checked by each target's plan, before any resource.
"""
from __future__ import annotations

import difflib
import json
import re
import typing
from typing import Any, Optional

import pulumi
import pydantic
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel

from fleet.config.errors import PROJECT, ConfigError
from fleet.config.rules import check_config
from fleet.config.schema import DNS_LABEL, SECRET_KEYS, TOP_LEVEL_KEYS, FleetConfig


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
    check_config(cfg)
    return cfg


def load_from_pulumi() -> tuple[FleetConfig, dict[str, Any]]:
    """Read this stack's `vllm-fleet:*` config. Returns the config and the secret Outputs.

    Secrets must be set with `pulumi config set --secret`; a plain-text secret is an error.
    """
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
    try:
        return json.loads(text)
    except ValueError:
        return text


def _all_project_keys() -> list[str]:
    prefix = f"{PROJECT}:"
    return [k[len(prefix):] for k in runtime_config.CONFIG.get() if k.startswith(prefix)]
