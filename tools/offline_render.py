"""`make render STACK=<name>`: every artifact a stack deploys, written under build/<stack>/.

Runs the real program under Pulumi's mocks (no CLI, no Docker), so the files are exactly the ones
`pulumi up` would upload: nginx.conf, Prometheus config and rules, Grafana provisioning and
dashboards, each container's full spec and vLLM command line, and a listing of all resources.
For the Kubernetes target: every object the program declares as a manifest under `k8s/`
(`k8s/<namespace>/<kind>-<name>.yaml`), each Helm release's chart and values under `helm/`, and
the same nginx.conf, alert rules and vLLM command lines.
Secrets are redacted; the render fails if any secret value is found in what it wrote.

Usage: python -m tools.offline_render STACK [--out DIR]
  PULUMI_CONFIG_PASSPHRASE (optional) decrypts the stack's secrets so the leak check is exact.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from fleet.config.errors import ConfigError
from fleet.config.load import parse_config
from fleet.config.secrets import secret_shapes
from fleet.docker.plan import UPLOAD_DIR
from fleet.render.files import NGINX_CONF, NGINX_JS, NGINX_MODELS
from fleet.render.templates import HEADER
from tools.plan_report import plan_text, raw_values
from tools.mock_run import MOCK_GENERATED_PASSWORD, SECRET_MARK, MockRun, is_secret, read_stack_file, run_program, stack_config

CONTAINER = "docker:index/container:Container"
# Where an upload is written when its container path would say little to a reviewer.
FRIENDLY = {("nginx-config", f"{UPLOAD_DIR}/{n}"): f"nginx/{n}" for n in (NGINX_CONF, NGINX_JS, NGINX_MODELS)}


def artifacts(run: MockRun) -> dict[str, str]:
    """Relative path -> content of every file the render writes."""
    files: dict[str, str] = {}
    for name, res in sorted(run.containers().items()):
        spec = res.plain()
        role = dict((lbl["label"], lbl["value"]) for lbl in spec.get("labels", [])).get("vllm-fleet.role", "other")
        # Secret uploads (Nginx's certificate and key) stay `[secret]`, file names included.
        secret_uploads = spec.get("uploads") == SECRET_MARK
        uploads = {} if secret_uploads else {u["file"]: u["content"] for u in spec.get("uploads") or []}
        spec["uploads"] = SECRET_MARK if secret_uploads else sorted(uploads)  # contents are written as files of their own
        files[f"containers/{name}.json"] = json.dumps(spec, indent=2, sort_keys=True) + "\n"
        if role.startswith("vllm"):
            argv = (spec.get("entrypoints") or []) + (spec.get("command") or [])
            files[f"vllm/{name}.sh"] = command_script(argv, spec.get("envs") or [])
        for path, content in uploads.items():
            files[FRIENDLY.get((role, path), f"{role}{path}")] = content
    files.update(k8s_artifacts(run))
    lines = [f"{r.typ:55} {r.name}" for r in run.resources]
    files["resources.txt"] = "\n".join(sorted(lines)) + "\n"
    files["outputs.json"] = json.dumps(run.outputs, indent=2, sort_keys=True, default=str) + "\n"
    return files


def command_script(argv: list[str], envs: list[str] | str) -> str:
    """The replica's environment and command, one flag per line so review diffs stay small."""
    env_lines = [SECRET_MARK] if envs == SECRET_MARK else [f"export {shlex.quote(e)}" for e in envs]
    parts, line = [], []
    for arg in argv:
        if arg.startswith("-") and line:
            parts.append(" ".join(line))
            line = []
        line.append(shlex.quote(arg))
    parts.append(" ".join(line))
    return "\n".join(["#!/bin/sh", "# environment (secret variables shown as [secret])", *env_lines,
                      "exec " + " \\\n  ".join(parts)]) + "\n"


def leaked(files: dict[str, str], secrets: list[str]) -> list[str]:
    """The files that carry a known secret value or anything shaped like a credential."""
    return [path for path, content in files.items()
            if any(s and s in content for s in secrets) or secret_shapes(content)]


