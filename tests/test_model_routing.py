"""One base URL for the fleet: the rendered Nginx, with njs (fleet.js) and the rendered routing
table (models.json), in front of one tiny fake upstream per model on loopback.

Each fake upstream answers with its own name, the path and the body it received, so every test
can say which model's replicas a request reached and that it arrived unchanged. The Nginx is the
real one (Debian 13's nginx 1.26 with njs 0.8.9, tests/support/real_tools.py), on the rendered files with only
the loopback adaptations of tests/support/dataplane.py.
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator

import pytest

from fleet.config.load import parse_config
from fleet.config.schema import FleetConfig
from fleet.render.files import NGINX_MODELS
from support.edge import Gateway, echo_upstream, gateways
from support.lockstep import LockstepUpstream, Recording
from support.processes import free_port, logged_after, wait_until
from support.stacks import raw_stack

# vLLM 0.32's OpenAI-compatible endpoints whose JSON body names the model
# (vllm/entrypoints/*: api_router routes under /v1).
BODY_ENDPOINTS = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/score",
                  "/v1/rerank", "/v1/messages", "/v1/messages/count_tokens", "/v1/chat/completions/render",
                  "/v1/completions/render", "/v1/responses/render"]
ERROR_KEYS = {"message", "type", "param", "code"}


def two_models() -> FleetConfig:
    """The `local` stack plus a second model that serves a LoRA adapter: three names to route."""
    raw = raw_stack("local")
    second = copy.deepcopy(raw["models"][0])
    second.update(name="qwen-b", served_model_name="qwen-b-chat", replicas=1,
                  lora={"adapters": [{"name": "qwen-b-sql", "source": "org/sql-lora"}]})
    raw["models"].append(second)
    return parse_config(raw, "local")


def one_model() -> FleetConfig:
    """The `local` stack's one model, with an adapter: still one upstream."""
    raw = raw_stack("local")
    raw["models"][0]["lora"] = {"adapters": [{"name": "qwen-sql", "source": "org/sql-lora"}]}
    return parse_config(raw, "local")


@pytest.fixture(scope="module")
def gateway_for(tmp_path_factory) -> Iterator:
    """Starts the rendered Nginx for a config and `upstreams` (model name -> servers)."""
    with gateways(lambda: tmp_path_factory.mktemp("nginx")) as make:
        yield make


@pytest.fixture(scope="module")
def fleet(gateway_for) -> Gateway:
    cfg = two_models()
    ups = {m.name: [f"127.0.0.1:{echo_upstream(m.name).server_port}"] for m in cfg.models}
    return gateway_for(cfg, ups)


@pytest.fixture(scope="module")
def single(gateway_for) -> Gateway:
    cfg = one_model()
    return gateway_for(cfg, {"qwen": [f"127.0.0.1:{echo_upstream('qwen').server_port}"]})


def names(cfg: FleetConfig) -> dict[str, str]:
    """Every name a client may send -> the model (config name) whose replicas serve it."""
    return {n: m.name for m in cfg.models for n in [m.client_model_name, *(a.name for a in (m.lora.adapters if m.lora else []))]}


def assert_openai_error(doc: dict, status: int, got: int) -> dict:
    assert got == status, doc
    assert set(doc) == {"error"} and set(doc["error"]) == ERROR_KEYS, doc
    assert doc["error"]["type"] == "invalid_request_error"
    return doc["error"]


# --- routing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_every_endpoint_reaches_the_replicas_of_the_model_its_body_names(fleet, path):
    for name, model in names(fleet.cfg).items():
        # A nested `model` (a tool's parameter, a quoted prompt) must not be mistaken for the top-level one.
        doc = {"model": name, "messages": [{"role": "user", "content": '{"model": "nope"}'}],
               "metadata": {"model": "nope"}}
        body = json.dumps(doc).encode()
        status, got = fleet.request("POST", path + "?trace=1", body)
        assert status == 200, got
        assert got == {"upstream": model, "method": "POST", "path": path + "?trace=1",
                       "body_sha256": hashlib.sha256(body).hexdigest()}, name


