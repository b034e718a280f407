"""`make render STACK=<name>`: every artifact a stack deploys, written under build/<stack>/.

Runs the real program under Pulumi's mocks (no CLI, no Docker), so the files are exactly the ones
`pulumi up` would upload: nginx.conf, Prometheus config and rules, Grafana provisioning and
dashboards, each container's full spec and vLLM command line, and a listing of all resources.
Secrets are redacted; the render fails if any secret value is found in what it wrote.

Usage: python -m fleet.offline_render STACK [--out DIR]
  PULUMI_CONFIG_PASSPHRASE (optional) decrypts the stack's secrets so the leak check is exact.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from fleet.errors import ConfigError
from fleet.plan import NGINX_CONF_UPLOAD
from fleet.mock_run import MOCK_GENERATED_PASSWORD, SECRET_MARK, MockRun, read_stack_file, run_program, stack_config

CONTAINER = "docker:index/container:Container"
# Where an upload is written when its container path would say little to a reviewer.
FRIENDLY = {("nginx-config", NGINX_CONF_UPLOAD): "nginx/nginx.conf"}


def artifacts(run: MockRun) -> dict[str, str]:
    """Relative path -> content of every file the render writes."""
    files: dict[str, str] = {}
    for name, res in sorted(run.containers().items()):
        spec = res.plain()
        role = dict((lbl["label"], lbl["value"]) for lbl in spec.get("labels", [])).get("vllm-fleet.role", "other")
        uploads = {u["file"]: u["content"] for u in spec.get("uploads") or []}
        spec["uploads"] = sorted(uploads)  # contents are written as files of their own
        files[f"containers/{name}.json"] = json.dumps(spec, indent=2, sort_keys=True) + "\n"
        if role.startswith("vllm"):
            argv = (spec.get("entrypoints") or []) + (spec.get("command") or [])
            files[f"vllm/{name}.sh"] = command_script(argv, spec.get("envs") or [])
        for path, content in uploads.items():
            files[FRIENDLY.get((role, path), f"{role}{path}")] = content
    lines = [f"{r.typ:55} {r.name}" for r in run.resources]
    files["resources.txt"] = "\n".join(sorted(lines)) + "\n"
    files["outputs.json"] = json.dumps(run.outputs, indent=2, sort_keys=True, default=str) + "\n"
    return files


def command_script(argv: list[str], envs: list[str] | str) -> str:
    """The replica's environment and command, one flag per line so review diffs stay small."""
    import shlex

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
    return [f"{path}" for path, content in files.items() for s in secrets if s and s in content]


def render_stack(stack: str, out: Path, passphrase: str | None) -> dict[str, str]:
    doc = read_stack_file(stack)
    config, secret_keys, plain = stack_config(doc, passphrase)
    run = run_program(stack, config, secret_keys)
    files = artifacts(run)
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
    args = parser.parse_args(argv)
    out = args.out or Path("build") / args.stack
    try:
        files = render_stack(args.stack, out, os.environ.get("PULUMI_CONFIG_PASSPHRASE"))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} files under {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
