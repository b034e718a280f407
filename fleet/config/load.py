"""Raw stack values to a validated `FleetConfig`, or to one `ConfigError`.

`load_from_pulumi()` is the only code that reads `pulumi.Config`. `parse_config()` runs pydantic's
field validation, then the cross-field rules (`fleet.config.rules`). What depends on where replicas
run (GPU generations per device, memory) is checked by each target's plan, before any resource.
`read_stack_yaml()` is the one reader of a stack file (`stacks/Pulumi.<stack>.yaml`), for the
offline tools and for the program alike: strict YAML, as Pulumi's CLI reads it.
"""
from __future__ import annotations

import difflib
import json
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

import pulumi
import pydantic
import yaml
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel

from fleet.config.errors import PROJECT, ConfigError
from fleet.config.rules import check_config, check_tls_material
from fleet.config.secrets import SHOWN, redact
from fleet.config.schema import (CLIENT_KEY_MIN_CHARS, DNS_LABEL, INTERNAL_FIELDS, SECRET_KEYS, TLS_SECRET_KEYS,
                                 TOP_LEVEL_KEYS, FleetConfig)


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
        known = [k for k in parent.model_fields if k not in INTERNAL_FIELDS]
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean `{guess[0]}`?" if guess else "remove it"
        return ConfigError(key, unshown(first.get("input")), "unknown key", ", ".join(known), f"{hint} (in {where})")
    if first["type"] == "missing":
        field = owner.model_fields[name] if owner and name in owner.model_fields else None
        return ConfigError(key, None, "is required but missing",
                           describe_allowed(field) if field else "a value", f"add `{loc[-1]}` in {where}")
    field = owner.model_fields.get(name) if owner and name else None
    allowed = describe_allowed(field) if field else first["msg"]
    # Only the first letter is lowered: pydantic quotes the allowed values as they must be written.
    msg = first["msg"].rstrip(".")
    return ConfigError(key, first.get("input"), msg[:1].lower() + msg[1:], allowed,
                       f"set `{key}` to an allowed value in {where} (or `pulumi config set --path '{key}' VALUE`)")