def render_stack(stack: str, out: Path, passphrase: str | None, stacks_dir: Path | None = None) -> dict[str, str]:
    doc = read_stack_file(stack, stacks_dir) if stacks_dir else read_stack_file(stack)
    config, secret_keys, plain = stack_config(doc, passphrase)
    run = run_program(stack, config, secret_keys)
    files = artifacts(run)
    files["plan.txt"] = plan_text(parse_config(raw_values(doc), stack))
    bad = leaked(files, [*plain.values(), MOCK_GENERATED_PASSWORD])
    if bad:
        raise SystemExit(f"refusing to write: a secret value appears in {', '.join(sorted(set(bad)))}")
    if out.exists():
        shutil.rmtree(out)
    for rel, content in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--stacks-dir", type=Path, help="where Pulumi.<stack>.yaml lives (default: stacks/)")
    args = parser.parse_args(argv)
    out = args.out or Path("build") / args.stack
    try:
        files = render_stack(args.stack, out, os.environ.get("PULUMI_CONFIG_PASSPHRASE"), args.stacks_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files under {out}/")
    return 0


# --- the Kubernetes target: every declared object, as the manifest the cluster receives ---------

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


def _manifest_value(value):
    """Recorded inputs as manifest values: secret values redacted (a Secret keeps its keys), and
    the mocks' floats back to the integers they were."""
    if is_secret(value):
        inner = value.get("value")
        return {k: SECRET_MARK for k in inner} if isinstance(inner, dict) else SECRET_MARK
    if isinstance(value, dict):
        return {k: _manifest_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_manifest_value(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def k8s_manifests(run: MockRun) -> list[dict]:
    """Every Kubernetes object the program declared (not the provider, not Helm releases)."""
    out = []
    for r in run.resources:
        if not r.typ.startswith("kubernetes:") or r.typ == HELM_RELEASE:
            continue
        body = _manifest_value(dict(r.inputs))
        head = {"apiVersion": body.pop("apiVersion"), "kind": body.pop("kind"), "metadata": body.pop("metadata", {})}
        out.append({**head, **body})
    return out


def manifest_path(m: dict) -> str:
    ns = m["metadata"].get("namespace") or "_cluster"
    return f"k8s/{ns}/{m['kind'].lower()}-{m['metadata']['name']}.yaml"


def k8s_artifacts(run: MockRun) -> dict[str, str]:
    def dump(doc) -> str:
        # Sorted keys: apiVersion, kind, metadata, spec come first, and reviews diff stably.
        return f"# {HEADER}\n" + yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, width=120)

    files: dict[str, str] = {}
    for m in k8s_manifests(run):
        files[manifest_path(m)] = dump(m)
        kind, name = m["kind"], m["metadata"]["name"]
        if kind == "ConfigMap" and NGINX_CONF in m.get("data", {}):
            files.update({f"nginx/{n}": text for n, text in m["data"].items()})
        if kind == "PrometheusRule":
            files["prometheus/rules/vllm-fleet.yml"] = dump({"groups": m["spec"]["groups"]})
        templates = {}
        if kind == "StatefulSet":
            templates["server"] = m["spec"]["template"]
        if kind == "LeaderWorkerSet":
            lwt = m["spec"]["leaderWorkerTemplate"]
            templates = {"leader": lwt["leaderTemplate"], "worker": lwt["workerTemplate"]}
        for role, template in templates.items():
            container = template["spec"]["containers"][0]
            files[f"vllm/{name}-{role}.sh"] = command_script(container["command"] + container["args"],
                                                             [_env_line(e) for e in container.get("env", [])])
    for r in run.of_type(HELM_RELEASE):
        release = _manifest_value(dict(r.inputs))
        files[f"helm/{release.get('name', r.name)}.yaml"] = dump(release)
    return files


def _env_line(env: dict) -> str:
    source = env.get("valueFrom")
    if source is None:
        return f"{env['name']}={env.get('value', '')}"
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return f"{env['name']}={SECRET_MARK} (Secret {ref['name']}, key {ref['key']})"
    return f"{env['name']}=$({source.get('fieldRef', {}).get('fieldPath', '?')}) (set by Kubernetes)"


if __name__ == "__main__":
    sys.exit(main())
