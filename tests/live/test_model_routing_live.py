"""One base URL, two models and a LoRA adapter, behind client keys: the official `openai` client
against the rendered Nginx (with njs) in front of two real vLLM CPU replicas serving the tiny
dummy-weight model under two names, the first with a tiny PEFT adapter (tests/support/tiny_lora.py,
written into its HF_HOME where the program's `--lora-modules` path points).

Nginx checks `load_balancer.keys` (keys.json holds their hashes) and sends the fleet's own api_key
to the replicas, which check it (vLLM's --api-key): the clients never hold it.

One module-scoped data plane (tests/support/dataplane.py, no monitoring): ~2 min to start on 2
cores. Each request's replica is read from the replicas' own request counters, so "answered by
its replica" is what vLLM counted, not what the response claims. The last test re-renders the edge
without a key (revocation), so it runs last.
"""
from __future__ import annotations

import asyncio
import copy
import os
import secrets

import httpx
import openai
import pytest

from fleet.config.load import parse_config
from fleet.config.schema import HF_CACHE_MOUNT, FleetConfig
from support.dataplane import DataPlane, data_plane
from support.processes import logged_after
from support.stacks import raw_stack

pytestmark = pytest.mark.live

NAMES = ("tiny-a", "tiny-b")
ADAPTER = "tiny-a-lora"  # served by tiny-a's replica
ALL = (NAMES[0], ADAPTER, NAMES[1])  # /v1/models order: each model, then its adapters
# The `client_keys` secret: fresh random keys each run. team-b may use tiny-b only; burst has 3 requests a minute.
KEYS = {name: f"sk-{name}-{secrets.token_hex(20)}" for name in ("team-a", "team-b", "burst", "leaver")}


def two_model_config(keys=tuple(KEYS)) -> FleetConfig:
    """The `local` stack's model twice, one replica each under its own served name, on this
    machine's cores, with `--load-format dummy` (the tiny model has no weights), the fleet's
    api_key, a LoRA adapter on the first (in the replicas' cache) and the client `keys`."""
    raw = raw_stack("local")
    raw["hosts"][0]["cpus"] = len(os.sched_getaffinity(0))
    first = raw["models"][0]
    first.update(replicas=1, served_model_name=NAMES[0], extra_args=["--load-format", "dummy"],
                 sampling={"temperature": 0.0})
    second = copy.deepcopy(first)
    second.update(name="qwen-b", served_model_name=NAMES[1])
    first["lora"] = {"adapters": [{"name": ADAPTER, "source": f"{HF_CACHE_MOUNT}/adapters/{ADAPTER}"}], "max_lora_rank": 8}
    raw["models"].append(second)
    raw["api_key"] = True
    limits = {"team-b": {"models": ["qwen-b"]}, "burst": {"requests_per_minute": 3}}
    raw.setdefault("load_balancer", {})["keys"] = [{"name": k, **limits.get(k, {})} for k in keys]
    raw["client_keys"] = list(keys)
    return parse_config(raw, "local")


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    with data_plane(tmp_path_factory.mktemp("routing-live"), cfg=two_model_config(), monitoring=False,
                    client_keys=KEYS) as plane:
        yield plane


def client(dp: DataPlane, key: str = "team-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=dp.lb_url + "/v1", api_key=KEYS[key], max_retries=0)


def replica_of(dp: DataPlane, name: str) -> int:
    """The index of the replica whose model serves `name` (a served name or an adapter's)."""
    return next(i for i, r in enumerate(dp.replicas) if name in r.plan.model.client_names)


def replica_name(dp: DataPlane, i: int) -> str:
    return dp.replicas[i].plan.model.client_model_name


def test_each_model_and_the_adapter_is_answered_by_its_own_replica_at_v1_sync(dp):
    c = client(dp)
    for name in ALL:
        i, done = dp.served_by(lambda: c.completions.create(model=name, prompt="hello", max_tokens=4))
        assert (i, done.model) == (replica_of(dp, name), name)
        i, text = dp.served_by(lambda: "".join(
            chunk.choices[0].delta.content or "" for chunk in c.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)))
        assert i == replica_of(dp, name) and text
    assert [replica_name(dp, replica_of(dp, n)) for n in ALL] == [NAMES[0], NAMES[0], NAMES[1]]


