"""One real vLLM CPU server with the tiny dummy-weight model, via the test helpers.

Slow: ~80 s startup on 2 cores. Run with ``pytest -m live tests/live``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from support.processes import free_port, running
from support.tiny_model import make_tiny_model
from support.vllm_server import vllm_env, vllm_server_cmd

pytestmark = pytest.mark.live

API_KEY = "live-test-key"
STARTUP_TIMEOUT = 300


def _call(base: str, path: str, body: dict | None = None, *, key: str | None = API_KEY):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm-live")
    model = make_tiny_model(tmp / "tiny")
    port = free_port()
    # As a generator would render it: placeholder host/port, a model path from
    # elsewhere; vllm_server_cmd swaps in ours.
    serve_args = [
        "/models/tiny", "--host", "0.0.0.0", "--port", "8000",
        "--load-format", "dummy", "--max-model-len", "512",
        "--override-generation-config", '{"temperature": 0.0}',
        "--served-model-name", "tiny",
    ]
    cmd = vllm_server_cmd(serve_args, host="127.0.0.1", port=port, model=model)
    env = vllm_env(omp_threads_bind="0", api_key=API_KEY)
    log = tmp / "vllm.log"
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with running(cmd, env, log, base + "/health", STARTUP_TIMEOUT) as proc:
        print(f"vLLM ready after {time.monotonic() - t0:.1f}s (log: {log})")
        yield {"base": base, "proc": proc, "log": log, "cmd": cmd}
    assert proc.poll() is not None, "server still running after stop()"


def test_cmd_is_what_the_vllm_cli_accepts(server):
    from support.vllm_cli import parse_serve_args

    cmd = server["cmd"]
    serve_at = cmd.index("serve")
    ns = parse_serve_args(cmd[serve_at + 1 :])
    assert ns.host == "127.0.0.1" and ns.served_model_name == ["tiny"]


def test_health_is_open_api_needs_key(server):
    base = server["base"]
    assert _call(base, "/health", key=None)[0] == 200
    assert _call(base, "/v1/models", key=None)[0] == 401
    status, body = _call(base, "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny"]


def test_completions_need_key_and_default_to_greedy(server):
    base = server["base"]
    body = {"model": "tiny", "prompt": "Hello world, please write a story", "max_tokens": 12}
    assert _call(base, "/v1/completions", body, key=None)[0] == 401
    texts = []
    for _ in range(3):
        status, raw = _call(base, "/v1/completions", body)
        assert status == 200, raw
        out = json.loads(raw)
        assert out["usage"]["completion_tokens"] == 12
        texts.append(out["choices"][0]["text"])
    # generation_config.json says temperature 0.7; the override makes it greedy.
    assert len(set(texts)) == 1 and texts[0]
    assert "'temperature': 0.0" in server["log"].read_text()


def test_streaming_completion(server):
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 8, "stream": True}
    status, raw = _call(server["base"], "/v1/completions", body)
    assert status == 200
    events = [ln[len("data: "):] for ln in raw.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2
    assert "".join(c["choices"][0]["text"] for c in chunks)


def test_chat_completion(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8}
    status, raw = _call(server["base"], "/v1/chat/completions", body)
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["role"] == "assistant"


def test_metrics_are_open_and_labelled(server):
    status, text = _call(server["base"], "/metrics", key=None)
    assert status == 200
    for family in (
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:e2e_request_latency_seconds", "vllm:time_to_first_token_seconds",
        "vllm:generation_tokens_total", "vllm:prompt_tokens_total", "vllm:request_success_total",
    ):
        assert f"# TYPE {family} " in text, family
    assert 'vllm:num_requests_running{engine="0",model_name="tiny"}' in text
    assert "vllm:gpu_cache_usage_perc" not in text  # old name; gone in 0.32
