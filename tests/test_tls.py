"""HTTPS at the load balancer: the rendered Nginx (real nginx + njs) with a test CA made here
serves the API over TLS 1.2/1.3 and HTTP/2, refuses TLS 1.1, redirects plain HTTP with 308 and
routes by model as before; both targets deliver the certificate and key without either ever
being in a plain input or a rendered file."""
from __future__ import annotations

import copy
import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading

import httpx
import kubernetes_validate
import openai
import pytest

from fleet.config.load import parse_config
from fleet.ports import NGINX_TLS_DIR, NGINX_TLS_PORT
from fleet.render.files import NGINX_CONF, certificate_sha256, nginx_files
from support.dataplane import adapt_nginx_conf, nginx_argv, nginx_runtime_dir, wait_port
from support.processes import free_port, start, stop
from support.real_tools import nginx_test, require_nginx
from support.stacks import raw_stack, require_tool, run_raw
from support.tls import server_pair
from tools.mock_run import SECRET_MARK, is_secret
from tools.offline_render import artifacts, k8s_manifests, leaked

PAIR = server_pair()


class _Replica(http.server.BaseHTTPRequestHandler):
    """Answers as a vLLM replica would, naming itself (as the reply's content) and what it got."""
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = {"upstream": self.server.label, "path": self.path, "proto": self.headers.get("X-Forwarded-Proto"),
                "body_bytes": len(body)}
        if self.path.endswith("/chat/completions"):
            doc = json.loads(body)
            out = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": doc["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": json.dumps(seen)}}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        elif self.path.endswith("/models"):
            out = {"object": "list", "data": []}
        else:
            out = seen
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def replica(label: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    server.label = label
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def tls_config(tls_port: int, **tls):
    """The `local` stack with a second model and HTTPS on `tls_port` (the public port: redirects name it)."""
    raw = raw_stack("local")
    second = copy.deepcopy(raw["models"][0])
    second.update(name="qwen-b", served_model_name="qwen-b-chat", replicas=1)
    raw["models"].append(second)
    raw["load_balancer"]["tls"] = {"port": tls_port, **tls}
    raw["tls_certificate"] = raw["tls_private_key"] = True
    return parse_config(raw, "local")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    require_nginx()
    port, tls_port = free_port(), free_port()
    cfg = tls_config(tls_port, hsts=True)
    replicas = {m.name: replica(m.name) for m in cfg.models}
    runtime = nginx_runtime_dir("vllm-fleet-tls-")
    files = nginx_files(cfg, {m: [f"127.0.0.1:{r.server_port}"] for m, r in replicas.items()},
                        tls_sha256=certificate_sha256(PAIR.certificate))
    (runtime / "tls").mkdir()
    for name, text, mode in (("tls.crt", PAIR.certificate, 0o644), ("tls.key", PAIR.private_key, 0o600)):
        (runtime / "tls" / name).write_text(text)
        (runtime / "tls" / name).chmod(mode)
    for name, text in files.items():
        if name == NGINX_CONF:
            text = adapt_nginx_conf(text, listen_port=port, status_port=free_port(), runtime_dir=runtime, tls_port=tls_port)
        (runtime / name).write_text(text)
        (runtime / name).chmod(0o644)
    ca = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.write_text(PAIR.ca)
    log = tmp_path_factory.mktemp("edge") / "nginx.log"
    proc = start(nginx_argv(runtime, runtime / NGINX_CONF), env=dict(os.environ), log_path=log)
    try:
        wait_port(tls_port, 30, proc, log)
        wait_port(port, 30, proc, log)
        yield {"port": port, "tls_port": tls_port, "ca": ca, "log": log, "conf": files[NGINX_CONF]}
    finally:
        stop(proc, timeout=10)
        shutil.rmtree(runtime, ignore_errors=True)


def handshake(edge, *, alpn=("h2", "http/1.1"), maximum=None) -> tuple[str, str]:
    """A TLS handshake that verifies Nginx's certificate against the test CA: (version, ALPN protocol)."""
    ctx = ssl.create_default_context(cafile=str(edge["ca"]))
    ctx.set_alpn_protocols(list(alpn))
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what the server must refuse
    with socket.create_connection(("127.0.0.1", edge["tls_port"]), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version(), tls.selected_alpn_protocol()


def test_https_verifies_with_the_test_ca_and_negotiates_http2_over_tls13(edge):
    assert handshake(edge) == ("TLSv1.3", "h2")
    assert handshake(edge, alpn=("http/1.1",)) == ("TLSv1.3", "http/1.1")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls12_is_served_and_tls11_refused(edge):
    assert handshake(edge, maximum=ssl.TLSVersion.TLSv1_2)[0] == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        handshake(edge, maximum=ssl.TLSVersion.TLSv1_1)


def test_a_client_that_trusts_another_ca_is_refused(edge):
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection(("127.0.0.1", edge["tls_port"]), timeout=10) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")


def test_plain_http_answers_308_to_https_but_health_is_served(edge):
    conn = http.client.HTTPConnection("127.0.0.1", edge["port"], timeout=10)
    conn.request("POST", "/v1/chat/completions?x=1", b"{}", {"Host": "localhost", "Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 308
    assert resp.getheader("Location") == f"https://localhost:{edge['tls_port']}/v1/chat/completions?x=1"
    conn.request("GET", "/health", headers={"Host": "localhost"})
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())["upstream"]) == (200, "qwen")
    conn.close()


def test_the_official_openai_client_is_routed_by_model_over_tls(edge):
    with httpx.Client(verify=ssl.create_default_context(cafile=str(edge["ca"]))) as http_client:
        client = openai.OpenAI(base_url=f"https://localhost:{edge['tls_port']}/v1", api_key="sk-test",
                               http_client=http_client)
        for model, upstream in (("qwen-b-chat", "qwen-b"), ("Qwen/Qwen2.5-0.5B-Instruct", "qwen")):
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
            seen = json.loads(reply.choices[0].message.content)
            assert (seen["upstream"], seen["path"], seen["proto"]) == (upstream, "/v1/chat/completions", "https")
        assert [m.id for m in client.models.list()] == ["Qwen/Qwen2.5-0.5B-Instruct", "qwen-b-chat"]


def test_http2_requests_are_routed_by_their_body_with_hsts(edge, tmp_path):
    """Over HTTP/2 (curl, nghttp2), njs still reads the whole body in memory to route it: a 100 KB prompt."""
    require_tool("curl")
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "qwen-b-chat", "prompt": "x" * 100_000}))
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(edge["ca"]), "-D", "-", "-H", "Content-Type: application/json",
         "--data-binary", f"@{body}", "-w", "\n%{http_version}", f"https://localhost:{edge['tls_port']}/v1/completions"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    head, _, rest = out.partition("\n\n")  # text mode: curl's CRLF read as LF
    doc, version = rest.rsplit("\n", 1)
    assert version == "2" and head.startswith("HTTP/2 200"), out[:500]
    assert "strict-transport-security: max-age=31536000" in head.lower()
    got = json.loads(doc)
    assert (got["upstream"], got["proto"], got["body_bytes"]) == ("qwen-b", "https", body.stat().st_size)
    assert "buffered to a temporary file" not in edge["log"].read_text()


