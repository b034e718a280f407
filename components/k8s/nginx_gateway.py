"""NginxGateway: the public entry point, Nginx pods on the same rendered nginx.conf as on Docker."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi

from fleet.k8s import manifests as mf
from components.k8s.fleet_namespace import FleetNamespace
from components.k8s.resources import declare
from fleet.k8s.plan import K8sPlan
from fleet.ports import TLS_CERT_FILE, TLS_KEY_FILE
from fleet.render.files import NGINX_CONF, certificate_sha256, key_hashes


@dataclass
class NginxGatewayArgs:
    plan: K8sPlan
    fleet: FleetNamespace
    replica_services: list[pulumi.Resource]  # Nginx resolves their names when it starts
    secrets: Mapping[str, pulumi.Output[str]]  # client_keys: only their SHA-256 reach the ConfigMap


class NginxGateway(pulumi.ComponentResource):
    nginx_conf: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: NginxGatewayArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:k8s:NginxGateway", name, None, opts)
        plan = args.plan
        # The client keys' SHA-256 (not secret: the keys are 32+ random characters) go into keys.json;
        # nginx.conf names every file's digest, so the pods' checksum annotation covers them all.
        hashes = (pulumi.Output.unsecret(args.secrets["client_keys"].apply(key_hashes))
                  if "client_keys" in args.secrets else {})
        base = args.fleet.child_opts.merge(pulumi.ResourceOptions(parent=self))
        # From the TLS secrets, a `kubernetes.io/tls` Secret; its certificate's digest in nginx.conf
        # rolls the pods when it changes (a `secret_name` Secret is the stack's own to renew).
        self.tls_secret, cert_sha256 = None, ""
        if plan.tls_secret is not None and "tls_certificate" in args.secrets:
            cert, key = (pulumi.Output.secret(args.secrets[k]) for k in ("tls_certificate", "tls_private_key"))
            self.tls_secret = declare(f"{name}-tls", mf.nginx_tls_secret(plan), base,
                                      string_data={TLS_CERT_FILE: cert, TLS_KEY_FILE: key})
            cert_sha256 = pulumi.Output.unsecret(cert.apply(certificate_sha256))
        files = pulumi.Output.all(hashes, cert_sha256).apply(lambda r: plan.nginx_files(key_hashes=r[0], tls_sha256=r[1]))
        conf = files.apply(lambda f: f[NGINX_CONF])
        self.config_map = declare(f"{name}-conf", mf.nginx_config_map(plan, plan.nginx_files()), base, data=files)
        self.deployment = declare(f"{name}-nginx", mf.nginx_deployment(plan, plan.nginx_files()[NGINX_CONF]),
                                  base.merge(pulumi.ResourceOptions(
                                      depends_on=[self.config_map, args.fleet.service_account, *args.replica_services,
                                                  *([self.tls_secret] if self.tls_secret else [])])),
                                  spec=conf.apply(lambda c: mf.nginx_deployment(plan, c)["spec"]))
        self.service = declare(f"{name}-service", mf.nginx_service(plan), base)
        self.disruption_budget = declare(f"{name}-pdb", mf.nginx_disruption_budget(plan), base)
        self.network_policy = declare(f"{name}-netpol", mf.nginx_network_policy(plan), base)
        tls = plan.cfg.load_balancer.tls
        scheme, port = ("https", tls.port) if tls else ("http", plan.cfg.load_balancer.port)
        in_cluster = f"{scheme}://{mf.NGINX_NAME}.{plan.namespace}.svc.cluster.local:{port}/v1"

        def public(status) -> str:
            """The cloud load balancer's address once it has one; the in-cluster URL until then."""
            balancer = getattr(status, "load_balancer", None)
            for item in getattr(balancer, "ingress", None) or []:
                if item.hostname or item.ip:
                    return f"{scheme}://{item.hostname or item.ip}:{port}/v1"
            return in_cluster

        self.nginx_conf = conf
        self.url = self.service.status.apply(public) if plan.k8s.service_type == "LoadBalancer" else pulumi.Output.from_input(in_cluster)
        self.register_outputs({"url": self.url, "nginx_conf": self.nginx_conf})
