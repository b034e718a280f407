"""API keys at the edge (`load_balancer.keys` + the `client_keys` secret): what the config refuses,
and that no key value reaches a message, a rendered file or a log."""
from __future__ import annotations

import copy
import http.client
import http.server
import json
import os
import shutil
import threading
import time

import pytest

from fleet.config.errors import ConfigError
from fleet.config.load import parse_config
from fleet.render.files import NGINX_CONF, UPSTREAM_KEY_ENV, key_hash, key_hashes, nginx_files
from support.dataplane import adapt_nginx_conf, nginx_argv, nginx_runtime_dir, wait_port
from support.processes import free_port, logged_after, start, stop
from support.refusals import assert_refused_before_any_resource
from support.real_tools import require_nginx
from support.stacks import raw_stack, run_raw
from tools.mock_run import MockRun

KEYS = {"team-a": "sk-team-a-" + "Q7vX2mR9kL4pZ8nB3wY6tH1cF5gJ0dS", "team-b": "sk-team-b-" + "W3eR8tY1uI6oP4aS9dF2gH7jK5lZ0xC"}


def with_keys(raw: dict, *keys: dict) -> dict:
    raw.setdefault("load_balancer", {})["keys"] = list(keys) or [
        {"name": "team-a", "models": ["qwen"], "requests_per_minute": 60, "max_concurrent": 2},
        {"name": "team-b"}]
    return raw


def refused(raw: dict, secrets: dict) -> ConfigError:
    run = MockRun("local")
    with pytest.raises(ConfigError) as caught:
        run_raw("local", raw, secrets=secrets, run=run)
    message = str(caught.value)
    for value in KEYS.values():
        assert value not in message and value[:20] not in message, message
    assert [r for r in run.resources if r.typ != "pulumi:pulumi:Stack"] == []
    return caught.value


@pytest.mark.parametrize("case, keys, secret, key, fragment", [
    ("a key declared twice", [{"name": "team-a"}, {"name": "team-a"}], KEYS, "load_balancer.keys[1].name", "share this name"),
    ("a key for a model nobody serves", [{"name": "team-a", "models": ["gpt-5"]}, {"name": "team-b"}], KEYS,
     "load_balancer.keys[0].models[0]", "no model is served"),
    ("keys declared, no secret", None, None, "client_keys", "not set"),
    ("a secret key with no entry", [{"name": "team-a"}], KEYS, "client_keys.team-b", "no entry"),
    ("an entry with no secret key", None, {"team-a": KEYS["team-a"]}, "load_balancer.keys[1].name", "has no key of this name"),
    ("a short key", None, {**KEYS, "team-b": "sk-short"}, "client_keys.team-b", "at least 32"),
    ("a key with a space", None, {**KEYS, "team-b": KEYS["team-b"][:20] + " " + KEYS["team-b"][20:]}, "client_keys.team-b",
     "without spaces"),
    ("one key under two names", None, {**KEYS, "team-b": KEYS["team-a"]}, "client_keys", "share one key"),
    ("a name that is no DNS label", None, {**KEYS, "Team B": KEYS["team-b"]}, "client_keys.Team B", "DNS label"),
    ("not a map", None, [KEYS["team-a"]], "client_keys", "not a map"),
])
def test_a_broken_key_setup_is_refused_without_showing_any_key(case, keys, secret, key, fragment):
    raw = with_keys(raw_stack("local"), *(keys or []))
    secrets = {"client_keys": json.dumps(secret)} if secret is not None else {}
    err = refused(raw, secrets)
    assert err.key == key and fragment in str(err), str(err)


def test_keys_with_an_unknown_limit_key_are_refused_like_any_field():
    raw = with_keys(raw_stack("local"), {"name": "team-a", "rpm": 60})
    assert_refused_before_any_resource("rpm", "local", raw, "load_balancer.keys[0].rpm", "requests_per_minute")


# --- the rendered Nginx checking keys (real nginx + njs, fake replicas) --------------------------

INTERNAL = "fleet-internal-" + "K3yF0rR3pl1c4sOnlyXyZ12345"
# A key only the burst test spends, so its bucket is full when that test starts.
EDGE_KEYS = {**KEYS, "burst": "sk-burst-" + "B8nM3vC6xZ1aS4dF7gH2jK5lQ9wE0rT",
             "solo": "sk-solo-" + "H5jK8lZ2xC7vB4nM1qW9eR3tY6uI0oPa"}