def test_an_audio_upload_is_routed_by_its_form_field(fleet):
    boundary = "fleetboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + bytes(range(256)) * 8 + (
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nqwen-b-chat\r\n--{boundary}--\r\n').encode()
    status, got = fleet.request("POST", "/v1/audio/transcriptions", body,
                                {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert (status, got["upstream"], got["body_sha256"]) == (200, "qwen-b", hashlib.sha256(body).hexdigest())


def test_the_access_log_names_the_model_each_request_was_routed_by(fleet):
    _, line = logged_after(fleet.log, lambda: fleet.post("/v1/completions", {"model": "qwen-b-sql", "prompt": "log me"}),
                           lambda line: "POST /v1/completions" in line and 'model="qwen-b-sql"' in line)
    assert 'model="qwen-b-sql" route="' in line and " upstream=127.0.0.1:" in line, line


def test_the_path_per_model_form_still_reaches_its_model_whatever_the_body_says(fleet):
    status, got = fleet.post("/models/qwen-b/v1/chat/completions", {"model": "anything"})
    assert (status, got["upstream"], got["path"]) == (200, "qwen-b", "/v1/chat/completions")
    status, got = fleet.request("GET", "/models/qwen/v1/models")
    assert (status, got["upstream"], got["path"]) == (200, "qwen", "/v1/models")


def test_health_and_version_still_answer_from_the_first_model(fleet):
    for path in ("/health", "/version"):
        status, got = fleet.request("GET", path)
        assert (status, got["upstream"]) == (200, "qwen")


def test_with_one_model_a_request_without_a_model_or_a_body_reaches_it(single):
    status, got = single.post("/v1/completions", {"prompt": "no model named"})
    assert (status, got["upstream"]) == (200, "qwen")
    status, got = single.request("GET", "/v1/responses/resp_123")
    assert (status, got["upstream"], got["path"]) == (200, "qwen", "/v1/responses/resp_123")


def test_a_replica_that_refuses_is_skipped_before_the_first_byte_through_the_routed_path(gateway_for):
    """The retry settings are the server's, inherited by the named location njs redirects to."""
    cfg = two_models()
    dead = free_port()  # nothing listens there
    gw = gateway_for(cfg, {"qwen": [f"127.0.0.1:{echo_upstream('qwen').server_port}"],
                           "qwen-b": [f"127.0.0.1:{dead}", f"127.0.0.1:{echo_upstream('qwen-b').server_port}"]})
    # Under the default policy each conversation has its place on the ring: send distinct ones until
    # one was placed on the dead replica (half of them are; once it failed Nginx rests it).
    retried = f"upstream=127.0.0.1:{dead}, 127.0.0.1:"
    for n in range(64):
        status, got = gw.post("/v1/chat/completions",
                              {"model": "qwen-b-chat", "messages": [{"role": "user", "content": f"conversation {n}"}]})
        assert (status, got["upstream"]) == (200, "qwen-b")
        if retried in gw.log.read_text():
            break
    # Nginx writes the line once the response is sent, which can be after the client has it.
    wait_until(lambda: retried in gw.log.read_text(), 5)


# --- the model list ------------------------------------------------------------------------------


def test_the_model_list_is_every_model_and_adapter_in_openais_shape(fleet):
    status, got = fleet.request("GET", "/v1/models")
    assert status == 200 and got["object"] == "list"
    assert [m["id"] for m in got["data"]] == ["Qwen/Qwen2.5-0.5B-Instruct", "qwen-b-chat", "qwen-b-sql"]
    for card in got["data"]:
        assert card["object"] == "model" and card["owned_by"] == "vllm" and isinstance(card["created"], int), card
        assert "upstream" not in card
    assert [m["parent"] for m in got["data"]] == [None, None, "qwen-b-chat"]
    rendered = json.loads((fleet.runtime / NGINX_MODELS).read_text())["models"]  # as nginx_files rendered it
    assert [{k: v for k, v in c.items() if k != "created"} for c in got["data"]] == rendered


def test_the_model_list_answers_while_the_first_models_replicas_are_down(gateway_for):
    cfg = two_models()
    gw = gateway_for(cfg, {"qwen": [f"127.0.0.1:{free_port()}"], "qwen-b": [f"127.0.0.1:{echo_upstream('b').server_port}"]})
    status, got = gw.request("GET", "/v1/models")
    assert status == 200 and len(got["data"]) == 3, got


# --- keys: the replicas' check covers what Nginx answers itself --------------------------------------


@pytest.fixture(scope="module")
def keyed(gateway_for) -> Gateway:
    cfg = two_models()
    return gateway_for(cfg, {m.name: [f"127.0.0.1:{echo_upstream(m.name, key='k').server_port}"] for m in cfg.models})


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", b'{"model": "gpt-4o"}'),  # its 404 would name the fleet's models
    ("POST", "/v1/chat/completions", b'{"prompt": "no model"}'),
    ("POST", "/v1/chat/completions", b'{"model": '),
    ("POST", "/v1/chat/completions", b'{"model": "qwen-b-chat"}'),  # the replica itself refuses
])
def test_without_a_good_key_nothing_is_answered_but_401(keyed, method, path, body):
    for key in (None, "wrong"):
        status, got = keyed.request(method, path, body, {"Authorization": f"Bearer {key}"} if key else {})
        assert (status, got) == (401, {"error": "Unauthorized"})
    status, got = keyed.request(method, path, body, {"Authorization": "Bearer k"})
    assert status != 401, got


