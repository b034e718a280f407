"""The vllm-fleet policy pack: `pulumi preview --policy-pack policy` runs this file.

Constructing the PolicyPack starts the analyzer's gRPC server and blocks, so it happens here only;
the policies themselves live in vllm_fleet_policies.py, where tests import them.
"""
from pulumi_policy import EnforcementLevel, PolicyPack

from vllm_fleet_policies import POLICIES, keep_secrets_visible

keep_secrets_visible()

PolicyPack(
    name="vllm-fleet",
    description="vLLM fleet guard rails: pinned images, health-checked replicas, GPUs = tp x pp, "
                "no world-published metrics or admin ports, secrets kept secret, Kubernetes limits.",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
