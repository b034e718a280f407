"""The Grafana admin password of either target: the stack's secret, or one generated once."""
from __future__ import annotations

from typing import Mapping

import pulumi
import pulumi_random as random


def grafana_admin_password(name: str, secrets: Mapping[str, pulumi.Output[str]],
                           parent: pulumi.Resource) -> pulumi.Output[str]:
    """`secrets["grafana_admin_password"]`, else a generated one (`<name>-grafana-admin`, kept in
    the stack's state): no default password, and always a Pulumi secret (a stack output)."""
    password = secrets.get("grafana_admin_password")
    if password is None:
        password = random.RandomPassword(f"{name}-grafana-admin", length=24, special=False,
                                         opts=pulumi.ResourceOptions(parent=parent)).result
    return pulumi.Output.secret(password)