class _Replica(http.server.BaseHTTPRequestHandler):
    """Answers who it is and what it got, only to the fleet's own key (as vLLM's --api-key);
    `?hold` waits until the test releases it."""
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "hold" in self.path:
            self.server.held.set()
            self.server.release.wait(30)
        ok = self.headers.get("Authorization") == f"Bearer {INTERNAL}"
        out = json.dumps({"upstream": self.server.label, "path": self.path, "auth_ok": ok,
                          "body_bytes": len(body)}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


def replica(label: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
    server.label, server.held, server.release = label, threading.Event(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def keyed_config():
    raw = with_keys(raw_stack("local"),
                    {"name": "team-a", "models": ["qwen"], "requests_per_minute": 3},
                    {"name": "team-b"},
                    {"name": "burst", "requests_per_minute": 3},
                    {"name": "solo", "max_concurrent": 1})
    second = copy.deepcopy(raw["models"][0])
    second.update(name="qwen-b", served_model_name="qwen-b-chat", replicas=1)
    raw["models"].append(second)
    raw["client_keys"] = list(EDGE_KEYS)
    return parse_config(raw, "local")


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    require_nginx()
    cfg = keyed_config()
    replicas = {m.name: replica(m.name) for m in cfg.models}
    runtime = nginx_runtime_dir("vllm-fleet-keys-")
    port = free_port()
    hashes = key_hashes(json.dumps(EDGE_KEYS))
    files = nginx_files(cfg, {m: [f"127.0.0.1:{r.server_port}"] for m, r in replicas.items()}, key_hashes=hashes)
    for name, text in files.items():
        if name == NGINX_CONF:
            text = adapt_nginx_conf(text, listen_port=port, status_port=free_port(), runtime_dir=runtime)
        (runtime / name).write_text(text)
        (runtime / name).chmod(0o644)
    log = tmp_path_factory.mktemp("edge") / "nginx.log"
    proc = start(nginx_argv(runtime, runtime / NGINX_CONF), env={**os.environ, UPSTREAM_KEY_ENV: INTERNAL}, log_path=log)
    try:
        wait_port(port, 30, proc, log)
        yield {"port": port, "log": log, "files": files, "replicas": replicas, "cfg": cfg}
    finally:
        stop(proc, timeout=10)
        shutil.rmtree(runtime, ignore_errors=True)


def call(edge, method, path, doc=None, key=None):
    conn = http.client.HTTPConnection("127.0.0.1", edge["port"], timeout=30)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        conn.request(method, path, json.dumps(doc).encode() if doc is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def openai_error(status, doc, want_status, code):
    assert status == want_status, doc
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}, doc
    assert doc["error"]["code"] == code, doc


@pytest.mark.parametrize("key", [None, "sk-wrong-" + "x" * 32, "sk-revoked-" + "R" * 30])
def test_a_missing_wrong_or_revoked_key_gets_401_in_openai_shape(edge, key):
    for method, path, doc in (("POST", "/v1/completions", {"model": "qwen-b-chat", "prompt": "hi"}),
                              ("GET", "/v1/models", None), ("POST", "/models/qwen/v1/completions", {"prompt": "x"})):
        status, headers, got = call(edge, method, path, doc, key)
        openai_error(status, got, 401, "invalid_api_key")
        assert headers.get("WWW-Authenticate") == "Bearer"


def test_each_key_reaches_its_models_and_the_replicas_get_only_the_fleets_key(edge):
    for key, model, upstream in ((KEYS["team-a"], "Qwen/Qwen2.5-0.5B-Instruct", "qwen"),
                                 (KEYS["team-b"], "qwen-b-chat", "qwen-b"), (KEYS["team-b"], "Qwen/Qwen2.5-0.5B-Instruct", "qwen")):
        status, _, got = call(edge, "POST", "/v1/completions", {"model": model, "prompt": "hi"}, key)
        assert (status, got["upstream"], got["auth_ok"]) == (200, upstream, True), got
    status, _, got = call(edge, "POST", "/models/qwen-b/v1/completions", {"prompt": "hi"}, KEYS["team-b"])
    assert (status, got["upstream"], got["path"]) == (200, "qwen-b", "/v1/completions")


def test_a_key_limited_to_other_models_gets_404_and_sees_only_its_own(edge):
    status, _, got = call(edge, "POST", "/v1/chat/completions", {"model": "qwen-b-chat", "messages": []}, KEYS["team-a"])
    openai_error(status, got, 404, "model_not_found")
    assert "qwen-b-chat" not in got["error"]["message"].split("Available models:")[1]
    status, _, got = call(edge, "POST", "/models/qwen-b/v1/completions", {"prompt": "hi"}, KEYS["team-a"])
    openai_error(status, got, 404, "model_not_found")
    status, _, listed = call(edge, "GET", "/v1/models", None, KEYS["team-a"])
    assert status == 200 and [c["id"] for c in listed["data"]] == ["Qwen/Qwen2.5-0.5B-Instruct"], listed
    status, _, listed = call(edge, "GET", "/v1/models", None, KEYS["team-b"])
    assert [c["id"] for c in listed["data"]] == ["Qwen/Qwen2.5-0.5B-Instruct", "qwen-b-chat"], listed


def test_a_burst_over_a_keys_rate_gets_429_with_retry_after_and_other_keys_are_unaffected(edge):
    body = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "prompt": "hi"}
    statuses = [call(edge, "POST", "/v1/completions", body, EDGE_KEYS["burst"]) for _ in range(6)]
    codes = [s for s, _, _ in statuses]
    # A full bucket of 3, refilled one every 20 s: only a 20 s stall could let a fourth through.
    assert codes[:3] == [200] * 3 and codes[3:].count(429) >= 2, codes
    status, headers, got = next(x for x in statuses if x[0] == 429)
    openai_error(status, got, 429, "rate_limit_exceeded")
    assert headers.get("Retry-After") == "20"  # 60 s / 3 requests
    assert "burst" in got["error"]["message"]
    for _ in range(6):
        assert call(edge, "POST", "/v1/completions", body, KEYS["team-b"])[0] == 200


def test_a_key_over_its_concurrency_gets_429_while_its_request_runs(edge):
    upstream = edge["replicas"]["qwen-b"]
    body = {"model": "qwen-b-chat", "prompt": "hi"}
    solo = EDGE_KEYS["solo"]
    held = threading.Thread(target=call, args=(edge, "POST", "/v1/completions?hold", body, solo), daemon=True)
    held.start()
    try:
        assert upstream.held.wait(10)
        status, headers, got = call(edge, "POST", "/v1/completions", body, solo)
        openai_error(status, got, 429, "rate_limit_exceeded")
        assert headers.get("Retry-After") == "1"
        assert call(edge, "POST", "/v1/completions", body, KEYS["team-b"])[0] == 200  # another key is unaffected
    finally:
        upstream.release.set()
        held.join(10)
    # The slot frees when Nginx finalizes the held request, which may trail the client's read of
    # its last byte (another worker can accept the next connection first): poll, don't race.
    deadline = time.monotonic() + 10
    while (status := call(edge, "POST", "/v1/completions", body, solo)[0]) == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == 200


def test_no_key_value_is_in_any_file_or_log_line_and_the_log_names_the_key(edge):
    logged_after(edge["log"], lambda: call(edge, "POST", "/v1/completions", {"model": "qwen-b-chat", "prompt": "log"},
                                           KEYS["team-b"]),
                 lambda line: '"POST /v1/completions' in line and 'key="team-b" model="qwen-b-chat"' in line)
    texts = [*edge["files"].values(), edge["log"].read_text()]
    for value in (*KEYS.values(), INTERNAL):
        assert not any(value in t for t in texts)
    assert key_hash(KEYS["team-b"]) in edge["files"]["keys.json"]


def test_on_kubernetes_the_keys_reach_the_config_map_as_hashes_and_nginx_gets_the_fleets_key():
    raw = with_keys(raw_stack("prod-k8s"), {"name": "team-a"}, {"name": "team-b", "requests_per_minute": 60})
    run = run_raw("prod-k8s", raw, secrets={"client_keys": json.dumps(KEYS)})
    config_map = next(r for r in run.resources if r.typ == "kubernetes:core/v1:ConfigMap" and "keys.json" in
                      (r.inputs.get("data") or {}))
    keys_json = config_map.inputs["data"]["keys.json"]
    assert key_hash(KEYS["team-a"]) in keys_json and KEYS["team-a"] not in json.dumps(run.outputs, default=str)
    assert "limit_req_zone $fleet_key_team_b" in config_map.inputs["data"]["nginx.conf"]
    deployment = next(r for r in run.resources if r.typ == "kubernetes:apps/v1:Deployment" and r.name.endswith("nginx"))
    nginx = deployment.inputs["spec"]["template"]["spec"]["containers"][0]
    assert nginx["env"] == [{"name": UPSTREAM_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "vllm-fleet-secrets",
                                                                                     "key": "api_key"}}}], nginx
    for r in run.resources:
        for value in KEYS.values():
            assert value not in json.dumps(r.inputs, default=str), r.name