def test_each_model_and_the_adapter_answers_at_v1_async_streamed_and_not(dp):
    async def both() -> list:
        client = openai.AsyncOpenAI(base_url=dp.lb_url + "/v1", api_key=KEYS["team-a"], max_retries=0)

        async def streamed(name: str) -> set[str]:
            stream = await client.completions.create(model=name, prompt="hello", max_tokens=4, stream=True)
            return {chunk.model async for chunk in stream}

        async def whole(name: str) -> str:
            chat = await client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                        max_tokens=4)
            return chat.model

        return await asyncio.gather(*(streamed(n) for n in ALL), *(whole(n) for n in ALL))

    before = dp.finished()
    # A loop of its own: asyncio.run() would leave the thread without a current loop, which the
    # Pulumi mocks of every later test in this process need.
    loop = asyncio.new_event_loop()
    try:
        results = loop.run_until_complete(both())
    finally:
        loop.close()
    assert results == [{n} for n in ALL] + list(ALL)
    dp.wait_idle()
    assert [a - b for a, b in zip(dp.finished(), before)] == [4, 2]  # tiny-a's replica also ran the adapter's


def test_the_adapter_is_really_applied_its_greedy_output_differs_from_the_base_models(dp):
    c = client(dp)

    def greedy(name: str) -> str:
        return c.completions.create(model=name, prompt="the server sends", max_tokens=12, temperature=0).choices[0].text

    base = greedy(NAMES[0])
    assert greedy(NAMES[0]) == base  # greedy is repeatable: a difference is the adapter's
    assert greedy(ADAPTER) != base


def test_the_model_list_names_every_model_and_adapter_the_replicas_serve_and_an_unknown_model_gets_404(dp):
    listed = client(dp).models.list().data
    assert [m.id for m in listed] == list(ALL)
    assert {m.id: m.parent for m in listed}[ADAPTER] == NAMES[0]
    own = openai.OpenAI(api_key=dp.api_key, max_retries=0)  # each replica asked directly, with the fleet's key
    served = [m.id for r in dp.replicas for m in own.with_options(base_url=r.url + "/v1").models.list()]
    assert sorted(served) == sorted(ALL)
    with pytest.raises(openai.NotFoundError) as err:
        client(dp).completions.create(model="gpt-4o", prompt="hello", max_tokens=4)
    assert err.value.status_code == 404 and err.value.code == "model_not_found"
    assert all(n in err.value.message for n in ALL)


@pytest.mark.parametrize("case, key", [
    ("missing", openai.Omit()), ("wrong", "sk-wrong-" + secrets.token_hex(20)),
    ("revoked (never issued here)", "sk-revoked-" + secrets.token_hex(20)),
    ("the replicas' own key, which is no client key", None),
])
def test_a_missing_wrong_or_revoked_key_gets_openais_401(dp, case, key):
    c = openai.OpenAI(base_url=dp.lb_url + "/v1", api_key="unused", max_retries=0)
    headers = {"Authorization": key if isinstance(key, openai.Omit) else f"Bearer {key or dp.api_key}"}
    for send in (lambda: c.completions.create(model=NAMES[0], prompt="hi", max_tokens=1, extra_headers=headers),
                 lambda: c.models.list(extra_headers=headers)):
        with pytest.raises(openai.AuthenticationError) as err:
            send()
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key", case


def test_a_key_limited_to_another_model_gets_404_for_the_others_and_sees_only_its_own(dp):
    c = client(dp, "team-b")
    for name in (NAMES[0], ADAPTER):
        with pytest.raises(openai.NotFoundError) as err:
            c.completions.create(model=name, prompt="hi", max_tokens=1)
        assert err.value.status_code == 404 and err.value.code == "model_not_found"
    assert [m.id for m in c.models.list()] == [NAMES[1]]
    assert c.completions.create(model=NAMES[1], prompt="hi", max_tokens=1).model == NAMES[1]


