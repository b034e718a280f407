"""Resource inputs checked against the pinned providers' schemas, as their Python SDKs carry them.

Each pinned SDK (pulumi-docker, pulumi-kubernetes, pulumi-random) is generated from its
provider's schema: a resource's `<Class>Args` and every nested `...Args` class list the input
properties by their wire names (`@pulumi.getter(name=...)`), their types (with enums) and, in
`__init__`, which ones are required. The mocks accept any input; this walks what the program
registered against those classes, so an unknown property, a wrong type or a missing required
input fails a test instead of a real `pulumi up`.
"""
from __future__ import annotations

import collections.abc
import enum
import functools
import importlib
import inspect
import json
import sys
import typing
from typing import Any, Optional

import pulumi
from pulumi.runtime import rpc

SECRET_SIG = rpc._special_sig_key  # a secret input travels as {SECRET_SIG: ..., "value": ...}
PROVIDER_PACKAGES = ("docker", "kubernetes", "random")  # the pinned providers; anything else is a component


def is_provider_resource(typ: str) -> bool:
    return typ.startswith("pulumi:providers:") or typ.split(":", 1)[0] in PROVIDER_PACKAGES


def sdk_class(typ: str) -> Optional[type]:
    """The SDK class of a resource type token: `docker:index/container:Container`, `pulumi:providers:docker`."""
    if typ.startswith("pulumi:providers:"):
        pkg = typ.rsplit(":", 1)[1]
        return getattr(importlib.import_module(f"pulumi_{pkg}"), "Provider")
    pkg, mod, _ = typ.split(":")
    importlib.import_module(f"pulumi_{pkg}")  # registers its resource modules
    module = rpc.get_resource_module(pkg, mod, "")
    if module is None:
        return None  # a custom resource kind (LeaderWorkerSet, PodMonitor...): no SDK type
    info = module.mod_info
    return getattr(importlib.import_module(info["fqn"]), info["classes"].get(typ, typ.rsplit(":", 1)[1]), None)


def args_class(typ: str) -> Optional[type]:
    cls = sdk_class(typ)
    if cls is None:
        return None
    return getattr(sys.modules[cls.__module__], f"{cls.__name__}Args", None)


@functools.lru_cache(maxsize=None)
def properties(cls: type) -> dict[str, tuple[Any, bool]]:
    """An input type's properties: wire name -> (type, required)."""
    required = {n for n, p in inspect.signature(cls.__init__).parameters.items()
                if n not in ("self", "__self__") and p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out = {}
    for attr, prop in vars(cls).items():
        fget = getattr(prop, "fget", None)
        wire = getattr(fget, "_pulumi_name", None)
        if wire is None:
            continue
        globalns = {**vars(sys.modules[fget.__module__]), "Output": pulumi.Output}
        out[wire] = (typing.get_type_hints(fget, globalns=globalns)["return"], attr in required)
    return out


def _alternatives(tp: Any) -> list[Any]:
    """What a value of `tp` may be, Input/Awaitable/Output wrappers and Optional taken away."""
    if typing.get_origin(tp) is typing.Union:
        out = []
        for arg in typing.get_args(tp):
            origin = typing.get_origin(arg) or arg
            if arg is type(None) or origin in (collections.abc.Awaitable, pulumi.Output):
                continue
            out += _alternatives(arg)
        return out
    return [tp]


def _is_input_type(tp: Any) -> bool:
    return isinstance(tp, type) and bool(properties(tp))


def check(value: Any, tp: Any, path: str) -> list[str]:
    """Problems of `value` as an input of type `tp` (empty: it conforms)."""
    if isinstance(value, dict) and SECRET_SIG in value:
        value = value.get("value")
    if value is None:
        return []
    options = _alternatives(tp)
    if any(o is Any for o in options):
        return []
    errors: list[str] = []
    for option in options:
        problems = _check_one(value, option, path)
        if not problems:
            return []
        errors = errors or problems
    return errors or [f"{path}: {value!r} is none of {options}"]


def _check_one(value: Any, tp: Any, path: str) -> list[str]:
    origin = typing.get_origin(tp)
    if origin in (collections.abc.Sequence, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        (item,) = typing.get_args(tp)
        return [e for i, v in enumerate(value) for e in check(v, item, f"{path}[{i}]")]
    if origin in (collections.abc.Mapping, dict):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        _, item = typing.get_args(tp)
        return [e for k, v in value.items() for e in check(v, item, f"{path}.{k}")]
    if origin is typing.Literal:
        allowed = list(typing.get_args(tp))
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if _is_input_type(tp):
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({tp.__name__}), got {type(value).__name__}"]
        return check_object(value, tp, path)
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected a bool, got {value!r}"]
    if tp in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or float(value).is_integer())
        return [] if ok else [f"{path}: expected {tp.__name__}, got {value!r}"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r}"]
    return [f"{path}: no rule for type {tp}"]


def check_object(value: dict, cls: type, path: str) -> list[str]:
    props = properties(cls)
    errors = [f"{path}.{k}: no such property of {cls.__name__} (known: {', '.join(sorted(props))})"
              for k in value if k not in props]
    errors += [f"{path}.{k}: required by {cls.__name__}, missing" for k, (_, req) in props.items()
               if req and value.get(k) is None]
    for key, v in value.items():
        if key in props:
            errors += check(v, props[key][0], f"{path}.{key}")
    return errors


def check_resource(typ: str, name: str, inputs: dict[str, Any]) -> list[str]:
    """Problems of one registered resource's inputs against its SDK's Args class."""
    cls = args_class(typ)
    if cls is None:
        return [f"{name}: no SDK class for resource type {typ}"]
    if typ.startswith("pulumi:providers:"):
        # Provider inputs travel JSON-encoded (all but strings).
        inputs = {k: provider_value(v) for k, v in inputs.items() if k != "version"}
    return check_object(inputs, cls, name)


def provider_value(value: Any) -> Any:
    """A provider's input as the program set it: provider inputs travel JSON-encoded (all but strings)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value