def unshown(value: Any) -> Any:
    """A value under a key the program does not know, fit for a message: it cannot be known to be
    a secret, so every credential-shaped string in it is replaced by `SHOWN`."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: unshown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unshown(v) for v in value]
    return value


def parse_config(raw: dict[str, Any], stack: str) -> FleetConfig:
    """Validate raw stack values (as in the YAML, without the `vllm-fleet:` prefix)."""
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS + SECRET_KEYS]
    if unknown:
        guess = difflib.get_close_matches(unknown[0], TOP_LEVEL_KEYS + SECRET_KEYS, n=1)
        raise ConfigError(unknown[0], unshown(raw[unknown[0]]), "unknown key", ", ".join(TOP_LEVEL_KEYS + SECRET_KEYS),
                          f"did you mean `{guess[0]}`?" if guess else f"remove it from stacks/Pulumi.{stack}.yaml")
    values = {k: v for k, v in raw.items() if k in TOP_LEVEL_KEYS}
    if not re.match(DNS_LABEL, stack):
        raise ConfigError("(stack name)", stack, "a stack name must be a short DNS label",
                          "lowercase letters, digits and '-'", "rename the stack, e.g. `pulumi stack rename prod`")
    try:
        client_keys = raw.get("client_keys")
        cfg = FleetConfig(stack=stack, has_api_key=bool(raw.get("api_key")), has_hf_token=bool(raw.get("hf_token")),
                          client_key_names=None if client_keys is True else tuple(client_keys or ()),
                          tls_secrets=tuple(k for k in TLS_SECRET_KEYS if raw.get(k)), **values)
    except pydantic.ValidationError as err:
        raise from_validation_error(err, raw, stack) from None
    check_config(cfg)
    return cfg


def load_from_pulumi() -> tuple[FleetConfig, dict[str, Any]]:
    """Read this stack's `vllm-fleet:*` config. Returns the config and the secret Outputs.

    Secrets must be set with `pulumi config set --secret`; a plain-text secret is an error. The
    stack file itself is read strictly first (`read_stack_yaml`), and no key may sit under a
    misspelling of the project's namespace.
    """
    stack = pulumi.get_stack()
    stack_file = own_stack_file(stack)
    check_namespaces(runtime_config.CONFIG.get(),
                     stack_file.where if stack_file is not None else lambda key: f"Pulumi.{stack}.yaml")
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
        value = conf.get(key)
        if key == "client_keys":
            raw[key] = client_key_names(value)
            secrets[key] = conf.require_secret(key)
            continue
        if key in TLS_SECRET_KEYS:  # PEM: lines and spaces; read by check_tls_material below
            raw[key] = True
            secrets[key] = conf.require_secret(key)
            continue
        if not value.strip() or any(c.isspace() or not c.isprintable() for c in value):
            # vLLM reads an empty VLLM_API_KEY as "no key": /v1 would be open to anyone.
            raise ConfigError(key, SHOWN, "the secret is empty or has spaces or control characters in it",
                              "a non-empty value of printable characters without spaces",
                              f"`pulumi config set --secret {key} \"$(openssl rand -hex 32)\"` (or remove it)")
        secrets[key] = conf.require_secret(key)
        raw[key] = True
    stray = [k for k in _all_project_keys() if k not in TOP_LEVEL_KEYS + SECRET_KEYS]
    if stray:  # only to be named in parse_config's error: a secret there is never decrypted
        key = stray[0]
        raw[key] = SHOWN if runtime_config.is_config_secret(f"{PROJECT}:{key}") else _decode(conf.get(key))
    cfg = parse_config(raw, stack)
    if cfg.load_balancer.tls is not None and all(k in secrets for k in TLS_SECRET_KEYS):
        check_tls_material(conf.get("tls_certificate"), conf.get("tls_private_key"))
    return cfg, secrets


def client_key_names(text: str) -> list[str]:
    """The names of the `client_keys` secret (a map of key name -> key), each value checked
    without ever being shown: Nginx keeps only its SHA-256, so it must be long and random."""
    fix = "`pulumi config set --secret --path 'client_keys.NAME' \"sk-$(openssl rand -hex 24)\"` for each key"
    try:
        keys = json.loads(text)
    except ValueError:
        keys = None
    if not isinstance(keys, dict) or not keys:
        raise ConfigError("client_keys", SHOWN, "not a map of key name to key", "an object such as "
                          "{team-a: <key>, team-b: <key>} (each value a secret)", fix)
    for name, value in keys.items():
        if not re.match(DNS_LABEL, str(name)):
            raise ConfigError(f"client_keys.{name}", SHOWN, "a key name must be a short DNS label",
                              "lowercase letters, digits and '-', as in `load_balancer.keys[].name`", fix)
        if not isinstance(value, str) or len(value) < CLIENT_KEY_MIN_CHARS or \
                any(c.isspace() or not c.isprintable() for c in value):
            raise ConfigError(f"client_keys.{name}", SHOWN, f"a key must be at least {CLIENT_KEY_MIN_CHARS} "
                              "printable characters without spaces (Nginx stores only its SHA-256)",
                              f"{CLIENT_KEY_MIN_CHARS}+ random characters", fix)
    if len(set(keys.values())) < len(keys):
        raise ConfigError("client_keys", SHOWN, "two names share one key: the access log could not tell them apart",
                          "a distinct key per name", fix)
    return list(keys)


def _decode(text: str) -> Any:
    """Pulumi passes structured values as JSON and plain ones (`environment: prod`) as bare strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _all_project_keys() -> list[str]:
    prefix = f"{PROJECT}:"
    return [k[len(prefix):] for k in runtime_config.CONFIG.get() if k.startswith(prefix)]


