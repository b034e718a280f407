"""The ledger of Kubernetes objects a plan declares: every (kind, namespace, name) is a claim,
checked before any resource for a name the API server accepts and for a name no other object of
its kind already holds in its namespace.

Neutral data in, one ConfigError out: the plan (fleet.k8s.plan.objects) lists the claims and names
the config key behind each, so the error points at what the user can change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from fleet.config.errors import ConfigError
from fleet.k8s.names import Rule


@dataclass(frozen=True)
class Claim:
    kind: str  # apiVersion/kind, e.g. "v1/Service"
    namespace: Optional[str]  # None for a cluster-scoped object
    name: str
    rule: Rule  # the name rule of the kind
    key: str  # the config key whose value makes this name, e.g. models[1].name
    value: Any
    what: str  # in words, e.g. "model `llama-70b`'s address of replica 1"
    named_by_key: bool = True  # False for the fleet's fixed names: changing `key` leaves them as they are

    @property
    def place(self) -> str:
        where = f" in namespace `{self.namespace}`" if self.namespace else ""
        return f"{self.kind.rsplit('/', 1)[1]} `{self.name}`{where}"


def check_claims(claims: list[Claim]) -> None:
    """Every name valid for its kind first (the clearer error), then no two claims on one name."""
    for c in claims:
        problems = c.rule(c.name)
        if problems:
            raise ConfigError(c.key, c.value, f"{c.what} would be {c.place}, which Kubernetes refuses: {'; '.join(problems)}",
                              f"a value that makes the {c.kind.rsplit('/', 1)[1]}'s name {c.rule.allowed}", f"shorten or change `{c.key}`")
    held: dict[tuple[str, Optional[str], str], Claim] = {}
    for c in claims:
        at = (c.kind, c.namespace, c.name)
        first = held.setdefault(at, c)
        if first is not c:
            raise ConfigError(c.key, c.value, f"{c.what} collides with {first.what}: both are {c.place}",
                              "a value whose objects take no name that an object of the same kind already has in that namespace",
                              f"change `{c.key}`" + (f" (or `{first.key}`)" if first.named_by_key and first.key != c.key else ""))
