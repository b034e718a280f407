"""NginxLoadBalancer: the public entry point; its upstreams are the replicas' own endpoints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import pulumi

from components.docker.container import container
from components.docker.host import DockerHost
from fleet.render.files import NGINX_CONF, certificate_sha256, key_hashes, nginx_files
from fleet.config.schema import FleetConfig
from fleet.docker.container_spec import ContainerSpec
from fleet.docker.plan import UPLOAD_DIR
from fleet.ports import TLS_CERT_FILE, TLS_KEY_FILE


@dataclass
class NginxLoadBalancerArgs:
    cfg: FleetConfig
    spec: ContainerSpec  # the long-running Nginx
    config_spec: ContainerSpec  # the one-shot job that writes each new nginx.conf into its volume
    host: DockerHost
    upstreams: Mapping[str, list[pulumi.Output[str]]]  # model name -> replica endpoints
    replicas: list[pulumi.Resource]
    secrets: Mapping[str, pulumi.Output[str]]  # the stack's secrets: client_keys (hashed here), api_key (Nginx's env)
    tls_spec: Optional[ContainerSpec] = None  # the job that writes the TLS secrets' certificate and key


class NginxLoadBalancer(pulumi.ComponentResource):
    nginx_conf: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: NginxLoadBalancerArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        super().__init__("vllm-fleet:docker:NginxLoadBalancer", name, None, opts)
        models = list(args.upstreams)
        flat = [e for m in models for e in args.upstreams[m]]
        sizes = [len(args.upstreams[m]) for m in models]

        def files(resolved: list) -> dict[str, str]:
            *endpoints, hashes, cert_sha256 = resolved
            grouped, i = {}, 0
            for m, n in zip(models, sizes):
                grouped[m], i = endpoints[i:i + n], i + n
            return nginx_files(args.cfg, grouped, key_hashes=hashes, tls_sha256=cert_sha256)

        # Only the keys' SHA-256 reach the files, so they are not secret (the keys are 32+ random characters).
        hashes = (pulumi.Output.unsecret(args.secrets["client_keys"].apply(key_hashes))
                  if "client_keys" in args.secrets else {})
        # The certificate's digest (public, as the certificate is) makes a new one change nginx.conf:
        # Nginx reloads once the certificate writer, which the config writer waits for, wrote it.
        self.tls_writer = None
        cert_sha256: pulumi.Input[str] = ""
        if args.tls_spec is not None:
            cert, key = (pulumi.Output.secret(args.secrets[k]) for k in ("tls_certificate", "tls_private_key"))
            cert_sha256 = pulumi.Output.unsecret(cert.apply(certificate_sha256))
            self.tls_writer = container(f"{name}-tls", args.tls_spec, args.host, self, {}, uploads=pulumi.Output.secret(
                pulumi.Output.all(cert, key).apply(lambda ck: {f"{UPLOAD_DIR}/{TLS_CERT_FILE}": ck[0],
                                                               f"{UPLOAD_DIR}/{TLS_KEY_FILE}": ck[1]})))
        nginx = pulumi.Output.all(*flat, hashes, cert_sha256).apply(files)
        self.nginx_conf = nginx.apply(lambda f: f[NGINX_CONF])
        # A new upstream list replaces only the one-shot writer; the running Nginx sees the file
        # change and reloads gracefully, so its container (and its connections) stay.
        self.config_writer = container(f"{name}-config", args.config_spec, args.host, self, {},
                                       uploads=nginx.apply(lambda f: {f"{UPLOAD_DIR}/{n}": c for n, c in f.items()}),
                                       depends_on=[*args.replicas, *([self.tls_writer] if self.tls_writer else [])])
        self.container = container(f"{name}-nginx", args.spec, args.host, self, args.secrets,
                                   depends_on=[self.config_writer])
        lb = args.cfg.load_balancer
        public = args.cfg.lb_host.address if lb.bind_address in ("0.0.0.0", "::") else lb.bind_address
        self.url = pulumi.Output.from_input(f"https://{public}:{lb.tls.port}/v1" if lb.tls else f"http://{public}:{lb.port}/v1")
        self.register_outputs({"url": self.url, "nginx_conf": self.nginx_conf})
