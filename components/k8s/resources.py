"""Declares a manifest (a plain dict from `manifests`) as the matching pulumi_kubernetes resource.

Shared by the Kubernetes components, so a manifest means the same thing everywhere; kinds without
a typed class (LeaderWorkerSet, PodMonitor, ScaledObject...) become CustomResources.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from fleet.k8s.manifests import with_checkov_skips

TYPED: dict[tuple[str, str], type] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "PersistentVolumeClaim"): k8s.core.v1.PersistentVolumeClaim,
    ("apps/v1", "StatefulSet"): k8s.apps.v1.StatefulSet,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("apps/v1", "DaemonSet"): k8s.apps.v1.DaemonSet,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def declare(resource_name: str, manifest: dict[str, Any], opts: pulumi.ResourceOptions,
            **inputs: Any) -> pulumi.CustomResource:
    """`inputs` (snake_case) replace top-level fields, e.g. a Secret's `string_data` of Outputs."""
    manifest = with_checkov_skips(manifest)
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
    cls: Optional[type] = TYPED.get((manifest["apiVersion"], manifest["kind"]))
    if cls is None:
        return k8s.apiextensions.CustomResource(resource_name, api_version=manifest["apiVersion"], kind=manifest["kind"],
                                                opts=opts, **{**body, **inputs})
    return cls(resource_name, opts=opts, **{**{_snake(k): v for k, v in body.items()}, **inputs})
