"""Every stack's resource graph under Pulumi's mocks, as JSON: each resource by URN with its type,
inputs (secrets redacted), provider, dependencies, delete-before-replace and create timeout, and
the stack outputs. A refactor that must replace nothing compares two snapshots:

    python -m tools.graph_snapshot before.json   # on the old tree
    python -m tools.graph_snapshot after.json    # on the new one; `cmp before.json after.json`

The shipped stacks' fake secrets decrypt with their documented passphrases.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tools.mock_run import ROOT, read_stack_file, redact, run_program, stack_config

PASSPHRASES = {"local": "vllm-fleet-local"}  # the others: "vllm-fleet-example-only"


def snapshot() -> dict:
    out = {}
    for path in sorted((ROOT / "stacks").glob("Pulumi.*.yaml")):
        stack = path.name[len("Pulumi."):-len(".yaml")]
        config, keys, _ = stack_config(read_stack_file(stack), PASSPHRASES.get(stack, "vllm-fleet-example-only"))
        run = run_program(stack, config, keys)
        resources = {}
        for r in run.resources:
            assert r.urn not in resources, f"two resources with one URN: {r.urn}"
            resources[r.urn] = {"typ": r.typ, "inputs": redact(r.inputs), "provider": r.provider,
                                "deps": sorted(r.dependencies), "dbr": r.delete_before_replace, "timeout": r.create_timeout}
        out[stack] = {"resources": resources, "outputs": run.outputs}
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tools.graph_snapshot OUT.json")
    Path(sys.argv[1]).write_text(json.dumps(snapshot(), indent=1, sort_keys=True, default=str))