def test_a_burst_over_a_keys_rate_gets_429_with_retry_after_and_another_key_is_unaffected(dp):
    burst, other = client(dp, "burst"), client(dp, "team-a")
    passed, limited = 0, []
    for _ in range(6):  # 3 a minute: 3 pass at once (limit_req's burst), the rest are refused
        try:
            burst.completions.create(model=NAMES[1], prompt="hi", max_tokens=1)
            passed += 1
        except openai.RateLimitError as err:
            limited.append(err)
        other.completions.create(model=NAMES[1], prompt="hi", max_tokens=1)  # raises on any error
    assert (passed, len(limited)) == (3, 3)
    err = limited[0]
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and "burst" in err.message
    assert err.response.headers["Retry-After"] == "20"  # 60 s / 3 requests


def test_a_100kb_prompt_is_routed_from_memory_to_its_replica(dp):
    prompt = "the server sends a response " * 3700  # ~100 KB
    body_dir = dp.nginx_dir / "client-body"
    assert body_dir.is_dir() and not any(body_dir.iterdir())

    def send():
        with pytest.raises(openai.BadRequestError) as refused:  # longer than max_model_len: vLLM itself refuses it
            client(dp).completions.create(model=NAMES[1], prompt=prompt, max_tokens=1)
        return refused

    log = dp.workdir / "nginx.log"
    err, line = logged_after(log, send, lambda ln: "POST /v1/completions" in ln and f'model="{NAMES[1]}" ' in ln)
    replica = dp.replicas[replica_of(dp, NAMES[1])]
    with pytest.raises(openai.BadRequestError) as direct:  # the whole prompt, sent to the replica itself
        openai.OpenAI(base_url=replica.url + "/v1", api_key=dp.api_key, max_retries=0).completions.create(
            model=NAMES[1], prompt=prompt, max_tokens=1)
    assert len(prompt.encode()) > 100_000 and "context length" in err.value.message, err.value.message
    assert err.value.message == direct.value.message  # it counts the same input tokens: all of the body arrived
    assert f" upstream={replica.address} upstream_status=400 " in line, line
    assert "buffered to a temporary file" not in log.read_text()  # Nginx's warning whenever a body goes to disk
    assert not any(body_dir.iterdir())


def test_malformed_json_gets_400_in_openais_shape(dp):
    resp = httpx.post(dp.lb_url + "/v1/chat/completions", content=b'{"model": "tiny-a", "messages": [',
                      headers={"Authorization": f"Bearer {KEYS['team-a']}", "Content-Type": "application/json"})
    doc = resp.json()
    assert resp.status_code == 400 and set(doc) == {"error"}, doc
    assert set(doc["error"]) == {"message", "type", "param", "code"} and "JSON" in doc["error"]["message"], doc


def test_no_key_value_reaches_a_log_or_a_file_nginx_reads(dp):
    paths = [p for p in (*dp.workdir.glob("*.log"), *dp.nginx_dir.iterdir()) if p.is_file()]
    assert {"nginx.log", "keys.json", "models.json", "fleet.js"} <= {p.name for p in paths}
    for path in paths:
        text = path.read_text(errors="replace")
        for name, value in (*KEYS.items(), ("the fleet's api_key", dp.api_key)):
            assert value not in text, f"{name} in {path}"


def test_a_key_revoked_from_the_config_gets_401_once_the_edge_is_rendered_without_it(dp):
    c = client(dp, "leaver")
    assert c.completions.create(model=NAMES[1], prompt="hi", max_tokens=1).model == NAMES[1]
    dp.cfg = two_model_config(keys=[k for k in KEYS if k != "leaver"])
    dp.client_keys = {k: v for k, v in KEYS.items() if k != "leaver"}
    dp.start_nginx()  # keys.json and nginx.conf as the program renders them for the new config
    assert '"leaver"' not in (dp.nginx_dir / "keys.json").read_text()
    with pytest.raises(openai.AuthenticationError):
        c.completions.create(model=NAMES[1], prompt="hi", max_tokens=1)
    assert client(dp).completions.create(model=NAMES[1], prompt="hi", max_tokens=1).model == NAMES[1]