# --- the stack file: strict YAML, as Pulumi's CLI reads it ------------------------------------
#
# Pulumi's CLI reads a stack file with Go's yaml.v3 (pulumi/pulumi sdk/go/common/encoding/marshal.go),
# whose decoder refuses a key written twice in one mapping ("mapping key ... already defined at
# line N", go-yaml decode.go, `uniqueKeys` on by default). PyYAML keeps the last one silently, so
# the offline tools would render a fleet that `pulumi up` refuses: they all read through here.

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class StackFileError(ConfigError):
    """A mistake in the stack file itself rather than in one value (YAML syntax, a key written twice,
    a misspelled namespace, a passphrase that does not decrypt its secrets): there is no
    `vllm-fleet:` key to name, so the one-line message names the file, line and column instead."""

    def __init__(self, where: str, problem: str, allowed: str, fix: str) -> None:
        self.key, self.value, self.problem, self.allowed, self.fix = where, None, problem, allowed, fix
        pulumi.RunError.__init__(self, redact(f"stack file {where}: {problem}. Allowed: {allowed}. Fix: {fix}."))


class StackFile(dict):
    """A stack file's document, knowing its file and the line:column of each `config:` key."""

    def __init__(self, doc: dict, path: Path, marks: dict[str, tuple[int, int]]) -> None:
        super().__init__(doc)
        self.path, self.marks = path, marks

    @property
    def stack(self) -> str:
        return self.path.name.removeprefix("Pulumi.").removesuffix(".yaml")

    def where(self, key: Optional[str] = None) -> str:
        shown = _display(self.path)
        for spelled in (key, key.split(":", 1)[-1] if key else None):
            if spelled in self.marks:
                return f"{shown}:{self.marks[spelled][0]}:{self.marks[spelled][1]}"
        return shown


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key written twice in one mapping, and records where
    each `config:` key is written."""

    def __init__(self, text: str, where: str) -> None:
        super().__init__(text)
        self.file_where, self.key_marks = where, {}

    def construct_document(self, node):
        config = _value_node(node, "config")
        if isinstance(config, yaml.MappingNode):
            self.key_marks = {k.value: (k.start_mark.line + 1, k.start_mark.column + 1)
                              for k, _ in config.value if isinstance(k, yaml.ScalarNode)}
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base constructor's own error names it
                    continue
                if earlier is not key_node:
                    mark = key_node.start_mark
                    raise StackFileError(
                        f"{self.file_where}:{mark.line + 1}:{mark.column + 1}",
                        f"key `{redact(str(key))}` is written twice in one mapping (first at line "
                        f"{earlier.start_mark.line + 1}); YAML would silently keep only the last",
                        "each key once per mapping (Pulumi's CLI refuses the file too)",
                        f"keep one `{redact(str(key))}`: delete or merge line {earlier.start_mark.line + 1} or line {mark.line + 1}")
        return super().construct_mapping(node, deep=deep)


def _value_node(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_stack_yaml(path: Path) -> StackFile:
    """A stack file as Pulumi's CLI reads it, or one `StackFileError`: strict YAML (no key twice, no
    tab), a mapping whose `config:` keys are namespaced (`models:` is `vllm-fleet:models`, as the
    CLI reads it), none under a misspelling of this project's namespace."""
    where = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise StackFileError(where, f"is not UTF-8 text (byte {err.start})", "a UTF-8 YAML file",
                             "save the file as UTF-8") from None
    except OSError as err:
        raise StackFileError(where, f"cannot be read ({err.strerror})", "a readable YAML file",
                             "check the path and its permissions") from None
    try:
        loader = _StrictLoader(text, where)
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        raise _syntax_error(where, text, err) from None
    except yaml.reader.ReaderError as err:  # a control character: YAML allows printable text only
        line = text.count("\n", 0, err.position) + 1
        raise StackFileError(f"{where}:{line}", f"holds a non-printable character (code {err.character!r})",
                             "printable text", f"delete the invisible character on line {line}") from None
    if doc is None:
        doc = {}
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(config, (dict, type(None))):
        raise StackFileError(where, "is not a stack file: it must be a mapping whose `config:` is a mapping of keys",
                             "`config:` followed by indented `vllm-fleet:<key>: value` lines",
                             "start from one of the shipped stacks/Pulumi.*.yaml files")
    stack_file = StackFile(doc, path, loader.key_marks)
    namespaced: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in (config or {}).items():
        full = key if ":" in str(key) else f"{PROJECT}:{key}"
        if full in namespaced:  # `models:` and `vllm-fleet:models:`: the CLI keeps one of them, either
            short = full.split(":", 1)[1]
            raise StackFileError(stack_file.where(str(key)), f"`{full}` is written twice, as `{spelled[full]}` and as `{key}`",
                                 f"each key once (Pulumi's CLI reads `{short}` as `{full}` and keeps either one)",
                                 f"keep one of the two `{short}` sections")
        namespaced[full], spelled[full] = value, key
    check_namespaces(namespaced, stack_file.where)
    if config:
        stack_file["config"] = namespaced
    return stack_file


