"""The vllm-fleet policies: rules every preview and update must pass, whatever the config says.

The program's own validation (fleet/config/) refuses bad stack files; these policies check the
resources that actually reach the engine, so they also catch a component or a hand edit that
bypasses the config. Each is mandatory:

- images-pinned: no untagged or floating-tag image (or unversioned Helm chart) outside `local`.
- vllm-health-checked: every vLLM API server container has a health check on its `/health`.
- vllm-gpus-match-parallelism: a replica's container owns exactly tp x pp GPUs (per node).
- no-world-published-ports: nothing but the Nginx public API is published on all interfaces.
- grafana-admin-password-secret: Grafana gets an admin password, as a Pulumi secret.
- credentials-are-secrets: API keys, tokens and passwords in container environments are secrets.
- kubernetes-resource-limits: every container of a Kubernetes workload has resources.limits.

Validation functions are plain `(args, report_violation)` functions, so tests call them with
`ResourceValidationArgs` built from the mocked program's resources. `__main__.py` puts them in the
PolicyPack (constructing one starts a server, so nothing here does).

Secrets: the engine sends secret inputs to the pack marked as secrets, but pulumi-policy's
Analyze unwraps them before a validation sees them. `keep_secrets_visible()` (called by
`__main__.py`) keeps the mark as a `pulumi_policy.Secret` wrapper, which is how the secret checks
here tell a secret from plain text. Property names are the engine's camelCase wire names.
"""
from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy import deserialize as _sdk_deserialize
from pulumi_policy.proxy import UnknownValueError, _DictProxy, _is_unknown, _ListProxy
from pulumi_policy.secret import _DictSecretsProxy, _ListSecretsProxy

CONTAINER = "docker:index/container:Container"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
BUILT_IMAGE = "docker:index/image:Image"
REGISTRY_IMAGE = "docker:index/registryImage:RegistryImage"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
HELM_CHART = "kubernetes:helm.sh/v4:Chart"

# Stacks that may run floating images (a developer's own machine).
UNPINNED_OK_STACKS = frozenset({"local"})
FLOATING_TAGS = frozenset({"latest", "nightly", "main", "master"})

# The one port allowed on all interfaces: the Nginx container's public API listener.
NGINX_ROLE = "nginx"
NGINX_PUBLIC_INTERNAL_PORT = 8080

VLLM_SERVER_ROLE = "vllm"          # the API server (node rank 0)
VLLM_ROLES = frozenset({"vllm", "vllm-worker"})
VLLM_DEFAULT_PORT = 8000
GRAFANA_ROLE = "grafana"
GRAFANA_PASSWORD_VAR = "GF_SECURITY_ADMIN_PASSWORD"
# Grafana's built-in admin password: as good as none.
GRAFANA_DEFAULT_PASSWORD = "admin"

CREDENTIAL_VAR = re.compile(r"(^|_)(PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|APIKEY|ACCESS_KEY|PRIVATE_KEY)$")

# Kubernetes workloads: where their pod templates live.
K8S_POD_SPEC_PATHS: dict[str, list[tuple[str, ...]]] = {
    "kubernetes:core/v1:Pod": [("spec",)],
    "kubernetes:core/v1:PodTemplate": [("template", "spec")],
    "kubernetes:core/v1:ReplicationController": [("spec", "template", "spec")],
    "kubernetes:apps/v1:Deployment": [("spec", "template", "spec")],
    "kubernetes:apps/v1:StatefulSet": [("spec", "template", "spec")],
    "kubernetes:apps/v1:DaemonSet": [("spec", "template", "spec")],
    "kubernetes:apps/v1:ReplicaSet": [("spec", "template", "spec")],
    "kubernetes:batch/v1:Job": [("spec", "template", "spec")],
    "kubernetes:batch/v1:CronJob": [("spec", "jobTemplate", "spec", "template", "spec")],
}
LWS_PREFIX = "kubernetes:leaderworkerset.x-k8s.io/"
LWS_POD_SPEC_PATHS = [("spec", "leaderWorkerTemplate", "leaderTemplate", "spec"),
                      ("spec", "leaderWorkerTemplate", "workerTemplate", "spec")]
