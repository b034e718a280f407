"""HTTPS at the load balancer (`load_balancer.tls` + the `tls_certificate` / `tls_private_key`
secrets): every mistake is one error before any resource, and no message shows key material."""
from __future__ import annotations

import pytest

from support.refusals import assert_refused_before_any_resource
from support.stacks import raw_stack, run_raw
from support.tls import encrypted_key, server_pair

PAIR = server_pair()
OTHER = server_pair("other.example")
EXPIRED = server_pair("expired.example", valid_from_days=-60, valid_for_days=30)
NOT_YET = server_pair("future.example", valid_from_days=2)


def with_tls(stack: str, **tls) -> dict:
    raw = raw_stack(stack)
    raw.setdefault("load_balancer", {})["tls"] = tls
    return raw


def secrets(certificate: str = PAIR.certificate, private_key: str = PAIR.private_key) -> dict[str, str]:
    return {"tls_certificate": certificate, "tls_private_key": private_key}


CASES = [
    # (case, stack, tls object or None, secrets, key, fragment)
    ("the secrets without load_balancer.tls", "local", None, secrets(), "tls_certificate", "nothing would serve HTTPS"),
    ("a certificate without its key", "local", {}, {"tls_certificate": PAIR.certificate}, "tls_private_key",
     "is set but `tls_private_key` is not"),
    ("a certificate path without the key's", "local", {"certificate_path": "/etc/ssl/fleet/fullchain.pem"}, {},
     "load_balancer.tls.private_key_path", "`private_key_path` is not"),
    ("no source at all", "local", {}, {}, "load_balancer.tls", "none is set"),
    ("secrets and paths", "local", {"certificate_path": "/etc/ssl/a.pem", "private_key_path": "/etc/ssl/a.key"}, secrets(),
     "load_balancer.tls", "this stack gives 2"),
    ("a Kubernetes Secret on Docker", "local", {"secret_name": "fleet-tls"}, {}, "load_balancer.tls.secret_name",
     "no meaning on the docker target"),
    ("host paths on Kubernetes", "prod-k8s", {"certificate_path": "/etc/ssl/a.pem", "private_key_path": "/etc/ssl/a.key"},
     {}, "load_balancer.tls.certificate_path", "no meaning on the kubernetes target"),
    ("a Secret and the secrets on Kubernetes", "prod-k8s", {"secret_name": "fleet-tls"}, secrets(), "load_balancer.tls",
     "this stack gives 2"),
    ("a relative path", "local", {"certificate_path": "certs/a.pem", "private_key_path": "/etc/ssl/a.key"}, {},
     "load_balancer.tls.certificate_path", "should match pattern"),
    ("a path with ..", "local", {"certificate_path": "/etc/ssl/../a.pem", "private_key_path": "/etc/ssl/a.key"}, {},
     "load_balancer.tls.certificate_path", "not a normalised absolute path"),
    ("HTTPS on the plain port", "local", {"port": 8080}, secrets(), "load_balancer.tls.port", "the plain HTTP port"),
    # The HTTPS port is published, so the host's ledger sees it (and names the later claim's key).
    ("HTTPS on Prometheus' port", "local", {"port": 9090}, secrets(), "monitoring.prometheus_port",
     "port 9090 on 127.0.0.1 of host `local`, which the load balancer (Nginx) already uses"),
    ("a misspelt key", "local", {"redirect": False}, secrets(), "load_balancer.tls.redirect", "did you mean `redirect_http`"),
    ("a certificate that is no PEM", "local", {}, secrets(certificate="not a certificate"), "tls_certificate",
     "not a PEM certificate"),
    ("a key that is no PEM", "local", {}, secrets(private_key=PAIR.certificate), "tls_private_key", "not a PEM private key"),
    ("an encrypted key", "local", {}, secrets(private_key=encrypted_key(PAIR)), "tls_private_key", "encrypted"),
    ("the key of another certificate", "local", {}, secrets(private_key=OTHER.private_key), "tls_private_key",
     "does not belong to the certificate of 'CN=localhost'"),
    ("the chain in the wrong order", "local", {}, secrets(certificate=PAIR.ca + PAIR.certificate), "tls_private_key",
     "does not belong"),
    ("an expired certificate", "local", {}, secrets(*EXPIRED.secrets.values()), "tls_certificate", "expired on"),
    ("a certificate not valid yet", "local", {}, secrets(*NOT_YET.secrets.values()), "tls_certificate", "valid only from"),
]


@pytest.mark.parametrize("case, stack, tls, given, key, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_broken_tls_setup_is_refused_without_showing_key_material(case, stack, tls, given, key, fragment):
    raw = with_tls(stack, **tls) if tls is not None else raw_stack(stack)
    err = assert_refused_before_any_resource(case, stack, raw, key, fragment, secrets=given)
    message = str(err)
    for pem in (*PAIR.secrets.values(), OTHER.private_key, EXPIRED.private_key, NOT_YET.private_key):
        body = pem.splitlines()[1]  # the first base64 line of each PEM block
        assert body not in message, message
    assert "-----END" not in message, message  # no PEM block, whole or in part


@pytest.mark.parametrize("stack, tls", [
    ("local", {"port": 8443}),
    ("local", {"port": 8443, "certificate_path": "/etc/ssl/fleet/fullchain.pem", "private_key_path": "/etc/ssl/fleet/key.pem"}),
    ("prod-k8s", {}),
    ("prod-k8s", {"secret_name": "fleet-tls"}),
])
def test_one_source_per_target_is_accepted(stack, tls):
    given = secrets() if "certificate_path" not in tls and "secret_name" not in tls else {}
    run = run_raw(stack, with_tls(stack, **tls), secrets=given)
    assert run.resources