def _syntax_error(where: str, text: str, err: yaml.MarkedYAMLError) -> StackFileError:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    lines = text.splitlines()
    for n, content in enumerate(lines[:line]):
        indent = content[:len(content) - len(content.lstrip(" \t"))]
        if "\t" in indent or ("\t" in content and n + 1 == line and "'\\t'" in str(err.problem)):
            tab_col = (indent if "\t" in indent else content).index("\t") + 1
            return StackFileError(f"{where}:{n + 1}:{tab_col}", "a tab character where YAML needs spaces",
                                  "spaces only, to indent and after `key:`",
                                  f"replace the tab on line {n + 1} with spaces")
    start = err.context_mark.line + 1 if err.context and err.context_mark else line
    context = f" ({err.context} from line {start})" if start != line else ""
    lines_at = f"lines {start}-{line}" if start < line else f"line {line} or the one above it"
    return StackFileError(f"{where}:{line}:{col}", redact(f"is not valid YAML: {err.problem}{context}"),
                          "YAML as in the shipped stacks: `key: value` pairs nested by indenting with spaces, "
                          "list items starting with `- `",
                          f"correct {lines_at} (a missing `:`, an unclosed quote or bracket, "
                          "an indentation that does not line up with its siblings)")


def _near_project(namespace: str) -> bool:
    """A namespace that is a misspelling of this project's (`vllm_fleet`, `vllm-flet`, `VLLM-fleet`)."""
    if namespace == PROJECT:
        return False
    norm, ours = re.sub(r"[^a-z0-9]", "", namespace.lower()), re.sub(r"[^a-z0-9]", "", PROJECT)
    return "vllm" in norm or "fleet" in norm or difflib.SequenceMatcher(None, norm, ours).ratio() >= 0.75


def check_namespaces(keys: Iterable[str], where: typing.Callable[[str], str]) -> None:
    """Refuse a key under a misspelling of this project's namespace. Pulumi passes every namespace
    on and the program reads only its own, so such a section would silently fall back to the
    defaults. The providers' namespaces (`docker:`, `kubernetes:`, `pulumi:`, `aws:` ...) pass."""
    for key in keys:
        namespace, sep, name = str(key).partition(":")
        if sep and _near_project(namespace):
            raise StackFileError(
                where(key), f"key `{key}` is under namespace `{namespace}`, which this project never reads "
                f"(`{name}` would silently fall back to its defaults)",
                f"`{PROJECT}:<key>` for this project's settings; other namespaces only for the providers that "
                "read them (`docker:`, `kubernetes:`, `pulumi:` ...)",
                f"did you mean `{PROJECT}:{name}`? Rename the key")


def own_stack_file(stack: str) -> Optional[StackFile]:
    """The stack file `pulumi up` runs with (Pulumi.yaml's `stackConfigDir`), read strictly; None
    when there is none (config from `--config` or the Automation API)."""
    project = PROJECT_ROOT / "Pulumi.yaml"
    settings = (yaml.safe_load(project.read_text()) or {}) if project.exists() else {}
    path = PROJECT_ROOT / (settings.get("stackConfigDir") or ".") / f"Pulumi.{stack}.yaml"
    return read_stack_yaml(path) if path.exists() else None