def test_the_rendered_conf_names_only_paths_and_the_certificates_digest(edge):
    conf = edge["conf"]
    assert f"listen {NGINX_TLS_PORT} ssl http2;" in conf
    assert f"ssl_certificate {NGINX_TLS_DIR}/tls.crt;" in conf and f"ssl_certificate_key {NGINX_TLS_DIR}/tls.key;" in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf and certificate_sha256(PAIR.certificate) in conf
    assert PAIR.certificate.splitlines()[1] not in conf and PAIR.private_key.splitlines()[1] not in conf


def test_without_redirect_plain_http_keeps_serving_the_api(tmp_path):
    require_nginx()
    conf = nginx_files(tls_config(8443, redirect_http=False), {"qwen": ["127.0.0.1:1"], "qwen-b": ["127.0.0.1:2"]})[NGINX_CONF]
    assert "return 308" not in conf and "Strict-Transport-Security" not in conf
    server = conf[conf.index("    server {"):]
    assert server.index("listen 8080;") < server.index(f"listen {NGINX_TLS_PORT} ssl http2;") < server.index("location /v1/")


# --- both targets: how the certificate and key travel --------------------------------------------------

def pem_bodies() -> list[str]:
    """A base64 line from inside each PEM block of the pair (certificate, CA, key)."""
    return [pem.splitlines()[2] for pem in (PAIR.certificate, PAIR.private_key, PAIR.ca)]


def assert_no_pem_in_plain_inputs(run) -> None:
    for r in run.resources:
        text = json.dumps(r.plain(), default=str)
        assert not any(b in text for b in pem_bodies()), f"{r.typ} {r.name} carries key material in a plain input"


@pytest.fixture(scope="module")
def docker_tls_run():
    raw = raw_stack("local")
    raw["load_balancer"]["tls"] = {"port": 8443}
    return run_raw("local", raw, secrets=PAIR.secrets)


def test_docker_nginx_publishes_https_and_reads_the_secret_volume(docker_tls_run):
    nginx = docker_tls_run.containers()["local-nginx"].plain()
    assert {(p["internal"], p["external"], p["ip"]) for p in nginx["ports"]} >= {(NGINX_TLS_PORT, 8443, "127.0.0.1"),
                                                                               (8080, 8080, "127.0.0.1")}
    assert {"target": NGINX_TLS_DIR, "type": "volume", "readOnly": True, "source": "local-nginx-tls"} in nginx["mounts"]