K8S_GPU = "nvidia.com/gpu"


# --- values as the engine sends them: secrets, unknowns ------------------------------------------

def deserialize_keeping_secrets(props: Mapping[str, Any]) -> dict[str, Any]:
    """Wire properties -> Python values, secrets wrapped in `pulumi_policy.Secret`."""
    return {k: _keep(v) for k, v in props.items()}


def _keep(value: Any) -> Any:
    if isinstance(value, list):
        return [_keep(v) for v in value]
    if isinstance(value, dict):
        sig = value.get(_sdk_deserialize.SPECIAL_SIG_KEY)
        if sig == _sdk_deserialize.SPECIAL_SECRET_SIG:
            return Secret(_keep(value.get("value")))
        if sig in (_sdk_deserialize.SPECIAL_ASSET_SIG, _sdk_deserialize.SPECIAL_ARCHIVE_SIG):
            return _sdk_deserialize._deserialize_property(value)  # pylint: disable=protected-access
        return {k: _keep(v) for k, v in value.items()}
    return value


def keep_secrets_visible() -> None:
    """Make pulumi-policy's Analyze keep secret marks (it unwraps them by default).

    Only the validation path changes: remediation keeps the SDK's own secret-preserving proxies.
    Tests run the SDK's real Analyze with this in place, against the pinned pulumi-policy.
    """
    from pulumi_policy import policy as sdk_policy  # pylint: disable=import-outside-toplevel

    if getattr(sdk_policy.deserialize_properties, "keeps_secrets", False):
        return
    original = sdk_policy.deserialize_properties

    def deserialize_properties(props: dict, proxy_secrets: bool = False) -> Any:
        return original(props, True) if proxy_secrets else deserialize_keeping_secrets(props)

    deserialize_properties.keeps_secrets = True  # type: ignore[attr-defined]
    sdk_policy.deserialize_properties = deserialize_properties


def plain(value: Any) -> Any:
    """Props (the SDK's proxies, or raw wire values) -> dicts, lists, `Secret` wrappers and
    unknown sentinels, so a policy decides itself what an unknown value means."""
    if isinstance(value, (_DictProxy, _ListProxy, _DictSecretsProxy, _ListSecretsProxy)):
        value = value["__target"]
    if isinstance(value, Secret):
        return Secret(plain(value.value))
    if isinstance(value, Mapping):
        if value.get(_sdk_deserialize.SPECIAL_SIG_KEY) == _sdk_deserialize.SPECIAL_SECRET_SIG:
            return Secret(plain(value.get("value")))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def is_secret(value: Any) -> bool:
    return isinstance(value, Secret)


def reveal(value: Any) -> Any:
    """The value with every secret wrapper removed (to read it, never to report it)."""
    if isinstance(value, Secret):
        return reveal(value.value)
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def is_unknown(value: Any) -> bool:
    return _is_unknown(reveal(value))


def known(value: Any, path: str) -> Any:
    """`value`, or UnknownValueError (pulumi-policy reports "can't run during preview")."""
    inner = value.value if isinstance(value, Secret) else value
    if _is_unknown(inner):
        raise UnknownValueError(inner, path.split("."))
    return value


def known_items(value: Any, path: str) -> list:
    """A list property's known elements (secret marks removed); UnknownValueError if the list
    or an element is unknown."""
    items = reveal(known(value, path)) or []
    for i, item in enumerate(items):
        known(item, f"{path}.{i}")
    return items


def dig(obj: Any, *path: str) -> Any:
    for key in path:
        if isinstance(obj, Secret):
            obj = obj.value
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def as_int(value: Any) -> Optional[int]:
    try:
        number = float(reveal(value))
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


# --- what a resource is ------------------------------------------------------------------------