# --- what is refused, in OpenAI's error shape ------------------------------------------------------


def test_an_unknown_model_gets_a_404_naming_the_available_ones(fleet, single):
    for gw in (fleet, single):
        status, got = gw.post("/v1/chat/completions", {"model": "gpt-4o", "messages": []})
        error = assert_openai_error(got, 404, status)
        assert (error["param"], error["code"]) == ("model", "model_not_found")
        assert "`gpt-4o` does not exist" in error["message"]
        assert all(name in error["message"] for name in names(gw.cfg)), error["message"]


@pytest.mark.parametrize("body, what", [
    (b'{"model": "qwen-b-chat", "prompt": ', "truncated JSON"),
    (b"model=qwen-b-chat", "a form, not JSON"),
    (b'["qwen-b-chat"]', "not an object"),
    (b'{"model": 7}', "a model that is not a string"),
])
def test_a_body_that_cannot_be_routed_gets_a_400(fleet, single, body, what):
    for gw in (fleet, single):
        status, got = gw.request("POST", "/v1/completions", body)
        assert_openai_error(got, 400, status)


def test_with_several_models_a_request_must_name_one(fleet):
    for method, body in (("POST", b'{"prompt": "which model?"}'), ("POST", b""), ("GET", None)):
        status, got = fleet.request(method, "/v1/completions", body)
        error = assert_openai_error(got, 400, status)
        assert error["param"] == "model" and "qwen-b-chat" in error["message"], error


# --- the body stays in memory; the stream is not held ------------------------------------------


def test_a_100kb_prompt_is_routed_without_touching_the_disk(fleet):
    body = json.dumps({"model": "qwen-b-sql", "prompt": "lorem ipsum " * 9000}).encode()
    assert len(body) > 100_000
    status, got = fleet.request("POST", "/v1/completions", body)
    assert (status, got["upstream"], got["body_sha256"]) == (200, "qwen-b", hashlib.sha256(body).hexdigest())
    assert "buffered to a temporary file" not in fleet.log.read_text()
    assert not any((fleet.runtime / "client-body").rglob("*")), "a request body was written to a temp file"


def _recording(tokens: int) -> Recording:
    def event(doc) -> bytes:
        return b"data: " + json.dumps(doc).encode() + b"\n\n"
    chunks = [event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f" t{i}"}}]})
              for i in range(tokens)]
    return Recording([("content-type", "text/event-stream; charset=utf-8")], [*chunks, b"data: [DONE]\n\n"])


def test_a_stream_routed_by_model_reaches_the_client_token_by_token(gateway_for):
    """tests/support/lockstep.py: the upstream sends the next token only once the client parsed
    the previous one, so a routed path that held any token back would stall (2 s allowance)."""
    cfg = two_models()
    with LockstepUpstream(_recording(20)) as upstream:
        gw = gateway_for(cfg, {"qwen": [f"127.0.0.1:{echo_upstream('qwen').server_port}"],
                               "qwen-b": [f"127.0.0.1:{upstream.port}"]})
        got = upstream.exchange(gw.url, "/v1/chat/completions", {"model": "qwen-b-sql", "messages": []}, {}, hold_s=2)
    assert got.status == 200 and got.tokens == 20 and not got.held, got
    assert got.text == "".join(f" t{i}" for i in range(20))