def test_docker_key_material_travels_only_as_secret_uploads_of_its_writer(docker_tls_run):
    writer = docker_tls_run.named("lb-tls")
    assert is_secret(writer.inputs["uploads"]) and writer.plain()["uploads"] == SECRET_MARK
    files = {u["file"]: u["content"] for u in writer.inputs["uploads"]["value"]}
    assert files == {"/incoming/tls.crt": PAIR.certificate, "/incoming/tls.key": PAIR.private_key}
    assert "umask 077;" in writer.inputs["command"][0]  # the key lands mode 0600
    config = docker_tls_run.named("lb-config")
    assert any(d.endswith("::lb-tls") for d in config.dependencies)  # a new certificate is written before the reload
    assert_no_pem_in_plain_inputs(docker_tls_run)


def test_docker_render_has_no_key_material(docker_tls_run):
    files = artifacts(docker_tls_run)
    assert leaked(files, list(PAIR.secrets.values())) == []
    assert json.loads(files["containers/lb-tls.json"])["uploads"] == SECRET_MARK
    assert certificate_sha256(PAIR.certificate) in files["nginx/nginx.conf"]


def test_docker_paths_are_read_only_bind_mounts_and_nothing_is_uploaded():
    raw = raw_stack("local")
    raw["load_balancer"]["tls"] = {"port": 8443, "certificate_path": "/etc/ssl/fleet/fullchain.pem",
                                   "private_key_path": "/etc/ssl/fleet/privkey.pem"}
    run = run_raw("local", raw)
    nginx = run.containers()["local-nginx"].plain()
    assert {"target": f"{NGINX_TLS_DIR}/tls.crt", "type": "bind", "readOnly": True,
            "source": "/etc/ssl/fleet/fullchain.pem"} in nginx["mounts"]
    assert {"target": f"{NGINX_TLS_DIR}/tls.key", "type": "bind", "readOnly": True,
            "source": "/etc/ssl/fleet/privkey.pem"} in nginx["mounts"]
    assert not any(r.name == "lb-tls" for r in run.resources)


def test_nginx_accepts_the_rendered_docker_conf_with_tls(docker_tls_run, tmp_path):
    require_nginx()
    uploads = {u["file"].rsplit("/", 1)[1]: u["content"] for u in docker_tls_run.named("lb-config").inputs["uploads"]}
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "tls.crt").write_text(PAIR.certificate)
    (tmp_path / "tls" / "tls.key").write_text(PAIR.private_key)
    conf = uploads.pop(NGINX_CONF).replace(f" {NGINX_TLS_DIR}/", f" {tmp_path}/tls/")
    result = nginx_test(conf, tmp_path / "nginx", uploads)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.fixture(scope="module")
def k8s_tls_runs():
    def run(**tls):
        raw = raw_stack("prod-k8s")
        raw["load_balancer"]["tls"] = tls
        return run_raw("prod-k8s", raw, secrets=PAIR.secrets if "secret_name" not in tls else {})
    return {"secrets": run(), "cert-manager": run(secret_name="fleet-cert", port=8443)}


def test_k8s_nginx_mounts_a_tls_secret_and_the_service_exposes_https(k8s_tls_runs):
    for case, secret in (("secrets", "vllm-fleet-nginx-tls"), ("cert-manager", "fleet-cert")):
        objs = {(m["kind"], m["metadata"]["name"]): m for m in k8s_manifests(k8s_tls_runs[case])}
        pod = objs[("Deployment", "vllm-fleet-nginx")]["spec"]["template"]["spec"]
        assert {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o440}} in pod["volumes"]
        nginx = next(c for c in pod["containers"] if c["name"] == "nginx")
        assert {"name": "tls", "mountPath": NGINX_TLS_DIR, "readOnly": True} in nginx["volumeMounts"]
        assert {"name": "https", "containerPort": NGINX_TLS_PORT, "protocol": "TCP"} in nginx["ports"]
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
        port = 443 if case == "secrets" else 8443
        assert {"name": "https", "port": port, "targetPort": "https", "protocol": "TCP"} in \
            objs[("Service", "vllm-fleet-nginx")]["spec"]["ports"]
        assert {"port": NGINX_TLS_PORT, "protocol": "TCP"} in \
            objs[("NetworkPolicy", "vllm-fleet-nginx")]["spec"]["ingress"][0]["ports"]
        assert (("Secret", "vllm-fleet-nginx-tls") in objs) == (case == "secrets")
        for m in objs.values():
            if m["kind"] in ("Deployment", "Service", "NetworkPolicy", "Secret"):
                kubernetes_validate.validate(m, "1.33.0", strict=True)


def test_k8s_tls_secret_is_built_from_pulumi_secrets_only(k8s_tls_runs):
    run = k8s_tls_runs["secrets"]
    secret = next(r for r in run.resources if r.typ == "kubernetes:core/v1:Secret" and r.inputs["metadata"]["name"] == "vllm-fleet-nginx-tls")
    assert secret.inputs["type"] == "kubernetes.io/tls"
    assert is_secret(secret.inputs["stringData"])
    assert_no_pem_in_plain_inputs(run)
    assert leaked(artifacts(run), list(PAIR.secrets.values())) == []