def stack_of(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<type>::<name>` -> stack."""
    head = urn.split("::", 1)[0]
    parts = head.split(":", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "urn" else ""


def labels(props: dict) -> dict[str, str]:
    out = {}
    for item in reveal(props.get("labels")) or []:
        if isinstance(item, dict) and isinstance(item.get("label"), str):
            out[item["label"]] = str(item.get("value", ""))
    return out


def role(props: dict) -> str:
    return labels(props).get("vllm-fleet.role", "")


def describe(args: ResourceValidationArgs, props: dict) -> str:
    """How messages name a resource: the Pulumi name, and the container name where it differs."""
    cname = props.get("name")
    if args.resource_type == CONTAINER and isinstance(cname, str) and not _is_unknown(cname) and cname != args.name:
        return f"`{args.name}` (container `{cname}`)"
    return f"`{args.name}`"


SHELLS = frozenset({"sh", "bash", "dash", "/bin/sh", "/bin/bash", "/usr/bin/bash", "/bin/dash"})


def argv_tokens(*parts: Any) -> list[str]:
    """Entrypoint/command/args as one exec-form token list; the script of `sh -c "..."` is split
    the way the shell would, so `vllm serve` started from a shell is read too."""
    items = [i for part in parts for i in (reveal(part) or []) if isinstance(i, str)]
    tokens: list[str] = []
    for i, item in enumerate(items):
        if i >= 2 and re.fullmatch(r"-[a-z]*c", items[i - 1]) and items[i - 2] in SHELLS:
            try:
                tokens.extend(shlex.split(item))
            except ValueError:
                tokens.extend(item.split())
        else:
            tokens.append(item)
    return tokens


_FLAG_ALIASES = {"-tp": "--tensor-parallel-size", "-pp": "--pipeline-parallel-size", "-dp": "--data-parallel-size"}


def flags(tokens: Sequence[str]) -> dict[str, Optional[str]]:
    """`--flag value`, `--flag=value` and vLLM's short aliases; underscores read as dashes."""
    out: dict[str, Optional[str]] = {}
    for i, tok in enumerate(tokens):
        if not tok.startswith("-") or tok == "-":
            continue
        name, eq, value = tok.partition("=")
        name = _FLAG_ALIASES.get(name, name)
        if name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")
        if not eq:
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            value = nxt if nxt is not None and not nxt.startswith("-") else None
        out[name] = value
    return out


def runs_vllm(tokens: Sequence[str]) -> bool:
    return any(t == "vllm" or t.endswith("/vllm") or t.startswith("vllm.entrypoints") for t in tokens)


def env_map(entries: Any) -> dict[str, Any]:
    """Docker `envs` ("K=V" strings, some possibly secret) -> name -> the entry (kept wrapped)."""
    out: dict[str, Any] = {}
    for entry in entries or []:
        text = reveal(entry)
        if isinstance(text, str) and "=" in text:
            out[text.split("=", 1)[0]] = entry
    return out


def env_value(entry: Any) -> str:
    return str(reveal(entry)).split("=", 1)[1]


# --- images-pinned ----------------------------------------------------------------------------

def image_problem(ref: Any) -> Optional[str]:
    """Why an image reference is not pinned, or None when it names an exact version."""
    if not isinstance(ref, str) or _is_unknown(ref):
        return None  # an image ID computed during the update; its source image is checked itself
    ref = ref.strip()
    if not ref:
        return "has an empty image reference"
    if "@sha256:" in ref or re.fullmatch(r"sha256:[0-9a-f]{64}", ref):
        return None
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"uses image `{ref}` with no tag (Docker pulls `latest`)"
    tag = last.split(":", 1)[1]
    if tag in FLOATING_TAGS or not tag:
        return f"uses image `{ref}` with the floating tag `{tag}`"
    return None


def image_refs(args: ResourceValidationArgs, props: dict) -> Iterator[tuple[str, Any]]:
    typ = args.resource_type
    if typ == CONTAINER:
        yield "image", props.get("image")
    elif typ in (REMOTE_IMAGE, REGISTRY_IMAGE):
        yield "name", props.get("name")
    elif typ == BUILT_IMAGE:
        yield "imageName", props.get("imageName")
    for where, container in k8s_containers(args.resource_type, props):
        yield f"{where} image", container.get("image")


def validate_images_pinned(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props = plain(args.props)
    stack = stack_of(args.urn) or labels(props).get("vllm-fleet.stack", "")
    if stack in UNPINNED_OK_STACKS:
        return
    if args.resource_type in (HELM_RELEASE, HELM_CHART):
        version = reveal(props.get("version"))
        if not (isinstance(version, str) and version.strip()) and not _is_unknown(version):
            report_violation(f"Helm chart {describe(args, props)} (`{reveal(props.get('chart'))}`) has no version in "
                             f"stack `{stack}`: pin the chart version (it decides every image the chart runs).")
    for where, ref in image_refs(args, props):
        problem = image_problem(reveal(ref))
        if problem:
            report_violation(f"{describe(args, props)} {problem} ({where}) in stack `{stack}`: "
                             f"pin a release tag or a digest (only {', '.join(sorted(UNPINNED_OK_STACKS))} "
                             "may float).")


# --- vllm-health-checked ----------------------------------------------------------------------

_HEALTH_PATH = re.compile(r"/health(?![\w-])")
_HEALTH_URL = re.compile(r"(https?)://[^/\s'\"]+?(?::(\d+))?/health(?![\w-])")


def is_vllm_api_server(props: dict) -> bool:
    """A container serving vLLM's HTTP API: role `vllm`, or an unlabelled `vllm` not headless."""
    r = role(props)
    if r:
        return r == VLLM_SERVER_ROLE
    tokens = argv_tokens(props.get("entrypoints"), props.get("command"))
    return runs_vllm(tokens) and "--headless" not in flags(tokens)


def validate_vllm_health_checked(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    props = plain(args.props)
    if not is_vllm_api_server(props):
        return
    who = describe(args, props)
    hc = reveal(known(props.get("healthcheck"), "healthcheck"))
    tests = [t for t in known_items((hc or {}).get("tests"), "healthcheck.tests") if isinstance(t, str)]
    if not tests or tests[0].upper() == "NONE":
        report_violation(f"vLLM replica {who} has no health check: Docker and `pulumi up` cannot tell "
                         "a loading or dead server from a ready one (test GET /health on the server port).")
        return
    text = " ".join(tests)
    if not _HEALTH_PATH.search(text):
        report_violation(f"vLLM replica {who} has a health check that does not call /health: {text!r}.")
        return
    port_flag = flags(argv_tokens(props.get("entrypoints"), props.get("command"))).get("--port")
    server_port = as_int(port_flag) if port_flag is not None else VLLM_DEFAULT_PORT
    for scheme, port in _HEALTH_URL.findall(text):
        checked = int(port) if port else (443 if scheme == "https" else 80)
        if server_port is not None and checked != server_port:
            report_violation(f"vLLM replica {who} checks /health on port {checked}, but the server "
                             f"listens on {server_port} (--port).")


# --- vllm-gpus-match-parallelism --------------------------------------------------------------

@dataclass
class Parallelism:
    tp: int
    pp: int
    dp: int
    nnodes: int

    @property
    def total(self) -> int:
        return self.tp * self.pp * self.dp

    def describe(self) -> str:
        text = f"--tensor-parallel-size {self.tp} x --pipeline-parallel-size {self.pp}"
        if self.dp != 1:
            text += f" x --data-parallel-size {self.dp}"
        return text


def parallelism(tokens: Sequence[str], default_nnodes: int = 1) -> tuple[Optional[Parallelism], Optional[str]]:
    """vLLM's parallel sizes from a command line, or why they cannot be read."""
    f = flags(tokens)
    sizes = {}
    for flag, default in (("--tensor-parallel-size", 1), ("--pipeline-parallel-size", 1),
                          ("--data-parallel-size", 1), ("--nnodes", default_nnodes)):
        if flag not in f:
            sizes[flag] = default
            continue
        n = as_int(f[flag])
        if n is None or n < 1:
            return None, f"{flag} {f[flag]!r} is not a positive whole number"
        sizes[flag] = n
    return Parallelism(sizes["--tensor-parallel-size"], sizes["--pipeline-parallel-size"],
                       sizes["--data-parallel-size"], sizes["--nnodes"]), None


ALL_GPUS = -1


def docker_gpu_count(props: dict) -> tuple[int, list[str]]:
    """GPUs a docker container requests: (count or ALL_GPUS, duplicated device ids)."""
    ids: list[str] = []
    count = 0
    for req in known_items(props.get("deviceRequests"), "deviceRequests"):
        if not isinstance(req, dict):
            continue
        caps = [c for group in req.get("capabilities") or [] for c in (group if isinstance(group, list) else [group])]
        if caps and "gpu" not in caps:
            continue
        if req.get("deviceIds"):
            ids.extend(str(i) for i in req["deviceIds"])
        elif req.get("count") is not None:
            n = as_int(req["count"])
            if n is None or n < 0:
                return ALL_GPUS, []
            count += n
    gpus = reveal(known(props.get("gpus"), "gpus"))
    if isinstance(gpus, str) and gpus.strip():
        spec = gpus.strip().strip('"')
        if spec == "all" or spec == "count=all":
            return ALL_GPUS, []
        if spec.startswith("device="):
            ids.extend(i for i in spec[len("device="):].split(",") if i)
        else:
            n = as_int(spec.removeprefix("count="))
            if n is None or n < 0:
                return ALL_GPUS, []
            count += n
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    return count + len(set(ids)), dupes


def is_cpu_server(tokens: Sequence[str], image: Any, env_names: Sequence[str]) -> bool:
    """vLLM's CPU backend: its image, `--device cpu`, or its KV-cache variable."""
    image = reveal(image)
    return ("VLLM_CPU_KVCACHE_SPACE" in env_names
            or flags(tokens).get("--device") == "cpu"
            or (isinstance(image, str) and "vllm-cpu" in image))


def validate_vllm_gpus(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props = plain(args.props)
    if args.resource_type == CONTAINER:
        _check_docker_gpus(args, props, report_violation)
    for where, container in k8s_containers(args.resource_type, props):
        _check_k8s_gpus(args, props, where, container, report_violation)


def _check_docker_gpus(args: ResourceValidationArgs, props: dict, report_violation: ReportViolation) -> None:
    tokens = argv_tokens(props.get("entrypoints"), props.get("command"))
    if not (role(props) in VLLM_ROLES or (not role(props) and runs_vllm(tokens))):
        return
    who = describe(args, props)
    par, problem = parallelism(tokens)
    if problem:
        report_violation(f"vLLM container {who}: {problem}.")
        return
    assert par is not None
    got, dupes = docker_gpu_count(props)
    if dupes:
        report_violation(f"vLLM container {who} lists GPU {', '.join(dupes)} more than once.")
    if got == ALL_GPUS:
        report_violation(f"vLLM container {who} requests every GPU of its host: a replica must own exactly "
                         f"its GPUs ({par.describe()}), by device id.")
        return
    if par.total % par.nnodes:
        report_violation(f"vLLM container {who}: {par.describe()} = {par.total} GPUs cannot be split "
                         f"evenly over --nnodes {par.nnodes}.")
        return
    want = par.total // par.nnodes
    if got == want:
        return
    if got == 0:
        envs = known(props.get("envs"), "envs")
        if is_cpu_server(tokens, props.get("image"), list(env_map(reveal(envs)))):
            return
    per_node = f" / --nnodes {par.nnodes}" if par.nnodes > 1 else ""
    report_violation(f"vLLM container {who} requests {got} GPU(s), but {par.describe()}{per_node} "
                     f"needs {want}.")


def _check_k8s_gpus(args: ResourceValidationArgs, props: dict, where: str, container: dict,
                    report_violation: ReportViolation) -> None:
    tokens = argv_tokens(container.get("command"), container.get("args"))
    f = flags(tokens)
    if not runs_vllm(tokens) and not any(k in f for k in ("--tensor-parallel-size", "--pipeline-parallel-size")):
        return
    if "--headless" in f and "--tensor-parallel-size" not in f:
        return
    # A LeaderWorkerSet group is `size` pods; without vLLM's own --nnodes, each pod holds 1/size.
    size = as_int(dig(props, "spec", "leaderWorkerTemplate", "size")) if args.resource_type.startswith(LWS_PREFIX) else 1
    par, problem = parallelism(tokens, default_nnodes=size or 1)
    who = f"`{args.name}` {where}"
    if problem:
        report_violation(f"vLLM container {who}: {problem}.")
        return
    assert par is not None
    resources = reveal(container.get("resources")) or {}
    raw = (resources.get("limits") or {}).get(K8S_GPU, (resources.get("requests") or {}).get(K8S_GPU, 0))
    got = as_int(raw)
    if par.total % par.nnodes:
        report_violation(f"vLLM container {who}: {par.describe()} = {par.total} GPUs cannot be split "
                         f"evenly over {par.nnodes} pods.")
        return
    want = par.total // par.nnodes
    if got == want:
        return
    names = [e.get("name") for e in reveal(container.get("env")) or [] if isinstance(e, dict)]
    if not got and is_cpu_server(tokens, container.get("image"), names):
        return
    per_pod = f" / {par.nnodes} pods" if par.nnodes > 1 else ""
    report_violation(f"vLLM container {who} gets {raw} {K8S_GPU}, but {par.describe()}{per_pod} needs {want}.")


# --- no-world-published-ports -----------------------------------------------------------------

def all_interfaces(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.strip().strip("[]")).is_unspecified
    except ValueError:
        return False


def validate_no_world_ports(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    props = plain(args.props)
    who = describe(args, props)
    for i, port in enumerate(known_items(props.get("ports"), "ports")):
        if not isinstance(port, dict):
            continue
        ip = known(port.get("ip"), f"ports.{i}.ip")
        # Docker binds a port published without an address on every interface.
        ip = reveal(ip) or "0.0.0.0"
        internal = as_int(port.get("internal"))
        if not all_interfaces(ip):
            continue
        if role(props) == NGINX_ROLE and internal == NGINX_PUBLIC_INTERNAL_PORT:
            continue
        external = as_int(port.get("external"))
        report_violation(f"{who} publishes port {internal} on {ip} (all interfaces)"
                         f"{f' as {external}' if external is not None else ''}: only the Nginx public API "
                         f"(container port {NGINX_PUBLIC_INTERNAL_PORT}) may be; bind it to the host's "
                         "inventory address or 127.0.0.1.")


# --- grafana-admin-password-secret ------------------------------------------------------------

def is_grafana(props: dict) -> bool:
    if role(props):
        return role(props) == GRAFANA_ROLE
    image = reveal(props.get("image"))
    return isinstance(image, str) and "grafana/grafana" in image


def validate_grafana_password(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    props = plain(args.props)
    if not is_grafana(props):
        return
    who = describe(args, props)
    envs = known(props.get("envs"), "envs")
    entries = env_map(envs.value if is_secret(envs) else envs)
    entry = entries.get(GRAFANA_PASSWORD_VAR)
    if entry is None:
        if f"{GRAFANA_PASSWORD_VAR}__FILE" in entries:
            return  # read from a mounted file: not in the container's environment at all
        report_violation(f"Grafana {who} gets no {GRAFANA_PASSWORD_VAR}: it would start with the default "
                         "admin/admin login.")
        return
    if not (is_secret(envs) or is_secret(entry)):
        report_violation(f"Grafana {who} gets {GRAFANA_PASSWORD_VAR} in plain text: pass the environment "
                         "as a Pulumi secret (pulumi.Output.secret) so the state and the preview never show it.")
    if env_value(entry) in ("", GRAFANA_DEFAULT_PASSWORD):
        report_violation(f"Grafana {who} sets {GRAFANA_PASSWORD_VAR} to an empty or default value.")


# --- credentials-are-secrets ------------------------------------------------------------------

def validate_credentials_secret(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props = plain(args.props)
    if args.resource_type == CONTAINER:
        envs = props.get("envs")
        if is_unknown(envs) or is_secret(envs):
            return  # unknown until the update, or secret as a whole
        for name, entry in env_map(envs).items():
            if name == GRAFANA_PASSWORD_VAR and is_grafana(props):
                continue  # grafana-admin-password-secret reports it
            if CREDENTIAL_VAR.search(name) and env_value(entry) and not is_secret(entry):
                report_violation(f"{describe(args, props)} gets {name} in plain text: pass it as a Pulumi secret.")
    for where, container in k8s_containers(args.resource_type, props):
        for env in container.get("env") or []:
            env = env.value if is_secret(env) else env
            if not isinstance(env, dict):
                continue
            name, value = env.get("name"), env.get("value")
            if (isinstance(name, str) and CREDENTIAL_VAR.search(name) and value is not None
                    and not is_secret(value) and not is_unknown(value) and value != ""):
                report_violation(f"`{args.name}` {where} sets {name} as a plain value: use "
                                 "valueFrom.secretKeyRef (or at least a Pulumi secret).")


# --- kubernetes-resource-limits ---------------------------------------------------------------

def k8s_pod_specs(resource_type: str, props: dict) -> Iterator[tuple[str, dict]]:
    if resource_type.startswith(LWS_PREFIX):
        paths = LWS_POD_SPEC_PATHS
    else:
        paths = K8S_POD_SPEC_PATHS.get(resource_type, [])
    for path in paths:
        spec = reveal(dig(props, *path))
        if isinstance(spec, dict):
            where = path[-2] if len(path) > 1 and path[-2].endswith("Template") else "pod template"
            yield where, spec


def k8s_containers(resource_type: str, props: dict) -> Iterator[tuple[str, dict]]:
    """(where, container) for every container and init container of a Kubernetes workload."""
    if not resource_type.startswith("kubernetes:"):
        return
    for where, spec in k8s_pod_specs(resource_type, props):
        for kind in ("initContainers", "containers"):
            for c in spec.get(kind) or []:
                if isinstance(c, dict):
                    label = "init container" if kind == "initContainers" else "container"
                    yield f"{where} {label} `{c.get('name', '?')}`", c


def validate_k8s_limits(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props = plain(args.props)
    for where, container in k8s_containers(args.resource_type, props):
        limits = dig(container, "resources", "limits")
        if is_unknown(limits):
            continue
        if not isinstance(reveal(limits), dict) or not reveal(limits):
            report_violation(f"`{args.name}` {where} has no resources.limits: set memory (and "
                             f"{K8S_GPU} for GPU pods) so one pod cannot starve its node.")


# --- gpus-not-shared (stack) ------------------------------------------------------------------

def validate_gpus_not_shared(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """No GPU device id is given to two containers on the same Docker host (provider)."""
    owners: dict[tuple[str, str], str] = {}
    for res in args.resources:
        if res.resource_type != CONTAINER:
            continue
        props = plain(res.props)
        host = res.provider.urn if res.provider else ""
        for req in reveal(props.get("deviceRequests")) or []:
            for dev in (req.get("deviceIds") if isinstance(req, dict) else None) or []:
                key = (host, str(dev))
                if key in owners and owners[key] != res.name:
                    report_violation(f"GPU {dev} on {host.rsplit('::', 1)[-1] or 'the default host'} is given to "
                                     f"both `{owners[key]}` and `{res.name}`.", res.urn)
                owners.setdefault(key, res.name)


# --- the policies -------------------------------------------------------------------------------

def _policy(name: str, description: str, validate: Callable) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name=name, description=description, validate=validate,
                                    enforcement_level=EnforcementLevel.MANDATORY)


RESOURCE_POLICIES: list[ResourceValidationPolicy] = [
    _policy("images-pinned", "Images (and Helm charts) are pinned to a release outside the local stack.",
            validate_images_pinned),
    _policy("vllm-health-checked", "Every vLLM API server container has a health check on /health.",
            validate_vllm_health_checked),
    _policy("vllm-gpus-match-parallelism",
            "A vLLM replica owns exactly tensor x pipeline parallel GPUs (divided over its nodes).",
            validate_vllm_gpus),
    _policy("no-world-published-ports",
            "No port is published on all interfaces except the Nginx public API.",
            validate_no_world_ports),
    _policy("grafana-admin-password-secret", "Grafana's admin password is set, as a Pulumi secret.",
            validate_grafana_password),
    _policy("credentials-are-secrets", "Passwords, tokens and API keys in environments are secrets.",
            validate_credentials_secret),
    _policy("kubernetes-resource-limits", "Every container of a Kubernetes workload has resources.limits.",
            validate_k8s_limits),
]
STACK_POLICIES: list[StackValidationPolicy] = [
    StackValidationPolicy(name="gpus-not-shared", description="No GPU is given to two containers on one host.",
                          validate=validate_gpus_not_shared, enforcement_level=EnforcementLevel.MANDATORY),
]
POLICIES = [*RESOURCE_POLICIES, *STACK_POLICIES]
