"""What `pulumi up` does with a recorded resource graph when it replaces resources: the part of the
Pulumi engine and the providers that the mocks do not model, written down from their sources.

- pulumi-docker marks every `docker:index/container:Container` delete-before-replace in the
  provider itself (provider/resources.go: `DeleteBeforeReplace: true`), whatever the program says.
- When the engine replaces a resource delete-before-replace, it first deletes every resource one
  of whose *inputs* uses the replaced resource's outputs and that must itself be replaced once
  that input is unknown (pulumi/pulumi `calculateDependentReplacements`), transitively; those are
  recreated after it. A dependency through `depends_on` alone cascades nothing (pulumi/pulumi#838).
  Every input of a Docker container we set forces a replacement, so any input dependency cascades.
"""
from __future__ import annotations

from tools.mock_run import MockRun, Recorded

CONTAINER = "docker:index/container:Container"
PROVIDER_FORCED_DBR = {CONTAINER}


def delete_before_replace(r: Recorded) -> bool:
    """The program's explicit choice wins over the provider's default (an explicit `False` too)."""
    return r.delete_before_replace if r.delete_before_replace_defined else r.typ in PROVIDER_FORCED_DBR


def input_dependents(run: MockRun, urn: str) -> list[Recorded]:
    """Resources with an input that uses `urn`'s outputs."""
    return [r for r in run.resources if any(urn in urns for urns in r.property_dependencies.values())]


def deleted_while_replacing(run: MockRun, replaced: Recorded) -> set[str]:
    """URNs that are down at some point while `replaced` is replaced: itself and, for a
    delete-before-replace replacement, everything the engine deletes ahead of it."""
    down = {replaced.urn}
    if not delete_before_replace(replaced):
        return down
    todo = [replaced.urn]
    while todo:
        for dependent in input_dependents(run, todo.pop()):
            if dependent.urn not in down:
                down.add(dependent.urn)
                todo.append(dependent.urn)
    return down
