"""vllm-fleet: loads the stack config, deploys it with its target's components, exports the outputs."""
import pulumi

from components.docker.deploy import deploy as deploy_docker
from components.k8s.deploy import deploy as deploy_kubernetes
from fleet.config.load import load_from_pulumi

cfg, secrets = load_from_pulumi()
deploy = deploy_kubernetes if cfg.target == "kubernetes" else deploy_docker
for key, value in deploy(cfg, secrets).items():
    pulumi.export(key, value)
