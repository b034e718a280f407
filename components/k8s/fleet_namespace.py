"""FleetNamespace: the cluster connection, the fleet's namespace, service account, Secret and HF cache."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi
import pulumi_kubernetes as k8s

from fleet.k8s import manifests as mf
from components.k8s.resources import declare
from fleet.k8s.plan import K8sPlan


@dataclass
class FleetNamespaceArgs:
    plan: K8sPlan
    secrets: Mapping[str, pulumi.Output[str]]  # api_key, hf_token: Pulumi secrets


class FleetNamespace(pulumi.ComponentResource):
    provider: k8s.Provider
    namespace: pulumi.Output[str]

    def __init__(self, name: str, args: FleetNamespaceArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:k8s:FleetNamespace", name, None, opts)
        plan, k = args.plan, args.plan.k8s
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=k.kubeconfig, context=k.context,
                                     opts=pulumi.ResourceOptions(parent=self))
        # Namespaces and the model cache outlive the stack (retained on destroy: deleting a namespace
        # deletes everything in it, the cache claim included), so a new stack must adopt them where
        # they exist: this provider turns a create into a server-side apply that takes an existing
        # object over (pulumi-kubernetes >= 4.29 otherwise fails with AlreadyExists). Only these
        # objects use it: any other name collision in the cluster is still an error.
        self.adopting_provider = k8s.Provider(f"{name}-k8s-adopt", kubeconfig=k.kubeconfig, context=k.context,
                                              upsert_existing_objects=True, opts=pulumi.ResourceOptions(parent=self))
        self.kept_opts = pulumi.ResourceOptions(parent=self, provider=self.adopting_provider, retain_on_delete=True)
        base = pulumi.ResourceOptions(parent=self, provider=self.provider)
        self.namespace_resource = (declare(f"{name}-namespace", mf.namespace(plan, k.namespace, mf.app_pod_security(plan)),
                                           self.kept_opts) if k.create_namespace else None)
        self.child_opts = base.merge(pulumi.ResourceOptions(depends_on=[self.namespace_resource] if self.namespace_resource else []))
        self.service_account = declare(f"{name}-service-account",
                                       mf.service_account(plan, mf.SERVICE_ACCOUNT, k.namespace), self.child_opts)
        keys = [key for key in mf.SECRET_KEYS if key in args.secrets]
        self.secret = None
        if keys:
            values = {key: pulumi.Output.secret(args.secrets[key]) for key in keys}
            self.secret = declare(f"{name}-secrets", mf.fleet_secret(plan, keys), self.child_opts, string_data=values)
        claim = mf.hf_cache_claim(plan)
        # Models take long to download: the cache outlives the stack, like the Docker target's volumes.
        self.hf_cache = (declare(f"{name}-hf-cache", claim, self.kept_opts.merge(pulumi.ResourceOptions(
            depends_on=[self.namespace_resource] if self.namespace_resource else []))) if claim else None)
        self.namespace = pulumi.Output.from_input(k.namespace)
        self.register_outputs({"namespace": self.namespace})

    @property
    def ready(self) -> list[pulumi.Resource]:
        """What the fleet's workloads need before they start."""
        return [r for r in (self.service_account, self.secret, self.hf_cache) if r is not None]
